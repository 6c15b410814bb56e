import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadTrend, scaleInventory } from './forecast.ts';
import type { Inventory, Workload } from './inventory.ts';

const PER_DAY = 288;

/** A workload whose CPU on day d is `level(d)` cores all day, memory 1 GiB flat. */
function workload(id: string, days: number, level: (d: number) => number): Workload {
  return {
    id,
    cpuCapacity: 8,
    memoryCapacityBytes: 4 * 1024 ** 3,
    cpu: Float64Array.from({ length: days * PER_DAY }, (_, t) => level(Math.floor(t / PER_DAY))),
    memoryBytes: new Float64Array(days * PER_DAY).fill(1024 ** 3),
    file: 'synthetic.csv',
    line: 2,
  };
}

const inventory = (workloads: Workload[]): Inventory => ({
  format: 'trivisor',
  cpuUnit: 'cores',
  intervalSeconds: 300,
  samples: workloads[0]?.cpu.length ?? 0,
  workloads,
});

describe('load trend', () => {
  test('a load growing by a day’s step is carried over the days ahead; flat memory changes nothing', () => {
    // 14 days from 1 to 1 + 13 × 0.1 cores (mean 1.65): +0.7 a week is 0.7 / 1.65 of the mean.
    const inv = inventory([workload('a', 14, (d) => 1 + 0.1 * d)]);
    const trend = loadTrend(inv, { aheadDays: 14 });
    assert.equal(trend.days, 14);
    assert.ok(Math.abs(trend.cpuWeeklyGrowth - 0.7 / 1.65) < 1e-9, String(trend.cpuWeeklyGrowth));
    assert.equal(trend.memoryWeeklyGrowth, 0);
    // The line at the middle of the 14 days ahead (day 20.5): 1 + 2.05 = 3.05 cores, 3.05 / 1.65 of the mean.
    assert.ok(Math.abs(trend.factor - 3.05 / 1.65) < 1e-9, String(trend.factor));
    assert.equal(trend.rawFactor, trend.factor);
  });

  test('a falling load is not a reason to plan for less: the factor stays 1, the raw one says it fell', () => {
    // CPU only: with flat memory the larger of the two factors would be memory's 1.
    const { memoryBytes: _, memoryCapacityBytes: __, ...cpuOnly } = workload('a', 10, (d) => 3 - 0.2 * d);
    const trend = loadTrend(inventory([cpuOnly]), { aheadDays: 31 });
    assert.equal(trend.memoryWeeklyGrowth, undefined);
    assert.ok(trend.cpuWeeklyGrowth < 0);
    assert.equal(trend.factor, 1);
    assert.ok(trend.rawFactor < 1);
  });

  test('fewer than 7 whole days is refused in one line', () => {
    assert.throws(
      () => loadTrend(inventory([workload('a', 6, () => 1)]), { aheadDays: 31 }),
      (e: Error & { code?: string }) =>
        e.code === 'InvalidArgument' &&
        e.message === 'A trend needs at least 7 whole days of samples; the inventory has 6',
    );
  });

  test('scaleInventory multiplies CPU and memory and leaves the inventory given as it was', () => {
    const inv = inventory([workload('a', 7, () => 2)]);
    const scaled = scaleInventory(inv, 1.5);
    assert.equal(scaled.workloads[0]?.cpu[0], 3);
    assert.equal(scaled.workloads[0]?.memoryBytes?.[0], 1.5 * 1024 ** 3);
    assert.equal(inv.workloads[0]?.cpu[0], 2);
    assert.equal(scaleInventory(inv, 1), inv);
    assert.throws(() => scaleInventory(inv, 0), /must be positive/);
  });
});
