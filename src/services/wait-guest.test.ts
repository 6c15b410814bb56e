import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import { keys } from '../core/keys.ts';
import type { KvStore, TxnRequest, TxnResponse } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { convergedTo, waitForGuest } from './wait-guest.ts';

const spec = aGuestSpec();

const converged = aGuestStatus();

/** The store, counting its reads, with each read's answer held until `release` when `hold` is set. */
function countingStore(store: KvStore, options: { hold?: Promise<void> } = {}) {
  const counts = { reads: 0 };
  const wrapped: KvStore = {
    get: (key) => {
      counts.reads++;
      return store.get(key);
    },
    list: (prefix, o) => {
      counts.reads++;
      return store.list(prefix, o);
    },
    put: (key, value, o) => store.put(key, value, o),
    delete: (key, o) => store.delete(key, o),
    txn: async (request: TxnRequest): Promise<TxnResponse> => {
      counts.reads++;
      const answer = await store.txn(request);
      await options.hold;
      return answer;
    },
    watch: (key, o, onEvents) => store.watch(key, o, onEvents),
    revision: () => store.revision(),
    compact: (revision) => store.compact(revision),
    grantLease: (ttl) => store.grantLease(ttl),
    keepAlive: (id) => store.keepAlive(id),
    revokeLease: (id) => store.revokeLease(id),
    close: () => store.close(),
  };
  return { store: wrapped, counts };
}

describe('waitForGuest', () => {
  test('judges a status change from its watch event, without reading the store again', async () => {
    const memory = createMemoryStore();
    await memory.put(keys.guest('web'), JSON.stringify(spec));
    const { store, counts } = countingStore(memory);
    const waiting = waitForGuest(store, 'web', convergedTo(1));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(counts.reads, 1, 'one read of both records at the start');
    await memory.put(keys.guestStatus('web'), JSON.stringify(converged));
    await waiting;
    assert.equal(counts.reads, 1, 'no read after the status was written');
    await memory.close();
  });

  test('a first read answered after a later change does not take that change back', async () => {
    const memory = createMemoryStore();
    await memory.put(keys.guest('web'), JSON.stringify(spec));
    let release: () => void = () => {};
    const hold = new Promise<void>((r) => (release = r));
    const { store } = countingStore(memory, { hold });
    const waiting = waitForGuest(store, 'web', convergedTo(1));
    await new Promise((r) => setTimeout(r, 20));
    // The read saw no status; its answer arrives only after the status was written and watched.
    await memory.put(keys.guestStatus('web'), JSON.stringify(converged));
    await new Promise((r) => setTimeout(r, 20));
    release();
    await waiting;
    await memory.close();
  });

  test('a watch that stalls without an error does not hang the wait: the records are read again', async () => {
    const memory = createMemoryStore();
    await memory.put(keys.guest('web'), JSON.stringify(spec));
    const { store, counts } = countingStore(memory);
    const stalled: KvStore = { ...store, watch: () => ({ cancel: () => {} }) };
    const waiting = waitForGuest(stalled, 'web', convergedTo(1), undefined, 50);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(counts.reads, 1, 'the first read saw no status');
    await memory.put(keys.guestStatus('web'), JSON.stringify(converged));
    await waiting;
    assert.ok(counts.reads >= 2, `read ${counts.reads} times`);
    await memory.close();
  });

  test('a failure the controller recorded fails the wait with its code', async () => {
    const memory = createMemoryStore();
    await memory.put(keys.guest('web'), JSON.stringify(spec));
    const waiting = waitForGuest(memory, 'web', convergedTo(1));
    await memory.put(
      keys.guestStatus('web'),
      JSON.stringify({
        ...converged,
        status: 'Stopped',
        failedGeneration: 1,
        error: 'No room',
        errorCode: 'FailedPrecondition',
      }),
    );
    await assert.rejects(waiting, { code: 'FailedPrecondition', message: 'No room' });
    await memory.close();
  });

  test('a guest deleted while waited for fails the wait as a conflict', async () => {
    const memory = createMemoryStore();
    await memory.put(keys.guest('web'), JSON.stringify(spec));
    const waiting = waitForGuest(memory, 'web', convergedTo(1));
    await new Promise((r) => setTimeout(r, 20));
    await memory.delete(keys.guest('web'));
    await assert.rejects(waiting, { code: 'Conflict' });
    await memory.close();
  });
});
