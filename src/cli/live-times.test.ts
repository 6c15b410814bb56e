import assert from 'node:assert/strict';
import { test } from 'node:test';
import { liveTimesText } from './storage-commands.ts';

test("import --live ends with the operation's time to running and time to complete, in seconds", () => {
  assert.equal(
    liveTimesText({ name: 'r1', runningAfterMs: 3140, completedAfterMs: 42_000 }),
    ': running after 3.1 s, complete after 42.0 s',
  );
  // Only the times the operation has.
  assert.equal(liveTimesText({ runningAfterMs: 1260 }), ': running after 1.3 s');
});

test('any other import, or metadata that is not a time, adds nothing', () => {
  assert.equal(liveTimesText({ name: 'c1' }), '');
  assert.equal(liveTimesText({ runningAfterMs: 'soon', completedAfterMs: -1 }), '');
});
