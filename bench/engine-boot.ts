// Benchmarks (a) of the vm and pvm issues: time from the API call to the guest's init
// (the guest kit's "trivisor: init" console line), against the same engine started by
// hand with the same arguments (read from the running guest's /proc/PID/cmdline, paths
// moved to a scratch dir) and timed to the same line, alternating, in one run.
// Usage: node bench/engine-boot.ts vm|pvm [iterations=5]
// Quick mode with one iteration boots each side once: the API guest is also the raw argv's
// template and the idle guest, the raw engine also the idle raw one (shareBoots).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { type Daemon, sleep, startDaemon } from '../test/system/harness.ts';
import {
  guestPss,
  percentile,
  pssBytes,
  QUICK,
  rawQemuArgv,
  rawQemuFailure,
  runOperation,
  settle,
  startRawQemu,
  writeResult,
} from './lib.ts';

const model = process.argv[2] === 'pvm' ? 'pvm' : 'vm';
const iterations = Number(process.argv[3] ?? 5);
const MARKER = 'trivisor: init';
const config = { 'limits.memory': '128MiB', 'limits.cpu': '1' };

async function untilMarker(
  file: string,
  t0: number,
  options: { timeoutMs?: number; gone?: () => string | undefined } = {},
): Promise<number> {
  const timeoutMs = options.timeoutMs ?? 120_000;
  while (performance.now() - t0 < timeoutMs) {
    if (existsSync(file) && readFileSync(file, 'utf8').includes(MARKER)) return performance.now() - t0;
    const gone = options.gone?.();
    if (gone) throw new Error(`${file}: ${gone}`);
    await sleep(5);
  }
  throw new Error(`no "${MARKER}" in ${file} after ${timeoutMs} ms`);
}

/** Seconds since boot, as /proc/uptime says (10 ms steps). */
const uptimeMs = (): number => Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000;

/** When process `pid` was forked, in ms since boot (/proc/PID/stat's starttime, in clock ticks of 10 ms). */
function forkedAtMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[19]) * 10;
}

/** Where an API start's time goes: before the engine's process is forked (the daemon's work), and after. */
const split: { beforeEngineMs: number; engineMs: number }[] = [];

async function viaApi(d: Daemon, name: string): Promise<number> {
  const log = path.join(d.stateDir, 'guests', name, 'console.log');
  const sinceBoot = uptimeMs();
  const t0 = performance.now();
  const r = await d.api('POST', '/1.0/guests', { name, image: 'busybox', model, start: true, config });
  if (r.status !== 202) throw new Error(r.text);
  const ms = await untilMarker(log, t0);
  await d.api('GET', `${r.body.operation}/wait?timeout=120`);
  const pid = (JSON.parse(d.ok(['info', name, '--format', 'json'])) as { state: { pid: number } }).state.pid;
  const beforeEngineMs = Math.max(0, forkedAtMs(pid) - sinceBoot);
  split.push({ beforeEngineMs, engineMs: ms - beforeEngineMs });
  return ms;
}

/** The engine's own argv for guest `name`, with its guest dir replaced by `dir`. */
function rawArgv(d: Daemon, name: string, dir: string): string[] {
  const pid = (JSON.parse(d.ok(['info', name, '--format', 'json'])) as { state: { pid: number } }).state.pid;
  const guestDir = path.join(d.stateDir, 'guests', name);
  if (model === 'vm') return rawQemuArgv(pid, guestDir, dir);
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  // What a running UML owns (uml_dir, its pid and mconsole) is in its runtime dir (decision 0066).
  const runtimeDir = path.join(d.stateDir, 'run', 'pvm', name);
  return argv.map((a) =>
    a
      .replaceAll(runtimeDir, dir)
      .replaceAll(guestDir, dir)
      // The agent's FIFOs are opened by Trivisor's launcher; the raw run has no agent.
      .replace(/^ssl1=fd:\d+,fd:\d+$/, 'ssl1=null'),
  );
}

