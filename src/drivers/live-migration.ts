import type { GuestSpec, ProcessIdentity } from '../core/types.ts';
import type { ImageHandle } from './guest-driver.ts';

/** Where a destination listens for one live migration: its disk's NBD export and the RAM stream (plain TCP). */
export interface IncomingEndpoints {
  /** The destination member's cluster address (an IP address). */
  host: string;
  /** 0 when nothing is exported: the disk is on a shared pool, the destination opens the same file (decision 0061). */
  nbdPort: number;
  migrationPort: number;
}

/**
 * The source's TLS credentials for one migration (PEM): a certificate and key of its own and the
 * certificate of the CA the destination made for this migration alone, which signed both sides'.
 */
export interface MigrationTls {
  caCert: string;
  cert: string;
  key: string;
}

/** What a live migration has done so far (the operation's progress). */
export interface MigrationProgress {
  phase: 'mirroring the disk' | 'copying RAM' | 'switching over';
  diskDoneBytes: number;
  diskTotalBytes: number;
  ramTransferredBytes: number;
  ramTotalBytes: number;
}

/** What a finished live migration measured (the operation's metadata). */
export interface MigrationResult {
  /** The guest's pause at switch-over as the engine measured it (QEMU: query-migrate's `downtime`). */
  downtimeMs: number;
  /** From the start of the disk's mirror to the source paused with both disks equal. */
  totalMs: number;
  mirrorMs: number;
  ramMs: number;
  diskBytes: number;
  ramBytes: number;
}

/**
 * Live migration of a running guest to another member (vm: QEMU's; decision 0042), a driver's
 * optional part: the destination's three steps and the source's two. The service drives them
 * and hands the guest's records over between `migrateOut` and `finishIncoming`.
 */
export interface LiveMigration {
  /**
   * Destination: makes the guest's disk here (empty: an overlay on its image's base disk) and
   * starts its engine paused, waiting for the migration, with the disk exported; refused when
   * this member already has files of the guest. With `sharedDisk` the guest's files are already
   * here (a shared pool, linked): nothing is made or exported, and it is refused when this
   * member runs an engine of the guest already.
   */
  prepareIncoming(
    spec: GuestSpec,
    image: ImageHandle,
    options: {
      host: string;
      /** The source member's address: the only one that may connect to the ports. */
      from: string;
      sharedDisk?: boolean;
      /**
       * Run once the disk is made here and before the engine opens it (not with `sharedDisk`): a
       * live move's snapshots are written into it (decision 0088). Leaves what the disk's mirror
       * needs as it was (vm: the active layer empty over the base, the snapshots internal).
       */
      fill?: () => Promise<void>;
    },
  ): Promise<{ process: ProcessIdentity; endpoints: IncomingEndpoints; tls: MigrationTls }>;
  /** Destination: the migration is in and the guest's records name this member: it runs here. */
  finishIncoming(spec: GuestSpec): Promise<void>;
  /**
   * Destination: a migration given up: its waiting engine and what guards its ports go (the
   * files go with the driver's delete, or stay on a shared pool).
   */
  dropIncoming(spec: GuestSpec): Promise<void>;
  /**
   * Source: copies the disk and the RAM to `to`; resolves with the guest paused here and both
   * disks equal. On failure or abort the guest runs on here as before, and it throws.
   */
  migrateOut(
    spec: GuestSpec,
    options: {
      to: IncomingEndpoints;
      /** The credentials the destination's prepare answered with: both streams go in TLS. */
      tls: MigrationTls;
      downtimeLimitMs: number;
      /**
       * How long the copy may move no byte before it is given up, the guest running on here
       * (the guest's `migration.stall_limit`; the driver's default when unset).
       */
      stallLimitMs?: number;
      /** The destination opens the same disk file (a shared pool): only the RAM moves. */
      sharedDisk?: boolean;
      signal: AbortSignal;
      onProgress?: (p: MigrationProgress) => void;
    },
  ): Promise<MigrationResult>;
  /** Source: runs the guest again after a migration that completed but could not be handed over. */
  resumeSource(spec: GuestSpec): Promise<void>;
  /**
   * Source, when a daemon that died during the guest's migration, before the switch-over, starts
   * again (decision 0079; the destination's waiting engine dropped first): undoes what the
   * migration left in the engine here (QEMU: the migration, the disk's mirror job, the node it
   * wrote to, the credentials), then runs the guest again. Answers what it undid; throws, with the
   * guest resumed, naming what it could not undo.
   */
  recoverSource(spec: GuestSpec): Promise<string[]>;
  /**
   * Source, after the hand-over, when the guest's files stay (a shared pool): its paused engine
   * here and its runtime files go, the guest's own files are left alone.
   */
  releaseSource(spec: GuestSpec): Promise<void>;
}
