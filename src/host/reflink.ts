import { realpath, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { listMountPoints } from './mounts.ts';

/** statfs type of btrfs (BTRFS_SUPER_MAGIC). */
export const BTRFS_MAGIC = 0x9123683e;

/** Whether `path` (or, when it does not exist yet, its directory) is on a btrfs file system. */
export async function isOnBtrfs(path: string): Promise<boolean> {
  const s = await statfs(path).catch(() => statfs(dirname(path)).catch(() => undefined));
  return s?.type === BTRFS_MAGIC;
}

/** The mount point that holds `path` (the longest mount point prefix of its real path). */
async function mountOf(path: string): Promise<string | undefined> {
  const real = await realpath(path).catch(() => realpath(dirname(path)).catch(() => undefined));
  if (real === undefined) return undefined;
  let best: string | undefined;
  for (const p of await listMountPoints()) {
    const inside = p === '/' || real === p || real.startsWith(`${p}/`);
    if (inside && (best === undefined || p.length > best.length)) best = p;
  }
  return best;
}

/**
 * The `--reflink` flag for `cp` from `from` to `to`: `always` when both are on
 * the same btrfs mount (a btrfs pool), so that a copy there is a clone or fails
 * instead of quietly writing every byte again; `auto` elsewhere (a copy between
 * pools, or on ext4).
 */
export async function reflinkFlag(from: string, to: string): Promise<'--reflink=always' | '--reflink=auto'> {
  const [a, b] = await Promise.all([isOnBtrfs(from), isOnBtrfs(to)]);
  if (!a || !b) return '--reflink=auto';
  const [ma, mb] = await Promise.all([mountOf(from), mountOf(to)]);
  return ma !== undefined && ma === mb ? '--reflink=always' : '--reflink=auto';
}

/**
 * `cp` flags for a copy of `from` to `to`: a clone on one btrfs mount
 * (`--reflink=always`, which cp accepts only with `--sparse=auto`; a clone
 * shares the holes too), else `--reflink=auto`, with `--sparse=always` when
 * `sparse` (disk files: only the written sectors take space).
 */
export async function copyFlags(
  from: string,
  to: string,
  options: { sparse?: boolean } = {},
): Promise<string[]> {
  const flag = await reflinkFlag(from, to);
  if (flag === '--reflink=always' || !options.sparse) return [flag];
  return [flag, '--sparse=always'];
}
