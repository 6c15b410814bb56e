import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { mulberry32 } from './anneal.ts';
import { planConsolidation } from './consolidate.ts';
import type { Inventory, Workload } from './inventory.ts';

/**
 * Plans pinned to the bit (decision 0047, amended 2026-12-07): the planner's speed-ups (typed
 * loops specialised per dimension count, bounds that skip what cannot change a result) must leave
 * every plan as the code before them made it. The hashes below are of the plans made by the code
 * of 1edbb6d, before those changes, on these seeded fixtures; they pass through every step of the
 * planner (best fit and its restarts, the fixed counts, the shared budget's local search, the
 * annealing, the evening out).
 */
function fixture(opts: { seed: number; n: number; T: number; memory: boolean }): Inventory {
  const rnd = mulberry32(opts.seed);
  const workloads: Workload[] = [];
  for (let i = 0; i < opts.n; i++) {
    // Four sizes in blocks, as CloudSim's PlanetLab setup; each a daily wave of its own phase,
    // noise, and a few spikes.
    const cap = [2.5, 2, 1, 0.5][Math.floor((4 * i) / opts.n)] as number;
    const phase = rnd() * opts.T;
    const base = 0.05 + 0.3 * rnd();
    const amp = 0.4 * rnd();
    const cpu = Float64Array.from({ length: opts.T }, (_, t) => {
      const wave = base + amp * (0.5 + 0.5 * Math.sin((2 * Math.PI * (t + phase)) / opts.T));
      const spike = rnd() < 0.03 ? 0.5 * rnd() : 0;
      return cap * Math.min(1, wave + 0.1 * rnd() + spike);
    });
    const w: Workload = {
      id: `w${String(i).padStart(3, '0')}`,
      cpuCapacity: cap,
      cpu,
      file: 'fixture.csv',
      line: i + 2,
    };
    if (opts.memory) {
      const gib = 1 + Math.floor(8 * rnd());
      w.memoryBytes = Float64Array.from({ length: opts.T }, () => gib * 1024 ** 3 * (0.5 + 0.4 * rnd()));
    }
    workloads.push(w);
  }
  return { format: 'trivisor', cpuUnit: 'cores', intervalSeconds: 300, samples: opts.T, workloads };
}

const hash = (v: unknown) => createHash('sha256').update(JSON.stringify(v)).digest('hex');

describe('plans pinned across the planner’s speed-ups', () => {
  test('CPU only: the same plan as before, bit for bit', () => {
    const inv = fixture({ seed: 11, n: 120, T: 96, memory: false });
    const plan = planConsolidation(inv, { hostSize: { cpu: 4 }, percentile: 99, seed: 1 });
    assert.match(plan.method, /shared overload budget/);
    assert.equal(hash(plan), EXPECTED.cpu, JSON.stringify(plan.hosts));
  });

  test('CPU and memory: the same plan as before, bit for bit', () => {
    const inv = fixture({ seed: 5, n: 80, T: 96, memory: true });
    const plan = planConsolidation(inv, {
      hostSize: { cpu: 4, memoryBytes: 24 * 1024 ** 3 },
      percentile: 99,
      seed: 3,
    });
    assert.equal(hash(plan), EXPECTED.cpuMemory, JSON.stringify(plan.hosts));
  });
});

const EXPECTED = {
  cpu: '89c99a0bd44ebe86b239f2710f8baf1f7220369ec9fd867a4133dfff74605e77',
  cpuMemory: '819a2edc1e0f1c154fc83ab68b2f9bebb264a7c848c52a71e2206887bee5de73',
};
