import type { GuestSpec } from '../core/types.ts';

/** Where a disk backup stands in an incremental chain: a full backup is sequence 0 of a new chain. */
export interface BackupChainLink {
  chain: string;
  sequence: number;
  kind: 'full' | 'incremental';
  /** 'btrfs-send': a ct link whose payload is a zstd `btrfs send` stream, received onto a btrfs pool (decision 0067). */
  method?: 'btrfs-send';
}

/**
 * The state a guest's next incremental backup continues from, as bytes another member can take
 * over (decision 0062, amended: a chain that goes on across a move or a recovery). `data` is the
 * driver's own (pvm: the disk's size and its block checksums at that link; ct: a manifest of its
 * upper layer, src/drivers/ct/ct-chain-carry.ts); only the driver of
 * the same model reads it.
 */
export interface PortableChainState {
  chain: string;
  sequence: number;
  data: Buffer;
}

/** Options of the copy and archive methods: work from a snapshot instead of the live root file system. */
export interface FromSnapshot {
  snapshot?: string;
}

/**
 * The storage side of a guest driver: snapshots, clones and archives of a guest's
 * own writable state (for `ct` the overlay's upper layer). Kept apart from
 * GuestDriver so that a model without it is simply absent from the storage map
 * and answers NotSupported (docs/decisions/0006-guest-storage-interface.md).
 */
export interface GuestStorage {
  /** Makes snapshot `snapshot` of the guest, consistent even while it runs (frozen while copied). */
  snapshot(spec: GuestSpec, snapshot: string): Promise<void>;
  /** Replaces the guest's writable state by the snapshot's; the guest must be stopped. */
  restoreSnapshot(spec: GuestSpec, snapshot: string): Promise<void>;
  /** Removes a snapshot; idempotent. */
  deleteSnapshot(spec: GuestSpec, snapshot: string): Promise<void>;
  /** Snapshots present on disk (for recovery and reconciliation). */
  listSnapshots(spec: GuestSpec): Promise<string[]>;
  /** Fills a freshly created, stopped `target` with the writable state of `source` (copy-on-write where the file system allows). */
  copy(source: GuestSpec, target: GuestSpec, options?: FromSnapshot): Promise<void>;
  /**
   * Writes the writable state (or a snapshot's) as a zstd-compressed tar file at `tarPath`;
   * with `uncompressed` (vm), a plain tar whose disk a live restore reads in place (decision 0063).
   */
  exportTar(
    spec: GuestSpec,
    tarPath: string,
    options?: FromSnapshot & { signal?: AbortSignal; uncompressed?: boolean },
  ): Promise<void>;
  /** Replaces the writable state of a stopped guest (or makes a snapshot) from a tar made by exportTar. */
  importTar(
    spec: GuestSpec,
    tarPath: string,
    options?: FromSnapshot & { signal?: AbortSignal },
  ): Promise<void>;
  /** Removes half-made snapshots and copies left by an interrupted daemon. */
  sweep(spec: GuestSpec): Promise<void>;
  /**
   * Optional (every model has it): writes a backup of the writable state as a zstd tar at
   * `tarPath`, as the next link of the guest's incremental chain: only what
   * changed since the chain's last backup, or everything (a new chain) when
   * there is none. A restore of a snapshot or an import ends the chain.
   * `newChain`: a full backup that starts a new chain even when there is one
   * (scheduled backups bound their chains: `backups.full_every`, decision 0062).
   */
  exportIncremental?(
    spec: GuestSpec,
    tarPath: string,
    options?: { signal?: AbortSignal; newChain?: boolean },
  ): Promise<BackupChainLink>;
  /**
   * Optional: applies a tar made by exportIncremental to a stopped guest: a
   * full one replaces its disk, an incremental one must follow the last one
   * applied, with the guest unchanged since.
   */
  importIncremental?(
    spec: GuestSpec,
    tarPath: string,
    options: { link: BackupChainLink; signal?: AbortSignal },
  ): Promise<void>;
  /**
   * Optional: the state the guest's next incremental continues from (its last link's), or none
   * without a chain. ct carries a manifest of its layer's content beside tar's snapshot file; vm
   * names the disk's bitmap of that link, which its disk carries across a move (decision 0062).
   */
  chainState?(spec: GuestSpec): Promise<PortableChainState | undefined>;
  /**
   * Optional: makes `state` (from chainState, possibly of another member) the guest's own chain,
   * so that its next incremental is the link after it; only where that incremental is provably
   * what changed since that link, whatever the guest's files went through (a move, an import).
   * False, with nothing changed, where it cannot be proven: the next backup is then full.
   */
  continueChain?(spec: GuestSpec, state: PortableChainState): Promise<boolean>;
  /** Optional: live restore (vm, decision 0063); a model without it answers NotSupported. */
  live?: LiveImport;
}

/** Where a live restore's disk lies in place: a qcow2 stored uncompressed at a byte range of an archive file. */
export interface LiveImportSource {
  archivePath: string;
  offsetBytes: number;
  sizeBytes: number;
}

/** Bytes of the disk a live restore has copied so far, of its total. */
export type LiveRestoreProgress = (doneBytes: number, totalBytes: number) => void;

/**
 * Live restore (decision 0063), where a model has it (vm): the stopped guest's disk becomes an
 * overlay backed by the archive's disk in place, the guest starts, and the copy finishes behind it.
 */
export interface LiveImport {
  /** Makes the stopped, new guest's disk an overlay backed by `source`; refuses a disk that is not a flat qcow2. */
  prepareLiveImport(spec: GuestSpec, source: LiveImportSource): Promise<void>;
  /**
   * Copies every block still read from the archive into the guest's disk (in its QEMU when it
   * runs, by qemu-img when not), resuming a copy under way; returns once the disk has no backing.
   */
  finishLiveImport(
    spec: GuestSpec,
    options?: { signal?: AbortSignal; speedBytesPerSecond?: number; onProgress?: LiveRestoreProgress },
  ): Promise<void>;
}

/**
 * tar's option for the zstd of archives it writes: zstd on every core (`-T0`;
 * tar's own `--zstd` runs one thread), the default level 3. Archives stay plain
 * zstd, and tar reads them back with the same program (`zstd -d`).
 */
export const TAR_ZSTD = '--use-compress-program=zstd -T0';
