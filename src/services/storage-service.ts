import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { GUEST_CONFIG_FILE } from '../control/guest-storage-controller.ts';
import {
  alreadyExists,
  asTrivisorError,
  conflict,
  failedPrecondition,
  invalidArgument,
  notFound,
  notSupported,
  TrivisorError,
} from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import {
  addUsage,
  assertGuestCountable,
  assertWithinLimits,
  DEFAULT_PROJECT,
  guestUsage,
  NO_USAGE,
  projectOfRecord,
} from '../core/projects.ts';
import type { GuestSpec, GuestStatus, Model, Operation } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { GuestStorage } from '../drivers/guest-storage.ts';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import {
  ArchiveDamaged,
  ArchiveWriter,
  digestOf,
  listArchive,
  memberChunks,
  readMember,
} from '../storage/backup-archive.ts';
import { byteProgress } from '../storage/byte-progress.ts';
import { readThroughFifo, writeThroughFifo } from '../storage/fifo-stream.ts';
import type { BackupManifest, SnapshotRecord } from '../storage/storage-records.ts';
import { ZstdFrameEnd } from '../storage/zstd-frames.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { type ClaimHolder, type Claims, createClaims, describeHolder } from './claims.ts';
import { BLANK_IMAGE } from './image-service.ts';
import { DEFAULT_POOL, type PoolService } from './pool-service.ts';
import { readProject } from './project-service.ts';
import type { EventBus, GuestService, ImageService, OperationService } from './types.ts';

/** Body of `POST /1.0/guests` with `source: {type: 'copy'}`. */
export interface CopyGuestRequest {
  name: string;
  source: string;
  snapshot?: string;
  start?: boolean;
  /** Storage pool of the copy (default: the source's pool). */
  storage?: string;
}

/** Snapshots, clones and backups of guests (Incus's instance snapshot and backup API). */
export interface StorageService {
  /** One project's view (another project's guest is NotFound); the service itself is the host's view. */
  inProject(project: string): StorageService;
  listSnapshots(guest: string): Promise<SnapshotRecord[]>;
  getSnapshot(guest: string, snapshot: string): Promise<SnapshotRecord>;
  createSnapshot(guest: string, snapshot: string): Promise<Operation>;
  deleteSnapshot(guest: string, snapshot: string): Promise<Operation>;
  /** Rolls the guest back to the snapshot: stops it if it runs, replaces its state, starts it again. */
  restoreSnapshot(guest: string, snapshot: string): Promise<Operation>;
  copyGuest(request: CopyGuestRequest): Promise<Operation>;
  /**
   * Writes a backup archive on the daemon's side; the operation's metadata names it (`backup`).
   * `incremental` (vm): the next link of the guest's backup chain (`incremental` in the metadata).
   */
  createBackup(guest: string, options: { withSnapshots: boolean; incremental?: boolean }): Promise<Operation>;
  /** Path and size of a finished backup archive, for download. */
  backupFile(guest: string, backup: string): Promise<{ path: string; sizeBytes: number }>;
  deleteBackup(guest: string, backup: string): Promise<void>;
  /** Restores a guest from an archive already written to `archivePath` (the service deletes it). */
  importBackup(request: { archivePath: string; name?: string; storage?: string }): Promise<Operation>;
  /**
   * Removes half-made snapshots, backups and imports an interrupted daemon left; run at start,
   * before the controllers (the guest.json copies and snapshot records of deleted guests are the
   * guest storage controller's: src/control/guest-storage-controller.ts).
   */
  sweep(): Promise<void>;
  /** Rebuilds the records of guests whose directories survive but whose records were lost (`admin recover`). */
  recover(): Promise<RecoverReport>;
}

/** What `admin recover` did. */
export interface RecoverReport {
  /** Guests whose records were rebuilt, with the state found. */
  recovered: Array<{ name: string; model: string; status: string; snapshots: string[]; pool?: string }>;
  /** Guest directories left alone, and why. */
  skipped: Array<{ name: string; reason: string }>;
}

