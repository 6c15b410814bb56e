// Benchmark (issue 16 §3): list latency with N guests in the store, without running N guests.
// One ct guest is created through the API (not started) and its records (spec, status, location,
// project index key) are copied in the daemon's own format under N names while the daemon is
// stopped: real records the daemon loads, of stopped guests, so no usage is read for them. With
// --running=M, M more guests are created and started through the API and really run: their usage
// (cgroup files read by the daemon for recursion=2, which `trivisor list` asks) is then in the
// figures, M of them.
// For each side, the code of this checkout ("after") and, with --before REF, the code of REF
// ("before", a git archive beside this one), a daemon of that code is started on the same state
// directory, left to settle (its start looks at every guest once), and measured in rounds that
// rotate the order of the probes: `GET /1.0/guests` (recursion=0), `?recursion=1`, `?recursion=2`
// (over the unix socket, from this process: the request alone), and that side's `trivisor list`
// (its bin/trivisor, the bundle) and `trivisor list --format json`: the CLI's own share is the
// difference from recursion=2. Then CPU time per probe: the daemon's (its ticks over 5 probes in a
// row, 10 ms resolution) and the CLI's own (GNU time), which the load stretches less. The sides alternate, each started twice per N, so a change of the
// machine's load hits both. Prints a table and writes bench/results/list-latency.json.
// Usage: node bench/list-latency.ts [N...=1000 10000] [--rounds=15] [--running=M] [--before GIT-REF]
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sqliteStoreOf } from '../src/cluster/cluster-files.ts';
import type { TxnOp } from '../src/store/kv.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { makeRunDir, removeRunDir } from '../test/leftovers.ts';
import { ms, percentile, pool, provenance, QUICK, writeResult } from './lib.ts';

const args = process.argv.slice(2);
const beforeRef = args.includes('--before') ? args[args.indexOf('--before') + 1] : undefined;
const sizes = args.filter((a, i) => /^\d+$/.test(a) && args[i - 1] !== '--before').map(Number);
if (sizes.length === 0) sizes.push(...(QUICK ? [200] : [1000, 10_000]));
const rounds = Number(
  args.find((a) => a.startsWith('--rounds='))?.slice('--rounds='.length) ?? (QUICK ? 3 : 15),
);
const running = Number(args.find((a) => a.startsWith('--running='))?.slice('--running='.length) ?? 0);
const REPO = path.resolve(import.meta.dirname, '..');
const SEED = 'seed0';

/** A checkout of `ref` beside this one (git archive; node_modules shared), removed at the end. */
function checkoutOf(ref: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'trivisor-before-'));
  const archive = spawnSync('sh', ['-c', `git -C "${REPO}" archive "${ref}" | tar -x -C "${dir}"`]);
  if (archive.status !== 0) throw new Error(`git archive ${ref}: ${archive.stderr}`);
  symlinkSync(path.join(REPO, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

const stateDir = await makeRunDir('list-bench');
const env = {
  ...process.env,
  TRIVISOR_DEFAULT_NETWORK: 'none',
  TRIVISOR_DIR: stateDir,
  TRIVISOR_LISTEN: 'none',
  TRIVISOR_LOG_LEVEL: 'warn',
  TRIVISOR_CONFIG_DIR: path.join(stateDir, 'cli-config'),
  TRIVISOR_REMOTE: '',
  TRIVISOR_TOKEN: '',
};

interface Running {
  child: ChildProcess;
  socket: string;
  stop(): Promise<void>;
}

/** The daemon of the code at `root`, on the bench's state directory. */
async function startDaemonOf(root: string): Promise<Running> {
  rmSync(path.join(stateDir, 'daemon.json'), { force: true });
  const logFd = openSync(path.join(stateDir, 'daemon.log'), 'a', 0o600);
  const child = spawn(process.execPath, [path.join(root, 'src/cli/main.ts'), 'daemon'], {
    env,
    stdio: ['ignore', logFd, 'pipe'],
  });
  closeSync(logFd);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-64 * 1024);
  });
  const end = Date.now() + 300_000;
  for (;;) {
    try {
      const info = JSON.parse(readFileSync(path.join(stateDir, 'daemon.json'), 'utf8')) as { socket: string };
      const stop = async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      };
      return { child, socket: info.socket, stop };
    } catch {
      if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}: ${stderr}`);
      if (Date.now() > end) throw new Error(`daemon not ready after 300 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** CPU time a process has used, in clock ticks (1/100 s). */
