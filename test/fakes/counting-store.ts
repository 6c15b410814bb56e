import type { KvStore } from '../../src/store/kv.ts';

/**
 * A store that counts what its callers read through it (decision 0080's tests): `records` is the
 * number of records returned by gets, lists and a transaction's gets, `lists` the prefixes listed.
 * Watches pass through uncounted: what a watch delivers is what changed.
 */
export interface CountingStore extends KvStore {
  reads: { records: number; lists: string[] };
  /**
   * Requests that read (a get, a list, a transaction with a get) and the prefixes counted
   * (`countOnly`, by a list or inside a transaction: no record, not in `lists`).
   */
  calls: { requests: number; counts: string[] };
  /** Zeroes the counts. */
  reset(): void;
}

export function countingStore(inner: KvStore): CountingStore {
  const reads = { records: 0, lists: [] as string[] };
  const calls = { requests: 0, counts: [] as string[] };
  return {
    reads,
    calls,
    reset() {
      reads.records = 0;
      reads.lists.length = 0;
      calls.requests = 0;
      calls.counts.length = 0;
    },
    get: async (key) => {
      calls.requests++;
      const kv = await inner.get(key);
      if (kv) reads.records++;
      return kv;
    },
    list: async (prefix, options) => {
      calls.requests++;
      (options?.countOnly ? calls.counts : reads.lists).push(prefix);
      const r = await inner.list(prefix, options);
      reads.records += r.kvs.length;
      return r;
    },
    put: (key, value, options) => inner.put(key, value, options),
    delete: (key, options) => inner.delete(key, options),
    txn: async (request) => {
      if (request.success.some((op) => op.type === 'get')) calls.requests++;
      // Counts inside a transaction ride on its request: named in `counts`, no request of their own.
      for (const op of request.success) if (op.type === 'get' && op.countOnly) calls.counts.push(op.key);
      const r = await inner.txn(request);
      for (const x of r.results) {
        if (x.type !== 'get') continue;
        reads.records += x.kvs.length;
      }
      return r;
    },
    watch: (key, options, onEvents) => inner.watch(key, options, onEvents),
    revision: () => inner.revision(),
    compact: (revision) => inner.compact(revision),
    grantLease: (ttl) => inner.grantLease(ttl),
    keepAlive: (id) => inner.keepAlive(id),
    revokeLease: (id) => inner.revokeLease(id),
    close: () => inner.close(),
  };
}
