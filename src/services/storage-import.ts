import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { asTrivisorError, failedPrecondition, invalidArgument, TrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import {
  addUsage,
  assertWithinLimits,
  DEFAULT_PROJECT,
  NO_USAGE,
  projectOfRecord,
} from '../core/projects.ts';
import type { Operation } from '../core/types.ts';
import { type Digest, digestOf } from '../storage/backup-archive.ts';
import { byteProgress } from '../storage/byte-progress.ts';
import type { BackupManifest, SnapshotRecord } from '../storage/storage-records.ts';
import { records } from '../store/records.ts';
import { assertArchiveGuestFits, createArchiveGuest, importingClaim } from './archive-guest.ts';
import {
  corrupted,
  feedPayload,
  MAX_MANIFEST_BYTES,
  openArchive,
  parseManifest,
  payloadBytes,
} from './archive-reader.ts';
import { feedStreamedPayload, indexMatches, uploadFault } from './archive-stream.ts';
import { readGuard } from './project-service.ts';
import { diskFull, type StorageView } from './storage-context.ts';
import { PLAIN_ROOTFS, startLiveImport } from './storage-live-import.ts';
import type { StorageService } from './storage-service.ts';

/** Restores a guest from a backup archive (import), whole or as the next link of its chain. */
export function importMethods(
  view: StorageView,
): Pick<StorageService, 'importBackup' | 'importUpload' | 'discardImport'> {
  const { store, operations, runner, claims, guestBusy, storageFor, guestUp, checkPool, discard } = view.ctx;
  const { scope, load } = view;
  return {
    async discardImport(name) {
      const marker = (await records.storagePending.at(name).get(store))?.value;
      if (marker?.kind !== 'import') return;
      const spec = (await records.guest.at(name).get(store))?.value;
      if (spec && scope !== undefined && projectOfRecord(spec) !== scope) return;
      await discard(name);
      await store.delete(keys.storagePending(name));
    },
    async importUpload(request) {
      const project = scope ?? DEFAULT_PROJECT;
      const p = await readGuard(store, project);
      assertWithinLimits(project, p.spec.config, {
        before: p.usage,
        after: addUsage(p.usage, { ...NO_USAGE, guests: 1 }),
      });
      await checkPool(request.storage);
      return importUpload(view, request, project);
    },
    async importBackup(request) {
      const project = scope ?? DEFAULT_PROJECT;
      // What the archive holds is known only once it is unpacked: the guest count is refused here,
      // the rest (memory, CPUs, disk) by the create in the operation, which leaves nothing behind.
      // Its guard's read: the count only when the project limits it, its own guests then (decision 0087).
      const p = await readGuard(store, project);
      // A chain's later link goes onto the guest its full made: no guest more.
      if ((request.chain?.link ?? 0) === 0) {
        assertWithinLimits(project, p.spec.config, {
          before: p.usage,
          after: addUsage(p.usage, { ...NO_USAGE, guests: 1 }),
        });
      }
      await checkPool(request.storage);
      if (request.live) {
        const { live: _, ...rest } = request;
        return startLiveImport(view, rest);
      }
      return operations.start({
        project,
        description: 'Importing a guest backup',
        mayCancel: true,
        run: (ctx) =>
          importOperation(view, ctx.signal, async (work, made) => {
            ctx.progress(0, 'reading the archive');
            // The archive is read in place (headers only here): each payload then goes once from it into
            // the driver through a FIFO, its checksum computed on the way (decision 35).
            const archive = await openArchive(request.archivePath);
            const { manifest } = archive;
            const progress = byteProgress((percent, text) => ctx.progress(percent, text), {
              total: payloadBytes(archive),
            });
            /** Feeds payload `rel` to `consume` (a driver's importTar) and refuses it when its checksum differs. */
            const feed = (rel: string, consume: (path: string) => Promise<unknown>) =>
              feedPayload({
                archive,
                rel,
                work,
                runner,
                signal: ctx.signal,
                onBytes: (n) => progress.add(n),
                consume,
              });
            const name = request.name ?? manifest.guest.name;
            assertDnsLabel(name, 'guest name');
            const link = manifest.incremental;
            if (link?.kind === 'incremental') {
              // An incremental backup goes onto the guest restored from the earlier links of its chain.
              if (request.storage !== undefined) {
                throw invalidArgument(
                  "An incremental backup goes onto the guest imported from its chain, on that guest's pool: leave out the storage pool",
                );
              }
              const { spec, status } = await load(name).catch((e: unknown) => {
                if (asTrivisorError(e).code !== 'NotFound') throw e;
                throw failedPrecondition(
                  `Guest ${name} does not exist: import the full backup of this chain and the incrementals before this one first`,
                );
              });
              const storage = storageFor(spec);
              if (spec.model !== manifest.guest.model || !storage.importIncremental) {
                throw failedPrecondition(
                  `Guest ${name} is a ${spec.model} guest: the backup is of a ${manifest.guest.model} guest`,
                );
              }
              if (guestUp(status)) {
                throw failedPrecondition(
                  `Guest ${name} is running: stop it before applying an incremental backup`,
                );
              }
              const importIncremental = storage.importIncremental.bind(storage);
              // A chain's guest made earlier in this operation goes if this link fails.
              if (request.chain) made(name);
              // Onto an existing guest: checked whole before anything of it is applied.
              ctx.progress(null, 'verifying checksums');
              const rootfs = archive.members.get('rootfs.tar.zst');
              const want = manifest.files['rootfs.tar.zst'];
              if (!rootfs || !want || (await digestOf(archive.path, rootfs)).sha256 !== want.sha256) {
                throw corrupted('rootfs.tar.zst');
              }
              await claims.holding('guest', name, guestBusy(name), async () => {
                progress.stage('applying the incremental backup');
                await feed('rootfs.tar.zst', (path) =>
                  importIncremental(spec, path, { link, signal: ctx.signal }),
                );
              });
              if (request.chain?.last) await store.delete(keys.storagePending(name));
              return { name };
            }
            await assertArchiveGuestFits(view.ctx, project, name, manifest);
            await claims.holding('guest', name, importingClaim(name), async () => {
              ctx.progress(0, 'creating the guest');
              await createArchiveGuest(
                view.ctx,
                {
                  pool: request.storage,
                  project,
                  name,
                  onMade: () => made(name),
                },
                manifest,
              );
              const { spec } = await load(name);
              const storage = storageFor(spec);
              progress.stage('root file system');
              const importIncremental = storage.importIncremental?.bind(storage);
              // An uncompressed export (decision 0063) imports the ordinary way too.
              await feed(manifest.files[PLAIN_ROOTFS] ? PLAIN_ROOTFS : 'rootfs.tar.zst', (path) =>
                link && importIncremental
                  ? // The full backup of a chain: the guest remembers it, so that the chain's incrementals can follow.
                    importIncremental(spec, path, { link, signal: ctx.signal })
                  : storage.importTar(spec, path, { signal: ctx.signal }),
              );
              for (const snap of manifest.snapshots) {
                progress.stage(`snapshot ${snap.name}`);
                await feed(`snapshots/${snap.name}.tar.zst`, (path) =>
                  storage.importTar(spec, path, { snapshot: snap.name, signal: ctx.signal }),
                );
                const record: SnapshotRecord = { ...snap, guest: name, location: spec.location };
                await records.snapshot.at(name, snap.name).put(store, record);
              }
            });
            // A chain's full: the guest is whole once its last link is applied.
            if (!request.chain) await store.delete(keys.storagePending(name));
            return { name };
          }).finally(() => rm(request.archivePath, { force: true })),
      });
    },
  };
}

/** The members a streamed archive may hold besides its index and manifest. */
const SNAPSHOT_PAYLOAD = /^snapshots\/([a-z0-9-]+)\.tar\.zst$/;

/**
 * Imports an archive while it is uploaded (issue 20 §1): the guest is made from the archive's
 * index, each payload is fed to the driver as it arrives, hashed on the way, and the manifest at
 * the end is checked against what went by; anything wrong (a checksum, a size, a member missing
 * or unexpected, an index that the manifest contradicts, an upload cut short) removes the guest.
 * Answers once the upload has been read to its end, so that such a fault is the request's own
 * error (a 400 naming it), not only the operation's.
 */
async function importUpload(
  view: StorageView,
  request: Parameters<StorageService['importUpload']>[0],
  project: string,
): Promise<Operation> {
  const { store, operations, runner, claims, storageFor } = view.ctx;
  const { load } = view;
  const { index, reader } = request.upload;
  let settle!: (error?: unknown) => void;
  const settled = new Promise<void>((resolve, reject) => {
    settle = (error) => (error === undefined ? resolve() : reject(error));
  });
  const op = operations.start({
    project,
    description: 'Importing a guest backup',
    mayCancel: true,
    run: (ctx) =>
      importOperation(view, ctx.signal, async (work, made) => {
        // A cancel ends a read that waits on an upload gone silent, at once (decision 0106, amended).
        reader.stopOn(ctx.signal);
        const name = request.name ?? index.guest.name;
        assertDnsLabel(name, 'guest name');
        const { guest, image, snapshots } = index;
        const fromIndex: BackupManifest = {
          format: index.format,
          guest,
          image,
          snapshots,
          createdAt: '',
          files: {},
        };
        await assertArchiveGuestFits(view.ctx, project, name, fromIndex);
        const progress = byteProgress((percent, text) => ctx.progress(percent, text));
        await claims.holding('guest', name, importingClaim(name), async () => {
          ctx.progress(0, 'creating the guest');
          await createArchiveGuest(
            view.ctx,
            { pool: request.storage, project, name, onMade: () => made(name) },
            fromIndex,
          );
          const { spec } = await load(name);
          const storage = storageFor(spec);
          const seen: Record<string, Digest> = {};
          let failed: unknown;
          let manifest: BackupManifest | undefined;
          for (;;) {
            const member = await reader.next().catch((e: unknown) => {
              throw uploadFault(e);
            });
            if (!member) break;
            if (manifest) throw invalidArgument('The backup archive has members after its manifest');
            if (member.type === 'directory') {
              if (member.name !== 'snapshots') throw unexpected(member.name);
              continue;
            }
            if (member.name === 'manifest.json') {
              const data = await reader.readSmall(member.size, MAX_MANIFEST_BYTES).catch((e: unknown) => {
                throw uploadFault(e);
              });
              manifest = parseManifest(data, false);
              continue;
            }
            const rel = member.name;
            const snapshot = SNAPSHOT_PAYLOAD.exec(rel)?.[1];
            const rootfs = rel === 'rootfs.tar.zst' || rel === PLAIN_ROOTFS;
            if (seen[rel] || (!rootfs && snapshot === undefined)) throw unexpected(rel);
            if (rootfs !== (Object.keys(seen).length === 0)) {
              throw invalidArgument(
                `The backup archive's ${rel} is out of place: the root file system comes first, then the snapshots`,
              );
            }
            if (snapshot !== undefined && !index.snapshots.some((s) => s.name === snapshot)) {
              throw unexpected(rel);
            }
            progress.stage(snapshot === undefined ? 'root file system' : `snapshot ${snapshot}`);
            const fed = await feedStreamedPayload({
              reader,
              rel,
              work,
              runner,
              signal: ctx.signal,
              onBytes: (n) => progress.add(n),
              // Once a payload failed the guest is removed: the rest is only read, to check it.
              skip: failed !== undefined,
              consume: (path) =>
                storage.importTar(spec, path, {
                  signal: ctx.signal,
                  ...(snapshot !== undefined && { snapshot }),
                }),
            });
            seen[rel] = fed.digest;
            failed ??= fed.failure;
          }
          await reader.drain().catch((e: unknown) => {
            throw uploadFault(e);
          });
          if (!manifest) {
            throw invalidArgument('The file is not a Trivisor backup: it has no readable manifest.json');
          }
          for (const [rel, want] of Object.entries(manifest.files)) {
            const got = seen[rel];
            if (!got) {
              throw invalidArgument(
                `The backup archive lacks ${rel}, which its manifest lists: make the export again`,
              );
            }
            if (got.sha256 !== want.sha256 || got.sizeBytes !== want.sizeBytes) throw corrupted(rel);
          }
          for (const rel of Object.keys(seen)) if (!manifest.files[rel]) throw unexpected(rel);
          if (!indexMatches(index, manifest)) {
            throw invalidArgument(
              "The backup archive's index.json does not match its manifest: make the export again",
            );
          }
          // Every checksum held: a payload that failed failed in its driver.
          if (failed !== undefined) throw failed;
          for (const snap of manifest.snapshots) {
            const record: SnapshotRecord = { ...snap, guest: name, location: spec.location };
            await records.snapshot.at(name, snap.name).put(store, record);
          }
        });
        await store.delete(keys.storagePending(name));
        return { name };
      }).then(
        (result) => {
          settle();
          return result;
        },
        (error: unknown) => {
          settle(error);
          throw error;
        },
      ),
  });
  await settled;
  return operations.get(op.id);
}

const unexpected = (rel: string) =>
  invalidArgument(
    `The backup archive holds an unexpected member ${JSON.stringify(rel)}: make the export again`,
  );

/**
 * The frame of every import operation, from a file or an upload: a private work directory
 * (its FIFOs), removed at the end; a guest the import made (`made`), removed with its pending
 * mark when the import fails; a cancel said as one, a full disk as one.
 */
async function importOperation<T>(
  view: StorageView,
  signal: AbortSignal,
  body: (work: string, made: (name: string) => void) => Promise<T>,
): Promise<T> {
  const { store, importsDir, discard } = view.ctx;
  const work = join(importsDir, `.tmp-${randomBytes(8).toString('hex')}`);
  let created: string | undefined;
  try {
    await mkdir(work, { recursive: true, mode: 0o700 });
    return await body(work, (name) => {
      created = name;
    });
  } catch (e) {
    if (created) {
      await discard(created);
      await store.delete(keys.storagePending(created));
    }
    if (signal.aborted) throw new TrivisorError('Cancelled', 'The import was cancelled');
    throw diskFull(e, 'Cannot import the backup');
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
