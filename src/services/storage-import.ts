import { createHash, randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  alreadyExists,
  asTrivisorError,
  conflict,
  failedPrecondition,
  invalidArgument,
  TrivisorError,
} from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import {
  addUsage,
  assertWithinLimits,
  DEFAULT_PROJECT,
  NO_USAGE,
  projectOfRecord,
} from '../core/projects.ts';
import type { Model } from '../core/types.ts';
import {
  ArchiveDamaged,
  digestOf,
  listArchive,
  memberChunks,
  readMember,
} from '../storage/backup-archive.ts';
import { byteProgress } from '../storage/byte-progress.ts';
import { writeThroughFifo } from '../storage/fifo-stream.ts';
import type { BackupManifest, SnapshotRecord } from '../storage/storage-records.ts';
import { records } from '../store/records.ts';
import { type ClaimHolder, describeHolder } from './claims.ts';
import { readProject } from './project-service.ts';
import { diskFull, type StorageView } from './storage-context.ts';
import type { StorageService } from './storage-service.ts';

/** Restores a guest from a backup archive (import), whole or as the next link of its chain. */
export function importMethods(view: StorageView): Pick<StorageService, 'importBackup'> {
  const {
    deps,
    store,
    operations,
    runner,
    importsDir,
    claims,
    guestBusy,
    storageFor,
    finished,
    guestUp,
    createOn,
    checkPool,
    discard,
  } = view.ctx;
  const { scope, load } = view;
  return {
    async importBackup(request) {
      const project = scope ?? DEFAULT_PROJECT;
      // What the archive holds is known only once it is unpacked: the guest count is refused here,
      // the rest (memory, CPUs, disk) by the create in the operation, which leaves nothing behind.
      const p = await readProject(store, project);
      assertWithinLimits(project, p.spec.config, {
        before: p.usage,
        after: addUsage(p.usage, { ...NO_USAGE, guests: 1 }),
      });
      await checkPool(request.storage);
      const id = randomBytes(8).toString('hex');
      return operations.start({
        project,
        description: 'Importing a guest backup',
        mayCancel: true,
        async run(ctx) {
          const work = join(importsDir, `.tmp-${id}`);
          let created: string | undefined;
          try {
            await mkdir(work, { recursive: true, mode: 0o700 });
            ctx.progress(0, 'reading the archive');
            // The archive is read in place (headers only here): each payload then goes once from it into
            // the driver through a FIFO, its checksum computed on the way (decision 35).
            const archivePath = request.archivePath;
            const members = await listArchive(archivePath).catch((e: unknown) => {
              if (e instanceof ArchiveDamaged) {
                throw invalidArgument(
                  `The backup archive is corrupted or truncated (${e.message}): make the export again`,
                );
              }
              throw e;
            });
            const byName = new Map(members.filter((m) => m.type === 'file').map((m) => [m.name, m]));
            const manifestMember = byName.get('manifest.json');
            if (!manifestMember)
              throw invalidArgument('The file is not a Trivisor backup: it has no readable manifest.json');
            const manifest = parseManifest(
              await readMember(archivePath, manifestMember, MAX_MANIFEST_BYTES).catch(() => Buffer.alloc(0)),
            );
            const corrupted = (rel: string) =>
              invalidArgument(`The backup archive is corrupted: ${rel} does not match its checksum`);
            for (const [rel, want] of Object.entries(manifest.files)) {
              const member = byName.get(rel);
              if (!member)
                throw invalidArgument(
                  `The backup archive lacks ${rel}, which its manifest lists: make the export again`,
                );
              if (member.size !== want.sizeBytes) throw corrupted(rel);
            }
            for (const snap of manifest.snapshots) {
              if (!manifest.files[`snapshots/${snap.name}.tar.zst`]) {
                throw invalidArgument(
                  `The backup archive lacks snapshot ${snap.name}: make the export again`,
                );
              }
            }
            const total = Object.values(manifest.files).reduce((n, f) => n + f.sizeBytes, 0);
            const progress = byteProgress((percent, text) => ctx.progress(percent, text), { total });
            /** Feeds payload `rel` to `consume` (a driver's importTar) and refuses it when its checksum differs. */
            const feed = async (rel: string, consume: (path: string) => Promise<unknown>) => {
              const member = byName.get(rel);
              const want = manifest.files[rel];
              if (!member || !want) throw corrupted(rel);
              const fifo = join(work, rel.replaceAll('/', '-'));
              await runner.run(['mkfifo', '-m', '0600', fifo]);
              const hash = createHash('sha256');
              const failure = await writeThroughFifo(
                fifo,
                consume,
                memberChunks(archivePath, member),
                (chunk) => {
                  ctx.signal.throwIfAborted();
                  hash.update(chunk);
                  progress.add(chunk.length);
                },
              ).then(
                () => undefined,
                (e: unknown) => e ?? new Error('failed'),
              );
              await rm(fifo, { force: true });
              if (ctx.signal.aborted) throw new TrivisorError('Cancelled', 'The import was cancelled');
              // A damaged payload makes its consumer fail too: the checksum names the cause.
              if (hash.digest('hex') !== want.sha256) throw corrupted(rel);
              if (failure) throw failure;
            };
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
              // Onto an existing guest: checked whole before anything of it is applied.
              ctx.progress(null, 'verifying checksums');
              const rootfs = byName.get('rootfs.tar.zst');
              const want = manifest.files['rootfs.tar.zst'];
              if (!rootfs || !want || (await digestOf(archivePath, rootfs)).sha256 !== want.sha256) {
                throw corrupted('rootfs.tar.zst');
              }
              await claims.holding('guest', name, guestBusy(name), async () => {
                progress.stage('applying the incremental backup');
                await feed('rootfs.tar.zst', (path) =>
                  importIncremental(spec, path, { link, signal: ctx.signal }),
                );
              });
              return { name };
            }
            const taken = await records.guest.at(name).get(store);
            if (taken) {
              throw projectOfRecord(taken.value) === project
                ? alreadyExists(`Guest ${name} already exists: give the import another name`)
                : alreadyExists(
                    `The name ${name} is taken by a guest of another project: guest names are unique on this host, give the import another name`,
                  );
            }
            const blank = manifest.image.fingerprint === '';
            await (blank ? Promise.resolve() : deps.images.get(manifest.image.fingerprint)).catch(
              (e: unknown) => {
                if (asTrivisorError(e).code !== 'NotFound') throw e;
                throw failedPrecondition(
                  `The image ${manifest.image.alias || manifest.image.fingerprint} (fingerprint ${manifest.image.fingerprint}) the backup was made from is not on this host: import or build it first`,
                );
              },
            );
            const importing = {
              action: 'import',
              busy: (h: ClaimHolder) =>
                conflict(`Guest ${name} is being imported already (${describeHolder(h)}): wait for it`),
            };
            await claims.holding('guest', name, importing, async () => {
              ctx.progress(0, 'creating the guest');
              created = name;
              await records.storagePending.at(name).put(store, { kind: 'import' });
              await finished(
                await createOn(request.storage, {
                  name,
                  project,
                  image: manifest.image.fingerprint,
                  model: manifest.guest.model as Model,
                  config: manifest.guest.config,
                }),
              );
              const { spec } = await load(name);
              const storage = storageFor(spec);
              progress.stage('root file system');
              const importIncremental = storage.importIncremental?.bind(storage);
              await feed('rootfs.tar.zst', (path) =>
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
            await store.delete(keys.storagePending(name));
            return { name };
          } catch (e) {
            if (created) {
              await discard(created);
              await store.delete(keys.storagePending(created));
            }
            if (ctx.signal.aborted) throw new TrivisorError('Cancelled', 'The import was cancelled');
            throw diskFull(e, 'Cannot import the backup');
          } finally {
            await rm(work, { recursive: true, force: true });
            await rm(request.archivePath, { force: true });
          }
        },
      });
    },
  };
}

/** A manifest is a few KiB (its snapshots' records): anything far larger is not one. */
const MAX_MANIFEST_BYTES = 16 * 2 ** 20;

function parseManifest(data: Buffer): BackupManifest {
  let manifest: BackupManifest;
  try {
    manifest = JSON.parse(data.toString('utf8')) as BackupManifest;
  } catch {
    throw invalidArgument('The file is not a Trivisor backup: it has no readable manifest.json');
  }
  if (manifest.format !== 'trivisor-backup/1') {
    throw invalidArgument(`The backup format ${JSON.stringify(manifest.format)} is not known to this daemon`);
  }
  if (!manifest.files?.['rootfs.tar.zst'])
    throw invalidArgument('The backup manifest lists no rootfs.tar.zst');
  for (const rel of Object.keys(manifest.files)) {
    if (!/^(rootfs\.tar\.zst|snapshots\/[a-z0-9-]+\.tar\.zst)$/.test(rel)) {
      throw invalidArgument(`The backup manifest lists an unexpected file ${JSON.stringify(rel)}`);
    }
  }
  return manifest;
}
