import type { WatchLostError } from './store-errors.ts';

/**
 * The key-value store every piece of desired state and observed status lives in.
 * It follows etcd's data model so that the SQLite, memory and etcd backends are
 * interchangeable: one global revision bumped by every write, per-key
 * create/mod revisions and version, compare-and-swap transactions, prefix
 * listing, watches that can resume from a revision, and leases.
 */
export interface KeyValue {
  key: string;
  value: string;
  /** Revision of the write that created the key (since its last deletion). */
  createRevision: number;
  /** Revision of the last write to the key. */
  modRevision: number;
  /** Number of writes since the key was created; 1 after the first put. */
  version: number;
  /** Lease the key is attached to, 0 if none. */
  lease: number;
}

export type CompareTarget = 'value' | 'version' | 'createRevision' | 'modRevision';
export type CompareOp = '=' | '!=' | '<' | '>';

/** One condition of a transaction; a missing key has version, createRevision and modRevision 0 and no value. */
export interface Compare {
  key: string;
  target: CompareTarget;
  op: CompareOp;
  value: string | number;
}

export type TxnOp =
  | { type: 'put'; key: string; value: string; lease?: number }
  | { type: 'delete'; key: string; prefix?: boolean }
  /** `countOnly`: how many keys there are (`count`), no record, as `list`'s option (etcd's `count_only`). */
  | { type: 'get'; key: string; prefix?: boolean; countOnly?: boolean };

export interface TxnRequest {
  compare: Compare[];
  success: TxnOp[];
  failure?: TxnOp[];
}

/** Result of one op of a transaction, in order: the kvs of a `get`, the count of a `delete`, nothing for a `put`. */
export type TxnOpResult =
  | { type: 'put' }
  | { type: 'delete'; deleted: number }
  | { type: 'get'; kvs: KeyValue[]; count?: number };

export interface TxnResponse {
  succeeded: boolean;
  revision: number;
  results: TxnOpResult[];
}

export interface WatchEvent {
  type: 'put' | 'delete';
  /** For a delete: the key with `modRevision` set to the deleting revision and an empty value. */
  kv: KeyValue;
  prevKv?: KeyValue;
}

/** A registered watch; `cancel()` stops delivery. */
export interface Watcher {
  cancel(): void;
  /**
   * The revision up to which this watch has delivered every event of its keys (events of other
   * keys and revisions without any count as delivered): a new watch from the next revision
   * misses nothing this one would have delivered. It moves on with quiet revisions too (etcd's
   * progress notifications), so a watch opened from it replays only what happened since.
   * Optional: a backend that cannot tell leaves it out, and its owner uses the last revision
   * delivered to it.
   */
  progress?(): number;
}

export interface WatchOptions {
  /**
   * Deliver events from this revision on: those that happened before the watch began
   * first (replayed, in order), then live ones. Without it, every event written after
   * `watch` returns is delivered (etcd may also deliver a few just before).
   */
  fromRevision?: number;
  /** Treat `key` as a prefix (default true). */
  prefix?: boolean;
  /**
   * Called at most once, asynchronously, when the watch ends without `cancel()`: the
   * history it needs is compacted (`CompactedError`), or the server cancelled it (a
   * `WatchLostError` with reason `cancelled`). Nothing is delivered after it; events
   * after the last delivered revision may be missing, so list again and watch from the
   * list's revision (src/control/informer.ts does). Required: a watch must never lose
   * events silently.
   */
  onLost: (error: WatchLostError) => void;
}

export interface ListOptions {
  limit?: number;
  /**
   * Only how many keys the prefix holds (`count`), no record (etcd's `count_only`): the backend
   * counts its index and decodes nothing. `limit` is ignored then.
   */
  countOnly?: boolean;
}

export interface Lease {
  id: number;
  ttlSeconds: number;
}

export interface KvStore {
  get(key: string): Promise<KeyValue | undefined>;
  /**
   * Keys starting with `prefix`, in key order, and the store revision they were read at. With
   * `countOnly`, no key but `count`, how many there are (use `countKeys`, which also takes a store
   * that ignores the option).
   */
  list(prefix: string, options?: ListOptions): Promise<{ kvs: KeyValue[]; revision: number; count?: number }>;
  /**
   * Writes `value` at `key`. A backend may retry a put whose answer was lost (etcd, when a
   * member goes away mid-call): the state is the same, but `prevKv` may then be this put's own
   * first write. Use a transaction where the previous value matters.
   */
  put(
    key: string,
    value: string,
    options?: { lease?: number },
  ): Promise<{ revision: number; prevKv?: KeyValue }>;
  delete(key: string, options?: { prefix?: boolean }): Promise<{ revision: number; deleted: number }>;
  /** Atomically: if every compare holds run `success`, else `failure`. */
  txn(request: TxnRequest): Promise<TxnResponse>;
  /**
   * Calls `onEvents` with batches of events, each batch one revision, in
   * revision order. Delivery is asynchronous and never reentrant.
   */
  watch(
    key: string,
    options: WatchOptions,
    onEvents: (events: WatchEvent[], revision: number) => void,
  ): Watcher;
  /** The current revision. */
  revision(): Promise<number>;
  /**
   * Discards the history before `revision` (etcd's compaction): a watch from an older
   * revision reports `CompactedError` through `onLost`; current keys are unaffected.
   * Compacting at or below an earlier compaction does nothing; a revision above the
   * current one is InvalidArgument.
   */
  compact(revision: number): Promise<void>;
  grantLease(ttlSeconds: number): Promise<Lease>;
  /** Extends a lease to its full TTL again; NotFound if it expired or was revoked. */
  keepAlive(leaseId: number): Promise<void>;
  /** Deletes the lease and every key attached to it. */
  revokeLease(leaseId: number): Promise<void>;
  /** Releases the backend (closes the database, stops timers). */
  close(): Promise<void>;
}

/**
 * How many keys start with `prefix`, reading no record where the store can count (every backend
 * here); a store that ignores `countOnly` (a wrapper of a test) is counted by its list.
 */
export async function countKeys(store: Pick<KvStore, 'list'>, prefix: string): Promise<number> {
  const r = await store.list(prefix, { countOnly: true });
  return r.count ?? r.kvs.length;
}

/**
 * Several reads at one revision in one request (on etcd one round trip, where reads side by
 * side each cost one): for each read, the records it found (one key, or every key under it
 * with `prefix`), and the revision they were read at. A read with `countOnly` finds no record:
 * its `counts` entry is how many keys it matched (for the others, how many it found).
 */
export async function readTogether(
  store: Pick<KvStore, 'txn'>,
  reads: ReadonlyArray<{ key: string; prefix?: boolean; countOnly?: boolean }>,
): Promise<{ kvs: KeyValue[][]; counts: number[]; revision: number }> {
  const r = await store.txn({
    compare: [],
    success: reads.map(
      (x): TxnOp => ({
        type: 'get',
        key: x.key,
        ...(x.prefix && { prefix: true }),
        ...(x.countOnly && { countOnly: true }),
      }),
    ),
  });
  const gets = r.results.map((x) => (x.type === 'get' ? x : { kvs: [], count: undefined }));
  return {
    kvs: gets.map((x) => x.kvs),
    // A store that ignores `countOnly` (a wrapper of a test) is counted by what it returned.
    counts: gets.map((x) => x.count ?? x.kvs.length),
    revision: r.revision,
  };
}
