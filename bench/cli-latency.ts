// Benchmark (CLI latency): wall time of `trivisor list`, `info NAME`, `--help` and
// `exec NAME -- true` (ct) with 10 running guests, side by side in one run with what each
// wraps: curl sending the CLI's own request over the unix socket, `runc exec` of the same
// container, Node's bare start-up (`node -e 0`); each CLI command also from the TypeScript
// sources (TRIVISOR_NO_BUNDLE=1), and with --before from the code of an earlier commit.
// Every round runs each command once, in an order that rotates from round to round.
// Then the daemon's start-up with N guests running (its re-adoption time after a crash):
// kill -9, start again, time until daemon.json is written and until the first
// `GET /1.0/guests?recursion=1` answers; the bundle and the sources alternate.
// Usage: node bench/cli-latency.ts [rounds=30] [guests=100] [--before GIT-REF]
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { loadavg, release, tmpdir } from 'node:os';
import path from 'node:path';
import { readManifest, staleInputs } from '../src/build/bundles.ts';
import { request, sleep, startDaemon } from '../test/system/harness.ts';
import { ms, percentile, pool, provenance, QUICK, rssBytes, runOperation, writeResult } from './lib.ts';

const positional = process.argv
  .slice(2)
  .filter((a, i, all) => !a.startsWith('--') && all[i - 1] !== '--before');
const rounds = Number(positional[0] ?? 30);
const guestCount = Number(positional[1] ?? 100);
const beforeRef = process.argv.includes('--before')
  ? process.argv[process.argv.indexOf('--before') + 1]
  : null;
const startupRounds = QUICK ? 1 : 5;
const CLI_GUESTS = QUICK ? 2 : 10;

const REPO = path.resolve(import.meta.dirname, '..');
const loadAtStart = loadavg();

