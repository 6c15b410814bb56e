import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Inventory, Workload } from './inventory.ts';
import { planReport, replayReport } from './plan-report.ts';

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
    // What was planned and predicted is the measured load scaled by the factor (each host holds
    // one workload, whose last day is 2.8 cores); the measured one is untouched.
    const peak = report.predicted.hosts[0]?.peakLoadPercent as number;
    assert.ok(Math.abs(peak - ((2.8 * f.factor) / 8) * 100) < 1e-6, String(peak));
    assert.equal(measured.workloads[0]?.cpu[0], 1.5);
    assert.equal(report.json.hosts.length, 2);
    assert.match(report.json.predicted.basis, /scaled by its trend over the 14 days after it/);
  });

  test('without forecast days it plans the inventory as measured and says nothing of a forecast', () => {
    const measured = inventory([0, 1].map((i) => workload(`w${i}`, 14, (d) => 1.5 + 0.1 * d)));
    const report = planReport(measured, options);
    assert.equal(report.predicted.hosts[0]?.peakLoadPercent, ((2.8 * 2) / 8) * 100);
    assert.equal(report.json.forecast, undefined);
    assert.equal(report.json.hosts.length, 1);
  });

  test('replayReport replays a plan on another period by workload id, as planReport with replay does', () => {
    const july = inventory([0, 1].map((i) => workload(`w${i}`, 14, () => 2)));
    // August: the same ids in another order, w1 busier.
    const august = inventory([1, 0].map((i) => workload(`w${i}`, 14, () => 2 + 3 * i)));
    const both = planReport(july, { ...options, replay: { inventory: august, label: 'August' } });
    const later = replayReport(planReport(july, options), { inventory: august, label: 'August' });
    assert.deepEqual(later.json, both.json);
    assert.equal(later.svg, both.svg);
    assert.equal(later.json.hosts.length, 1);
    assert.equal(later.json.predicted.headroomPercent, 50);
    assert.equal(later.json.replay.headroomPercent, 100 - (7 / 8) * 100);
    assert.match(later.svg, /\(August\)/);
  });

  test('a report keeps no reference to the inventory it planned, so a month can be dropped before the next is read', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    let measured: Inventory | undefined = inventory([0, 1].map((i) => workload(`w${i}`, 14, () => 2)));
    const planned = new WeakRef(measured);
    const report = planReport(measured, { ...options, forecastDays: 7 });
    measured = undefined;
    // A WeakRef's target stays alive until the current job ends.
    await new Promise((resolve) => setImmediate(resolve));
    gc();
    assert.equal(planned.deref(), undefined, 'the planning inventory is still reachable from the report');
    assert.equal(report.json.hosts.length, 1);
  });
});
