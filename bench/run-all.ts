// Runs every benchmark, each with its baseline in the same script, one after the other, then
// regenerates docs/benchmarks.md whole from the results (bench/report.ts).
// Usage: node bench/run-all.ts [--quick] [--out DIR] [--only NAME,...]   (npm run bench -- --quick)
//   (full)   the sizes docs/benchmarks.md cites; results in bench/results, report in docs/benchmarks.md.
//   --quick  each at a tiny size (TRIVISOR_BENCH_QUICK=1), to show that it still runs end to end: the
//            results and the report go to DIR (a new temporary dir by default), never to bench/results
//            or docs/benchmarks.md, since a tiny run under whatever load is no measurement.
// Every result file carries its provenance (bench/lib.ts): machine, load before and after, commit.
// The run's own summary is DIR/run.json; the exit code is 1 when any benchmark failed.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** One benchmark: its script, its arguments at full and at quick size, and the results it writes. */
export interface Benchmark {
  name: string;
  script: string;
  args: string[];
  quickArgs: string[];
  results: string[];
  quickResults: string[];
  /** Extra environment in quick mode. */
  quickEnv?: Record<string, string>;
  /** What quick mode leaves out of this benchmark, and why (said in the report and the test). */
  quickOmits?: string;
  /**
   * Quick mode's time limit when 300 s is not enough (a benchmark that builds its own OS first, or
   * whose smallest run is many steps of a cluster). A guard against a hang, never a timing.
   */
  quickTimeoutMs?: number;
}

