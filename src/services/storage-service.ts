import { notFound } from '../core/errors.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { GuestSpec, GuestStatus, Model, Operation } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { GuestStorage, PortableChainState } from '../drivers/guest-storage.ts';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import type { KvStore } from '../store/kv.ts';
import type { Upload } from './archive-stream.ts';
import type { Claims } from './claims.ts';
import type { PoolService } from './pool-service.ts';
import type { BackupFollow } from './storage-backups.ts';
import { backupMethods } from './storage-backups.ts';
import { createStorageContext, type StorageView } from './storage-context.ts';
import { copyMethods } from './storage-copy.ts';
import { importMethods } from './storage-import.ts';
import { recoveryMethods } from './storage-recovery.ts';
import { snapshotMethods } from './storage-snapshots.ts';
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
  /** `expiresAt`: when the snapshot is deleted again (scheduled snapshots, `snapshots.expiry`). */
  createSnapshot(guest: string, snapshot: string, options?: { expiresAt?: string }): Promise<Operation>;
  deleteSnapshot(guest: string, snapshot: string): Promise<Operation>;
  /** Rolls the guest back to the snapshot: stops it if it runs, replaces its state, starts it again. */
  restoreSnapshot(guest: string, snapshot: string): Promise<Operation>;
  copyGuest(request: CopyGuestRequest): Promise<Operation>;
  /**
   * Writes a backup archive on the daemon's side; the operation's metadata names it (`backup`).
   * `uncompressed` (vm): the disk stored plain, for a live restore (decision 0063).
   * `incremental`: the next link of the guest's backup chain (`incremental` in the metadata);
   * with `newChain`, the full backup that starts a new one (scheduled backups, decision 0062).
   * `name`: the archive's name, made by the caller with `newBackupName()` so that it can record it
   * before the archive exists (a move's journal, decision 0079); refused when it is taken.
   * `snapshotsOnly`: the snapshots alone, no root file system (a live move's cold part, decision
   * 0088: the disk itself is mirrored); with `withSnapshots` only.
   * `continueChain` (scheduled backups, decision 0062 amended): with `incremental`, the state of
   * the link last shipped, which the guest takes over first where its own chain is elsewhere (it
   * moved, it was recovered) and its driver can prove the link after it correct. An incremental
   * backup also leaves the guest's chain state after it beside the archive (`chainStateFileOf`).
   */
  createBackup(
    guest: string,
    options: {
      withSnapshots: boolean;
      snapshotsOnly?: boolean;
      incremental?: boolean;
      uncompressed?: boolean;
      newChain?: boolean;
      name?: string;
      continueChain?: PortableChainState;
    },
  ): Promise<Operation>;
  /** Path and size of a finished backup archive, for download. */
  backupFile(guest: string, backup: string): Promise<{ path: string; sizeBytes: number }>;
  /** A backup archive for a download that follows it while its export still writes it (issue 20 §1). */
  followBackup(guest: string, backup: string): Promise<BackupFollow>;
  deleteBackup(guest: string, backup: string): Promise<void>;
  /**
   * Restores a guest from an archive already written to `archivePath` (the service deletes it);
   * `live` (vm, decision 0063): the guest runs at once on the archive's disk, copied behind it.
   */
  importBackup(request: {
    archivePath: string;
    name?: string;
    storage?: string;
    live?: boolean;
    /**
     * A link of a chain imported in one operation (the backup directory's, decision 0074): the
     * guest stays marked half-imported (swept at the next start) until the `last` link is
     * applied, and a link that fails removes the guest the chain's full made. `link`: its place
     * (0 the full); a later link goes onto that guest, so it is no guest more for `limits.guests`.
     */
    chain?: { link: number; last: boolean };
  }): Promise<Operation>;
  /**
   * Imports a whole archive while it is uploaded (an archive with an index, issue 20 §1): answers
   * once the upload has been read to its end, so that its faults (a checksum, a truncation) are
   * this call's errors, and the guest it made is removed then.
   */
  importUpload(request: { upload: Upload; name?: string; storage?: string }): Promise<Operation>;
  /**
   * Removes the guest a chain import's full made, when a later link of the chain is refused
   * (decision 0082): only a guest still marked half-imported by an import, of this view's
   * project, so never one the import did not make. Nothing to remove is no error.
   */
  discardImport(name: string): Promise<void>;
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

export { removeDebris } from './storage-recovery.ts';

export function createStorageService(deps: StorageServiceDeps): StorageService {
  const ctx = createStorageContext(deps);

  /** The service as one project sees it; `scope` undefined is the host's view. */
  function scoped(scope: string | undefined): StorageService {
    async function load(name: string): Promise<{ spec: GuestSpec; status: GuestStatus | undefined }> {
      const l = await ctx.loadAny(name);
      if (scope !== undefined && projectOfRecord(l.spec) !== scope) throw notFound(`Guest ${name} not found`);
      return l;
    }
    const view: StorageView = { ctx, scope, load, self: () => service };
    const service: StorageService = {
      inProject: (project) => scoped(project),
      ...snapshotMethods(view),
      ...copyMethods(view),
      ...backupMethods(view),
      ...importMethods(view),
      ...recoveryMethods(ctx),
    };
    return service;
  }

  return scoped(undefined);
}
