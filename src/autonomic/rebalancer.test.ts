import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type ClusterState,
  checkClusterState,
  type GuestState,
  type MemberState,
  priceMove,
} from './cluster-state.ts';
import { autonomicPolicy } from './controller.ts';
import { DEFAULT_REBALANCE, planRebalance } from './rebalancer.ts';
import { simulate } from './simulator.ts';
import { syntheticScenario } from './synthetic.ts';

const GIB = 2 ** 30;

const member = (id: string, extra: Partial<MemberState> = {}): MemberState => ({
  id,
  cpuCapacity: 16,
  power: 'on',
  powerOffsMs: [],
  bootDelayMs: 300_000,
  bandwidthBytesPerSecond: 125_000_000,
  ...extra,
});

const flat = (v: number, n = 12) => Float64Array.from({ length: n }, () => v);

const guest = (id: string, on: string, cpu: number, extra: Partial<GuestState> = {}): GuestState => ({
  id,
  model: 'vm',
  member: on,
  cpu: flat(cpu),
  moveBytes: 2 * GIB,
  ...extra,
});

/** The state after a plan's moves, `later` ms on. */
function applyMoves(
  state: ClusterState,
  moves: Array<{ guest: string; from: string; to: string }>,
  later: number,
): ClusterState {
  const to = new Map(moves.map((m) => [m.guest, m]));
  return {
    ...state,
    nowMs: state.nowMs + later,
    guests: state.guests.map((g) => {
      const m = to.get(g.id);
      return m ? { ...g, member: m.to, lastMove: { atMs: state.nowMs, from: m.from, to: m.to } } : g;
    }),
  };
}

/** The 8-member scenario: 32 guests of 2 cores piled 8, 6, 5, 4, 3, 3, 2, 1 onto the members. */
function eightMembers(): ClusterState {
  const piles = [8, 6, 5, 4, 3, 3, 2, 1];
  const memberOf = piles.flatMap((n, m) => Array.from({ length: n }, () => m));
  const { scenario } = syntheticScenario({
    members: 8,
    guests: 32,
    samples: 12,
    seed: 7,
    meanLoad: 0.6,
    memberOf: (i) => memberOf[i] as number,
  });
  return {
    nowMs: 11 * 300_000,
    intervalMs: 300_000,
    members: scenario.members.map((m) => member(m.id)),
    guests: scenario.guests.map((g) => ({
      id: g.id,
      model: g.model,
      member: g.member,
      cpu: g.cpu,
      moveBytes: 2 * GIB,
    })),
  };
}

