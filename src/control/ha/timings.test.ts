import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkTimings, recoveryWindowMs } from './timings.ts';
import { DEFAULT_TIMINGS } from './types.ts';

test('the default timings hold, and give a dead member’s guests to others 7 to 10.5 s after it died', () => {
  assert.deepEqual(checkTimings(DEFAULT_TIMINGS), []);
  assert.deepEqual(recoveryWindowMs(DEFAULT_TIMINGS), { earliestMs: 7000, latestMs: 10_500 });
});

test('timings that could let a stuck member run its guests while they restart elsewhere are refused', () => {
  const problems = checkTimings({ ...DEFAULT_TIMINGS, fenceAfterMs: 5000, watchdogMs: 2000 });
  assert.match(problems.join('\n'), /exceed the lease TTL/);
});

test('timings that fence a member for one lost renewal, or reset a healthy one, are refused', () => {
  assert.match(
    checkTimings({ ...DEFAULT_TIMINGS, renewEveryMs: 2000 }).join('\n'),
    /less than two per fencing window/,
  );
  assert.match(
    checkTimings({ ...DEFAULT_TIMINGS, watchdogMs: 1000 }).join('\n'),
    /fires between two renewals/,
  );
});

test('a margin that leaves no room for clocks 20 % apart is refused', () => {
  assert.match(
    checkTimings({ ...DEFAULT_TIMINGS, marginMs: 0 }).join('\n'),
    /does not cover clocks 20 % apart/,
  );
  // A member 20 % slow is reset 6.25 s after its last renewal; 400 ms of margin on a clock 20 %
  // fast is 333 ms: 6.33 s. 300 ms is 250 ms: 6.25 s, too late.
  assert.deepEqual(checkTimings({ ...DEFAULT_TIMINGS, marginMs: 400 }), []);
  assert.equal(checkTimings({ ...DEFAULT_TIMINGS, marginMs: 300 }).length, 1);
});
