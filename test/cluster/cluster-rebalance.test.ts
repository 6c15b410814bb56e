import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { History } from '../../src/api/web-schemas.ts';
import type { ClusterMove, RebalanceResult } from '../../src/client/cluster-client.ts';
import { type Daemon, eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster } from './cluster-harness.ts';

/*
 * Issue 14 §2 and §7 on two real members (decision 0053): a busy ct guest (a CPU loop), its idle
 * twin with the same configuration, and a busy one that may not be cold-moved
 * (migration.downtime_budget=0) on m1; m2 holds nothing. The rebalancer, its window shortened
 * to a minute through the keys, plans the busy one and moves it to m2, explained in
 * `cluster moves`; a cycle run at once after moves nothing back, and once m2 is the full one the
 * moved guest, in its cooldown, stays while another goes. The machine's two CPUs are
 * shared with other tests: the assertions are about which guest moves, not about its figures.
 */

interface Listed {
  name: string;
  location?: string;
}
const whereIs = (d: Daemon, name: string) =>
  (JSON.parse(d.ok(['list', '--format', 'json'])) as Listed[]).find((g) => g.name === name)?.location;

/** One `Error:` line and exit code 1. */
function refused(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^Error: [^\n]+\n$/, r.stderr);
  assert.match(r.stderr, pattern);
}

const LOOP = "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &";

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

