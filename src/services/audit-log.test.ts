import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TrivisorEvent } from '../core/types.ts';
import { type AuditStore, createMemoryAuditStore, openSqliteAuditStore } from '../store/audit-store.ts';
import {
  type AuditEntry,
  auditRetentionFromEnv,
  createAuditLog,
  DEFAULT_AUDIT_RETENTION,
} from './audit-log.ts';
import { createEventBus } from './event-bus.ts';

const entry = (project: string, n: number): Omit<AuditEntry, 'id' | 'time' | 'host'> => ({
  actor: { method: 'token', name: 'ci' },
  source: '198.18.0.9',
  request: { method: 'POST', route: '/1.0/guests', path: '/1.0/guests', project, object: `g${n}` },
  result: { status: 202 },
  operation: `op-${n}`,
});

const DAY = 86_400_000;

for (const kind of ['memory', 'sqlite'] as const) {
  describe(`audit log over the ${kind} store`, () => {
    let dir: string;
    const stores: AuditStore[] = [];
    const open = (): AuditStore => {
      const s =
        kind === 'memory'
          ? createMemoryAuditStore()
          : openSqliteAuditStore(path.join(dir, `a${stores.length}.db`));
      stores.push(s);
      return s;
    };
    before(async () => {
      dir = await mkdtemp(path.join(tmpdir(), 'trivisor-audit-'));
    });
    after(async () => {
      for (const s of stores) s.close();
      await rm(dir, { recursive: true, force: true });
    });

    test('keeps at most maxEntries: the oldest go first', () => {
      let now = new Date('2026-12-01T00:00:00Z');
      const log = createAuditLog({
        store: open(),
        events: createEventBus(),
        hostName: 'h1',
        retention: { maxEntries: 5, maxAgeMs: 30 * DAY },
        now: () => now,
      });
      for (let i = 1; i <= 12; i++) {
        now = new Date(now.getTime() + 1000);
        log.record(entry('default', i));
      }
      log.prune();
      assert.deepEqual(
        log.query().map((e) => e.request.object),
        ['g8', 'g9', 'g10', 'g11', 'g12'],
      );
      log.close();
    });

    test('drops entries older than maxAgeMs', () => {
      let now = new Date('2026-12-01T00:00:00Z');
      const log = createAuditLog({
        store: open(),
        events: createEventBus(),
        hostName: 'h1',
        retention: { maxEntries: 1000, maxAgeMs: 2 * DAY },
        now: () => now,
      });
      for (let i = 1; i <= 4; i++) {
        log.record(entry('default', i));
        now = new Date(now.getTime() + DAY);
      }
      // Now: day 4. Entries of days 0 and 1 are older than two days.
      assert.equal(log.prune(), 2);
      assert.deepEqual(
        log.query().map((e) => e.request.object),
        ['g3', 'g4'],
      );
      log.close();
    });

    test('the retention is applied as entries come, without waiting for a prune', () => {
      const log = createAuditLog({
        store: open(),
        events: createEventBus(),
        hostName: 'h1',
        retention: { maxEntries: 100, maxAgeMs: 30 * DAY },
      });
      for (let i = 1; i <= 1200; i++) log.record(entry('default', i));
      // Pruned every 500 entries: never more than maxEntries + 500 kept.
      assert.ok(log.query({ limit: 10_000 }).length <= 600);
      log.close();
    });

    test('queries by time, project and limit (the newest ones), oldest first', () => {
      let now = new Date('2026-12-01T00:00:00Z');
      const log = createAuditLog({ store: open(), events: createEventBus(), hostName: 'h1', now: () => now });
      for (let i = 1; i <= 6; i++) {
        log.record(entry(i % 2 ? 'p1' : 'p2', i));
        now = new Date(now.getTime() + 60_000);
      }
      const since = new Date('2026-12-01T00:02:00Z');
      assert.deepEqual(
        log.query({ since }).map((e) => e.request.object),
        ['g3', 'g4', 'g5', 'g6'],
      );
      assert.deepEqual(
        log.query({ project: 'p1' }).map((e) => e.request.object),
        ['g1', 'g3', 'g5'],
      );
      assert.deepEqual(
        log.query({ limit: 2 }).map((e) => e.request.object),
        ['g5', 'g6'],
      );
      const e = log.query({ limit: 1 })[0]!;
      assert.equal(e.host, 'h1');
      assert.equal(e.time, '2026-12-01T00:05:00.000Z');
      assert.equal(e.operation, 'op-6');
      assert.throws(() => log.query({ limit: 0 }), /limit must be a whole number from 1 to 10000/);
      log.close();
    });

    test('every entry is streamed as an audit event in its project', () => {
      const events = createEventBus();
      const seen: TrivisorEvent[] = [];
      events.subscribe((e) => seen.push(e), ['audit']);
      const log = createAuditLog({ store: open(), events, hostName: 'h1' });
      const recorded = log.record(entry('p1', 1));
      assert.equal(seen.length, 1);
      assert.equal(seen[0]?.type, 'audit');
      assert.equal(seen[0]?.project, 'p1');
      assert.deepEqual(seen[0]?.metadata, recorded);
      log.close();
    });
  });
}

test('the sqlite audit file is root-only (0600), and so are its WAL files', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'trivisor-audit-'));
  try {
    const file = path.join(dir, 'audit.db');
    const store = openSqliteAuditStore(file);
    store.append({ timeMs: 1, project: 'p', json: '{}' });
    for (const f of [file, `${file}-wal`, `${file}-shm`]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
    store.close();
    // Reopened: the entries are still there.
    const again = openSqliteAuditStore(file);
    assert.equal(again.count(), 1);
    again.close();
    assert.ok((await readFile(file)).length > 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the retention comes from the environment, with 30 days and 100,000 entries by default', () => {
  assert.deepEqual(auditRetentionFromEnv({}), DEFAULT_AUDIT_RETENTION);
  assert.deepEqual(DEFAULT_AUDIT_RETENTION, { maxEntries: 100_000, maxAgeMs: 30 * DAY });
  assert.deepEqual(
    auditRetentionFromEnv({ TRIVISOR_AUDIT_MAX_AGE: '12h', TRIVISOR_AUDIT_MAX_ENTRIES: '500' }),
    {
      maxAgeMs: 12 * 3_600_000,
      maxEntries: 500,
    },
  );
  assert.throws(() => auditRetentionFromEnv({ TRIVISOR_AUDIT_MAX_AGE: 'a month' }), /is not a duration/);
  assert.throws(() => auditRetentionFromEnv({ TRIVISOR_AUDIT_MAX_ENTRIES: 'many' }), /is not a whole number/);
});
