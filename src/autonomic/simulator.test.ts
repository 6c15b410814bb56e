import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Inventory } from '../planner/inventory.ts';
import { dpmBaseline, incusBaseline, loessPredict, lrMmtBaseline } from './baselines.ts';
import { autonomicPolicy } from './controller.ts';
import { simulate } from './simulator.ts';
import { syntheticScenario } from './synthetic.ts';
import { scenarioFromInventory } from './trace-scenario.ts';

/** A PlanetLab-like inventory: CPU only, MIPS, four VM sizes. */
function inventory(
  rows: Array<{ id: string; mips: number; pct: (t: number) => number }>,
  samples = 48,
): Inventory {
  return {
    format: 'planetlab',
    cpuUnit: 'MIPS',
    intervalSeconds: 300,
    samples,
    workloads: rows.map((r, i) => ({
      id: r.id,
      cpuCapacity: r.mips,
      cpu: Float64Array.from({ length: samples }, (_, t) => (r.pct(t) / 100) * r.mips),
      file: 'day.csv',
      line: i + 2,
    })),
  };
}

describe('simulator and baselines', () => {
  test('a trace inventory becomes a cluster packed by limits, every member on', () => {
    const inv = inventory(
      Array.from({ length: 8 }, (_, i) => ({
        id: `vm${i}`,
        mips: [2500, 2000, 1000, 500][i % 4] as number,
        pct: () => 10,
      })),
    );
    const { scenario, limits } = scenarioFromInventory(inv, { hostSize: { cpu: 5320 } });
    // 2×2500 + 2×2000 + 2×1000 + 2×500 = 12,000 MIPS by limits: 3 hosts of 5320 by first fit decreasing.
    assert.equal(scenario.members.length, 3);
    assert.equal(limits.get('vm0')?.cpu, 2500);
    assert.equal(scenario.guests[0]?.moveBytes, 870 * 2 ** 20, "CloudSim's RAM for a 2500 MIPS VM");
    const r = simulate(scenario, autonomicPolicy());
    assert.equal(r.membersOnAtStart, 3);
    assert.equal(r.membersOnAtEnd, 2, 'consolidated to one member plus the room for a failure');
    assert.equal(r.slatah, 0);
  });

  test('a host too small for a single workload is a one-line error naming the file and line', () => {
    const inv = inventory([{ id: 'big', mips: 2500, pct: () => 10 }]);
    assert.throws(
      () => scenarioFromInventory(inv, { hostSize: { cpu: 2000 } }),
      (e: Error & { code?: string }) =>
        e.code === 'FailedPrecondition' &&
        e.message ===
          "day.csv:2: workload big's limits (cpu 2500) do not fit in one host of cpu=2000: the host is too small for a single workload",
    );
  });

  test('LR-MMT: local regression predicts a straight line exactly; its overloaded hosts shed the smallest guest', () => {
    assert.ok(Math.abs(loessPredict([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 2) - 12) < 1e-9);
    // m1 ramps towards full: predicted over 100% after × 1.2; m2 and m3 are nearly empty.
    const member = (id: string) => ({
      id,
      cpuCapacity: 10,
      power: 'on' as const,
      powerOffsMs: [],
      bootDelayMs: 300_000,
      bandwidthBytesPerSecond: 125_000_000,
    });
    const ramp = (from: number, step: number) => Float64Array.from({ length: 10 }, (_, t) => from + t * step);
    const d = lrMmtBaseline().decide({
      nowMs: 2_700_000,
      intervalMs: 300_000,
      members: [member('m1'), member('m2'), member('m3')],
      guests: [
        { id: 'big', model: 'vm', member: 'm1', cpu: ramp(3, 0.3), moveBytes: 8 * 2 ** 30 },
        { id: 'small', model: 'vm', member: 'm1', cpu: ramp(2, 0.2), moveBytes: 2 ** 30 },
        { id: 'x', model: 'vm', member: 'm2', cpu: ramp(1, 0), moveBytes: 2 ** 30 },
        { id: 'y', model: 'vm', member: 'm3', cpu: ramp(1, 0), moveBytes: 2 ** 30 },
      ],
    });
    const overload = d.moves.filter((m) => m.reason === 'overload');
    assert.deepEqual(
      overload.map((m) => [m.guest, m.from]),
      [['small', 'm1']],
      'minimum migration time: the 1 GiB guest leaves first, and that is enough',
    );
  });

  test('DPM powers off a member below 45% whose guests fit within 81%; Incus moves only VMs, by limits', () => {
    const { scenario, limits } = syntheticScenario({
      members: 4,
      guests: 8,
      samples: 24,
      seed: 5,
      meanLoad: 0.2,
    });
    const dpm = simulate(scenario, dpmBaseline());
    assert.ok(dpm.powerOffs >= 1);
    // Every guest on m1 by limits: Incus moves one VM a run while the gap exceeds 20%, never a ct.
    const piled = {
      ...scenario,
      guests: scenario.guests.map((g, i) => ({
        ...g,
        member: 'm1',
        model: i % 2 === 0 ? ('vm' as const) : ('ct' as const),
      })),
    };
    const incus = simulate(piled, incusBaseline(limits), { keepLog: true });
    assert.ok(incus.migrations > 0);
    assert.equal(incus.powerOffs, 0);
    for (const line of incus.log) {
      const m = / balance (g\d+) /.exec(line);
      if (m) assert.equal(Number(m[1]?.slice(1)) % 2, 1, `${m[1]} is a VM (odd ids are even indexes)`);
    }
    // By limits, 4 members × 16 cores and 8 guests × 2 cores: one VM a run until the gap is within 20% (3 cores).
    assert.ok(incus.migrations <= 4);
  });

  test('LR-MMT with the failure room (the second baseline) keeps one member more on than LR-MMT for a tiny load', () => {
    const { scenario } = syntheticScenario({ members: 4, guests: 8, samples: 96, seed: 5, meanLoad: 0.1 });
    const plain = simulate(scenario, lrMmtBaseline());
    const withRoom = simulate(scenario, lrMmtBaseline({ keepFailureRoom: true }));
    assert.equal(plain.membersOnAtEnd, 1);
    assert.equal(withRoom.membersOnAtEnd, 2);
    assert.equal(withRoom.minMembersOn, 2);
    assert.equal(withRoom.policy, 'lr-mmt-failure-room');
  });

  test('the simulator never lets a policy see the future: decisions at a sample use samples up to it only', () => {
    const { scenario } = syntheticScenario({ members: 4, guests: 12, samples: 30, seed: 9 });
    const seen: number[] = [];
    const trace = scenario.guests[0]?.cpu as Float64Array;
    simulate(scenario, {
      name: 'probe',
      intervalMs: 300_000,
      historyMs: 3_600_000,
      decide(state) {
        const i = state.nowMs / 300_000;
        const window = state.guests[0]?.cpu as Float64Array;
        // The window ends with sample i itself and holds at most the 12 samples up to it.
        assert.equal(window.length, Math.min(12, i + 1));
        assert.deepEqual([...window], [...trace.subarray(Math.max(0, i - 11), i + 1)]);
        seen.push(i);
        return { evacuations: [], moves: [], powerOn: [], notes: [] };
      },
    });
    // A decision at every sample.
    assert.deepEqual(
      seen,
      Array.from({ length: 30 }, (_, i) => i),
    );
  });
});
