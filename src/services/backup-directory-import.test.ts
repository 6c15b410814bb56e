import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import { alreadyExists, unavailable } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { Operation } from '../core/types.ts';
import type { BackupChainLink, GuestStorage } from '../drivers/guest-storage.ts';
import { hostRunner } from '../host/runner.ts';
import { ArchiveWriter } from '../storage/backup-archive.ts';
import { parseShippedName } from '../storage/shipped-backups.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records, type StoragePending } from '../store/records.ts';
import { importFromBackupDirectory } from './backup-directory.ts';
import { createEventBus } from './event-bus.ts';
import { createOperationService } from './operation-service.ts';
import { createStorageService, type StorageService } from './storage-service.ts';
import type { GuestService, OperationService } from './types.ts';

/**
 * A chain imported from the backup directory is all or nothing (decisions 0074 and 0082): the
 * real storage service over a memory store, a fake guest service and a fake ct storage, with real
 * archives in a real directory.
 */

const CHAIN = '3f9a1c2b4d5e6f70';
const FULL = `20261205T030000Z-full-${CHAIN}.tar`;
const INCR1 = `20261205T031000Z-incr-${CHAIN}-1.tar`;
const INCR2 = `20261205T032000Z-incr-${CHAIN}-2.tar`;

/** A real archive of ct guest `guest` at `path`, the chain link its name says. */
async function writeArchive(path: string, guest: string): Promise<void> {
  const link: BackupChainLink | undefined = parseShippedName(path.slice(path.lastIndexOf('/') + 1))?.link;
  const payload = Buffer.from(`files of ${guest} ${path}`);
  const w = await ArchiveWriter.create(path);
  await w.addBuffer('rootfs.tar.zst', payload);
  const manifest = {
    format: 'trivisor-backup/1',
    createdAt: '2026-12-05T03:00:00Z',
    guest: { name: guest, model: 'ct', config: {}, createdAt: '2026-12-01T00:00:00Z' },
    image: { fingerprint: 'f', alias: 'busybox', description: '' },
    snapshots: [],
    ...(link && { incremental: link }),
    files: {
      'rootfs.tar.zst': {
        sha256: createHash('sha256').update(payload).digest('hex'),
        sizeBytes: payload.length,
      },
    },
  };
  await w.addBuffer('manifest.json', Buffer.from(JSON.stringify(manifest)));
  await w.finish();
}

