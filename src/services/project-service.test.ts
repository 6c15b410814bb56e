import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { countingStore } from '../../test/fakes/counting-store.ts';
import { aGuestSpec } from '../../test/fakes/guest-records.ts';
import { makeProjectWorld, type ProjectWorld } from '../../test/fakes/project-world.ts';
import { isTrivisorError, type TrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { addUsage, assertLimitsCover, assertWithinLimits, guestUsage, NO_USAGE } from '../core/projects.ts';
import type { GuestSpec } from '../core/types.ts';
import { type KvStore, readTogether } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import {
  guestReadPath,
  guestsRead,
  indexProjectGuests,
  projectGuestReads,
  projectGuestSpecs,
} from '../store/project-guests.ts';
import { records } from '../store/records.ts';
import { createProjectService, guardedWrite, readGuard, readProject } from './project-service.ts';

async function rejectsWith(p: Promise<unknown>, code: TrivisorError['code'], re?: RegExp) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isTrivisorError(e), `expected a TrivisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  });
}

describe('quota arithmetic', () => {
  test('a change that goes over a limit is a Conflict naming the project, the usage and the key', () => {
    const config = { 'limits.guests': '4', 'limits.memory': '1GiB' };
    const before = { ...NO_USAGE, guests: 4, memoryBytes: 2 ** 29 };
    assert.throws(
      () => assertWithinLimits('p1', config, { before, after: { ...before, guests: 5 } }),
      (e: TrivisorError) =>
        e.code === 'Conflict' && /^Project p1 would use 5 guests of limits\.guests=4/.test(e.message),
    );
    assert.throws(
      () => assertWithinLimits('p1', config, { before, after: { ...before, memoryBytes: 2 ** 30 + 1 } }),
      /would use .* of memory of limits\.memory=1GiB/,
    );
  });

  test('a change that lowers or keeps a usage already over its limit passes (cleaning up is never refused)', () => {
    const config = { 'limits.guests': '1' };
    const before = { ...NO_USAGE, guests: 3 };
    assertWithinLimits('p1', config, { before, after: { ...before, guests: 2 } });
    assertWithinLimits('p1', config, { before, after: before });
  });

  test('tenths of CPUs add up without floating-point drift', () => {
    const a = guestUsage({ 'limits.cpu': '0.1' });
    const b = guestUsage({ 'limits.cpu': '0.2' });
    const sum = { ...NO_USAGE, cpus: Math.round((a.cpus + b.cpus) * 1000) / 1000 };
    assertWithinLimits('p', { 'limits.cpu': '0.3' }, { before: NO_USAGE, after: sum });
  });

  test('a limit below the usage is refused', () => {
    assert.throws(
      () => assertLimitsCover('p1', { 'limits.networks': '1' }, { ...NO_USAGE, networks: 2 }),
      /already uses 2 networks, more than limits\.networks=1/,
    );
  });
});

describe('guardedWrite', () => {
  test('a first read made stale by another write in the project meanwhile is read again before the write lands', async () => {
    const store = createMemoryStore();
    const early = readProject(store, 'default');
    await early;
    // Another create lands in the project after the early read.
    await guardedWrite(store, 'default', async () => ({
      compare: [],
      success: [{ type: 'put', key: keys.guest('a'), value: '{}' }],
    }));
    const seen: number[] = [];
    const r = await guardedWrite(
      store,
      'default',
      async (p) => {
        seen.push(Number(p.compare[0]?.value));
        return { compare: [], success: [{ type: 'put', key: keys.guest('b'), value: '{}' }] };
      },
      { firstRead: early },
    );
    assert.equal(r.succeeded, true);
    const [first, second] = seen;
    assert.equal(seen.length, 2, 'decided twice: on the early read, then on a fresh one');
    assert.equal(first, 0, 'the early read saw no project record yet');
    assert.ok(second !== undefined && second > 0, 'the fresh read saw the record the other write made');
    await store.close();
  });
});

describe('readGuard (decision 0084)', () => {
  const project = (name: string, config: Record<string, string>) =>
    records.project.at(name).putOp({ name, description: '', config, createdAt: new Date(0).toISOString() });
  const guest = (name: string, project: string, config: Record<string, string> = {}) =>
    records.guest.at(name).putOp(aGuestSpec({ name, project, config }));

  test('a project without limits is read as its record alone, whatever the number of guests', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    try {
      const ops = Array.from({ length: 10_000 }, (_, i) => guest(`g${i}`, i % 2 ? 'p1' : 'default'));
      await memory.txn({ compare: [], success: [...ops, project('p1', { 'user.owner': 'ops' })] });
      for (const name of ['default', 'p1']) {
        store.reset();
        const p = await readGuard(store, name);
        assert.deepEqual(p.usage, NO_USAGE);
        assert.ok(store.reads.records <= 1, `${name}: read ${store.reads.records} records`);
        assert.deepEqual(store.reads.lists, []);
      }
      // The same projects as `project show` reads them: every guest counted.
      assert.equal((await readProject(store, 'p1')).usage.guests, 5000);
      assert.equal((await readProject(store, 'default')).objects.length, 5000);
      await rejectsWith(readGuard(store, 'nope'), 'NotFound', /^Project nope not found/);
    } finally {
      await memory.close();
    }
  });

  test('a project with limits is read with the kinds its limits sum, and counts them as readProject does', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    try {
      await memory.txn({
        compare: [],
        success: [
          project('p1', { 'limits.guests': '10', 'limits.memory': '1GiB' }),
          project('p2', { 'limits.networks': '3' }),
          guest('a', 'p1', { 'limits.memory': '64MiB' }),
          guest('b', 'p1', { 'limits.memory': '128MiB' }),
          guest('c', 'p2'),
          guest('d', 'default'),
          records.network.at('n1').putOp({
            name: 'n1',
            project: 'p2',
            description: '',
            config: { 'ipv4.address': '198.18.60.1/24' },
            generation: 1,
            deleting: false,
            location: 'h1',
            createdAt: new Date(0).toISOString(),
          }),
        ],
      });
      store.reset();
      const p1 = await readGuard(store, 'p1');
      assert.equal(p1.usage.guests, 2);
      assert.equal(p1.usage.memoryBytes, 192 * 2 ** 20);
      assert.deepEqual(p1.objects, [], 'a guard reads part of the objects: it gives none');
      // The record (twice: alone, then with the usage at one revision) and the four guests.
      assert.equal(store.reads.records, 6);
      const p2 = await readGuard(store, 'p2');
      assert.equal(p2.usage.networks, 1);
      assert.equal((await readProject(store, 'p2')).usage.networks, 1);
      assert.equal(p2.usage.guests, 0, 'limits.networks alone sums no guest: they are not read');
    } finally {
      await memory.close();
    }
  });
});

describe("the index of a project's guests (decision 0087)", () => {
  const project = (name: string, config: Record<string, string>) =>
    records.project.at(name).putOp({ name, description: '', config, createdAt: new Date(0).toISOString() });
  const guest = (name: string, project: string) =>
    records.guest.at(name).putOp(aGuestSpec({ name, project }));
  const indexKeys = async (store: KvStore) =>
    (await store.list(keys.projectGuestPrefix)).kvs.map((kv) => kv.key.slice(keys.projectGuestPrefix.length));

  test("project show, delete and list read a project's own guests among 10,000 others, not every guest of the host", async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    const projects = createProjectService({ store });
    try {
      await memory.txn({
        compare: [],
        success: [
          ...Array.from({ length: 10_000 }, (_, i) => guest(`g${i}`, 'default')),
          project('p1', {}),
          project('p2', { 'limits.guests': '5' }),
          guest('a', 'p1'),
          guest('b', 'p1'),
          guest('c', 'p2'),
        ],
      });
      await indexProjectGuests(memory);
      store.reset();
      const p1 = await projects.get('p1');
      assert.equal(p1.usage.guests, 2);
      assert.deepEqual(p1.usedBy, ['/1.0/guests/a', '/1.0/guests/b']);
      // The record, the index's mark, two index keys and two specs (the code before: 10,003 specs).
      assert.ok(store.reads.records <= 10, `project show read ${store.reads.records} records`);
      store.reset();
      await rejectsWith(
        projects.delete('p1'),
        'FailedPrecondition',
        /holds \/1\.0\/guests\/a, \/1\.0\/guests\/b;/,
      );
      assert.ok(store.reads.records <= 10, `project delete read ${store.reads.records} records`);
      store.reset();
      assert.equal((await readGuard(store, 'p2')).usage.guests, 1);
      assert.ok(store.reads.records <= 10, `a guard with limits.guests read ${store.reads.records} records`);
      store.reset();
      assert.deepEqual(
        (await projects.list()).map((p) => [p.name, p.usage.guests]),
        [
          ['default', 10_000],
          ['p1', 2],
          ['p2', 1],
        ],
      );
      // Each guest's spec once: default's in one range read, p1's and p2's through the index (the
      // code before 0087: every guest once per project; 0087's first index: 2 × 10,003 + 13).
      assert.ok(store.reads.records <= 10_003 + 30, `project list read ${store.reads.records} records`);
    } finally {
      await memory.close();
    }
  });

  test('project show of a project with most of the guests reads every spec in one range read, not its index keys and specs by 100, and shows the same', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    const projects = createProjectService({ store });
    try {
      await memory.txn({
        compare: [],
        success: [
          ...Array.from({ length: 10_000 }, (_, i) => guest(`g${i}`, 'default')),
          project('p1', { 'limits.guests': '5' }),
          guest('a', 'p1'),
          guest('b', 'p1'),
          guest('z', 'p1'),
        ],
      });
      await indexProjectGuests(memory);
      await memory.txn({ compare: [], success: [project('default', { 'limits.guests': '20000' })] });
      // What the index path reads, for the same answer.
      const viaIndex = await projectGuestSpecs(
        memory,
        'default',
        guestsRead((await readTogether(memory, projectGuestReads('default', 'index'))).kvs, 'index'),
      );
      assert.equal(viaIndex.length, 10_000);
      assert.equal(await guestReadPath(memory, 'default'), 'all');
      assert.equal(await guestReadPath(memory, 'p1'), 'index');
      store.reset();
      const shown = await projects.get('default');
      assert.equal(shown.usage.guests, 10_000);
      assert.deepEqual(
        shown.usedBy,
        viaIndex.map((kv) => `/1.0/guests/${records.guest.nameOf(kv.key)}`),
      );
      // Two counts (no record), then the record, the mark and 10,003 specs in one transaction (the
      // index path: 10,000 keys and 10,000 specs in 101 transactions); the transaction counts
      // again, for the next read to take the path without counting first.
      assert.deepEqual(store.calls.counts, [
        keys.projectGuests('default'),
        records.guest.prefix,
        keys.projectGuests('default'),
        records.guest.prefix,
      ]);
      assert.ok(store.reads.records <= 10_003 + 5, `project show read ${store.reads.records} records`);
      assert.ok(store.calls.requests <= 3, `project show made ${store.calls.requests} read requests`);
      // A guard with limits reads so too; a small project still reads its own guests only.
      store.reset();
      assert.equal((await readGuard(store, 'default')).usage.guests, 10_000);
      assert.ok(store.reads.records <= 10_003 + 5, `a guard of default read ${store.reads.records} records`);
      store.reset();
      const p1 = await projects.get('p1');
      assert.deepEqual(p1.usedBy, ['/1.0/guests/a', '/1.0/guests/b', '/1.0/guests/z']);
      assert.ok(store.reads.records <= 10, `project show p1 read ${store.reads.records} records`);
    } finally {
      await memory.close();
    }
  });

  test('project list reads every project and what it holds in one request, each record once; the names alone read no guest', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    const projects = createProjectService({ store });
    try {
      await memory.txn({
        compare: [],
        success: [
          ...Array.from({ length: 10_000 }, (_, i) => guest(`g${i}`, 'default')),
          project('p1', {}),
          project('p2', { 'limits.guests': '5' }),
          guest('a', 'p1'),
          guest('b', 'p1'),
          guest('c', 'p2'),
        ],
      });
      await indexProjectGuests(memory);
      // What each project shows on its own: the list must show the same.
      const each = [await projects.get('default'), await projects.get('p1'), await projects.get('p2')];
      store.reset();
      const listed = await projects.list();
      assert.deepEqual(listed, each);
      // Two project records and 10,003 specs in one transaction (the code before: a read or more
      // per project, 10,016 records in 12 requests).
      assert.equal(store.calls.requests, 1, `project list made ${store.calls.requests} read requests`);
      assert.ok(store.reads.records <= 10_003 + 2, `project list read ${store.reads.records} records`);
      store.reset();
      assert.deepEqual(await projects.names(), ['default', 'p1', 'p2']);
      assert.deepEqual(store.reads, { records: 2, lists: [records.project.prefix] });
    } finally {
      await memory.close();
    }
  });

  test('a guard of a project with limits reads in one request once it knows them: the counts ride in its read (decision 0084)', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    try {
      await memory.txn({
        compare: [],
        success: [
          ...Array.from({ length: 10_000 }, (_, i) => guest(`g${i}`, 'default')),
          project('p2', { 'limits.guests': '5' }),
          guest('c', 'p2'),
        ],
      });
      await indexProjectGuests(memory);
      // The first guard of the project in this process: its record, two counts, then the read.
      assert.equal((await readGuard(store, 'p2')).usage.guests, 1);
      for (let i = 0; i < 3; i++) {
        store.reset();
        assert.equal((await readGuard(store, 'p2')).usage.guests, 1);
        // One transaction (record, mark, counts, index keys) and one of the guest's spec by key (the
        // code before: a get of the record, two count requests, the transaction, the specs).
        assert.ok(store.calls.requests <= 2, `a guard made ${store.calls.requests} read requests`);
        assert.deepEqual(store.reads.lists, []);
        assert.ok(store.reads.records <= 5, `a guard read ${store.reads.records} records`);
      }
      // Its limit removed meanwhile: the next guard reads what the limit counted once, answers
      // right, and the one after reads the record alone.
      await memory.txn({ compare: [], success: [project('p2', {})] });
      const after = await readGuard(store, 'p2');
      assert.deepEqual(after.spec.config, {});
      store.reset();
      assert.deepEqual((await readGuard(store, 'p2')).usage, NO_USAGE);
      assert.equal(store.calls.requests, 1);
      assert.ok(store.reads.records <= 1);
      // A limit set again is read as on a first guard.
      await memory.txn({ compare: [], success: [project('p2', { 'limits.guests': '5' })] });
      assert.equal((await readGuard(store, 'p2')).usage.guests, 1);
    } finally {
      await memory.close();
    }
  });

  test('a path chosen by an earlier read that is no longer the cheaper one still counts right, and the read takes the cheaper one', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    try {
      await memory.txn({
        compare: [],
        success: [
          ...Array.from({ length: 1000 }, (_, i) => guest(`g${i}`, 'default')),
          project('p1', { 'limits.guests': '100000' }),
          ...Array.from({ length: 10 }, (_, i) => guest(`p${i}`, 'p1')),
        ],
      });
      await indexProjectGuests(memory);
      assert.equal((await readGuard(store, 'p1')).usage.guests, 10, 'the index path');
      // p1 grows to most of the store's guests, each with its index key as a create writes it.
      await memory.txn({
        compare: [],
        success: Array.from({ length: 3000 }, (_, i) => [
          guest(`q${i}`, 'p1'),
          { type: 'put' as const, key: keys.projectGuest('p1', `q${i}`), value: '' },
        ]).flat(),
      });
      store.reset();
      assert.equal((await readGuard(store, 'p1')).usage.guests, 3010);
      // The read on the old path found the index keys, its counts said every spec in one range
      // read is cheaper than 31 reads of specs by key: it read so again (3 requests, not 32).
      assert.ok(store.calls.requests <= 3, `the guard made ${store.calls.requests} read requests`);
      store.reset();
      assert.equal((await readGuard(store, 'p1')).usage.guests, 3010);
      assert.equal(store.calls.requests, 1, 'the next guard takes that path at once');
      // Back to a few guests of many: a guard that read every spec counts right, then the index.
      await memory.delete(records.guest.key('q'), { prefix: true });
      await memory.delete(keys.projectGuest('p1', 'q'), { prefix: true });
      assert.equal((await readGuard(store, 'p1')).usage.guests, 10);
      store.reset();
      assert.equal((await readGuard(store, 'p1')).usage.guests, 10);
      assert.ok(store.reads.records <= 25, `a guard of 10 guests read ${store.reads.records} records`);
    } finally {
      await memory.close();
    }
  });

  test('the backfill indexes a store made before the index, drops stale keys, and runs once', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    try {
      await memory.txn({
        compare: [],
        success: [
          ...Array.from({ length: 1000 }, (_, i) => guest(`g${i}`, i % 2 ? 'p1' : 'default')),
          project('p1', {}),
          // A key of a guest that is gone, and one under a project its guest is not in.
          { type: 'put', key: keys.projectGuest('p1', 'gone'), value: '' },
          { type: 'put', key: keys.projectGuest('p1', 'g0'), value: '' },
        ],
      });
      // Not indexed yet: every guest is read, and counted right.
      assert.equal((await readProject(store, 'p1')).usage.guests, 500);
      assert.ok(store.reads.lists.includes(records.guest.prefix));
      assert.deepEqual(await indexProjectGuests(memory), {
        added: 1000,
        dropped: 2,
        recount: 'unmarked',
        guests: 1000,
        keys: 2,
      });
      const indexed = await indexKeys(memory);
      assert.equal(indexed.length, 1000);
      assert.ok(indexed.includes('default/g0') && indexed.includes('p1/g1') && !indexed.includes('p1/g0'));
      assert.equal((await readProject(store, 'p1')).usage.guests, 500);
      store.reset();
      assert.deepEqual(await indexProjectGuests(store), { added: 0, dropped: 0, guests: 1000, keys: 1000 });
      assert.deepEqual(store.reads, { records: 1, lists: [] }, 'a store indexed already: its mark alone');
      assert.equal(store.calls.requests, 1, 'and two counts in the same request');
    } finally {
      await memory.close();
    }
  });

  test('a guest made without its index key (a member running a daemon from before the index) is found by the next check and indexed; readers read every guest meanwhile', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    try {
      await memory.txn({
        compare: [],
        success: [
          project('p1', { 'limits.guests': '3' }),
          ...Array.from({ length: 3 }, (_, i) => guest(`a${i}`, 'p1')),
          ...Array.from({ length: 20 }, (_, i) => guest(`g${i}`, 'default')),
        ],
      });
      await indexProjectGuests(memory);
      // An older daemon's create: the spec alone. The index now under-counts p1, which would let
      // its quota be passed.
      await memory.put(keys.guest('old'), JSON.stringify(aGuestSpec({ name: 'old', project: 'p1' })));
      assert.equal((await readGuard(store, 'p1')).usage.guests, 3, 'the index does not know it');
      // The check (every member's, at start and every minute) counts one key fewer than guests.
      let duringRecount: number | undefined;
      const watching = new Proxy(memory, {
        get(target, prop) {
          if (prop === 'txn') {
            return async (request: Parameters<KvStore['txn']>[0]) => {
              // While it indexes, the mark is gone: a guard reads every guest and counts the old one.
              if (request.compare.length > 0 && duringRecount === undefined) {
                duringRecount = (await readGuard(target, 'p1')).usage.guests;
              }
              return target.txn(request);
            };
          }
          const value = Reflect.get(target, prop, target);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      }) as KvStore;
      assert.deepEqual(await indexProjectGuests(watching), {
        added: 1,
        dropped: 0,
        recount: 'short',
        guests: 24,
        keys: 23,
      });
      assert.equal(duringRecount, 4);
      assert.ok(await memory.get(keys.projectGuest('p1', 'old')));
      assert.equal((await readGuard(store, 'p1')).usage.guests, 4);
      // Whole again: the next check is one request.
      store.reset();
      assert.deepEqual(await indexProjectGuests(store), { added: 0, dropped: 0, guests: 24, keys: 24 });
      assert.equal(store.calls.requests, 1);
      // A spec that does not decode gets no key: it is not counted as missing at every check.
      await memory.put(keys.guest('broken'), '{not json');
      assert.equal((await indexProjectGuests(memory)).recount, 'short');
      assert.equal((await indexProjectGuests(memory)).recount, undefined);
    } finally {
      await memory.close();
    }
  });

  test('a guest deleted while the backfill runs is not indexed', async () => {
    const memory = createMemoryStore();
    try {
      await memory.txn({
        compare: [],
        success: Array.from({ length: 200 }, (_, i) => guest(`g${i}`, 'default')),
      });
      let raced = false;
      // The controller's delete lands between the backfill's read and its first batch.
      const racing = new Proxy(memory, {
        get(target, prop) {
          if (prop === 'txn') {
            return async (request: Parameters<KvStore['txn']>[0]) => {
              if (!raced && request.compare.length > 0) {
                raced = true;
                await target.delete(keys.guest('g7'));
              }
              return target.txn(request);
            };
          }
          const value = Reflect.get(target, prop, target);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      }) as KvStore;
      await indexProjectGuests(racing);
      const indexed = await indexKeys(memory);
      assert.equal(indexed.length, 199);
      assert.ok(!indexed.includes('default/g7'));
      assert.ok(await memory.get(keys.projectGuestsIndexed));
    } finally {
      await memory.close();
    }
  });
});

describe('projects and quotas over the real services', () => {
  let w: ProjectWorld;
  beforeEach(async () => {
    w = await makeProjectWorld();
  });
  afterEach(async () => {
    await w.stop();
  });
  const guestsIn = async (project: string) =>
    (await w.store.list(keys.guestPrefix)).kvs
      .map((kv) => JSON.parse(kv.value) as GuestSpec)
      .filter((g) => (g.project ?? 'default') === project)
      .map((g) => g.name)
      .sort();

  test('twenty concurrent creates against limits.guests=5: exactly five land, the rest are 409s that left nothing', async () => {
    const { projects, guests } = w.services;
    await projects.create({ name: 'p1', config: { 'limits.guests': '5' } });
    const scoped = guests.inProject('p1');
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => scoped.create({ name: `g${i}`, image: 'busybox' })),
    );
    const landed = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    assert.equal(landed.length, 5);
    assert.equal(refused.length, 15);
    for (const r of refused) {
      const e = (r as PromiseRejectedResult).reason as TrivisorError;
      assert.equal(e.code, 'Conflict', e.message);
      assert.match(e.message, /^Project p1 would use 6 guests of limits\.guests=5/);
    }
    assert.equal((await guestsIn('p1')).length, 5);
    for (const op of landed)
      await w.services.operations.wait((op as PromiseFulfilledResult<{ id: string }>).value.id);
    assert.equal((await projects.get('p1')).usage.guests, 5);
  });

  test('a limit set after a create read its project without limits is seen before the create lands (decision 0084)', async () => {
    const { projects, guests, operations } = w.services;
    await projects.create({ name: 'p1' });
    await operations.wait((await guests.inProject('p1').create({ name: 'a', image: 'busybox' })).id);
    const early = await readGuard(w.store, 'p1');
    assert.equal(early.usage.guests, 0, 'no limit: nothing counted');
    await projects.update('p1', { set: { 'limits.guests': '1' } });
    const decided: number[] = [];
    await rejectsWith(
      guardedWrite(
        w.store,
        'p1',
        async (p) => {
          decided.push(p.usage.guests);
          assertWithinLimits('p1', p.spec.config, {
            before: p.usage,
            after: addUsage(p.usage, guestUsage({})),
          });
          return {
            compare: [],
            success: [records.guest.at('b').putOp(aGuestSpec({ name: 'b', project: 'p1' }))],
          };
        },
        { firstRead: Promise.resolve(early) },
      ),
      'Conflict',
      /^Project p1 would use 2 guests of limits\.guests=1/,
    );
    assert.deepEqual(decided, [0, 1], 'decided on the early read, then on a fresh one that counted');
    assert.deepEqual(await guestsIn('p1'), ['a']);
  });

  test('creates racing a first limit on their project: once the limit is set, the project never holds more (decision 0084)', async () => {
    const { projects, guests, operations } = w.services;
    for (let round = 0; round < 5; round++) {
      const name = `q${round}`;
      await projects.create({ name });
      const scoped = guests.inProject(name);
      const creates = Array.from({ length: 8 }, (_, i) =>
        scoped.create({ name: `${name}g${i}`, image: 'busybox' }),
      );
      const limit = projects.update(name, { set: { 'limits.guests': '3' } });
      const [set, ...made] = await Promise.allSettled([limit, ...creates]);
      const held = (await guestsIn(name)).length;
      if (set?.status === 'fulfilled') {
        assert.ok(held <= 3, `round ${round}: the limit landed and the project holds ${held} guests`);
      } else {
        assert.match(String(set?.reason?.message), /already uses \d+ guests, more than limits\.guests=3/);
      }
      for (const r of made) {
        if (r.status === 'fulfilled') await operations.wait(r.value.id);
        else assert.equal((r.reason as TrivisorError).code, 'Conflict', String(r.reason));
      }
    }
  });

  test('concurrent network creates against limits.networks=1: one lands', async () => {
    await w.services.projects.create({ name: 'p1', config: { 'limits.networks': '1' } });
    const nets = w.services.networks!.inProject('p1');
    const results = await Promise.allSettled(
      [1, 2, 3, 4].map((i) =>
        nets.create({ name: `n${i}`, config: { 'ipv4.address': `198.18.${40 + i}.1/24` } }),
      ),
    );
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    for (const r of results.filter((x) => x.status === 'rejected')) {
      assert.match(
        String((r as PromiseRejectedResult).reason.message),
        /would use 2 networks of limits\.networks=1/,
      );
    }
    assert.equal((await nets.list()).length, 1);
  });

  test('limits.memory: a guest must set limits.memory, the sum is held, and raising one past it is refused with its config unchanged', async () => {
    const { projects, guests, operations } = w.services;
    await projects.create({ name: 'p1', config: { 'limits.memory': '256MiB' } });
    const p1 = guests.inProject('p1');
    await rejectsWith(
      p1.create({ name: 'a', image: 'busybox' }),
      'InvalidArgument',
      /set limits\.memory on the guest/,
    );
    await operations.wait(
      (await p1.create({ name: 'a', image: 'busybox', config: { 'limits.memory': '128MiB' } })).id,
    );
    await rejectsWith(
      p1.create({ name: 'b', image: 'busybox', config: { 'limits.memory': '200MiB' } }),
      'Conflict',
      /Project p1 would use 328MiB of memory of limits\.memory=256MiB/,
    );
    const before = await w.store.get(keys.guest('a'));
    await rejectsWith(
      p1.updateConfig('a', { set: { 'limits.memory': '512MiB' } }),
      'Conflict',
      /would use 512MiB of memory of limits\.memory=256MiB/,
    );
    assert.equal((await w.store.get(keys.guest('a')))?.modRevision, before?.modRevision);
    await rejectsWith(
      p1.updateConfig('a', { unset: ['limits.memory'] }),
      'InvalidArgument',
      /set limits\.memory/,
    );
    const ok = await p1.updateConfig('a', { set: { 'limits.memory': '256MiB' } });
    assert.equal(ok.guest.config['limits.memory'], '256MiB');
    assert.equal((await guestsIn('p1')).join(), 'a');
  });

  test('limits.disk counts custom volumes; a refused volume create leaves no file', async () => {
    await w.services.projects.create({ name: 'p1', config: { 'limits.disk': '1GiB' } });
    const vols = w.services.volumes!.inProject('p1');
    await vols.create('default', { name: 'v1', config: { size: '768MiB' } });
    await rejectsWith(
      vols.create('default', { name: 'v2', config: { size: '512MiB' } }),
      'Conflict',
      /would use 1\.3GiB of disk of limits\.disk=1GiB/,
    );
    await rejectsWith(
      vols.update('default', 'v1', { config: { size: '2GiB' } }),
      'Conflict',
      /limits\.disk=1GiB/,
    );
    assert.deepEqual(w.volumeCalls, ['create v1']);
    assert.equal((await vols.get('default', 'v1')).sizeBytes, 768 * 2 ** 20);
  });

  test('project set refuses a limit below the usage, and limits.memory while a guest has none', async () => {
    const { projects, guests, operations } = w.services;
    await projects.create({ name: 'p1' });
    const p1 = guests.inProject('p1');
    await operations.wait((await p1.create({ name: 'a', image: 'busybox' })).id);
    await operations.wait((await p1.create({ name: 'b', image: 'busybox' })).id);
    await rejectsWith(
      projects.update('p1', { set: { 'limits.guests': '1' } }),
      'Conflict',
      /already uses 2 guests, more than limits\.guests=1/,
    );
    await rejectsWith(
      projects.update('p1', { set: { 'limits.memory': '1GiB' } }),
      'FailedPrecondition',
      /Guest a of project p1 has no limits\.memory/,
    );
    const p = await projects.update('p1', { set: { 'limits.guests': '2' } });
    assert.equal(p.config['limits.guests'], '2');
    assert.deepEqual(p.usage, { guests: 2, memoryBytes: 0, cpus: 0, diskBytes: 0, networks: 0 });
  });

  test('a project that holds anything cannot be deleted; default never; an empty one can', async () => {
    const { projects, guests, operations } = w.services;
    await projects.create({ name: 'p1' });
    await operations.wait((await guests.inProject('p1').create({ name: 'a', image: 'busybox' })).id);
    // The create indexed it under its project; the controller's delete drops that key (decision 0087).
    assert.ok(await w.store.get(keys.projectGuest('p1', 'a')));
    await rejectsWith(
      projects.delete('p1'),
      'FailedPrecondition',
      /Project p1 is not empty: it holds \/1\.0\/guests\/a/,
    );
    await rejectsWith(projects.delete('default'), 'FailedPrecondition', /default cannot be deleted/);
    await operations.wait((await guests.inProject('p1').delete('a')).id);
    await waitUntil(async () => (await w.store.get(keys.guest('a'))) === undefined);
    assert.equal(await w.store.get(keys.projectGuest('p1', 'a')), undefined);
    await projects.delete('p1');
    await rejectsWith(projects.get('p1'), 'NotFound', /Project p1 not found/);
    await rejectsWith(
      guests.inProject('p1').create({ name: 'x', image: 'busybox' }),
      'NotFound',
      /Project p1/,
    );
  });

  test('a create racing the delete of its project never lands in a deleted project', async () => {
    const { projects, guests } = w.services;
    for (let round = 0; round < 10; round++) {
      await projects.create({ name: `r${round}` });
      const [created, deleted] = await Promise.allSettled([
        guests.inProject(`r${round}`).create({ name: `x${round}`, image: 'busybox' }),
        projects.delete(`r${round}`),
      ]);
      const projectExists = (await w.store.get(keys.project(`r${round}`))) !== undefined;
      const guestExists = (await w.store.get(keys.guest(`x${round}`))) !== undefined;
      assert.ok(!(guestExists && !projectExists), `round ${round}: a guest in a deleted project`);
      assert.equal(created.status === 'fulfilled', guestExists);
      assert.equal(deleted.status === 'fulfilled', !projectExists);
    }
  });

  test("guests recorded before projects (no project field) are default's, counted and listed, with no migration step", async () => {
    const { projects, guests } = w.services;
    // A whole guest record as a daemon before projects wrote it: every field but the project.
    const old = {
      name: 'legacy',
      model: 'ct',
      image: 'x',
      imageAlias: 'x',
      config: {},
      desired: 'Stopped',
      generation: 1,
      restartRequest: 0,
      stopTimeoutMs: 30_000,
      stopForce: false,
      deleting: false,
      location: 'h1',
      createdAt: new Date(0).toISOString(),
    } as unknown as GuestSpec;
    // A store from before the index of projects' guests, too: counted before and after the backfill.
    await w.store.delete(keys.projectGuestsIndexed);
    await w.store.put(keys.guest('legacy'), JSON.stringify(old));
    assert.equal((await projects.get('default')).usage.guests, 1);
    assert.deepEqual(await indexProjectGuests(w.store), {
      added: 1,
      dropped: 0,
      recount: 'unmarked',
      guests: 1,
      keys: 0,
    });
    assert.ok(await w.store.get(keys.projectGuest('default', 'legacy')));
    assert.equal((await projects.get('default')).usage.guests, 1);
    assert.deepEqual(
      (await guests.inProject('default').list()).map((g) => g.name),
      ['legacy'],
    );
    await projects.create({ name: 'p1' });
    assert.deepEqual(await guests.inProject('p1').list(), []);
    await rejectsWith(guests.inProject('p1').get('legacy'), 'NotFound', /^Guest legacy not found$/);
  });

  test("names are the host's: a name taken in another project is refused saying so, naming no project", async () => {
    const { projects, guests, operations } = w.services;
    await projects.create({ name: 'p1' });
    await projects.create({ name: 'p2' });
    await operations.wait((await guests.inProject('p1').create({ name: 'web', image: 'busybox' })).id);
    await rejectsWith(
      guests.inProject('p2').create({ name: 'web', image: 'busybox' }),
      'AlreadyExists',
      /^The name web is taken by a guest of another project: guest names are unique on this host, pick another$/,
    );
    await rejectsWith(
      guests.inProject('p1').create({ name: 'web', image: 'busybox' }),
      'AlreadyExists',
      /^Guest web already exists$/,
    );
  });
});

async function waitUntil(condition: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
