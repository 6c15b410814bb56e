import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { runningGuests } from '../../src/host/guest-processes.ts';
import { describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster, waitForStatus } from './cluster-harness.ts';
import { bootsOf, killMember, logsOf, overlaps, partitionOnce, writerConfig } from './ha-scenarios.ts';

/*
 * Issue 13 §4 on real members (decision 0052): HA guests of all three models on a shared pool.
 * - m3's daemon killed -9 with its guests running: its HA agent keeps the member's lease, so
 *   nothing moves and the guests keep running.
 * - m3 destroyed whole (its daemon, HA agent, etcd and every guest process killed): its HA guests
 *   run on m1 or m2, with what they wrote on their disks. The times are printed; the 30 s target is
 *   measured by bench/ha-failover.ts for every model, not asserted here (speed is a benchmark's).
 */

let cluster: TestCluster;
let runDir: string;
let sharedDir: string;

before(async () => {
  // Guests' user namespaces and QEMU's uid walk through it: searchable, as a state dir is.
  runDir = await makeRunDir('ha-shared', { mode: 0o711 });
  sharedDir = path.join(runDir, 'nfs');
  await mkdir(sharedDir, { mode: 0o711 });
  cluster = await makeTestCluster(['m1', 'm2', 'm3']);
});

after(async () => {
  if (cluster) await cluster.destroy();
  if (runDir) {
    const report = await removeRunDir(runDir);
    assert.deepEqual(report.left.map(describeThing), []);
  }
});

const guests = [
  ['ha-ct', ['-c', 'ha.priority=30']],
  ['ha-pvm', ['--model', 'pvm', '-c', 'limits.memory=64MiB', '-c', 'ha.priority=20']],
  ['ha-vm', ['--model', 'vm', '-c', 'limits.memory=128MiB', '-c', 'ha.priority=10']],
] as const;

interface Listed {
  name: string;
  status: string;
  location?: string;
}

describe('HA guests on a shared pool', () => {
  test('bootstrap and two joins: three Online members; a shared pool on all', async () => {
    await formCluster(cluster);
    const [m1] = cluster.hosts;
    assert.ok(m1);
    m1.daemon.ok(['storage', 'create', 'hapool', 'dir', `source=${sharedDir}`, 'shared=true']);
  });

  test('partitions: the member running an HA writer is cut off twice; it runs elsewhere each time, and its log on the shared pool shows no two writers at once', async () => {
    const [m1] = cluster.hosts;
    assert.ok(m1);
    m1.daemon.ok([
      'launch',
      'busybox',
      'ha-log',
      '--target',
      'm1',
      '--storage',
      'hapool',
      '-c',
      'ha.enabled=true',
      ...writerConfig(),
    ]);
    const runs = [];
    for (let i = 0; i < 2; i++) runs.push(await partitionOnce(cluster, 'ha-log'));
    // Times are printed, not asserted: the 30 s target is bench/ha-failover.ts's (a timing on a
    // loaded CI machine is not the product's guarantee; partitionOnce waits 90 s at most).
    console.log(`partition runs: ${JSON.stringify(runs)}`);
    for (const r of runs)
      assert.notEqual(r.to, r.from, `ha-log stayed on ${r.from}\n${logsOf(cluster.hosts)}`);
    const log = m1.daemon.ok(['exec', 'ha-log', '--', 'cat', '/root/ha.log']);
    assert.deepEqual(overlaps(log), [], 'two boots of ha-log wrote at the same time');
    // One boot per member it ran on: the first, and one after each partition.
    assert.equal(bootsOf(log).length, runs.length + 1);
    m1.daemon.ok(['delete', '--force', 'ha-log']);
  });

  test("m3's HA guests of every model keep running when m3's daemon is killed -9; they run on m1 or m2 when m3 is destroyed (times printed; the target is the benchmark's)", async () => {
    const [m1, m2, m3] = cluster.hosts;
    assert.ok(m1 && m2 && m3);
    // After the partitions, every member Online again (its daemon's lease too, not only its agent's).
    for (const h of cluster.hosts) await waitForStatus(m1.daemon, h.name, 'Online', 60_000);
    for (const [name, args] of guests) {
      m1.daemon.ok([
        'launch',
        'busybox',
        name,
        '--target',
        'm3',
        '--storage',
        'hapool',
        '-c',
        'ha.enabled=true',
        ...args,
      ]);
      m1.daemon.ok(['exec', name, '--', 'sh', '-c', `echo ${name} kept > /root/kept && sync`]);
    }
    const list = (): Listed[] => JSON.parse(m1.daemon.ok(['list', '--format', 'json'])) as Listed[];
    const m3Guests = () => runningGuests(cgroupParentOf(m3.daemon.stateDir));

    // The daemon alone dies: the agent keeps m3's lease, and nothing moves.
    await m3.daemon.kill9();
    await new Promise((r) => setTimeout(r, 15_000));
    for (const [name] of guests) {
      assert.equal(
        list().find((g) => g.name === name)?.location,
        'm3',
        `${name} moved while m3's daemon was down`,
      );
    }
    assert.deepEqual([...(await m3Guests())].sort(), guests.map(([n]) => n).sort());
    await m3.daemon.restart();

    // The whole member dies: daemon, agent, etcd and guests.
    const killedAt = Date.now();
    await m3.daemon.kill9();
    assert.ok(killMember(m3.daemon.stateDir) > 0);
    const runningElsewhere = new Map<string, number>();
    await eventually(
      "m3's HA guests running on m1 or m2",
      () => {
        for (const g of list()) {
          if (guests.some(([n]) => n === g.name) && g.status === 'Running' && g.location !== 'm3') {
            if (!runningElsewhere.has(g.name)) runningElsewhere.set(g.name, Date.now() - killedAt);
          }
        }
        return runningElsewhere.size === guests.length;
      },
      90_000,
    );
    console.log(
      `HA guests running elsewhere after m3 was destroyed: ${JSON.stringify(Object.fromEntries(runningElsewhere))} ms`,
    );
    // Not asserted against the 30 s target (bench/ha-failover.ts measures it for every model): on
    // the CI machine, with another test file beside it, the last one took 32.6 s once; in passing
    // runs the pvm and vm guests ran 9-12 s after the ct guest (their boots). The bound here is the
    // 90 s wait above.
    for (const [name] of guests) {
      const out = m1.daemon.ok(['exec', name, '--', 'cat', '/root/kept']);
      assert.equal(out.trim(), `${name} kept`);
    }
  });
});
