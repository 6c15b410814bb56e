// Every benchmark stays runnable (issue 19): `npm run bench -- --quick` runs each one and its
// baseline at a tiny size, into a run dir of a test (never bench/results or docs/benchmarks.md),
// and each result must hold its figures: present, positive, ratios finite. No timing is asserted:
// a quick run on a shared machine measures nothing, it only shows that both sides still run.
// The benchmarks are checked in groups, one test file per group (test/bench/quick-*.test.ts), so
// that the system suite's two lanes share them (decision 0071): all of them in one file took 17
// minutes of one lane, and over its 30-minute limit on a loaded host. GROUPS covers every
// benchmark exactly once; each file checks that too.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { BENCHMARKS, type RunSummary } from '../../bench/run-all.ts';
import { cleanUpRun, makeRunDir } from '../leftovers.ts';

const REPO = path.resolve(import.meta.dirname, '../..');
/** Whether the tree is a git checkout: CI's fresh root holds a copy of the files only (decision 0012). */
const inGit = spawnSync('git', ['-C', REPO, 'rev-parse', 'HEAD'], { stdio: 'ignore' }).status === 0;
type Json = Record<string, unknown>;

/**
 * The values at a dotted path; `*` stands for every key or element there. Throws when a part
 * of the path is missing, so an absent figure fails as surely as a wrong one.
 */
function valuesAt(root: unknown, dotted: string): Array<{ where: string; value: unknown }> {
  let found: Array<{ where: string; value: unknown }> = [{ where: '', value: root }];
  for (const part of dotted.split('.')) {
    found = found.flatMap(({ where, value }) => {
      if (value === null || typeof value !== 'object')
        throw new Error(`${where || 'the result'} has no ${part}`);
      const entries = part === '*' ? Object.entries(value) : [[part, (value as Json)[part]] as const];
      if (entries.length === 0) throw new Error(`${where || 'the result'} is empty`);
      return entries.map(([k, v]) => {
        if (v === undefined) throw new Error(`${where || 'the result'} has no ${k}`);
        return { where: where ? `${where}.${k}` : k, value: v };
      });
    });
  }
  return found;
}

/** Every value at each path is a number that `holds` (JSON writes NaN and Infinity as null). */
function numbersAt(file: string, result: Json, paths: string[], holds: (n: number) => boolean, what: string) {
  for (const p of paths) {
    for (const { where, value } of valuesAt(result, p)) {
      assert.ok(
        typeof value === 'number' && holds(value),
        `${file}: ${where} is ${JSON.stringify(value)}, not ${what}`,
      );
    }
  }
}

/** Every value at each path is a finite number above zero. */
const positive = (file: string, result: Json, paths: string[]) =>
  numbersAt(file, result, paths, (n) => Number.isFinite(n) && n > 0, 'a positive finite number');

/**
 * Every value at each path is a finite number, of any sign: a host-wide difference (the host's
 * used memory after the guests against before), which another test file running beside a quick
 * run (decision 0071) moves either way: -15 MiB a guest was seen for 4 guests.
 */
const finite = (file: string, result: Json, paths: string[]) =>
  numbersAt(file, result, paths, Number.isFinite, 'a finite number');

/** vm-boot and pvm-boot: each side's start, the ratio and the idle memory of each. */
const engineBoot = (r: Json, f: string) =>
  positive(f, r, [
    'trivisor.p50Ms',
    'raw.p50Ms',
    'ratioP50',
    'idleHostMemory.trivisorMiB',
    'idleHostMemory.rawMiB',
  ]);

