import assert from 'node:assert/strict';
import { test } from 'node:test';
import { embeddedFaults, runKvConformance } from './conformance.ts';
import { createMemoryStore } from './memory-store.ts';
import { isCompactedError } from './store-errors.ts';

runKvConformance('memory store', async () => {
  const store = createMemoryStore();
  const faults = embeddedFaults(
    store,
    'The memory store lives inside its process: there is no server to restart, and its data ends with the process.',
  );
  return { store, cleanup: () => store.close(), faults };
});

test('memory store: a watch from a revision its history limit dropped reports a compacted error', async () => {
  const store = createMemoryStore({ historyLimit: 3 });
  try {
    for (let i = 0; i < 10; i++) await store.put('k', String(i));
    const lost: unknown[] = [];
    const events: number[] = [];
    store.watch('k', { fromRevision: 1, onLost: (e) => lost.push(e) }, (_, revision) =>
      events.push(revision),
    );
    const seen: number[] = [];
    const watcher = store.watch('k', { fromRevision: 8, onLost: (e) => lost.push(e) }, (_, revision) =>
      seen.push(revision),
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    watcher.cancel();
    assert.equal(lost.length, 1);
    assert.ok(isCompactedError(lost[0]) && lost[0].code === 'FailedPrecondition');
    assert.deepEqual(events, []);
    assert.deepEqual(seen, [8, 9, 10]);
  } finally {
    await store.close();
  }
});
