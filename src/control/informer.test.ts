import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { countingStore } from '../../test/fakes/counting-store.ts';
import { aGuestSpec } from '../../test/fakes/guest-records.ts';
import { unavailable } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { KeyValue, KvStore, WatchOptions } from '../store/kv.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createInformer, type Informer, type InformerHandlers } from './informer.ts';

interface Record {
  n: number;
}

const decode = (kv: KeyValue): Record => {
  const value = JSON.parse(kv.value) as Record;
  if (typeof value.n !== 'number') throw new Error('not a record');
  return value;
};

describe('informer', () => {
  let store: KvEngine;
  let calls: string[];
  let synced: number[];
  let informer: Informer<Record>;
  const handlers: InformerHandlers<Record> = {
    onAdd: (key, v) => calls.push(`add ${key}=${v.n}`),
    onUpdate: (key, v, old) => calls.push(`update ${key}=${old.n}->${v.n}`),
    onDelete: (key, last) => calls.push(`delete ${key}=${last.n}`),
    onSynced: (revision) => synced.push(revision),
  };
  const make = (s: KvStore = store, more: Partial<InformerHandlers<Record>> = {}) =>
    createInformer<Record>({
      store: s,
      prefix: 'r/',
      decode,
      handlers: { ...handlers, ...more },
      log: silentLogger(),
      relistBackoffMs: 10,
    });
  const put = (key: string, n: number) => store.put(`r/${key}`, JSON.stringify({ n }));

  beforeEach(() => {
    store = createMemoryStore({ historyLimit: 1000 });
    calls = [];
    synced = [];
  });
  afterEach(async () => {
    informer?.stop();
    await store.close();
  });

  test('lists the prefix (an add for every record), then follows puts and deletes in order', async () => {
    await put('a', 1);
    await put('b', 2);
    await store.put('other/x', '{"n":9}');
    informer = make();
    await informer.start();
    assert.deepEqual(calls, ['add r/a=1', 'add r/b=2']);
    assert.deepEqual(synced, [await store.revision()]);
    await put('a', 3);
    await put('c', 4);
    await store.delete('r/b');
    await waitFor(() => calls.length === 5);
    assert.deepEqual(calls.slice(2), ['update r/a=1->3', 'add r/c=4', 'delete r/b=2']);
    assert.deepEqual(informer.entries(), [
      ['r/a', { n: 3 }],
      ['r/c', { n: 4 }],
    ]);
    assert.equal(informer.get('r/a')?.n, 3);
    assert.equal(informer.revision(), await store.revision());
    assert.equal(informer.relists(), 0);
  });

  test('a write between the list and the watch is not missed (the watch starts at the list revision + 1)', async () => {
    await put('a', 1);
    let raced = false;
    const racing: KvStore = withList(store, async (prefix: string) => {
      const listed = await store.list(prefix);
      if (!raced) {
        raced = true;
        await put('a', 2);
      }
      return listed;
    });
    informer = make(racing);
    await informer.start();
    await waitFor(() => calls.length === 2);
    assert.deepEqual(calls, ['add r/a=1', 'update r/a=1->2']);
  });

  test('after losing its watch it lists again and calls the handlers for what it missed, deletes included', async () => {
    await put('keep', 1);
    await put('change', 1);
    await put('gone', 1);
    informer = make();
    await informer.start();
    calls = [];
    // The watch is lost (as when etcd cancels it, or compacts the history it still needed),
    // and the changes happen while there is none: only the re-list's diff can tell of them.
    const relistsBefore = informer.relists();
    store.cancelWatches('test: compacted under the watch');
    await put('change', 2);
    await put('new', 1);
    await store.delete('r/gone');
    await store.compact(await store.revision());
    await waitFor(() => informer.relists() > relistsBefore && synced.length === 2);
    assert.deepEqual(calls.sort(), ['add r/new=1', 'delete r/gone=1', 'update r/change=1->2']);
    assert.deepEqual(
      informer.entries().sort(([a], [b]) => a.localeCompare(b)),
      [
        ['r/change', { n: 2 }],
        ['r/keep', { n: 1 }],
        ['r/new', { n: 1 }],
      ],
    );
    // And it watches again from the re-list's revision.
    calls = [];
    await put('keep', 5);
    await waitFor(() => calls.length === 1);
    assert.deepEqual(calls, ['update r/keep=1->5']);
  });

  test('a watch that starts from an already compacted revision is re-listed, not silently lost', async () => {
    await put('a', 1);
    // The list happens at revision R; before the watch from R+1 starts, history past R is
    // written and compacted away: the watch reports the compaction and the informer lists again.
    const racing: KvStore = withList(store, async (prefix: string) => {
      const listed = await store.list(prefix);
      if (synced.length === 0 && calls.length === 0) {
        await put('a', 2);
        await put('b', 1);
        await store.compact(await store.revision());
      }
      return listed;
    });
    informer = make(racing);
    await informer.start();
    await waitFor(() => synced.length === 2);
    assert.equal(informer.relists(), 1);
    assert.deepEqual(calls, ['add r/a=1', 'update r/a=1->2', 'add r/b=1']);
  });

  test('a watch the store cancels is followed by a re-list', async () => {
    await put('a', 1);
    informer = make();
    await informer.start();
    store.cancelWatches('test');
    await waitFor(() => synced.length === 2);
    assert.equal(informer.relists(), 1);
    await put('a', 2);
    await waitFor(() => calls.length === 2);
    assert.deepEqual(calls, ['add r/a=1', 'update r/a=1->2']);
  });

  test('a re-list that fails is tried again with backoff until it works', async () => {
    await put('a', 1);
    let failures = 0;
    let failing = false;
    const flaky: KvStore = withList(store, async (prefix: string) => {
      if (failing && failures < 3) {
        failures++;
        throw unavailable('test: the store is down');
      }
      return store.list(prefix);
    });
    informer = make(flaky);
    await informer.start();
    failing = true;
    await store.delete('r/a');
    // The delete happens while the watch is gone: only the diff can tell.
    store.cancelWatches('test');
    await waitFor(() => synced.length === 2, 3000);
    assert.equal(failures, 3);
    assert.deepEqual(calls, ['add r/a=1', 'delete r/a=1']);
  });

  test('a watch that stalls without an error is healed by the periodic re-watch: what it missed is seen, nothing twice, and the new watch delivers', async () => {
    await put('a', 1);
    await put('b', 1);
    // A store whose first watch delivers nothing and never says it is lost (a stream that stopped).
    let watches = 0;
    const stalling = new Proxy(store, {
      get(target, prop) {
        if (prop === 'watch') {
          return (...args: Parameters<KvStore['watch']>) => {
            watches++;
            if (watches === 1) return { cancel: () => {} };
            return target.watch(...args);
          };
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as KvStore;
    informer = createInformer<Record>({
      store: stalling,
      prefix: 'r/',
      decode,
      handlers,
      log: silentLogger(),
      resyncMs: 50,
    });
    await informer.start();
    await put('a', 2);
    await store.delete('r/b');
    await put('c', 1);
    await waitFor(() => calls.length === 5);
    // Replayed by the new watch, in the order they happened.
    assert.deepEqual(calls, ['add r/a=1', 'add r/b=1', 'update r/a=1->2', 'delete r/b=1', 'add r/c=1']);
    assert.ok(informer.resyncs() >= 1);
    assert.equal(informer.relists(), 0, 'nothing said the watch was lost');
    // The watch opened after the re-list delivers on its own, each change once.
    await put('c', 2);
    await waitFor(() => calls.length === 6);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(calls.slice(5), ['update r/c=1->2']);
  });

  test('the periodic resync lists nothing: over 10,000 guest records, one list at start, then watches only', async () => {
    for (let i = 0; i < 10_000; i++) {
      const name = `g${i}`;
      await store.put(keys.guest(name), JSON.stringify(aGuestSpec({ name })));
    }
    const counting = countingStore(store);
    const seen: string[] = [];
    const guests = createInformer<GuestSpec>({
      store: counting,
      prefix: records.guest.prefix,
      decode: records.guest.decode,
      handlers: { onUpdate: (key, spec) => seen.push(`${key} ${spec.desired}`) },
      log: silentLogger(),
      resyncMs: 10,
    });
    try {
      await guests.start();
      assert.deepEqual(counting.reads, { records: 10_000, lists: [records.guest.prefix] });
      counting.reset();
      await waitFor(() => guests.resyncs() >= 3);
      await store.put(keys.guest('g7'), JSON.stringify(aGuestSpec({ name: 'g7', desired: 'Stopped' })));
      const resyncs = guests.resyncs();
      await waitFor(() => guests.resyncs() >= resyncs + 3);
      // The change is delivered once, by whichever watch was open when it was written.
      assert.deepEqual(seen, [`${keys.guest('g7')} Stopped`]);
      assert.equal(guests.get(keys.guest('g7'))?.desired, 'Stopped');
      assert.equal(guests.relists(), 0);
      assert.deepEqual(counting.reads, { records: 0, lists: [] }, 'a resync reads nothing from the store');
    } finally {
      guests.stop();
    }
  });

  test("a quiet prefix in a busy store: the resync re-watches from the watch's progress, so history compacted since the last change does not make it list", async () => {
    await store.close();
    store = createMemoryStore({ historyLimit: 20 });
    await put('a', 1);
    const counting = countingStore(store);
    informer = createInformer<Record>({
      store: counting,
      prefix: 'r/',
      decode,
      handlers,
      log: silentLogger(),
      resyncMs: 10,
    });
    await informer.start();
    // Writes elsewhere move the revision far past the history kept.
    for (let i = 0; i < 200; i++) await store.put(`other/${i % 7}`, '{"n":0}');
    const resyncs = informer.resyncs();
    await waitFor(() => informer.resyncs() >= resyncs + 3);
    assert.equal(informer.relists(), 0);
    assert.deepEqual(counting.reads.lists, ['r/']);
    assert.ok(
      informer.revision() > 200,
      `the cache's revision follows the watch's progress (${informer.revision()})`,
    );
    await put('a', 2);
    await waitFor(() => calls.length === 2);
    assert.deepEqual(calls, ['add r/a=1', 'update r/a=1->2']);
  });

  test('a stalled watch whose missed history is compacted is re-listed at the resync', async () => {
    await store.close();
    store = createMemoryStore({ historyLimit: 5 });
    await put('a', 1);
    await put('b', 1);
    // While `stall` holds, a watch delivers no event and cannot tell its progress (its lost
    // reports still arrive, as a compacted history's would); after, watches are the store's.
    let stall = true;
    const stalled = new Proxy(store, {
      get(target, prop) {
        if (prop === 'watch') {
          return (key: string, options: WatchOptions, onEvents: Parameters<KvStore['watch']>[2]) => {
            if (!stall) return target.watch(key, options, onEvents);
            const inner = target.watch(key, options, () => {});
            return { cancel: () => inner.cancel() };
          };
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as KvStore;
    informer = createInformer<Record>({
      store: stalled,
      prefix: 'r/',
      decode,
      handlers,
      log: silentLogger(),
      resyncMs: 20,
    });
    await informer.start();
    await put('a', 2);
    await store.delete('r/b');
    for (let i = 0; i < 20; i++) await store.put('other/x', '{"n":0}');
    stall = false;
    await waitFor(() => informer.relists() === 1 && synced.length === 2);
    assert.deepEqual(calls.slice(2).sort(), ['delete r/b=1', 'update r/a=1->2']);
    await put('c', 1);
    await waitFor(() => calls.length === 5);
    assert.equal(calls[4], 'add r/c=1');
  });

  test('records that cannot be decoded are left out; a handler that throws does not stop the others', async () => {
    await put('a', 1);
    await store.put('r/bad', 'not json');
    informer = make(store, {
      onAdd: (key, v) => {
        calls.push(`add ${key}=${v.n}`);
        if (key === 'r/b') throw new Error('handler bug');
      },
    });
    await informer.start();
    await put('b', 2);
    await put('c', 3);
    await waitFor(() => calls.length === 3);
    assert.deepEqual(calls, ['add r/a=1', 'add r/b=2', 'add r/c=3']);
    assert.equal(informer.get('r/bad'), undefined);
  });

  test('stop() ends delivery: nothing is called after it, not even a re-list in flight', async () => {
    await put('a', 1);
    let release: () => void = () => {};
    let hold = false;
    const slow: KvStore = withList(store, async (prefix: string) => {
      if (hold) await new Promise<void>((resolve) => (release = resolve));
      return store.list(prefix);
    });
    informer = make(slow);
    await informer.start();
    hold = true;
    store.cancelWatches('test');
    await waitFor(() => informer.relists() === 1);
    informer.stop();
    await put('b', 2);
    release();
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.deepEqual(calls, ['add r/a=1']);
    assert.deepEqual(synced.length, 1);
  });
});

/** The store with its list replaced (to race it, slow it or make it fail). */
function withList(store: KvStore, list: KvStore['list']): KvStore {
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'list') return list;
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}