/** What each quick result must hold: the benchmark's figures and its baseline's, and the ratio. */
const CHECKS: Record<string, (r: Json, file: string) => void> = {
  'ct-latency.json': (r, f) => positive(f, r, ['trivisor.p50Ms', 'rawRunc.p50Ms', 'ratioP50', 'ratioP95']),
  'ct-density-4.json': (r, f) => {
    assert.equal(r.running, 4, `${f}: ${r.running} of 4 guests running`);
    finite(f, r, ['hostMemoryPerGuestMiB']);
    positive(f, r, [
      'startAllSeconds',
      'deleteAllSeconds',
      'guestProcessPssPerGuestMiB',
      'daemonRssMiB',
      'listUrls.p50Ms',
      'listFull.p50Ms',
      'listWithUsage.p50Ms',
      'cliListJsonMs',
    ]);
  },
  'ct-density-net-8.json': (r, f) => {
    const t = r.trivisor as Json;
    assert.deepEqual(
      [
        t.started,
        t.leased,
        t.reachedGateway,
        t.spoofingHeld,
        t.baseChainsOnPrerouting,
        t.filteredPorts,
        t.portChains,
      ],
      [8, 8, 8, true, 1, 8, 0],
      `${f}: 8 guests started, leased, reaching the gateway; anti-spoofing held; one base chain, the 8 ports in its sets, no chain per port`,
    );
    positive(f, r, [
      'trivisor.startAllSeconds',
      'trivisor.allLeasedSeconds',
      'trivisor.checkAllSeconds',
      'trivisor.daemonRssMiB',
      'trivisor.dnsmasqRssMiB',
      'raw.createSeconds',
      'deleteAllSeconds',
    ]);
  },
  'ct-density-stages.json': (r, f) => {
    assert.equal(r.limit, undefined, `${f}: a quick run hits no limit`);
    const stages = r.trivisor as Json[];
    assert.deepEqual(
      stages.map((s) => [s.guests, s.running, s.lostAfterKill9]),
      [[4, 4, 0]],
      `${f}: 4 guests running, none lost after kill -9`,
    );
    assert.deepEqual(
      (r.raw as Json[]).map((s) => s.guests),
      [4],
      `${f}: raw runc at the same N`,
    );
    positive(f, r, [
      'deleteAllSeconds',
      'trivisor.*.startAllSeconds',
      'trivisor.*.daemonRssMiB',
      'trivisor.*.listUrls.p50Ms',
      'trivisor.*.listFull.p50Ms',
      'trivisor.*.cliListMs',
      'trivisor.*.oneMoreCreateStartMs',
      'trivisor.*.monitorSeenMs',
      'trivisor.*.readoptSeconds',
      'raw.*.startAllSeconds',
    ]);
  },
  'ct-start-at-n.json': (r, f) => {
    const stages = r.stagesMeasured as Json[];
    assert.deepEqual(
      stages.map((s) => s.guests),
      [2, 4],
      `${f}: one more guest timed at 2 and at 4 running`,
    );
    positive(f, r, [
      'deleteAllSeconds',
      'stagesMeasured.*.stagePerGuestMs',
      'stagesMeasured.*.oneMoreCreateStart.p50Ms',
      'stagesMeasured.*.oneMoreCreateStart.p95Ms',
      'stagesMeasured.*.oneMoreCreateStart.meanMs',
      'stagesMeasured.*.rawRuncCreateStart.p50Ms',
      'stagesMeasured.*.rawRuncCreateStart.meanMs',
      'stagesMeasured.*.apiPing.p50Ms',
      'stagesMeasured.*.apiPing.p99Ms',
      'stagesMeasured.*.apiPing.maxMs',
      'stagesMeasured.*.apiPing.n',
    ]);
  },
  'models.json': (r, f) => {
    assert.deepEqual(Object.keys(r.ratioToNative as Json).sort(), ['ct', 'pvm', 'vm'], `${f}: models`);
    // operations: what `trivisor plan advise` divides seconds by (decision 0054).
    positive(f, r, ['ratioToNative.*.*', 'bootToInitMs.*', 'idleHostMemoryMiB.*', 'operations.*']);
  },
  'vm-boot.json': engineBoot,
  'pvm-boot.json': engineBoot,
  'vm-variants.json': (r, f) => {
    const variants = r.variants as Json[];
    assert.deepEqual(
      variants.map((v) => v.name),
      ['q35-own', 'pc-own'],
      `${f}: the variants quick mode runs`,
    );
    for (const v of variants)
      assert.equal(v.failed, undefined, `${f}: variant ${v.name} failed: ${v.failed}`);
    positive(f, r, ['variants.*.p50Ms', 'variants.*.ratioToDefault']);
  },
  'vm-os-boot.json': (r, f) => {
    assert.equal(r.marker, 'Linux version', `${f}: quick mode times both sides to the kernel's first line`);
    positive(f, r, ['trivisor.p50Ms', 'raw.p50Ms', 'ratioP50', 'disk.virtualBytes']);
  },
  'vm-density-1.json': (r, f) =>
    positive(f, r, ['allUpSeconds', 'hostMemoryPerGuestMiB', 'deleteAllSeconds']),
  'pvm-density-2.json': (r, f) =>
    positive(f, r, ['allUpSeconds', 'hostMemoryPerGuestMiB', 'deleteAllSeconds']),
  'vm-pvm-density.json': (r, f) =>
    positive(f, r, [
      'off.vm.hostMemoryPerGuestMiB',
      'on.vm.hostMemoryPerGuestMiB',
      'off.pvm.hostMemoryPerGuestMiB',
      'on.pvm.hostMemoryPerGuestMiB',
      'on.pvm.ramFilePerGuestMiB',
      'on.vm.guestsPerGiB',
      'on.pvm.guestsPerGiB',
    ]),
  'storage-snapshot-clone.json': (r, f) => {
    assert.equal((r.rows as Json[]).length, 2, `${f}: a row for the dir pool and one for btrfs`);
    positive(f, r, [
      'rows.*.snapshotRunning.p50Ms',
      'rows.*.restoreRunning.p50Ms',
      'rows.*.cloneRunning.p50Ms',
      'rows.*.deleteSnapshot.p50Ms',
    ]);
  },
  'storage-backup.json': (r, f) =>
    positive(f, r, [
      'writableBytes',
      'archiveBytes',
      'export.ms',
      'export.mibPerSecond',
      'import.ms',
      'import.mibPerSecond',
      'rawTarZstd.ms',
      'rawTarZstdAllCores.ms',
      'rawUnzstdUntar.ms',
    ]),
  'vm-live-restore.json': (r, f) =>
    positive(f, r, [
      'fullImportAndStartMs',
      'liveTimeToRunningMs',
      'liveTimeToCompleteMs',
      'plainArchiveBytes',
      'fromBackupDirectory.fullImportAndStartMs',
      'fromBackupDirectory.liveTimeToRunningMs',
      'fromBackupDirectory.liveTimeToCompleteMs',
    ]),
  'storage-vm.json': (r, f) => {
    assert.deepEqual(
      (r.snapshots as Json[]).map((x) => x.model),
      ['vm', 'pvm'],
      `${f}: snapshot rows`,
    );
    assert.deepEqual(
      (r.backups as Json[]).map((x) => x.model),
      ['vm', 'pvm'],
      `${f}: backup rows`,
    );
    positive(f, r, [
      'snapshots.*.snapshotRunning.p50Ms',
      'snapshots.*.cloneRunning.p50Ms',
      'snapshots.*.restoreRunning.p50Ms',
      'snapshots.*.deleteSnapshot.p50Ms',
      'backups.*.export.ms',
      'backups.*.import.ms',
      'backups.*.rawQemuImgConvertFlat.ms',
      'backups.*.rawTarZstdOfFlat.ms',
      'backups.*.rawUntarZstd.ms',
      'backups.*.rawQemuImgConvertBack.ms',
      'incremental.full.ms',
      'incremental.incremental.ms',
      'incremental.incremental.archiveBytes',
    ]);
  },
  'network.json': (r, f) => {
    assert.equal((r.baselines as Json[]).length, 2, `${f}: the veth baseline at the start and the end`);
    // The baseline, 7 guest-to-guest paths and 3 guest-to-host paths.
    assert.equal((r.rows as Json[]).length, 11, `${f}: rows`);
    positive(f, r, [
      'baselines.*.mbitPerSecond',
      'baselines.*.rttMs',
      'rows.*.mbitPerSecond',
      'rows.*.rttMs',
    ]);
    positive(f, r, ['rows.*.throughputRatio', 'rows.*.rttRatio']);
  },
  'cli-latency.json': (r, f) => {
    assert.ok((r.cli as Json[]).length > 0, `${f}: no commands`);
    positive(f, r, [
      'cli.*.bundle.p50Ms',
      'cli.*.sources.p50Ms',
      'cli.*.baselineStats.p50Ms',
      'cli.*.ratioP50',
      'daemonStartup.*.readyP50Ms',
      'daemonStartup.*.firstAnswerP50Ms',
    ]);
  },
  'list-latency.json': (r, f) => {
    // Quick mode: 200 stored guests, this checkout's daemon only (the "before" side needs --before REF and git).
    const rows = r.results as Json[];
    assert.deepEqual(
      rows.map((x) => [x.guests, x.side, x.probe]),
      ['GET recursion=0', 'GET recursion=1', 'GET recursion=2', 'trivisor list', 'list --format json'].map(
        (probe) => [200, 'after', probe],
      ),
      `${f}: every probe at 200 guests`,
    );
    positive(f, r, ['results.*.p50Ms', 'results.*.p95Ms', 'results.*.samples']);
    // CPU from /proc ticks (10 ms over 5 probes): a request can take less than one tick.
    numbersAt(f, r, ['results.*.daemonCpuMs'], (n) => Number.isFinite(n) && n >= 0, 'a number ≥ 0');
    for (const x of rows.filter((x) => !String(x.probe).startsWith('GET'))) {
      assert.ok(Number(x.cliCpuMs) > 0, `${f}: ${x.probe}: the CLI's CPU is ${x.cliCpuMs}`);
    }
  },
  'store-etcd.json': (r, f) => positive(f, r, ['ops.*.etcd.p50Ms', 'ops.*.sqlite.p50Ms', 'ops.*.ratioP50']),
  'cluster-ct.json': (r, f) => {
    assert.deepEqual(
      (r.setups as Json[]).map((x) => x.name),
      ['sqlite', 'etcd, 1 voter', 'etcd, 3 voters'],
      `${f}: setups`,
    );
    positive(f, r, ['setups.*.p50Ms', 'setups.*.meanMs', 'setups.*.ratioP50']);
  },
  'cluster-list.json': (r, f) => {
    assert.deepEqual(
      (r.setups as Json[]).map((x) => x.name),
      ['m1', 'm2', 'm3', 'sqlite'],
      `${f}: setups`,
    );
    positive(f, r, [
      'setups.*.recursion1.p50Ms',
      'setups.*.recursion1.ratioP50',
      'setups.*.recursion0.p50Ms',
      'profileOnM1.rangeReads.p50Ms',
      'profileOnM1.serializeRoute.p50Ms',
    ]);
  },
  'cluster-move.json': (r, f) => {
    const models = r.models as Json[];
    assert.deepEqual(
      models.map((x) => x.model),
      ['ct', 'pvm'],
      `${f}: models`,
    );
    for (const x of models) {
      assert.equal(
        (x.move as Json & { samples: Json[] }).samples.length,
        2,
        `${f}: ${x.model} moved there and back`,
      );
      // A step may fall between two polls of a tiny move: present and not negative, not asserted above zero.
      for (const step of ['request', 'stop', 'archive', 'handOver', 'sendApply', 'start']) {
        const v = (x.stepsP50Ms as Json)[step];
        assert.ok(typeof v === 'number' && v >= 0, `${f}: ${x.model} step ${step} is ${JSON.stringify(v)}`);
      }
    }
    positive(f, r, [
      'models.*.guestDirBytes',
      'models.*.archiveBytes',
      'models.*.move.p50Ms',
      'models.*.tarZstd.p50Ms',
      'models.*.cpA.p50Ms',
      'models.*.ratioToTarP50',
      'models.*.ratioToCpP50',
    ]);
  },
  'vm-live-migration.json': (r, f) => {
    const samples = r.samples as Array<{
      disk: string;
      load: string;
      how: string;
      downtimeMs: number;
      pausedMs?: number;
    }>;
    // The local disk idle and busy; the shared pool's (only RAM moves, decision 0061) idle in a quick run.
    for (const [disk, load] of [
      ['local', 'idle'],
      ['local', 'busy'],
      ['shared', 'idle'],
    ]) {
      const of = (how: string) => samples.filter((x) => x.disk === disk && x.load === load && x.how === how);
      assert.equal(of('trivisor').length, 2, `${f}: ${disk} ${load}: moved live there and back`);
      assert.equal(of('hand').length, 1, `${f}: ${disk} ${load}: migrated once by hand`);
      for (const x of samples) {
        assert.ok(x.downtimeMs >= 0, `${f}: ${x.load} ${x.how} downtime ${x.downtimeMs}`);
        if (x.how === 'trivisor') assert.ok((x.pausedMs ?? -1) >= x.downtimeMs, `${f}: paused ${x.pausedMs}`);
      }
    }
    positive(f, r, ['samples.*.totalMs', 'samples.*.ramBytes']);
  },
  'ha-failover.json': (r, f) => {
    assert.equal(r.overlappingWriters, 0, `${f}: two boots of the HA writer wrote at the same time`);
    // The first boot, one after the partition, one after the loss and one after the model loss.
    assert.equal(r.boots, 4, `${f}: boots of the writer`);
    positive(f, r, [
      'partitions.p50Ms',
      'losses.p50Ms',
      'startBaseline.p50Ms',
      'modelLosses.ct.p50Ms',
      'modelLosses.pvm.p50Ms',
      'modelLosses.vm.p50Ms',
      'modelStartBaseline.pvm.p50Ms',
      'modelStartBaseline.vm.p50Ms',
    ]);
  },
  'placement.json': (r, f) => {
    assert.equal(r.agreedOnFirst, 2000, `${f}: the scheduler and the full sort agree on the first decisions`);
    positive(f, r, ['scheduler.decisionsPerSecond', 'baselineFullSort.decisionsPerSecond', 'ratio']);
  },
  'web-ui.json': (r, f) =>
    positive(f, r, ['listInteractive.p50Ms', 'filterKeystroke.p50Ms', 'maxRowNodes', 'firstPageGzipBytes']),
  'fuzz-api.json': (r, f) => {
    assert.equal(r.daemonAlive, true, `${f}: the daemon died under the fuzzer`);
    positive(f, r, ['requests', 'routesHit', 'requestsPerSecond']);
  },
  'autonomic.json': (r, f) => {
    // Synthetic clusters in quick mode: every policy replayed on each, with host-hours and a SLATAH.
    assert.equal(r.source, 'synthetic (quick mode)', `${f}: the quick source`);
    for (const part of ['planetLab', 'bitbrains']) {
      for (const { where, value } of valuesAt(r, `${part}.runs.*.policies`)) {
        for (const policy of ['trivisor', 'dpm', 'lr-mmt', 'incus']) {
          assert.ok((value as Json)[policy] !== undefined, `${f}: ${where} has no ${policy}`);
        }
      }
      positive(f, r, [
        `${part}.runs.*.policies.*.hostHours`,
        `${part}.runs.*.policies.*.activeHostIntervals`,
      ]);
      numbersAt(f, r, [`${part}.runs.*.policies.*.slatah`], (n) => n >= 0 && n <= 1, 'a share from 0 to 1');
    }
  },
  'runner-fork.json': (r, f) => {
    assert.equal(r.count, 20, `${f}: the quick count`);
    assert.equal((r.hostRunner as Json).runs, 20, `${f}: every run through the daemon's fork`);
    assert.equal((r.helperRunner as Json).runs, 20, `${f}: every run through the helper`);
    positive(f, r, ['hostRunner.totalMs', 'helperRunner.totalMs', 'hostOverHelper']);
  },
  'planner.json': (r, f) => {
    // A slice of 40 VMs of each trace: the planner and both FFD baselines planned and replayed.
    assert.equal(r.sliceVms, 40, `${f}: the quick slice`);
    const pl = r.planetLab as Json;
    const bb = r.bitbrains as Json;
    assert.equal(pl.vms, 40, `${f}: PlanetLab VMs`);
    assert.equal(bb.vms, 40, `${f}: Bitbrains VMs`);
    positive(f, r, [
      'planetLab.lowerBound',
      'planetLab.trivisor.hosts',
      'planetLab.ffdPeak.hosts',
      'planetLab.ffdP95.hosts',
      'planetLab.ratioToLowerBound',
      'planetLab.ratioToFfdPeak',
      'bitbrains.lowerBoundJuly',
      'bitbrains.trivisor.hosts',
      'bitbrains.ffdPeak.hosts',
      'bitbrains.ffdP95.hosts',
      'bitbrains.percentile',
      'peakRssMiB',
    ]);
    const hosts = (x: Json, k: string) => (x[k] as Json).hosts as number;
    assert.ok(hosts(pl, 'trivisor') >= (pl.lowerBound as number), `${f}: PlanetLab below its lower bound`);
    assert.ok(hosts(pl, 'trivisor') <= hosts(pl, 'ffdPeak'), `${f}: PlanetLab more hosts than FFD on peaks`);
    for (const [name, x] of [
      ['planetLab.trivisor', pl.trivisor],
      ['bitbrains.trivisor', bb.trivisor],
      ['bitbrains.ffdP95', bb.ffdP95],
    ] as const) {
      const over = (x as Json).overloadFraction as number;
      assert.ok(over >= 0 && over <= 1, `${f}: ${name}.overloadFraction ${over}`);
    }
  },
};

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

