// Benchmark (the store): latency of put, compare-and-swap txn, get, list, watch delivery and a
// heartbeat's renewal (a lease renewed, then a put on it, with two reads in flight: what the
// etcd store's test once bounded at 800 ms, issue 13)
// on etcd against SQLite, side by side in one run. etcd is a managed member
// (src/cluster/etcd-member.ts: the flags the daemon will use) on a loopback port, its data
// in a test run directory; SQLite is the embedded default (WAL, synchronous=FULL) in the
// same directory, so both sync to the same disk. Values are 1 KiB, about a guest spec's
// size; the list reads 1000 of them. Every round runs each operation once on each store,
// the order of the stores alternating from round to round.
// This is the store-level seed of issue 12's "ct create+start through the API on etcd
// against SQLite", which needs a daemon on etcd.
// Usage: node bench/store-etcd.ts [rounds=300]
import { execFileSync } from 'node:child_process';
import { loadavg, release } from 'node:os';
import path from 'node:path';
import { bootstrapEtcdMember } from '../src/cluster/etcd-member.ts';
import { silentLogger } from '../src/host/logger.ts';
import { hostRunner } from '../src/host/runner.ts';
import { openEtcdStore } from '../src/store/etcd-store.ts';
import type { KvStore } from '../src/store/kv.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { cleanUpRun, makeRunDir } from '../test/leftovers.ts';
import { freePort } from '../test/store/etcd-server.ts';
import { ms, percentile, writeResult } from './lib.ts';

const rounds = Number(process.argv[2] ?? 300);
const LIST_SIZE = 1000;
const VALUE = JSON.stringify({ pad: 'x'.repeat(1000) });
const loadAtStart = loadavg();

const runDir = await makeRunDir('bench-store');
const member = await bootstrapEtcdMember({
  name: 'bench',
  stateDir: path.join(runDir, 'state'),
  address: '127.0.0.1',
  clientPort: await freePort(),
  peerPort: await freePort(),
  runner: hostRunner(),
  log: silentLogger(),
});
const stores: Record<'etcd' | 'sqlite', KvStore> = {
  etcd: await openEtcdStore({ endpoints: [member.clientUrl] }),
  sqlite: openSqliteStore(path.join(runDir, 'store.db')),
};
type Op = 'put' | 'txn' | 'get' | 'list' | 'watch' | 'renew';
const OPS: Op[] = ['put', 'txn', 'get', 'list', 'watch', 'renew'];
const leases: Record<string, number> = {};
const samples: Record<string, Record<Op, number[]>> = {};

try {
  for (const [name, store] of Object.entries(stores)) {
    samples[name] = { put: [], txn: [], get: [], list: [], watch: [], renew: [] };
    leases[name] = (await store.grantLease(60)).id;
    for (let i = 0; i < LIST_SIZE; i++) await store.put(`/bench/list/${String(i).padStart(4, '0')}`, VALUE);
  }

  const round = async (store: KvStore, into: Record<Op, number[]>, i: number, lease: number) => {
    const key = `/bench/k/${i % 50}`;
    let t = process.hrtime.bigint();
    await Promise.all([
      store.keepAlive(lease).then(() => store.put('/bench/hb', String(i), { lease })),
      store.get('/bench/k/0'),
      store.get('/bench/k/1'),
    ]);
    into.renew.push(ms(process.hrtime.bigint() - t));

    t = process.hrtime.bigint();
    const { revision } = await store.put(key, VALUE);
    into.put.push(ms(process.hrtime.bigint() - t));

    t = process.hrtime.bigint();
    const cas = await store.txn({
      compare: [{ key, target: 'modRevision', op: '=', value: revision }],
      success: [{ type: 'put', key, value: VALUE }],
    });
    into.txn.push(ms(process.hrtime.bigint() - t));
    if (!cas.succeeded) throw new Error('the compare-and-swap lost: nobody else writes here');

    t = process.hrtime.bigint();
    await store.get(key);
    into.get.push(ms(process.hrtime.bigint() - t));

    if (i % 5 === 0) {
      t = process.hrtime.bigint();
      const { kvs } = await store.list('/bench/list/');
      into.list.push(ms(process.hrtime.bigint() - t));
      if (kvs.length !== LIST_SIZE) throw new Error(`listed ${kvs.length}`);
    }

    // From the put's call to the watch callback that sees it.
    let seen: () => void = () => {};
    const delivered = new Promise<void>((resolve) => (seen = resolve));
    let started = 0n;
    const watcher = store.watch(
      '/bench/w/',
      {
        onLost: (e) => {
          throw e;
        },
      },
      () => seen(),
    );
    // A watch on etcd is set up on the server asynchronously: let it be in place first.
    await new Promise((resolve) => setTimeout(resolve, 5));
    started = process.hrtime.bigint();
    await store.put(`/bench/w/${i}`, VALUE);
    await delivered;
    into.watch.push(ms(process.hrtime.bigint() - started));
    watcher.cancel();
  };

  for (let i = 0; i < rounds; i++) {
    const order = i % 2 === 0 ? (['etcd', 'sqlite'] as const) : (['sqlite', 'etcd'] as const);
    for (const name of order)
      await round(stores[name], samples[name] as Record<Op, number[]>, i, leases[name] ?? 0);
  }

  const stats = (xs: number[]) => ({ p50Ms: percentile(xs, 50), p95Ms: percentile(xs, 95), n: xs.length });
  const result: Record<string, unknown> = {
    rounds,
    listSize: LIST_SIZE,
    valueBytes: VALUE.length,
    etcdVersion: execFileSync('etcd', ['--version'], { encoding: 'utf8' }).split('\n')[0],
    kernel: release(),
    loadAverage: { start: loadAtStart, end: loadavg() },
    ops: Object.fromEntries(
      OPS.map((op) => {
        const etcd = stats(samples.etcd?.[op] ?? []);
        const sqlite = stats(samples.sqlite?.[op] ?? []);
        return [
          op,
          { etcd, sqlite, ratioP50: etcd.p50Ms / sqlite.p50Ms, ratioP95: etcd.p95Ms / sqlite.p95Ms },
        ];
      }),
    ),
  };
  console.log(JSON.stringify(result.ops, null, 2));
  console.log(`wrote ${writeResult('store-etcd', result)}`);
} finally {
  for (const store of Object.values(stores)) await store.close();
  await member.stop();
  await cleanUpRun(runDir);
}