describe('a chain imported from the backup directory leaves nothing when a link is refused (decision 0082)', () => {
  let work: string;
  let dir: string;
  let operations: OperationService;
  let store: ReturnType<typeof createMemoryStore>;
  let service: StorageService;
  let calls: string[];
  /** Runs when the guest service makes a guest (the full's import is under way). */
  let onCreate: () => Promise<void>;
  /** Runs when an incremental link is applied, with the link's abort signal. */
  let onIncremental: (signal: AbortSignal | undefined) => Promise<void>;
  /** Runs when the import checks the archive's image (after it found the name free). */
  let onImageCheck: () => Promise<void>;
  /** The name's storage-pending marker when the guest service refused a create as taken. */
  let markerAtRefusal: StoragePending | undefined;

  beforeEach(async () => {
    work = await mkdtemp(join(tmpdir(), 'trivisor-chain-import-'));
    dir = join(work, 'shipped');
    await mkdir(join(dir, 'c1'), { recursive: true });
    for (const f of [FULL, INCR1, INCR2]) await writeArchive(join(dir, 'c1', f), 'c1');
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    calls = [];
    onCreate = async () => {};
    onIncremental = async () => {};
    onImageCheck = async () => {};
    markerAtRefusal = undefined;
    const done = () => operations.start({ description: 'fake', run: async () => undefined });
    const guests = {
      async create(request: { name: string; project: string }, options: { pending?: StoragePending } = {}) {
        // As the real service: a taken name is refused before anything is recorded; what a kill
        // at this point would leave is what the store holds now.
        if (await records.guest.at(request.name).get(store)) {
          markerAtRefusal = (await records.storagePending.at(request.name).get(store))?.value;
          throw alreadyExists(`Guest ${request.name} already exists`);
        }
        calls.push(`create ${request.name}`);
        // As the real service: the marker is written in the guest record's own transaction.
        await store.txn({
          compare: [records.guest.at(request.name).absent()],
          success: [
            records.guest
              .at(request.name)
              .putOp(aGuestSpec({ name: request.name, project: request.project, desired: 'Stopped' })),
            ...(options.pending ? [records.storagePending.at(request.name).putOp(options.pending)] : []),
          ],
        });
        await records.guestStatus.at(request.name).put(store, aGuestStatus({ status: 'Stopped' }));
        await onCreate();
        return done();
      },
      async delete(name: string) {
        calls.push(`delete ${name}`);
        await store.delete(keys.guest(name));
        await store.delete(keys.guestStatus(name));
        return done();
      },
    } as unknown as GuestService;
    const ct: GuestStorage = {
      async snapshot() {},
      async restoreSnapshot() {},
      async deleteSnapshot() {},
      async listSnapshots() {
        return [];
      },
      async copy() {},
      async exportTar() {},
      async importTar() {},
      async importIncremental(spec, path, options) {
        await readFile(path);
        calls.push(`apply ${options.link.kind} ${options.link.sequence} onto ${spec.name}`);
        if (options.link.kind === 'incremental') await onIncremental(options.signal);
      },
      async sweep() {},
    };
    service = createStorageService({
      store,
      storage: { ct },
      guests,
      images: {
        get: async (ref: string) => {
          await onImageCheck();
          return { fingerprint: ref } as never;
        },
      },
      operations,
      events: createEventBus(),
      runner: hostRunner(),
      stateDir: join(work, 'state'),
      hostName: 'h1',
    });
  });
  afterEach(async () => {
    await rm(work, { recursive: true, force: true });
  });

  const importChain = (
    storage: Pick<StorageService, 'importBackup' | 'discardImport'> = service.inProject('default'),
    more: { name?: string } = {},
  ) =>
    importFromBackupDirectory(
      { directory: dir, workDir: join(work, 'uploads'), storage, operations, project: 'default' },
      { archive: `c1/${INCR2}`, ...more },
    );
  /** The chain's operation ended in `code`, with one line; nothing of the import is left. */
  const refusedLeavingNothing = async (op: Operation, code: string, message: RegExp) => {
    const end = await operations.wait(op.id);
    assert.equal(end.status, code === 'Cancelled' ? 'Cancelled' : 'Failure', end.error ?? '');
    assert.equal(end.metadata.errorCode, code);
    assert.match(end.error ?? '', message);
    assert.doesNotMatch(end.error ?? '', /\n/, 'one line');
    assert.equal(await records.guest.at('c1').get(store), undefined, "the full's guest is removed");
    assert.equal(await records.storagePending.at('c1').get(store), undefined, 'no marker left');
    assert.deepEqual(await readdir(join(work, 'uploads')), [], 'no link to an archive left');
  };

  test('a whole chain makes the guest, applies its links in order and unmarks it', async () => {
    const end = await operations.wait((await importChain()).id);
    assert.equal(end.status, 'Success', end.error ?? '');
    assert.equal(end.metadata.name, 'c1');
    assert.deepEqual(calls, [
      'create c1',
      'apply full 0 onto c1',
      'apply incremental 1 onto c1',
      'apply incremental 2 onto c1',
    ]);
    assert.ok(await records.guest.at('c1').get(store));
    assert.equal(await records.storagePending.at('c1').get(store), undefined);
  });

  test('a damaged later link is refused in one line and removes the guest the full made', async () => {
    await writeFile(join(dir, 'c1', INCR1), 'not an archive at all');
    await refusedLeavingNothing(await importChain(), 'InvalidArgument', /corrupted or truncated/);
    assert.deepEqual(calls, ['create c1', 'apply full 0 onto c1', 'delete c1']);
  });

  test('a link removed from the directory while the chain is imported is refused in one line, and the guest removed', async () => {
    onCreate = () => rm(join(dir, 'c1', INCR1));
    await refusedLeavingNothing(
      await importChain(),
      'FailedPrecondition',
      /link 1 of the chain, is no longer in the backup directory/,
    );
    assert.deepEqual(calls, ['create c1', 'apply full 0 onto c1', 'delete c1']);
  });

  test('a link refused before its operation starts removes the guest the full made, under the name given', async () => {
    const real = service.inProject('default');
    const refusing: Pick<StorageService, 'importBackup' | 'discardImport'> = {
      importBackup: async (request) => {
        if ((request.chain?.link ?? 0) > 0) throw unavailable('The store cannot be reached: try again');
        return real.importBackup(request);
      },
      discardImport: (name) => real.discardImport(name),
    };
    await importChain(refusing, { name: 'copy1' }).then((op) =>
      operations.wait(op.id).then((end) => {
        assert.equal(end.status, 'Failure');
        assert.equal(end.metadata.errorCode, 'Unavailable');
      }),
    );
    assert.equal(await records.guest.at('copy1').get(store), undefined);
    assert.equal(await records.storagePending.at('copy1').get(store), undefined);
    assert.deepEqual(calls, ['create copy1', 'apply full 0 onto copy1', 'delete copy1']);
  });

  test('a cancel of the chain between its links removes the guest the full made', async () => {
    let chain: Operation | undefined;
    onIncremental = async (signal) => {
      assert.ok(chain && signal);
      operations.cancel(chain.id);
      if (!signal.aborted) await new Promise((resolve) => signal.addEventListener('abort', resolve));
      signal.throwIfAborted();
    };
    chain = await importChain();
    await refusedLeavingNothing(chain, 'Cancelled', /cancelled/);
    assert.deepEqual(calls.slice(-1), ['delete c1']);
  });

  test('a name already taken refuses the full, and the guest that had it stays', async () => {
    await records.guest.at('c1').put(store, aGuestSpec({ name: 'c1' }));
    const end = await operations.wait((await importChain()).id);
    assert.equal(end.status, 'Failure');
    assert.equal(end.metadata.errorCode, 'AlreadyExists');
    assert.match(end.error ?? '', /^Guest c1 already exists/);
    assert.ok(await records.guest.at('c1').get(store), 'the guest that was there stays');
    assert.deepEqual(calls, []);
    // Nor does a discard asked for by mistake remove a guest no import marked.
    await service.discardImport('c1');
    assert.ok(await records.guest.at('c1').get(store));
  });

  test('a guest made under the name while the import checked it stays: the full is refused, with no marker left for the sweep', async () => {
    onImageCheck = async () => {
      await records.guest.at('c1').put(store, aGuestSpec({ name: 'c1' }));
    };
    const end = await operations.wait((await importChain()).id);
    assert.equal(end.status, 'Failure');
    assert.equal(end.metadata.errorCode, 'AlreadyExists');
    assert.ok(await records.guest.at('c1').get(store), 'the guest made meanwhile stays');
    assert.equal(
      await records.storagePending.at('c1').get(store),
      undefined,
      'the next start sweeps nothing',
    );
    assert.deepEqual(calls, []);
  });

  test('a create refused because the name was just taken finds no marker on that name: a daemon killed then leaves the sweep nothing to delete', async () => {
    onImageCheck = async () => {
      await records.guest.at('c1').put(store, aGuestSpec({ name: 'c1' }));
    };
    const end = await operations.wait((await importChain()).id);
    assert.equal(end.metadata.errorCode, 'AlreadyExists');
    assert.equal(markerAtRefusal, undefined, 'no marker was on the other guest when the create was refused');
    // The next start's sweep (a kill at the refusal leaves what the store held then) deletes nothing.
    await service.sweep();
    assert.ok(await records.guest.at('c1').get(store), 'the other guest stays');
    assert.deepEqual(calls, []);
  });

  test("the full's marker comes with its guest: the import's guest is marked from the create's own write", async () => {
    let markedAtCreate: StoragePending | undefined;
    onCreate = async () => {
      markedAtCreate = (await records.storagePending.at('c1').get(store))?.value;
    };
    const end = await operations.wait((await importChain()).id);
    assert.equal(end.status, 'Success', end.error ?? '');
    assert.deepEqual(markedAtCreate, { kind: 'import' });
    assert.equal(await records.storagePending.at('c1').get(store), undefined, 'unmarked once whole');
  });

  test('a cancel that comes while the last link is being started cancels it too, and the guest goes', async () => {
    const real = service.inProject('default');
    let chain: Operation | undefined;
    const cancelling: Pick<StorageService, 'importBackup' | 'discardImport'> = {
      importBackup: async (request) => {
        if (request.chain?.last && chain) operations.cancel(chain.id);
        return real.importBackup(request);
      },
      discardImport: (name) => real.discardImport(name),
    };
    chain = await importChain(cancelling);
    await refusedLeavingNothing(chain, 'Cancelled', /cancelled/);
  });
});