/** The groups, each run by its own test file; together every benchmark, once. */
export const GROUPS: Record<string, { names: string[]; timeoutMs: number }> = {
  ct: {
    names: [
      'ct-latency',
      'ct-density',
      'ct-density-stages',
      'ct-density-net',
      'ct-start-at-n',
      'models',
      'store-etcd',
      'placement',
      'web-ui',
      'fuzz-api',
      'planner',
      'autonomic',
      'runner-fork',
    ],
    timeoutMs: 1_200_000,
  },
  engines: {
    names: ['vm-boot', 'pvm-boot', 'vm-variants', 'vm-density', 'pvm-density', 'vm-pvm-density'],
    timeoutMs: 1_200_000,
  },
  // vm-os-boot builds a Debian disk first (debootstrap with a kernel: five minutes at a load average of 15).
  os: { names: ['vm-os-boot', 'storage-snapshot-clone', 'storage-backup'], timeoutMs: 1_500_000 },
  storage: {
    names: ['storage-vm', 'vm-live-restore', 'network', 'cli-latency', 'list-latency'],
    timeoutMs: 1_200_000,
  },
  cluster: { names: ['cluster-ct', 'cluster-list', 'cluster-move'], timeoutMs: 1_200_000 },
  migration: { names: ['vm-live-migration', 'ha-failover'], timeoutMs: 1_200_000 },
};

