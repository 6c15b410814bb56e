// Benchmark (issue 13 §6 and §4's partition runs, decision 0052): how long an HA guest is down
// when the member running it is lost, over many losses, and whether it ever ran twice.
// Three daemons in network namespaces of their own (test/cluster/cluster-harness.ts), a shared
// pool on a directory of this machine, one HA ct guest that appends `BOOT UPTIME` to a log on its
// disk every 100 ms (test/cluster/ha-scenarios.ts).
// - Partition runs: the link of the member running the guest is cut (it fences itself: it kills
//   the guest 3 s after its last renewal); timed from the cut to the guest Running on another
//   member; then the link is mended and its HA lease comes back.
// - Loss runs: the whole member running it is killed (daemon, HA agent, etcd, guests); timed the
//   same way, and from the kill to the member shown Offline by another (its lease expired: issue
//   13 §4's "Offline within 10 s", once a timed assertion of test/cluster/cluster.test.ts); then
//   its daemon is started again (it starts its etcd and agent again).
// - The baseline, in the same run: the same guest stopped and started by hand on one member
//   (`trivisor stop`, `trivisor start`), the part of a failover no detection can save.
// - Model loss runs: an HA pvm and an HA vm guest launched beside the writer, then that whole
//   member killed; each of the three timed to `Running` elsewhere (the vm boots under TCG, the
//   pvm boots its UML kernel: the boot is part of the failover), then both deleted again. The
//   baseline for them: a plain pvm and vm guest started by hand on one member.
// At the end the log, read from the guest, must show no two boots writing at the same time.
// Usage: node bench/ha-failover.ts [partitions=100] [losses=20] [baseline=5] [modelLosses=5]

import { mkdir } from 'node:fs/promises';
import { loadavg } from 'node:os';
import path from 'node:path';
import { formCluster, makeTestCluster, waitForStatus } from '../test/cluster/cluster-harness.ts';
import {
  bootsOf,
  haLive,
  killMember,
  locate,
  overlaps,
  partitionOnce,
  runningElsewhere,
  writerConfig,
} from '../test/cluster/ha-scenarios.ts';
import { makeRunDir, removeRunDir } from '../test/leftovers.ts';
import { percentile, writeResult } from './lib.ts';

const partitions = Number(process.argv[2] ?? 100);
const losses = Number(process.argv[3] ?? 20);
const baselineRounds = Number(process.argv[4] ?? 5);
const modelLosses = Number(process.argv[5] ?? 5);
/** The HA guests of the other two models, as cluster-ha.test.ts launches them. */
const models = [
  ['pvm', ['--model', 'pvm', '-c', 'limits.memory=64MiB']],
  ['vm', ['--model', 'vm', '-c', 'limits.memory=128MiB']],
] as const;
const loadAtStart = loadavg();

const summary = (ms: number[]) => ({
  runs: ms.length,
  p50Ms: percentile(ms, 50),
  p95Ms: percentile(ms, 95),
  maxMs: Math.max(...ms),
  samplesMs: ms,
});

