import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus, Model } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { GuestStorage } from '../drivers/guest-storage.ts';
import { ArchiveWriter } from '../storage/backup-archive.ts';
import { chainStateFileOf, readChainState } from '../storage/chain-state-file.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createEventBus } from './event-bus.ts';
import { createOperationService } from './operation-service.ts';
import type { PoolService } from './pool-service.ts';
import { newBackupName } from './storage-backups.ts';
import { createStorageService, type StorageService } from './storage-service.ts';
import type { GuestService } from './types.ts';

const specOf = (name: string, model: Model = 'ct'): GuestSpec => ({
  name,
  project: 'default',
  model,
  image: 'f'.repeat(64),
  imageAlias: 'busybox',
  config: {},
  desired: 'Running',
  generation: 3,
  restartRequest: 0,
  stopTimeoutMs: 1000,
  stopForce: false,
  deleting: false,
  location: 'h1',
  createdAt: '2026-01-01T00:00:00.000Z',
});

const statusOf = (status: GuestStatus['status']): GuestStatus => ({
  status,
  observedGeneration: 3,
  observedRestartRequest: 0,
  restartCount: 0,
  provisioned: true,
  appliedConfig: {},
  pendingRestart: [],
});

/** A GuestStorage that only records what it was asked and keeps snapshot names in memory. */
function recordingStorage() {
  const calls: string[] = [];
  const onDisk = new Map<string, Set<string>>();
  const snaps = (g: string) => onDisk.get(g) ?? onDisk.set(g, new Set()).get(g)!;
  const storage: GuestStorage = {
    async snapshot(spec, snap) {
      calls.push(`snapshot ${spec.name} ${snap}`);
      snaps(spec.name).add(snap);
    },
    async restoreSnapshot(spec, snap) {
      calls.push(`restore ${spec.name} ${snap}`);
    },
    async deleteSnapshot(spec, snap) {
      calls.push(`delete ${spec.name} ${snap}`);
      snaps(spec.name).delete(snap);
    },
    async listSnapshots(spec) {
      return [...snaps(spec.name)];
    },
    async copy(source, target) {
      calls.push(`copy ${source.name} ${target.name}`);
    },
    async exportTar() {},
    async importTar() {},
    async sweep() {},
  };
  return { storage, calls, onDisk: snaps };
}

