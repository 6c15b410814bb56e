/** A snapshot of a guest's writable state, stored at `keys.snapshot(guest, name)`. */
export interface SnapshotRecord {
  name: string;
  guest: string;
  createdAt: string;
  /** Whether the guest was running (and so frozen for a consistent copy) when it was taken. */
  wasRunning: boolean;
  /**
   * The member whose disks hold it, its guest's (decision 28); records made before owners were recorded have
   * none until that member's controller stamps its own at start.
   */
  location?: string;
  /** When a scheduled snapshot is deleted (its guest's `snapshots.expiry`); never when absent. */
  expiresAt?: string;
}

/** What `manifest.json` of a backup archive says (format `trivisor-backup/1`). */
export interface BackupManifest {
  format: 'trivisor-backup/1';
  createdAt: string;
  guest: { name: string; model: string; config: Record<string, string>; createdAt: string };
  image: { fingerprint: string; alias: string; description: string };
  snapshots: SnapshotRecord[];
  /** For a link of an incremental chain (vm, `export --incremental`): which one. */
  incremental?: {
    chain: string;
    sequence: number;
    kind: 'full' | 'incremental';
    /** 'btrfs-send': the payload is a zstd btrfs send stream of a ct guest (decision 0067), not a tar. */
    method?: 'btrfs-send';
  };
  /** Every other file of the archive by relative path: its sha256 and size. */
  files: Record<string, { sha256: string; sizeBytes: number }>;
}
