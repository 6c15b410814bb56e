import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aGuestSpec } from '../../../test/fakes/guest-records.ts';
import type { GuestSpec } from '../../core/types.ts';
import { createMemoryStore } from '../../store/memory-store.ts';
import { records } from '../../store/records.ts';
import { handOverOf, readHaWorld, recordUpkeep, storedPart, txnOf } from './ha-store.ts';
import { haKeys } from './types.ts';

const spec = (
  name: string,
  location: string,
  config: Record<string, string> = { 'ha.enabled': 'true' },
): GuestSpec => aGuestSpec({ name, location, config, generation: 3 });

test('the bookkeeping records an HA guest under its member token, drops the record of a guest no longer HA or gone, and follows a move', async () => {
  const store = createMemoryStore();
  try {
    const lease = await store.grantLease(60);
    await store.put(haKeys.heartbeat('m1'), JSON.stringify({ member: 'm1' }), { lease: lease.id });
    await store.put(haKeys.heartbeat('m2'), JSON.stringify({ member: 'm2' }), { lease: lease.id });
    await store.put(haKeys.crm, JSON.stringify({ member: 'm1', token: 1 }), { lease: lease.id });
    await records.guest.at('new').put(store, spec('new', 'm1'));
    await records.guest.at('plain').put(store, spec('plain', 'm1', {}));
    await records.guest.at('moved').put(store, spec('moved', 'm2'));
    const rec = (name: string, owner: string, token: number) =>
      JSON.stringify({ name, owner, token, decidedAt: 1, failures: 2, failedOn: ['m3'] });
    await store.put(haKeys.guest('plain'), rec('plain', 'm1', 1));
    await store.put(haKeys.guest('gone'), rec('gone', 'm1', 1));
    await store.put(haKeys.guest('moved'), rec('moved', 'm1', 1));

    const read = await readHaWorld(store);
    const specs = new Map([...read.specs, ['new', { ...(await records.guest.at('new').get(store))! }]]);
    const world = { ...read, specs };
    assert.ok(world.lock);
    for (const t of recordUpkeep(world, world.lock)) assert.equal((await store.txn(t)).succeeded, true);

    const after = await readHaWorld(store);
    const byName = new Map(after.guests.map((g) => [g.value.name, g.value]));
    assert.deepEqual([...byName.keys()].sort(), ['moved', 'new']);
    const m1Token = (await store.get(haKeys.heartbeat('m1')))?.createRevision;
    const m2Token = (await store.get(haKeys.heartbeat('m2')))?.createRevision;
    assert.equal(byName.get('new')?.owner, 'm1');
    assert.equal(byName.get('new')?.token, m1Token);
    // The mover took it to m2: the record follows, with m2's token and its failures forgotten.
    assert.equal(byName.get('moved')?.owner, 'm2');
    assert.equal(byName.get('moved')?.token, m2Token);
    assert.equal(byName.get('moved')?.failures, 0);

    // A CRM that is no longer elected writes nothing.
    await store.delete(haKeys.crm);
    await records.guest.at('late').put(store, spec('late', 'm1'));
    const stale = await readHaWorld(store);
    const late = { ...stale, specs: new Map([['late', (await records.guest.at('late').get(store))!]]) };
    for (const t of recordUpkeep(late, world.lock)) assert.equal((await store.txn(t)).succeeded, false);
  } finally {
    await store.close();
  }
});

test("a guest given to another member moves its spec, location, status and snapshots' records in the same transaction, compared on the spec as read", async () => {
  const store = createMemoryStore();
  try {
    await records.guest.at('g').put(store, spec('g', 'm1'));
    await records.guestLocation.at('g').put(store, 'm1');
    await store.put(
      haKeys.guest('g'),
      JSON.stringify({ name: 'g', owner: 'm1', token: 5, decidedAt: 1, failures: 0, failedOn: [] }),
    );
    const world = await readHaWorld(store);
    const g = world.guests[0];
    assert.ok(g);
    const write = {
      compare: [
        { key: haKeys.guest('g'), target: 'modRevision' as const, op: '=' as const, value: g.modRevision },
      ],
      put: { key: haKeys.guest('g'), value: { ...g.value, owner: 'm2', token: 9 } },
    };
    assert.deepEqual(handOverOf(write, world), { guest: 'g', to: 'm2' });
    const snap = records.snapshot.at('g', 's1').putOp({
      name: 's1',
      guest: 'g',
      createdAt: new Date().toISOString(),
      wasRunning: true,
      location: 'm2',
    });
    assert.equal((await store.txn(txnOf(write, world, undefined, [snap]))).succeeded, true);
    const moved = await records.guest.at('g').get(store);
    assert.equal(moved?.value.location, 'm2');
    assert.equal(moved?.value.generation, 4);
    assert.equal(moved?.value.desired, 'Running');
    assert.equal((await records.guestLocation.at('g').get(store))?.value, 'm2');
    assert.equal((await records.guestStatus.at('g').get(store))?.value.provisioned, true);
    assert.equal((await records.snapshot.at('g', 's1').get(store))?.value.location, 'm2');
    // Only what HA decides is kept in the record; the rest is read from the spec.
    assert.deepEqual(
      JSON.parse((await store.get(haKeys.guest('g')))?.value ?? ''),
      storedPart({ ...g.value, owner: 'm2', token: 9 }),
    );

    // The same write on a spec changed since it was read: refused, nothing written.
    await records.guest.at('g').put(store, { ...(moved?.value as GuestSpec), desired: 'Stopped' });
    const again = { ...write, compare: [] };
    assert.equal((await store.txn(txnOf(again, world))).succeeded, false);
  } finally {
    await store.close();
  }
});

test('a guest the CRM gives away wanting it started though its spec says Stopped (a cold move stopped it, decision 0108) is wanted Running on its new member; one stopped by its administrator stays Stopped', async () => {
  for (const want of ['started', 'stopped'] as const) {
    const store = createMemoryStore();
    try {
      await records.guest.at('g').put(store, { ...spec('g', 'm1'), desired: 'Stopped' });
      await store.put(
        haKeys.guest('g'),
        JSON.stringify({
          name: 'g',
          owner: 'm1',
          token: 5,
          decidedAt: 1,
          failures: 0,
          failedOn: [],
          moving: { to: 'm2', token: 9, reason: 'migration', wasRunning: want === 'started' },
        }),
      );
      const world = await readHaWorld(store);
      const g = world.guests[0];
      assert.ok(g);
      // The record as the CRM gives it (crm.ts's `recovered`): settled, and its `want`.
      const { moving: _moving, ...settled } = g.value;
      const write = {
        compare: [],
        put: { key: haKeys.guest('g'), value: { ...settled, owner: 'm2', token: 9, want } },
      };
      assert.equal((await store.txn(txnOf(write, world))).succeeded, true);
      const given = await records.guest.at('g').get(store);
      assert.equal(given?.value.location, 'm2');
      assert.equal(given?.value.desired, want === 'started' ? 'Running' : 'Stopped');
      assert.equal(given?.value.generation, 4);
    } finally {
      await store.close();
    }
  }
});