describe('the rebalancer on two members', () => {
  test('bootstrap and join: two Online members', async () => {
    await formCluster(cluster);
  });

  test('the keys: bad values are refused in one line and change nothing; good ones are shown', () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    // Off while the guests are set up: the cycles of this test are asked for, or turned on below.
    m1.daemon.ok(['cluster', 'set', 'cluster.rebalance.enabled=false', 'cluster.rebalance.window=1m']);
    for (const [bad, why] of [
      ['cluster.rebalance.aggressiveness=9', /must be 1, 2, 3, 4 or 5/],
      ['cluster.rebalance.interval=1s', /must be a duration from 10s to 1w/],
      ['cluster.rebalance.threshold=abc', /must be a percentage/],
      ['cluster.rebalance.nothing=1', /Unknown cluster key/],
    ] as const) {
      refused(m2.daemon.cli(['cluster', 'set', bad]), why);
    }
    assert.equal(
      m2.daemon.ok(['cluster', 'show']),
      'cluster.rebalance.enabled: false\ncluster.rebalance.window: 1m\n',
    );
    // The loops share the machine's two CPUs with the other test file running beside this one
    // (decision 0071): at a load of 20 each got a tenth of a CPU, m1's load was 10% of its two and
    // the spread (5 points) stayed under the default target of 10, so nothing was planned in 120 s.
    // A target of 3 points still leaves the idle twin, which would gain nothing, where it is.
    m1.daemon.ok(['cluster', 'set', 'cluster.rebalance.threshold=3']);
  });

  test('a busy guest and its idle twin on m1: a dry run plans the busy one and moves nothing', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    for (const name of ['busy', 'idle']) {
      m1.daemon.ok(['launch', 'busybox', name, '--target', 'm1', '-c', 'limits.cpu=1']);
    }
    m1.daemon.ok([
      'launch',
      'busybox',
      'anchor',
      '--target',
      'm1',
      '-c',
      'limits.cpu=1',
      '-c',
      'migration.downtime_budget=0',
    ]);
    refused(m1.daemon.cli(['config', 'set', 'idle', 'migration.downtime_budget=soon']), /downtime_budget/);
    m1.daemon.ok(['exec', 'busy', '--', 'sh', '-c', LOOP]);
    m1.daemon.ok(['exec', 'anchor', '--', 'sh', '-c', LOOP]);

    let plan: RebalanceResult | undefined;
    await eventually(
      'a plan that moves a guest (the loops measured and published)',
      () => {
        plan = JSON.parse(
          m2.daemon.ok(['cluster', 'rebalance', '--dry-run', '--format', 'json']),
        ) as RebalanceResult;
        return plan.planned.length > 0;
      },
      120_000,
    );
    assert.ok(plan);
    assert.equal(plan.dryRun, true);
    assert.deepEqual(
      plan.planned.map((m) => `${m.guest} ${m.from}->${m.to} ${m.how}`),
      ['busy m1->m2 cold'],
      JSON.stringify(plan, null, 2),
    );
    assert.ok(
      plan.notes.some((n) => n.includes('anchor: migration.downtime_budget is 0')),
      plan.notes.join('\n'),
    );
    assert.deepEqual(plan.moved, []);
    assert.equal(whereIs(m1.daemon, 'busy'), 'm1', 'a dry run moves nothing');
    assert.equal(m2.daemon.ok(['cluster', 'moves', '--format', 'json']).trim(), '[]');
  });

  test('turned on, the rebalancer moves the busy guest to m2 by itself, explained in cluster moves', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m2.daemon.ok(['cluster', 'set', 'cluster.rebalance.enabled=true', 'cluster.rebalance.interval=20s']);
    let moves: ClusterMove[] = [];
    await eventually(
      'a move in cluster moves',
      () => {
        moves = JSON.parse(m1.daemon.ok(['cluster', 'moves', '--format', 'json'])) as ClusterMove[];
        return moves.length > 0;
      },
      180_000,
    );
    assert.equal(moves.length, 1, JSON.stringify(moves, null, 2));
    const [move] = moves;
    assert.ok(move);
    assert.equal(move.guest, 'busy', JSON.stringify(move, null, 2));
    assert.equal(move.result, 'moved', move.error);
    assert.deepEqual([move.from, move.to, move.how], ['m1', 'm2', 'cold']);
    assert.ok(move.imbalanceAfter < move.imbalanceBefore, move.summary);
    assert.ok(move.benefitSeconds > move.costSeconds, move.summary);
    assert.ok(
      move.constraints.some((c) => c.startsWith('cooldown')),
      move.constraints.join('; '),
    );
    assert.match(move.summary, /busy \(ct\) cold m1 → m2/);
    assert.equal(whereIs(m1.daemon, 'busy'), 'm2');
    assert.equal(whereIs(m1.daemon, 'idle'), 'm1', 'the idle twin stays');
    assert.equal(whereIs(m1.daemon, 'anchor'), 'm1', 'a budget of 0 is never cold-moved');
    const table = m2.daemon.ok(['cluster', 'moves']);
    assert.match(table, /busy: \w+: busy \(ct\) cold m1 → m2/);
  });

  test('a cycle run at once after the move moves nothing back', () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    // Off again, so that the cycles from here on are the ones this test asks for.
    m1.daemon.ok(['cluster', 'set', 'cluster.rebalance.enabled=false']);
    const r = m1.daemon.cli(['cluster', 'rebalance', '--format', 'json'], { timeoutMs: 300_000 });
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout) as RebalanceResult;
    assert.equal(result.dryRun, false);
    assert.deepEqual(result.moved, [], JSON.stringify(result, null, 2));
    assert.equal(whereIs(m1.daemon, 'busy'), 'm2');
  });

  test('within its cooldown the moved guest is not sent back: with m2 full and m1 idle, another guest of m2 goes', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    // m1 empties (anchor stopped: no demand), m2 fills: busy loops again and busy2 loops beside it.
    m1.daemon.ok(['stop', '--force', 'anchor']);
    m2.daemon.ok(['exec', 'busy', '--', 'sh', '-c', LOOP]);
    m2.daemon.ok(['launch', 'busybox', 'busy2', '--target', 'm2', '-c', 'limits.cpu=1']);
    m2.daemon.ok(['exec', 'busy2', '--', 'sh', '-c', LOOP]);
    let plan: RebalanceResult | undefined;
    await eventually(
      'a plan that moves busy2 (the window sees m2 full)',
      () => {
        plan = JSON.parse(
          m1.daemon.ok(['cluster', 'rebalance', '--dry-run', '--format', 'json']),
        ) as RebalanceResult;
        return plan.planned.some((m) => m.guest === 'busy2');
      },
      150_000,
    );
    assert.ok(plan);
    assert.ok(
      plan.planned.every((m) => m.guest !== 'busy'),
      JSON.stringify(plan.planned, null, 2),
    );
    assert.ok(plan.notes.includes('1 guest(s) of m2 in their cooldown'), plan.notes.join('\n'));

    const r = m2.daemon.cli(['cluster', 'rebalance', '--format', 'json'], { timeoutMs: 300_000 });
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout) as RebalanceResult;
    assert.ok(
      result.moved.every((m) => m.guest !== 'busy'),
      JSON.stringify(result.moved, null, 2),
    );
    assert.ok(
      result.moved.some((m) => m.guest === 'busy2' && m.result === 'moved' && m.to === 'm1'),
      JSON.stringify(result, null, 2),
    );
    assert.equal(whereIs(m1.daemon, 'busy2'), 'm1');
    assert.equal(whereIs(m1.daemon, 'busy'), 'm2', 'busy stays where it went');
    const moves = JSON.parse(m1.daemon.ok(['cluster', 'moves', '--format', 'json'])) as ClusterMove[];
    assert.equal(moves.filter((m) => m.guest === 'busy').length, 1, JSON.stringify(moves, null, 2));
    m1.daemon.ok(['delete', '--force', 'busy', 'busy2', 'idle', 'anchor']);
  });

  test("a member's metric history is asked of it through another member (?target=, the web UI's member charts); an unknown member is a 404", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const history = async (target: string) => {
      const r = await m1.daemon.api('GET', `/1.0/metrics/history?range=hour&target=${target}`);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.metadata as History;
    };
    const theirs = await history('m2');
    // m2's own series, from its own database: m1 would have answered host/m1.
    assert.equal(theirs.target, 'host/m2');
    assert.ok(
      (theirs.metrics.cpu?.average ?? []).some((v) => v !== null),
      'm2 sampled itself during the test',
    );
    assert.equal((await history('m1')).target, 'host/m1');
    const unknown = await m1.daemon.api('GET', '/1.0/metrics/history?target=m9');
    assert.equal(unknown.status, 404, JSON.stringify(unknown.body));
  });
});
