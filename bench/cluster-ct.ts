// Benchmark (issue 12, section 7): ct create+start through the API on etcd against SQLite,
// in one run. Three setups side by side, each a real daemon in a network namespace of its
// own (test/cluster/cluster-harness.ts): a single host on SQLite; the first member of a
// one-member cluster (its managed etcd, TLS with the cluster CA); the first member of a
// three-member cluster (three etcd voters: every write is a Raft commit on a quorum). Each
// round creates and starts one busybox ct guest on each (the order rotating from round to
// round, a 300 ms pause before each), then deletes them (not measured). Measured: from
// `POST /1.0/guests` with `start: true` to the end of its operation.
// Usage: node bench/cluster-ct.ts [rounds=30]
import { execFileSync } from 'node:child_process';
import { loadavg, release } from 'node:os';
import { makeTestCluster, waitForStatus } from '../test/cluster/cluster-harness.ts';
import type { Daemon } from '../test/system/harness.ts';
import { sleep } from '../test/system/harness.ts';
import { ms, percentile, runOperation, writeResult } from './lib.ts';

const rounds = Number(process.argv[2] ?? 30);
const loadAtStart = loadavg();
const cluster = await makeTestCluster(['sqlite', 'etcd1', 'etcd3a', 'etcd3b', 'etcd3c']);
const [single, one, three, b, c] = cluster.hosts;
if (!single || !one || !three || !b || !c) throw new Error('hosts missing');

const join = async (first: (typeof cluster.hosts)[number], others: Array<(typeof cluster.hosts)[number]>) => {
  first.daemon.ok(['cluster', 'bootstrap', '--address', first.ip]);
  for (const h of others) {
    const token = first.daemon.ok(['cluster', 'add', h.name]).trim();
    h.daemon.ok(['cluster', 'join', token, '--address', h.ip]);
    await waitForStatus(first.daemon, h.name, 'Online');
  }
};

// Each guest is placed on the member measured (`?target=`: the scheduler would spread them).
const setups: Array<{ name: string; daemon: Daemon; create: string; samples: number[] }> = [
  { name: 'sqlite', daemon: single.daemon, create: '/1.0/guests', samples: [] },
  { name: 'etcd, 1 voter', daemon: one.daemon, create: `/1.0/guests?target=${one.name}`, samples: [] },
  { name: 'etcd, 3 voters', daemon: three.daemon, create: `/1.0/guests?target=${three.name}`, samples: [] },
];

try {
  await join(one, []);
  await join(three, [b, c]);
  // A first guest on each pays for caches (image layers, runc's first run) outside the sample.
  for (const s of setups) {
    await runOperation(s.daemon, 'POST', s.create, { name: 'warm', image: 'busybox', start: true });
    await runOperation(s.daemon, 'DELETE', '/1.0/guests/warm?force=true');
  }
  for (let i = 0; i < rounds; i++) {
    const order = setups.map((_, k) => setups[(k + i) % setups.length]!);
    for (const s of order) {
      await sleep(300);
      const t0 = process.hrtime.bigint();
      await runOperation(s.daemon, 'POST', s.create, { name: `g${i}`, image: 'busybox', start: true });
      s.samples.push(ms(process.hrtime.bigint() - t0));
    }
    for (const s of setups) await runOperation(s.daemon, 'DELETE', `/1.0/guests/g${i}?force=true`);
  }
  const stats = (xs: number[]) => ({
    p50Ms: percentile(xs, 50),
    p95Ms: percentile(xs, 95),
    meanMs: xs.reduce((a, x) => a + x, 0) / xs.length,
  });
  const base = stats(setups[0]!.samples);
  const result = {
    rounds,
    setups: setups.map((s) => {
      const st = stats(s.samples);
      return { name: s.name, ...st, ratioP50: st.p50Ms / base.p50Ms, ratioMean: st.meanMs / base.meanMs };
    }),
    etcdVersion: execFileSync('etcd', ['--version'], { encoding: 'utf8' }).split('\n')[0],
    kernel: release(),
    loadAverage: { start: loadAtStart, end: loadavg() },
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('cluster-ct', result)}`);
} finally {
  await cluster.destroy();
}