const runDir = await makeRunDir('ha-bench', { mode: 0o711 });
const shared = path.join(runDir, 'nfs');
await mkdir(shared, { mode: 0o711 });
const cluster = await makeTestCluster(['m1', 'm2', 'm3']);
try {
  await formCluster(cluster);
  const [m1] = cluster.hosts;
  if (!m1) throw new Error('no member');
  m1.daemon.ok(['storage', 'create', 'hapool', 'dir', `source=${shared}`, 'shared=true']);
  const base = ['launch', 'busybox', '--storage', 'hapool', '--target', 'm1'];
  m1.daemon.ok([...base.slice(0, 2), 'ha-log', ...base.slice(2), '-c', 'ha.enabled=true', ...writerConfig()]);

  // The baseline: a plain guest on the same pool, stopped and started by hand.
  m1.daemon.ok([...base.slice(0, 2), 'plain', ...base.slice(2)]);
  const baseline: number[] = [];
  for (let i = 0; i < baselineRounds; i++) {
    m1.daemon.ok(['stop', 'plain']);
    const t0 = Date.now();
    m1.daemon.ok(['start', 'plain']);
    baseline.push(Date.now() - t0);
  }
  m1.daemon.ok(['delete', '--force', 'plain']);
  // The same by hand for a pvm and a vm guest: their boot, which a failover cannot save either.
  const modelBaseline: Record<string, number[]> = {};
  for (const [model, args] of models) {
    const name = `plain-${model}`;
    m1.daemon.ok([...base.slice(0, 2), name, ...base.slice(2), ...args]);
    modelBaseline[model] = [];
    for (let i = 0; i < baselineRounds; i++) {
      m1.daemon.ok(['stop', '--force', name]);
      const t0 = Date.now();
      m1.daemon.ok(['start', name]);
      modelBaseline[model].push(Date.now() - t0);
    }
    m1.daemon.ok(['delete', '--force', name]);
  }

  const partitionMs: number[] = [];
  for (let i = 0; i < partitions; i++) {
    const r = await partitionOnce(cluster, 'ha-log');
    partitionMs.push(r.ms);
    console.log(`partition ${i + 1}/${partitions}: ${r.from} cut off, running on ${r.to} after ${r.ms} ms`);
  }

  const lossMs: number[] = [];
  const offlineMs: number[] = [];
  const modelLossMs: Record<string, number[]> = { ct: [], pvm: [], vm: [] };
  for (let i = 0; i < losses + modelLosses; i++) {
    const withModels = i >= losses;
    const where = locate(m1, 'ha-log') ?? locate(cluster.hosts[1] ?? m1, 'ha-log');
    const owner = cluster.hosts.find((h) => h.name === where?.location);
    if (!owner) throw new Error(`ha-log is nowhere (${JSON.stringify(where)})`);
    const others = cluster.hosts.filter((h) => h !== owner);
    const via = others[0] ?? m1;
    if (withModels)
      for (const [model, args] of models)
        via.daemon.ok([
          'launch',
          'busybox',
          `ha-${model}`,
          '--target',
          owner.name,
          '--storage',
          'hapool',
          '-c',
          'ha.enabled=true',
          ...args,
        ]);
    const killedAt = Date.now();
    await owner.daemon.kill9();
    killMember(owner.daemon.stateDir);
    const names = withModels ? ['ha-log', ...models.map(([m]) => `ha-${m}`)] : ['ha-log'];
    if (!withModels) {
      await waitForStatus(via.daemon, owner.name, 'Offline', 120_000);
      offlineMs.push(Date.now() - killedAt);
    }
    const found = await Promise.all(names.map((n) => runningElsewhere(others, n, owner.name, killedAt)));
    const [r] = found;
    if (!r) throw new Error('ha-log was not timed');
    if (withModels) {
      for (const [k, x] of found.entries())
        modelLossMs[k === 0 ? 'ct' : (models[k - 1]?.[0] ?? '?')]?.push(x.ms);
      const each = found.map((x, k) => `${names[k]} on ${x.on} after ${x.ms} ms`).join(', ');
      console.log(`model loss ${i + 1 - losses}/${modelLosses}: ${owner.name} killed: ${each}`);
    } else {
      lossMs.push(r.ms);
      console.log(
        `loss ${i + 1}/${losses}: ${owner.name} killed, Offline after ${offlineMs.at(-1)} ms, running on ${r.on} after ${r.ms} ms`,
      );
    }
    await owner.daemon.restart();
    await haLive(via, owner.name, 120_000);
    if (withModels) for (const [model] of models) via.daemon.ok(['delete', '--force', `ha-${model}`]);
  }

  const log = m1.daemon.ok(['exec', 'ha-log', '--', 'cat', '/root/ha.log']);
  const twice = overlaps(log);
  const boots = bootsOf(log).length;
  const result = {
    partitions: partitionMs.length > 0 ? summary(partitionMs) : null,
    losses: lossMs.length > 0 ? summary(lossMs) : null,
    /** From a loss run's kill to another member listing it Offline (its lease expired). */
    offline: offlineMs.length > 0 ? summary(offlineMs) : null,
    startBaseline: summary(baseline),
    modelLosses:
      modelLosses > 0
        ? Object.fromEntries(Object.entries(modelLossMs).map(([m, ms]) => [m, summary(ms)]))
        : null,
    modelStartBaseline:
      baselineRounds > 0
        ? Object.fromEntries(Object.entries(modelBaseline).map(([m, ms]) => [m, summary(ms)]))
        : null,
    boots,
    overlappingWriters: twice.length,
    overlaps: twice,
    loadAtStart,
    loadAtEnd: loadavg(),
  };
  console.log(JSON.stringify({ ...result, overlaps: twice.slice(0, 5) }, null, 2));
  console.log(`wrote ${writeResult('ha-failover', result)}`);
  if (twice.length > 0) throw new Error(`two boots of ha-log wrote at the same time: ${twice.join('; ')}`);
} finally {
  await cluster.destroy();
  await removeRunDir(runDir);
}