/** What quick mode may leave out of a benchmark (said in its quickOmits): a new omission must be added here. */
const OMITS = ['vm-variants'];

/** The test of one group: `node bench/run-all.ts --quick --only NAMES`, every result checked. */
export function quickGroupTest(group: string): void {
  const { names, timeoutMs } = GROUPS[group] ?? { names: [], timeoutMs: 0 };
  test(`npm run bench -- --quick runs the ${group} benchmarks and their baselines to sane output, and leaves docs/benchmarks.md alone`, {
    timeout: timeoutMs,
  }, async (t) => {
    assert.ok(names.length > 0, `no group ${group}`);
    // Every benchmark the runner knows is in one group and has its check, and nothing else.
    assert.deepEqual(
      Object.values(GROUPS)
        .flatMap((g) => g.names)
        .sort(),
      BENCHMARKS.map((b) => b.name).sort(),
      'every benchmark is in exactly one group',
    );
    assert.deepEqual(
      BENCHMARKS.flatMap((b) => b.quickResults).sort(),
      Object.keys(CHECKS).sort(),
      'every benchmark has its check',
    );
    const chosen = BENCHMARKS.filter((b) => names.includes(b.name));
    const docs = path.join(REPO, 'docs/benchmarks.md');
    const docsBefore = sha256(docs);
    const dir = await makeRunDir(`bench-quick-${group}`);
    try {
      const out = path.join(dir, 'results');
      const code = await new Promise<number | null>((resolve) => {
        const child = spawn(
          process.execPath,
          ['bench/run-all.ts', '--quick', '--only', names.join(','), '--out', out],
          // The test's timeout stops run-all, which stops its benchmark (their daemons are swept as a dead run's).
          { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'], signal: t.signal, killSignal: 'SIGTERM' },
        );
        child.on('error', () => {});
        child.on('close', resolve);
      });
      const summary = JSON.parse(readFileSync(path.join(out, 'run.json'), 'utf8')) as RunSummary;
      const failed = summary.runs.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error} (log ${r.log})`);
      assert.deepEqual(failed, [], 'benchmarks that failed');
      assert.equal(code, 0, 'run-all exit code');
      assert.equal(summary.quick, true);
      assert.deepEqual(
        summary.runs.map((r) => r.name),
        chosen.map((b) => b.name),
        'every benchmark of the group ran',
      );
      // What quick mode leaves out, listed rather than skipped in silence.
      assert.deepEqual(
        summary.runs.filter((r) => r.quickOmits).map((r) => r.name),
        names.filter((n) => OMITS.includes(n)),
      );
      for (const file of chosen.flatMap((b) => b.quickResults)) {
        const check = CHECKS[file];
        assert.ok(check, `${file} has a check`);
        const result = JSON.parse(readFileSync(path.join(out, file), 'utf8')) as Json;
        check(result, file);
        const p = result.provenance as Json;
        assert.equal(p.quick, true, `${file}: provenance says quick mode`);
        positive(file, result, ['provenance.cpus', 'provenance.memoryBytes']);
        if (inGit) assert.match(String(p.commit), /^[0-9a-f]{7,}$/, `${file}: provenance names the commit`);
        else assert.equal(p.commit, 'unknown', `${file}: a tree without git has no commit to name`);
        assert.equal((p.loadBefore as number[]).length, 3, `${file}: load before`);
        assert.equal((p.loadAfter as number[]).length, 3, `${file}: load after`);
      }
      assert.equal(summary.reportOk, true, 'the report was generated');
      const report = readFileSync(summary.report, 'utf8');
      assert.equal(path.dirname(summary.report), out, 'the quick report is written beside its results');
      // The group's sections are whole; the other groups' say they are not measured.
      assert.doesNotMatch(report, /NaN|Infinity|undefined/, 'the report has every figure');
      assert.ok(
        (report.match(/Quick mode \(`npm run bench -- --quick`\)/g) ?? []).length >= chosen.length,
        "each of the group's tables says it is a quick run",
      );
      assert.equal(sha256(docs), docsBefore, 'docs/benchmarks.md is not rewritten by a quick run');
      console.log(
        `quick benchmarks (${group}): ${summary.seconds} s (${summary.runs.map((r) => `${r.name} ${r.seconds} s`).join(', ')})`,
      );
    } finally {
      const left = await cleanUpRun(dir);
      assert.deepEqual(left, [], 'what the quick run left behind');
    }
  });
}
