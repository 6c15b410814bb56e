import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ClusterState, GuestState, MemberState } from './cluster-state.ts';
import { autonomicPolicy } from './controller.ts';
import { concludeEvacuation, planPower } from './power-manager.ts';
import { type Scenario, simulate } from './simulator.ts';
import { syntheticScenario } from './synthetic.ts';

const member = (id: string, extra: Partial<MemberState> = {}): MemberState => ({
  id,
  cpuCapacity: 16,
  power: 'on',
  powerOffsMs: [],
  bootDelayMs: 300_000,
  bandwidthBytesPerSecond: 125_000_000,
  ...extra,
});

const series = (f: (t: number) => number, n = 12) => Float64Array.from({ length: n }, (_, t) => f(t));

const guest = (id: string, on: string, cpu: Float64Array, extra: Partial<GuestState> = {}): GuestState => ({
  id,
  model: 'vm',
  member: on,
  cpu,
  moveBytes: 2 ** 30,
  ...extra,
});

/** A cluster whose guests' CPU is `load(t)` each, for a step-by-step replay. */
function stepScenario(
  members: number,
  guests: number,
  samples: number,
  load: (t: number) => number,
): Scenario {
  return {
    intervalMs: 300_000,
    samples,
    members: Array.from({ length: members }, (_, i) => ({
      id: `m${i + 1}`,
      cpuCapacity: 16,
      bootDelayMs: 600_000,
      bandwidthBytesPerSecond: 125_000_000,
    })),
    guests: Array.from({ length: guests }, (_, i) => ({
      id: `g${i + 1}`,
      model: 'vm' as const,
      member: `m${(i % members) + 1}`,
      cpu: Float64Array.from({ length: samples }, (_, t) => load(t)),
      moveBytes: 2 ** 30,
    })),
  };
}

