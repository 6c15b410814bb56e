// The three-model comparison: the same busybox workloads natively on the host and inside a
// ct, a pvm and a vm guest, each as a ratio to native; plus boot time to init and idle
// host memory per guest. Usage: node bench/models.ts [models=ct,pvm,vm] [repeats=3]
import { spawnSync } from 'node:child_process';
import { type Daemon, startDaemon } from '../test/system/harness.ts';
import { guestPss, ms, QUICK, runOperation, settle, writeResult } from './lib.ts';

const models = (process.argv[2] ?? 'ct,pvm,vm').split(',');
const repeats = Number(process.argv[3] ?? 3);
const MiB = 2 ** 20;

// Quick mode runs every workload at a tenth of its size (a few take seconds in a pvm or vm guest).
const n = (count: number) => (QUICK ? Math.max(1, Math.round(count / 10)) : count);
// /proc/uptime moves in 10 ms steps: a reading below one step is counted as one, so that a
// workload too short for the clock gives a finite ratio rather than 0 or a division by zero.
const TICK_SECONDS = 0.01;

/** Each workload prints its own elapsed seconds, read from /proc/uptime around it (10 ms steps). */
const WORKLOADS: Record<string, { what: string; script: string; operations: number }> = {
  cpu: {
    what: `sha256sum of ${n(64)} MiB`,
    operations: n(64),
    script: `dd if=/dev/zero bs=1M count=${n(64)} 2>/dev/null | sha256sum >/dev/null`,
  },
  syscalls: {
    what: `${n(200)}k one-byte read+write syscalls`,
    // dd with bs=1 makes one read and one write per byte.
    operations: 2 * n(100_000),
    script: `dd if=/dev/zero of=/dev/null bs=1 count=${n(100_000)} 2>/dev/null`,
  },
  forkExec: {
    what: `${n(200)} fork+exec of /bin/true`,
    operations: n(200),
    script: `i=0; while [ $i -lt ${n(200)} ]; do /bin/true; i=$((i+1)); done`,
  },
  fileFsync: {
    what: `${n(100)} x (write 64 KiB + fsync)`,
    operations: n(100),
    script: `mkdir -p /root/b; i=0; while [ $i -lt ${n(100)} ]; do dd if=/dev/zero of=/root/b/f bs=64k count=1 conv=fsync 2>/dev/null; i=$((i+1)); done; rm -rf /root/b`,
  },
  memory: {
    what: `${n(1024)} MiB through dd (memory bandwidth)`,
    operations: n(1024),
    script: `dd if=/dev/zero of=/dev/null bs=1M count=${n(1024)} 2>/dev/null`,
  },
};

const timed = (script: string) => `read a _ < /proc/uptime; ${script}; read b _ < /proc/uptime; echo "$a $b"`;
const elapsed = (out: string): number => {
  const [a, b] = out.trim().split(/\s+/).map(Number);
  if (a === undefined || b === undefined || Number.isNaN(a) || Number.isNaN(b))
    throw new Error(`bad timing: ${out}`);
  return b - a;
};

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] ?? Number.NaN;

function runNative(script: string): number {
  // The host's own busybox, so native runs the same binaries the guests do.
  const r = spawnSync('busybox', ['sh', '-c', timed(script)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`native: ${r.stderr}`);
  return elapsed(r.stdout);
}

function runIn(d: Daemon, guest: string, script: string): number {
  return elapsed(d.ok(['exec', guest, '--', 'sh', '-c', timed(script)]));
}

const d = await startDaemon();
const results: Record<string, Record<string, number>> = { native: {} };
const boot: Record<string, number> = {};
const idle: Record<string, number> = {};
try {
  // Native samples are taken next to each guest's, alternating, so both see the same machine.
  const nativeByModel: Record<string, Record<string, number>> = {};
  for (const model of models) {
    const guest = `m-${model}`;
    const t0 = process.hrtime.bigint();
    await runOperation(d, 'POST', '/1.0/guests', {
      name: guest,
      image: 'busybox',
      model,
      start: true,
      config: { 'limits.memory': '512MiB', 'limits.cpu': '1' },
    });
    boot[model] = ms(process.hrtime.bigint() - t0);
    await settle();
    idle[model] = guestPss(d.stateDir, guest);
    results[model] = {};
    nativeByModel[model] = {};
    for (const [name, w] of Object.entries(WORKLOADS)) {
      const native: number[] = [];
      const inGuest: number[] = [];
      for (let r = 0; r < repeats; r++) {
        native.push(runNative(w.script));
        inGuest.push(runIn(d, guest, w.script));
      }
      nativeByModel[model]![name] = median(native);
      results[model]![name] = median(inGuest);
    }
    await runOperation(d, 'DELETE', `/1.0/guests/${guest}?force=true`);
    console.error(`${model} done`);
  }
  const ratios: Record<string, Record<string, number>> = {};
  for (const model of models) {
    ratios[model] = {};
    for (const name of Object.keys(WORKLOADS)) {
      ratios[model]![name] =
        Math.max(TICK_SECONDS, results[model]![name]!) / Math.max(TICK_SECONDS, nativeByModel[model]![name]!);
    }
  }
  results.native = nativeByModel[models[0]!] ?? {};
  const info = (await d.api('GET', '/1.0')).body.metadata as { environment?: { drivers?: unknown } };
  const result = {
    benchmark: 'three-model comparison',
    repeats,
    workloads: Object.fromEntries(Object.entries(WORKLOADS).map(([k, w]) => [k, w.what])),
    // How many of its unit each workload does (MiB hashed, system calls, fork+execs, 64 KiB
    // write+fsyncs, MiB copied): seconds ÷ operations is the cost of one, which the model advisor
    // (`trivisor plan advise`, decision 0054) scales by a workload's measured rates.
    operations: Object.fromEntries(Object.entries(WORKLOADS).map(([k, w]) => [k, w.operations])),
    seconds: results,
    nativeSecondsByModel: nativeByModel,
    ratioToNative: ratios,
    bootToInitMs: boot,
    idleHostMemoryMiB: Object.fromEntries(Object.entries(idle).map(([k, v]) => [k, v / MiB])),
    drivers: info.environment?.drivers ?? null,
    guestLimits: { memory: '512MiB', cpus: 1 },
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('models', result)}`);
} finally {
  await d.destroy();
}
