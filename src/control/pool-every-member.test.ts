import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isErrorCode, TrivisorError } from '../core/errors.ts';
import { silentLogger } from '../host/logger.ts';
import { createOwnerRouting } from '../services/owner-routing.ts';
import { createPoolService } from '../services/pool-service.ts';
import type { PoolDriver, PoolDriverName, PoolRecord } from '../storage/storage-pools.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createPoolController, type PoolController } from './pool-controller.ts';

// A pool defined on every member under one name (decision 0038): each member's controller makes
// its own instance and says how that went; the pool service defines, shows and deletes it.

const until = async (what: () => Promise<boolean>, message: string) => {
  for (let i = 0; i < 300; i++) {
    if (await what()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(message);
};

/** A dir driver under `root`, whose create fails while `failing` says so. */
function dirDriver(root: string, failing = { now: false }): Record<PoolDriverName, PoolDriver> {
  const mountPath = (pool: PoolRecord) => path.join(root, pool.name);
  const dir: PoolDriver = {
    name: 'dir',
    validate(pool) {
      for (const key of Object.keys(pool.config)) {
        if (key !== 'source') throw new TrivisorError('InvalidArgument', `A dir pool has no key ${key}`);
      }
    },
    async create(pool) {
      if (failing.now) throw new Error('mkfs.btrfs: not enough space');
      await mkdir(mountPath(pool), { recursive: true });
    },
    async mount(pool) {
      await mkdir(mountPath(pool), { recursive: true });
    },
    usage: async () => ({ totalBytes: 100, usedBytes: 1 }),
    async delete(pool) {
      await rm(mountPath(pool), { recursive: true, force: true });
    },
    mountPath,
  };
  return { dir, btrfs: dir };
}

const exists = async (p: string) => (await stat(p).catch(() => undefined)) !== undefined;

async function addMember(store: KvStore, name: string): Promise<void> {
  await records.member.at(name).put(store, {
    name,
    address: `198.18.0.1:8444`,
    roles: ['etcd-voter'],
    certificateFingerprint: 'f'.repeat(64),
    version: '0',
    joinedAt: '',
    evacuated: false,
  });
  await records.memberHeartbeat.at(name).put(store, {
    incarnation: name,
    version: '0',
    startedAt: '',
    usage: {
      cpus: 2,
      cpuUsedPercent: 0,
      memoryTotalBytes: 1,
      memoryAvailableBytes: 1,
      measuredAt: '',
    },
  });
}

const codeOf = (e: unknown) => (e instanceof TrivisorError && isErrorCode(e.code) ? e.code : String(e));

describe('a storage pool on every member', () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pool-every-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('every member makes its own instance; info shows each member, Errored while one failed; delete removes them all', async () => {
    const store = createMemoryStore();
    const failing = { now: true };
    const roots = { h1: path.join(root, 'h1'), h2: path.join(root, 'h2') };
    const drivers = { h1: dirDriver(roots.h1), h2: dirDriver(roots.h2, failing) };
    const controllers: PoolController[] = [];
    for (const h of ['h1', 'h2'] as const) {
      await addMember(store, h);
      const c = createPoolController({ store, drivers: drivers[h], log: silentLogger(), hostName: h });
      await c.start();
      controllers.push(c);
    }
    const service = (h: 'h1' | 'h2') =>
      createPoolService({
        store,
        drivers: drivers[h],
        log: silentLogger(),
        stateDir: roots[h],
        hostName: h,
        cluster: true,
        membersWaitMs: 3000,
        inUse: async (pool) =>
          (await records.volume.list(store, pool)).items.length > 0
            ? `Storage pool ${pool} holds volumes: delete them first`
            : undefined,
      });

    // A source is one member's path: refused in one line, nothing written.
    await assert.rejects(
      service('h1').create({ name: 'shared', driver: 'dir', config: { source: '/srv/x' } }),
      (e) => codeOf(e) === 'InvalidArgument' && !(e as Error).message.includes('\n'),
    );
    assert.equal(await records.pool.at('shared').get(store), undefined);

    const made = await service('h1').create({ name: 'fast', driver: 'dir' });
    const rec = (await records.pool.at('fast').get(store))?.value;
    assert.equal(rec?.everyMember, true);
    assert.equal(rec?.location, undefined, 'a pool on every member has no location');
    assert.deepEqual(
      made.members?.map((m) => [m.name, m.status]),
      [
        ['h1', 'Created'],
        ['h2', 'Errored'],
      ],
    );
    assert.equal(made.status, 'Errored');
    assert.match(made.members?.[1]?.error ?? '', /not enough space/);
    assert.deepEqual(made.usage, { totalBytes: 100, usedBytes: 1 }, "h1's own instance's space");
    assert.ok(await exists(path.join(roots.h1, 'fast')));
    assert.ok(!(await exists(path.join(roots.h2, 'fast'))));
    const onH2 = await service('h2').get('fast');
    assert.equal(onH2.usage, null, 'h2 has no instance to measure');

    // The member that failed tries again when the record changes; then the pool is Created.
    failing.now = false;
    await records.pool.at('fast').put(store, { ...(rec as PoolRecord), description: 'again' });
    await until(async () => (await service('h2').get('fast')).status === 'Created', 'h2 made it');
    assert.ok(await exists(path.join(roots.h2, 'fast')));

    // One pool name: a second create is refused, from any member.
    await assert.rejects(
      service('h2').create({ name: 'fast', driver: 'dir' }),
      (e) => codeOf(e) === 'AlreadyExists',
    );

    // With a target it is that member's alone, as before.
    const one = await service('h2').create({ name: 'mine', driver: 'dir' }, { target: 'h2' });
    assert.equal(one.location, 'h2');
    assert.equal(one.members, undefined);

    // Refused while a member's instance holds a volume: one line, nothing removed.
    await records.volume.at('fast', 'v1').put(store, {
      name: 'v1',
      project: 'default',
      pool: 'fast',
      type: 'filesystem',
      sizeBytes: 1,
      description: '',
      createdAt: '',
      location: 'h2',
    });
    await assert.rejects(service('h1').delete('fast'), (e) => codeOf(e) === 'FailedPrecondition');
    assert.ok(await records.pool.at('fast').get(store));
    await store.delete(records.volume.key('fast', 'v1'));

    await service('h1').delete('fast');
    assert.equal(await records.pool.at('fast').get(store), undefined);
    assert.equal((await records.poolMemberStatus.list(store, 'fast')).items.length, 0, 'every status gone');
    assert.ok(!(await exists(path.join(roots.h1, 'fast'))));
    assert.ok(!(await exists(path.join(roots.h2, 'fast'))));
    for (const c of controllers) c.stop();
  });

  test('a member that was down when the pool was deleted removes its instance at start', async () => {
    const store = createMemoryStore();
    const h3 = path.join(root, 'h3');
    await mkdir(path.join(h3, 'gone'), { recursive: true });
    await records.poolMemberStatus
      .at('gone', 'h3')
      .put(store, { state: 'Created', driver: 'dir', updatedAt: '' });
    await records.poolMemberStatus
      .at('gone', 'h4')
      .put(store, { state: 'Created', driver: 'dir', updatedAt: '' });
    const c = createPoolController({ store, drivers: dirDriver(h3), log: silentLogger(), hostName: 'h3' });
    await c.start();
    assert.ok(!(await exists(path.join(h3, 'gone'))));
    assert.equal(await records.poolMemberStatus.at('gone', 'h3').get(store), undefined);
    assert.ok(await records.poolMemberStatus.at('gone', 'h4').get(store), "another member's is its own");
    c.stop();
  });

  test('requests about it go to the member target names, else any member answers; the default pool likewise', async () => {
    const store = createMemoryStore();
    await records.pool.at('fast').put(store, {
      name: 'fast',
      driver: 'dir',
      description: '',
      config: {},
      createdAt: '',
      everyMember: true,
    });
    await records.pool.at('one').put(store, {
      name: 'one',
      driver: 'dir',
      description: '',
      config: {},
      createdAt: '',
      location: 'h3',
    });
    const routing = createOwnerRouting({ store, member: 'h1' });
    assert.deepEqual(await routing.placeOfStorage('fast'), { here: true, anyMember: true });
    assert.deepEqual(await routing.placeOfStorage('fast', undefined, 'h1'), { here: true });
    assert.deepEqual(await routing.placeOfStorage('fast', undefined, 'h2'), { here: false, member: 'h2' });
    assert.deepEqual(await routing.placeOfStorage('default', undefined, 'h2'), { here: false, member: 'h2' });
    assert.deepEqual(await routing.placeOfStorage('default'), { here: true });
    // A pool of one member: its member, whatever the target (the route refuses another one).
    assert.deepEqual(await routing.placeOfStorage('one', undefined, 'h2'), { here: false, member: 'h3' });
    // A volume is its own member's.
    await records.volume.at('fast', 'v1').put(store, {
      name: 'v1',
      project: 'default',
      pool: 'fast',
      type: 'filesystem',
      sizeBytes: 1,
      description: '',
      createdAt: '',
      location: 'h2',
    });
    assert.deepEqual(await routing.placeOfStorage('fast', 'v1'), { here: false, member: 'h2' });
  });
});
