import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec } from '../core/types.ts';
import { createMemoryStore } from './memory-store.ts';
import { records, valuesOf } from './records.ts';

const spec = (name: string): GuestSpec => ({
  name,
  project: 'p1',
  model: 'ct',
  image: 'ab'.repeat(32),
  imageAlias: 'busybox',
  config: { 'limits.memory': '64MiB' },
  desired: 'Stopped',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 30_000,
  stopForce: false,
  deleting: false,
  location: 'h1',
  createdAt: new Date(0).toISOString(),
  devices: {
    eth0: { type: 'nic', network: 'lab', hwaddr: '02:00:00:00:00:01', 'ipv4.address': '198.18.0.2' },
  },
});

const internal = (pattern: RegExp) => (e: unknown) =>
  isTrivisorError(e) && e.code === 'Internal' && pattern.test(e.message);

describe('records', () => {
  test('what is written is read back typed, at the key keys.ts defines', async () => {
    const store = createMemoryStore();
    await records.guest.at('web1').put(store, spec('web1'));
    assert.ok(await store.get(keys.guest('web1')));
    const got = await records.guest.at('web1').get(store);
    assert.deepEqual(got?.value, spec('web1'));
    assert.equal(records.guest.nameOf(got?.key ?? ''), 'web1');
    assert.equal(await records.guest.at('nope').get(store), undefined);
  });

  test('decode migrates old shapes: a record from before projects is default’s, `host` is `location`', async () => {
    const store = createMemoryStore();
    const { project: _, location: __, ...old } = spec('old1');
    await store.put(keys.guest('old1'), JSON.stringify({ ...old, host: 'h9' }));
    const decoded = (await records.guest.at('old1').get(store))?.value;
    assert.equal(decoded?.project, 'default');
    assert.equal(decoded?.location, 'h9');
    assert.equal('host' in (decoded ?? {}), false);
    await store.put(
      keys.storageVolume('default', 'v1'),
      JSON.stringify({
        name: 'v1',
        pool: 'default',
        type: 'block',
        sizeBytes: 1,
        description: '',
        createdAt: '',
      }),
    );
    assert.equal((await records.volume.at('default', 'v1').get(store))?.value.project, 'default');
  });

  test('a record that is not valid is Internal naming its key, never taken for a valid one', async () => {
    const store = createMemoryStore();
    await store.put(keys.guest('bad1'), '{not json');
    await assert.rejects(
      records.guest.at('bad1').get(store),
      internal(/guest \/trivisor\/guests\/bad1 is not JSON/),
    );
    await store.put(keys.guest('bad2'), JSON.stringify({ ...spec('bad2'), generation: 'one' }));
    await assert.rejects(records.guest.at('bad2').get(store), internal(/bad2 is not valid \(\/generation/));
    await store.put(keys.guest('bad3'), JSON.stringify({ ...spec('bad3'), model: 'lxc' }));
    await assert.rejects(records.guest.at('bad3').get(store), internal(/bad3 is not valid \(\/model/));
    await store.put(keys.guest('bad4'), '[1,2]');
    await assert.rejects(records.guest.at('bad4').get(store), internal(/bad4 is not an object/));
  });

  test('a list keeps what decodes and names what does not', async () => {
    const store = createMemoryStore();
    await records.guest.at('a').put(store, spec('a'));
    await store.put(keys.guest('b'), '{}');
    await records.guest.at('c').put(store, spec('c'));
    const list = await records.guest.list(store);
    assert.deepEqual(
      valuesOf(list).map((g) => g.name),
      ['a', 'c'],
    );
    assert.equal(list.malformed.length, 1);
    assert.equal(list.malformed[0]?.key, keys.guest('b'));
    assert.ok(list.revision > 0);
  });

  test('fields a newer version added are kept, not refused', async () => {
    const store = createMemoryStore();
    await store.put(keys.guest('new1'), JSON.stringify({ ...spec('new1'), affinity: { why: 'memory' } }));
    const got = await records.guest.at('new1').get(store);
    assert.ok(got);
    assert.deepEqual((got.value as unknown as { affinity: unknown }).affinity, { why: 'memory' });
  });

  test('a list narrowed by its scope: one guest’s snapshots, one pool’s volumes', async () => {
    const store = createMemoryStore();
    for (const [guest, name] of [
      ['g1', 's1'],
      ['g1', 's2'],
      ['g10', 's1'],
    ] as const) {
      await records.snapshot.at(guest, name).put(store, { name, guest, createdAt: '', wasRunning: false });
    }
    assert.deepEqual(
      valuesOf(await records.snapshot.list(store, 'g1')).map((s) => `${s.guest}/${s.name}`),
      ['g1/s1', 'g1/s2'],
    );
    assert.equal((await records.snapshot.list(store)).items.length, 3);
  });

  test('put with ifModRevision is a compare-and-swap: the loser gets Conflict and writes nothing', async () => {
    const store = createMemoryStore();
    const ref = records.project.at('p1');
    const first = { name: 'p1', description: 'a', config: {}, createdAt: '' };
    await ref.put(store, first, { ifModRevision: 0 });
    await assert.rejects(
      ref.put(store, { ...first, description: 'b' }, { ifModRevision: 0 }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Conflict',
    );
    const read = await ref.get(store);
    assert.equal(read?.value.description, 'a');
    await ref.put(store, { ...first, description: 'c' }, { ifModRevision: read?.modRevision ?? -1 });
    assert.equal((await ref.get(store))?.value.description, 'c');
  });

  test('transaction pieces: absent, unchanged, putOp, deleteOp', async () => {
    const store = createMemoryStore();
    const ref = records.storagePending.at('g1');
    const r1 = await store.txn({ compare: [ref.absent()], success: [ref.putOp({ kind: 'copy' })] });
    assert.ok(r1.succeeded);
    const r2 = await store.txn({ compare: [ref.absent()], success: [ref.putOp({ kind: 'import' })] });
    assert.ok(!r2.succeeded);
    const now = await ref.get(store);
    assert.equal(now?.value.kind, 'copy');
    const r3 = await store.txn({
      compare: [ref.unchanged(now?.modRevision ?? 0)],
      success: [ref.deleteOp()],
    });
    assert.ok(r3.succeeded);
    assert.equal(await ref.get(store), undefined);
  });

  test('an image alias is a bare fingerprint, not JSON', async () => {
    const store = createMemoryStore();
    await records.imageAlias.at('busybox').put(store, 'ab'.repeat(32));
    assert.equal((await store.get(keys.imageAlias('busybox')))?.value, 'ab'.repeat(32));
    assert.equal((await records.imageAlias.at('busybox').get(store))?.value, 'ab'.repeat(32));
    await store.put(keys.imageAlias('odd'), '');
    await assert.rejects(records.imageAlias.at('odd').get(store), internal(/odd is not valid/));
  });
});
