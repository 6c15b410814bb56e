import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Operation } from '../../src/core/types.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { runningGuests } from '../../src/host/guest-processes.ts';
import { describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually } from '../system/harness.ts';
import { formCluster, type MemberHost, makeTestCluster, type TestCluster } from './cluster-harness.ts';
import { haLive, logsOf } from './ha-scenarios.ts';

/*
 * Issue 13 §1 with §4 on real members (decisions 0052, 0079, 0089): HA ct guests on a shared pool
 * moved between two members while the CRM runs. A guest HA from its launch, then a guest made HA
 * a moment before its move (its HA record written by the mover, already marked moving). Each ends
 * on the destination, running once (its processes in the destination's cgroups only), and HA
 * counts it as the destination's (`cluster list`: the HA record names it, not moving). Then a move
 * whose source restarts before its hand-over with a new HA lease (decision 0089, amended): the
 * guest ends on its source, running once, its record under the source's new token.
 */

let cluster: TestCluster;
let runDir: string;
let sharedDir: string;

before(async () => {
  runDir = await makeRunDir('ha-move', { mode: 0o711 });
  sharedDir = path.join(runDir, 'nfs');
  await mkdir(sharedDir, { mode: 0o711 });
  cluster = await makeTestCluster(['m1', 'm2']);
});

after(async () => {
  if (cluster) await cluster.destroy();
  if (runDir) {
    const report = await removeRunDir(runDir);
    assert.deepEqual(report.left.map(describeThing), []);
  }
});

interface Listed {
  name: string;
  status: string;
  location?: string;
}
interface ListedMember {
  name: string;
  ha?: { live: boolean; guests: number };
}
const listed = (d: Daemon, name: string) =>
  (JSON.parse(d.ok(['list', '--format', 'json'])) as Listed[]).find((g) => g.name === name);
/** HA guests each member owns (or receives by a move), as `cluster list` says. */
const haGuests = (d: Daemon) =>
  Object.fromEntries(
    (JSON.parse(d.ok(['cluster', 'list', '--format', 'json'])) as ListedMember[]).map((m) => [
      m.name,
      m.ha?.guests,
    ]),
  );

/** The guest ended on `to`: Running there, its processes there only, and HA counts it there. */
async function endedOn(hosts: MemberHost[], name: string, to: MemberHost, haOn: Record<string, number>) {
  const [first] = hosts;
  assert.ok(first);
  const there = listed(first.daemon, name);
  assert.equal(there?.location, to.name, JSON.stringify(there));
  assert.equal(there?.status, 'Running', 'it ran, so it runs again');
  for (const h of hosts) {
    const running = await runningGuests(cgroupParentOf(h.daemon.stateDir));
    assert.equal(running.has(name), h === to, `${name} ${h === to ? 'not ' : ''}running on ${h.name}`);
  }
  // The record names the destination (and no longer moves): the CRM's upkeep has nothing to fix.
  await eventually(
    'HA counting the moved guests where they are',
    () => {
      const now = haGuests(first.daemon);
      return Object.entries(haOn).every(([m, n]) => now[m] === n);
    },
    30_000,
  );
}

