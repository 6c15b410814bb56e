import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { anneal, mulberry32 } from './anneal.ts';

const T = 24;
/** A square wave at 0.6 of a host in one half of the day and 0.1 in the other. */
const wave = (firstHalf: boolean) =>
  Float64Array.from({ length: T }, (_, t) => (t < T / 2 === firstHalf ? 0.6 : 0.1));

/** The host-intervals over 100% of an assignment. */
function overOf(loads: Float64Array[], assignment: Int32Array, count: number): number {
  const sums = Array.from({ length: count }, () => new Float64Array(T));
  loads.forEach((x, i) => {
    const s = sums[assignment[i] as number] as Float64Array;
    for (let t = 0; t < T; t++) s[t] = (s[t] as number) + (x[t] as number);
  });
  return sums.reduce((n, s) => n + s.filter((v) => v > 1 + 1e-9).length, 0);
}

describe('anneal', () => {
  // Four day workloads and four night ones on four hosts, day with day: every host over half the day.
  const loads = [true, true, true, true, false, false, false, false].map(wave);
  const together = Int32Array.from([0, 0, 1, 1, 2, 2, 3, 3]);

  test('pairs workloads that peak apart, from a start where those that peak together share', () => {
    assert.equal(overOf(loads, together, 4), 48);
    const r = anneal(
      { loads, assignment: together, count: 4, dims: 1, samples: T },
      { steps: 5000, seed: 1 },
    );
    assert.equal(r.overBefore, 48);
    assert.equal(r.overAfter, 0);
    assert.equal(overOf(loads, r.assignment, 4), 0);
    // The input is left as it was.
    assert.deepEqual([...together], [0, 0, 1, 1, 2, 2, 3, 3]);
  });

  test('the same input and seed give the same assignment', () => {
    const rnd = mulberry32(9);
    const many = Array.from({ length: 40 }, () => Float64Array.from({ length: T }, () => 0.3 * rnd()));
    const start = Int32Array.from(many, (_, i) => i % 5);
    const run = (seed: number) =>
      anneal({ loads: many, assignment: start, count: 5, dims: 1, samples: T }, { steps: 3000, seed });
    assert.deepEqual(run(3), run(3));
    const r = run(3);
    assert.equal(r.overAfter, overOf(many, r.assignment, 5));
  });

  test('never returns an assignment with more intervals over than it was given', () => {
    // Already without overload: a search this hot may wander, but what it returns is no worse.
    const apart = Int32Array.from([0, 1, 2, 3, 0, 1, 2, 3]);
    const r = anneal(
      { loads, assignment: apart, count: 4, dims: 1, samples: T },
      { steps: 2000, seed: 5, startTemperature: 50, endTemperature: 10 },
    );
    assert.equal(r.overAfter, 0);
    assert.equal(overOf(loads, r.assignment, 4), 0);
  });

  test('counts an interval over when any dimension is (CPU and memory together)', () => {
    const two = (cpu: number, mem: number) => {
      const x = new Float64Array(2 * T);
      x.fill(cpu, 0, T);
      x.fill(mem, T);
      return x;
    };
    // Memory decides: two memory-heavy workloads on one host are over in every interval.
    const both = [two(0.1, 0.7), two(0.1, 0.7), two(0.7, 0.1), two(0.7, 0.1)];
    const r = anneal(
      { loads: both, assignment: Int32Array.from([0, 0, 1, 1]), count: 2, dims: 2, samples: T },
      { steps: 2000, seed: 1 },
    );
    assert.equal(r.overBefore, 2 * T);
    assert.equal(r.overAfter, 0);
    assert.notEqual(r.assignment[0], r.assignment[1]);
  });
});
