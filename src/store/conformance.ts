import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, type TestContext, test } from 'node:test';
import { isTrivisorError, notSupported } from '../core/errors.ts';
import {
  type Compare,
  type CompareOp,
  type CompareTarget,
  countKeys,
  type KvStore,
  type WatchEvent,
  type WatchOptions,
} from './kv.ts';
import type { KvEngine } from './kv-engine.ts';
import { isCompactedError, type WatchLostError } from './store-errors.ts';

/** What a backend under test hands the suite: a fresh, empty-enough store and a way to dispose of it. */
export interface OpenedStore {
  store: KvStore;
  cleanup(): Promise<void>;
  faults: StoreFaults;
}

/**
 * Server-side faults the suite makes happen to `store`. A backend that cannot have one
 * throws NotSupported saying why, and the case is skipped with that reason.
 */
export interface StoreFaults {
  /** The server cancels every watch `store` has open (etcd does on a lost leader, a revoked permission). */
  cancelWatches(): Promise<void>;
  /**
   * Stops the server and starts it again on the same data; `afterStart` runs as soon as it
   * serves again, with another client of it (its writes race `store`'s reconnection).
   */
  restart(afterStart: (other: KvStore) => Promise<void>): Promise<void>;
}

interface Seen {
  revision: number;
  events: WatchEvent[];
}

/**
 * Faults of a store embedded in the process (memory, SQLite): its engine can cancel its
 * watches as a server would; there is no server to restart.
 */
export function embeddedFaults(engine: KvEngine, restartWhy: string): StoreFaults {
  return {
    async cancelWatches() {
      engine.cancelWatches('the conformance suite cancelled it');
    },
    async restart() {
      throw notSupported(restartWhy);
    },
  };
}

/**
 * The behaviour every `KvStore` backend must share (etcd semantics). Tests only
 * use keys under a per-test prefix and revisions relative to the start, so a
 * backend may run them against a shared server.
 */
