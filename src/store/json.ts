import { conflict } from '../core/errors.ts';
import type { KvStore, TxnOp } from './kv.ts';

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

/**
 * Writes `value` as JSON. With `ifModRevision` it is a compare-and-swap: the
 * write happens only if the key's modRevision still equals it (0: the key must
 * not exist yet), otherwise it fails with Conflict and writes nothing.
 */
export async function putJson<T>(
  store: KvStore,
  key: string,
  value: T,
  options: { ifModRevision?: number; lease?: number } = {},
): Promise<{ revision: number }> {
  const put: TxnOp = { type: 'put', key, value: JSON.stringify(value), ...leaseOf(options) };
  if (options.ifModRevision === undefined) return store.put(key, put.value, leaseOf(options));
  const { succeeded, revision } = await store.txn({
    compare: [{ key, target: 'modRevision', op: '=', value: options.ifModRevision }],
    success: [put],
  });
  if (!succeeded) {
    throw conflict(`${key} changed since revision ${options.ifModRevision}; read it again and retry.`);
  }
  return { revision };
}

function leaseOf(options: { lease?: number }): { lease?: number } {
  return options.lease ? { lease: options.lease } : {};
}
