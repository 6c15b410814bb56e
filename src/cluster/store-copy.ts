import { internal } from '../core/errors.ts';
import type { KvStore } from '../store/kv.ts';

/** What a copy did. */
export interface StoreCopyReport {
  copied: number;
  /** Keys on a lease (short-lived by definition: they are not carried over). */
  skippedLeased: number;
}

/** etcd refuses a transaction of more than 128 operations by default (--max-txn-ops). */
const BATCH = 100;

/**
 * Copies every key of a single host's store into the cluster's (converting a daemon into
 * the first member, decision 0032): every record, whatever its kind, with its value as
 * it is, so nothing is left behind that a later version added. Keys on a lease are not
 * carried (none is kept on a single host today; one would be gone at its TTL anyway).
 * Revisions are the target's own: nothing keeps a revision across a daemon's restart.
 * Idempotent: a copy cut short is simply made again (the source does not change while
 * the daemon is down). Every key is read back at the end (one list) and compared.
 */
export async function copyStore(from: KvStore, to: KvStore): Promise<StoreCopyReport> {
  const { kvs } = await from.list('');
  const carried = kvs.filter((kv) => kv.lease === 0);
  for (let i = 0; i < carried.length; i += BATCH) {
    const batch = carried.slice(i, i + BATCH);
    await to.txn({
      compare: [],
      success: batch.map((kv) => ({ type: 'put', key: kv.key, value: kv.value })),
    });
  }
  const copied = new Map((await to.list('')).kvs.map((kv) => [kv.key, kv.value]));
  for (const kv of carried) {
    if (copied.get(kv.key) !== kv.value) {
      throw internal(`Copying the store into etcd failed at ${kv.key}: it reads back differently`);
    }
  }
  return { copied: carried.length, skippedLeased: kvs.length - carried.length };
}
