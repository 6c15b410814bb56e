import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { conflict, isTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { GuestStorage } from '../drivers/guest-storage.ts';
import { silentLogger } from '../host/logger.ts';
import type { PoolDriver, PoolRecord } from '../storage/storage-pools.ts';
import type { VolumeBackend } from '../storage/volumes.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { createClaims, describeHolder, listClaims } from './claims.ts';
import { createEventBus } from './event-bus.ts';
import { createNetworkService } from './network-service.ts';
import { createOperationService } from './operation-service.ts';
import { createPoolService } from './pool-service.ts';
import { createStorageService } from './storage-service.ts';
import type { GuestService } from './types.ts';
import { createVolumeService } from './volume-service.ts';

const busy = (h: Parameters<typeof describeHolder>[0]) => conflict(`Busy (${describeHolder(h)})`);
const is409 = (pattern: RegExp) => (e: unknown) =>
  isTrivisorError(e) && (e.code === 'Conflict' || e.code === 'AlreadyExists') && pattern.test(e.message);

describe('operation claims', () => {
  test('one holder at a time: the second acquire is the busy error naming the holder, then free again', async () => {
    const store = createMemoryStore();
    const h1 = createClaims({ store, member: 'h1' });
    const h2 = createClaims({ store, member: 'h2' });
    const held = await h1.acquire('guest', 'web', { action: 'snapshot', busy });
    await assert.rejects(
      h2.acquire('guest', 'web', { action: 'backup', busy }),
      is409(/snapshot, for \d+ s on h1/),
    );
    await assert.rejects(h1.acquire('guest', 'web', { action: 'copy', busy }), is409(/on h1/));
    // Other objects are not held.
    await (await h2.acquire('guest', 'db', { action: 'copy', busy })).release();
    await held.release();
    await (await h2.acquire('guest', 'web', { action: 'backup', busy })).release();
    assert.deepEqual(await listClaims(store), []);
  });

  test('holding releases however the work ends', async () => {
    const store = createMemoryStore();
    const claims = createClaims({ store, member: 'h1' });
    await assert.rejects(
      claims.holding('pool', 'fast', { action: 'create', busy }, async () => {
        assert.equal((await listClaims(store)).length, 1);
        throw new Error('mkfs failed');
      }),
      /mkfs failed/,
    );
    assert.deepEqual(await listClaims(store), []);
  });

  test("a daemon killed mid-action leaves its claims; its member's next daemon sweeps them, not another member's", async () => {
    const store = createMemoryStore();
    const dead = createClaims({ store, member: 'h1', incarnation: 'first' });
    const other = createClaims({ store, member: 'h2', incarnation: 'x' });
    await dead.acquire('guest', 'web', { action: 'snapshot', busy });
    await other.acquire('guest', 'db', { action: 'backup', busy });
    const next = createClaims({ store, member: 'h1', incarnation: 'second' });
    await assert.rejects(next.acquire('guest', 'web', { action: 'copy', busy }), is409(/on h1/));
    assert.equal(await next.sweep(), 1);
    await (await next.acquire('guest', 'web', { action: 'copy', busy })).release();
    assert.deepEqual(
      (await listClaims(store)).map((c) => c.member),
      ['h2'],
      "another member's claim is its own to release (or its lease's, later)",
    );
  });

  test('a release never deletes a claim another holder made after it', async () => {
    const store = createMemoryStore();
    const a = createClaims({ store, member: 'h1', incarnation: 'a' });
    const held = await a.acquire('guest', 'web', { action: 'snapshot', busy });
    // The claim is swept (its daemon was thought dead) and taken by another daemon.
    await createClaims({ store, member: 'h1', incarnation: 'b' }).sweep();
    const b = createClaims({ store, member: 'h1', incarnation: 'b' });
    await b.acquire('guest', 'web', { action: 'backup', busy });
    await held.release();
    assert.deepEqual(
      (await listClaims(store)).map((c) => c.action),
      ['backup'],
    );
  });
});

const spec = (name: string): GuestSpec => ({
  name,
  project: 'default',
  model: 'ct',
  image: 'f'.repeat(64),
  imageAlias: 'busybox',
  config: {},
  desired: 'Stopped',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 1000,
  stopForce: false,
  deleting: false,
  location: 'h1',
  createdAt: '2026-01-01T00:00:00.000Z',
});

describe('two members race over one store', () => {
  const store = createMemoryStore();
  let stateDir: string;

  const web: GuestSpec = {
    name: 'web',
    project: 'default',
    model: 'ct',
    image: 'f'.repeat(64),
    imageAlias: 'busybox',
    config: {},
    desired: 'Stopped',
    generation: 1,
    restartRequest: 0,
    stopTimeoutMs: 1000,
    stopForce: false,
    deleting: false,
    location: 'h1',
    createdAt: '2026-01-01T00:00:00.000Z',
  };
  const status: GuestStatus = {
    status: 'Stopped',
    observedGeneration: 1,
    observedRestartRequest: 0,
    restartCount: 0,
    provisioned: true,
    appliedConfig: {},
    pendingRestart: [],
  };

  /** A storage service of one member, whose snapshots take a while. */
  const member = (hostName: string, taken: string[]) => {
    const events = createEventBus();
    const operations = createOperationService(events);
    const storage: GuestStorage = {
      async snapshot(s, name) {
        await new Promise((r) => setTimeout(r, 100));
        taken.push(`${hostName}:${s.name}/${name}`);
      },
      async restoreSnapshot() {},
      async deleteSnapshot() {},
      async listSnapshots() {
        return [];
      },
      async copy() {},
      async exportTar() {},
      async importTar() {},
      async sweep() {},
    };
    const service = createStorageService({
      store,
      storage: { ct: storage },
      guests: {} as GuestService,
      images: { get: async () => ({}) as never },
      operations,
      events,
      runner: fakeRunner(),
      stateDir,
      hostName,
      claims: createClaims({ store, member: hostName }),
    });
    return { service, operations };
  };

  before(async () => {
    stateDir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-claims-'));
    await store.put(keys.guest('web'), JSON.stringify(web));
    await store.put(keys.guestStatus('web'), JSON.stringify(status));
  });
  after(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  test('two snapshots of one guest asked of two members at once: one is taken, the other is a 409 naming the holder', async () => {
    const taken: string[] = [];
    const h1 = member('h1', taken);
    const h2 = member('h2', taken);
    const results = await Promise.allSettled([
      h1.service.createSnapshot('web', 's1'),
      h2.service.createSnapshot('web', 's2'),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r) => r.status === 'rejected');
    assert.equal(won.length, 1, 'exactly one snapshot starts');
    assert.equal(lost.length, 1);
    assert.ok(
      is409(
        /^Guest web has a snapshot, copy or backup under way \(storage, for \d+ s on h[12]\): wait for it$/,
      )((lost[0] as PromiseRejectedResult).reason),
      String((lost[0] as PromiseRejectedResult).reason),
    );
    const op = (won[0] as PromiseFulfilledResult<{ id: string }>).value;
    const winner = results[0]?.status === 'fulfilled' ? h1 : h2;
    assert.equal((await winner.operations.wait(op.id)).status, 'Success');
    assert.equal(taken.length, 1, 'one snapshot was taken, by one member');
    // The claim went with the operation: the guest takes the next one.
    assert.deepEqual(await listClaims(store), []);
    const next = await h2.service.createSnapshot('web', 's3');
    assert.equal((await h2.operations.wait(next.id)).status, 'Success');
  });
});

describe('two members create one pool at once', () => {
  test('one pool is made, the other create is a 409 and makes and removes nothing', async () => {
    const store = createMemoryStore();
    const calls: string[] = [];
    const driverOf = (member: string): PoolDriver => ({
      name: 'dir',
      validate() {},
      async create(pool) {
        calls.push(`${member} create ${pool.name}`);
        await new Promise((r) => setTimeout(r, 50));
      },
      async mount() {},
      async usage() {
        return { totalBytes: 1, usedBytes: 0 };
      },
      async delete(pool) {
        calls.push(`${member} delete ${pool.name}`);
      },
      mountPath: (pool) => `/nonexistent/${member}/${pool.name}`,
    });
    const poolsOf = (member: string) =>
      createPoolService({
        store,
        drivers: { dir: driverOf(member), btrfs: driverOf(member) },
        log: silentLogger(),
        stateDir: '/nonexistent',
        hostName: member,
        claims: createClaims({ store, member }),
      });
    const results = await Promise.allSettled([
      poolsOf('h1').create({ name: 'fast', driver: 'dir' }),
      poolsOf('h2').create({ name: 'fast', driver: 'dir' }),
    ]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(
      is409(
        /^Storage pool fast (already exists|is being created \(create, for \d+ s on h[12]\): pick another name)$/,
      )(lost.reason),
      String(lost.reason),
    );
    assert.equal(calls.filter((c) => c.endsWith('create fast')).length, 1, calls.join(', '));
    assert.equal(
      calls.filter((c) => c.endsWith('delete fast')).length,
      0,
      'the winner’s pool is not removed',
    );
    const made = calls.find((c) => c.endsWith('create fast'))?.split(' ')[0];
    const record = JSON.parse((await store.get(keys.storagePool('fast')))?.value ?? '{}') as PoolRecord;
    assert.equal(record.location, made, 'the pool is recorded as the member’s that made it');
    assert.deepEqual(await listClaims(store), []);
  });
});

describe('two members attach one block volume at once', () => {
  test('the volume goes into one guest; the other attach is a 409 and writes nothing', async () => {
    const store = createMemoryStore();
    const pool: PoolRecord = { name: 'default', driver: 'dir', description: '', config: {}, createdAt: '' };
    await store.put(keys.storagePool('default'), JSON.stringify(pool));
    for (const name of ['vm1', 'vm2']) {
      await store.put(keys.guest(name), JSON.stringify({ ...spec(name), model: 'vm', desired: 'Stopped' }));
    }
    const backend: VolumeBackend = {
      async create() {
        await new Promise((r) => setTimeout(r, 20));
      },
      async resize() {},
      async usage() {
        return { usedBytes: 0 };
      },
      async delete() {},
    };
    const volumesOf = (member: string) =>
      createVolumeService({
        store,
        pools: { dir: { mountPath: () => '/unused' }, btrfs: { mountPath: () => '/unused' } } as never,
        backend,
        stateDir: '/nonexistent',
        drivers: {},
        live: {},
        hostName: member,
        claims: createClaims({ store, member }),
      });
    const h1 = volumesOf('h1');
    const h2 = volumesOf('h2');
    await h1.create('default', { name: 'data', type: 'block', config: { size: '1GiB' } });
    const results = await Promise.allSettled([
      h1.attach('default', 'data', { guest: 'vm1' }),
      h2.attach('default', 'data', { guest: 'vm2' }),
    ]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(
      is409(/Storage volume data on pool default is being changed|attached to vm[12]/)(lost.reason),
      String(lost.reason),
    );
    const holders = [];
    for (const name of ['vm1', 'vm2']) {
      const g = JSON.parse((await store.get(keys.guest(name)))?.value ?? '{}') as GuestSpec;
      if (g.disks?.data) holders.push(name);
    }
    assert.equal(holders.length, 1, `a disk is in one guest at a time, not in ${holders.join(' and ')}`);
  });
});

describe('two members hot-plug NICs into one guest at once', () => {
  test('one plugs, the other is a 409: never two hot-plugs into one guest at a time', async () => {
    const store = createMemoryStore();
    await store.put(
      keys.network('lab'),
      JSON.stringify({
        name: 'lab',
        project: 'default',
        description: '',
        config: { 'ipv4.address': '198.18.40.1/24' },
        generation: 1,
        deleting: false,
        location: 'h1',
        createdAt: '',
      }),
    );
    await store.put(keys.networkStatus('lab'), JSON.stringify({ status: 'Created', observedGeneration: 1 }));
    const running = { ...spec('g'), desired: 'Running' as const };
    await store.put(keys.guest('g'), JSON.stringify(running));
    let plugging = 0;
    let most = 0;
    const driver = {
      model: 'ct',
      async inspect() {
        return { state: 'running', process: { pid: 4242, startTime: 1 } };
      },
      async attachNic() {
        plugging++;
        most = Math.max(most, plugging);
        await new Promise((r) => setTimeout(r, 50));
        plugging--;
        return 'live';
      },
    } as unknown as GuestDriver;
    const networksOf = (member: string) =>
      createNetworkService({
        store,
        hostName: member,
        drivers: { ct: driver },
        claims: createClaims({ store, member }),
      });
    // h2 asks while h1 is plugging: h1 has written its NIC, so no compare stops h2.
    const first = networksOf('h1').attach('lab', 'g');
    await new Promise((r) => setTimeout(r, 20));
    const results = await Promise.allSettled([first, networksOf('h2').attach('lab', 'g')]);
    assert.equal(most, 1, 'one hot-plug at a time');
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(
      is409(/Guest g is having a NIC added or removed|changed at the same time/)(lost.reason),
      String(lost.reason),
    );
    const after = JSON.parse((await store.get(keys.guest('g')))?.value ?? '{}') as GuestSpec;
    assert.deepEqual(Object.keys(after.devices ?? {}), ['eth0']);
  });
});
