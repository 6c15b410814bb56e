import { chmodSync, closeSync, constants, openSync, statSync } from 'node:fs';
import { DatabaseSync, type SQLOutputValue, type StatementSync } from 'node:sqlite';
import { internal, TrivisorError } from '../core/errors.ts';
import { prefixEnd } from './key-order.ts';
import type { KeyValue, WatchEvent } from './kv.ts';
import { type KvBackend, KvEngine, type KvEngineOptions, type StoredLease } from './kv-engine.ts';
import type { RevisionEvents } from './watch-hub.ts';

/**
 * Opens (creating if needed) the embedded store at `path`: one SQLite file in WAL
 * mode written by this process only. Watch history survives restarts, so a
 * controller can resume from the revision it last saw.
 */
export function openSqliteStore(path: string, options: KvEngineOptions = {}): KvEngine {
  return new KvEngine(new SqliteBackend(path), options);
}

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compact_revision', 0);
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease);
CREATE TABLE IF NOT EXISTS history (
  revision INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL,
  prev_value TEXT,
  prev_create_revision INTEGER,
  prev_mod_revision INTEGER,
  prev_version INTEGER,
  prev_lease INTEGER,
  PRIMARY KEY (revision, seq)
);
CREATE TABLE IF NOT EXISTS leases (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ttl_seconds INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires_at_ms);
PRAGMA user_version = ${SCHEMA_VERSION};
`;

const KV_COLUMNS = 'key, value, create_revision, mod_revision, version, lease';

type Row = Record<string, SQLOutputValue>;

class SqliteBackend implements KvBackend {
  readonly #db: DatabaseSync;
  readonly #stmt: Record<
    | 'getMeta'
    | 'setMeta'
    | 'get'
    | 'rangeBounded'
    | 'rangeFrom'
    | 'countBounded'
    | 'countFrom'
    | 'put'
    | 'remove'
    | 'keysOfLease'
    | 'appendHistory'
    | 'historySince'
    | 'compact'
    | 'getLease'
    | 'createLease'
    | 'setLeaseExpiry'
    | 'removeLease'
    | 'expiredLeases',
    StatementSync
  >;

  constructor(path: string) {
    this.#db = openDatabase(path);
    const db = this.#db;
    this.#stmt = {
      getMeta: db.prepare('SELECT value FROM meta WHERE name = ?'),
      setMeta: db.prepare('UPDATE meta SET value = ? WHERE name = ?'),
      get: db.prepare(`SELECT ${KV_COLUMNS} FROM kv WHERE key = ?`),
      rangeBounded: db.prepare(
        `SELECT ${KV_COLUMNS} FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?`,
      ),
      rangeFrom: db.prepare(`SELECT ${KV_COLUMNS} FROM kv WHERE key >= ? ORDER BY key LIMIT ?`),
      countBounded: db.prepare('SELECT COUNT(*) AS n FROM kv WHERE key >= ? AND key < ?'),
      countFrom: db.prepare('SELECT COUNT(*) AS n FROM kv WHERE key >= ?'),
      put: db.prepare(`INSERT OR REPLACE INTO kv (${KV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)`),
      remove: db.prepare('DELETE FROM kv WHERE key = ?'),
      keysOfLease: db.prepare('SELECT key FROM kv WHERE lease = ? ORDER BY key'),
      appendHistory: db.prepare('INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)'),
      historySince: db.prepare('SELECT * FROM history WHERE revision >= ? ORDER BY revision, seq'),
      compact: db.prepare('DELETE FROM history WHERE revision <= ?'),
      getLease: db.prepare('SELECT id, ttl_seconds, expires_at_ms FROM leases WHERE id = ?'),
      createLease: db.prepare('INSERT INTO leases (ttl_seconds, expires_at_ms) VALUES (?, ?) RETURNING id'),
      setLeaseExpiry: db.prepare('UPDATE leases SET expires_at_ms = ? WHERE id = ?'),
      removeLease: db.prepare('DELETE FROM leases WHERE id = ?'),
      expiredLeases: db.prepare('SELECT id FROM leases WHERE expires_at_ms <= ? ORDER BY expires_at_ms'),
    };
  }

  atomic<T>(fn: () => T): T {
    // IMMEDIATE takes the write lock up front, so reads inside the
    // transaction cannot be invalidated by another connection's commit.
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      const result = fn();
      this.#db.exec('COMMIT');
      return result;
    } catch (error) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw asStoreError(error);
    }
  }

  revision(): number {
    return this.#meta('revision');
  }

  setRevision(revision: number): void {
    this.#stmt.setMeta.run(revision, 'revision');
  }

  compactRevision(): number {
    return this.#meta('compact_revision');
  }

  get(key: string): KeyValue | undefined {
    const row = this.#stmt.get.get(key);
    return row && toKeyValue(row);
  }

  range(prefix: string, limit: number): KeyValue[] {
    const end = prefixEnd(prefix);
    const sqlLimit = limit > 0 ? limit : -1;
    const rows =
      end === undefined
        ? this.#stmt.rangeFrom.all(prefix, sqlLimit)
        : this.#stmt.rangeBounded.all(prefix, end, sqlLimit);
    return rows.map(toKeyValue);
  }

  count(prefix: string): number {
    const end = prefixEnd(prefix);
    const row =
      end === undefined ? this.#stmt.countFrom.get(prefix) : this.#stmt.countBounded.get(prefix, end);
    return Number(row?.n ?? 0);
  }

  put(kv: KeyValue): void {
    this.#stmt.put.run(kv.key, kv.value, kv.createRevision, kv.modRevision, kv.version, kv.lease);
  }

  remove(key: string): void {
    this.#stmt.remove.run(key);
  }

  keysOfLease(leaseId: number): string[] {
    return this.#stmt.keysOfLease.all(leaseId).map((row) => row.key as string);
  }

  appendHistory(batch: RevisionEvents): void {
    batch.events.forEach((event, seq) => {
      const { kv, prevKv: prev } = event;
      this.#stmt.appendHistory.run(
        batch.revision,
        seq,
        event.type,
        kv.key,
        kv.value,
        kv.createRevision,
        kv.modRevision,
        kv.version,
        kv.lease,
        prev?.value ?? null,
        prev?.createRevision ?? null,
        prev?.modRevision ?? null,
        prev?.version ?? null,
        prev?.lease ?? null,
      );
    });
  }

  historySince(fromRevision: number): RevisionEvents[] {
    const batches: RevisionEvents[] = [];
    for (const row of this.#stmt.historySince.iterate(fromRevision)) {
      const revision = row.revision as number;
      let batch = batches.at(-1);
      if (batch?.revision !== revision) {
        batch = { revision, events: [] };
        batches.push(batch);
      }
      batch.events.push(toEvent(row));
    }
    return batches;
  }

  compact(revision: number): void {
    this.#stmt.compact.run(revision);
    this.#stmt.setMeta.run(revision, 'compact_revision');
  }

  getLease(id: number): StoredLease | undefined {
    const row = this.#stmt.getLease.get(id);
    return (
      row && {
        id: row.id as number,
        ttlSeconds: row.ttl_seconds as number,
        expiresAtMs: row.expires_at_ms as number,
      }
    );
  }

  createLease(ttlSeconds: number, expiresAtMs: number): number {
    return this.#stmt.createLease.get(ttlSeconds, expiresAtMs)!.id as number;
  }

  setLeaseExpiry(id: number, expiresAtMs: number): void {
    this.#stmt.setLeaseExpiry.run(expiresAtMs, id);
  }

  removeLease(id: number): void {
    this.#stmt.removeLease.run(id);
  }

  expiredLeases(nowMs: number): number[] {
    return this.#stmt.expiredLeases.all(nowMs).map((row) => row.id as number);
  }

  close(): void {
    this.#db.close();
  }

  #meta(name: string): number {
    return this.#stmt.getMeta.get(name)!.value as number;
  }
}

/**
 * The store holds every guest's `environment.*` values and injected file contents: it is
 * made 0600 before SQLite opens it, since SQLite gives the -wal and -shm files it creates the
 * main file's mode. A store made by an earlier version (0644) is closed here too, with
 * whatever -wal and -shm it left.
 */
function closeStoreFiles(path: string): void {
  closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600));
  for (const file of [path, `${path}-wal`, `${path}-shm`]) {
    try {
      if ((statSync(file).mode & 0o777) !== 0o600) chmodSync(file, 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

function openDatabase(path: string): DatabaseSync {
  let db: DatabaseSync | undefined;
  try {
    closeStoreFiles(path);
    db = new DatabaseSync(path, { timeout: 5000 });
    // The first statement is where SQLite notices a file that is not a database.
    const found = db.prepare('PRAGMA user_version').get()!.user_version as number;
    if (found > SCHEMA_VERSION) {
      throw new TrivisorError(
        'FailedPrecondition',
        `The store ${path} has schema version ${found}, newer than this Trivisor understands (${SCHEMA_VERSION}); upgrade Trivisor.`,
      );
    }
    db.exec('PRAGMA journal_mode = WAL');
    // FULL syncs the WAL on every commit, so a write acknowledged to a client
    // survives power loss, not only a daemon crash. It costs ~0.2 ms per put on
    // the dev hosts, well inside the budget, so NORMAL's saving is not worth it.
    db.exec('PRAGMA synchronous = FULL');
    db.exec(`BEGIN IMMEDIATE; ${SCHEMA} COMMIT;`);
    return db;
  } catch (error) {
    if (db?.isOpen) db.close();
    if (error instanceof TrivisorError) throw error;
    const code = (error as { errcode?: number }).errcode;
    // 26 is SQLITE_NOTADB, 11 is SQLITE_CORRUPT.
    const message =
      code === 26 || code === 11
        ? `The store ${path} is not a valid SQLite database (corrupt or another kind of file); restore it from a backup or move it away to start empty.`
        : `Cannot open the store ${path}: ${(error as Error).message}; check the path and its permissions.`;
    throw new TrivisorError('FailedPrecondition', message, { cause: error });
  }
}

function asStoreError(error: unknown): TrivisorError {
  if (error instanceof TrivisorError) return error;
  const { errcode, message } = error as { errcode?: number; message?: string };
  // 5 is SQLITE_BUSY: another process holds the write lock for longer than the busy timeout.
  if (errcode === 5) {
    return new TrivisorError('Unavailable', 'The store database is locked by another process; retry later.', {
      cause: error,
    });
  }
  return internal(`The store database failed: ${message ?? String(error)}.`, error);
}

function toKeyValue(row: Row): KeyValue {
  return {
    key: row.key as string,
    value: row.value as string,
    createRevision: row.create_revision as number,
    modRevision: row.mod_revision as number,
    version: row.version as number,
    lease: row.lease as number,
  };
}

function toEvent(row: Row): WatchEvent {
  const kv = toKeyValue(row);
  const type = row.type as WatchEvent['type'];
  if (row.prev_value === null) return { type, kv };
  const prevKv: KeyValue = {
    key: kv.key,
    value: row.prev_value as string,
    createRevision: row.prev_create_revision as number,
    modRevision: row.prev_mod_revision as number,
    version: row.prev_version as number,
    lease: row.prev_lease as number,
  };
  return { type, kv, prevKv };
}