function cpuTicks(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return Number(fields[11]) + Number(fields[12]);
}

/** Waits until the daemon uses under a tenth of a CPU over 2 s (at most 10 min). */
async function quiet(pid: number): Promise<void> {
  const end = Date.now() + 600_000;
  for (let before = cpuTicks(pid); Date.now() < end; ) {
    await new Promise((r) => setTimeout(r, 2000));
    const now = cpuTicks(pid);
    if (now - before < 20) return;
    before = now;
  }
  throw new Error('The daemon did not settle within 10 minutes of its start');
}

/** One request over the unix socket: status and body, and the time to the body's last byte. */
function get(socket: string, urlPath: string, method = 'GET', body?: unknown) {
  return new Promise<{ status: number; text: string; ms: number }>((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        socketPath: socket,
        method,
        path: urlPath,
        headers: payload === undefined ? {} : { 'content-type': 'application/json' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            text: Buffer.concat(chunks).toString('utf8'),
            ms: ms(process.hrtime.bigint() - t0),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

const metadataOf = (text: string) => (JSON.parse(text) as { metadata: unknown }).metadata;

/** Runs an operation of the API to its end; throws unless it succeeded. */
async function operation(socket: string, method: string, urlPath: string, body?: unknown): Promise<void> {
  const r = await get(socket, urlPath, method, body);
  if (r.status !== 202) throw new Error(`${method} ${urlPath}: ${r.status} ${r.text}`);
  const op = JSON.parse(r.text) as { operation: string };
  const done = await get(socket, `${op.operation}/wait?timeout=600`);
  if ((metadataOf(done.text) as { status: string }).status !== 'Success') {
    throw new Error(`${method} ${urlPath}: ${done.text}`);
  }
}

/** Names of the guests that really run (--running=M): each side's daemon re-adopts them. */
const runningNames = Array.from({ length: running }, (_, i) => `r${String(i).padStart(4, '0')}`);

/** Creates the seed guest (stopped), and the running guests, through this checkout's daemon. */
async function createSeed(): Promise<void> {
  const d = await startDaemonOf(REPO);
  try {
    await operation(d.socket, 'POST', '/1.0/guests', { name: SEED, image: 'busybox' });
    await pool(runningNames, 4, (name) =>
      operation(d.socket, 'POST', '/1.0/guests', { name, image: 'busybox', start: true }),
    );
  } finally {
    await d.stop();
  }
}

/** Deletes the running guests through this checkout's daemon (what is left, the run dir's sweep removes). */
async function deleteRunning(): Promise<void> {
  if (runningNames.length === 0) return;
  const d = await startDaemonOf(REPO);
  try {
    await pool(runningNames, 4, (name) =>
      operation(d.socket, 'DELETE', `/1.0/guests/${name}?force=true`).catch(() => {}),
    );
  } finally {
    await d.stop();
  }
}

/** Copies the seed's records under guest names up to `n` guests in all (daemon stopped). */
async function seedUpTo(n: number, have: number): Promise<void> {
  const store = openSqliteStore(sqliteStoreOf(stateDir));
  try {
    const mine = (await store.list('/trivisor/')).kvs.filter((kv) => kv.key.endsWith(`/${SEED}`));
    if (mine.length < 3)
      throw new Error(`the seed guest has ${mine.length} records: ${mine.map((k) => k.key)}`);
    for (let i = have; i < n; i += 500) {
      const ops: TxnOp[] = [];
      for (let j = i; j < Math.min(n, i + 500); j++) {
        const name = `g${String(j).padStart(5, '0')}`;
        for (const kv of mine) {
          ops.push({
            type: 'put',
            key: `${kv.key.slice(0, -SEED.length)}${name}`,
            value: kv.value.replaceAll(`"${SEED}"`, `"${name}"`),
          });
        }
      }
      await store.txn({ compare: [], success: ops });
    }
  } finally {
    await store.close();
  }
}

interface Side {
  name: 'before' | 'after';
  root: string;
}
const sides: Side[] = [{ name: 'after', root: REPO }];
let before: string | undefined;
if (beforeRef) {
  before = checkoutOf(beforeRef);
  sides.unshift({ name: 'before', root: before });
}

type Probe =
  | 'GET recursion=0'
  | 'GET recursion=1'
  | 'GET recursion=2'
  | 'trivisor list'
  | 'list --format json';
const PROBES: Probe[] = [
  'GET recursion=0',
  'GET recursion=1',
  'GET recursion=2',
  'trivisor list',
  'list --format json',
];

/** One probe's wall time in ms, checked for the N+1 guests it must show. */
async function runProbe(side: Side, socket: string, probe: Probe, guests: number): Promise<number> {
  return (await probeOnce(side, socket, probe, guests, false)).ms;
}

/**
 * One probe: its wall time, and with `cpu` the CLI's own CPU time (user + system, through GNU
 * time), which the machine's load does not stretch as it does the wall time.
 */
async function probeOnce(
  side: Side,
  socket: string,
  probe: Probe,
  guests: number,
  cpu: boolean,
): Promise<{ ms: number; cliCpuMs?: number }> {
  if (probe.startsWith('GET')) {
    const recursion = probe.slice(-1);
    const r = await get(socket, `/1.0/guests?recursion=${recursion}`);
    const listed = metadataOf(r.text) as unknown[];
    if (r.status !== 200 || listed.length !== guests) {
      throw new Error(`${probe}: ${r.status}, ${listed?.length} guests of ${guests}`);
    }
    return { ms: r.ms };
  }
  const argv = [
    ...(cpu ? ['/usr/bin/time', '-f', 'cpu %U %S'] : []),
    path.join(side.root, 'bin/trivisor'),
    'list',
    ...(probe === 'trivisor list' ? [] : ['--format', 'json']),
  ];
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0] as string, argv.slice(1), {
    env,
    encoding: 'utf8',
    maxBuffer: 1 << 30,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const took = ms(process.hrtime.bigint() - t0);
  if (r.error) throw new Error(`${argv[0]}: ${r.error.message} (setup/test installs Debian's time package)`);
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr}`);
  const lines =
    probe === 'trivisor list'
      ? r.stdout.trimEnd().split('\n').length - 1
      : (JSON.parse(r.stdout) as unknown[]).length;
  if (lines !== guests) throw new Error(`${probe}: ${lines} guests of ${guests}`);
  if (!cpu) return { ms: took };
  const m = /cpu ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr);
  if (!m) throw new Error(`no CPU time from GNU time: ${r.stderr.slice(-200)}`);
  return { ms: took, cliCpuMs: (Number(m[1]) + Number(m[2])) * 1000 };
}

/** Probes run back to back per side and half to measure CPU time (the daemon's, the CLI's). */
const CPU_BATCH = 5;

const results: Array<Record<string, unknown>> = [];
try {
  await createSeed();
  let seeded = 1;
  for (const n of sizes) {
    await seedUpTo(n, seeded);
    seeded = Math.max(seeded, n);
    const have = seeded + running;
    const samples = new Map<string, number[]>();
    const cpuSamples: Record<string, { daemon: number[]; cli: number[] }> = {};
    const startMs: Record<Side['name'], number[]> = { before: [], after: [] };
    // Each side twice, alternating (before, after, before, after), half the rounds each time.
    for (const half of [0, 1]) {
      for (const side of sides) {
        const t0 = process.hrtime.bigint();
        const d = await startDaemonOf(side.root);
        try {
          // Ready when it lists every guest and its start's work is done (the guest controller
          // looks at every guest once); then one warm-up of each probe, not counted (the CLI's
          // bundle is built then if it is stale).
          await runProbe(side, d.socket, 'GET recursion=0', have);
          await quiet(d.child.pid as number);
          startMs[side.name].push(ms(process.hrtime.bigint() - t0));
          for (const probe of PROBES) await runProbe(side, d.socket, probe, have);
          const count = half === 0 ? Math.ceil(rounds / 2) : Math.floor(rounds / 2);
          for (let r = 0; r < count; r++) {
            for (let i = 0; i < PROBES.length; i++) {
              const probe = PROBES[(r + i) % PROBES.length] as Probe;
              const key = `${side.name}|${probe}`;
              const took = await runProbe(side, d.socket, probe, have);
              samples.set(key, [...(samples.get(key) ?? []), took]);
            }
          }
          // CPU per probe: the daemon's (its /proc ticks over a batch) and the CLI's own.
          for (const probe of PROBES) {
            const pid = d.child.pid as number;
            const before = cpuTicks(pid);
            let cliMs = 0;
            for (let i = 0; i < CPU_BATCH; i++) {
              cliMs += (await probeOnce(side, d.socket, probe, have, true)).cliCpuMs ?? 0;
            }
            const daemonMs = ((cpuTicks(pid) - before) * 10) / CPU_BATCH;
            const c = cpuSamples[`${side.name}|${probe}`] ?? { daemon: [], cli: [] };
            cpuSamples[`${side.name}|${probe}`] = c;
            c.daemon.push(daemonMs);
            if (!probe.startsWith('GET')) c.cli.push(cliMs / CPU_BATCH);
          }
        } finally {
          await d.stop();
        }
      }
    }
    for (const side of sides) {
      for (const probe of PROBES) {
        const s = samples.get(`${side.name}|${probe}`) ?? [];
        const c = cpuSamples[`${side.name}|${probe}`];
        const mean = (xs: number[] | undefined) =>
          xs && xs.length > 0 ? Math.round((xs.reduce((a, b) => a + b, 0) / xs.length) * 10) / 10 : null;
        const row = {
          guests: have,
          running,
          side: side.name,
          probe,
          p50Ms: Math.round(percentile(s, 50) * 10) / 10,
          p95Ms: Math.round(percentile(s, 95) * 10) / 10,
          samples: s.length,
          daemonCpuMs: mean(c?.daemon),
          cliCpuMs: mean(c?.cli),
        };
        results.push(row);
        console.log(
          `${String(have).padStart(6)}  ${side.name.padEnd(6)}  ${probe.padEnd(20)}  p50 ${row.p50Ms.toFixed(1).padStart(8)} ms  p95 ${row.p95Ms.toFixed(1).padStart(8)} ms  CPU: daemon ${String(row.daemonCpuMs).padStart(6)} ms${row.cliCpuMs === null ? '' : `, CLI ${row.cliCpuMs} ms`}`,
        );
      }
      console.log(
        `${String(have).padStart(6)}  ${side.name.padEnd(6)}  daemon start until settled: ${startMs[side.name].map((x) => x.toFixed(0)).join(', ')} ms`,
      );
    }
  }
  const file = writeResult('list-latency', {
    provenance: provenance(),
    before: beforeRef ?? null,
    rounds,
    running,
    results,
  });
  console.log(`results: ${file}`);
} finally {
  await deleteRunning().catch((e) => console.error(`deleting the running guests: ${e}`));
  await removeRunDir(stateDir);
  if (before) rmSync(before, { recursive: true, force: true });
}
