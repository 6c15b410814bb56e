// Benchmark (b3): what one more ct create+start costs with N guests running (issue 16 §3), the
// product beside its engine. Busybox guests are started through the API up to each N; at each N
// the bench times `--more` create+starts of one more guest, one at a time, and as many raw runc
// create+starts (the same bundle and overlay as a guest's, mounted on the host, `runc run -d`)
// interleaved with them on the same host, so that both see the same kernel state. With
// `--profile DIR`, the daemon runs with the inspector on (127.0.0.1, a free port) and a CPU profile
// of it during the timed create+starts at the largest N goes to DIR (open it in Chrome's DevTools).
// Usage: node bench/ct-start-at-n.ts [--stages 100,2000] [--more 20] [--concurrency 4] [--profile DIR]
import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { sleep, startDaemon } from '../test/system/harness.ts';
import {
  ms,
  percentile,
  pool,
  QUICK,
  rawRuncTemplate,
  runOperation,
  startRawRunc,
  writeResult,
} from './lib.ts';

const run = promisify(execFile);
const { values: opts } = parseArgs({
  options: {
    stages: { type: 'string', default: QUICK ? '2,4' : '100,2000' },
    more: { type: 'string', default: QUICK ? '2' : '20' },
    concurrency: { type: 'string', default: QUICK ? '2' : '4' },
    profile: { type: 'string' },
  },
});
const stages = opts.stages.split(',').map(Number);
const more = Number(opts.more);
const concurrency = Number(opts.concurrency);
if (![...stages, more, concurrency].every((x) => Number.isInteger(x) && x > 0)) {
  throw new Error('--stages, --more and --concurrency take positive whole numbers');
}
const log = (s: string) => console.error(`${new Date().toISOString().slice(11, 19)} ${s}`);