describe('power manager', () => {
  test('a guest with cluster.evacuate=stop is not planned as moved: the reason says it stays stopped on the member while it is off', () => {
    const state: ClusterState = {
      nowMs: 3_600_000,
      intervalMs: 300_000,
      members: [member('a'), member('b'), member('c')],
      guests: [
        guest(
          'a1',
          'a',
          series(() => 6),
        ),
        guest(
          'b1',
          'b',
          series(() => 6),
        ),
        guest(
          'c1',
          'c',
          series(() => 0.5),
        ),
        guest(
          'c2',
          'c',
          series(() => 0.2),
          { stopOnEvacuation: true },
        ),
      ],
    };
    const { plan } = planPower(state);
    const [e] = plan.evacuations;
    assert.equal(e?.member, 'c');
    assert.deepEqual(
      e?.moves.map((m) => m.guest),
      ['c1'],
    );
    assert.match(
      e?.reason ?? '',
      /; c2 \(cluster.evacuate=stop\) will be stopped and stay stopped on c while it is off$/,
    );
  });

  test('an etcd voter is powered off only if the voters left running are a quorum with one more failure tolerated, said in the plan', () => {
    const idle = (id: string) =>
      guest(
        `${id}1`,
        id,
        series(() => 0.5),
      );
    const busy = (id: string) =>
      guest(
        `${id}1`,
        id,
        series(() => 6),
      );
    const state = (members: MemberState[], etcdVoters: number, guests: GuestState[]): ClusterState => ({
      nowMs: 3_600_000,
      intervalMs: 300_000,
      members,
      guests,
      etcdVoters,
    });
    // Three voters (quorum 2): none may go, whatever its load; the idle client member may.
    const three = planPower(
      state(
        [
          member('a', { etcdVoter: true }),
          member('b', { etcdVoter: true }),
          member('c', { etcdVoter: true }),
          member('d'),
        ],
        3,
        [busy('a'), busy('b'), idle('c'), idle('d')],
      ),
    ).plan;
    assert.deepEqual(
      three.evacuations.map((e) => e.member),
      ['d'],
    );
    assert.match(three.evacuations[0]?.reason ?? '', /; it is not an etcd voter$/);
    assert.ok(
      three.notes.includes(
        'c stays on: it is an etcd voter: without it 2 of the 3 voters would run, fewer than a quorum of 2 with one more failure tolerated (3)',
      ),
      three.notes.join('\n'),
    );
    // Five voters (quorum 3), all running: one idle voter may go, 4 still run.
    const five = planPower(
      state(
        ['a', 'b', 'c', 'd', 'e'].map((id) => member(id, { etcdVoter: true })),
        5,
        [busy('a'), busy('b'), busy('c'), idle('d'), busy('e')],
      ),
    ).plan;
    assert.deepEqual(
      five.evacuations.map((e) => e.member),
      ['d'],
    );
    assert.match(
      five.evacuations[0]?.reason ?? '',
      /it is an etcd voter: 4 of the 5 voters still run without it, a quorum of 3 with one more failure tolerated$/,
    );
    // Five voters, one already off (or Offline: not in the state): the idle voter stays.
    const fourOn = planPower(
      state(
        ['a', 'b', 'c', 'd'].map((id) => member(id, { etcdVoter: true })),
        5,
        [busy('a'), busy('b'), busy('c'), idle('d')],
      ),
    ).plan;
    assert.deepEqual(fourOn.evacuations, []);
    assert.ok(
      fourOn.notes.some((n) => n.startsWith('d stays on: it is an etcd voter: without it 3 of the 5')),
    );
  });

  test('an idle member is evacuated with its moves explained, then powered off', () => {
    const state: ClusterState = {
      nowMs: 3_600_000,
      intervalMs: 300_000,
      members: [member('a'), member('b'), member('c')],
      guests: [
        guest(
          'a1',
          'a',
          series(() => 6),
        ),
        guest(
          'b1',
          'b',
          series(() => 6),
        ),
        guest(
          'c1',
          'c',
          series(() => 0.5),
        ),
      ],
    };
    const { plan } = planPower(state);
    assert.deepEqual(plan.powerOn, []);
    assert.deepEqual(
      plan.evacuations.map((e) => e.member),
      ['c'],
    );
    const [e] = plan.evacuations;
    assert.ok(e);
    assert.match(
      e.reason,
      /its load stayed at 3% or less \(p100\) over 40 min, below 85%, and its guests fit on the others below 99%/,
    );
    assert.equal(e.moves[0]?.reason, 'evacuation');
    assert.match(e.moves[0]?.summary ?? '', /^evacuation: c1 \(vm\) live c → [ab]/);
    assert.deepEqual(concludeEvacuation(e, { failed: [] }), {
      kind: 'power-off',
      member: 'c',
      reason: 'c is empty (1 guest(s) moved): powering it off',
    });
  });

  test('power-off reads the forecast: a burst that ended within the long window no longer keeps a member on', () => {
    // a, b, c carry 8 CPU each; d's guest burst to 14 CPU and fell back to 1. The long window's
    // peak (38 CPU) needs all four members with the failure room; the forecast (25 CPU) needs three.
    const state = (burst: (t: number) => boolean): ClusterState => ({
      nowMs: 3_600_000,
      intervalMs: 300_000,
      members: [member('a'), member('b'), member('c'), member('d')],
      guests: [
        guest(
          'a1',
          'a',
          series(() => 8),
        ),
        guest(
          'b1',
          'b',
          series(() => 8),
        ),
        guest(
          'c1',
          'c',
          series(() => 8),
        ),
        guest(
          'd1',
          'd',
          series((t) => (burst(t) ? 14 : 1)),
        ),
      ],
    });
    const past = (t: number) => t >= 5 && t <= 7;
    const forecast = { powerOffForecast: true, burstDrop: 0.25 };
    const { plan } = planPower(state(past), forecast);
    // The default (since decision 0051's amendment of 2026-12-07, h5) reads the forecast, at a drop of 10%.
    assert.deepEqual(
      planPower(state(past)).plan.evacuations.map((e) => e.member),
      ['d'],
    );
    assert.deepEqual(
      plan.evacuations.map((e) => e.member),
      ['d'],
    );
    assert.match(
      plan.evacuations[0]?.reason ?? '',
      /over the last 10 min \(the 40 min window's peak 38 CPU is past: the recent demand, carried forward by its trend, stays at 25\)/,
    );
    // The last long window alone keeps d on for the burst that is over.
    assert.deepEqual(planPower(state(past), { powerOffForecast: false }).plan.evacuations, []);
    // A burst still going is no forecast of a quiet window: nothing is powered off.
    assert.deepEqual(
      planPower(
        state((t) => t >= 9),
        forecast,
      ).plan.evacuations,
      [],
    );
    // Nor is a fall smaller than burstDrop (here 25%) of the long window's peak.
    assert.deepEqual(planPower(state(past), { ...forecast, burstDrop: 0.4 }).plan.evacuations, []);
  });

  test('a member powered on for a burst that the forecast says is over need not stay on the minimum on time', () => {
    // As above, d powered on 20 minutes ago for the burst (the minimum on time is 1 h).
    const nowMs = 3_600_000;
    const state: ClusterState = {
      nowMs,
      intervalMs: 300_000,
      members: [member('a'), member('b'), member('c'), member('d', { poweredOnAtMs: nowMs - 1_200_000 })],
      guests: [
        guest(
          'a1',
          'a',
          series(() => 8),
        ),
        guest(
          'b1',
          'b',
          series(() => 8),
        ),
        guest(
          'c1',
          'c',
          series(() => 8),
        ),
        guest(
          'd1',
          'd',
          series((t) => (t >= 5 && t <= 7 ? 14 : 1)),
        ),
      ],
    };
    const on = { powerOffForecast: true, burstEndsMinOn: true };
    assert.deepEqual(
      planPower(state, on).plan.evacuations.map((e) => e.member),
      ['d'],
    );
    // Held by the minimum on time otherwise (another member goes instead).
    const held = planPower(state, { powerOffForecast: true, burstEndsMinOn: false }).plan;
    assert.ok(!held.evacuations.some((e) => e.member === 'd'));
    // Powered on 5 minutes ago, within the short window: it stays.
    const justOn = {
      ...state,
      members: state.members.map((m) => (m.id === 'd' ? { ...m, poweredOnAtMs: nowMs - 300_000 } : m)),
    };
    assert.ok(!planPower(justOn, on).plan.evacuations.some((e) => e.member === 'd'));
  });

  // The daemon's power test (test/cluster/cluster-power.test.ts) as its cycles saw it (2026-12-07, h5:
  // the states logged by each cycle): 10-second samples, 30 s / 20 s windows, on_at 10%, four
  // members of 2 CPUs, m1–m3 etcd voters without a driver, m4 with one, a busy loop on m1.
  const clusterTest = (m4: Partial<MemberState>, work: number[], goes = 'm2'): ClusterState => ({
    nowMs: 1_000_000,
    intervalMs: 10_000,
    etcdVoters: 3,
    members: [
      ...['m1', 'm2', 'm3'].map((id) =>
        member(id, { cpuCapacity: 2, memoryBytes: 24 * 2 ** 30, etcdVoter: true, powerManaged: false }),
      ),
      member('m4', { cpuCapacity: 2, memoryBytes: 24 * 2 ** 30, bootDelayMs: 20_000, ...m4 }),
    ],
    guests: [
      guest('work', 'm1', Float64Array.from(work), {
        model: 'ct',
        memoryBytes: new Float64Array(6).fill(2 ** 20),
      }),
      guest('goes', goes, new Float64Array(6), {
        model: 'ct',
        memoryBytes: new Float64Array(6).fill(2 ** 20),
      }),
    ],
  });
  const daemonTest = {
    lowWindowMs: 30_000,
    highWindowMs: 20_000,
    powerOnAt: 0.1,
    maxEvacuationsPerCycle: 1,
    powerOffForecast: true,
    burstEndsMinOn: true,
  };

  test('power-off never leaves demand above the power-on line: a member powered on for a loop still running is not powered off by a 10% dip', () => {
    // m4 was powered on 30 s ago for the loop, which still runs at 0.41–0.48 CPU: the forecast
    // (0.42) is 10% under the long window's peak (0.47) and m4 has been on longer than the short
    // window, so only the line holds it: without m4, 0.42 CPU is over 10% of the 4 CPUs left after
    // a failure, and the next cycle would power it on again.
    const state = clusterTest({ poweredOnAtMs: 970_000 }, [0, 0.33, 0.48, 0.47, 0.42, 0.41], 'm4');
    const { plan } = planPower(state, daemonTest);
    assert.deepEqual(plan.evacuations, []);
    assert.deepEqual(plan.notes, [
      "m4 stays on: without it the peak over the last 0.3333333333333333 min (the 0.5 min window's peak 0.47 CPU is past: the recent demand, carried forward by its trend, stays at 0.42) would exceed 10% of the capacity left after one member's failure",
    ]);
    // Below the line it goes (the forecast, 0.32, under 10% of 4 CPUs), as with powerOffBelow alone.
    const dipped = clusterTest({ poweredOnAtMs: 970_000 }, [0, 0.33, 0.48, 0.41, 0.32, 0.29], 'm4');
    assert.deepEqual(
      planPower(dipped, daemonTest).plan.evacuations.map((e) => e.member),
      ['m4'],
    );
    // And the next cycle, m4 off, does not power it on again from the same samples.
    const after = clusterTest({ power: 'off', poweredOnAtMs: 970_000 }, [0, 0.33, 0.48, 0.41, 0.32, 0.29]);
    assert.deepEqual(planPower(after, daemonTest).plan.powerOn, []);
  });

  test('a long window with no demand at all holds no burst: power-off reads it, not the forecast', () => {
    const { plan } = planPower(clusterTest({}, [0, 0, 0, 0, 0, 0], 'm4'), daemonTest);
    assert.deepEqual(
      plan.evacuations.map((e) => e.member),
      ['m4'],
    );
    assert.match(plan.evacuations[0]?.reason ?? '', /\(p100\) over 0\.5 min, below 85%/);
  });

  test('room for one member failure is kept: two members stay on for a tiny load', () => {
    const r = simulate(
      stepScenario(3, 6, 48, () => 0.3),
      autonomicPolicy(),
    );
    assert.equal(r.powerOffs, 1);
    assert.equal(r.membersOnAtEnd, 2);
    assert.equal(r.minMembersOn, 2);
  });

  test('powered back on when demand over the short window rises, and the load fits again', () => {
    // 3 hours quiet, then every guest busy: the 8 guests need 3 members and room for a failure.
    const r = simulate(
      stepScenario(5, 8, 72, (t) => (t < 36 ? 0.5 : 5)),
      autonomicPolicy(),
      { keepLog: true },
    );
    assert.ok(r.powerOffs >= 2, `members were powered off while quiet (${r.powerOffs})`);
    assert.ok(r.powerOns >= 2, `members were powered back on (${r.powerOns})`);
    const onAt = r.log.find((l) => / on m\d$/.test(l));
    assert.match(onAt ?? '', /^10800000 on /, 'the first power-on comes with the first busy sample');
    assert.ok((r.membersOn.at(-1) as number) >= 3);
  });

  test('the boot delay counts: a rising demand powers a member on before it exceeds what is on', () => {
    const rising = (t: number) => 1 + t * 0.45;
    const state = (bootDelayMs: number): ClusterState => ({
      nowMs: 3_600_000,
      intervalMs: 300_000,
      members: [
        member('a', { bootDelayMs }),
        member('b', { bootDelayMs }),
        member('c', { power: 'off', bootDelayMs, powerOffsMs: [0] }),
      ],
      guests: [guest('a1', 'a', series(rising)), guest('b1', 'b', series(rising))],
    });
    // Now 2 × 5.95 = 11.9 CPU: within 90% of one member (14.4) after a failure.
    assert.deepEqual(planPower(state(0)).plan.powerOn, []);
    // Carried 30 min ahead (6 samples × 0.9 CPU), it is 17.3: member c must start now.
    const soon = planPower(state(1_800_000)).plan.powerOn;
    assert.deepEqual(
      soon.map((p) => [p.member, p.readyAtMs]),
      [['c', 3_600_000 + 1_800_000]],
    );
    assert.match(soon[0]?.reason ?? '', /carried 1800 s ahead \(its boot delay\)/);
  });

  test('no member cycles more than 4 times a day', () => {
    // Busy and quiet in turns every 90 minutes over two days.
    const r = simulate(
      stepScenario(4, 8, 576, (t) => (Math.floor(t / 18) % 2 === 0 ? 5 : 0.3)),
      autonomicPolicy({ power: { minOnMs: 0 } }),
    );
    assert.ok(r.powerOffs > 4, `it cycles (${r.powerOffs} power-offs)`);
    assert.ok(r.maxCyclesPerMemberPerDay <= 4, `${r.maxCyclesPerMemberPerDay} cycles of one member in a day`);
    const state: ClusterState = {
      nowMs: 86_400_000,
      intervalMs: 300_000,
      members: [
        member('a'),
        member('b'),
        member('c', { powerOffsMs: [1, 2, 3, 4].map((h) => h * 3_600_000) }),
      ],
      guests: [
        guest(
          'a1',
          'a',
          series(() => 6),
        ),
        guest(
          'b1',
          'b',
          series(() => 6),
        ),
      ],
    };
    const { plan } = planPower(state);
    assert.ok(plan.evacuations.every((e) => e.member !== 'c'));
    assert.ok(plan.notes.includes('c stays on: it was powered off 4 times in the last 24 h'));
  });

  test('a failed migration aborts the evacuation and leaves the member on', () => {
    const scenario = stepScenario(3, 6, 24, () => 0.3);
    const r = simulate(scenario, autonomicPolicy(), { migrationFailureRate: 1, keepLog: true });
    assert.ok(r.abortedEvacuations > 0);
    assert.equal(r.powerOffs, 0);
    assert.equal(r.membersOnAtEnd, 3);
    assert.ok(
      r.log.some((l) =>
        /abort m\d: evacuation of m\d aborted, the member stays on: moving g\d failed \(simulated migration failure\)/.test(
          l,
        ),
      ),
    );
    const verdict = concludeEvacuation(
      { member: 'x', moves: [], reason: '' },
      { failed: [{ guest: 'g', error: 'connection reset' }] },
    );
    assert.deepEqual(verdict, {
      kind: 'abort',
      member: 'x',
      reason: 'evacuation of x aborted, the member stays on: moving g failed (connection reset)',
    });
  });

  test('a member holding a ct guest that may never be cold-moved is not evacuated', () => {
    const state: ClusterState = {
      nowMs: 3_600_000,
      intervalMs: 300_000,
      members: [member('a'), member('b'), member('c')],
      guests: [
        guest(
          'a1',
          'a',
          series(() => 6),
        ),
        guest(
          'b1',
          'b',
          series(() => 6),
        ),
        guest(
          'db',
          'c',
          series(() => 0.5),
          { model: 'ct', downtimeBudgetMs: 0 },
        ),
      ],
    };
    const { plan } = planPower(state);
    assert.ok(plan.evacuations.every((e) => e.member !== 'c'));
    assert.ok(plan.notes.includes('c stays on: db: migration.downtime_budget is 0 (never cold-moved)'));
  });

  test('a member holding a guest a port forward pins to it is not evacuated, and says why', () => {
    const why = 'db is pinned to c by port forward lab 198.18.0.13:8080/tcp → 198.18.50.20:80';
    const state: ClusterState = {
      nowMs: 3_600_000,
      intervalMs: 300_000,
      members: [member('a'), member('b'), member('c')],
      guests: [
        guest(
          'a1',
          'a',
          series(() => 6),
        ),
        guest(
          'b1',
          'b',
          series(() => 6),
        ),
        guest(
          'db',
          'c',
          series(() => 0.5),
          { pinned: why },
        ),
      ],
    };
    const { plan } = planPower(state);
    assert.ok(plan.evacuations.every((e) => e.member !== 'c'));
    assert.ok(plan.notes.includes(`c stays on: ${why}`), plan.notes.join('\n'));
  });

  test('bad knobs get a one-line error', () => {
    const state: ClusterState = { nowMs: 0, intervalMs: 300_000, members: [member('a')], guests: [] };
    assert.throws(
      () => planPower(state, { ceiling: 1.5 }),
      /^Error: The power manager's ceiling 1.5 must be in \(0, 1\]$|ceiling 1.5 must be in \(0, 1\]/,
    );
    assert.throws(() => planPower(state, { maxCyclesPerDay: 0 }), /at least 1 power cycle a day/);
  });

  test('the same trace and seed give byte-identical decisions; another seed does not', () => {
    const { scenario } = syntheticScenario({ members: 8, guests: 40, samples: 288, seed: 11, meanLoad: 0.5 });
    const run = (seed: number) =>
      simulate(scenario, autonomicPolicy(), { seed, migrationFailureRate: 0.05, keepLog: true });
    const a = run(1);
    const b = run(1);
    const c = run(2);
    assert.ok(a.failedMigrations > 0, 'failures were drawn');
    assert.equal(JSON.stringify(a.log), JSON.stringify(b.log));
    const strip = ({ decideMs: _, ...rest }: typeof a) => rest;
    assert.equal(JSON.stringify(strip(a)), JSON.stringify(strip(b)));
    assert.notEqual(JSON.stringify(a.log), JSON.stringify(c.log));
  });
});
