// Benchmark (issue 12, section 7): `GET /1.0/guests?recursion=1` with 1,000 guests over three
// members, from each member; target ≤ 100 ms. A real three-member cluster on this machine
// (test/cluster/cluster-harness.ts: each daemon in a network namespace of its own, bootstrapped
// and joined through the CLI, three etcd voters), and beside it in the same run a single-host
// daemon on SQLite holding as many guests: the baseline.
//
// The guests are made through the API, not written into the store: `POST /1.0/guests` with
// `start: false` (what `trivisor create` sends), each on the member `?target=` names, round robin
// over the three, so that every member owns a third; the records are then exactly what the
// daemons write themselves. They are busybox ct guests that are never started (1,000 running
// guests do not fit on this 2-core host, and the list reads records, not processes: recursion=1
// asks no member for live usage, decision 0034).
//
// Measured: from the request's first byte to the answer's last, each request on a connection of
// its own over the member's unix socket (as the CLI makes them), the members taken in turn (m1,
// m2, m3, sqlite, then again), with recursion=1 and recursion=0. Then bench/cluster-list-profile.ts,
// inside m1's namespace, times each stage of the list path apart (etcd range reads, decoding,
// serializing). Everything runs in the harness's claimed run dirs: SIGTERM or ^C removes the
// cluster first, and a kill -9 leaves it to the next run's sweep.
// Usage: node bench/cluster-list.ts [guests=1000] [runs=50]

import { execFileSync, spawnSync } from 'node:child_process';
import http from 'node:http';
import { loadavg, release } from 'node:os';
import path from 'node:path';
import { makeTestCluster, waitForStatus } from '../test/cluster/cluster-harness.ts';
import { type Daemon, sleep } from '../test/system/harness.ts';
import { ms, percentile, pool, writeResult } from './lib.ts';

const guestCount = Number(process.argv[2] ?? 1000);
const runs = Number(process.argv[3] ?? 50);
const TARGET_MS = 100;
const loadAtStart = loadavg();

/** One GET on a connection of its own: milliseconds to the last byte, and the body. */
function timedGet(d: Daemon, urlPath: string): Promise<{ ms: number; status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({ socketPath: d.socket, method: 'GET', path: urlPath, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          ms: ms(process.hrtime.bigint() - t0),
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks),
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const cluster = await makeTestCluster(['m1', 'm2', 'm3', 'sqlite']);
const [m1, m2, m3, single] = cluster.hosts;
if (!m1 || !m2 || !m3 || !single) throw new Error('hosts missing');
const members = [m1, m2, m3];
// Killed (run-all's timeout sends SIGTERM, ^C sends SIGINT): the cluster goes first.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    console.error(`${signal}: removing the cluster`);
    void cluster.destroy().finally(() => process.exit(128 + (signal === 'SIGTERM' ? 15 : 2)));
  });
}

