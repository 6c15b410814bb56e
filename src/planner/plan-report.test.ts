import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Inventory, Workload } from './inventory.ts';
import { planReport } from './plan-report.ts';

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

const options = { hostSize: { cpu: 8 }, hostSizeText: 'cpu=8', percentile: 99, seed: 1 };

describe('planReport', () => {
  test('with forecast days it plans the inventory its trend expects, and tells the lower bound as measured', () => {
    // Two workloads from 1.5 to 2.8 cores over 14 days (mean 2.15): 5.6 cores at their peak fit
    // one host of 8; carried 14 days ahead (×1.85) they need two.
    const measured = inventory([0, 1].map((i) => workload(`w${i}`, 14, (d) => 1.5 + 0.1 * d)));
    const report = planReport(measured, { ...options, forecastDays: 14 });
    const f = report.json.forecast;
    assert.ok(f, 'the forecast is in the JSON');
    assert.equal(f.aheadDays, 14);
    assert.equal(f.measuredLowerBound, 1);
    assert.equal(report.json.lowerBound, 2);
    assert.ok(Math.abs(f.factor - (1.5 + 0.1 * 20.5) / 2.15) < 1e-9, String(f.factor));
    // What was planned is the measured load scaled by the factor; the measured one is untouched.
    const planned = report.planned.workloads[0]?.cpu[0] as number;
    assert.ok(Math.abs(planned - 1.5 * f.factor) < 1e-9, String(planned));
    assert.equal(measured.workloads[0]?.cpu[0], 1.5);
    assert.equal(report.json.hosts.length, 2);
    assert.match(report.json.predicted.basis, /scaled by its trend over the 14 days after it/);
  });

  test('without forecast days it plans the inventory as measured and says nothing of a forecast', () => {
    const measured = inventory([0, 1].map((i) => workload(`w${i}`, 14, (d) => 1.5 + 0.1 * d)));
    const report = planReport(measured, options);
    assert.equal(report.planned, measured);
    assert.equal(report.json.forecast, undefined);
    assert.equal(report.json.hosts.length, 1);
  });
});
