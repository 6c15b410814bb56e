import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { PoolDriver, PoolRecord } from '../storage/storage-pools.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { createGuestStorageController, GUEST_CONFIG_FILE } from './guest-storage-controller.ts';
import { createPoolController, DEFAULT_POOL, POOL_RECORD_FILE } from './pool-controller.ts';

// The two controllers that used to live inside the pool and storage services (an informer in
// each, event subscriptions): level-based, so what changed while no daemon ran is applied at start.

const spec = (name: string, location = 'h1'): GuestSpec => ({
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
  location,
  createdAt: '2026-01-01T00:00:00.000Z',
});

const status = (provisioned: boolean): GuestStatus => ({
  status: 'Stopped',
  observedGeneration: 1,
  observedRestartRequest: 0,
  restartCount: 0,
  provisioned,
  appliedConfig: {},
  pendingRestart: [],
});

const until = async (what: () => Promise<boolean>, message: string) => {
  for (let i = 0; i < 200; i++) {
    if (await what()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(message);
};

describe('guest storage controller', () => {
  let stateDir: string;
  before(async () => {
    stateDir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-guest-storage-'));
  });
  after(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  test("keeps each of its guests' guest.json once the guest's directory exists, never another member's", async () => {
    const store = createMemoryStore();
    await mkdir(path.join(stateDir, 'guests', 'old1'), { recursive: true });
    await mkdir(path.join(stateDir, 'guests', 'theirs'), { recursive: true });
    // Recorded while no daemon ran: copied at start.
    await store.put(keys.guest('old1'), JSON.stringify(spec('old1')));
    await store.put(keys.guest('theirs'), JSON.stringify(spec('theirs', 'h2')));
    const controller = createGuestStorageController({
      store,
      log: silentLogger(),
      hostName: 'h1',
      stateDir,
      pools: {} as never,
    });
    await controller.start();
    const copy = async (name: string) =>
      JSON.parse(await readFile(path.join(stateDir, 'guests', name, GUEST_CONFIG_FILE), 'utf8')) as {
        spec: GuestSpec;
      };
    assert.equal((await copy('old1')).spec.name, 'old1');
    await assert.rejects(copy('theirs'), /ENOENT/);
    // A new guest: no directory until its driver made it, which its status then says.
    await store.put(keys.guest('new1'), JSON.stringify(spec('new1')));
    await store.put(keys.guestStatus('new1'), JSON.stringify(status(false)));
    await mkdir(path.join(stateDir, 'guests', 'new1'), { recursive: true });
    await store.put(keys.guestStatus('new1'), JSON.stringify(status(true)));
    await until(async () => (await copy('new1').catch(() => undefined)) !== undefined, 'new1 copied');
    // A change of the spec is copied too.
    await store.put(keys.guest('old1'), JSON.stringify({ ...spec('old1'), config: { 'limits.cpu': '1' } }));
    await until(async () => (await copy('old1')).spec.config['limits.cpu'] === '1', 'old1 copied again');
    controller.stop();
  });

  test("drops a deleted guest's snapshot records, and at start those whose guest went while no daemon ran", async () => {
    const store = createMemoryStore();
    const snap = (guest: string, name: string) => ({ name, guest, createdAt: '', wasRunning: false });
    await store.put(keys.guest('web'), JSON.stringify(spec('web')));
    await store.put(keys.snapshot('web', 's1'), JSON.stringify(snap('web', 's1')));
    await store.put(keys.snapshot('gone', 's1'), JSON.stringify(snap('gone', 's1')));
    const controller = createGuestStorageController({
      store,
      log: silentLogger(),
      hostName: 'h1',
      stateDir,
      pools: {} as never,
    });
    await controller.start();
    assert.equal(await store.get(keys.snapshot('gone', 's1')), undefined);
    const kept = JSON.parse((await store.get(keys.snapshot('web', 's1')))?.value ?? '{}') as {
      location?: string;
    };
    assert.equal(kept.location, 'h1', "a snapshot recorded before owners were is its guest's owner's");
    await store.delete(keys.guest('web'));
    await until(async () => (await store.get(keys.snapshot('web', 's1'))) === undefined, 'web s1 dropped');
    controller.stop();
  });

  test("a guest's delete reads only its own snapshot records, not every guest's (10,000 deletes listed all N times)", async () => {
    const memory = createMemoryStore();
    const snap = (guest: string, name: string) => ({
      name,
      guest,
      createdAt: '',
      wasRunning: false,
      location: 'h1',
    });
    for (let i = 0; i < 50; i++) {
      await memory.put(keys.guest(`g${i}`), JSON.stringify(spec(`g${i}`)));
      await memory.put(keys.snapshot(`g${i}`, 's1'), JSON.stringify(snap(`g${i}`, 's1')));
    }
    const lists: string[] = [];
    const store = new Proxy(memory, {
      get(target, prop) {
        if (prop === 'list') {
          return (prefix: string, options?: never) => {
            lists.push(prefix);
            return target.list(prefix, options);
          };
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const controller = createGuestStorageController({
      store,
      log: silentLogger(),
      hostName: 'h1',
      stateDir,
      pools: {} as never,
    });
    await controller.start();
    lists.length = 0;
    await memory.delete(keys.guest('g7'));
    await until(async () => (await memory.get(keys.snapshot('g7', 's1'))) === undefined, 'g7 s1 dropped');
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(lists, [keys.snapshots('g7')], "one list, of the deleted guest's snapshots");
    assert.ok(await memory.get(keys.snapshot('g8', 's1')), "another guest's snapshot stays");
    controller.stop();
  });
});

describe('pool controller', () => {
  test('records the default pool, mounts every pool at start and when one is recorded, keeping its record copy', async () => {
    const store = createMemoryStore();
    const root = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pools-'));
    const mounted: string[] = [];
    const dir: PoolDriver = {
      name: 'dir',
      validate() {},
      async create() {},
      async mount(pool) {
        mounted.push(pool.name);
        await mkdir(path.join(root, pool.name), { recursive: true });
      },
      async usage() {
        return { totalBytes: 1, usedBytes: 0 };
      },
      async delete() {},
      mountPath: (pool) => path.join(root, pool.name),
    };
    const pool = (name: string): PoolRecord => ({
      name,
      driver: 'dir',
      description: '',
      config: {},
      createdAt: '',
    });
    await store.put(keys.storagePool('fast'), JSON.stringify(pool('fast')));
    // Another member's pool is on its disks: this member never mounts it (decision 0034).
    await store.put(keys.storagePool('theirs'), JSON.stringify({ ...pool('theirs'), location: 'h2' }));
    await store.put(
      keys.storageVolume('fast', 'v1'),
      JSON.stringify({
        name: 'v1',
        pool: 'fast',
        type: 'block',
        sizeBytes: 1,
        description: '',
        createdAt: '',
      }),
    );
    await store.put(
      keys.guestPool('c1'),
      JSON.stringify({ pool: 'fast', path: '/nonexistent/c1', limitBytes: null }),
    );
    const controller = createPoolController({
      store,
      drivers: { dir, btrfs: dir },
      log: silentLogger(),
      hostName: 'h1',
    });
    await controller.start();
    const read = async <T>(key: string) => JSON.parse((await store.get(key))?.value ?? '{}') as T;
    assert.equal(
      (await read<PoolRecord>(keys.storagePool(DEFAULT_POOL))).location,
      'h1',
      'the default pool is h1’s',
    );
    // Recorded before owners were: h1's now, the only member a store without owners has.
    assert.equal((await read<PoolRecord>(keys.storagePool('fast'))).location, 'h1');
    assert.equal((await read<{ location?: string }>(keys.storageVolume('fast', 'v1'))).location, 'h1');
    assert.equal((await read<{ location?: string }>(keys.guestPool('c1'))).location, 'h1');
    assert.deepEqual(
      mounted,
      ['fast'],
      "the default pool is the state directory: nothing to mount; another member's pool is not this one's",
    );
    const kept = JSON.parse(await readFile(path.join(root, 'fast', POOL_RECORD_FILE), 'utf8')) as PoolRecord;
    assert.equal(kept.name, 'fast');
    await store.put(keys.storagePool('slow'), JSON.stringify(pool('slow')));
    // Mounted, and its record copy written (the mount's last step): only then is the tree left alone.
    await until(
      async () => (await readFile(path.join(root, 'slow', POOL_RECORD_FILE), 'utf8').catch(() => '')) !== '',
      'slow mounted with its record copy',
    );
    assert.ok(!mounted.includes('theirs'), "another member's pool is not mounted here");
    controller.stop();
    await rm(root, { recursive: true, force: true });
  });
});
