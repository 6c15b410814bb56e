import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isTrivisorError } from '../core/errors.ts';
import { getJson, listJson, putJson } from './json.ts';
import { createMemoryStore } from './memory-store.ts';

test('putJson round-trips through getJson and listJson', async () => {
  const store = createMemoryStore();
  try {
    await putJson(store, 'guests/a', { name: 'a', cpu: 2 });
    const got = await getJson<{ name: string; cpu: number }>(store, 'guests/a');
    assert.deepEqual(got?.value, { name: 'a', cpu: 2 });
    assert.deepEqual((await listJson(store, 'guests/')).items, [{ name: 'a', cpu: 2 }]);
  } finally {
    await store.close();
  }
});

test('putJson with ifModRevision writes only if the key is unchanged, else Conflict', async () => {
  const store = createMemoryStore();
  try {
    const created = await putJson(store, 'k', 1, { ifModRevision: 0 });
    await assert.rejects(
      putJson(store, 'k', 2, { ifModRevision: 0 }),
      (e) => isTrivisorError(e) && e.code === 'Conflict',
    );
    await putJson(store, 'k', 3, { ifModRevision: created.revision });
    await assert.rejects(
      putJson(store, 'k', 4, { ifModRevision: created.revision }),
      (e) => isTrivisorError(e) && e.code === 'Conflict',
    );
    assert.equal((await getJson<number>(store, 'k'))?.value, 3);
  } finally {
    await store.close();
  }
});
