import { compareByteOrder } from './key-order.ts';
import type { KeyValue } from './kv.ts';
import { type KvBackend, KvEngine, type KvEngineOptions, type StoredLease } from './kv-engine.ts';
import type { RevisionEvents } from './watch-hub.ts';

/** A store that lives and dies with the process: for unit tests and throwaway tools. */
export function createMemoryStore(options: KvEngineOptions = {}): KvEngine {
  return new KvEngine(new MemoryBackend(), options);
}

class MemoryBackend implements KvBackend {
  readonly #kvs = new Map<string, KeyValue>();
  readonly #leases = new Map<number, StoredLease>();
  #history: RevisionEvents[] = [];
  #revision = 0;
  #compactRevision = 0;
  #nextLeaseId = 1;

  // Every write is validated before it starts and nothing below can throw, so
  // running it directly is atomic.
  atomic<T>(fn: () => T): T {
    return fn();
  }

  revision(): number {
    return this.#revision;
  }

  setRevision(revision: number): void {
    this.#revision = revision;
  }

  compactRevision(): number {
    return this.#compactRevision;
  }

  get(key: string): KeyValue | undefined {
    const kv = this.#kvs.get(key);
    return kv && { ...kv };
  }

  range(prefix: string, limit: number): KeyValue[] {
    const kvs = [...this.#kvs.values()]
      .filter((kv) => kv.key.startsWith(prefix))
      .sort((a, b) => compareByteOrder(a.key, b.key));
    return (limit > 0 ? kvs.slice(0, limit) : kvs).map((kv) => ({ ...kv }));
  }

  count(prefix: string): number {
    let n = 0;
    for (const key of this.#kvs.keys()) if (key.startsWith(prefix)) n++;
    return n;
  }

  put(kv: KeyValue): void {
    this.#kvs.set(kv.key, { ...kv });
  }

  remove(key: string): void {
    this.#kvs.delete(key);
  }

  keysOfLease(leaseId: number): string[] {
    return [...this.#kvs.values()].filter((kv) => kv.lease === leaseId).map((kv) => kv.key);
  }

  appendHistory(batch: RevisionEvents): void {
    this.#history.push(batch);
  }

  historySince(fromRevision: number): RevisionEvents[] {
    return this.#history.filter((batch) => batch.revision >= fromRevision);
  }

  compact(revision: number): void {
    this.#history = this.#history.filter((batch) => batch.revision > revision);
    this.#compactRevision = revision;
  }

  getLease(id: number): StoredLease | undefined {
    const lease = this.#leases.get(id);
    return lease && { ...lease };
  }

  createLease(ttlSeconds: number, expiresAtMs: number): number {
    const id = this.#nextLeaseId++;
    this.#leases.set(id, { id, ttlSeconds, expiresAtMs });
    return id;
  }

  setLeaseExpiry(id: number, expiresAtMs: number): void {
    const lease = this.#leases.get(id);
    if (lease) lease.expiresAtMs = expiresAtMs;
  }

  removeLease(id: number): void {
    this.#leases.delete(id);
  }

  expiredLeases(nowMs: number): number[] {
    return [...this.#leases.values()].filter((lease) => lease.expiresAtMs <= nowMs).map((lease) => lease.id);
  }

  close(): void {
    this.#kvs.clear();
    this.#leases.clear();
    this.#history = [];
  }
}