export interface StorageServiceDeps {
  store: KvStore;
  storage: Partial<Record<Model, GuestStorage>>;
  guests: GuestService;
  images: Pick<ImageService, 'get'>;
  operations: OperationService;
  events: EventBus;
  runner: ProcessRunner;
  stateDir: string;
  /** For `recover`: drivers inspect what runs, and guests are recorded as this host's. */
  drivers?: Partial<Record<Model, GuestDriver>>;
  hostName?: string;
  /** Copies of guests on a pool are made on the same pool (copy-on-write there) unless told another. */
  pools?: () => PoolService | undefined;
  /** Where the watch of guest specs says it was lost and listed again (silent if not given). */
  log?: Logger;
  /** Operation claims of this member (default: this service's own, over `store`). */
  claims?: Claims;
}

export { GUEST_CONFIG_FILE } from '../control/guest-storage-controller.ts';

const BACKUP_NAME = /^backup-[0-9a-f]{16}$/;

export function createStorageService(deps: StorageServiceDeps): StorageService {
  const { store, operations, guests, runner } = deps;
  const backupsDir = join(deps.stateDir, 'backups');
  const importsDir = join(deps.stateDir, 'imports');
  // One storage action at a time per guest, whichever member asks: a claim in the store (decision 28).
  const claims = deps.claims ?? createClaims({ store, member: deps.hostName ?? 'local' });
  const guestBusy = (guest: string) => ({
    action: 'storage',
    busy: (h: ClaimHolder) =>
      conflict(`Guest ${guest} has a snapshot, copy or backup under way (${describeHolder(h)}): wait for it`),
  });

  async function loadAny(name: string): Promise<{ spec: GuestSpec; status: GuestStatus | undefined }> {
    assertDnsLabel(name, 'guest name');
    const [s, st] = await Promise.all([
      records.guest.at(name).get(store),
      records.guestStatus.at(name).get(store),
    ]);
    if (!s) throw notFound(`Guest ${name} not found`);
    if (s.value.deleting) throw conflict(`Guest ${name} is being deleted`);
    return { spec: s.value, status: st?.value };
  }

  const storageFor = (spec: GuestSpec): GuestStorage => {
    const s = deps.storage[spec.model];
    if (!s)
      throw notSupported(`Snapshots, copies and backups are not supported for ${spec.model} guests yet`);
    return s;
  };

  const assertProvisioned = (spec: GuestSpec, status: GuestStatus | undefined) => {
    if (!status?.provisioned) {
      throw conflict(`Guest ${spec.name} is still being created: wait for its operation to finish`);
    }
  };

  async function readSnapshot(guest: string, snapshot: string): Promise<SnapshotRecord | undefined> {
    return (await records.snapshot.at(guest, snapshot).get(store))?.value;
  }

  /**
   * Runs `work` as an operation holding the guest's storage claim: taken before the operation
   * starts (a second action is a 409 at once), released when it ends.
   */
  async function exclusive(
    guest: string,
    description: string,
    work: Parameters<OperationService['start']>[0]['run'],
    extra: { project: string; mayCancel?: boolean; resources?: Record<string, string[]> },
  ): Promise<Operation> {
    const held = await claims.acquire('guest', guest, guestBusy(guest));
    try {
      return operations.start({
        project: extra.project,
        description,
        resources: extra.resources ?? { guests: [`/1.0/guests/${guest}`] },
        mayCancel: extra.mayCancel ?? false,
        async run(ctx) {
          try {
            return await work(ctx);
          } finally {
            await held.release().catch(() => {});
          }
        },
      });
    } catch (e) {
      await held.release().catch(() => {});
      throw e;
    }
  }

  /** Waits for an operation started by another service; throws its error when it failed. */
  async function finished(op: Operation): Promise<void> {
    const end = await operations.wait(op.id);
    if (end.status !== 'Success') {
      const code = typeof end.metadata.errorCode === 'string' ? end.metadata.errorCode : 'Internal';
      throw new TrivisorError(code as never, end.error ?? `${end.description} ended ${end.status}`);
    }
  }

  const guestUp = (status: GuestStatus | undefined) =>
    status?.status === 'Running' || status?.status === 'Frozen';

  /** Creates a guest on `pool` (the default pool when undefined or "default"). */
  /**
   * Creates the guest a copy or an import fills: on this member, whose disks its files are made
   * on (decision 0034), never where the scheduler would put a new guest.
   */
  async function createOn(pool: string | undefined, request: Parameters<GuestService['create']>[0]) {
    if (pool === undefined || pool === DEFAULT_POOL)
      return guests.create({ ...request, ...(deps.hostName !== undefined && { target: deps.hostName }) });
    const pools = deps.pools?.();
    if (!pools) throw notSupported('This daemon has no storage pools: leave out the storage pool');
    return pools.createGuest(pool, request);
  }

  /** Fails early, before any work, on a pool that does not exist. */
  async function checkPool(pool: string | undefined): Promise<void> {
    if (pool === undefined || pool === DEFAULT_POOL) return;
    const pools = deps.pools?.();
    if (!pools) throw notSupported('This daemon has no storage pools: leave out the storage pool');
    await pools.get(pool);
  }

  /** Deletes a guest made by a failed copy or import, with its records. */
  async function discard(name: string): Promise<void> {
    const op = await guests.delete(name, { force: true }).catch(() => undefined);
    if (op) await operations.wait(op.id).catch(() => {});
    await store.delete(keys.snapshots(name), { prefix: true }).catch(() => {});
  }

  const guestsDir = join(deps.stateDir, 'guests');

  /** The service as one project sees it; `scope` undefined is the host's view. */
  function scoped(scope: string | undefined): StorageService {
    /** Another project's guest is NotFound, as one that does not exist. */
    async function load(name: string): Promise<{ spec: GuestSpec; status: GuestStatus | undefined }> {
      const l = await loadAny(name);
      if (scope !== undefined && projectOfRecord(l.spec) !== scope) throw notFound(`Guest ${name} not found`);
      return l;
    }

    const service: StorageService = {
      inProject: (project) => scoped(project),

      async listSnapshots(guest) {
        await load(guest);
        return valuesOf(await records.snapshot.list(store, guest)).sort((a, b) =>
          a.createdAt.localeCompare(b.createdAt),
        );
      },

      async getSnapshot(guest, snapshot) {
        await load(guest);
        assertDnsLabel(snapshot, 'snapshot name');
        const record = await readSnapshot(guest, snapshot);
        if (!record) throw notFound(`Guest ${guest} has no snapshot ${snapshot}`);
        return record;
      },

      async createSnapshot(guest, snapshot) {
        const { spec, status } = await load(guest);
        assertDnsLabel(snapshot, 'snapshot name');
        const storage = storageFor(spec);
        assertProvisioned(spec, status);
        if (await readSnapshot(guest, snapshot)) {
          throw alreadyExists(`Guest ${guest} already has a snapshot ${snapshot}: pick another name`);
        }
        const own = { project: projectOfRecord(spec) };
        return exclusive(
          guest,
          `Snapshotting guest ${guest} as ${snapshot}`,
          async () => {
            const record: SnapshotRecord = {
              name: snapshot,
              guest,
              createdAt: new Date().toISOString(),
              wasRunning: guestUp(status),
              location: spec.location,
            };
            await storage.snapshot(spec, snapshot).catch((e: unknown) => {
              throw diskFull(e, `Cannot snapshot guest ${guest} as ${snapshot}`);
            });
            const ref = records.snapshot.at(guest, snapshot);
            const r = await store.txn({ compare: [ref.absent()], success: [ref.putOp(record)] });
            if (!r.succeeded) {
              await storage.deleteSnapshot(spec, snapshot);
              throw alreadyExists(`Guest ${guest} already has a snapshot ${snapshot}: pick another name`);
            }
            return { snapshot: record };
          },
          own,
        );
      },

      async deleteSnapshot(guest, snapshot) {
        const record = await service.getSnapshot(guest, snapshot);
        const { spec } = await load(guest);
        const storage = storageFor(spec);
        return exclusive(
          guest,
          `Deleting snapshot ${snapshot} of guest ${guest}`,
          async () => {
            // Record first: a crash in between leaves a directory that sweep() removes, never a dangling record.
            await store.delete(keys.snapshot(guest, record.name));
            await storage.deleteSnapshot(spec, record.name);
            return undefined;
          },
          { project: projectOfRecord(spec) },
        );
      },

      async restoreSnapshot(guest, snapshot) {
        await service.getSnapshot(guest, snapshot);
        const { spec, status } = await load(guest);
        const storage = storageFor(spec);
        assertProvisioned(spec, status);
        return exclusive(
          guest,
          `Restoring guest ${guest} to snapshot ${snapshot}`,
          async (ctx) => {
            const wasUp = guestUp(status);
            if (wasUp) {
              ctx.progress(null, 'stopping');
              await finished(await guests.changeState(guest, { action: 'stop' }));
            }
            ctx.progress(null, 'restoring');
            const now = await load(guest);
            await storage.restoreSnapshot(now.spec, snapshot);
            if (wasUp) {
              ctx.progress(null, 'starting');
              await finished(await guests.changeState(guest, { action: 'start' }));
            }
            return undefined;
          },
          { project: projectOfRecord(spec) },
        );
      },

      async copyGuest(request) {
        assertDnsLabel(request.name, 'guest name');
        const { spec: source, status } = await load(request.source);
        const storage = storageFor(source);
        assertProvisioned(source, status);
        if (request.snapshot !== undefined) await service.getSnapshot(request.source, request.snapshot);
        const project = projectOfRecord(source);
        const taken = await records.guest.at(request.name).get(store);
        if (taken) {
          throw projectOfRecord(taken.value) === project
            ? alreadyExists(`Guest ${request.name} already exists`)
            : alreadyExists(
                `The name ${request.name} is taken by a guest of another project: guest names are unique on this host, pick another`,
              );
        }
        // The quota is refused here, before any work; the create in the operation checks it again, race-free.
        const p = await readProject(store, project);
        assertGuestCountable(project, p.spec.config, source.config);
        assertWithinLimits(project, p.spec.config, {
          before: p.usage,
          after: addUsage(p.usage, guestUsage(source.config)),
        });
        await checkPool(request.storage);
        const what = request.snapshot ? `${request.source}/${request.snapshot}` : request.source;
        return exclusive(
          request.source,
          `Copying guest ${what} to ${request.name}`,
          async (ctx) => {
            await records.storagePending.at(request.name).put(store, { kind: 'copy' });
            const create = {
              name: request.name,
              project,
              image: source.image,
              model: source.model,
              config: { ...source.config },
            };
            const pool = request.storage ?? (await deps.pools?.()?.poolOf(request.source));
            await finished(await createOn(pool, create));
            try {
              ctx.progress(null, 'copying');
              const target = (await load(request.name)).spec;
              await storage.copy(
                source,
                target,
                request.snapshot === undefined ? {} : { snapshot: request.snapshot },
              );
            } catch (e) {
              await discard(request.name);
              throw e;
            } finally {
              await store.delete(keys.storagePending(request.name));
            }
            if (request.start) await finished(await guests.changeState(request.name, { action: 'start' }));
            return undefined;
          },
          {
            project,
            resources: { guests: [`/1.0/guests/${request.source}`, `/1.0/guests/${request.name}`] },
          },
        );
      },

      async createBackup(guest, options) {
        const { spec, status } = await load(guest);
        const storage = storageFor(spec);
        assertProvisioned(spec, status);
        const exportIncremental = storage.exportIncremental?.bind(storage);
        if (options.incremental) {
          if (!exportIncremental) {
            throw notSupported(
              `Incremental backups are not supported for ${spec.model} guests: only vm disks keep dirty bitmaps`,
            );
          }
          if (options.withSnapshots) {
            throw invalidArgument('An incremental backup carries no snapshots: leave out --with-snapshots');
          }
        }
        const backup = `backup-${randomBytes(8).toString('hex')}`;
        return exclusive(
          guest,
          `Backing up guest ${guest}`,
          async (ctx) => {
            // A guest made with --empty has no image: its archive names none ('').
            const image = spec.image === '' ? BLANK_IMAGE.record : await deps.images.get(spec.image);
            const snapshots = options.withSnapshots ? await service.listSnapshots(guest) : [];
            const dir = join(backupsDir, guest);
            const work = join(dir, `.tmp-${backup}`);
            const partial = join(dir, `.tmp-${backup}.tar`);
            const archive = join(dir, `${backup}.tar`);
            await mkdir(work, { recursive: true, mode: 0o700 });
            // Each payload goes from the driver's tar through a FIFO into the archive, hashed on the
            // way: written once, read never (decision 35). The manifest, which holds the checksums, comes last.
            let writer: ArchiveWriter | undefined;
            try {
              writer = await ArchiveWriter.create(partial);
              const into = writer;
              const files: BackupManifest['files'] = {};
              const progress = byteProgress((percent, text) => ctx.progress(percent, text));
              const payload = async (rel: string, produce: (path: string) => Promise<unknown>) => {
                const fifo = join(work, rel.replaceAll('/', '-'));
                await runner.run(['mkfifo', '-m', '0600', fifo]);
                files[rel] = await readThroughFifo(fifo, produce, (chunks) =>
                  into.addStream(rel, zstdFramesOf(chunks), (n) => progress.add(n)),
                );
              };
              progress.stage('root file system');
              let link: BackupManifest['incremental'];
              await payload('rootfs.tar.zst', async (path) => {
                if (options.incremental && exportIncremental) {
                  link = await exportIncremental(spec, path, { signal: ctx.signal });
                } else {
                  await storage.exportTar(spec, path, { signal: ctx.signal });
                }
              });
              if (snapshots.length > 0) await into.addDirectory('snapshots');
              for (const snap of snapshots) {
                progress.stage(`snapshot ${snap.name}`);
                await payload(`snapshots/${snap.name}.tar.zst`, (path) =>
                  storage.exportTar(spec, path, { snapshot: snap.name, signal: ctx.signal }),
                );
              }
              ctx.signal.throwIfAborted();
              const manifest: BackupManifest = {
                format: 'trivisor-backup/1',
                createdAt: new Date().toISOString(),
                guest: { name: spec.name, model: spec.model, config: spec.config, createdAt: spec.createdAt },
                image: {
                  fingerprint: image.fingerprint,
                  alias: spec.imageAlias,
                  description: image.description,
                },
                snapshots,
                ...(link && { incremental: link }),
                files,
              };
              await into.addBuffer('manifest.json', Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`));
              const sizeBytes = await into.finish();
              await rename(partial, archive);
              return { backup, sizeBytes, ...(link && { incremental: link }) };
            } catch (e) {
              await writer?.abandon();
              await rm(partial, { force: true });
              if (ctx.signal.aborted)
                throw new TrivisorError('Cancelled', `The backup of guest ${guest} was cancelled`);
              throw diskFull(e, `Cannot back up guest ${guest}`);
            } finally {
              await rm(work, { recursive: true, force: true });
            }
          },
          { project: projectOfRecord(spec), mayCancel: true },
        );
      },

      async backupFile(guest, backup) {
        assertDnsLabel(guest, 'guest name');
        // Backups are kept by guest name: one is only reachable through a guest of the project.
        if (scope !== undefined) await load(guest);
        if (!BACKUP_NAME.test(backup))
          throw invalidArgument(`${JSON.stringify(backup)} is not a backup name`);
        const path = join(backupsDir, guest, `${backup}.tar`);
        const st = await stat(path).catch(() => undefined);
        if (!st) throw notFound(`Guest ${guest} has no backup ${backup}`);
        return { path, sizeBytes: st.size };
      },

      async deleteBackup(guest, backup) {
        const { path } = await service.backupFile(guest, backup);
        await rm(path, { force: true });
      },

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
                await readMember(archivePath, manifestMember, MAX_MANIFEST_BYTES).catch(() =>
                  Buffer.alloc(0),
                ),
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

      async recover() {
        const report: RecoverReport = { recovered: [], skipped: [] };
        const entries = await readdir(guestsDir).catch(() => [] as string[]);
        for (const name of entries.sort()) {
          if (name.startsWith('.')) continue;
          const skip = (reason: string) => report.skipped.push({ name, reason });
          let spec: GuestSpec;
          const file = join(guestsDir, name, GUEST_CONFIG_FILE);
          try {
            const kept = JSON.parse(await readFile(file, 'utf8')) as { spec?: unknown };
            spec = records.guest.check(kept.spec, file);
          } catch {
            skip(`no readable ${GUEST_CONFIG_FILE}`);
            continue;
          }
          if (spec.name !== name) {
            skip(`${GUEST_CONFIG_FILE} names another guest (${spec.name})`);
            continue;
          }
          if (await store.get(records.guest.key(name))) {
            skip('its records exist');
            continue;
          }
          const driver = deps.drivers?.[spec.model];
          if (!driver) {
            skip(`the ${spec.model} model is not available on this host`);
            continue;
          }
          const image =
            spec.image === '' ? BLANK_IMAGE.record : await deps.images.get(spec.image).catch(() => undefined);
          if (!image) {
            skip(
              `its image ${spec.imageAlias || spec.image} (fingerprint ${spec.image}) is not on this host`,
            );
            continue;
          }
          const rt = await driver.inspect(spec, undefined).catch(() => ({ state: 'absent' as const }));
          if (rt.state === 'absent') {
            skip('its driver finds nothing of it on disk');
            continue;
          }
          // The desired state follows what runs: recovery adopts, it does not start or stop anything.
          const desired = rt.state === 'running' ? 'Running' : rt.state === 'frozen' ? 'Frozen' : 'Stopped';
          const next: GuestSpec = {
            ...spec,
            desired,
            deleting: false,
            stopForce: false,
            location: deps.hostName ?? spec.location,
          };
          const status: GuestStatus = {
            status: desired,
            observedGeneration: next.generation,
            observedRestartRequest: next.restartRequest,
            restartCount: 0,
            provisioned: true,
            appliedConfig: { ...next.config },
            pendingRestart: [],
          };
          if ('process' in rt && rt.process) status.process = rt.process;
          const storage = deps.storage[spec.model];
          const snapshots = storage ? await storage.listSnapshots(spec).catch(() => [] as string[]) : [];
          const ops: Parameters<KvStore['txn']>[0]['success'] = [
            records.guestStatus.at(name).putOp(status),
            records.guestLocation.at(name).putOp(next.location),
            records.guest.at(name).putOp(next),
          ];
          for (const snap of snapshots) {
            const st = await stat(join(guestsDir, name, 'snapshots', snap)).catch(() => undefined);
            const record: SnapshotRecord = {
              name: snap,
              guest: name,
              createdAt: (st?.mtime ?? new Date()).toISOString(),
              wasRunning: false,
              location: next.location,
            };
            ops.push(records.snapshot.at(name, snap).putOp(record));
          }
          const r = await store.txn({ compare: [records.guest.at(name).absent()], success: ops });
          if (!r.succeeded) {
            skip('its records were made meanwhile');
            continue;
          }
          // A guest on a pool other than the default one is recorded there again, with the pool if it was lost too.
          const pool = await deps
            .pools?.()
            ?.recoverGuest(next)
            .catch((e: unknown) => {
              report.skipped.push({ name, reason: `its pool: ${asTrivisorError(e).message}` });
              return undefined;
            });
          report.recovered.push({
            name,
            model: spec.model,
            status: desired,
            snapshots,
            ...(pool && { pool }),
          });
        }
        return report;
      },

      async sweep() {
        // Guests a crash left half-copied or half-imported are deleted (by the controller, once it runs).
        for (const kv of (await store.list(records.storagePending.prefix)).kvs) {
          const name = records.storagePending.nameOf(kv.key);
          const op = await guests.delete(name, { force: true }).catch(() => undefined);
          if (op) void operations.wait(op.id).catch(() => {});
          await store.delete(kv.key);
        }
        for (const name of await readdir(deps.stateDir).catch(() => [] as string[])) {
          if (name.startsWith('trivisor-import-')) await rm(join(deps.stateDir, name), { force: true });
        }
        for (const dir of [backupsDir, importsDir]) {
          await sweepTmp(dir);
          for (const sub of await readdir(dir).catch(() => [] as string[])) await sweepTmp(join(dir, sub));
        }
        // Snapshot records of guests that are gone are the guest storage controller's to drop.
        for (const spec of valuesOf(await records.guest.list(store))) {
          const storage = deps.storage[spec.model];
          if (!storage) continue;
          await storage.sweep(spec).catch(() => {});
          // A snapshot is real only when both its record and its directory exist.
          const onDisk = new Set(await storage.listSnapshots(spec).catch(() => [] as string[]));
          const recorded = await store.list(keys.snapshots(spec.name));
          for (const r of recorded.kvs) {
            const name = r.key.slice(keys.snapshots(spec.name).length);
            if (!onDisk.has(name)) await store.delete(r.key);
            onDisk.delete(name);
          }
          for (const name of onDisk) await storage.deleteSnapshot(spec, name).catch(() => {});
        }
      },
    };
    return service;
  }

  return scoped(undefined);
}

async function sweepTmp(dir: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith('.tmp-')) await removeDebris(join(dir, name));
  }
}

/**
 * Removes a half-made tree. A copy started by a daemon that was killed may still be
 * writing into it: renaming it first makes that copy fail instead of refilling it.
 */
export async function removeDebris(path: string): Promise<void> {
  const trash = `${path}.trash-${randomBytes(4).toString('hex')}`;
  await rename(path, trash).catch(() => {});
  await rm(trash, { recursive: true, force: true, maxRetries: 3 });
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}

/** The zstd frames of a payload, without the zeros tar pads them with when it writes to a FIFO. */
async function* zstdFramesOf(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const frames = new ZstdFrameEnd();
  for await (const chunk of chunks) {
    const kept = frames.take(chunk);
    if (kept.length > 0) yield kept;
  }
  frames.end();
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

/** Turns ENOSPC (from Node or from tar/cp output) into a clear FailedPrecondition. */
function diskFull(e: unknown, what: string): TrivisorError {
  const err = asTrivisorError(e);
  const text = `${err.message} ${(e as { stderr?: string }).stderr ?? ''} ${(e as { code?: string }).code ?? ''}`;
  // GNU tar reports a short write ("Wrote only 8192 of 10240 bytes") rather than ENOSPC.
  if (/ENOSPC|No space left on device|Wrote only \d+ of \d+ bytes/i.test(text)) {
    return failedPrecondition(`${what}: the disk is full; free some space and try again`);
  }
  return err;
}
