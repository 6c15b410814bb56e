import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { runningGuests } from '../../src/host/guest-processes.ts';
import { describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster, waitForStatus } from './cluster-harness.ts';
import {
  bootsOf,
  haLive,
  killMember,
  logsOf,
  overlaps,
  partitionOnce,
  runningElsewhere,
  setLink,
  writerConfig,
} from './ha-scenarios.ts';

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

/** The state letter of process `pid` (T: stopped), from /proc/PID/stat. */
const stateOf = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0];

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

  /**
   * An HA ct guest on the shared pool moves cold from m1 to m2, m1's daemon armed with `failpoint`
   * (src/host/failpoints.ts: it stops itself there with SIGSTOP; its HA agent, a process of its
   * own, runs on). Once it stopped there, m1 is cut off: the guest must run again on one member of
   * `runsOn`, never two. Then m1 is mended and let go: it does not run the guest again, its move
   * ends (`ended` checks how), and m1 is restarted without the failpoint for the cases after.
   */
  async function cutOffMidMove(
    t: TestContext,
    o: {
      name: string;
      failpoint: string;
      runsOn: string[];
      ended: (op: { status: string; error: string | null }, on: string) => void;
    },
  ) {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const { name } = o;
    for (const h of cluster.hosts) await waitForStatus(m2.daemon, h.name, 'Online', 60_000);
    m1.daemon.ok([
      'launch',
      'busybox',
      name,
      '--target',
      'm1',
      '--storage',
      'hapool',
      '-c',
      'ha.enabled=true',
    ]);
    m1.daemon.ok(['exec', name, '--', 'sh', '-c', `echo ${name} kept > /root/kept && sync`]);
    await m1.daemon.kill9();
    await m1.daemon.restart({ env: { TRIVISOR_FAILPOINTS: o.failpoint } });
    let armed = true;
    let cut = false;
    t.after(async () => {
      if (cut) setLink(cluster, m1, true);
      if (armed) {
        await m1.daemon.kill9();
        await m1.daemon.restart();
      }
      await waitForStatus(m2.daemon, 'm1', 'Online', 120_000);
      m2.daemon.cli(['delete', '--force', name], { timeoutMs: 120_000 });
    });
    await waitForStatus(m2.daemon, 'm1', 'Online', 60_000);
    await haLive(m2, 'm1');
    const m1pid = m1.daemon.process.pid;
    assert.ok(m1pid);
    const asked = await m1.daemon.api('POST', `/1.0/guests/${name}?target=m2`, { migration: true });
    assert.equal(asked.status, 202, asked.text);
    await eventually('m1 stopped at the failpoint', async () => stateOf(m1pid) === 'T', 120_000);
    /** The members whose cgroups hold the guest's processes now. */
    const where = async () => {
      const on: string[] = [];
      for (const h of cluster.hosts) {
        if ((await runningGuests(cgroupParentOf(h.daemon.stateDir))).has(name)) on.push(h.name);
      }
      return on;
    };
    assert.deepEqual(await where(), [], 'the move stopped the guest before the failpoint');
    const cutAt = Date.now();
    setLink(cluster, m1, false);
    cut = true;
    const others = cluster.hosts.filter((h) => o.runsOn.includes(h.name));
    const { ms, on } = await runningElsewhere(others, name, 'm1', cutAt);
    t.diagnostic(`${name} ran on ${on} ${ms} ms after m1 was cut off`);
    assert.deepEqual(await where(), [on], 'one member runs it');
    setLink(cluster, m1, true);
    cut = false;
    process.kill(m1pid, 'SIGCONT');
    await waitForStatus(m2.daemon, 'm1', 'Online', 120_000);
    await haLive(m2, 'm1');
    const done = await m1.daemon.api('GET', `${asked.body.operation}/wait?timeout=120`);
    const op = done.body.metadata as { status: string; error: string | null };
    t.diagnostic(`the move ended: ${op.status} ${op.error ?? ''}`);
    assert.notEqual(op.status, 'Running', JSON.stringify(done.body));
    o.ended(op, on);
    // Some time for a wrong start on m1 to show: still one member, the one HA chose, and its data.
    await new Promise((r) => setTimeout(r, 15_000));
    assert.deepEqual(await where(), [on], `${name} runs once, on ${on}\n${logsOf(cluster.hosts)}`);
    const listed = JSON.parse(m2.daemon.ok(['list', '--format', 'json'])) as Listed[];
    assert.equal(listed.find((g) => g.name === name)?.location, on);
    assert.equal(m2.daemon.ok(['exec', name, '--', 'cat', '/root/kept']).trim(), `${name} kept`);
    // m1 without the failpoint for the cases after this one.
    await m1.daemon.kill9();
    await m1.daemon.restart();
    armed = false;
    await waitForStatus(m2.daemon, 'm1', 'Online', 60_000);
    assert.deepEqual(await where(), [on], `${name} still runs once after m1's restart`);
  }

  test("an HA ct guest's move from m1 to m2 over the shared pool, m1 cut off once it stopped the guest (a failpoint, its daemon held there): the guest runs again on one member, never two; m1 mended and let go does not run it again, and its move ends in one line", async (t) => {
    // Found by this case (2026-12-07): the cold move stops the guest through its desired state,
    // and the CRM left a lost member's stopped HA guests where they were, so the guest stayed down
    // until m1 was back. The move's HA mark now says the guest ran, and the CRM gives it away
    // wanted started (decision 0108).
    await cutOffMidMove(t, {
      name: 'ha-mv',
      failpoint: 'move.shared.stopped',
      runsOn: ['m2', 'm3'],
      ended: (op, on) => {
        // HA gave the guest away while m1 was held: m1's move cannot have finished, and says where it is.
        assert.equal(op.status, 'Failure');
        assert.match(
          op.error ?? '',
          new RegExp(`^Cannot move guest ha-mv to m2: [^\n]+; HA gave it to ${on} meanwhile$`),
        );
      },
    });
  });

  test('the same move with m1 cut off right after its hand-over, before it started the guest on m2: m2 starts it (decision 0108), once; m1 mended and let go finishes the move', async (t) => {
    await cutOffMidMove(t, {
      name: 'ha-mv2',
      failpoint: 'move.shared.handed-over',
      runsOn: ['m2'],
      ended: (op) => assert.equal(op.status, 'Success', op.error ?? ''),
    });
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
