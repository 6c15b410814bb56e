import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { planConsolidation } from './consolidate.ts';
import { type GuestHistory, inventoryFromHistory } from './inventory-history.ts';

const GIB = 1024 ** 3;

function guest(name: string, times: number[], cpu: Array<number | null>, memGiB: number): GuestHistory {
  return {
    name,
    stepSeconds: 300,
    times,
    metrics: {
      cpu: { average: cpu },
      memoryBytes: { average: cpu.map((v) => (v === null ? null : memGiB * GIB)) },
    },
  };
}

const t = (n: number) => Array.from({ length: n }, (_, i) => 1_000_000 + 300 * i);

describe('inventory from the metric history of Trivisor guests', () => {
  test('steps a guest was stopped use nothing, and only the steps every guest has are kept', () => {
    const a = guest('web', t(4), [1, null, 3, 2], 2);
    // Read a moment later: its ring has moved one step on.
    const b = guest('batch', t(5).slice(1), [0.5, 0.5, 0.5, 4], 1);
    const inv = inventoryFromHistory([a, b]);
    assert.equal(inv.samples, 3);
    assert.equal(inv.intervalSeconds, 300);
    assert.deepEqual([...(inv.workloads[0]?.cpu ?? [])], [0, 3, 2]);
    assert.deepEqual([...(inv.workloads[0]?.memoryBytes ?? [])], [0, 2 * GIB, 2 * GIB]);
    assert.deepEqual([...(inv.workloads[1]?.cpu ?? [])], [0.5, 0.5, 0.5]);
    assert.equal(inv.workloads[0]?.cpuCapacity, 3);
  });

  test('two guests that are busy at different times share a host planned from their history', () => {
    const times = t(24);
    const day = times.map((_, i) => (i < 12 ? 3 : 0.5));
    const night = times.map((_, i) => (i < 12 ? 0.5 : 3));
    const inv = inventoryFromHistory([guest('day', times, day, 1), guest('night', times, night, 1)]);
    const plan = planConsolidation(inv, { hostSize: { cpu: 4, memoryBytes: 4 * GIB }, percentile: 100 });
    assert.deepEqual(plan.hosts, [{ name: 'host1', workloads: ['day', 'night'] }]);
  });

  test('bad histories are one clear error each', () => {
    assert.throws(() => inventoryFromHistory([]), /No guest has a metric history/);
    assert.throws(
      () => inventoryFromHistory([guest('idle', t(3), [null, null, null], 1)]),
      /Guest idle has no sample in the range read/,
    );
    assert.throws(
      () =>
        inventoryFromHistory([
          guest('a', t(3), [1, 1, 1], 1),
          { ...guest('b', t(3), [1, 1, 1], 1), stepSeconds: 10 },
        ]),
      /Guest b's history has 10 s steps, others 300 s/,
    );
    assert.throws(
      () => inventoryFromHistory([guest('a', t(3), [1, 1, 1], 1), guest('b', t(6).slice(3), [1, 1, 1], 1)]),
      /share fewer than 2 steps/,
    );
    assert.throws(
      () => inventoryFromHistory([guest('neg', t(3), [1, -1, 1], 1)]),
      /Guest neg's cpu at .* is -1/,
    );
  });
});
