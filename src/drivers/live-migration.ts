import type { GuestSpec, ProcessIdentity } from '../core/types.ts';
import type { ImageHandle } from './guest-driver.ts';

/** Where a destination listens for one live migration: its disk's NBD export and the RAM stream (plain TCP). */
export interface IncomingEndpoints {
  /** The destination member's cluster address (an IP address). */
  host: string;
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
   * this member already has files of the guest.
   */
  prepareIncoming(
    spec: GuestSpec,
    image: ImageHandle,
    options: {
      host: string;
      /** The source member's address: the only one that may connect to the ports. */
      from: string;
    },
  ): Promise<{ process: ProcessIdentity; endpoints: IncomingEndpoints; tls: MigrationTls }>;
  /** Destination: the migration is in and the guest's records name this member: it runs here. */
  finishIncoming(spec: GuestSpec): Promise<void>;
  /** Destination: a migration given up: what guards its ports goes (the files go with the driver's delete). */
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
      signal: AbortSignal;
      onProgress?: (p: MigrationProgress) => void;
    },
  ): Promise<MigrationResult>;
  /** Source: runs the guest again after a migration that completed but could not be handed over. */
  resumeSource(spec: GuestSpec): Promise<void>;
}
