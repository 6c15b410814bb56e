import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runKvConformance } from './conformance.ts';
import { createMemoryStore } from './memory-store.ts';
import { isCompactedError } from './store-errors.ts';

runKvConformance('memory store', async () => {
  const store = createMemoryStore();
  return { store, cleanup: () => store.close() };
});

test('memory store: watch from a compacted revision fails with a compacted error', async () => {
  const store = createMemoryStore({ historyLimit: 3 });
  try {
    for (let i = 0; i < 10; i++) await store.put('k', String(i));
    assert.throws(
      () => store.watch('k', { fromRevision: 1 }, () => {}),
      (e) => isCompactedError(e) && e.code === 'FailedPrecondition',
    );
    const seen: number[] = [];
    const watcher = store.watch('k', { fromRevision: 8 }, (_, revision) => seen.push(revision));
    await new Promise((resolve) => setTimeout(resolve, 20));
    watcher.cancel();
    assert.deepEqual(seen, [8, 9, 10]);
  } finally {
    await store.close();
  }
});
