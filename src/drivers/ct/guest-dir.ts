import { lstatSync, readlinkSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { BTRFS_MAGIC } from '../../host/reflink.ts';

/** Whether a guest directory is a link into a storage pool (made by the pool service before create). */
export function isPoolLinked(dir: string): boolean {
  try {
    return lstatSync(dir).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Whether a guest directory is a link into a btrfs pool, whose qgroups can enforce limits.disk. */
export function isOnBtrfsPool(dir: string): boolean {
  if (!isPoolLinked(dir)) return false;
  try {
    return statfsSync(dir).type === BTRFS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * The real directory of a guest: `guests/NAME`, or the pool subvolume it links
 * to. runc refuses a rootfs path through a symlink, and mount tables list real
 * paths, so drivers work on the resolved path.
 */
export function guestDirOf(stateDir: string, name: string): string {
  const dir = join(stateDir, 'guests', name);
  return isPoolLinked(dir) ? readlinkSync(dir) : dir;
}
