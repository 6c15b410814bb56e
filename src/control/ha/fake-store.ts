import type { Compare } from '../../store/kv.ts';
import type { HaWrite, Read } from './types.ts';

/**
 * The simulator's store: etcd's data model in memory, on the simulator's clock. One revision
 * bumped by every write, per key create and mod revisions and version, compare-and-swap
 * transactions (kv.ts's compares), prefix reads, and leases with a TTL that expire at the
 * store's expiry check. Values are kept as objects (the simulator does not need the JSON).
 *
 * When it is down (etcd lost its quorum), nothing answers and no lease expires; when it comes
 * back every lease gets its whole TTL again, as etcd does when a new leader takes over.
 */
export interface FakeStore {
  revision(): number;
  up(): boolean;
  setUp(up: boolean, nowMs: number): void;
  /**
   * Grants a lease and creates `key` on it, in one step; the create revision is the holder's
   * token. Undefined while `key` exists: a member takes a new lease once its old one is gone.
   */
  register(
    nowMs: number,
    ttlMs: number,
    key: string,
    value: unknown,
  ): { lease: number; createRevision: number } | undefined;
  /** A lease with nothing on it yet. */
  grant(nowMs: number, ttlMs: number): number;
  /** False when the lease is gone. */
  keepAlive(nowMs: number, lease: number): boolean;
  /** False when the lease was gone already. */
  revoke(lease: number): boolean;
  /** Leases whose time ran out by `nowMs`, with their keys deleted; their holders' keys, sorted. */
  expire(nowMs: number): string[];
  get<T>(key: string): Read<T> | undefined;
  list<T>(prefix: string): Read<T>[];
  /** A write as the HA machines express them; `lease` is the lease to put the key on for `'own'`. */
  txn(write: HaWrite, lease?: number): boolean;
  /** A plain put or delete (scenarios editing records). */
  put(key: string, value: unknown): void;
  delete(key: string): void;
}

interface Entry {
  value: unknown;
  createRevision: number;
  modRevision: number;
  version: number;
  lease: number;
}

export function createFakeStore(): FakeStore {
  let revision = 1;
  let isUp = true;
  let nextLease = 1;
  const data = new Map<string, Entry>();
  const leases = new Map<number, { ttlMs: number; deadline: number; keys: Set<string> }>();

  const putEntry = (key: string, value: unknown, lease = 0) => {
    revision++;
    const old = data.get(key);
    if (old?.lease) leases.get(old.lease)?.keys.delete(key);
    data.set(key, {
      value: Object.freeze(structuredClone(value)),
      createRevision: old ? old.createRevision : revision,
      modRevision: revision,
      version: (old?.version ?? 0) + 1,
      lease,
    });
    if (lease) leases.get(lease)?.keys.add(key);
  };
  const deleteEntry = (key: string) => {
    const old = data.get(key);
    if (!old) return;
    revision++;
    if (old.lease) leases.get(old.lease)?.keys.delete(key);
    data.delete(key);
  };
  const dropLease = (id: number): string[] => {
    const l = leases.get(id);
    if (!l) return [];
    leases.delete(id);
    const keys = [...l.keys].sort();
    for (const k of keys) deleteEntry(k);
    return keys;
  };
  const holds = (c: Compare): boolean => {
    const e = data.get(c.key);
    const actual =
      c.target === 'value'
        ? JSON.stringify(e?.value ?? '')
        : c.target === 'version'
          ? (e?.version ?? 0)
          : c.target === 'createRevision'
            ? (e?.createRevision ?? 0)
            : (e?.modRevision ?? 0);
    switch (c.op) {
      case '=':
        return actual === c.value;
      case '!=':
        return actual !== c.value;
      case '<':
        return actual < c.value;
      case '>':
        return actual > c.value;
    }
  };
  // Values are copied when written and frozen, so readers share them without copying.
  const read = <T>(e: Entry): Read<T> => ({
    value: e.value as T,
    createRevision: e.createRevision,
    modRevision: e.modRevision,
  });

  return {
    revision: () => revision,
    up: () => isUp,
    setUp(up, now) {
      if (up && !isUp) for (const l of leases.values()) l.deadline = now + l.ttlMs;
      isUp = up;
    },
    register(now, ttlMs, key, value) {
      if (data.has(key)) return undefined;
      const lease = nextLease++;
      leases.set(lease, { ttlMs, deadline: now + ttlMs, keys: new Set() });
      putEntry(key, value, lease);
      return { lease, createRevision: (data.get(key) as Entry).createRevision };
    },
    grant(now, ttlMs) {
      const lease = nextLease++;
      leases.set(lease, { ttlMs, deadline: now + ttlMs, keys: new Set() });
      return lease;
    },
    keepAlive(now, lease) {
      const l = leases.get(lease);
      if (!l) return false;
      l.deadline = now + l.ttlMs;
      return true;
    },
    revoke(lease) {
      const had = leases.has(lease);
      dropLease(lease);
      return had;
    },
    expire(now) {
      if (!isUp) return [];
      const gone: string[] = [];
      for (const [id, l] of [...leases].sort(([a], [b]) => a - b))
        if (l.deadline <= now) gone.push(...dropLease(id));
      return gone;
    },
    get<T>(key: string) {
      const e = data.get(key);
      return e ? read<T>(e) : undefined;
    },
    list<T>(prefix: string) {
      return [...data.keys()]
        .filter((k) => k.startsWith(prefix))
        .sort()
        .map((k) => read<T>(data.get(k) as Entry));
    },
    txn(write, lease) {
      if (!write.compare.every(holds)) return false;
      if (write.put) putEntry(write.put.key, write.put.value, write.put.lease === 'own' ? (lease ?? 0) : 0);
      if (write.delete) deleteEntry(write.delete);
      return true;
    },
    put: (key, value) => putEntry(key, value),
    delete: deleteEntry,
  };
}