try {
  m1.daemon.ok(['cluster', 'bootstrap', '--address', m1.ip]);
  for (const h of [m2, m3]) {
    const token = m1.daemon.ok(['cluster', 'add', h.name]).trim();
    h.daemon.ok(['cluster', 'join', token, '--address', h.ip]);
    await waitForStatus(m1.daemon, h.name, 'Online');
  }

  // The guests: each member gets every third one through its own API (its own controller makes
  // the guest's directory), and the single host gets them all.
  // A create refused with 503 (the etcd client's channel to its member closing under load was
  // seen: 'Channel closed before call started') may or may not have been applied: it is read
  // back and made again only if absent. Counted in the result.
  const unavailable: string[] = [];
  const stuck: string[] = [];
  const create = async (d: Daemon, urlPath: string, name: string) => {
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await d.api('POST', urlPath, { name, image: 'busybox', start: false });
        if (r.status !== 202) throw new Error(`POST ${urlPath}: ${r.status} ${r.text}`);
        // One create's operation was seen still Running after 600 s under load 14 while the others
        // ended in a second: after 3 minutes the guest itself is read, and the bench goes on if it
        // is there (counted in the result), else fails.
        for (let waited = 0; ; waited++) {
          const done = await d.api('GET', `${r.body.operation}/wait?timeout=60`);
          const op = done.body.metadata as { status: string; error: string | null };
          if (op.status === 'Success') return;
          if (op.status !== 'Running' && op.status !== 'Pending') {
            throw new Error(`POST ${urlPath} ${name}: ${op.status} ${op.error}`);
          }
          if (waited >= 2) {
            if ((await d.api('GET', `/1.0/guests/${name}`)).status !== 200) {
              throw new Error(`POST ${urlPath} ${name}: its operation is still ${op.status} after 3 minutes`);
            }
            stuck.push(`${name}: its create operation was still ${op.status} after 3 minutes`);
            return;
          }
        }
      } catch (e) {
        const message = (e as Error).message;
        if (!/: 503 /.test(message) || attempt >= 3) throw e;
        unavailable.push(message);
        await sleep(1000);
        if ((await d.api('GET', `/1.0/guests/${name}`)).status === 200) return;
      }
    }
  };
  const names = Array.from({ length: guestCount }, (_, i) => `g${String(i).padStart(4, '0')}`);
  const createStarted = performance.now();
  await Promise.all([
    pool(names, 4, async (name) => {
      const h = members[Number(name.slice(1)) % members.length]!;
      await create(h.daemon, `/1.0/guests?target=${h.name}`, name);
    }),
    pool(names, 2, async (name) => {
      await create(single.daemon, '/1.0/guests', name);
    }),
  ]);
  const createSeconds = (performance.now() - createStarted) / 1000;
  console.log(`${guestCount} guests on each side in ${createSeconds.toFixed(1)} s`);

  // Every side must list them all (and the members each a third as their own).
  const setups = [
    ...members.map((h) => ({ name: h.name, backend: 'etcd, 3 voters', daemon: h.daemon })),
    { name: 'sqlite', backend: 'SQLite', daemon: single.daemon },
  ];
  for (const s of setups) {
    const r = await timedGet(s.daemon, '/1.0/guests?recursion=1');
    const list = JSON.parse(r.body.toString()).metadata as Array<{ name: string; location?: string }>;
    if (r.status !== 200 || list.length !== guestCount) {
      throw new Error(`${s.name} listed ${list.length} guests (HTTP ${r.status}), not ${guestCount}`);
    }
    if (s.daemon !== single.daemon) {
      for (const h of members) {
        const own = list.filter((g) => g.location === h.name).length;
        if (own !== Math.ceil((guestCount - members.indexOf(h)) / members.length)) {
          throw new Error(`${s.name} lists ${own} guests on ${h.name}`);
        }
      }
    }
  }

  const samples = new Map<string, number[]>();
  const bytes = new Map<string, number>();
  const add = (key: string, v: number) => samples.set(key, [...(samples.get(key) ?? []), v]);
  // A few unmeasured requests first: the JIT and the connection pools of each side.
  for (let i = 0; i < 3; i++) {
    for (const s of setups) {
      await timedGet(s.daemon, '/1.0/guests?recursion=1');
      await timedGet(s.daemon, '/1.0/guests?recursion=0');
    }
  }
  for (let i = 0; i < runs; i++) {
    for (const s of setups) {
      for (const recursion of [1, 0]) {
        const r = await timedGet(s.daemon, `/1.0/guests?recursion=${recursion}`);
        if (r.status !== 200) throw new Error(`${s.name} recursion=${recursion}: HTTP ${r.status}`);
        add(`${s.name}/${recursion}`, r.ms);
        bytes.set(`${s.name}/${recursion}`, r.body.length);
      }
    }
  }
  const stats = (key: string) => {
    const xs = samples.get(key) ?? [];
    return { p50Ms: percentile(xs, 50), p95Ms: percentile(xs, 95), bytes: bytes.get(key) ?? 0 };
  };
  // Where the time goes on a member: each stage of the list path timed apart on m1's data.
  const profiled = spawnSync(
    'nsenter',
    [
      `--net=/run/netns/${m1.netns}`,
      process.execPath,
      path.join(import.meta.dirname, 'cluster-list-profile.ts'),
      m1.daemon.stateDir,
      `https://${m1.ip}:2379`,
      m1.daemon.socket,
      String(Math.max(runs, 10)),
    ],
    { encoding: 'utf8', timeout: 300_000 },
  );
  if (profiled.status !== 0) throw new Error(`cluster-list-profile.ts failed: ${profiled.stderr}`);
  const profile = JSON.parse(profiled.stdout.trim().split('\n').at(-1) ?? '') as Record<string, unknown>;
  const base1 = stats('sqlite/1');
  const base0 = stats('sqlite/0');
  const result = {
    guests: guestCount,
    runs,
    targetMs: TARGET_MS,
    guestsMadeThrough: 'POST /1.0/guests, start: false (ct, busybox), ?target= round robin',
    createSeconds,
    createsRetriedAfter503: unavailable,
    createsNotEnded: stuck,
    setups: setups.map((s) => {
      const r1 = stats(`${s.name}/1`);
      const r0 = stats(`${s.name}/0`);
      return {
        name: s.name,
        backend: s.backend,
        recursion1: { ...r1, ratioP50: r1.p50Ms / base1.p50Ms },
        recursion0: { ...r0, ratioP50: r0.p50Ms / base0.p50Ms },
      };
    }),
    profileOnM1: profile,
    etcdVersion: execFileSync('etcd', ['--version'], { encoding: 'utf8' }).split('\n')[0],
    kernel: release(),
    loadAverage: { start: loadAtStart, end: loadavg() },
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('cluster-list', result)}`);
} finally {
  await cluster.destroy();
}