async function viaRaw(template: string[], dir: string): Promise<number> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const log = path.join(dir, 'console.log');
  let t0: number;
  if (model === 'vm') {
    t0 = performance.now();
    const qemu = startRawQemu(template, dir);
    return untilMarker(log, t0, {
      gone: () => (qemu.exitCode !== null || qemu.signalCode !== null ? rawQemuFailure(dir) : undefined),
    });
  } else {
    mkdirSync(path.join(dir, 'disk'), { recursive: true });
    mkdirSync(path.join(dir, 'uml'), { recursive: true });
    // con0=fd:5,fd:1 (decision 0010): console input is fd 5, a FIFO opened read-write as the
    // launcher does, so that it always has a reader and the kernel never reads end of file.
    const fifo = path.join(dir, 'console.in');
    execFileSync('mkfifo', ['-m', '0600', fifo]);
    const input = openSync(fifo, 'r+');
    const out = openSync(log, 'a');
    t0 = performance.now();
    try {
      spawn(template[0]!, template.slice(1), {
        stdio: ['ignore', out, out, 'ignore', 'ignore', input],
        detached: true,
      }).unref();
    } finally {
      closeSync(input);
      closeSync(out);
    }
  }
  return untilMarker(log, t0);
}

function killRaw(dir: string): void {
  // Every process whose command line names the scratch dir is the raw guest's.
  spawnSync('pkill', ['-KILL', '-f', dir]);
}

/**
 * A quick run of one iteration (issue 19) boots each side once and uses both boots twice: the timed
 * API guest is the template of the raw argv and, left running, the idle guest; the timed raw engine,
 * left running, the idle raw one. Two boots instead of five; every figure is still measured.
 */
const shareBoots = QUICK && iterations === 1;
const d = await startDaemon();
/** An untimed guest of the benchmark's image, model and config, started through the API. */
const launch = (name: string) =>
  runOperation(d, 'POST', '/1.0/guests', { name, image: 'busybox', model, start: true, config });
const rawDir = path.join(d.stateDir, 'raw');
const api: number[] = [];
const raw: number[] = [];
try {
  let template: string[] | undefined;
  let idleGuest = 'idle';
  if (!shareBoots) {
    await launch('tpl');
    template = rawArgv(d, 'tpl', rawDir);
    await runOperation(d, 'DELETE', '/1.0/guests/tpl?force=true');
  }
  for (let i = 0; i < iterations; i++) {
    await sleep(500);
    const order = i % 2 === 0 ? ['api', 'raw'] : ['raw', 'api'];
    for (const which of order) {
      if (which === 'api') {
        api.push(await viaApi(d, `b${i}`));
        if (shareBoots) {
          template = rawArgv(d, `b${i}`, rawDir);
          idleGuest = `b${i}`;
        } else await runOperation(d, 'DELETE', `/1.0/guests/b${i}?force=true`);
      } else {
        if (!template) throw new Error('no template argv: the API guest boots first');
        raw.push(await viaRaw(template, rawDir));
        if (!shareBoots) killRaw(rawDir);
      }
      await sleep(500);
    }
  }
  if (!template) throw new Error('no template argv');
  // Idle host memory: one guest through the API and one raw engine, side by side, after a settle.
  if (!shareBoots) {
    await launch('idle');
    await viaRaw(template, rawDir);
  }
  await settle();
  await sleep(QUICK ? 1000 : 5000);
  const rawPids = spawnSync('pgrep', ['-f', rawDir], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  const idle = {
    trivisorMiB: guestPss(d.stateDir, idleGuest) / 2 ** 20,
    rawMiB: rawPids.reduce((sum, pid) => sum + pssBytes(Number(pid)), 0) / 2 ** 20,
  };
  killRaw(rawDir);
  await runOperation(d, 'DELETE', `/1.0/guests/${idleGuest}?force=true`);
  const result = {
    idleHostMemory: idle,
    benchmark: `${model} API call to init vs raw ${model === 'vm' ? 'qemu-system-x86_64' : 'linux.uml'}`,
    model,
    iterations,
    guest: config,
    trivisor: {
      p50Ms: percentile(api, 50),
      p95Ms: percentile(api, 95),
      samples: api,
      // The daemon's part (API call to the engine's fork) and the engine's (fork to init), per start.
      beforeEngineP50Ms: percentile(
        split.map((s) => s.beforeEngineMs),
        50,
      ),
      engineP50Ms: percentile(
        split.map((s) => s.engineMs),
        50,
      ),
      split,
    },
    raw: { p50Ms: percentile(raw, 50), p95Ms: percentile(raw, 95), samples: raw },
    ratioP50: percentile(api, 50) / percentile(raw, 50),
    target: 'ratio <= 1.1',
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult(`${model}-boot`, result)}`);
} finally {
  killRaw(rawDir);
  await d.destroy();
}
