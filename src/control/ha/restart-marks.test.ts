import assert from 'node:assert/strict';
import { test } from 'node:test';
import { keys } from '../../core/keys.ts';
import { type MoveMark, moveMarkOf, saveMoveMark } from '../../services/move-marks.ts';
import type { Compare } from '../../store/kv.ts';
import { createMemoryStore } from '../../store/memory-store.ts';
import { haRestartMarkWrites } from './crm-loop.ts';
import { createSimulator } from './simulator.ts';
import { DEFAULT_TIMINGS, haKeys } from './types.ts';

/*
 * HA restarts marked to their member before their hand-over (issue 13 §4): while the elected CRM
 * waits out the margin after a member was lost, each of its HA guests that is to run again is
 * marked as moving (a move mark of kind `ha`) to the member placement picks, so that the other
 * members' networks take its frames from there before it runs there (decision 0050's binding of
 * a move's two ends). The simulator shows when the marks are made against the hand-overs; the
 * loop's writes are checked on a store.
 */

test('in the simulator, every guest of a dead member is marked to the member it is given to for at least the margin before it is given', () => {
  const sim = createSimulator({
    members: ['h1', 'h2', 'h3', 'h4'],
    guests: [
      { name: 'g1', on: 'h3', priority: 2 },
      { name: 'g2', on: 'h3' },
      { name: 'g3', on: 'h3', memoryGiB: 2 },
      { name: 'g4', on: 'h2' },
      { name: 'stopped', on: 'h3', want: 'stopped' },
    ],
  });
  // h3 dies, then h1 (whose daemon holds the election) while the CRM elected next waits.
  sim.at(5000, (w) => w.kill('h3'));
  sim.at(30_000, (w) => w.kill('h1'));
  sim.run(60_000);
  const restarts = sim.restarts();
  // h3's three, then the two of them that went to h1 once more.
  assert.deepEqual(
    restarts.map((r) => r.guest),
    ['g1', 'g2', 'g3', 'g1', 'g3'],
    JSON.stringify(restarts),
  );
  for (const r of restarts) {
    assert.ok(
      r.markedForMs !== undefined && r.markedForMs >= DEFAULT_TIMINGS.marginMs,
      `${r.guest} → ${r.to} marked for ${r.markedForMs} ms`,
    );
  }
  for (const g of ['g1', 'g2', 'g3', 'g4']) assert.equal(sim.runningOn(g).length, 1, g);
});

test('in the simulator, the elected CRM dying with the member it waits on: the CRM elected next marks the guests again before it gives them', () => {
  const sim = createSimulator({
    members: ['h1', 'h2', 'h3'],
    guests: [
      { name: 'g1', on: 'h2' },
      { name: 'g2', on: 'h2' },
    ],
  });
  sim.at(5000, (w) => w.kill('h2'));
  // h1 holds the election: it dies inside the margin it waits out for h2's guests.
  sim.at(11_000, (w) => w.kill('h1'));
  sim.run(40_000);
  const restarts = sim.restarts();
  assert.deepEqual(restarts.map((r) => [r.guest, r.to]).sort(), [
    ['g1', 'h3'],
    ['g2', 'h3'],
  ]);
  for (const r of restarts) assert.ok((r.markedForMs ?? 0) >= DEFAULT_TIMINGS.marginMs, JSON.stringify(r));
});

const elected: Compare = { key: haKeys.crm, target: 'createRevision', op: '=', value: 7 };
const at = new Date('2026-12-06T20:00:00Z');

async function storeWithElection() {
  const store = createMemoryStore();
  // The election key at create revision 7: a few writes first.
  for (let i = 0; i < 6; i++) await store.put(`/pad/${i}`, 'x');
  await store.put(haKeys.crm, '{}');
  return store;
}

async function listed(store: Awaited<ReturnType<typeof storeWithElection>>) {
  return (await store.list(keys.guestMovePrefix)).kvs.map((kv) => ({
    mark: JSON.parse(kv.value) as MoveMark,
    modRevision: kv.modRevision,
  }));
}

test("the loop's restart marks: made for a waiting guest, moved when the pick changes, removed once it waits no more; a move's own mark is left alone", async () => {
  const store = await storeWithElection();
  const run = async (prebinds: Array<{ guest: string; from: string; to: string }>) => {
    for (const txn of haRestartMarkWrites(prebinds, await listed(store), elected, at)) {
      assert.ok((await store.txn(txn)).succeeded);
    }
  };
  const move: MoveMark = {
    guest: 'moving',
    from: 'h1',
    to: 'h3',
    reason: 'evacuation',
    startedAt: '',
    kind: 'live',
  };
  await saveMoveMark(store, move);
  await run([
    { guest: 'g1', from: 'h1', to: 'h2' },
    { guest: 'moving', from: 'h1', to: 'h2' },
  ]);
  assert.deepEqual(await moveMarkOf(store, 'g1'), {
    guest: 'g1',
    from: 'h1',
    to: 'h2',
    reason: 'HA restart: h1 was lost',
    startedAt: at.toISOString(),
    kind: 'ha',
  });
  assert.deepEqual(await moveMarkOf(store, 'moving'), move, "a move's mark is not the CRM's");
  await run([{ guest: 'g1', from: 'h1', to: 'h3' }]);
  assert.equal((await moveMarkOf(store, 'g1'))?.to, 'h3');
  assert.equal(
    haRestartMarkWrites([{ guest: 'g1', from: 'h1', to: 'h3' }], await listed(store), elected, at).length,
    0,
  );
  await run([]);
  assert.equal(await moveMarkOf(store, 'g1'), undefined);
  assert.deepEqual(await moveMarkOf(store, 'moving'), move);
  await store.close();
});

test('a CRM that lost its election, or a mover that marked the guest between the read and the write, wins over the restart mark', async () => {
  const store = await storeWithElection();
  const read = await listed(store);
  // A move of g1 began after the CRM listed the marks.
  await saveMoveMark(store, { guest: 'g1', from: 'h2', to: 'h3', reason: 'x', startedAt: '' });
  const [create] = haRestartMarkWrites([{ guest: 'g1', from: 'h1', to: 'h2' }], read, elected, at);
  assert.ok(create);
  assert.equal((await store.txn(create)).succeeded, false);
  assert.equal((await moveMarkOf(store, 'g1'))?.kind, undefined, "the move's mark stays");
  // Another CRM was elected since (a new election key).
  await store.delete(haKeys.crm);
  await store.put(haKeys.crm, '{}');
  const [again] = haRestartMarkWrites(
    [{ guest: 'g9', from: 'h1', to: 'h2' }],
    await listed(store),
    elected,
    at,
  );
  assert.ok(again);
  assert.equal((await store.txn(again)).succeeded, false);
  assert.equal(await moveMarkOf(store, 'g9'), undefined);
  await store.close();
});
