import type { KvStore } from './kv.ts';

/** Typed JSON helpers over the raw string store. */
export async function getJson<T>(
  store: KvStore,
  key: string,
): Promise<{ value: T; modRevision: number } | undefined> {
  const kv = await store.get(key);
  return kv ? { value: JSON.parse(kv.value) as T, modRevision: kv.modRevision } : undefined;
}

export async function listJson<T>(store: KvStore, prefix: string): Promise<{ items: T[]; revision: number }> {
  const { kvs, revision } = await store.list(prefix);
  return { items: kvs.map((kv) => JSON.parse(kv.value) as T), revision };
}
