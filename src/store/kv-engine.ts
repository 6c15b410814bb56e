import { failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { compareByteOrder } from './key-order.ts';
import type {
  Compare,
  KeyValue,
  KvStore,
  Lease,
  ListOptions,
  TxnOp,
  TxnOpResult,
  TxnRequest,
  TxnResponse,
  WatchEvent,
  Watcher,
  WatchOptions,
} from './kv.ts';
import { CompactedError, watchCancelled } from './store-errors.ts';
import { type RevisionEvents, WatchHub } from './watch-hub.ts';

/** A lease as a backend keeps it: expiry is wall-clock so it survives restarts. */
export interface StoredLease {
  id: number;
  ttlSeconds: number;
  expiresAtMs: number;
}

/**
 * The synchronous storage primitives a backend provides; `KvEngine` builds the
 * etcd semantics (revisions, txn, watch, leases) on top, so every backend
 * behaves the same way. Only called from one process.
 */
export interface KvBackend {
  /** Runs `fn` as one atomic, durable unit; if it throws nothing of it is kept. */
  atomic<T>(fn: () => T): T;
  revision(): number;
  setRevision(revision: number): void;
  /** History at or below this revision is gone. */
  compactRevision(): number;
  get(key: string): KeyValue | undefined;
  /** Keys starting with `prefix` in byte order; `limit` 0 means all. */
  range(prefix: string, limit: number): KeyValue[];
  /** How many keys start with `prefix`. */
  count(prefix: string): number;
  put(kv: KeyValue): void;
  remove(key: string): void;
  keysOfLease(leaseId: number): string[];
  appendHistory(batch: RevisionEvents): void;
  /** Every retained batch with revision >= `fromRevision`, in order. */
  historySince(fromRevision: number): RevisionEvents[];
  /** Drops history at or below `revision` and records it as the compact revision. */
  compact(revision: number): void;
  getLease(id: number): StoredLease | undefined;
  createLease(ttlSeconds: number, expiresAtMs: number): number;
  setLeaseExpiry(id: number, expiresAtMs: number): void;
  removeLease(id: number): void;
  expiredLeases(nowMs: number): number[];
  close(): void;
}

/** Tuning shared by the embedded backends. */
export interface KvEngineOptions {
  /** Revisions of history kept for `watch` with `fromRevision` (default 10000). */
  historyLimit?: number;
  /** How often expired leases are looked for (default 200 ms). */
  leaseSweepIntervalMs?: number;
  /** Receives exceptions thrown by watch callbacks and by the lease sweeper. */
  onError?: (error: unknown) => void;
}

const DEFAULT_HISTORY_LIMIT = 10_000;

export class KvEngine implements KvStore {
  readonly #backend: KvBackend;
  readonly #hub: WatchHub;
  readonly #historyLimit: number;
  readonly #onError: (error: unknown) => void;
  readonly #sweeper: NodeJS.Timeout;
  #closed = false;

  constructor(backend: KvBackend, options: KvEngineOptions = {}) {
    this.#backend = backend;
    this.#historyLimit = options.historyLimit ?? DEFAULT_HISTORY_LIMIT;
    if (!Number.isInteger(this.#historyLimit) || this.#historyLimit < 1) {
      throw invalidArgument(`historyLimit must be a positive integer, got ${this.#historyLimit}.`);
    }
    this.#onError = options.onError ?? ((error) => process.emitWarning(`kv store: ${String(error)}`));
    this.#hub = new WatchHub(this.#onError, () => this.#backend.revision());
    this.#sweepExpiredLeases();
    this.#sweeper = setInterval(() => {
      try {
        this.#sweepExpiredLeases();
      } catch (error) {
        this.#onError(error);
      }
    }, options.leaseSweepIntervalMs ?? 200);
    // A forgotten store must never keep the process alive.
    this.#sweeper.unref();
  }

  async get(key: string): Promise<KeyValue | undefined> {
    this.#assertOpen();
    return this.#backend.get(key);
  }

  async list(
    prefix: string,
    options: ListOptions = {},
  ): Promise<{ kvs: KeyValue[]; revision: number; count?: number }> {
    this.#assertOpen();
    if (options.countOnly) {
      return { kvs: [], revision: this.#backend.revision(), count: this.#backend.count(prefix) };
    }
    const limit = options.limit ?? 0;
    if (!Number.isInteger(limit) || limit < 0) {
      throw invalidArgument(`List limit must be a non-negative integer, got ${limit}.`);
    }
    return { kvs: this.#backend.range(prefix, limit), revision: this.#backend.revision() };
  }

  async put(
    key: string,
    value: string,
    options: { lease?: number } = {},
  ): Promise<{ revision: number; prevKv?: KeyValue }> {
    const op: TxnOp = { type: 'put', key, value, ...(options.lease ? { lease: options.lease } : {}) };
    const { revision, events } = this.#write([op]);
    const prevKv = events[0]?.prevKv;
    return prevKv ? { revision, prevKv } : { revision };
  }

  async delete(
    key: string,
    options: { prefix?: boolean } = {},
  ): Promise<{ revision: number; deleted: number }> {
    const { revision, events } = this.#write([{ type: 'delete', key, prefix: options.prefix ?? false }]);
    return { revision, deleted: events.length };
  }

  async txn(request: TxnRequest): Promise<TxnResponse> {
    this.#assertOpen();
    for (const compare of request.compare) validateCompare(compare);
    validateOps(request.success);
    validateOps(request.failure ?? []);
    let succeeded = false;
    const { revision, results } = this.#write(() => {
      succeeded = request.compare.every((c) => compareHolds(c, this.#backend.get(c.key)));
      return succeeded ? request.success : (request.failure ?? []);
    });
    return { succeeded, revision, results };
  }

  watch(
    key: string,
    options: WatchOptions,
    onEvents: (events: WatchEvent[], revision: number) => void,
  ): Watcher {
    this.#assertOpen();
    const from = options.fromRevision ?? 0;
    let replay: RevisionEvents[] = [];
    if (from > 0) {
      const compacted = this.#backend.compactRevision();
      // Reported like etcd reports it, through onLost, so consumers have one path for it.
      if (from <= compacted) return this.#hub.lost(options.onLost, new CompactedError(from, compacted));
      // Reading history and registering happen in one synchronous step, so no
      // write can fall between replay and live delivery.
      if (from <= this.#backend.revision()) replay = this.#backend.historySince(from);
    }
    const watch = {
      key,
      prefix: options.prefix ?? true,
      fromRevision: from,
      onEvents,
      onLost: options.onLost,
    };
    return this.#hub.add(watch, replay);
  }

  async revision(): Promise<number> {
    this.#assertOpen();
    return this.#backend.revision();
  }

  async compact(revision: number): Promise<void> {
    this.#assertOpen();
    const current = this.#backend.revision();
    if (!Number.isInteger(revision) || revision < 1 || revision > current) {
      throw invalidArgument(
        `Cannot compact at revision ${revision}: it must be a whole number from 1 to the current revision ${current}.`,
      );
    }
    // etcd keeps the compact revision itself watchable; the backend's number is the last one dropped.
    if (revision - 1 <= this.#backend.compactRevision()) return;
    this.#backend.atomic(() => this.#backend.compact(revision - 1));
  }

  /**
   * Ends every open watch as the server had cancelled it: an embedded store has no
   * server that would, so this stands in for one (the conformance suite, consumers' tests).
   */
  cancelWatches(why: string): void {
    this.#hub.loseAll(watchCancelled(why));
  }

  async grantLease(ttlSeconds: number): Promise<Lease> {
    this.#assertOpen();
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) {
      throw invalidArgument(`Lease TTL must be a whole number of seconds >= 1, got ${ttlSeconds}.`);
    }
    const id = this.#backend.atomic(() =>
      this.#backend.createLease(ttlSeconds, Date.now() + ttlSeconds * 1000),
    );
    return { id, ttlSeconds };
  }

  async keepAlive(leaseId: number): Promise<void> {
    this.#assertOpen();
    const lease = this.#liveLease(leaseId);
    this.#backend.atomic(() => this.#backend.setLeaseExpiry(leaseId, Date.now() + lease.ttlSeconds * 1000));
  }

  async revokeLease(leaseId: number): Promise<void> {
    this.#assertOpen();
    if (!this.#backend.getLease(leaseId)) throw leaseNotFound(leaseId);
    this.#revoke(leaseId);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweeper);
    this.#hub.closeAll();
    this.#backend.close();
  }

  /** Runs a write transaction at the next revision and publishes its events once committed. */
  #write(opsOrChoose: TxnOp[] | (() => TxnOp[])): {
    revision: number;
    results: TxnOpResult[];
    events: WatchEvent[];
  } {
    this.#assertOpen();
    const backend = this.#backend;
    if (Array.isArray(opsOrChoose)) validateOps(opsOrChoose);
    const outcome = backend.atomic(() => {
      const ops = Array.isArray(opsOrChoose) ? opsOrChoose : opsOrChoose();
      for (const op of ops) if (op.type === 'put' && op.lease) this.#liveLease(op.lease);
      const revision = backend.revision() + 1;
      const events: WatchEvent[] = [];
      const results = ops.map((op) => this.#apply(op, revision, events));
      if (events.length === 0) return { revision: revision - 1, results, events };
      backend.setRevision(revision);
      backend.appendHistory({ revision, events });
      // Compact in steps of a tenth of the limit so it is not paid on every write.
      if (revision - backend.compactRevision() > this.#historyLimit + Math.ceil(this.#historyLimit / 10)) {
        backend.compact(revision - this.#historyLimit);
      }
      return { revision, results, events };
    });
    if (outcome.events.length > 0) this.#hub.publish({ revision: outcome.revision, events: outcome.events });
    return outcome;
  }

  #apply(op: TxnOp, revision: number, events: WatchEvent[]): TxnOpResult {
    const backend = this.#backend;
    switch (op.type) {
      case 'get': {
        if (op.countOnly) {
          const count = op.prefix ? backend.count(op.key) : backend.get(op.key) ? 1 : 0;
          return { type: 'get', kvs: [], count };
        }
        const kvs = op.prefix
          ? backend.range(op.key, 0)
          : [backend.get(op.key)].filter((kv) => kv !== undefined);
        return { type: 'get', kvs };
      }
      case 'put': {
        const prevKv = backend.get(op.key);
        const kv: KeyValue = {
          key: op.key,
          value: op.value,
          createRevision: prevKv ? prevKv.createRevision : revision,
          modRevision: revision,
          version: prevKv ? prevKv.version + 1 : 1,
          lease: op.lease ?? 0,
        };
        backend.put(kv);
        events.push(prevKv ? { type: 'put', kv, prevKv } : { type: 'put', kv });
        return { type: 'put' };
      }
      case 'delete': {
        const victims = op.prefix
          ? backend.range(op.key, 0)
          : [backend.get(op.key)].filter((kv) => kv !== undefined);
        for (const prevKv of victims) {
          backend.remove(prevKv.key);
          // Like etcd, a delete event carries only the key and the deleting revision.
          const kv = {
            key: prevKv.key,
            value: '',
            createRevision: 0,
            modRevision: revision,
            version: 0,
            lease: 0,
          };
          events.push({ type: 'delete', kv, prevKv });
        }
        return { type: 'delete', deleted: victims.length };
      }
    }
  }

  /** The lease if it exists and has not expired (an expired one is left for the sweeper to revoke). */
  #liveLease(leaseId: number): StoredLease {
    const lease = this.#backend.getLease(leaseId);
    if (!lease || lease.expiresAtMs <= Date.now()) throw leaseNotFound(leaseId);
    return lease;
  }

  #revoke(leaseId: number): void {
    const backend = this.#backend;
    const outcome = backend.atomic(() => {
      const keys = backend.keysOfLease(leaseId);
      backend.removeLease(leaseId);
      if (keys.length === 0) return undefined;
      const revision = backend.revision() + 1;
      const events: WatchEvent[] = [];
      for (const key of keys) this.#apply({ type: 'delete', key }, revision, events);
      backend.setRevision(revision);
      backend.appendHistory({ revision, events });
      return { revision, events };
    });
    if (outcome) this.#hub.publish(outcome);
  }

  #sweepExpiredLeases(): void {
    if (this.#closed) return;
    for (const id of this.#backend.expiredLeases(Date.now())) this.#revoke(id);
  }

  #assertOpen(): void {
    if (this.#closed)
      throw failedPrecondition('The key-value store is closed; open it again before using it.');
  }
}

function leaseNotFound(leaseId: number) {
  return notFound(`Lease ${leaseId} does not exist or has expired; grant a new lease.`);
}

/** Refuses a compare whose value does not fit its target (shared with the etcd backend). */
export function validateCompare(c: Compare): void {
  const wantString = c.target === 'value';
  if (wantString ? typeof c.value !== 'string' : typeof c.value !== 'number') {
    throw invalidArgument(
      `Compare on ${c.target} of ${JSON.stringify(c.key)} needs a ${wantString ? 'string' : 'number'} value.`,
    );
  }
}

/**
 * Refuses empty keys and a branch that writes one key twice (shared with the etcd
 * backend, so both say it in the same words).
 */
// etcd rejects a transaction branch that writes the same key twice, since the
// outcome would depend on op order within one revision.
export function validateOps(ops: TxnOp[]): void {
  const putKeys = new Set<string>();
  for (const op of ops) {
    if (op.type !== 'get' && op.key === '' && !(op.type === 'delete' && op.prefix)) {
      throw invalidArgument('A key must not be empty.');
    }
    if (op.type !== 'put') continue;
    if (putKeys.has(op.key)) throw invalidArgument(`Transaction puts key ${JSON.stringify(op.key)} twice.`);
    putKeys.add(op.key);
  }
  for (const op of ops) {
    if (op.type !== 'delete') continue;
    for (const key of putKeys) {
      if (op.prefix ? key.startsWith(op.key) : key === op.key) {
        throw invalidArgument(`Transaction both puts and deletes key ${JSON.stringify(key)}.`);
      }
    }
  }
}

function compareHolds(c: Compare, kv: KeyValue | undefined): boolean {
  let order: number;
  if (c.target === 'value') {
    // As in etcd: a missing key has no value, so every value comparison fails.
    if (!kv) return false;
    order = compareByteOrder(kv.value, c.value as string);
  } else {
    order = (kv ? kv[c.target] : 0) - (c.value as number);
  }
  switch (c.op) {
    case '=':
      return order === 0;
    case '!=':
      return order !== 0;
    case '<':
      return order < 0;
    case '>':
      return order > 0;
  }
}
