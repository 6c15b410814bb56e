import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { keys } from '../core/keys.ts';
import type { GuestSpec, Model } from '../core/types.ts';
import type { GuestDriver, RuntimeState } from '../drivers/guest-driver.ts';
import type { AttachedVolume, GuestVolumes, LiveResult } from '../drivers/guest-volumes.ts';
import type { PoolDriver, PoolDriverName, PoolRecord } from '../storage/storage-pools.ts';
import type { VolumeBackend, VolumeRecord } from '../storage/volumes.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { createVolumeService } from './volume-service.ts';

const specOf = (name: string, model: Model): GuestSpec => ({
  name,
  project: 'default',
  model,
  image: 'f'.repeat(64),
  imageAlias: 'busybox',
  config: {},
  desired: 'Running',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 1000,
  stopForce: false,
  deleting: false,
  location: 'h1',
  createdAt: '2026-01-01T00:00:00.000Z',
});

/** A world of fakes: which guests run, what the backend and the live attacher were asked. */
async function setup() {
  const store = createMemoryStore();
  const pool: PoolRecord = { name: 'default', driver: 'dir', description: '', config: {}, createdAt: '' };
  await store.put(keys.storagePool('default'), JSON.stringify(pool));
  const calls: string[] = [];
  const running = new Set<string>();
  const backend: VolumeBackend = {
    async create(_d, _p, v) {
      calls.push(`create ${v.name} ${v.type} ${v.sizeBytes}`);
    },
    async resize(_d, _p, v, size) {
      calls.push(`resize ${v.name} ${size}`);
    },
    async usage() {
      return { usedBytes: 4096 };
    },
    async delete(_d, _p, v) {
      calls.push(`delete ${v.name}`);
    },
  };
  const driver = (model: Model) =>
    ({
      model,
      inspect: async (spec: GuestSpec): Promise<RuntimeState> =>
        running.has(spec.name)
          ? { state: 'running', process: { pid: 42, startTime: 1 } }
          : { state: 'stopped' },
    }) as unknown as GuestDriver;
  let failNext = false;
  const live = (model: Model, result: LiveResult = 'live'): GuestVolumes => ({
    model,
    async attach(spec, v: AttachedVolume, { pid }) {
      if (failNext) {
        failNext = false;
        throw new Error('engine said no');
      }
      calls.push(`live-attach ${spec.name} ${v.device} ${v.hostPath} ${v.path ?? '-'} pid=${pid}`);
      return result;
    },
    async detach(spec, v) {
      calls.push(`live-detach ${spec.name} ${v.device}`);
      return result;
    },
    async resize(spec, v) {
      calls.push(`live-resize ${spec.name} ${v.device} ${v.sizeBytes}`);
      return model === 'pvm' ? 'next-start' : 'live';
    },
  });
  const pools = {
    dir: { mountPath: () => '/unused' },
    btrfs: { mountPath: () => '/unused' },
  } as unknown as Record<PoolDriverName, PoolDriver>;
  const service = createVolumeService({
    store,
    pools,
    backend,
    stateDir: '/state',
    drivers: { ct: driver('ct'), vm: driver('vm'), pvm: driver('pvm') },
    live: { ct: live('ct'), vm: live('vm'), pvm: live('pvm') },
  });
  const addGuest = async (name: string, model: Model) =>
    store.put(keys.guest(name), JSON.stringify(specOf(name, model)));
  const spec = async (name: string) =>
    JSON.parse((await store.get(keys.guest(name)))?.value ?? 'null') as GuestSpec;
  return { store, service, calls, running, addGuest, spec, failOnce: () => (failNext = true) };
}

const code = (code: string) => (e: unknown) => (e as { code?: string }).code === code;

