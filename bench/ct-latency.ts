// Benchmark (a): create+start latency of a busybox ct guest through the API, against
// raw `runc run -d` of an equivalent overlay bundle, interleaved in one run (alternating order, after a settle pause);
// then the graceful stop of both (the image's SIGUSR2 until init is gone: `PUT state stop` against
// `runc kill` + a wait + `runc delete`), in the same order.
// Usage: node bench/ct-latency.ts [iterations=30]
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { sleep, startDaemon } from '../test/system/harness.ts';
import {
  ms,
  percentile,
  rawRuncBundle,
  rawRuncDirs,
  rawRuncTemplate,
  runOperation,
  writeResult,
} from './lib.ts';

const iterations = Number(process.argv[2] ?? 30);
const d = await startDaemon();
const rawDir = path.join(d.stateDir, 'raw');
const rawRoot = path.join(rawDir, 'runc');
try {
  const rawTemplate = await rawRuncTemplate(d);
  mkdirSync(rawRoot, { recursive: true });

  const rawStart = (i: number): number => {
    const dir = path.join(rawDir, `raw${i}`);
    const t0 = process.hrtime.bigint();
    const [cmd, ...args] = rawRuncDirs(rawTemplate, dir);
    const m = spawnSync(cmd as string, args, { encoding: 'utf8' });
    if (m.status !== 0) throw new Error(`mount: ${m.stderr}`);
    const argv = rawRuncBundle(rawTemplate, {
      root: rawRoot,
      dir,
      name: `raw${i}`,
      cgroupsPath: `/trivisor-bench-raw/raw${i}`,
    });
    const log = openSync(`${dir}/console.log`, 'a');
    const r = spawnSync('runc', argv, { stdio: ['ignore', log, log] });
    closeSync(log);
    if (r.status !== 0) throw new Error(`runc run: ${readFileSync(`${dir}/console.log`, 'utf8')}`);
    return ms(process.hrtime.bigint() - t0);
  };
  /** The graceful stop of raw runc: the image's stop signal, a wait for init to be gone, runc delete. */
  const rawGracefulStop = async (i: number): Promise<number> => {
    const dir = path.join(rawDir, `raw${i}`);
    const pid = readFileSync(`${dir}/pid`, 'utf8').trim();
    const t0 = process.hrtime.bigint();
    const k = spawnSync('runc', ['--root', rawRoot, 'kill', `raw${i}`, 'SIGUSR2'], { encoding: 'utf8' });
    if (k.status !== 0) throw new Error(`runc kill: ${k.stderr}`);
    for (
      let wait = 2;
      existsSync(`/proc/${pid}/stat`) && !/\) [ZX] /.test(readProcStat(pid));
      wait = Math.min(wait * 2, 50)
    ) {
      if (ms(process.hrtime.bigint() - t0) > 30_000) throw new Error(`raw${i} ignored SIGUSR2 for 30 s`);
      await sleep(wait);
    }
    spawnSync('runc', ['--root', rawRoot, 'delete', `raw${i}`]);
    return ms(process.hrtime.bigint() - t0);
  };
  const rawStop = (i: number) => {
    const dir = path.join(rawDir, `raw${i}`);
    spawnSync('runc', ['--root', rawRoot, 'delete', '--force', `raw${i}`]);
    spawnSync('umount', [`${dir}/rootfs`]);
    rmSync(dir, { recursive: true, force: true });
  };

  const api: number[] = [];
  const raw: number[] = [];
  const apiStop: number[] = [];
  const rawStopMs: number[] = [];
  const measureApiStop = async (i: number) => {
    const t0 = process.hrtime.bigint();
    await runOperation(d, 'PUT', `/1.0/guests/lat${i}/state`, { action: 'stop', timeout: 30 });
    apiStop.push(ms(process.hrtime.bigint() - t0));
  };
  // One warm-up of each, not counted.
  await runOperation(d, 'POST', '/1.0/guests', { name: 'warm', image: 'busybox', start: true });
  await runOperation(d, 'DELETE', '/1.0/guests/warm?force=true');
  rawStart(0);
  rawStop(0);
  // Fairness: teardown of both before each pair, a pause for the kernel's asynchronous
  // namespace cleanup, and the order alternates (ABBA) so neither side always goes first.
  const measureApi = async (i: number) => {
    const t0 = process.hrtime.bigint();
    await runOperation(d, 'POST', '/1.0/guests', { name: `lat${i}`, image: 'busybox', start: true });
    api.push(ms(process.hrtime.bigint() - t0));
  };
  for (let i = 1; i <= iterations; i++) {
    await sleep(300);
    if (i % 2 === 1) {
      await measureApi(i);
      await sleep(300);
      raw.push(rawStart(i));
    } else {
      raw.push(rawStart(i));
      await sleep(300);
      await measureApi(i);
    }
    // busybox init takes SIGUSR2 once it has set up its handlers: a moment after the start.
    await sleep(300);
    if (i % 2 === 1) {
      await measureApiStop(i);
      await sleep(300);
      rawStopMs.push(await rawGracefulStop(i));
    } else {
      rawStopMs.push(await rawGracefulStop(i));
      await sleep(300);
      await measureApiStop(i);
    }
    await runOperation(d, 'DELETE', `/1.0/guests/lat${i}?force=true`);
    rawStop(i);
  }
  spawnSync('rmdir', ['/sys/fs/cgroup/*/trivisor-bench-raw'], { shell: true });
  const result = {
    benchmark: 'ct create+start latency',
    iterations,
    trivisor: { p50Ms: percentile(api, 50), p95Ms: percentile(api, 95) },
    rawRunc: { p50Ms: percentile(raw, 50), p95Ms: percentile(raw, 95) },
    ratioP50: percentile(api, 50) / percentile(raw, 50),
    ratioP95: percentile(api, 95) / percentile(raw, 95),
    target: 'ratio <= 1.5',
    gracefulStop: {
      trivisor: { p50Ms: percentile(apiStop, 50), p95Ms: percentile(apiStop, 95) },
      rawRunc: { p50Ms: percentile(rawStopMs, 50), p95Ms: percentile(rawStopMs, 95) },
      ratioP50: percentile(apiStop, 50) / percentile(rawStopMs, 50),
    },
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('ct-latency', result)}`);
} finally {
  spawnSync('sh', [
    '-c',
    `for c in $(runc --root ${rawRoot} list -q 2>/dev/null); do runc --root ${rawRoot} delete --force $c; done; for m in $(grep ${rawDir} /proc/mounts | cut -d' ' -f2); do umount $m; done; rmdir /sys/fs/cgroup/*/trivisor-bench-raw 2>/dev/null`,
  ]);
  await d.destroy();
}

function readProcStat(pid: string): string {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return '0 (gone) X ';
  }
}
