import assert from 'node:assert/strict';
import { test } from 'node:test';
import { keys } from '../core/keys.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import {
  clearMoveMark,
  discardsForMemberDeleteOps,
  markMove,
  marksOfMemberDeleteOps,
  moveMarkOf,
  saveMoveMark,
} from './move-marks.ts';

const mark = (guest: string, from: string) => ({
  guest,
  from,
  to: 'h9',
  reason: 'migration',
  startedAt: '2026-12-06T03:00:00Z',
});

test("a removed member's unfinished moves are dropped with it, and another member's stay", async () => {
  const store = createMemoryStore();
  await markMove(store, mark('a', 'gone'), []);
  await markMove(store, mark('b', 'gone'), []);
  await markMove(store, mark('c', 'h1'), []);
  const ops = await marksOfMemberDeleteOps(store, 'gone');
  assert.deepEqual(ops.map((o) => o.key).sort(), [keys.guestMove('a'), keys.guestMove('b')]);
  await store.txn({ compare: [], success: ops });
  assert.equal(await moveMarkOf(store, 'a'), undefined);
  assert.equal(await moveMarkOf(store, 'b'), undefined);
  assert.equal((await moveMarkOf(store, 'c'))?.from, 'h1');
  // A guest can be moved again once its mark is gone; a marked one cannot.
  await markMove(store, mark('a', 'h1'), []);
  await assert.rejects(markMove(store, mark('c', 'h1'), []), /being moved to h9 already/);
});

test("a removed member's discards left by undone moves go with it; another member's stay", async () => {
  const store = createMemoryStore();
  await store.put(keys.moveDiscard('gone', 'a'), 't');
  await store.put(keys.moveDiscard('gone', 'b'), 't');
  await store.put(keys.moveDiscard('gone2', 'c'), 't');
  const ops = await discardsForMemberDeleteOps(store, 'gone');
  assert.deepEqual(ops.map((o) => o.key).sort(), [
    keys.moveDiscard('gone', 'a'),
    keys.moveDiscard('gone', 'b'),
  ]);
  await store.txn({ compare: [], success: ops });
  assert.deepEqual(
    (await store.list(keys.moveDiscardPrefix)).kvs.map((kv) => kv.key),
    [keys.moveDiscard('gone2', 'c')],
  );
});

test("a move's late clean-up ends its own mark only, never the guest's next move's", async () => {
  const store = createMemoryStore();
  const first = mark('g', 'h1');
  const release = await markMove(store, first, []);
  // The same move's mark, a step further (its phase saved), is still its own to end.
  await saveMoveMark(store, { ...first, phase: 'handed-over' });
  await release();
  assert.equal(await moveMarkOf(store, 'g'), undefined);
  // The guest moved back at once: the next move (from h9) is marked before the first one's
  // source, late, cleans up: its mark stays, and its own release ends it.
  await markMove(store, first, []);
  await clearMoveMark(store, 'g', first);
  const next = { ...mark('g', 'h9'), to: 'h1', startedAt: '2026-12-06T03:00:05Z' };
  const releaseNext = await markMove(store, next, []);
  await clearMoveMark(store, 'g', first);
  assert.deepEqual(await moveMarkOf(store, 'g'), next);
  await release();
  assert.deepEqual(await moveMarkOf(store, 'g'), next);
  await releaseNext();
  assert.equal(await moveMarkOf(store, 'g'), undefined);
});