describe('storage service', () => {
  let stateDir: string;
  let service: StorageService;
  const store = createMemoryStore();
  const events = createEventBus();
  const operations = createOperationService(events);
  const rec = recordingStorage();
  const guestCalls: string[] = [];
  const succeed = (description: string) => operations.start({ description, run: async () => undefined });
  const guests = {
    async changeState(name: string, request: { action: string }) {
      guestCalls.push(`${request.action} ${name}`);
      return succeed(request.action);
    },
    async create(request: { name: string }) {
      guestCalls.push(`create ${request.name}`);
      return succeed('create');
    },
    async delete(name: string) {
      guestCalls.push(`delete ${name}`);
      return succeed('delete');
    },
  } as unknown as GuestService;
  /** Pools: fast and slow exist; guest web2 lives on slow. */
  const pools = {
    async get(name: string) {
      if (name !== 'fast' && name !== 'slow')
        throw Object.assign(new Error(`Storage pool ${name} not found`), { code: 'NotFound' });
      return { name };
    },
    async poolOf(guest: string) {
      return guest === 'web2' ? 'slow' : undefined;
    },
    async createGuest(pool: string, request: { name: string }) {
      guestCalls.push(`create ${request.name} on ${pool}`);
      return succeed('create');
    },
    async recoverGuest() {
      return undefined;
    },
  } as unknown as PoolService;
  const inspected: string[] = [];
  const ctDriver = {
    model: 'ct',
    async inspect(spec: GuestSpec) {
      inspected.push(spec.name);
      return spec.name === 'lost1'
        ? { state: 'running', process: { pid: 4242, startTime: 7 } }
        : { state: 'stopped' };
    },
  } as unknown as GuestDriver;

  const put = async (spec: GuestSpec, status: GuestStatus) => {
    await store.put(keys.guest(spec.name), JSON.stringify(spec));
    await store.put(keys.guestStatus(spec.name), JSON.stringify(status));
  };
  const waitOp = async (op: { id: string }) => operations.wait(op.id);
  const runner = fakeRunner();

  before(async () => {
    stateDir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-storage-service-'));
    service = createStorageService({
      store,
      storage: { ct: rec.storage },
      guests,
      images: {
        get: async (ref: string) => {
          if (ref !== 'f'.repeat(64)) throw Object.assign(new Error('no'), { code: 'NotFound' });
          return { fingerprint: ref } as never;
        },
      },
      operations,
      events,
      runner,
      stateDir,
      drivers: { ct: ctDriver },
      hostName: 'h2',
      pools: () => pools,
    });
    await put(specOf('web'), statusOf('Running'));
    await put(specOf('vm1', 'vm'), statusOf('Stopped'));
  });
  after(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  test('models without guest storage answer NotSupported with the model named', async () => {
    for (const call of [
      () => service.createSnapshot('vm1', 's0'),
      () => service.copyGuest({ name: 'vm2', source: 'vm1' }),
      () => service.createBackup('vm1', { withSnapshots: false }),
    ]) {
      await assert.rejects(call(), { code: 'NotSupported', message: /not supported for vm guests/ });
    }
  });

  test('an incremental backup needs a storage that exports incrementally (this fake does not)', async () => {
    await assert.rejects(service.createBackup('web', { withSnapshots: false, incremental: true }), {
      code: 'NotSupported',
      message:
        /^Incremental backups are not supported for ct guests: their storage cannot tell what changed since a backup$/,
    });
  });

  test('an uncompressed export and a live import are for vm guests: a ct guest is refused with the reason (decision 0063)', async () => {
    await assert.rejects(service.createBackup('web', { withSnapshots: false, uncompressed: true }), {
      code: 'InvalidArgument',
      message: /^An uncompressed export is for the live restore of a vm guest/,
    });
    const archive = path.join(stateDir, 'ct-live.tar');
    const payload = Buffer.from('a ct guest payload');
    const writer = await ArchiveWriter.create(archive);
    await writer.addBuffer('rootfs.tar', payload);
    const manifest = {
      format: 'trivisor-backup/1',
      createdAt: new Date().toISOString(),
      guest: { name: 'web9', model: 'ct', config: {}, createdAt: new Date().toISOString() },
      image: { fingerprint: '', alias: '', description: '' },
      snapshots: [],
      files: {
        'rootfs.tar': {
          sha256: createHash('sha256').update(payload).digest('hex'),
          sizeBytes: payload.length,
        },
      },
    };
    await writer.addBuffer('manifest.json', Buffer.from(JSON.stringify(manifest)));
    await writer.finish();
    await assert.rejects(service.importBackup({ archivePath: archive, live: true }), {
      code: 'NotSupported',
      message: /^A live restore is for vm guests: this archive holds a ct guest/,
    });
    assert.equal(await records.guest.at('web9').get(store), undefined, 'nothing was made');
  });

  test('an incremental backup leaves its chain state beside the archive, and takes over a carried one only where the guest is elsewhere (decision 0062 amended)', async () => {
    // The payload goes through a real FIFO; the rest of the runner stays fake.
    runner.respond((argv) =>
      argv[0] === 'mkfifo' ? { effect: () => void execFileSync('mkfifo', argv.slice(1)) } : undefined,
    );
    let own: { chain: string; sequence: number } | undefined;
    const continued: string[] = [];
    const chained: Partial<GuestStorage> = {
      async exportIncremental(_spec, tarPath) {
        own = own ? { ...own, sequence: own.sequence + 1 } : { chain: 'a'.repeat(16), sequence: 0 };
        await writeFile(tarPath, zstdCompressSync(Buffer.from('payload')));
        return { ...own, kind: own.sequence === 0 ? 'full' : 'incremental' };
      },
      async chainState() {
        return own && { ...own, data: Buffer.from(`sums at ${own.sequence}`) };
      },
      async continueChain(_spec, state) {
        continued.push(`${state.chain}:${state.sequence}:${state.data}`);
        own = { chain: state.chain, sequence: state.sequence };
        return true;
      },
    };
    Object.assign(rec.storage, chained);
    try {
      const carried = { chain: 'c'.repeat(16), sequence: 4, data: Buffer.from('sums at 4') };
      const made = async (continueChain: typeof carried) => {
        const op = await waitOp(
          await service.createBackup('web', { withSnapshots: false, incremental: true, continueChain }),
        );
        assert.equal(op.status, 'Success', JSON.stringify(op));
        const backup = String(op.metadata.backup);
        const { path: archive } = await service.backupFile('web', backup);
        return { backup, archive, link: op.metadata.incremental as { chain: string; sequence: number } };
      };
      // The guest has no chain here (it moved): it takes over the carried one; the next link is 5.
      const first = await made(carried);
      assert.deepEqual(continued, [`${'c'.repeat(16)}:4:sums at 4`]);
      assert.deepEqual([first.link.chain, first.link.sequence], ['c'.repeat(16), 5]);
      const about = { guest: 'web', model: 'ct' as const, chain: 'c'.repeat(16) };
      const left = await readChainState(chainStateFileOf(first.archive), { ...about, sequence: 5 });
      assert.equal(left?.data.toString(), 'sums at 5');
      // Carried state of the link the guest is at already: nothing taken over.
      const second = await made({ ...carried, sequence: 5, data: Buffer.from('sums at 5') });
      assert.equal(continued.length, 1);
      assert.equal(second.link.sequence, 6);
      await service.deleteBackup('web', first.backup);
      await service.deleteBackup('web', second.backup);
      assert.deepEqual(await readdir(path.dirname(first.archive)), []);
      await assert.rejects(service.createBackup('web', { withSnapshots: false, continueChain: carried }), {
        code: 'InvalidArgument',
        message: 'A chain is continued only by an incremental backup',
      });
    } finally {
      for (const key of Object.keys(chained))
        delete (rec.storage as Partial<GuestStorage>)[key as keyof GuestStorage];
    }
  });

  test("a backup's name given by its caller (a move's, decision 0079) is refused when it is no backup name or is taken, nothing written", async () => {
    await assert.rejects(service.createBackup('web', { withSnapshots: false, name: '../x' }), {
      code: 'InvalidArgument',
      message: '"../x" is not a backup name',
    });
    const dir = path.join(stateDir, 'backups', 'web');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'backup-00000000000000aa.tar'), "a user's");
    await assert.rejects(
      service.createBackup('web', { withSnapshots: false, name: 'backup-00000000000000aa' }),
      { code: 'AlreadyExists', message: 'Guest web has a backup backup-00000000000000aa already' },
    );
    assert.equal(await readFile(path.join(dir, 'backup-00000000000000aa.tar'), 'utf8'), "a user's");
    assert.match(newBackupName(), /^backup-[0-9a-f]{16}$/);
    await rm(dir, { recursive: true, force: true });
  });

  test('an export that fails before its archive is begun tells its followers, who stop waiting (issue 20)', async () => {
    // Its image's record is gone: the export fails at its first step, before any byte is written.
    await put({ ...specOf('web3'), image: 'e'.repeat(64) }, statusOf('Stopped'));
    const backup = newBackupName();
    const op = await service.createBackup('web3', { withSnapshots: false, name: backup });
    // A followed download asks as soon as the export is started, as the CLI's does.
    const follow = await service.followBackup('web3', backup);
    assert.equal((await waitOp(op)).status, 'Failure');
    const status = follow.status();
    assert.equal(status.state, 'failed', 'the follower would wait for bytes that never come');
    assert.equal(status.state === 'failed' && status.error.message, 'no');
    // A follower that waits for more is woken at once, not after its whole timeout.
    const t0 = Date.now();
    await follow.changed(60_000);
    assert.ok(Date.now() - t0 < 1000);
    assert.deepEqual(await readdir(path.join(stateDir, 'backups', 'web3')).catch(() => []), []);
  });

  test("an archive of the snapshots alone (a live move's, decision 0088) is made with --with-snapshots and nothing else", async () => {
    for (const options of [
      { withSnapshots: false, snapshotsOnly: true },
      { withSnapshots: true, snapshotsOnly: true, uncompressed: true },
      { withSnapshots: true, snapshotsOnly: true, incremental: true },
    ]) {
      await assert.rejects(service.createBackup('web', options), {
        code: 'InvalidArgument',
        message:
          /^An archive of the snapshots alone is made with --with-snapshots and nothing else$|^An uncompressed export/,
      });
    }
    assert.deepEqual(await readdir(path.join(stateDir, 'backups')).catch(() => []), []);
  });

  test('bad names, unknown guests and unknown snapshots are typed errors', async () => {
    await assert.rejects(service.createSnapshot('web', 'Bad_Name'), { code: 'InvalidArgument' });
    await assert.rejects(service.createSnapshot('ghost', 's0'), { code: 'NotFound' });
    await assert.rejects(service.restoreSnapshot('web', 'nope'), {
      code: 'NotFound',
      message: /no snapshot nope/,
    });
    await assert.rejects(service.backupFile('web', '../etc'), { code: 'InvalidArgument' });
  });

  test('a snapshot is made on disk, then recorded; a second of that name is refused', async () => {
    const op = await waitOp(await service.createSnapshot('web', 's0'));
    assert.equal(op.status, 'Success');
    assert.deepEqual(rec.calls.at(-1), 'snapshot web s0');
    const record = await service.getSnapshot('web', 's0');
    assert.equal(record.wasRunning, true);
    await assert.rejects(service.createSnapshot('web', 's0'), { code: 'AlreadyExists' });
  });

  test('restoring a running guest stops it, restores, and starts it again', async () => {
    guestCalls.length = 0;
    const op = await waitOp(await service.restoreSnapshot('web', 's0'));
    assert.equal(op.status, 'Success');
    assert.deepEqual(guestCalls, ['stop web', 'start web']);
    assert.equal(rec.calls.at(-1), 'restore web s0');
  });

  test('sweep drops records without a snapshot, snapshots without a record, and half-made copies', async () => {
    await store.put(keys.snapshot('web', 'ghost'), JSON.stringify({ name: 'ghost' }));
    rec.onDisk('web').add('orphan');
    await store.put(keys.storagePending('half'), '{}');
    // Another member's guest is not looked at: its snapshot records are that member's.
    await store.put(keys.guest('elsewhere'), JSON.stringify({ ...specOf('elsewhere'), location: 'h3' }));
    await store.put(keys.snapshot('elsewhere', 'kept'), JSON.stringify({ name: 'kept' }));
    // The sweep is this member's (h2): its guest web is located here.
    await store.put(keys.guest('web'), JSON.stringify({ ...specOf('web'), location: 'h2' }));
    guestCalls.length = 0;
    await service.sweep();
    assert.ok(await store.get(keys.snapshot('elsewhere', 'kept')));
    await store.delete(keys.snapshot('elsewhere', 'kept'));
    await store.delete(keys.guest('elsewhere'));
    await store.put(keys.guest('web'), JSON.stringify(specOf('web')));
    assert.deepEqual(
      (await service.listSnapshots('web')).map((s) => s.name),
      ['s0'],
    );
    assert.ok(rec.calls.includes('delete web orphan'));
    assert.deepEqual(guestCalls, ['delete half']);
    assert.equal(await store.get(keys.storagePending('half')), undefined);
  });

  test("a copy goes to the pool asked for, else to its source's pool; an unknown pool is refused first", async () => {
    await put(specOf('web2'), statusOf('Stopped'));
    guestCalls.length = 0;
    // The fake guest service records the create and makes nothing, so the copy itself then fails: only where it was made counts.
    const copy = async (request: { name: string; source: string; storage?: string }) =>
      waitOp(await service.copyGuest(request));
    await copy({ name: 'k1', source: 'web', storage: 'fast' });
    await copy({ name: 'k2', source: 'web2' });
    await copy({ name: 'k3', source: 'web2', storage: 'default' });
    assert.deepEqual(
      guestCalls.filter((c) => c.startsWith('create')),
      ['create k1 on fast', 'create k2 on slow', 'create k3'],
    );
    await assert.rejects(service.copyGuest({ name: 'k4', source: 'web', storage: 'nope' }), /nope not found/);
    // A pvm copy onto a shared pool would keep its source's base disk (decision 0049): one line, nothing made.
    await put(specOf('pv1', 'pvm'), statusOf('Stopped'));
    await records.pool.at('fast').put(store, {
      name: 'fast',
      driver: 'dir',
      description: '',
      config: { source: '/srv/nfs' },
      createdAt: '',
      everyMember: true,
      shared: true,
      marker: 'x',
    });
    await assert.rejects(service.copyGuest({ name: 'k5', source: 'pv1', storage: 'fast' }), (e) => {
      assert.equal((e as { code?: string }).code, 'FailedPrecondition');
      assert.match((e as Error).message, /^A pvm copy onto shared pool fast would keep pv1's base disk/);
      return true;
    });
    assert.equal(guestCalls.filter((c) => c.includes('k5')).length, 0, 'nothing was made');
    await store.delete(records.pool.key('fast'));
    await assert.rejects(
      service.importBackup({ archivePath: path.join(stateDir, 'x.tar'), storage: 'nope' }),
      /nope not found/,
    );
    assert.equal(guestCalls.filter((c) => c.includes('k4')).length, 0, 'nothing was made');
  });

  test('recover rebuilds lost records from guest.json, adopting what runs, as this host', async () => {
    for (const name of ['lost1', 'lost2', 'web', 'junk']) {
      const dir = path.join(stateDir, 'guests', name);
      await mkdir(dir, { recursive: true });
      // A copy written before owners were `location`: it named its host `host`.
      const { location: _, ...old } = specOf(name);
      const spec = { ...old, host: 'old-host' };
      await writeFile(path.join(dir, 'guest.json'), name === 'junk' ? '{' : JSON.stringify({ spec }));
    }
    const report = await service.recover();
    assert.deepEqual(
      report.recovered.map((g) => [g.name, g.status]),
      [
        ['lost1', 'Running'],
        ['lost2', 'Stopped'],
      ],
    );
    assert.deepEqual(
      report.skipped.map((g) => [g.name, g.reason]),
      [
        ['junk', 'no readable guest.json'],
        ['web', 'its records exist'],
      ],
    );
    const spec = JSON.parse((await store.get(keys.guest('lost1')))?.value ?? '{}') as GuestSpec;
    const status = JSON.parse((await store.get(keys.guestStatus('lost1')))?.value ?? '{}') as GuestStatus;
    assert.equal(spec.location, 'h2');
    assert.equal(spec.desired, 'Running');
    assert.deepEqual(status.process, { pid: 4242, startTime: 7 });
    assert.equal(status.observedGeneration, spec.generation, 'the controller sees nothing to do');
  });
});
