import type { AuthMethod } from '../core/access.ts';
import { parseDurationMs } from '../core/durations.ts';
import { invalidArgument } from '../core/errors.ts';
import type { AuditStore } from '../store/audit-store.ts';
import type { EventBus } from './types.ts';

/**
 * One request that changed something, or tried to (issue 11): who, from where, what, the
 * result, and the operation it started. Never a body, a header or a secret: token values,
 * `environment.*` values and file contents travel in bodies, which are not read here.
 */
export interface AuditEntry {
  id: number;
  /** When the answer was sent (ISO 8601). */
  time: string;
  /** The member that served the request. */
  host: string;
  actor: {
    /** `anonymous`: no valid token or certificate (the request was refused with 401). */
    method: AuthMethod | 'anonymous';
    /** Token name, certificate name, `root` on the unix socket, `-` when anonymous. */
    name: string;
    /** A client certificate's SHA-256, when that is how the caller authenticated. */
    fingerprint?: string;
  };
  /** The client's address (`unix` on the unix socket). */
  source: string;
  request: {
    method: string;
    /** The route's pattern, e.g. `/1.0/guests/:name/state`. */
    route: string;
    /** The path as requested, without its query. */
    path: string;
    /** The project it acted in; `*` for host-wide routes and `?all-projects`. */
    project: string;
    /** The object acted on: the path's names (`web1/snap0`) or the created object's name. */
    object?: string;
  };
  result: {
    status: number;
    /** The error code of a refusal or failure (`PermissionDenied`, `NotFound`…). */
    error?: string;
  };
  /** The operation the request started, if any. */
  operation?: string;
}

/** Bounds of the log: entries older than `maxAgeMs` or beyond the newest `maxEntries` go. */
export interface AuditRetention {
  maxEntries: number;
  maxAgeMs: number;
}

/** 30 days or 100,000 entries, whichever is less. */
export const DEFAULT_AUDIT_RETENTION: AuditRetention = { maxEntries: 100_000, maxAgeMs: 30 * 86_400_000 };

/**
 * The retention the daemon's environment asks for: TRIVISOR_AUDIT_MAX_AGE (a duration such
 * as 30d or 12h) and TRIVISOR_AUDIT_MAX_ENTRIES; the defaults for what is unset.
 */
export function auditRetentionFromEnv(env: Record<string, string | undefined>): AuditRetention {
  const age = env.TRIVISOR_AUDIT_MAX_AGE;
  const count = env.TRIVISOR_AUDIT_MAX_ENTRIES;
  if (count !== undefined && !/^\d{1,10}$/.test(count)) {
    throw invalidArgument(`TRIVISOR_AUDIT_MAX_ENTRIES=${JSON.stringify(count)} is not a whole number`);
  }
  return {
    maxAgeMs:
      age === undefined ? DEFAULT_AUDIT_RETENTION.maxAgeMs : parseDurationMs(age, 'TRIVISOR_AUDIT_MAX_AGE'),
    maxEntries: count === undefined ? DEFAULT_AUDIT_RETENTION.maxEntries : Number(count),
  };
}

/** Most entries one query returns. */
export const AUDIT_QUERY_MAX = 10_000;

/** The audit log: recorded by the API's access hook, read through `GET /1.0/audit` and `/1.0/events?type=audit`. */
export interface AuditLog {
  /** Stores an entry and streams it as an `audit` event; a failure to store is logged, never thrown at the request. */
  record(entry: Omit<AuditEntry, 'id' | 'time' | 'host'>): AuditEntry | undefined;
  /** Entries from `since` on (of `project` if given), oldest first, at most `limit` (the newest ones). */
  query(options?: { since?: Date; project?: string; limit?: number }): AuditEntry[];
  /** Applies the retention now; returns how many entries went. */
  prune(): number;
  close(): void;
}

/** How often (in appended entries) the retention is applied between the hourly passes. */
const PRUNE_EVERY = 500;
const HOUR_MS = 3_600_000;

/** Builds the audit log over `store`; prunes at once, every PRUNE_EVERY entries and every hour. */
export function createAuditLog(deps: {
  store: AuditStore;
  events: EventBus;
  hostName: string;
  retention?: AuditRetention;
  now?: () => Date;
  onError?: (error: unknown) => void;
}): AuditLog {
  const retention = deps.retention ?? DEFAULT_AUDIT_RETENTION;
  if (!(retention.maxEntries >= 1) || !(retention.maxAgeMs >= 1000)) {
    throw invalidArgument('The audit log must keep at least one entry for at least a second');
  }
  const now = deps.now ?? (() => new Date());
  let sincePrune = 0;
  const prune = () => {
    sincePrune = 0;
    return (
      deps.store.pruneOlderThan(now().getTime() - retention.maxAgeMs) +
      deps.store.pruneToCount(retention.maxEntries)
    );
  };
  prune();
  const timer = setInterval(() => {
    try {
      prune();
    } catch (e) {
      deps.onError?.(e);
    }
  }, HOUR_MS);
  timer.unref();

  return {
    record(partial) {
      const at = now();
      try {
        const body = { time: at.toISOString(), host: deps.hostName, ...partial };
        const id = deps.store.append({
          timeMs: at.getTime(),
          project: partial.request.project,
          json: JSON.stringify(body),
        });
        const entry: AuditEntry = { id, ...body };
        if (++sincePrune >= PRUNE_EVERY) prune();
        deps.events.publish({
          type: 'audit',
          project: partial.request.project,
          action: 'api-request',
          source: deps.hostName,
          metadata: entry as unknown as Record<string, unknown>,
        });
        return entry;
      } catch (e) {
        deps.onError?.(e);
        return undefined;
      }
    },
    query(o = {}) {
      const limit = o.limit ?? 1000;
      if (!Number.isInteger(limit) || limit < 1 || limit > AUDIT_QUERY_MAX) {
        throw invalidArgument(`limit must be a whole number from 1 to ${AUDIT_QUERY_MAX}`);
      }
      const rows = deps.store.query({
        sinceMs: o.since?.getTime() ?? 0,
        limit,
        ...(o.project !== undefined && { project: o.project }),
      });
      return rows.map((r) => ({ id: r.id, ...(JSON.parse(r.json) as Omit<AuditEntry, 'id'>) }));
    },
    prune,
    close() {
      clearInterval(timer);
      deps.store.close();
    },
  };
}
