import assert from 'node:assert/strict';
import { chown, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFakeDriver } from '../../test/fakes/fake-driver.ts';
import { aGuestSpec, BUSYBOX_IMAGE } from '../../test/fakes/guest-records.ts';
import { createPoolController, type PoolController } from '../control/pool-controller.ts';
import { haEnabled, haPriority, validateConfig } from '../core/config-keys.ts';
import { isErrorCode, TrivisorError } from '../core/errors.ts';
import type { GuestSpec, ImageRecord } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import { hostRunner } from '../host/runner.ts';
import { BASE_DISK_NAME } from '../images/guest-kit.ts';
import { checkSharedMarker, SHARED_MARKER_FILE } from '../storage/shared-pools.ts';
import { createPoolDrivers } from '../storage/storage-pools.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createEventBus } from './event-bus.ts';
import { createGuestService } from './guest-service.ts';
import { markMove, moveMarkOf } from './move-marks.ts';
import { createOperationService } from './operation-service.ts';
import { createPoolService, type PoolService } from './pool-service.ts';

// Shared storage pools (decision 0049): one directory every member sees, proved by a marker;
// guests on it are linked on whichever member they are located on; ha.enabled needs one.

const codeOf = (e: unknown) => (e instanceof TrivisorError && isErrorCode(e.code) ? e.code : String(e));
const oneLine = (code: string) => (e: unknown) => {
  assert.equal(codeOf(e), code, String(e));
  assert.ok(!(e as Error).message.includes('\n'), (e as Error).message);
  return true;
};
const exists = async (p: string) => (await lstat(p).catch(() => undefined)) !== undefined;
const until = async (what: () => Promise<boolean>, message: string) => {
  for (let i = 0; i < 300; i++) {
    if (await what()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(message);
};

async function addMember(store: KvStore, name: string): Promise<void> {
  await records.member.at(name).put(store, {
    name,
    address: '198.18.0.1:8444',
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
    usage: { cpus: 2, cpuUsedPercent: 0, memoryTotalBytes: 1, memoryAvailableBytes: 1, measuredAt: '' },
  });
}

const image: ImageRecord = BUSYBOX_IMAGE;

describe('shared storage pools', () => {
  let root: string;
  let store: KvStore;
  const controllers: PoolController[] = [];
  const stateDirs = { h1: '', h2: '' };
  let shared: string;
  const service = (h: 'h1' | 'h2', cluster = true, kv: KvStore = store): PoolService =>
    createPoolService({
      store: kv,
      drivers: createPoolDrivers({ runner: hostRunner(), stateDir: stateDirs[h] }),
      log: silentLogger(),
      stateDir: stateDirs[h],
      runner: hostRunner(),
      hostName: h,
      cluster,
      membersWaitMs: 3000,
      uidBlocks: { pvm: { base: 1_131_072, slots: 4 } },
      inUse: async (pool) =>
        (await records.volume.list(store, pool)).items.length > 0
          ? `Storage pool ${pool} holds volumes`
          : undefined,
    });
  const controller = async (h: 'h1' | 'h2') => {
    const c = createPoolController({
      store,
      drivers: createPoolDrivers({ runner: hostRunner(), stateDir: stateDirs[h] }),
      log: silentLogger(),
      hostName: h,
    });
    await c.start();
    controllers.push(c);
  };

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'trivisor-shared-pool-'));
    stateDirs.h1 = path.join(root, 'h1');
    stateDirs.h2 = path.join(root, 'h2');
    shared = path.join(root, 'nfs');
    store = createMemoryStore();
    for (const h of ['h1', 'h2'] as const) {
      await mkdir(stateDirs[h], { recursive: true });
      await addMember(store, h);
    }
    await controller('h1');
  });
  after(async () => {
    for (const c of controllers) c.stop();
    await rm(root, { recursive: true, force: true });
  });

  test('shared=true without a source, on btrfs, on a single host, with --target or not true/false is one line, nothing written', async () => {
    const h1 = service('h1');
    await assert.rejects(
      h1.create({ name: 'p', driver: 'dir', config: { shared: 'true' } }),
      oneLine('InvalidArgument'),
    );
    await assert.rejects(
      h1.create({ name: 'p', driver: 'btrfs', config: { shared: 'true', source: shared } }),
      oneLine('InvalidArgument'),
    );
    await assert.rejects(
      service('h1', false).create({ name: 'p', driver: 'dir', config: { shared: 'true', source: shared } }),
      oneLine('InvalidArgument'),
    );
    await assert.rejects(
      h1.create({ name: 'p', driver: 'dir', config: { shared: 'true', source: shared } }, { target: 'h1' }),
      oneLine('InvalidArgument'),
    );
    await assert.rejects(
      h1.create({ name: 'p', driver: 'dir', config: { shared: 'yes', source: shared } }),
      oneLine('InvalidArgument'),
    );
    assert.equal(await records.pool.at('p').get(store), undefined);
    assert.equal(await exists(shared), false);
  });

  test('a shared pool: the marker at its root and in its record, every member reads it (Created); a second pool over the directory is refused', async () => {
    await controller('h2');
    const pool = await service('h1').create({
      name: 'nfs',
      driver: 'dir',
      config: { source: shared, shared: 'true' },
    });
    assert.equal(pool.shared, true);
    assert.equal(pool.everyMember, true);
    assert.equal(pool.path, shared);
    assert.deepEqual(pool.config, { source: shared });
    assert.match(pool.marker ?? '', /^[0-9a-f]{32}$/);
    assert.equal((await readFile(path.join(shared, SHARED_MARKER_FILE), 'utf8')).trim(), pool.marker);
    assert.equal(pool.status, 'Created');
    assert.deepEqual(
      pool.members?.map((m) => [m.name, m.status]),
      [
        ['h1', 'Created'],
        ['h2', 'Created'],
      ],
    );
    assert.equal((await service('h2').get('nfs')).shared, true);
    // Another pool over the same directory would delete this one's files with its own.
    await assert.rejects(
      service('h2').create({ name: 'again', driver: 'dir', config: { source: shared, shared: 'true' } }),
      oneLine('Conflict'),
    );
    assert.equal(await records.pool.at('again').get(store), undefined);
  });

  test('a member that reads another marker at the path is Errored, in one line naming it and the path', async () => {
    const pool = (await records.pool.at('nfs').get(store))?.value;
    assert.ok(pool);
    assert.equal(await checkSharedMarker(pool, 'h2'), undefined);
    const elsewhere = { ...pool, config: { source: path.join(root, 'other') } };
    await mkdir(elsewhere.config.source, { recursive: true });
    const missing = await checkSharedMarker(elsewhere, 'h2');
    assert.match(missing ?? '', /^Member h2 does not see shared pool nfs's directory .*other: /);
    await writeFile(path.join(elsewhere.config.source, SHARED_MARKER_FILE), 'f00d\n');
    const other = await checkSharedMarker(elsewhere, 'h2');
    assert.match(
      other ?? '',
      /^Member h2 sees another directory at .*other than shared pool nfs's: its marker reads f00d/,
    );
    assert.ok(!other?.includes('\n'));

    // A member whose controller starts and reads another id there reports Errored with that line.
    const swapped = path.join(root, 'swapped');
    await mkdir(swapped);
    // The other marker is there before the record: the member's controller may read the path
    // as soon as the record is put (the other order let it see no marker at all, now and then).
    await writeFile(path.join(swapped, SHARED_MARKER_FILE), 'beef\n');
    await records.pool
      .at('nfs2')
      .put(store, { ...pool, name: 'nfs2', config: { source: swapped }, marker: 'cafe' });
    await until(
      async () => (await records.poolMemberStatus.at('nfs2', 'h2').get(store))?.value.state === 'Errored',
      'h2 reports nfs2 Errored',
    );
    const st = (await records.poolMemberStatus.at('nfs2', 'h2').get(store))?.value;
    assert.match(st?.error ?? '', /^Member h2 sees another directory at .*swapped than shared pool nfs2's/);
    const shown = await service('h1').get('nfs2');
    assert.equal(shown.status, 'Errored');
    await store.delete(records.pool.key('nfs2'));
  });

  test('a guest on it is linked on the member it is located on (idempotent), its base disk copied once; dropping it keeps its files', async () => {
    const dir = path.join(shared, 'guests', 'web');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'disk.qcow2'), 'disk');
    await records.guestPool
      .at('web')
      .put(store, { pool: 'nfs', path: dir, limitBytes: null, location: 'h1' });
    const spec: GuestSpec = {
      name: 'web',
      project: 'default',
      model: 'vm',
      image: image.fingerprint,
      imageAlias: 'busybox',
      config: {},
      desired: 'Stopped',
      generation: 1,
      restartRequest: 0,
      stopTimeoutMs: 1000,
      stopForce: false,
      deleting: false,
      location: 'h2',
      createdAt: new Date(0).toISOString(),
    };
    const h2 = service('h2');
    await h2.adoptShared(spec);
    await h2.adoptShared(spec);
    const link = path.join(stateDirs.h2, 'guests', 'web');
    assert.equal(await readlink(link), dir);
    assert.equal((await records.guestPool.at('web').get(store))?.value.location, 'h2');
    // Not located here: nothing made.
    await service('h1').adoptShared({ ...spec, location: 'h2' });
    assert.equal(await exists(path.join(stateDirs.h1, 'guests', 'web')), false);

    // The pool's copy of the base disk: same bytes, one file for every member, a ct guest has none.
    const base = path.join(root, 'base.ext4');
    await writeFile(base, Buffer.alloc(65536, 7));
    const handle = { record: image, rootfs: '/x', baseDisk: async () => base };
    const seen = await h2.imageFor(spec, handle);
    const copy = await seen.baseDisk();
    assert.equal(copy, path.join(shared, 'bases', `${image.fingerprint}-base.ext4`));
    assert.deepEqual(await readFile(copy), await readFile(base));
    assert.equal(await (await service('h1').imageFor(spec, handle)).baseDisk(), copy);
    assert.equal(await h2.imageFor({ ...spec, model: 'ct' }, handle), handle);
    // A copy published under the current kit's name is taken without building this member's base disk.
    const published = path.join(shared, 'bases', `${image.fingerprint}-${BASE_DISK_NAME}`);
    await writeFile(published, 'base');
    const unbuilt = {
      ...handle,
      baseDisk: async (): Promise<string> => assert.fail('no base disk is built here'),
    };
    assert.equal(await (await h2.imageFor(spec, unbuilt)).baseDisk(), published);
    await rm(published);

    // h1 still links it (it ran there before): the sweep at start drops only that link.
    await mkdir(path.join(stateDirs.h1, 'guests'), { recursive: true });
    await symlink(dir, path.join(stateDirs.h1, 'guests', 'web'));
    await mkdir(path.join(stateDirs.h1, 'idmap'), { recursive: true });
    await symlink('web', path.join(stateDirs.h1, 'idmap', '3'));
    await records.guest.at('web').put(store, spec);
    assert.deepEqual(await service('h1').sweepSharedLinks(), ['web']);
    assert.deepEqual(await service('h2').sweepSharedLinks(), []);
    assert.equal(await exists(path.join(stateDirs.h1, 'guests', 'web')), false);
    assert.equal(await exists(path.join(stateDirs.h1, 'idmap', '3')), false);
    assert.equal(await readFile(path.join(dir, 'disk.qcow2'), 'utf8'), 'disk');
    assert.equal(await readlink(link), dir);

    // The guest controller, seeing the guest located on another member, has its link released.
    await service('h2').releaseShared('web');
    assert.equal(await readlink(link), dir, 'located on h2: kept');
    await records.guest.at('web').put(store, { ...spec, location: 'h1' });
    await service('h2').releaseShared('web');
    assert.equal(await exists(link), false);
    assert.equal(await readFile(path.join(dir, 'disk.qcow2'), 'utf8'), 'disk');
    // A guest directory of this member's own (not a link) is never touched.
    await mkdir(path.join(stateDirs.h2, 'guests', 'own'), { recursive: true });
    await service('h2').releaseShared('own');
    assert.ok(await exists(path.join(stateDirs.h2, 'guests', 'own')));
    await rm(path.join(stateDirs.h2, 'guests', 'own'), { recursive: true });
  });

  test('a release still reading when a live move links the guest back here keeps the link (moved away and straight back)', async () => {
    // The guest ran on h2, moved live to h1 (h2's link left for its release), and a move back to
    // h2 begins while h2's guest controller is still releasing it: its QEMU needs that link.
    const dir = path.join(shared, 'guests', 'back');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'uid'), '');
    await records.guestPool
      .at('back')
      .put(store, { pool: 'nfs', path: dir, limitBytes: null, location: 'h2' });
    const spec = aGuestSpec({ name: 'back', model: 'vm', image: image.fingerprint });
    await records.guest.at('back').put(store, spec);
    const link = path.join(stateDirs.h2, 'guests', 'back');
    await symlink(dir, link);
    // The release's read of the pools waits until the move back has linked the guest.
    let reached!: () => void;
    const atPools = new Promise<void>((r) => {
      reached = r;
    });
    let open!: () => void;
    const gate = new Promise<void>((r) => {
      open = r;
    });
    const gated = new Proxy(store, {
      get(target, key) {
        if (key === 'list') {
          return async (prefix: string, options?: Parameters<KvStore['list']>[1]) => {
            if (prefix === records.pool.prefix) {
              reached();
              await gate;
            }
            return target.list(prefix, options);
          };
        }
        const v = Reflect.get(target, key);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const h2 = service('h2', true, gated);
    const released = h2.releaseShared('back');
    await atPools;
    assert.equal(await h2.linkIncoming(spec), true);
    open();
    await released;
    assert.equal(await readlink(link), dir, 'the move back keeps its link');
    // Once the move is over (here: given up), a release drops it as before.
    await h2.dropShared('back');
    assert.equal(await exists(link), false);
    await symlink(dir, link);
    await h2.releaseShared('back');
    assert.equal(await exists(link), false);
    assert.ok(await exists(dir));
    await rm(dir, { recursive: true });
    await store.delete(records.guest.key('back'));
    await store.delete(records.guestPool.key('back'));
  });

  test("after a hand-over the source's release keeps the link until the move's mark goes (a failed hand-over gives the guest back here)", async () => {
    // h1 moves the guest to h2: the records name h2 from the hand-over on, while h1's mover is
    // still finishing (the destination's `cont`, ending h1's QEMU). h1's guest controller sees a
    // guest located elsewhere and asks for the release meanwhile.
    const dir = path.join(shared, 'guests', 'handed');
    await mkdir(dir, { recursive: true });
    await records.guestPool
      .at('handed')
      .put(store, { pool: 'nfs', path: dir, limitBytes: null, location: 'h1' });
    const spec = aGuestSpec({ name: 'handed', model: 'vm', image: image.fingerprint, location: 'h1' });
    await records.guest.at('handed').put(store, spec);
    const link = path.join(stateDirs.h1, 'guests', 'handed');
    await mkdir(path.join(stateDirs.h1, 'guests'), { recursive: true });
    await symlink(dir, link);
    const mark = {
      guest: 'handed',
      from: 'h1',
      to: 'h2',
      reason: 'migration',
      startedAt: new Date().toISOString(),
    };
    const endMove = await markMove(store, mark, []);
    await records.guest.at('handed').put(store, { ...spec, location: 'h2' });
    const h1 = service('h1');
    await h1.releaseShared('handed');
    assert.equal(await readlink(link), dir, 'the move from h1 runs: its link stays');
    // The hand-over fails and the records come back: the guest runs on at h1, its link there.
    await records.guest.at('handed').put(store, spec);
    await h1.releaseShared('handed');
    assert.equal(await readlink(link), dir);
    await endMove();
    // Another member's move of the guest holds nothing of h1's.
    const h2Move = await markMove(store, { ...mark, from: 'h2', to: 'h1' }, []);
    await records.guest.at('handed').put(store, { ...spec, location: 'h2' });
    await h1.releaseShared('handed');
    assert.equal(await exists(link), false, "a move that is not h1's: the link goes");
    await h2Move();
    // A move from h1 that succeeded: once its mark goes (its mover dropped the link already,
    // put back here), a late release drops it as before.
    await symlink(dir, link);
    const again = await markMove(store, { ...mark, startedAt: new Date(1).toISOString() }, []);
    await h1.releaseShared('handed');
    assert.equal(await readlink(link), dir);
    await again();
    await h1.releaseShared('handed');
    assert.equal(await exists(link), false);
    assert.ok(await exists(dir), "the guest's files stay");
    await rm(dir, { recursive: true });
    await store.delete(records.guest.key('handed'));
    await store.delete(records.guestPool.key('handed'));
  });

  test('a pvm guest adopted where another guest has its host uid gets a free one, and its files follow', async () => {
    const dir = path.join(shared, 'guests', 'pv');
    await mkdir(path.join(dir, 'disk'), { recursive: true });
    await writeFile(path.join(dir, 'uid'), '1131072\n');
    await writeFile(path.join(dir, 'disk', 'root.cow'), 'cow');
    await chown(path.join(dir, 'disk'), 1_131_072, 1_131_072);
    await chown(path.join(dir, 'disk', 'root.cow'), 1_131_072, 1_131_072);
    // h2's own pvm guests hold the first two uids of the block.
    for (const [other, uid] of [
      ['mine', 1_131_072],
      ['mine2', 1_131_073],
    ] as const) {
      await mkdir(path.join(stateDirs.h2, 'guests', other), { recursive: true });
      await writeFile(path.join(stateDirs.h2, 'guests', other, 'uid'), `${uid}\n`);
    }
    await records.guestPool.at('pv').put(store, { pool: 'nfs', path: dir, limitBytes: null, location: 'h1' });
    await service('h2').adoptShared({
      name: 'pv',
      model: 'pvm',
      location: 'h2',
      deleting: false,
    } as GuestSpec);
    assert.equal((await readFile(path.join(dir, 'uid'), 'utf8')).trim(), '1131074');
    for (const f of ['disk', 'disk/root.cow']) {
      const st = await lstat(path.join(dir, f));
      assert.deepEqual([st.uid, st.gid], [1_131_074, 1_131_074], f);
    }
    // On h1, where no guest has it, it keeps its uid.
    await records.guestPool.at('pv').put(store, { pool: 'nfs', path: dir, limitBytes: null, location: 'h2' });
    await service('h1').adoptShared({
      name: 'pv',
      model: 'pvm',
      location: 'h1',
      deleting: false,
    } as GuestSpec);
    assert.equal((await readFile(path.join(dir, 'uid'), 'utf8')).trim(), '1131074');
    await rm(dir, { recursive: true });
    for (const h of ['h1', 'h2'] as const) await rm(path.join(stateDirs[h], 'guests', 'pv'), { force: true });
    await rm(path.join(stateDirs.h2, 'guests', 'mine'), { recursive: true });
    await rm(path.join(stateDirs.h2, 'guests', 'mine2'), { recursive: true });
    await store.delete(records.guestPool.key('pv'));
  });

  test('ha.enabled=true: accepted for a guest on the shared pool, refused in one line on the default pool and on a single host', async () => {
    const operations = createOperationService(createEventBus());
    const guests = (placement: boolean) =>
      createGuestService({
        store,
        drivers: { ct: createFakeDriver() },
        images: { get: async () => image },
        operations,
        hostName: 'h1',
        capacity: { memoryBytes: 2 ** 32, cpus: 2 },
        ...(placement && {
          placement: {
            candidates: async () => [
              {
                name: 'h1',
                status: 'Online' as const,
                cpus: 2,
                cpuFree: 2,
                memoryTotalBytes: 2 ** 32,
                memoryFreeBytes: 2 ** 32,
              },
            ],
          },
        }),
      });
    const ha = { 'ha.enabled': 'true', 'ha.priority': '10' };
    await records.guestPool.at('app').put(store, {
      pool: 'nfs',
      path: path.join(shared, 'guests', 'app'),
      limitBytes: null,
      location: 'h1',
    });
    await guests(true).create({ name: 'app', image: 'busybox', config: ha, target: 'h1' });
    assert.equal((await records.guest.at('app').get(store))?.value.config['ha.enabled'], 'true');
    await assert.rejects(
      guests(true).create({ name: 'db', image: 'busybox', config: ha, target: 'h1' }),
      (e) => {
        oneLine('InvalidArgument')(e);
        assert.equal(
          (e as Error).message,
          "ha.enabled=true needs the guest's disk on a shared storage pool: db is on pool default, which is h1's own",
        );
        return true;
      },
    );
    assert.equal(await records.guest.at('db').get(store), undefined);
    await assert.rejects(
      guests(false).create({ name: 'db', image: 'busybox', config: ha }),
      oneLine('InvalidArgument'),
    );
    assert.equal(await records.guest.at('db').get(store), undefined);
    // Set later on a guest of the default pool: refused, its spec unchanged.
    await guests(true).create({ name: 'db', image: 'busybox', target: 'h1' });
    const before = await records.guest.at('db').get(store);
    await records.guestStatus.at('db').put(store, {
      status: 'Stopped',
      observedGeneration: before?.value.generation ?? 1,
      observedRestartRequest: 0,
      restartCount: 0,
      provisioned: true,
      appliedConfig: {},
      pendingRestart: [],
    });
    await assert.rejects(guests(true).updateConfig('db', { set: ha }), oneLine('InvalidArgument'));
    assert.equal((await records.guest.at('db').get(store))?.modRevision, before?.modRevision);
    await store.delete(records.guest.key('app'));
    await store.delete(records.guestPool.key('app'));
    await store.delete(records.guest.key('db'));
    await store.delete(records.guestStatus.key('db'));
  });

  test('ha.enabled=true while a move of the guest runs is refused in one line (409) and changes nothing; the mark goes with the move', async () => {
    const guests = createGuestService({
      store,
      drivers: { ct: createFakeDriver() },
      images: { get: async () => image },
      operations: createOperationService(createEventBus()),
      hostName: 'h1',
      capacity: { memoryBytes: 2 ** 32, cpus: 2 },
      placement: {
        candidates: async () => [
          {
            name: 'h1',
            status: 'Online' as const,
            cpus: 2,
            cpuFree: 2,
            memoryTotalBytes: 2 ** 32,
            memoryFreeBytes: 2 ** 32,
          },
        ],
      },
    });
    await records.guestPool.at('mv').put(store, {
      pool: 'nfs',
      path: path.join(shared, 'guests', 'mv'),
      limitBytes: null,
      location: 'h1',
    });
    await guests.create({ name: 'mv', image: 'busybox', target: 'h1' });
    const before = await records.guest.at('mv').get(store);
    await records.guestStatus.at('mv').put(store, {
      status: 'Stopped',
      observedGeneration: before?.value.generation ?? 1,
      observedRestartRequest: 0,
      restartCount: 0,
      provisioned: true,
      appliedConfig: {},
      pendingRestart: [],
    });
    const release = await markMove(
      store,
      { guest: 'mv', from: 'h1', to: 'h2', reason: 'migration', startedAt: new Date(0).toISOString() },
      [],
    );
    try {
      await assert.rejects(guests.updateConfig('mv', { set: { 'ha.enabled': 'true' } }), (e) => {
        oneLine('Conflict')(e);
        assert.equal((e as Error).message, 'Guest mv is moving to h2; make it HA after the move');
        return true;
      });
      assert.equal((await records.guest.at('mv').get(store))?.modRevision, before?.modRevision);
      // A second move of it is refused too.
      await assert.rejects(
        markMove(store, { guest: 'mv', from: 'h1', to: 'h3', reason: 'migration', startedAt: '' }, []),
        /Guest mv is being moved to h2 already/,
      );
      assert.equal((await moveMarkOf(store, 'mv'))?.to, 'h2');
    } finally {
      await release();
    }
    assert.equal(await moveMarkOf(store, 'mv'), undefined);
    await store.delete(records.guest.key('mv'));
    await store.delete(records.guestPool.key('mv'));
    await store.delete(records.guestStatus.key('mv'));
  });

  test('delete is refused while a guest is on it, then removes the marker and its own empty structure only', async () => {
    await assert.rejects(service('h1').delete('nfs'), oneLine('FailedPrecondition'));
    assert.ok(await exists(path.join(shared, SHARED_MARKER_FILE)));
    await rm(path.join(shared, 'guests', 'web'), { recursive: true });
    await store.delete(records.guestPool.key('web'));
    await store.delete(records.guest.key('web'));
    await writeFile(path.join(shared, 'admin-notes.txt'), 'mine');
    await service('h2').delete('nfs');
    assert.equal(await records.pool.at('nfs').get(store), undefined);
    for (const gone of [SHARED_MARKER_FILE, '.trivisor-pool.json', 'guests', 'bases'])
      assert.equal(await exists(path.join(shared, gone)), false, gone);
    assert.equal(await readFile(path.join(shared, 'admin-notes.txt'), 'utf8'), 'mine');
    await until(
      async () => (await records.poolMemberStatus.list(store, 'nfs')).items.length === 0,
      "the members' statuses go",
    );
  });
});

describe('ha.enabled and ha.priority', () => {
  const host = { memoryBytes: 2 ** 32, cpus: 2 };
  test('are checked as keys, read by haEnabled and haPriority', () => {
    validateConfig({ 'ha.enabled': 'true', 'ha.priority': '1000' }, host, 'pvm');
    for (const bad of [
      { 'ha.enabled': 'yes' },
      { 'ha.priority': '1001' },
      { 'ha.priority': '-1' },
      { 'ha.priority': '1.5' },
    ]) {
      assert.throws(() => validateConfig(bad, host, 'ct'), oneLine('InvalidArgument'));
    }
    assert.equal(haEnabled({ config: {} }), false);
    assert.equal(haEnabled({ config: { 'ha.enabled': 'true' } }), true);
    assert.equal(haPriority({ config: {} }), 0);
    assert.equal(haPriority({ config: { 'ha.priority': '250' } }), 250);
    assert.equal(haPriority({ config: { 'ha.priority': 'x' } }), 0);
  });
});