describe('rebalancer', () => {
  test('an 8-member cluster converges below the target imbalance within 2 cycles', () => {
    const state = eightMembers();
    const first = planRebalance(state);
    assert.ok(
      first.imbalanceBefore > DEFAULT_REBALANCE.targetImbalance,
      `starts imbalanced: ${first.imbalanceBefore}`,
    );
    assert.ok(first.moves.length > 0);
    const second = planRebalance(applyMoves(state, first.moves, 300_000));
    const after = planRebalance(applyMoves(applyMoves(state, first.moves, 300_000), second.moves, 300_000));
    assert.ok(
      after.imbalanceBefore < DEFAULT_REBALANCE.targetImbalance,
      `imbalance after 2 cycles ${after.imbalanceBefore} (${first.imbalanceBefore} → ${first.imbalanceAfter} → ${second.imbalanceAfter})`,
    );
    assert.equal(after.moves.length, 0, 'a third cycle has nothing left to do');
  });

  test('the busy guest moves, not its idle twin, and the move is explained', () => {
    const state: ClusterState = {
      nowMs: 0,
      intervalMs: 300_000,
      members: [member('a'), member('b'), member('c')],
      guests: [
        guest('busy', 'a', 6),
        guest('idle', 'a', 0.2),
        guest('base', 'a', 9.7),
        guest('b1', 'b', 4),
        guest('c1', 'c', 4),
      ],
    };
    const plan = planRebalance(state);
    const [m] = plan.moves;
    assert.ok(m);
    assert.equal(m.guest, 'busy');
    assert.ok(
      plan.moves.every((x) => x.guest !== 'idle'),
      'the idle twin stays',
    );
    assert.equal(m.reason, 'overload');
    assert.equal(m.how, 'live');
    assert.ok(m.imbalanceAfter < m.imbalanceBefore);
    assert.ok(m.benefitSeconds > m.costSeconds);
    assert.match(
      m.summary,
      /^overload: busy \(vm\) live a → b; a 99% → 62%, b 25% → 63%; imbalance 0\.351 → 0\.175; benefit [\d.]+ s against cost 2\.02 s \(copy 17\.18 s at assumed 1 Gbit\/s, downtime 300 ms\)$/,
    );
    assert.ok(m.constraints.some((c) => c.startsWith('ceiling')));
  });

  test('balances measured demand, never configured limits: a guest idle with big limits stays', () => {
    // Same configured size (moveBytes) for both; only the measured use differs.
    const state: ClusterState = {
      nowMs: 0,
      intervalMs: 300_000,
      members: [member('a'), member('b')],
      guests: [guest('quiet', 'a', 0.1), guest('quiet2', 'a', 0.1), guest('x', 'b', 0.1)],
    };
    assert.equal(planRebalance(state).moves.length, 0);
  });

  test('no guest moves within its cooldown, and none goes back to the member it left', () => {
    const base: ClusterState = {
      nowMs: 10 * 60_000,
      intervalMs: 300_000,
      members: [member('a'), member('b')],
      guests: [
        guest('hot', 'a', 9, { lastMove: { atMs: 0, from: 'b', to: 'a' } }),
        guest('base', 'a', 6),
        guest('b1', 'b', 1),
      ],
    };
    const inCooldown = planRebalance(base);
    // `hot` may not move (cooldown, and b is where it came from); `base` goes instead.
    assert.deepEqual(
      inCooldown.moves.map((m) => m.guest),
      ['base'],
    );
    assert.ok(inCooldown.notes.some((n) => /in their cooldown/.test(n)));
    const later = planRebalance({
      ...base,
      nowMs: 3 * 3_600_000,
      guests: base.guests.filter((g) => g.id !== 'base'),
    });
    assert.ok(
      later.moves.every((m) => m.guest !== 'hot'),
      'hot never returns to b',
    );
    assert.ok(later.notes.some((n) => /not sent back to b/.test(n)));
  });

  test('ct and pvm move cold within their downtime budget; a budget of 0 means never', () => {
    const a = member('a');
    const b = member('b');
    const ct = guest('c', 'a', 1, { model: 'ct', moveBytes: 125_000_000, downtimeBudgetMs: 5000 });
    const p = priceMove(ct, a, b, DEFAULT_REBALANCE.costs);
    assert.deepEqual(p, {
      ok: true,
      how: 'cold',
      bandwidth: 'assumed 1 Gbit/s',
      copySeconds: 1,
      downtimeMs: 2000,
      costSeconds: 2,
    });
    const never = priceMove({ ...ct, downtimeBudgetMs: 0 }, a, b, DEFAULT_REBALANCE.costs);
    assert.equal(never.ok, false);
    const tight = priceMove({ ...ct, model: 'pvm', downtimeBudgetMs: 2000 }, a, b, DEFAULT_REBALANCE.costs);
    assert.deepEqual(tight, {
      ok: false,
      why: 'c: a cold move stops it 4000 ms, over its downtime budget of 2000 ms',
    });
    const state: ClusterState = {
      nowMs: 0,
      intervalMs: 300_000,
      members: [a, b],
      guests: [
        guest('pinned', 'a', 9, { model: 'ct', downtimeBudgetMs: 0 }),
        guest('other', 'a', 6, { model: 'ct', moveBytes: 125_000_000, downtimeBudgetMs: 5000 }),
      ],
    };
    const plan = planRebalance(state);
    assert.deepEqual(
      plan.moves.map((m) => [m.guest, m.how, m.downtimeMs]),
      [['other', 'cold', 2000]],
    );
    assert.ok(plan.notes.some((n) => /pinned: migration.downtime_budget is 0/.test(n)));
  });

  test('a guest a port forward pins to its member never moves, and the plan says why', () => {
    const why = 'hot is pinned to a by port forward lab 198.18.0.11:8080/tcp → 198.18.50.20:80';
    const a = member('a');
    const b = member('b');
    assert.deepEqual(priceMove(guest('hot', 'a', 9, { pinned: why }), a, b, DEFAULT_REBALANCE.costs), {
      ok: false,
      why,
    });
    const state: ClusterState = {
      nowMs: 0,
      intervalMs: 300_000,
      members: [a, b],
      guests: [guest('hot', 'a', 9, { pinned: why }), guest('other', 'a', 6)],
    };
    const plan = planRebalance(state);
    assert.deepEqual(
      plan.moves.map((m) => m.guest),
      ['other'],
    );
    assert.ok(plan.notes.includes(why));
  });

  test("a link's measured bandwidth prices its moves, said in the explanation; an unmeasured one is assumed 1 Gbit/s", () => {
    // a → b measured at 870 Mbit/s over 3 moves, a → c never: the same 2 GiB guest costs more to b.
    const a = member('a', { links: { b: { bytesPerSecond: 108_750_000, moves: 3 } } });
    const b = member('b');
    const c = member('c');
    const g = guest('g', 'a', 1);
    const toB = priceMove(g, a, b, DEFAULT_REBALANCE.costs);
    const toC = priceMove(g, a, c, DEFAULT_REBALANCE.costs);
    assert.ok(toB.ok && toC.ok);
    assert.equal(toB.bandwidth, 'bandwidth 870 Mbit/s measured over 3 moves');
    assert.equal(toB.copySeconds, (2 * GIB) / 108_750_000);
    assert.equal(toC.bandwidth, 'assumed 1 Gbit/s');
    assert.equal(toC.copySeconds, (2 * GIB) / 125_000_000);
    // The link back (b → a) has not been measured: it is assumed, whatever a → b measured.
    const back = priceMove({ ...g, member: 'b' }, b, a, DEFAULT_REBALANCE.costs);
    assert.ok(back.ok && back.bandwidth === 'assumed 1 Gbit/s');
    // A slow measured link makes a move not worth it that the assumed bandwidth would make.
    const state = (links?: MemberState['links']): ClusterState => ({
      nowMs: 0,
      intervalMs: 300_000,
      members: [member('a', links ? { links } : {}), member('b')],
      guests: [
        guest('big', 'a', 4, { moveBytes: 64 * GIB }),
        guest('y', 'a', 4, { moveBytes: 64 * GIB }),
        guest('z', 'b', 3.5),
      ],
    });
    const assumed = planRebalance(state(), { aggressiveness: 2 });
    assert.equal(assumed.moves.length, 1);
    assert.match(assumed.moves[0]?.summary ?? '', /at assumed 1 Gbit\/s/);
    const slow = planRebalance(state({ b: { bytesPerSecond: 12_500_000, moves: 2 } }), { aggressiveness: 2 });
    assert.equal(slow.moves.length, 0);
    const fast = planRebalance(state({ b: { bytesPerSecond: 1_250_000_000, moves: 5 } }), {
      aggressiveness: 2,
    });
    assert.match(fast.moves[0]?.summary ?? '', /at bandwidth 10 Gbit\/s measured over 5 moves/);
  });

  test('a move is made only when its benefit beats its cost', () => {
    // A 64 GiB guest over a slow link: about 550 s of copy, for a small gain in balance.
    const state: ClusterState = {
      nowMs: 0,
      intervalMs: 300_000,
      members: [member('a', { bandwidthBytesPerSecond: 12_500_000 }), member('b')],
      guests: [
        guest('big', 'a', 4, { moveBytes: 64 * GIB }),
        guest('y', 'a', 4, { moveBytes: 64 * GIB }),
        guest('z', 'b', 3.5),
      ],
    };
    const plan = planRebalance(state, { aggressiveness: 2 });
    assert.equal(plan.moves.length, 0);
    const cheap = planRebalance(
      {
        ...state,
        guests: state.guests.map((g) => ({ ...g, moveBytes: GIB })),
        members: [member('a'), member('b')],
      },
      { aggressiveness: 2 },
    );
    assert.equal(cheap.moves.length, 1);
  });

  test('aggressiveness 1 only relieves overloads; higher levels also balance', () => {
    const state = eightMembers();
    const calm: ClusterState = {
      ...state,
      guests: state.guests.map((g) => ({ ...g, cpu: Float64Array.from(g.cpu, (v) => v / 2) })),
    };
    // Halved, no member is over the ceiling, but the piles are still uneven.
    const one = planRebalance(calm, { aggressiveness: 1 });
    assert.ok(one.imbalanceBefore > DEFAULT_REBALANCE.targetImbalance / 2);
    assert.equal(planRebalance(calm, { aggressiveness: 1, targetImbalance: 0.01 }).moves.length, 0);
    const five = planRebalance(calm, { aggressiveness: 5, targetImbalance: 0.01 });
    assert.ok(five.moves.length > 0);
    assert.ok(five.moves.every((m) => m.reason === 'balance'));
    assert.ok(five.imbalanceAfter < five.imbalanceBefore);
  });

  test('the interval knob sets how often the simulator asks the policy', () => {
    const { scenario } = syntheticScenario({ members: 4, guests: 8, samples: 24, seed: 2 });
    let calls = 0;
    const policy = autonomicPolicy({ rebalance: { intervalMs: 15 * 60_000 } });
    simulate(scenario, {
      ...policy,
      decide(state) {
        calls++;
        return policy.decide(state);
      },
    });
    assert.equal(policy.intervalMs, 900_000);
    assert.equal(calls, 8, '24 samples of 5 minutes, a decision every 15 minutes');
  });

  test('bad input gets a clear one-line error and nothing is decided', () => {
    const ok: ClusterState = {
      nowMs: 0,
      intervalMs: 300_000,
      members: [member('a'), member('b')],
      guests: [guest('g', 'a', 1), guest('h', 'b', 1)],
    };
    const cases: Array<[ClusterState, RegExp]> = [
      [
        {
          ...ok,
          guests: [
            guest('g', 'a', 1, { cpu: Float64Array.from([1, Number.NaN, 1]) }),
            guest('h', 'b', 1, { cpu: flat(1, 3) }),
          ],
        },
        /^Guest g's CPU sample 1 is missing$/,
      ],
      [
        {
          ...ok,
          guests: [
            guest('g', 'a', 1, { cpu: Float64Array.from([1, -2, 1]) }),
            guest('h', 'b', 1, { cpu: flat(1, 3) }),
          ],
        },
        /^Guest g's CPU sample 1 is negative \(-2\)$/,
      ],
      [
        { ...ok, guests: [guest('g', 'a', 1), guest('h', 'b', 1, { cpu: flat(1, 5) })] },
        /^Guest h has 5 CPU samples where g has 12: samples are missing$/,
      ],
      [
        { ...ok, guests: [guest('g', 'a', 1, { cpu: [] as unknown as Float64Array })] },
        /^Guest g has no CPU sample$/,
      ],
      [
        { ...ok, guests: [guest('g', 'a', 20)] },
        /^Guest g uses 20 CPU at its peak, more than the largest member's 16: no member can hold it$/,
      ],
      [{ ...ok, guests: [guest('g', 'x', 1)] }, /^Guest g is on x, which is not a member$/],
      [{ ...ok, intervalMs: 0 }, /^The sample interval 0 ms must be above 0$/],
    ];
    for (const [state, message] of cases) {
      assert.throws(
        () => planRebalance(state),
        (e: Error) => {
          assert.match(e.message, message);
          assert.doesNotMatch(e.message, /\n/);
          return true;
        },
      );
    }
    assert.throws(
      () => planRebalance(ok, { aggressiveness: 7 as 1 }),
      /^TrivisorError\(InvalidArgument\)|aggressiveness 7 must be 1, 2, 3, 4 or 5/,
    );
    assert.throws(
      () => checkClusterState({ ...ok, guests: [guest('g', 'a', 20)] }),
      (e: Error & { code?: string }) => e.code === 'FailedPrecondition',
    );
  });
});

describe('rebalancer in the simulator', () => {
  test('zero A→B→A moves over three simulated days, with and without power management', () => {
    const { scenario } = syntheticScenario({ members: 8, guests: 40, samples: 864, seed: 3, meanLoad: 0.5 });
    for (const powerManagement of [false, true]) {
      const r = simulate(scenario, autonomicPolicy({ powerManagement }), { keepLog: true });
      assert.ok(r.migrations > 0, 'the scenario makes moves');
      assert.equal(r.returnMoves, 0);
      // Check the log itself too: no guest goes back to the member it just left.
      const last = new Map<string, string>();
      for (const line of r.log) {
        const m = / (?:overload|balance|evacuate) (\S+) (\S+)>(\S+)$/.exec(line);
        if (!m) continue;
        const [, id, from, to] = m as unknown as [string, string, string, string];
        assert.notEqual(last.get(id), to, `${id} went back to ${to}: ${line}`);
        last.set(id, from);
      }
    }
  });
});