const d = await startDaemon(
  opts.profile ? { env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --inspect=127.0.0.1:0` } } : {},
);
const rawDir = path.join(d.stateDir, 'raw');
const rawRoot = path.join(rawDir, 'runc');
/** The raw containers' cgroup parent: this run's own, so that runs side by side do not mix. */
const rawCgroup = `trivisor-bench-start-${process.pid}`;
let guests: string[] = [];

/** A CPU profile of the daemon through its inspector (Profiler domain over the WebSocket). */
async function profiler(): Promise<{ stop(): Promise<unknown> }> {
  // The last to listen: the daemon's launcher may be a Node.js process of its own that execs it.
  const urls = [...d.stderr().matchAll(/Debugger listening on (ws:\/\/\S+)/g)].map((m) => m[1] as string);
  let ws: WebSocket | undefined;
  for (const url of urls.reverse()) {
    const socket = new WebSocket(url);
    const open = await new Promise<boolean>((resolve) => {
      socket.onopen = () => resolve(true);
      socket.onerror = () => resolve(false);
    });
    if (open) {
      ws = socket;
      break;
    }
  }
  if (!ws) throw new Error(`cannot reach the daemon's inspector at ${urls.join(', ') || 'no address'}`);
  const inspector = ws;
  let id = 0;
  const waiting = new Map<number, (r: unknown) => void>();
  inspector.onmessage = (m) => {
    const msg = JSON.parse(String(m.data)) as { id?: number; result?: unknown };
    if (msg.id !== undefined) waiting.get(msg.id)?.(msg.result);
  };
  const call = (method: string, params: Record<string, unknown> = {}) =>
    new Promise<unknown>((resolve) => {
      waiting.set(++id, resolve);
      inspector.send(JSON.stringify({ id, method, params }));
    });
  await call('Profiler.enable');
  await call('Profiler.setSamplingInterval', { interval: 500 });
  await call('Profiler.start');
  return {
    async stop() {
      const r = (await call('Profiler.stop')) as { profile: unknown };
      inspector.close();
      return r.profile;
    },
  };
}

let rawTemplate: Awaited<ReturnType<typeof rawRuncTemplate>> | undefined;
/** One raw runc container: the guest's overlay (idmapped tree) mounted on the host, then `runc run -d`. */
async function rawStart(name: string): Promise<void> {
  rawTemplate ??= await rawRuncTemplate(d);
  await startRawRunc(rawTemplate, {
    root: rawRoot,
    dir: path.join(rawDir, name),
    name,
    cgroupsPath: `/${rawCgroup}/${name}`,
  });
}

async function cleanRaw(): Promise<void> {
  const listed = spawnSync('runc', ['--root', rawRoot, 'list', '-q'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean);
  for (const c of listed) {
    await run('runc', ['--root', rawRoot, 'delete', '--force', c]).catch(() => {});
    await run('umount', [path.join(rawDir, c, 'rootfs')]).catch(() => {});
  }
  spawnSync('sh', [
    '-c',
    `for m in $(grep ${rawDir} /proc/mounts | cut -d' ' -f2); do umount $m; done; for c in /sys/fs/cgroup/*/${rawCgroup}; do rmdir $c/* $c; done 2>/dev/null`,
  ]);
  rmSync(rawDir, { recursive: true, force: true });
}

const timed = async (fn: () => Promise<void>): Promise<number> => {
  const t0 = process.hrtime.bigint();
  await fn();
  return ms(process.hrtime.bigint() - t0);
};
const summary = (xs: number[]) => ({
  p50Ms: percentile(xs, 50),
  p95Ms: percentile(xs, 95),
  meanMs: xs.reduce((a, b) => a + b, 0) / xs.length,
});

const result: Record<string, unknown> = { benchmark: 'ct create+start at N', stages, more, concurrency };
const out: Array<Record<string, unknown>> = [];
try {
  let count = 0;
  for (const n of stages) {
    const t0 = process.hrtime.bigint();
    const names = Array.from({ length: n - count }, (_, k) => `d${count + k}`);
    await pool(names, concurrency, async (name) => {
      guests.push(name);
      await runOperation(d, 'POST', '/1.0/guests', { name, image: 'busybox', start: true });
    });
    const stageSeconds = ms(process.hrtime.bigint() - t0) / 1000;
    log(`${n} guests running (${stageSeconds.toFixed(1)} s for ${n - count})`);
    count = n;
    const last = n === stages.at(-1);
    const prof = last && opts.profile ? await profiler() : undefined;
    const product: number[] = [];
    const raw: number[] = [];
    // The daemon's answer to GET /1.0 every 100 ms meanwhile: how long its event loop is held
    // (a start's own steps, and every pass over all guests: liveness, usage for the metrics).
    const pings: number[] = [];
    let pinging = true;
    const pinger = (async () => {
      while (pinging) {
        pings.push(await timed(async () => void (await d.api('GET', '/1.0'))));
        await sleep(100);
      }
    })();
    for (let i = 0; i < more; i++) {
      const name = `m${n}x${i}`;
      guests.push(name);
      product.push(
        await timed(() => runOperation(d, 'POST', '/1.0/guests', { name, image: 'busybox', start: true })),
      );
      if (i === 0 && !rawTemplate) await rawStart('warm'); // the template guest is made outside the timing
      raw.push(await timed(() => rawStart(`r${n}x${i}`)));
    }
    pinging = false;
    await pinger;
    if (prof && opts.profile) {
      mkdirSync(opts.profile, { recursive: true });
      const file = path.join(opts.profile, `daemon-${n}.cpuprofile`);
      writeFileSync(file, JSON.stringify(await prof.stop()));
      log(`wrote ${file}`);
    }
    await cleanRaw();
    await pool(
      Array.from({ length: more }, (_, i) => `m${n}x${i}`),
      concurrency,
      async (name) => {
        await runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`);
        guests = guests.filter((g) => g !== name);
      },
    );
    const stage = {
      guests: n,
      stagePerGuestMs: (stageSeconds * 1000) / names.length,
      oneMoreCreateStart: summary(product),
      rawRuncCreateStart: summary(raw),
      apiPing: {
        ...summary(pings),
        p99Ms: percentile(pings, 99),
        maxMs: Math.max(...pings),
        n: pings.length,
      },
    };
    out.push(stage);
    log(
      `at ${n}: one more create+start p50 ${stage.oneMoreCreateStart.p50Ms.toFixed(0)} ms, raw runc p50 ${stage.rawRuncCreateStart.p50Ms.toFixed(0)} ms, GET /1.0 p50/p99/max ${stage.apiPing.p50Ms.toFixed(0)}/${stage.apiPing.p99Ms.toFixed(0)}/${stage.apiPing.maxMs.toFixed(0)} ms, load ${(os.loadavg()[0] ?? 0).toFixed(1)}`,
    );
  }
  result.stagesMeasured = out;
  const t1 = process.hrtime.bigint();
  await pool([...guests], concurrency, async (name) => {
    await runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`);
  });
  result.deleteAllSeconds = ms(process.hrtime.bigint() - t1) / 1000;
  guests = [];
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('ct-start-at-n', result)}`);
} finally {
  await cleanRaw().catch(() => {});
  if (guests.length > 0) {
    await pool([...guests], concurrency, async (name) => {
      await runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`).catch(() => {});
    });
  }
  await sleep(100);
  await d.destroy();
}
