import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { createMemoryStore } from '../store/memory-store.ts';
import { openSqliteStore } from '../store/sqlite-store.ts';
import { copyStore } from './store-copy.ts';

const dir = mkdtempSync(join(tmpdir(), 'trivisor-store-copy-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('every key of the single-host store is copied as it is, in batches; a copy made again changes nothing', async () => {
  const from = openSqliteStore(join(dir, 'store.db'));
  const to = createMemoryStore();
  try {
    // More keys than one transaction may carry, of kinds a later version might add too.
    for (let i = 0; i < 250; i++) await from.put(`/trivisor/guests/g${i}`, JSON.stringify({ n: i }));
    await from.put('/trivisor/some-future-kind/x', 'raw value');
    await from.put('/trivisor/auth/tokens/ci', '{"name":"ci"}');
    const lease = await from.grantLease(60);
    await from.put('/trivisor/leased', 'short-lived', { lease: lease.id });
    const report = await copyStore(from, to);
    assert.deepEqual(report, { copied: 252, skippedLeased: 1 });
    const source = (await from.list('')).kvs.filter((kv) => kv.lease === 0);
    const copied = (await to.list('')).kvs;
    assert.deepEqual(
      copied.map((kv) => [kv.key, kv.value]),
      source.map((kv) => [kv.key, kv.value]),
    );
    const revision = await to.revision();
    assert.deepEqual(await copyStore(from, to), report);
    assert.deepEqual(
      (await to.list('')).kvs.map((kv) => [kv.key, kv.value]),
      copied.map((kv) => [kv.key, kv.value]),
    );
    assert.ok((await to.revision()) > revision, 'written again, to the same values');
  } finally {
    await from.close();
    await to.close();
  }
});
