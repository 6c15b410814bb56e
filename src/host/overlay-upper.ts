import { statfsSync } from 'node:fs';
import { BTRFS_MAGIC } from './reflink.ts';

/**
 * statfs magic numbers of the local file systems overlayfs takes as an upper dir (d_type, xattrs,
 * O_TMPFILE, RENAME_WHITEOUT): ext2/3/4, xfs, btrfs, tmpfs, f2fs, zfs. overlayfs refuses the
 * others: NFS (0x6969), FUSE (0x65735546), CIFS, Ceph, 9p… ("upper fs does not support tmpfile",
 * "… RENAME_WHITEOUT", "upper fs missing required features"), docs/decisions/0094.
 */
const UPPER_CAPABLE = new Set([0xef53, 0x58465342, BTRFS_MAGIC, 0x01021994, 0xf2f52010, 0x2fc12fc1]);

/** Whether overlayfs would refuse `dir`'s file system as an upper dir (false when it cannot be read). */
export function refusesOverlayUpper(dir: string): boolean {
  try {
    return !UPPER_CAPABLE.has(Number(statfsSync(dir).type));
  } catch {
    return false;
  }
}