describe('volume service', () => {
  test('create records the volume with its rounded size and refuses a second one of the same name', async () => {
    const w = await setup();
    const v = await w.service.create('default', { name: 'data', config: { size: '1100000' } });
    assert.equal(v.sizeBytes, 1101824);
    assert.equal(v.type, 'filesystem');
    assert.equal(v.path, '/state/custom/data');
    assert.deepEqual(w.calls, ['create data filesystem 1101824']);
    await assert.rejects(w.service.create('default', { name: 'data' }), code('AlreadyExists'));
    await assert.rejects(w.service.create('nope', { name: 'x' }), code('NotFound'));
    await assert.rejects(w.service.create('default', { name: 'x', type: 'raw' }), /use filesystem or block/);
    assert.equal(w.calls.length, 1, 'refused requests touch nothing');
  });

  test('attaching to a stopped guest records an Incus disk device and touches no engine', async () => {
    const w = await setup();
    await w.addGuest('c1', 'ct');
    await w.service.create('default', { name: 'data' });
    const r = await w.service.attach('default', 'data', { guest: 'c1', path: '/mnt/data/' });
    assert.equal(r.applied, 'none');
    assert.match(r.message, /c1 gets it when it starts/);
    assert.deepEqual((await w.spec('c1')).disks, {
      data: { type: 'disk', pool: 'default', source: 'data', path: '/mnt/data' },
    });
    assert.equal((await w.spec('c1')).generation, 1, 'nothing for the controller to converge');
    assert.ok(!w.calls.some((c) => c.startsWith('live-')));
    assert.deepEqual((await w.service.get('default', 'data')).usedBy, ['/1.0/guests/c1']);
  });

  test('attaching to a running guest plugs the volume live with the resolved host path', async () => {
    const w = await setup();
    await w.addGuest('v1', 'vm');
    w.running.add('v1');
    await w.service.create('default', { name: 'disk', type: 'block', config: { size: '1GiB' } });
    const r = await w.service.attach('default', 'disk', { guest: 'v1', device: 'd0' });
    assert.equal(r.applied, 'live');
    assert.ok(w.calls.includes('live-attach v1 d0 /state/custom/disk.img - pid=42'));
    await w.service.update('default', 'disk', { config: { size: '2GiB' } });
    assert.ok(w.calls.includes(`live-resize v1 d0 ${2 * 1024 ** 3}`));
    const d = await w.service.detach('default', 'disk', { guest: 'v1' });
    assert.equal(d.applied, 'live');
    assert.deepEqual((await w.spec('v1')).disks, undefined);
  });

  test('a guest with ha.enabled=true takes no volume of a pool that is not shared (decision 0049)', async () => {
    const w = await setup();
    await w.store.put(
      keys.guest('ha1'),
      JSON.stringify({ ...specOf('ha1', 'ct'), config: { 'ha.enabled': 'true' } }),
    );
    await w.service.create('default', { name: 'data' });
    await assert.rejects(w.service.attach('default', 'data', { guest: 'ha1', path: '/mnt' }), (e) => {
      assert.equal((e as { code?: string }).code, 'InvalidArgument');
      assert.match(
        (e as Error).message,
        /^Guest ha1 has ha\.enabled=true and volume data is on pool default, which is not shared/,
      );
      return true;
    });
    assert.equal((await w.spec('ha1')).disks, undefined);
  });

  test('a failed live attach leaves the guest spec as it was', async () => {
    const w = await setup();
    await w.addGuest('c1', 'ct');
    w.running.add('c1');
    await w.service.create('default', { name: 'data' });
    w.failOnce();
    await assert.rejects(
      w.service.attach('default', 'data', { guest: 'c1', path: '/mnt' }),
      /engine said no/,
    );
    assert.equal((await w.spec('c1')).disks, undefined);
  });

  test('types go to the models that can use them; a block volume to one guest only', async () => {
    const w = await setup();
    for (const [name, model] of [
      ['c1', 'ct'],
      ['v1', 'vm'],
      ['p1', 'pvm'],
    ] as const)
      await w.addGuest(name, model);
    await w.service.create('default', { name: 'fs' });
    await w.service.create('default', { name: 'blk', type: 'block' });
    await assert.rejects(w.service.attach('default', 'blk', { guest: 'c1' }), /only vm and pvm guests/);
    await assert.rejects(w.service.attach('default', 'fs', { guest: 'v1', path: '/x' }), /only ct guests/);
    await assert.rejects(w.service.attach('default', 'fs', { guest: 'c1' }), /Give the path/);
    await assert.rejects(w.service.attach('default', 'blk', { guest: 'v1', path: '/x' }), /no mount path/);
    await w.service.attach('default', 'blk', { guest: 'v1' });
    await assert.rejects(w.service.attach('default', 'blk', { guest: 'p1' }), code('Conflict'));
    await assert.rejects(
      w.service.attach('default', 'blk', { guest: 'v1', device: 'again' }),
      /already attached/,
    );
    await w.service.attach('default', 'fs', { guest: 'c1', path: '/a' });
    await w.service.create('default', { name: 'fs2' });
    await assert.rejects(
      w.service.attach('default', 'fs2', { guest: 'c1', path: '/a' }),
      /already has a volume at \/a/,
    );
    await assert.rejects(
      w.service.attach('default', 'fs2', { guest: 'c1', path: '/b', device: 'fs' }),
      /already has a device named fs/,
    );
  });

  test('a vm guest takes as many volumes as it has hot-plug ports', async () => {
    const w = await setup();
    await w.addGuest('v1', 'vm');
    for (let i = 0; i < 5; i++) await w.service.create('default', { name: `b${i}`, type: 'block' });
    for (let i = 0; i < 4; i++) await w.service.attach('default', `b${i}`, { guest: 'v1' });
    await assert.rejects(w.service.attach('default', 'b4', { guest: 'v1' }), /has 4 volumes, the most/);
  });

  test('resize only grows; delete and pool delete are refused while in use', async () => {
    const w = await setup();
    await w.addGuest('c1', 'ct');
    await w.service.create('default', { name: 'data', config: { size: '2GiB' } });
    await assert.rejects(
      w.service.update('default', 'data', { config: { size: '1GiB' } }),
      /can only grow, not shrink to 1GiB/,
    );
    assert.equal((await w.service.update('default', 'data', { config: { size: '2GiB' } })).applied, 'none');
    assert.ok(!w.calls.some((c) => c.startsWith('resize')));
    await w.service.attach('default', 'data', { guest: 'c1', path: '/d' });
    await assert.rejects(w.service.delete('default', 'data'), /attached to c1: detach it first/);
    assert.match((await w.service.poolInUse('default')) ?? '', /holds volumes data/);
    await w.service.detach('default', 'data', { guest: 'c1' });
    await w.service.delete('default', 'data');
    assert.equal(await w.service.poolInUse('default'), undefined);
    assert.ok(w.calls.includes('delete data'));
    const gone: VolumeRecord[] = await w.service.list('default');
    assert.deepEqual(gone, []);
  });
});