/** Every benchmark in docs/benchmarks.md, in the order of its sections. */
export const BENCHMARKS: Benchmark[] = [
  {
    name: 'ct-latency',
    script: 'ct-latency.ts',
    args: ['60'],
    quickArgs: ['3'],
    results: ['ct-latency.json'],
    quickResults: ['ct-latency.json'],
  },
  {
    name: 'ct-density',
    script: 'ct-density.ts',
    args: ['1000', '4'],
    quickArgs: ['4', '2'],
    results: ['ct-density-1000.json'],
    quickResults: ['ct-density-4.json'],
  },
  {
    name: 'ct-density-stages',
    script: 'ct-density-stages.ts',
    args: ['--stages', '100,1000,2000,5000,10000'],
    quickArgs: ['--stages', '4', '--concurrency', '2'],
    results: ['ct-density-stages.json'],
    quickResults: ['ct-density-stages.json'],
  },
  {
    name: 'ct-density-net',
    script: 'ct-density-net.ts',
    args: ['2000', '4'],
    quickArgs: ['8', '2'],
    results: ['ct-density-net-2000.json'],
    quickResults: ['ct-density-net-8.json'],
  },
  {
    // One more create+start at N running guests beside raw runc at the same moments (decision 0097).
    name: 'ct-start-at-n',
    script: 'ct-start-at-n.ts',
    args: ['--stages', '100,2000', '--more', '20'],
    quickArgs: ['--stages', '2,4', '--more', '2', '--concurrency', '2'],
    results: ['ct-start-at-n.json'],
    quickResults: ['ct-start-at-n.json'],
  },
  {
    // What one short command costs a daemon holding memory: forked from it, or from the launcher's
    // helper (issue 16, decision 0097).
    name: 'runner-fork',
    script: 'runner-fork.ts',
    args: ['--count', '1000', '--mib', '500'],
    quickArgs: ['--count', '20', '--mib', '50'],
    results: ['runner-fork.json'],
    quickResults: ['runner-fork.json'],
  },
  {
    name: 'models',
    script: 'models.ts',
    args: ['ct,pvm,vm', '3'],
    quickArgs: ['ct,pvm,vm', '1'],
    results: ['models.json'],
    quickResults: ['models.json'],
  },
  {
    name: 'vm-boot',
    script: 'engine-boot.ts',
    args: ['vm', '5'],
    quickArgs: ['vm', '1'],
    results: ['vm-boot.json'],
    quickResults: ['vm-boot.json'],
  },
  {
    name: 'pvm-boot',
    script: 'engine-boot.ts',
    args: ['pvm', '5'],
    quickArgs: ['pvm', '1'],
    results: ['pvm-boot.json'],
    quickResults: ['pvm-boot.json'],
  },
  {
    name: 'vm-variants',
    script: 'vm-variants.ts',
    args: ['3'],
    quickArgs: ['1'],
    results: ['vm-variants.json'],
    quickResults: ['vm-variants.json'],
    quickEnv: { VARIANTS: 'q35-own,pc-own' },
    quickOmits:
      "the 256 MiB variants (the default boot with more memory: two more boots) and the Debian-initrd and microvm variants: on this host those do not reach init (Debian's initrd runs out of memory at 128 MiB, microvm hangs under load), and each failure costs the variant's 60 s timeout",
  },
  {
    name: 'vm-density',
    script: 'engine-density.ts',
    args: ['vm', '10', '128MiB'],
    quickArgs: ['vm', '1', '128MiB'],
    results: ['vm-density-10.json'],
    quickResults: ['vm-density-1.json'],
  },
  {
    name: 'pvm-density',
    script: 'engine-density.ts',
    args: ['pvm', '50', '64MiB'],
    quickArgs: ['pvm', '2', '64MiB'],
    results: ['pvm-density-50.json'],
    quickResults: ['pvm-density-2.json'],
  },
  {
    name: 'vm-pvm-density',
    script: 'vm-pvm-density.ts',
    args: ['4', '16', '128MiB'],
    quickArgs: ['1', '1', '128MiB'],
    results: ['vm-pvm-density.json'],
    quickResults: ['vm-pvm-density.json'],
  },
  {
    name: 'vm-os-boot',
    script: 'vm-os-boot.ts',
    args: ['5'],
    quickArgs: ['1'],
    results: ['vm-os-boot.json'],
    quickResults: ['vm-os-boot.json'],
    // It builds the Debian disk first (debootstrap with a kernel: two minutes on a quiet host, five at a
    // load average of 15, 12 in a CI run beside other engineers' tests building it too at load 9-11),
    // then boots it twice to the kernel's first line. A hang guard, not a measure: the os group's
    // 1,500 s holds it and the group's two others.
    quickTimeoutMs: 1_200_000,
  },
  {
    name: 'storage-snapshot-clone',
    script: 'storage-snapshot-clone.ts',
    args: ['3'],
    quickArgs: ['1'],
    results: ['storage-snapshot-clone.json'],
    quickResults: ['storage-snapshot-clone.json'],
  },
  {
    name: 'storage-backup',
    script: 'storage-backup.ts',
    args: [],
    quickArgs: [],
    results: ['storage-backup.json'],
    quickResults: ['storage-backup.json'],
  },
  {
    name: 'storage-vm',
    script: 'storage-vm.ts',
    args: ['3', 'vm,pvm'],
    quickArgs: ['1', 'vm,pvm'],
    results: ['storage-vm.json'],
    quickResults: ['storage-vm.json'],
  },
  {
    name: 'vm-live-restore',
    script: 'vm-live-restore.ts',
    args: ['1', '512'],
    quickArgs: [],
    results: ['vm-live-restore.json'],
    quickResults: ['vm-live-restore.json'],
  },
  {
    name: 'network',
    script: 'network.ts',
    args: ['256', '50'],
    quickArgs: ['2', '3'],
    results: ['network.json'],
    quickResults: ['network.json'],
  },
  {
    name: 'cli-latency',
    script: 'cli-latency.ts',
    args: ['30', '100'],
    quickArgs: ['2', '2'],
    results: ['cli-latency.json'],
    quickResults: ['cli-latency.json'],
  },
  {
    name: 'list-latency',
    script: 'list-latency.ts',
    args: ['1000', '10000', '--rounds=10', '--running=100'],
    quickArgs: ['200', '--rounds=2'],
    results: ['list-latency.json'],
    quickResults: ['list-latency.json'],
  },
  {
    name: 'store-etcd',
    script: 'store-etcd.ts',
    args: ['300'],
    quickArgs: ['10'],
    results: ['store-etcd.json'],
    quickResults: ['store-etcd.json'],
  },
  {
    name: 'cluster-ct',
    script: 'cluster-ct.ts',
    args: ['30'],
    quickArgs: ['1'],
    results: ['cluster-ct.json'],
    quickResults: ['cluster-ct.json'],
  },
  {
    name: 'cluster-list',
    script: 'cluster-list.ts',
    args: ['1000', '50'],
    // The three-member cluster and the single host still start in quick mode: that is most of its ~50 s.
    quickArgs: ['60', '5'],
    results: ['cluster-list.json'],
    quickResults: ['cluster-list.json'],
  },
  {
    name: 'cluster-move',
    script: 'cluster-move.ts',
    args: ['3', '256', '128'],
    quickArgs: ['1', '4', '4'],
    results: ['cluster-move.json'],
    quickResults: ['cluster-move.json'],
  },
  {
    name: 'vm-live-migration',
    script: 'vm-live-migration.ts',
    args: ['3', '256'],
    quickArgs: ['1', '128'],
    results: ['vm-live-migration.json'],
    quickResults: ['vm-live-migration.json'],
    // Its smallest run is still twelve moves of a TCG vm (local and shared pools, idle and busy,
    // both ways and by hand): at a load of 10-15 it was at the ninth when 300 s ran out.
    quickTimeoutMs: 540_000,
  },
  {
    name: 'ha-failover',
    script: 'ha-failover.ts',
    args: ['100', '20', '5', '5'],
    quickArgs: ['1', '1', '1', '1'],
    results: ['ha-failover.json'],
    quickResults: ['ha-failover.json'],
    // Two clusters formed, a partition and a kill: at a load of 10-15 both had run when 300 s ran out.
    quickTimeoutMs: 540_000,
  },
  {
    name: 'placement',
    script: 'placement.ts',
    args: ['10000', '200000'],
    quickArgs: ['1000', '2000'],
    results: ['placement.json'],
    quickResults: ['placement.json'],
  },
  {
    name: 'web-ui',
    script: 'web-ui.ts',
    args: ['10'],
    quickArgs: ['1'],
    results: ['web-ui.json'],
    quickResults: ['web-ui.json'],
  },
  {
    name: 'fuzz-api',
    script: 'fuzz-api.ts',
    args: ['20000', '2000'],
    quickArgs: ['100', '20', '20261204'],
    results: ['fuzz-api.json'],
    quickResults: ['fuzz-api.json'],
  },
  {
    // Reads ../shared/traces (outside the repository): without it, it fails naming the directory.
    name: 'planner',
    script: 'planner.ts',
    args: [],
    quickArgs: ['20110303', '--slice', '40'],
    results: ['planner.json'],
    quickResults: ['planner.json'],
  },
  {
    // The self-managing cluster's policies against DPM, LR-MMT and Incus's rule on the traces
    // (issue 14 §6, decision 0051); quick mode replays synthetic clusters instead.
    name: 'autonomic',
    script: 'autonomic.ts',
    args: [],
    quickArgs: [],
    results: ['autonomic.json'],
    quickResults: ['autonomic.json'],
  },
];