/** A checkout of `ref` beside this one (git archive; node_modules shared), removed at the end. */
function checkoutOf(ref: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'trivisor-before-'));
  const archive = spawnSync('sh', ['-c', `git -C "${REPO}" archive "${ref}" | tar -x -C "${dir}"`]);
  if (archive.status !== 0) throw new Error(`git archive ${ref}: ${archive.stderr}`);
  symlinkSync(path.join(REPO, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

const before = beforeRef ? checkoutOf(beforeRef) : null;
const d = await startDaemon();
const runcRoot = path.join(d.stateDir, 'runc');
const env = { ...process.env, TRIVISOR_DIR: d.stateDir, TRIVISOR_REMOTE: '', TRIVISOR_TOKEN: '' };
let daemonChild: ChildProcess | null = null;
try {
  const names = Array.from({ length: guestCount }, (_, i) => `b${i + 1}`);
  await pool(names.slice(0, CLI_GUESTS), 4, (name) =>
    runOperation(d, 'POST', '/1.0/guests', { name, image: 'busybox', start: true }),
  );
  const target = 'b1';
  const cli = path.join(REPO, 'bin/trivisor');
  const curl = (urlPath: string) => ['curl', '-sf', '--unix-socket', d.socket, `http://trivisor${urlPath}`];
  const fromSources = { TRIVISOR_NO_BUNDLE: '1' };

  interface Probe {
    argv: string[];
    env?: Record<string, string>;
  }
  const probes: Record<string, Probe> = {
    'trivisor list': { argv: [cli, 'list'] },
    'trivisor info': { argv: [cli, 'info', target] },
    'trivisor --help': { argv: [cli, '--help'] },
    'trivisor exec': { argv: [cli, 'exec', target, '--', 'true'] },
    'curl list': { argv: curl('/1.0/guests?recursion=2') },
    'curl info': { argv: curl(`/1.0/guests/${target}`) },
    'runc exec': { argv: ['runc', '--root', runcRoot, 'exec', target, 'true'] },
    'node -e 0': { argv: [process.execPath, '-e', '0'] },
    'sources list': { argv: [cli, 'list'], env: fromSources },
    'sources info': { argv: [cli, 'info', target], env: fromSources },
    'sources --help': { argv: [cli, '--help'], env: fromSources },
    'sources exec': { argv: [cli, 'exec', target, '--', 'true'], env: fromSources },
  };
  if (before) {
    const old = path.join(before, 'bin/trivisor');
    probes['before list'] = { argv: [old, 'list'] };
    probes['before info'] = { argv: [old, 'info', target] };
    probes['before --help'] = { argv: [old, '--help'] };
    probes['before exec'] = { argv: [old, 'exec', target, '--', 'true'] };
  }

  const run = (probe: Probe): number => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(probe.argv[0] as string, probe.argv.slice(1), {
      env: { ...env, ...probe.env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const took = ms(process.hrtime.bigint() - t0);
    if (r.status !== 0) throw new Error(`${probe.argv.join(' ')} exited ${r.status}: ${r.stderr}`);
    return took;
  };
  /** Peak RSS of one run, from GNU time. */
  const maxRssBytes = (probe: Probe): number | null => {
    const r = spawnSync('/usr/bin/time', ['-f', '%M', ...probe.argv], {
      env: { ...env, ...probe.env },
      encoding: 'utf8',
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    if (r.error)
      throw new Error(
        `/usr/bin/time cannot run (${r.error.message}): setup/test installs Debian's time package`,
      );
    const kib = Number(r.stderr.trim().split('\n').pop());
    return r.status === 0 && kib > 0 ? kib * 1024 : null;
  };

  // Warm-up, not counted: makes the bundle if it is stale, fills the page cache and Node's compile cache.
  for (const probe of Object.values(probes)) run(probe);
  const manifest = await readManifest(REPO);
  const bundleFresh = () => manifest !== null && staleInputs(REPO, manifest, 'cli').length === 0;
  if (!bundleFresh()) throw new Error('The CLI bundle is stale after the warm-up: is esbuild installed?');

  const samples: Record<string, number[]> = Object.fromEntries(Object.keys(probes).map((k) => [k, []]));
  const order = Object.keys(probes);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < order.length; i++) {
      const name = order[(r + i) % order.length] as string;
      samples[name]?.push(run(probes[name] as Probe));
    }
  }
  // Someone editing the sources meanwhile would have had the CLI rebuild or run the sources.
  const freshAtEnd = bundleFresh();
  const stats = (name: string) => {
    const s = samples[name] ?? [];
    return { p50Ms: percentile(s, 50), p95Ms: percentile(s, 95) };
  };
  const p50 = (name: string) => stats(name).p50Ms;
  const cliRows = [
    ['list', 'trivisor list', 'curl list'],
    ['info', 'trivisor info', 'curl info'],
    ['--help', 'trivisor --help', 'node -e 0'],
    ['exec', 'trivisor exec', 'runc exec'],
  ].map(([command, ours, baseline]) => ({
    command,
    baseline,
    bundle: stats(ours as string),
    sources: stats(`sources ${command}`),
    ...(before ? { before: stats(`before ${command}`) } : {}),
    baselineStats: stats(baseline as string),
    ratioP50: p50(ours as string) / p50(baseline as string),
  }));
  const rss = {
    bundleListBytes: maxRssBytes(probes['trivisor list'] as Probe),
    sourcesListBytes: maxRssBytes(probes['sources list'] as Probe),
    ...(before ? { beforeListBytes: maxRssBytes(probes['before list'] as Probe) } : {}),
  };

  // Daemon start-up with guestCount guests running.
  await pool(names.slice(CLI_GUESTS), 4, (name) =>
    runOperation(d, 'POST', '/1.0/guests', { name, image: 'busybox', start: true }),
  );
  await d.kill9();
  const daemonEnv = {
    ...process.env,
    TRIVISOR_DIR: d.stateDir,
    TRIVISOR_LISTEN: 'none',
    TRIVISOR_DEFAULT_NETWORK: 'none',
    TRIVISOR_LOG_LEVEL: 'warn',
  };
  const daemonJson = path.join(d.stateDir, 'daemon.json');
  const complete = () => {
    try {
      JSON.parse(readFileSync(daemonJson, 'utf8'));
      return true;
    } catch {
      return false;
    }
  };
  const variants: Record<string, string[]> = {
    bundle: [process.execPath, path.join(REPO, 'bin/trivisor.mjs'), 'daemon'],
    sources: [process.execPath, path.join(REPO, 'src/cli/main.ts'), 'daemon'],
    ...(before ? { before: [process.execPath, path.join(before, 'src/cli/main.ts'), 'daemon'] } : {}),
  };
  const startOnce = async (argv: string[]) => {
    rmSync(daemonJson, { force: true });
    const t0 = process.hrtime.bigint();
    const child = spawn(argv[0] as string, argv.slice(1), {
      env: daemonEnv,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    daemonChild = child;
    let stderr = '';
    child.stderr?.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    while (!complete()) {
      if (child.exitCode !== null) throw new Error(`daemon exited ${child.exitCode}: ${stderr}`);
      await sleep(5);
    }
    const readyMs = ms(process.hrtime.bigint() - t0);
    const listed = await request({ socketPath: d.socket }, 'GET', '/1.0/guests?recursion=1');
    const firstAnswerMs = ms(process.hrtime.bigint() - t0);
    const running = (listed.body.metadata as Array<{ status: string }>).filter(
      (g) => g.status === 'Running',
    ).length;
    if (running !== guestCount) throw new Error(`${running} of ${guestCount} guests running after a restart`);
    const rss = rssBytes(child.pid as number);
    child.kill('SIGKILL');
    await new Promise((r) =>
      child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r),
    );
    daemonChild = null;
    return { readyMs, firstAnswerMs, rssBytes: rss };
  };
  const startups: Record<string, Array<{ readyMs: number; firstAnswerMs: number; rssBytes: number }>> = {};
  // One start of each, not counted (page cache, compile cache written by the bundle's daemon).
  for (const argv of Object.values(variants)) {
    await startOnce(argv);
    // Quick mode only shows that start-up runs: it need not wait for the compile cache.
    if (!QUICK) await sleep(11_000);
    await startOnce(argv);
  }
  const variantNames = Object.keys(variants);
  for (let r = 0; r < startupRounds; r++) {
    for (let i = 0; i < variantNames.length; i++) {
      const name = variantNames[(r + i) % variantNames.length] as string;
      const runs = startups[name] ?? [];
      runs.push(await startOnce(variants[name] as string[]));
      startups[name] = runs;
    }
  }
  const median = (xs: number[]) => percentile(xs, 50);
  const daemonStartup = Object.fromEntries(
    Object.entries(startups).map(([name, runs]) => [
      name,
      {
        readyP50Ms: median(runs.map((x) => x.readyMs)),
        firstAnswerP50Ms: median(runs.map((x) => x.firstAnswerMs)),
        rssP50Bytes: median(runs.map((x) => x.rssBytes)),
      },
    ]),
  );
  await d.restart();

  const result = {
    benchmark: 'CLI latency and daemon start-up',
    rounds,
    cliGuests: CLI_GUESTS,
    startupGuests: guestCount,
    startupRounds,
    before: beforeRef,
    bundleFreshThroughout: freshAtEnd,
    cli: cliRows,
    rss,
    daemonStartup,
    targets: 'list, info, --help <= 150 ms; exec <= 250 ms (p50, 10 guests)',
    loadAverage: { start: loadAtStart, end: loadavg() },
    kernel: release(),
    // provenance() says 'unknown' where there is no git (CI's fresh root holds a copy of the files).
    commit: provenance().commit,
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('cli-latency', result)}`);
} finally {
  const stray = daemonChild as ChildProcess | null;
  if (stray && stray.exitCode === null && stray.signalCode === null) {
    stray.kill('SIGKILL');
    await new Promise((r) => stray.once('exit', r));
  }
  // The harness's own daemon again (if a start-up round failed), so that destroy() finds it.
  if (d.process.exitCode !== null || d.process.signalCode !== null) await d.restart().catch(() => {});
  await d.destroy();
  if (before) rmSync(before, { recursive: true, force: true });
}