export function runKvConformance(name: string, open: () => Promise<OpenedStore>): void {
  describe(name, () => {
    let opened: OpenedStore;
    let store: KvStore;
    let p: string;
    let counter = 0;

    beforeEach(async () => {
      opened = await open();
      store = opened.store;
      p = `conformance/${process.pid}/${Date.now()}/${counter++}/`;
    });
    afterEach(async () => {
      await opened.cleanup();
    });

    describe('get, put, delete', () => {
      test('get returns undefined for a missing key', async () => {
        assert.equal(await store.get(`${p}missing`), undefined);
      });

      test('put then get returns the value with revisions and version 1', async () => {
        const start = await store.revision();
        const { revision, prevKv } = await store.put(`${p}a`, 'one');
        assert.equal(revision, start + 1);
        assert.equal(prevKv, undefined);
        assert.deepEqual(await store.get(`${p}a`), {
          key: `${p}a`,
          value: 'one',
          createRevision: revision,
          modRevision: revision,
          version: 1,
          lease: 0,
        });
        assert.equal(await store.revision(), revision);
      });

      test('a second put keeps createRevision, bumps modRevision and version, and returns prevKv', async () => {
        const first = await store.put(`${p}a`, 'one');
        const second = await store.put(`${p}a`, 'two');
        assert.equal(second.revision, first.revision + 1);
        assert.equal(second.prevKv?.value, 'one');
        assert.equal(second.prevKv?.modRevision, first.revision);
        const kv = await store.get(`${p}a`);
        assert.equal(kv?.value, 'two');
        assert.equal(kv?.createRevision, first.revision);
        assert.equal(kv?.modRevision, second.revision);
        assert.equal(kv?.version, 2);
      });

      test('every write bumps the global revision, whichever key it touches', async () => {
        const a = await store.put(`${p}a`, '1');
        const b = await store.put(`${p}b`, '1');
        const c = await store.put(`${p}a`, '2');
        assert.deepEqual([b.revision - a.revision, c.revision - b.revision], [1, 1]);
        assert.equal((await store.get(`${p}b`))?.modRevision, b.revision);
      });

      test('delete removes the key, and a later put starts again at version 1 with a new createRevision', async () => {
        await store.put(`${p}a`, '1');
        await store.put(`${p}a`, '2');
        const deleted = await store.delete(`${p}a`);
        assert.equal(deleted.deleted, 1);
        assert.equal(await store.revision(), deleted.revision);
        assert.equal(await store.get(`${p}a`), undefined);
        const again = await store.put(`${p}a`, '3');
        assert.equal(again.revision, deleted.revision + 1);
        assert.equal(again.prevKv, undefined);
        const kv = await store.get(`${p}a`);
        assert.equal(kv?.version, 1);
        assert.equal(kv?.createRevision, again.revision);
      });

      test('deleting a missing key deletes nothing and does not bump the revision', async () => {
        await store.put(`${p}a`, '1');
        const before = await store.revision();
        const result = await store.delete(`${p}missing`);
        assert.deepEqual(result, { revision: before, deleted: 0 });
        assert.equal(await store.revision(), before);
      });

      test('values are stored exactly, including empty and non-ASCII strings', async () => {
        await store.put(`${p}empty`, '');
        await store.put(`${p}unicode`, 'grüße 🌍\n"quoted"');
        assert.equal((await store.get(`${p}empty`))?.value, '');
        assert.equal((await store.get(`${p}unicode`))?.value, 'grüße 🌍\n"quoted"');
      });
    });

    describe('list and prefix delete', () => {
      test('list returns keys under the prefix in key order with the current revision', async () => {
        for (const k of ['b', 'a/2', 'a/10', 'a/1', 'c']) await store.put(`${p}${k}`, k);
        await store.put(`${p.slice(0, -1)}x`, 'outside');
        const { kvs, revision } = await store.list(`${p}a/`);
        assert.deepEqual(
          kvs.map((kv) => kv.key),
          [`${p}a/1`, `${p}a/10`, `${p}a/2`],
        );
        assert.equal(revision, await store.revision());
        assert.deepEqual(
          (await store.list(p)).kvs.map((kv) => kv.value),
          ['a/1', 'a/10', 'a/2', 'b', 'c'],
        );
      });

      test('list honours limit and returns the first keys', async () => {
        for (const k of ['d', 'a', 'c', 'b']) await store.put(`${p}${k}`, k);
        const { kvs } = await store.list(p, { limit: 2 });
        assert.deepEqual(
          kvs.map((kv) => kv.value),
          ['a', 'b'],
        );
      });

      test('countOnly counts the keys under the prefix, returns no record, and ignores limit', async () => {
        for (const k of ['a/1', 'a/2', 'a/3', 'b', '\u{1F600}']) await store.put(`${p}${k}`, k);
        await store.put(`${p.slice(0, -1)}x`, 'outside');
        const r = await store.list(`${p}a/`, { countOnly: true, limit: 1 });
        assert.deepEqual(r.kvs, []);
        assert.equal(r.count, 3);
        assert.equal(r.revision, await store.revision());
        assert.equal((await store.list(p, { countOnly: true })).count, 5);
        assert.equal((await store.list(`${p}nothing/`, { countOnly: true })).count, 0);
        await store.delete(`${p}a/2`);
        assert.equal(await countKeys(store, `${p}a/`), 2);
      });

      test('keys are ordered by their UTF-8 bytes, like etcd', async () => {
        // UTF-16 order would put the astral emoji before U+FF5E; byte order puts it after.
        for (const k of ['\u{1F600}', '\uFF5E', 'z', 'é']) await store.put(`${p}${k}`, k);
        assert.deepEqual(
          (await store.list(p)).kvs.map((kv) => kv.value),
          ['z', 'é', '\uFF5E', '\u{1F600}'],
        );
        assert.deepEqual(
          (await store.list(`${p}\u{1F600}`)).kvs.map((kv) => kv.value),
          ['\u{1F600}'],
        );
      });

      test('list of an unused prefix is empty', async () => {
        assert.deepEqual((await store.list(`${p}nothing/`)).kvs, []);
      });

      test('delete with prefix deletes every key under it in one revision and counts them', async () => {
        for (const k of ['a/1', 'a/2', 'a/3', 'b']) await store.put(`${p}${k}`, k);
        const before = await store.revision();
        const result = await store.delete(`${p}a/`, { prefix: true });
        assert.deepEqual(result, { revision: before + 1, deleted: 3 });
        assert.deepEqual(
          (await store.list(p)).kvs.map((kv) => kv.value),
          ['b'],
        );
      });

      test('delete without prefix leaves keys that merely start with the key', async () => {
        await store.put(`${p}a`, '1');
        await store.put(`${p}ab`, '2');
        assert.equal((await store.delete(`${p}a`)).deleted, 1);
        assert.equal((await store.get(`${p}ab`))?.value, '2');
      });
    });

    describe('txn', () => {
      async function holds(key: string, target: CompareTarget, op: CompareOp, value: string | number) {
        const response = await store.txn({ compare: [{ key, target, op, value }], success: [] });
        return response.succeeded;
      }

      test('compares on value with each operator', async () => {
        await store.put(`${p}k`, 'm');
        const table: [CompareOp, string, boolean][] = [
          ['=', 'm', true],
          ['=', 'n', false],
          ['!=', 'n', true],
          ['!=', 'm', false],
          ['<', 'n', true],
          ['<', 'l', false],
          ['>', 'l', true],
          ['>', 'n', false],
        ];
        for (const [op, value, expected] of table) {
          assert.equal(await holds(`${p}k`, 'value', op, value), expected, `value ${op} ${value}`);
        }
      });

      test('compares on version, createRevision and modRevision with each operator', async () => {
        const created = await store.put(`${p}k`, '1');
        const modified = await store.put(`${p}k`, '2');
        const actual: Record<Exclude<CompareTarget, 'value'>, number> = {
          version: 2,
          createRevision: created.revision,
          modRevision: modified.revision,
        };
        for (const [target, n] of Object.entries(actual) as [CompareTarget, number][]) {
          const table: [CompareOp, number, boolean][] = [
            ['=', n, true],
            ['=', n + 1, false],
            ['!=', n + 1, true],
            ['!=', n, false],
            ['<', n + 1, true],
            ['<', n, false],
            ['>', n - 1, true],
            ['>', n, false],
          ];
          for (const [op, value, expected] of table) {
            assert.equal(await holds(`${p}k`, target, op, value), expected, `${target} ${op} ${value}`);
          }
        }
      });

      test('a missing key compares as version, createRevision and modRevision 0, and fails every value compare', async () => {
        const key = `${p}missing`;
        for (const target of ['version', 'createRevision', 'modRevision'] as const) {
          assert.equal(await holds(key, target, '=', 0), true, `${target} = 0`);
          assert.equal(await holds(key, target, '<', 1), true, `${target} < 1`);
          assert.equal(await holds(key, target, '>', 0), false, `${target} > 0`);
        }
        assert.equal(await holds(key, 'value', '=', ''), false);
        assert.equal(await holds(key, 'value', '!=', 'x'), false);
      });

      test('create-if-absent: version = 0 succeeds once, then fails', async () => {
        const create = (value: string) =>
          store.txn({
            compare: [{ key: `${p}k`, target: 'version', op: '=', value: 0 }],
            success: [{ type: 'put', key: `${p}k`, value }],
            failure: [{ type: 'get', key: `${p}k` }],
          });
        const first = await create('first');
        assert.equal(first.succeeded, true);
        assert.deepEqual(first.results, [{ type: 'put' }]);
        const second = await create('second');
        assert.equal(second.succeeded, false);
        assert.equal(second.revision, first.revision);
        const [result] = second.results;
        assert.equal(result?.type, 'get');
        assert.equal(result.type === 'get' && result.kvs[0]?.value, 'first');
      });

      test('success branch runs every op in order and returns their results', async () => {
        await store.put(`${p}old/1`, 'x');
        await store.put(`${p}old/2`, 'y');
        const before = await store.revision();
        const response = await store.txn({
          compare: [{ key: `${p}old/1`, target: 'value', op: '=', value: 'x' }],
          success: [
            { type: 'put', key: `${p}new`, value: 'n' },
            { type: 'delete', key: `${p}old/`, prefix: true },
            { type: 'get', key: p, prefix: true },
          ],
          failure: [{ type: 'put', key: `${p}failed`, value: 'f' }],
        });
        assert.equal(response.succeeded, true);
        assert.equal(response.revision, before + 1);
        assert.deepEqual(response.results.slice(0, 2), [{ type: 'put' }, { type: 'delete', deleted: 2 }]);
        const get = response.results[2];
        assert.equal(get?.type, 'get');
        assert.deepEqual(get.type === 'get' && get.kvs.map((kv) => [kv.key, kv.modRevision]), [
          [`${p}new`, before + 1],
        ]);
        assert.equal(await store.get(`${p}failed`), undefined);
      });

      test('failure branch runs when any compare fails', async () => {
        await store.put(`${p}a`, '1');
        const compare: Compare[] = [
          { key: `${p}a`, target: 'value', op: '=', value: '1' },
          { key: `${p}a`, target: 'version', op: '>', value: 5 },
        ];
        const response = await store.txn({
          compare,
          success: [{ type: 'put', key: `${p}s`, value: 's' }],
          failure: [{ type: 'put', key: `${p}f`, value: 'f' }],
        });
        assert.equal(response.succeeded, false);
        assert.equal((await store.get(`${p}f`))?.value, 'f');
        assert.equal(await store.get(`${p}s`), undefined);
      });

      test('a txn that writes nothing does not bump the revision', async () => {
        await store.put(`${p}a`, '1');
        const before = await store.revision();
        const response = await store.txn({ compare: [], success: [{ type: 'get', key: `${p}a` }] });
        assert.equal(response.succeeded, true);
        assert.equal(response.revision, before);
        assert.equal(await store.revision(), before);
      });

      test("a txn's countOnly get counts the keys it matches, returns no record, beside other gets at one revision", async () => {
        for (const k of ['a/1', 'a/2', 'a/3', 'b']) await store.put(`${p}${k}`, k);
        const response = await store.txn({
          compare: [],
          success: [
            { type: 'get', key: `${p}a/`, prefix: true, countOnly: true },
            { type: 'get', key: `${p}b` },
            { type: 'get', key: `${p}b`, countOnly: true },
            { type: 'get', key: `${p}none`, countOnly: true },
            { type: 'get', key: `${p}nothing/`, prefix: true, countOnly: true },
          ],
        });
        assert.deepEqual(
          response.results.map((r) => (r.type === 'get' ? [r.kvs.length, r.count] : r.type)),
          [
            [0, 3],
            [1, undefined],
            [0, 1],
            [0, 0],
            [0, 0],
          ],
        );
        assert.equal(response.revision, await store.revision());
      });

      test('all writes of one txn share one revision', async () => {
        const before = await store.revision();
        await store.txn({
          compare: [],
          success: [
            { type: 'put', key: `${p}a`, value: '1' },
            { type: 'put', key: `${p}b`, value: '2' },
          ],
        });
        assert.equal((await store.get(`${p}a`))?.modRevision, before + 1);
        assert.equal((await store.get(`${p}b`))?.modRevision, before + 1);
        assert.equal(await store.revision(), before + 1);
      });

      test('a txn putting the same key twice is rejected as InvalidArgument', async () => {
        await assert.rejects(
          store.txn({
            compare: [],
            success: [
              { type: 'put', key: `${p}a`, value: '1' },
              { type: 'put', key: `${p}a`, value: '2' },
            ],
          }),
          (e) => isTrivisorError(e) && e.code === 'InvalidArgument',
        );
        assert.equal(await store.get(`${p}a`), undefined);
      });

      test('two concurrent compare-and-swaps on the same modRevision: exactly one wins', async () => {
        const { revision } = await store.put(`${p}counter`, '0');
        const cas = (value: string) =>
          store.txn({
            compare: [{ key: `${p}counter`, target: 'modRevision', op: '=', value: revision }],
            success: [{ type: 'put', key: `${p}counter`, value }],
          });
        const results = await Promise.all([cas('a'), cas('b')]);
        assert.equal(results.filter((r) => r.succeeded).length, 1);
        const winner = results[0]?.succeeded ? 'a' : 'b';
        const kv = await store.get(`${p}counter`);
        assert.equal(kv?.value, winner);
        assert.equal(kv?.version, 2);
      });
    });

    describe('watch', () => {
      function collect(key: string, options: Omit<WatchOptions, 'onLost'> = {}) {
        const seen: Seen[] = [];
        const watcher = store.watch(key, { ...options, onLost: failOnLost }, (events, revision) =>
          seen.push({ revision, events }),
        );
        return { seen, watcher };
      }

      test('delivers puts and deletes in revision order, one batch per revision, with prevKv', async () => {
        const { seen, watcher } = collect(p);
        try {
          const r1 = await store.put(`${p}a`, '1');
          const r2 = await store.put(`${p}a`, '2');
          const r3 = await store.delete(`${p}a`);
          await waitFor(() => seen.length >= 3);
          assert.deepEqual(
            seen.map((s) => s.revision),
            [r1.revision, r2.revision, r3.revision],
          );
          const [e1, e2, e3] = seen.map((s) => s.events);
          assert.equal(e1?.length, 1);
          assert.equal(e1?.[0]?.type, 'put');
          assert.equal(e1?.[0]?.prevKv, undefined);
          assert.deepEqual(e2?.[0]?.kv, {
            key: `${p}a`,
            value: '2',
            createRevision: r1.revision,
            modRevision: r2.revision,
            version: 2,
            lease: 0,
          });
          assert.equal(e2?.[0]?.prevKv?.value, '1');
          assert.equal(e3?.[0]?.type, 'delete');
          assert.equal(e3?.[0]?.kv.key, `${p}a`);
          assert.equal(e3?.[0]?.kv.modRevision, r3.revision);
          assert.equal(e3?.[0]?.prevKv?.value, '2');
        } finally {
          watcher.cancel();
        }
      });

      test('filters by prefix, or by exact key when prefix is false', async () => {
        const byPrefix = collect(`${p}a/`);
        const exact = collect(`${p}a`, { prefix: false });
        try {
          await store.put(`${p}a`, 'exact');
          await store.put(`${p}a/1`, 'child');
          await store.put(`${p}b/1`, 'other');
          await store.put(`${p}a/2`, 'child2');
          await waitFor(() => byPrefix.seen.length >= 2 && exact.seen.length >= 1);
          await settle();
          assert.deepEqual(
            byPrefix.seen.flatMap((s) => s.events.map((e) => e.kv.value)),
            ['child', 'child2'],
          );
          assert.deepEqual(
            exact.seen.flatMap((s) => s.events.map((e) => e.kv.value)),
            ['exact'],
          );
        } finally {
          byPrefix.watcher.cancel();
          exact.watcher.cancel();
        }
      });

      test('a txn touching several keys arrives as one batch', async () => {
        const { seen, watcher } = collect(p);
        try {
          const response = await store.txn({
            compare: [],
            success: [
              { type: 'put', key: `${p}x`, value: '1' },
              { type: 'put', key: `${p}y`, value: '2' },
            ],
          });
          await waitFor(() => seen.length >= 1);
          await settle();
          assert.equal(seen.length, 1);
          assert.equal(seen[0]?.revision, response.revision);
          assert.deepEqual(
            seen[0]?.events.map((e) => e.kv.key),
            [`${p}x`, `${p}y`],
          );
        } finally {
          watcher.cancel();
        }
      });

      test('fromRevision replays earlier events, then continues live, without gaps or duplicates', async () => {
        const r1 = await store.put(`${p}a`, '1');
        await store.put(`${p}b`, '2');
        await store.delete(`${p}a`);
        let returned = false;
        let calledBeforeReturn = false;
        const seen: Seen[] = [];
        const watcher = store.watch(
          p,
          { fromRevision: r1.revision, onLost: failOnLost },
          (events, revision) => {
            if (!returned) calledBeforeReturn = true;
            seen.push({ revision, events });
          },
        );
        returned = true;
        try {
          const r4 = await store.put(`${p}c`, '3');
          await waitFor(() => seen.length >= 4);
          await settle();
          assert.equal(calledBeforeReturn, false, 'delivery must be asynchronous');
          assert.deepEqual(
            seen.map((s) => s.revision),
            [r1.revision, r1.revision + 1, r1.revision + 2, r4.revision],
          );
          assert.deepEqual(
            seen.map((s) => `${s.events[0]?.type}:${s.events[0]?.kv.key.slice(p.length)}`),
            ['put:a', 'put:b', 'delete:a', 'put:c'],
          );
          assert.equal(seen[2]?.events[0]?.prevKv?.value, '1');
        } finally {
          watcher.cancel();
        }
      });

      test('a watch from a future revision delivers nothing before that revision', async () => {
        const now = await store.revision();
        const { seen, watcher } = collect(p, { fromRevision: now + 3 });
        try {
          await store.put(`${p}a`, '1');
          await store.put(`${p}a`, '2');
          const r3 = await store.put(`${p}a`, '3');
          await waitFor(() => seen.length >= 1);
          await settle();
          assert.deepEqual(
            seen.map((s) => s.revision),
            [r3.revision],
          );
        } finally {
          watcher.cancel();
        }
      });

      test('a watch reports progress at or past its last delivered revision: a watch from the next one delivers the rest, none twice (decision 0087)', async () => {
        const { seen, watcher } = collect(p);
        let second: ReturnType<typeof collect> | undefined;
        try {
          await store.put(`${p}a`, '1');
          const r2 = await store.put(`${p}a`, '2');
          await store.put(`${p.slice(0, -1)}-other`, 'x');
          await waitFor(() => seen.length >= 2);
          // Every backend of ours tells it (the interface lets others leave it out).
          const progress = watcher.progress?.();
          assert.ok(progress !== undefined, 'the watch reports its progress');
          // Never beyond what was written, never behind what was delivered.
          assert.ok(progress >= r2.revision, `progress ${progress} >= ${r2.revision}`);
          assert.ok(progress <= (await store.revision()));
          watcher.cancel();
          const r4 = await store.put(`${p}a`, '4');
          second = collect(p, { fromRevision: progress + 1 });
          await waitFor(() => (second?.seen.length ?? 0) >= 1);
          await settle();
          assert.deepEqual(
            second.seen.map((s) => s.revision),
            [r4.revision],
          );
        } finally {
          watcher.cancel();
          second?.watcher.cancel();
        }
      });

      test('cancel stops delivery, even of events already written', async () => {
        const { seen, watcher } = collect(p);
        await store.put(`${p}a`, '1');
        await waitFor(() => seen.length >= 1);
        const pending = store.put(`${p}a`, '2');
        watcher.cancel();
        await pending;
        await store.put(`${p}a`, '3');
        await settle();
        assert.equal(seen.length, 1);
      });

      test('a callback that writes is not re-entered: batches stay in order', async () => {
        const order: string[] = [];
        let depth = 0;
        let maxDepth = 0;
        const watcher = store.watch(p, { onLost: failOnLost }, (events) => {
          depth++;
          maxDepth = Math.max(maxDepth, depth);
          for (const e of events) {
            order.push(e.kv.value);
            if (e.kv.value === '1') void store.put(`${p}b`, '2');
          }
          depth--;
        });
        try {
          await store.put(`${p}a`, '1');
          await waitFor(() => order.length >= 2);
          assert.deepEqual(order, ['1', '2']);
          assert.equal(maxDepth, 1, 'callback re-entered');
        } finally {
          watcher.cancel();
        }
      });
    });

    describe('compaction', () => {
      test('a watch from before the compact revision reports CompactedError through onLost and delivers nothing', async () => {
        const r1 = await store.put(`${p}a`, '1');
        await store.put(`${p}a`, '2');
        const r3 = await store.put(`${p}a`, '3');
        await store.compact(r3.revision);
        let returned = false;
        let calledBeforeReturn = false;
        const lost: WatchLostError[] = [];
        const seen: Seen[] = [];
        const watcher = store.watch(
          p,
          {
            fromRevision: r1.revision,
            onLost: (e) => {
              if (!returned) calledBeforeReturn = true;
              lost.push(e);
            },
          },
          (events, revision) => seen.push({ revision, events }),
        );
        returned = true;
        try {
          await waitFor(() => lost.length >= 1);
          await store.put(`${p}a`, '4');
          await settle();
          assert.equal(calledBeforeReturn, false, 'onLost must be called asynchronously');
          assert.equal(lost.length, 1);
          const [error] = lost;
          assert.ok(isCompactedError(error), `not a CompactedError: ${String(error)}`);
          assert.equal(error.code, 'FailedPrecondition');
          assert.equal(error.reason, 'compacted');
          assert.ok(error.compactRevision >= r1.revision && error.compactRevision < r3.revision);
          assert.deepEqual(seen, [], 'a lost watch delivers nothing');
        } finally {
          watcher.cancel();
        }
      });

      test('the compact revision itself stays watchable, and keys and list are unaffected', async () => {
        await store.put(`${p}a`, '1');
        const r2 = await store.put(`${p}b`, '2');
        const r3 = await store.put(`${p}a`, '3');
        await store.compact(r2.revision);
        assert.equal((await store.get(`${p}a`))?.value, '3');
        assert.equal((await store.get(`${p}b`))?.modRevision, r2.revision);
        assert.deepEqual(
          (await store.list(p)).kvs.map((kv) => kv.value),
          ['3', '2'],
        );
        const { seen, lost, watcher } = collectAll(store, p, { fromRevision: r2.revision });
        try {
          await waitFor(() => seen.length >= 2);
          await settle();
          assert.deepEqual(described(seen, p), [`${r2.revision}:put:b`, `${r3.revision}:put:a`]);
          assert.deepEqual(lost, []);
        } finally {
          watcher.cancel();
        }
      });

      test('compacting above the current revision is InvalidArgument; at or below an earlier compaction it does nothing', async () => {
        const r1 = await store.put(`${p}a`, '1');
        const r2 = await store.put(`${p}a`, '2');
        await assert.rejects(
          store.compact(r2.revision + 1000),
          (e) => isTrivisorError(e) && e.code === 'InvalidArgument',
        );
        await store.compact(r2.revision);
        await store.compact(r2.revision);
        await store.compact(r1.revision);
        assert.equal((await store.get(`${p}a`))?.value, '2');
      });

      test('a watch that has caught up keeps delivering across a compaction', async () => {
        const { seen, lost, watcher } = collectAll(store, p);
        try {
          const r1 = await store.put(`${p}a`, '1');
          await waitFor(() => seen.length >= 1);
          await store.compact(r1.revision);
          const r2 = await store.put(`${p}a`, '2');
          await waitFor(() => seen.length >= 2);
          assert.deepEqual(described(seen, p), [`${r1.revision}:put:a`, `${r2.revision}:put:a`]);
          assert.deepEqual(lost, []);
        } finally {
          watcher.cancel();
        }
      });

      test('a watch replaying history while it is compacted delivers all of it or reports the loss, never a gap', async () => {
        const first = await store.put(`${p}k0`, '0');
        for (let i = 1; i < 30; i++) await store.put(`${p}k${i}`, String(i));
        const last = await store.revision();
        const { seen, lost, watcher } = collectAll(store, p, { fromRevision: first.revision });
        // No await between the watch and the compaction: the replay and the compaction race.
        const compacted = store.compact(first.revision + 20);
        try {
          await compacted;
          await waitFor(() => lost.length > 0 || seen.length >= 30, 5000);
          await settle();
          const revisions = seen.map((s) => s.revision);
          // Whatever arrived is the history from the start, in order, without a hole.
          assert.deepEqual(
            revisions,
            Array.from({ length: revisions.length }, (_, i) => first.revision + i),
          );
          if (lost.length === 0) {
            assert.equal(revisions.at(-1), last);
          } else {
            assert.equal(lost.length, 1);
            assert.ok(isCompactedError(lost[0]), `not a CompactedError: ${String(lost[0])}`);
            await store.put(`${p}after`, 'x');
            await settle();
            assert.equal(seen.length, revisions.length, 'nothing is delivered after onLost');
          }
        } finally {
          watcher.cancel();
        }
      });
    });

    describe('server faults', () => {
      test('a watch the server cancels is reported through onLost (reason cancelled) and delivers nothing more', async (t) => {
        const { seen, lost, watcher } = collectAll(store, p);
        try {
          const r1 = await store.put(`${p}a`, '1');
          await waitFor(() => seen.length >= 1);
          if (!(await unlessNotSupported(t, () => opened.faults.cancelWatches()))) return;
          await waitFor(() => lost.length >= 1, 5000);
          await store.put(`${p}a`, '2');
          await settle();
          assert.equal(lost.length, 1);
          assert.equal(lost[0]?.reason, 'cancelled');
          assert.equal(lost[0]?.code, 'Unavailable');
          assert.deepEqual(described(seen, p), [`${r1.revision}:put:a`]);
        } finally {
          watcher.cancel();
        }
      });

      test('across a server restart data and leases stay, writes work again, and a watch resumes without a gap or reports the loss', async (t) => {
        const lease = await store.grantLease(60);
        await store.put(`${p}leased`, 'l', { lease: lease.id });
        const { seen, lost, watcher } = collectAll(store, p);
        const written: number[] = [];
        try {
          const r1 = await store.put(`${p}a`, '1');
          await waitFor(() => seen.length >= 1);
          const restarted = await unlessNotSupported(t, () =>
            opened.faults.restart(async (other) => {
              // Written while `store`'s watch may still be reconnecting: it must replay them.
              for (const k of ['b', 'c']) written.push((await other.put(`${p}${k}`, k)).revision);
            }),
          );
          if (!restarted) return;
          const r4 = await store.put(`${p}d`, 'd');
          assert.equal((await store.get(`${p}a`))?.value, '1');
          assert.equal((await store.get(`${p}leased`))?.lease, lease.id);
          await store.keepAlive(lease.id);
          await waitFor(() => lost.length > 0 || seen.length >= 4, 10_000);
          await settle();
          if (lost.length === 0) {
            assert.deepEqual(described(seen, p), [
              `${r1.revision}:put:a`,
              `${written[0]}:put:b`,
              `${written[1]}:put:c`,
              `${r4.revision}:put:d`,
            ]);
          } else {
            // Told instead: a consumer lists again, and nothing it got before was out of order.
            assert.equal(seen[0]?.revision, r1.revision);
          }
        } finally {
          watcher.cancel();
          await store.revokeLease(lease.id).catch(() => {});
        }
      });
    });

    describe('leases', () => {
      test('grant returns a positive id and the TTL', async () => {
        const lease = await store.grantLease(5);
        assert.ok(lease.id > 0);
        assert.ok(lease.ttlSeconds >= 5);
        await store.revokeLease(lease.id);
      });

      test('put attaches a key to a lease; putting to an unknown lease is NotFound', async () => {
        const lease = await store.grantLease(30);
        await store.put(`${p}a`, '1', { lease: lease.id });
        assert.equal((await store.get(`${p}a`))?.lease, lease.id);
        await store.revokeLease(lease.id);
        await assert.rejects(store.put(`${p}b`, '1', { lease: lease.id }), isNotFound);
      });

      test('revoke deletes the attached keys in one revision, with delete events', async () => {
        const lease = await store.grantLease(30);
        await store.put(`${p}a`, '1', { lease: lease.id });
        await store.put(`${p}b`, '2', { lease: lease.id });
        await store.put(`${p}c`, '3');
        const { seen, watcher } = collectAll(store, p);
        try {
          const before = await store.revision();
          await store.revokeLease(lease.id);
          assert.equal(await store.revision(), before + 1);
          assert.equal(await store.get(`${p}a`), undefined);
          assert.equal(await store.get(`${p}b`), undefined);
          assert.equal((await store.get(`${p}c`))?.value, '3');
          await waitFor(() => seen.length >= 1);
          assert.equal(seen[0]?.revision, before + 1);
          assert.deepEqual(
            seen[0]?.events.map((e) => [e.type, e.kv.key, e.prevKv?.value]),
            [
              ['delete', `${p}a`, '1'],
              ['delete', `${p}b`, '2'],
            ],
          );
        } finally {
          watcher.cancel();
        }
      });

      test('revoking or keeping alive an unknown lease is NotFound', async () => {
        const lease = await store.grantLease(30);
        await store.revokeLease(lease.id);
        await assert.rejects(store.revokeLease(lease.id), isNotFound);
        await assert.rejects(store.keepAlive(lease.id), isNotFound);
        await assert.rejects(store.keepAlive(987_654_321), isNotFound);
      });

      test('a put without a lease detaches the key from its lease', async () => {
        const lease = await store.grantLease(30);
        await store.put(`${p}a`, '1', { lease: lease.id });
        await store.put(`${p}a`, '2');
        await store.revokeLease(lease.id);
        assert.equal((await store.get(`${p}a`))?.value, '2');
      });

      test('expiry deletes the attached keys and emits delete events', async () => {
        const lease = await store.grantLease(1);
        await store.put(`${p}a`, '1', { lease: lease.id });
        const { seen, watcher } = collectAll(store, p);
        try {
          await waitFor(async () => (await store.get(`${p}a`)) === undefined, lease.ttlSeconds * 1000 + 3000);
          await waitFor(() => seen.length >= 1);
          assert.equal(seen[0]?.events[0]?.type, 'delete');
          assert.equal(seen[0]?.events[0]?.kv.key, `${p}a`);
          await assert.rejects(store.keepAlive(lease.id), isNotFound);
        } finally {
          watcher.cancel();
        }
      });

      test('keepAlive of an expired lease says NotFound promptly, long before twice its TTL', async () => {
        const lease = await store.grantLease(2);
        const ttlMs = lease.ttlSeconds * 1000;
        const granted = Date.now();
        await store.put(`${p}a`, '1', { lease: lease.id });
        await sleep(ttlMs + 300);
        const asked = Date.now();
        await assert.rejects(store.keepAlive(lease.id), isNotFound);
        const answered = Date.now();
        assert.ok(answered - asked < 1500, `keepAlive took ${answered - asked} ms to say the lease is gone`);
        assert.ok(answered - granted < 2 * ttlMs, 'told only after twice the TTL');
        await waitFor(async () => (await store.get(`${p}a`)) === undefined, 3000);
      });

      test('keepAlive extends the lease past its TTL', async () => {
        const lease = await store.grantLease(1);
        await store.put(`${p}a`, '1', { lease: lease.id });
        const ttlMs = lease.ttlSeconds * 1000;
        const until = Date.now() + ttlMs * 2;
        while (Date.now() < until) {
          await store.keepAlive(lease.id);
          await sleep(ttlMs / 4);
        }
        assert.equal((await store.get(`${p}a`))?.value, '1');
        await store.revokeLease(lease.id);
      });
    });
  });
}