/** What one benchmark's run came to (DIR/run.json lists one per benchmark). */
export interface BenchmarkRun {
  name: string;
  argv: string[];
  ok: boolean;
  exitCode: number | null;
  signal: string | null;
  seconds: number;
  results: string[];
  log: string;
  error?: string;
  quickOmits?: string;
}

/** The run's summary, DIR/run.json. */
export interface RunSummary {
  quick: boolean;
  resultsDir: string;
  report: string;
  startedAt: string;
  seconds: number;
  runs: BenchmarkRun[];
  reportOk: boolean;
}

const BENCH_DIR = import.meta.dirname;
const REPO = path.resolve(BENCH_DIR, '..');

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  if (i < 0) return undefined;
  const value = process.argv[i + 1];
  if (!value || value.startsWith('--')) throw new Error(`${name} needs a value`);
  return value;
}

/** The benchmark running now: a run-all stopped (SIGTERM, SIGINT: a test's timeout) stops it first. */
const running = new Set<ReturnType<typeof spawn>>();
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.once(sig, () => {
    for (const child of running) child.kill('SIGTERM');
    console.log(`run-all: stopped by ${sig}`);
    process.exit(128 + (sig === 'SIGTERM' ? 15 : 2));
  });
}

/** Runs `node ARGV` with its output in `log`; resolves with its exit once it is gone. */
function runNode(
  argv: string[],
  options: { env: NodeJS.ProcessEnv; log: string; timeoutMs: number },
): Promise<{ code: number | null; signal: string | null; timedOut: boolean }> {
  const out = openSync(options.log, 'a');
  const child = spawn(process.execPath, argv, { cwd: REPO, env: options.env, stdio: ['ignore', out, out] });
  running.add(child);
  child.once('close', () => running.delete(child));
  let timedOut = false;
  // SIGTERM, not SIGKILL: what the benchmark's own daemon leaves is swept as a dead run's (test/leftovers.ts).
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGTERM');
  }, options.timeoutMs);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, timedOut });
    });
    child.on('error', () => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, timedOut });
    });
  });
}