describe('HA guests moved between members while the CRM runs', () => {
  test('bootstrap and join: two Online members, both HA agents live, a shared pool on both', async () => {
    await formCluster(cluster);
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok(['storage', 'create', 'hapool', 'dir', `source=${sharedDir}`, 'shared=true']);
    await haLive(m1, 'm1');
    await haLive(m1, 'm2');
  });

  test('an HA ct guest moves from m1 to m2: it runs there once, and its HA record names m2', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok([
      'launch',
      'busybox',
      'ha-mv',
      '--target',
      'm1',
      '--storage',
      'hapool',
      '-c',
      'ha.enabled=true',
    ]);
    m1.daemon.ok(['exec', 'ha-mv', '--', 'sh', '-c', 'echo kept > /root/kept && sync']);
    const moved = m1.daemon.cli(['move', 'ha-mv', '--target', 'm2'], { timeoutMs: 120_000 });
    assert.equal(moved.code, 0, `${moved.stderr}\n${logsOf(cluster.hosts)}`);
    await endedOn(cluster.hosts, 'ha-mv', m2, { m1: 0, m2: 1 });
    assert.equal(m1.daemon.ok(['exec', 'ha-mv', '--', 'cat', '/root/kept']), 'kept\n');
  });

  test('a ct guest made HA a moment before its move moves from m1 to m2: it runs there once, and its HA record names m2', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok(['launch', 'busybox', 'ha-late', '--target', 'm1', '--storage', 'hapool']);
    m1.daemon.ok(['config', 'set', 'ha-late', 'ha.enabled=true']);
    const moved = m1.daemon.cli(['move', 'ha-late', '--target', 'm2'], { timeoutMs: 120_000 });
    assert.equal(moved.code, 0, `${moved.stderr}\n${logsOf(cluster.hosts)}`);
    await endedOn(cluster.hosts, 'ha-late', m2, { m1: 0, m2: 2 });
  });

  test("m1 restarted before an HA ct guest's hand-over (its daemon killed -9 while the guest stops, its HA agent stopped cleanly, so a new lease and token): started again, it ends the move under its new token and the guest runs on m1 again, once", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const name = 'ha-back';
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
    await eventually('HA counting ha-back on m1', () => haGuests(m1.daemon).m1 === 1, 30_000);
    // The guest's processes are held (SIGSTOP): its stop, the move's first step, waits for its
    // timeout, so the move stays before its hand-over (journal `started`, record moving) until
    // m1's daemon is killed. No sleep: the hold is the guest's.
    const procs = readFileSync(
      path.join('/sys/fs/cgroup/pids', cgroupParentOf(m1.daemon.stateDir), name, 'cgroup.procs'),
      'utf8',
    )
      .split('\n')
      .map(Number)
      .filter((pid) => pid > 0);
    assert.ok(procs.length > 0);
    for (const pid of procs) process.kill(pid, 'SIGSTOP');
    const asked = await m1.daemon.api('POST', `/1.0/guests/${name}?target=m2`, { migration: true });
    assert.equal(asked.status, 202, asked.text);
    // The move asked the guest's stop (desired Stopped written, so HA does not restart it elsewhere
    // while m1 is away), which waits on the held guest.
    const stopping = () =>
      (JSON.parse(m1.daemon.ok(['operation', 'list', '--format', 'json'])) as Operation[]).some(
        (o) => o.description === `Stopping guest ${name}` && o.status === 'Running',
      );
    await eventually("the move's stop under way on m1", stopping, 30_000);
    await m1.daemon.kill9();
    // m1's HA agent stops cleanly: it fences (kills the held guest) and revokes its lease.
    const agentFile = path.join(m1.daemon.stateDir, 'ha', 'agent.json');
    const tokenBefore = (JSON.parse(readFileSync(agentFile, 'utf8')) as { token?: number }).token;
    assert.ok(tokenBefore !== undefined);
    const agent = (
      JSON.parse(readFileSync(path.join(m1.daemon.stateDir, 'ha', 'agent.pid'), 'utf8')) as { pid: number }
    ).pid;
    process.kill(agent, 'SIGTERM');
    const gone = (pid: number) => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    };
    await eventually("m1's HA agent gone", () => gone(agent), 30_000);
    await m1.daemon.restart();
    await eventually(
      'ha-back running on m1 again',
      () => {
        const g = listed(m2.daemon, name);
        return g?.location === 'm1' && g.status === 'Running';
      },
      120_000,
    ).catch((e: unknown) => {
      throw new Error(`${String(e)}\n${logsOf(cluster.hosts)}`);
    });
    const tokenAfter = (JSON.parse(readFileSync(agentFile, 'utf8')) as { token?: number }).token;
    assert.ok(
      tokenAfter !== undefined && tokenAfter !== tokenBefore,
      `a new token: ${tokenBefore} → ${tokenAfter}`,
    );
    await endedOn(cluster.hosts, name, m1, { m1: 1, m2: 2 });
    const ops = JSON.parse(m1.daemon.ok(['operation', 'list', '--format', 'json'])) as Operation[];
    const resumed = ops.find((o) => o.description.startsWith(`Finishing the move of guest ${name} to m2`));
    assert.deepEqual(
      [resumed?.status, resumed?.metadata.outcome],
      ['Success', 'undone: the guest stays here'],
      JSON.stringify(ops),
    );
    // The guests go with the cluster (its destroy, checked by the run directory's sweep).
  });
});
