import { chmodSync, closeSync, constants, openSync, statSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';

/**
 * Where audit entries are kept: appended in time order, read back by time and project,
 * pruned from the oldest end. Entries are opaque JSON here; services/audit-log.ts gives
 * them their shape.
 */
export interface AuditStore {
  /** Appends one entry; returns its id (increasing). */
  append(entry: { timeMs: number; project: string; json: string }): number;
  /** The newest `limit` entries at or after `sinceMs` (of `project`, if given), oldest first. */
  query(options: { sinceMs: number; project?: string; limit: number }): Array<{ id: number; json: string }>;
  /** Deletes entries older than `cutoffMs`; returns how many. */
  pruneOlderThan(cutoffMs: number): number;
  /** Deletes all but the newest `keep` entries; returns how many. */
  pruneToCount(keep: number): number;
  count(): number;
  close(): void;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time_ms INTEGER NOT NULL,
  project TEXT NOT NULL,
  entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (time_ms);
CREATE INDEX IF NOT EXISTS audit_by_project_time ON audit (project, time_ms);
`;

/**
 * The audit log of one daemon: a SQLite file of its own beside the store (`audit.db`), so
 * that a busy log never adds revisions, history or watch events to the desired state. It is
 * made 0600 before SQLite opens it (its -wal and -shm then get that mode too): who did what
 * is the host admin's to read.
 */
export function openSqliteAuditStore(path: string): AuditStore {
  closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600));
  for (const file of [path, `${path}-wal`, `${path}-shm`]) {
    try {
      if ((statSync(file).mode & 0o777) !== 0o600) chmodSync(file, 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  const db = new DatabaseSync(path, { timeout: 5000 });
  db.exec('PRAGMA journal_mode = WAL');
  // NORMAL: an entry survives a daemon crash; only a power loss may take the last few. The
  // request it records wrote its own change with FULL, so this costs no desired state.
  db.exec('PRAGMA synchronous = NORMAL');
  db.exec(`BEGIN IMMEDIATE; ${SCHEMA} COMMIT;`);
  const insert = db.prepare('INSERT INTO audit (time_ms, project, entry) VALUES (?, ?, ?)');
  const all = db.prepare(
    'SELECT id, entry FROM (SELECT id, entry FROM audit WHERE time_ms >= ? ORDER BY id DESC LIMIT ?) ORDER BY id',
  );
  const ofProject = db.prepare(
    'SELECT id, entry FROM (SELECT id, entry FROM audit WHERE project = ? AND time_ms >= ? ORDER BY id DESC LIMIT ?) ORDER BY id',
  );
  const older = db.prepare('DELETE FROM audit WHERE time_ms < ?');
  const beyond = db.prepare('DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?');
  const count = db.prepare('SELECT COUNT(*) AS n FROM audit');
  const rows = (list: unknown[]) =>
    (list as Array<{ id: number | bigint; entry: string }>).map((r) => ({ id: Number(r.id), json: r.entry }));
  return {
    append(entry) {
      return Number(insert.run(entry.timeMs, entry.project, entry.json).lastInsertRowid);
    },
    query(o) {
      return rows(
        o.project === undefined ? all.all(o.sinceMs, o.limit) : ofProject.all(o.project, o.sinceMs, o.limit),
      );
    },
    pruneOlderThan: (cutoffMs) => Number(older.run(cutoffMs).changes),
    // Ids are consecutive (AUTOINCREMENT, deletions only from the old end): the newest `keep` are above MAX - keep.
    pruneToCount: (keep) => Number(beyond.run(keep).changes),
    count: () => Number((count.get() as { n: number }).n),
    close: () => {
      if (db.isOpen) db.close();
    },
  };
}

/** The same in memory (tests, the fake services). */
export function createMemoryAuditStore(): AuditStore {
  let entries: Array<{ id: number; timeMs: number; project: string; json: string }> = [];
  let next = 1;
  return {
    append(entry) {
      entries.push({ id: next, ...entry });
      return next++;
    },
    query(o) {
      const matching = entries.filter(
        (e) => e.timeMs >= o.sinceMs && (o.project === undefined || e.project === o.project),
      );
      return matching.slice(Math.max(0, matching.length - o.limit)).map((e) => ({ id: e.id, json: e.json }));
    },
    pruneOlderThan(cutoffMs) {
      const before = entries.length;
      entries = entries.filter((e) => e.timeMs >= cutoffMs);
      return before - entries.length;
    },
    pruneToCount(keep) {
      const drop = Math.max(0, entries.length - keep);
      entries = entries.slice(drop);
      return drop;
    },
    count: () => entries.length,
    close() {},
  };
}
