import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mulberry32 } from './anneal.ts';
import { eliminate } from './eliminate.ts';

const series = (...v: number[]) => Float64Array.from(v);

/** Host-intervals over 100% of an assignment, counted here, independently of eliminate. */
function overOf(loads: Float64Array[], at: Int32Array, count: number, T: number): number {
  const sums = Array.from({ length: count }, () => new Float64Array(T));
  loads.forEach((x, i) => {
    const s = sums[at[i] as number] as Float64Array;
    for (let t = 0; t < T; t++) s[t] = (s[t] as number) + (x[t] as number);
  });
  let n = 0;
  for (const s of sums) for (const v of s) if (v > 1 + 1e-9) n++;
  return n;
}

test('eliminate empties the host whose workload fits beside another, and stops at the bound', () => {
  // 1.5 hosts of load in every interval: 2 hosts at least. A and B peak in turns, so B fits with
  // A and C (1.0 in every interval) but not with D (1.3).
  const loads = [
    series(0.8, 0, 0.8, 0), // A
    series(0, 0.8, 0, 0.8), // B
    series(0.2, 0.2, 0.2, 0.2), // C
    series(0.5, 0.5, 0.5, 0.5), // D
  ];
  const assignment = Int32Array.from([0, 1, 0, 2]); // {A, C}, {B}, {D}: 3 hosts, none over
  const r = eliminate({ loads, assignment, count: 3, dims: 1, samples: 4 }, { overFraction: 0, work: 1e6 });
  assert.equal(r.count, 2);
  assert.equal(r.over, 0);
  assert.equal(overOf(loads, r.assignment, 2, 4), 0);
  // A and B together; D alone (host numbers renumbered after the emptied host 1).
  assert.equal(r.assignment[0], r.assignment[1]);
  assert.notEqual(r.assignment[3], r.assignment[0]);
  // Onto one host every interval is over: tried with either host emptied, refused.
  assert.deepEqual(
    r.attempts.map((a) => [a.count, a.budget, a.over <= a.budget]),
    [
      [2, 0, true],
      [1, 0, false],
      [1, 0, false],
    ],
  );
  assert.deepEqual(Array.from(assignment), [0, 1, 0, 2], 'the input is not changed');
});

test('eliminate spends the shared budget and never more', () => {
  // Together: 1.8, 1.0, 1.0, 0.2: one interval over of four.
  const loads = [series(0.9, 0.9, 0.1, 0.1), series(0.9, 0.1, 0.9, 0.1)];
  const input = { loads, assignment: Int32Array.from([0, 1]), count: 2, dims: 1, samples: 4 };
  const within = eliminate(input, { overFraction: 0.25, work: 1e6 }); // budget 1 on one host
  assert.equal(within.count, 1);
  assert.equal(within.over, 1);
  const beyond = eliminate(input, { overFraction: 0.2, work: 1e6 }); // budget 0
  assert.equal(beyond.count, 2);
  assert.deepEqual(Array.from(beyond.assignment), [0, 1]);
  assert.equal(beyond.attempts[0]?.over, 1);
});

test('eliminate: on random inventories the result is within its budget, or the plan unchanged, and the same twice', () => {
  const rnd = mulberry32(14);
  for (let k = 0; k < 30; k++) {
    const T = 24;
    const N = 8 + Math.floor(rnd() * 20);
    const count = 3 + Math.floor(rnd() * 5);
    const loads = Array.from({ length: N }, () =>
      Float64Array.from({ length: T }, () => rnd() * rnd() * 0.5),
    );
    const assignment = Int32Array.from({ length: N }, (_, i) => i % count);
    const overFraction = [0, 0.01, 0.05, 0.1][k % 4] as number;
    const before = overOf(loads, assignment, count, T);
    const input = { loads, assignment, count, dims: 1, samples: T };
    const r = eliminate(input, { overFraction, work: 1e5 });
    const over = overOf(loads, r.assignment, r.count, T);
    assert.equal(over, r.over);
    if (r.count < count) {
      assert.ok(
        over <= Math.floor(overFraction * r.count * T + 1e-9),
        `case ${k}: ${over} over on ${r.count}`,
      );
      for (const h of r.assignment) assert.ok(h >= 0 && h < r.count);
    } else {
      assert.deepEqual(Array.from(r.assignment), Array.from(assignment));
      assert.equal(over, before);
    }
    assert.deepEqual(eliminate(input, { overFraction, work: 1e5 }), r, `case ${k}: deterministic`);
  }
});
