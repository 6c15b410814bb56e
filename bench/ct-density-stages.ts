// Benchmark (b2): ct density in stages (issue 16 §6). Raw runc first, then Trivisor: busybox
// ct guests are started up to each stage's N (through the API, `--concurrency` at a time), and
// at each N the bench measures host memory per guest, daemon RSS, list latency (API and CLI),
// create+start of one more guest and when `trivisor monitor` sees it, and re-adoption after a
// kill -9 of the daemon (none lost: every guest Running with the pid it had). It stops at the
// first failure and names the limit it hit; it always deletes what it started.
// Usage: node bench/ct-density-stages.ts [--stages 100,1000,2000] [--raw-stages 1000,2000|none]
//        [--concurrency 4] [--budget-gib 12]
import { execFile, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { sleep, startDaemon } from '../test/system/harness.ts';
import { nameLimit, readResourceUse } from './density-limits.ts';
import { densityPlotSvg } from './density-plot.ts';
import {
  hostUsedBytes,
  ms,
  percentile,
  pool,
  pssBytes,
  QUICK,
  rawRuncTemplate,
  rssBytes,
  runOperation,
  settle,
  startRawRunc,
  writeResult,
} from './lib.ts';

const run = promisify(execFile);
const { values: opts } = parseArgs({
  options: {
    stages: { type: 'string', default: QUICK ? '4,8' : '100,1000,2000,5000,10000' },
    'raw-stages': { type: 'string' },
    concurrency: { type: 'string', default: QUICK ? '2' : '4' },
    'budget-gib': { type: 'string', default: '12' },
  },
});
const stages = opts.stages.split(',').map(Number);
const rawStages =
  opts['raw-stages'] === 'none' ? [] : (opts['raw-stages'] ?? opts.stages).split(',').map(Number);
const concurrency = Number(opts.concurrency);
const budgetBytes = Number(opts['budget-gib']) * 2 ** 30;
if (![...stages, ...rawStages, concurrency].every((x) => Number.isInteger(x) && x > 0)) {
  throw new Error('--stages, --raw-stages and --concurrency take positive whole numbers');
}
const MiB = 2 ** 20;
const REPO = path.resolve(import.meta.dirname, '..');
const CLI = path.join(REPO, 'bin/trivisor');
const log = (s: string) => console.error(`${new Date().toISOString().slice(11, 19)} ${s}`);

/**
 * The kernel's own memory (slab, kernel stacks, page tables), bytes: what namespaces, cgroups,
 * mounts and processes cost beyond their pages. Less disturbed by other work on the machine than
 * MemTotal − MemAvailable, which moves by gigabytes when others build or test beside the run.
 */
function kernelBytes(): number {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  return (kb('Slab') + kb('KernelStack') + kb('PageTables')) * 1024;
}

/** Why a stage stopped: the limit named from the error and the host's resources at that moment. */
class StageFailure extends Error {}

const d = await startDaemon();
const cliEnv = {
  ...process.env,
  TRIVISOR_DIR: d.stateDir,
  TRIVISOR_CONFIG_DIR: path.join(d.stateDir, 'cli-config'),
};
const rawDir = path.join(d.stateDir, 'raw');
const rawRoot = path.join(rawDir, 'runc');
const result: Record<string, unknown> = {
  benchmark: 'ct density in stages',
  stagesAsked: stages,
  rawStagesAsked: rawStages,
  concurrency,
};
let started: string[] = [];

async function timeGet(path_: string, times: number) {
  const samples: number[] = [];
  for (let i = 0; i < times; i++) {
    const s = process.hrtime.bigint();
    const r = await d.api('GET', path_);
    if (r.status !== 200) throw new Error(`${path_}: ${r.status}`);
    samples.push(ms(process.hrtime.bigint() - s));
  }
  return { p50Ms: percentile(samples, 50), p95Ms: percentile(samples, 95) };
}

function timeCli(args: string[]): number {
  const s = process.hrtime.bigint();
  const r = spawnSync(CLI, args, { env: cliEnv, encoding: 'utf8', maxBuffer: 1 << 30, timeout: 120_000 });
  if (r.status !== 0) throw new Error(`trivisor ${args.join(' ')}: ${r.stderr}`);
  return ms(process.hrtime.bigint() - s);
}

/** Guests by name: status and init pid (GET ?recursion=1). */
async function guestStates(): Promise<Map<string, { status: string; pid: number }>> {
  const r = await d.api('GET', '/1.0/guests?recursion=1');
  if (r.status !== 200) throw new Error(`GET /1.0/guests?recursion=1: ${r.status}`);
  const guests = r.body.metadata as Array<{ name: string; status: string; state: { pid: number } }>;
  return new Map(guests.map((g) => [g.name, { status: g.status, pid: g.state.pid }]));
}

/**
 * Starts guests named `prefix + i` for i in [from, to), `concurrency` at a time; the first
 * failure stops the others and is thrown as a StageFailure naming the limit.
 */
async function startUpTo(
  from: number,
  to: number,
  startOne: (i: number) => Promise<void>,
  usedBefore: number,
): Promise<void> {
  let failure: Error | undefined;
  const indexes = Array.from({ length: to - from }, (_, k) => from + k);
  await pool(indexes, concurrency, async (i) => {
    if (failure) return;
    if (hostUsedBytes() - usedBefore > budgetBytes) {
      failure ??= new StageFailure(`memory budget of the run (${opts['budget-gib']} GiB) used`);
      return;
    }
    try {
      await startOne(i);
    } catch (e) {
      failure ??= e as Error;
    }
    if ((i + 1) % 500 === 0) log(`${i + 1}/${to} started`);
  });
  if (failure) throw failure;
}

// --- Raw runc: the same bundle and overlay as a Trivisor guest's, no daemon around it.
async function rawPhase(): Promise<Array<Record<string, unknown>>> {
  if (rawStages.length === 0) return [];
  const raw = await rawRuncTemplate(d);
  mkdirSync(rawRoot, { recursive: true });
  const rawStart = (i: number) =>
    startRawRunc(raw, {
      root: rawRoot,
      dir: path.join(rawDir, `raw${i}`),
      name: `raw${i}`,
      cgroupsPath: `/trivisor-bench-raw/raw${i}`,
    });
  const rawPids = (count: number) =>
    Array.from({ length: count }, (_, i) => {
      try {
        return Number(readFileSync(path.join(rawDir, `raw${i}`, 'pid'), 'utf8'));
      } catch {
        return 0;
      }
    });
  const out: Array<Record<string, unknown>> = [];
  await settle();
  const usedBefore = hostUsedBytes();
  const kernelBefore = kernelBytes();
  let count = 0;
  const t0 = process.hrtime.bigint();
  try {
    for (const n of rawStages) {
      const s0 = process.hrtime.bigint();
      try {
        await startUpTo(count, n, rawStart, usedBefore);
      } catch (e) {
        const limit = nameLimit((e as Error).message, readResourceUse({ full: true }));
        log(`raw runc stopped before ${n}: ${limit.resource}: ${limit.error}`);
        result.rawLimit = { atGuests: n, ...limit };
        break;
      }
      count = n;
      const stageSeconds = ms(process.hrtime.bigint() - s0) / 1000;
      await settle();
      const used = hostUsedBytes() - usedBefore;
      const pss = rawPids(n).reduce((sum, pid) => sum + pssBytes(pid), 0);
      out.push({
        guests: n,
        startAllSeconds: ms(process.hrtime.bigint() - t0) / 1000,
        stagePerGuestMs:
          (stageSeconds * 1000) / Math.max(1, n - (out.length ? (out.at(-1)?.guests as number) : 0)),
        hostMemoryPerGuestMiB: used / n / MiB,
        kernelMemoryPerGuestMiB: (kernelBytes() - kernelBefore) / n / MiB,
        hostMemoryPerGuestBeyondOwnProcessesMiB: (used - pss) / n / MiB,
      });
      log(`raw runc ${n}: ${(used / n / MiB).toFixed(2)} MiB/guest`);
    }
  } finally {
    const t1 = process.hrtime.bigint();
    await cleanRaw();
    if (out.length > 0) result.rawDeleteAllSeconds = ms(process.hrtime.bigint() - t1) / 1000;
  }
  return out;
}

async function cleanRaw(): Promise<void> {
  const listed = spawnSync('runc', ['--root', rawRoot, 'list', '-q'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean);
  await pool(listed, concurrency, async (c) => {
    await run('runc', ['--root', rawRoot, 'delete', '--force', c]).catch(() => {});
    await run('umount', [path.join(rawDir, c, 'rootfs')]).catch(() => {});
  });
  spawnSync('sh', [
    '-c',
    `for m in $(grep ${rawDir} /proc/mounts | cut -d' ' -f2); do umount $m; done; rmdir /sys/fs/cgroup/*/trivisor-bench-raw 2>/dev/null`,
  ]);
  // What runc could not delete (its state gone, or it was killed half-way) is killed by its cgroup.
  spawnSync('sh', [
    '-c',
    'cat /sys/fs/cgroup/pids/trivisor-bench-raw/*/cgroup.procs 2>/dev/null | xargs -r kill -9',
  ]);
  await sleep(1000);
  spawnSync('sh', [
    '-c',
    'for c in /sys/fs/cgroup/*/trivisor-bench-raw; do find $c -mindepth 1 -depth -type d -delete 2>/dev/null; rmdir $c; done 2>/dev/null',
  ]);
  rmSync(rawDir, { recursive: true, force: true });
}

/** Creates and starts one more guest; how long that took and when `trivisor monitor` saw it start. */
async function oneMore(name: string): Promise<{ createStartMs: number; monitorSeenMs: number }> {
  const monitor = spawn(CLI, ['monitor', '--type', 'lifecycle'], {
    env: cliEnv,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  try {
    await sleep(1500); // the monitor connects and subscribes
    let seenAt: bigint | undefined;
    const seen = new Promise<void>((resolve) => {
      let buffer = '';
      monitor.stdout.on('data', (b: Buffer) => {
        buffer += b.toString();
        for (const line of buffer.split('\n').slice(0, -1)) {
          if (line.includes('"guest-started"') && line.includes(`/${name}"`)) {
            seenAt ??= process.hrtime.bigint();
            resolve();
          }
        }
        buffer = buffer.slice(buffer.lastIndexOf('\n') + 1);
      });
    });
    const t0 = process.hrtime.bigint();
    await runOperation(d, 'POST', '/1.0/guests', { name, image: 'busybox', start: true });
    const createStartMs = ms(process.hrtime.bigint() - t0);
    await Promise.race([seen, sleep(30_000)]);
    if (!seenAt) throw new Error(`trivisor monitor did not show ${name} starting within 30 s`);
    return { createStartMs, monitorSeenMs: ms(seenAt - t0) };
  } finally {
    monitor.kill('SIGTERM');
  }
}

/** kill -9 the daemon, start it again, and time until every guest is Running with its old pid. */
async function readopt(n: number): Promise<{ readoptSeconds: number; lost: number }> {
  const before = await guestStates();
  await d.kill9();
  const t0 = process.hrtime.bigint();
  await d.restart();
  const end = Date.now() + 300_000;
  for (;;) {
    const now = await guestStates().catch(() => new Map<string, { status: string; pid: number }>());
    const lost = [...before].filter(
      ([name, g]) => now.get(name)?.status !== 'Running' || now.get(name)?.pid !== g.pid,
    );
    if (lost.length === 0 && now.size >= n)
      return { readoptSeconds: ms(process.hrtime.bigint() - t0) / 1000, lost: 0 };
    if (Date.now() > end) return { readoptSeconds: Number.NaN, lost: lost.length };
    await sleep(500);
  }
}

async function trivisorPhase(): Promise<Array<Record<string, unknown>>> {
  const out: Array<Record<string, unknown>> = [];
  const daemonPid = () => d.process.pid as number;
  await settle();
  const usedBefore = hostUsedBytes();
  const kernelBefore = kernelBytes();
  const rssBefore = rssBytes(daemonPid());
  result.daemonRssBeforeMiB = rssBefore / MiB;
  let count = 0;
  let startSeconds = 0;
  for (const n of stages) {
    const s0 = process.hrtime.bigint();
    try {
      await startUpTo(
        count,
        n,
        async (i) => {
          started.push(`d${i}`);
          await runOperation(d, 'POST', '/1.0/guests', { name: `d${i}`, image: 'busybox', start: true });
        },
        usedBefore,
      );
    } catch (e) {
      const limit = nameLimit((e as Error).message, readResourceUse({ full: true }));
      log(`Trivisor stopped before ${n}: ${limit.resource}: ${limit.error}`);
      result.limit = { atGuests: n, runningWhenItFailed: (await guestStates()).size, ...limit };
      break;
    }
    count = n;
    const stageSeconds = ms(process.hrtime.bigint() - s0) / 1000;
    startSeconds += stageSeconds;
    const states = await guestStates();
    const running = [...states.values()].filter((g) => g.status === 'Running');
    await settle();
    const used = hostUsedBytes() - usedBefore;
    const pss = running.reduce((sum, g) => sum + pssBytes(g.pid), 0);
    const daemonRss = rssBytes(daemonPid());
    const listUrls = await timeGet('/1.0/guests', QUICK ? 3 : 10);
    const listFull = await timeGet('/1.0/guests?recursion=1', QUICK ? 3 : 5);
    const cliListMs = timeCli(['list']);
    const cliListJsonMs = timeCli(['list', '--format', 'json']);
    const more = await oneMore(`m${n}`);
    await runOperation(d, 'DELETE', `/1.0/guests/m${n}?force=true`);
    const adoption = await readopt(n);
    const stage = {
      guests: n,
      running: running.length,
      startAllSeconds: startSeconds,
      stagePerGuestMs:
        (stageSeconds * 1000) / Math.max(1, n - ((out.at(-1)?.guests as number | undefined) ?? 0)),
      hostMemoryPerGuestMiB: used / n / MiB,
      kernelMemoryPerGuestMiB: (kernelBytes() - kernelBefore) / n / MiB,
      guestProcessPssPerGuestMiB: pss / n / MiB,
      hostMemoryPerGuestBeyondOwnProcessesMiB: (used - pss - (daemonRss - rssBefore)) / n / MiB,
      daemonRssMiB: daemonRss / MiB,
      listUrls,
      listFull,
      cliListMs,
      cliListJsonMs,
      oneMoreCreateStartMs: more.createStartMs,
      monitorSeenMs: more.monitorSeenMs,
      readoptSeconds: adoption.readoptSeconds,
      lostAfterKill9: adoption.lost,
      resources: readResourceUse(),
    };
    out.push(stage);
    log(
      `Trivisor ${n}: ${stage.hostMemoryPerGuestMiB.toFixed(2)} MiB/guest, daemon ${stage.daemonRssMiB.toFixed(0)} MiB, list ${listUrls.p50Ms.toFixed(0)} ms, re-adopted in ${adoption.readoptSeconds.toFixed(1)} s, ${adoption.lost} lost`,
    );
    if (adoption.lost > 0) {
      result.limit = {
        atGuests: n,
        resource: 're-adoption',
        error: `${adoption.lost} guests not re-adopted within 300 s`,
      };
      break;
    }
  }
  return out;
}

async function deleteAll(): Promise<number> {
  const names = [...(await guestStates()).keys()];
  const t0 = process.hrtime.bigint();
  await pool(names, concurrency, async (name) => {
    await runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`);
  });
  started = [];
  return ms(process.hrtime.bigint() - t0) / 1000;
}

try {
  result.raw = await rawPhase();
  result.trivisor = await trivisorPhase();
  log('deleting every guest');
  result.deleteAllSeconds = await deleteAll();
  result.deleteAllGuests = (result.trivisor as Array<{ guests: number }>).at(-1)?.guests ?? 0;
  const name = 'ct-density-stages';
  console.log(JSON.stringify(result, null, 2));
  const file = writeResult(name, result);
  console.log(`wrote ${file}`);
  if (!QUICK) {
    const svg = path.join(REPO, 'docs/ct-density-stages.svg');
    writeFileSync(svg, densityPlotSvg(JSON.parse(readFileSync(file, 'utf8'))));
    console.log(`wrote ${svg}`);
  }
} finally {
  await cleanRaw().catch(() => {});
  if (started.length > 0) await deleteAll().catch((e) => log(`delete: ${(e as Error).message}`));
  await d.destroy();
}