function collectAll(store: KvStore, prefix: string, options: Omit<WatchOptions, 'onLost'> = {}) {
  const seen: Seen[] = [];
  const lost: WatchLostError[] = [];
  const watcher = store.watch(prefix, { ...options, onLost: (e) => lost.push(e) }, (events, revision) =>
    seen.push({ revision, events }),
  );
  return { seen, lost, watcher };
}

/** onLost of a watch that no fault touches: being told is a failure of the backend. */
function failOnLost(error: WatchLostError): void {
  throw new Error(`watch lost unexpectedly: ${error.message}`);
}

/** Whether `fault` says the backend cannot have it; then the case is skipped with the backend's reason. */
async function unlessNotSupported(t: TestContext, fault: () => Promise<void>): Promise<boolean> {
  try {
    await fault();
    return true;
  } catch (e) {
    if (isTrivisorError(e) && e.code === 'NotSupported') {
      t.skip(e.message);
      return false;
    }
    throw e;
  }
}

/** Revisions of what a watch delivered, flattened to `revision:type:key` after the test prefix. */
function described(seen: Seen[], p: string): string[] {
  return seen.flatMap((s) => s.events.map((e) => `${s.revision}:${e.type}:${e.kv.key.slice(p.length)}`));
}

function isNotFound(e: unknown): boolean {
  return isTrivisorError(e) && e.code === 'NotFound';
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Lets any already-due deliveries arrive, so tests can assert that nothing more came. */
function settle(): Promise<void> {
  return sleep(50);
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(5);
  }
}
