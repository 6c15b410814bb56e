import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { isTrivisorError } from '../core/errors.ts';
import { embeddedFaults, runKvConformance } from './conformance.ts';
import type { WatchEvent } from './kv.ts';
import { openSqliteStore } from './sqlite-store.ts';
import { isCompactedError } from './store-errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'trivisor-sqlite-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const freshPath = () => join(dir, `store-${files++}.db`);

runKvConformance('sqlite store', async () => {
  const store = openSqliteStore(freshPath());
  const faults = embeddedFaults(
    store,
    'The SQLite store is embedded in the daemon: there is no server to restart while a client stays open (its reopening after a daemon restart is tested below).',
  );
  return { store, cleanup: () => store.close(), faults };
});

describe('sqlite store durability', () => {
  test('data, revisions and leases survive close and reopen, and the revision keeps increasing', async () => {
    const path = freshPath();
    const first = openSqliteStore(path);
    await first.put('guests/a', 'alpha');
    await first.put('guests/a', 'alpha2');
    const lease = await first.grantLease(60);
    await first.put('hosts/h1', 'up', { lease: lease.id });
    const revision = await first.revision();
    const before = await first.list('');
    await first.close();

    const second = openSqliteStore(path);
    try {
      assert.equal(await second.revision(), revision);
      assert.deepEqual(await second.list(''), before);
      assert.equal((await second.get('guests/a'))?.version, 2);
      const next = await second.put('guests/b', 'beta');
      assert.equal(next.revision, revision + 1);
      await second.keepAlive(lease.id);
      const other = await second.grantLease(60);
      assert.notEqual(other.id, lease.id);
      await second.revokeLease(lease.id);
      assert.equal(await second.get('hosts/h1'), undefined);
    } finally {
      await second.close();
    }
  });

  test('a watch fromRevision after reopen replays the persisted history with prevKv', async () => {
    const path = freshPath();
    const first = openSqliteStore(path);
    const r1 = await first.put('guests/a', '1');
    await first.put('guests/a', '2');
    await first.delete('guests/', { prefix: true });
    await first.close();

    const second = openSqliteStore(path);
    try {
      const seen: { revision: number; events: WatchEvent[] }[] = [];
      const watcher = second.watch(
        'guests/',
        { fromRevision: r1.revision, onLost: (e) => assert.fail(e) },
        (events, revision) => seen.push({ revision, events }),
      );
      const r4 = await second.put('guests/b', '3');
      await waitFor(() => seen.length >= 4);
      watcher.cancel();
      assert.deepEqual(
        seen.map((s) => s.revision),
        [r1.revision, r1.revision + 1, r1.revision + 2, r4.revision],
      );
      const deleted = seen[2]?.events[0];
      assert.equal(deleted?.type, 'delete');
      assert.equal(deleted?.kv.modRevision, r1.revision + 2);
      assert.deepEqual(deleted?.prevKv, {
        key: 'guests/a',
        value: '2',
        createRevision: r1.revision,
        modRevision: r1.revision + 1,
        version: 2,
        lease: 0,
      });
    } finally {
      await second.close();
    }
  });

  test('history is compacted to historyLimit and older watches report a compacted error', async () => {
    const path = freshPath();
    const store = openSqliteStore(path, { historyLimit: 5 });
    for (let i = 0; i < 20; i++) await store.put('k', String(i));
    await store.close();

    const reopened = openSqliteStore(path, { historyLimit: 5 });
    try {
      const lost: unknown[] = [];
      reopened.watch('k', { fromRevision: 2, onLost: (e) => lost.push(e) }, () => {});
      const seen: number[] = [];
      const watcher = reopened.watch('k', { fromRevision: 16, onLost: (e) => lost.push(e) }, (_, revision) =>
        seen.push(revision),
      );
      await waitFor(() => seen.length >= 5);
      watcher.cancel();
      assert.deepEqual(seen, [16, 17, 18, 19, 20]);
      assert.equal(lost.length, 1);
      assert.ok(
        isCompactedError(lost[0]) && lost[0].code === 'FailedPrecondition' && lost[0].compactRevision >= 2,
      );
    } finally {
      await reopened.close();
    }
  });

  test('a lease that expired while the store was closed is revoked on open', async () => {
    const path = freshPath();
    const first = openSqliteStore(path);
    const lease = await first.grantLease(1);
    await first.put('hosts/h1', 'up', { lease: lease.id });
    const revision = await first.revision();
    await first.close();
    await new Promise((resolve) => setTimeout(resolve, 1100));

    const second = openSqliteStore(path);
    try {
      assert.equal(await second.get('hosts/h1'), undefined);
      assert.equal(await second.revision(), revision + 1);
      await assert.rejects(second.keepAlive(lease.id), (e) => isTrivisorError(e) && e.code === 'NotFound');
    } finally {
      await second.close();
    }
  });

  test('opening a file that is not a SQLite database fails with a FailedPrecondition error', () => {
    const path = join(dir, 'garbage.db');
    writeFileSync(
      path,
      'this is not a database, just some text that is long enough to have a header\n'.repeat(100),
    );
    assert.throws(
      () => openSqliteStore(path),
      (e) =>
        isTrivisorError(e) &&
        e.code === 'FailedPrecondition' &&
        /not a valid SQLite database/.test(e.message),
    );
  });

  test('the store and its -wal and -shm files are readable by root only (issue 11, finding 4)', async () => {
    const path = freshPath();
    const store = openSqliteStore(path);
    try {
      await store.put('guests/a', '{"config":{"environment.API_KEY":"secret"}}');
      for (const file of [path, `${path}-wal`, `${path}-shm`]) {
        assert.equal(statSync(file).mode & 0o777, 0o600, file);
      }
    } finally {
      await store.close();
    }
  });

  test('a store left 0644 by an earlier version is made 0600 with its -wal and -shm on open', async () => {
    const path = freshPath();
    const first = openSqliteStore(path);
    await first.put('guests/a', 'alpha');
    await first.close();
    for (const file of [path, `${path}-wal`, `${path}-shm`]) writeFileSync(file, '', { flag: 'a' });
    for (const file of [path, `${path}-wal`, `${path}-shm`]) chmodSync(file, 0o644);
    const second = openSqliteStore(path);
    try {
      for (const file of [path, `${path}-wal`, `${path}-shm`]) {
        assert.equal(statSync(file).mode & 0o777, 0o600, file);
      }
      assert.equal((await second.get('guests/a'))?.value, 'alpha');
    } finally {
      await second.close();
    }
  });

  test('opening a path in a missing directory fails with a FailedPrecondition error', () => {
    assert.throws(
      () => openSqliteStore(join(dir, 'no', 'such', 'dir', 'store.db')),
      (e) => isTrivisorError(e) && e.code === 'FailedPrecondition',
    );
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