const tail = (file: string, lines = 15): string => {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
};

async function main(): Promise<number> {
  const quick = process.argv.includes('--quick');
  const only = option('--only')?.split(',');
  const unknown = only?.filter((n) => !BENCHMARKS.some((b) => b.name === n)) ?? [];
  if (unknown.length > 0) {
    throw new Error(
      `No benchmark named ${unknown.join(', ')}: one of ${BENCHMARKS.map((b) => b.name).join(', ')}`,
    );
  }
  const given = option('--out');
  const resultsDir = given
    ? path.resolve(given)
    : quick
      ? mkdtempSync(path.join(os.tmpdir(), 'trivisor-bench-quick-'))
      : path.join(BENCH_DIR, 'results');
  const report =
    quick || given ? path.join(resultsDir, 'benchmarks.md') : path.join(REPO, 'docs/benchmarks.md');
  const logs = path.join(resultsDir, 'logs');
  mkdirSync(logs, { recursive: true });
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TRIVISOR_BENCH_RESULTS: resultsDir,
    TRIVISOR_BENCH_QUICK: quick ? '1' : '',
  };
  const started = performance.now();
  const startedAt = new Date().toISOString();
  const runs: BenchmarkRun[] = [];
  const chosen = BENCHMARKS.filter((b) => !only || only.includes(b.name));
  for (const b of chosen) {
    const argv = [path.join(BENCH_DIR, b.script), ...(quick ? b.quickArgs : b.args)];
    const log = path.join(logs, `${b.name}.log`);
    const t0 = performance.now();
    const since = Date.now();
    console.log(`${b.name}: node bench/${b.script} ${argv.slice(1).join(' ')}`);
    const timeoutMs = quick ? (b.quickTimeoutMs ?? 300_000) : 4 * 3_600_000;
    const exit = await runNode(argv, {
      env: { ...env, ...(quick ? b.quickEnv : {}) },
      log,
      timeoutMs,
    });
    const seconds = (performance.now() - t0) / 1000;
    const expected = quick ? b.quickResults : b.results;
    // A result counts only when this run wrote it: an old file must not pass for a new one.
    const stale = expected.filter((f) => {
      try {
        return statSync(path.join(resultsDir, f)).mtimeMs < since;
      } catch {
        return true;
      }
    });
    const error = exit.timedOut
      ? `did not finish in ${timeoutMs / 1000} s`
      : exit.code !== 0
        ? `exited with ${exit.code ?? exit.signal}`
        : stale.length > 0
          ? `wrote no ${stale.join(', ')}`
          : undefined;
    runs.push({
      name: b.name,
      argv: argv.map((a) => path.relative(REPO, a) || a),
      ok: error === undefined,
      exitCode: exit.code,
      signal: exit.signal,
      seconds: Math.round(seconds * 10) / 10,
      results: expected,
      log,
      ...(error ? { error } : {}),
      ...(quick && b.quickOmits ? { quickOmits: b.quickOmits } : {}),
    });
    console.log(
      `  ${error ? `FAILED (${error}), see ${log}:\n${tail(log)}` : 'ok'} in ${seconds.toFixed(1)} s`,
    );
  }
  const reportLog = path.join(logs, 'report.log');
  const made = await runNode([path.join(BENCH_DIR, 'report.ts'), '--out', report], {
    env,
    log: reportLog,
    timeoutMs: 60_000,
  });
  const reportOk = made.code === 0;
  console.log(reportOk ? `report: ${report}` : `report FAILED, see ${reportLog}:\n${tail(reportLog)}`);
  const summary: RunSummary = {
    quick,
    resultsDir,
    report,
    startedAt,
    seconds: Math.round((performance.now() - started) / 100) / 10,
    runs,
    reportOk,
  };
  writeFileSync(path.join(resultsDir, 'run.json'), `${JSON.stringify(summary, null, 2)}\n`);
  const failed = runs.filter((r) => !r.ok);
  console.log(
    `${runs.length - failed.length} of ${runs.length} benchmarks ran in ${summary.seconds} s${failed.length > 0 ? `; failed: ${failed.map((r) => r.name).join(', ')}` : ''}; summary ${path.join(resultsDir, 'run.json')}`,
  );
  return failed.length === 0 && reportOk ? 0 : 1;
}

if (import.meta.main) {
  try {
    process.exitCode = await main();
  } catch (e) {
    console.error((e as Error).message);
    process.exitCode = 2;
  }
}
