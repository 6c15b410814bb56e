import { randomBytes } from 'node:crypto';
import { chmod, lstat, rename, rm, stat, utimes } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { ProcessRunner } from '../../host/runner.ts';

/** The twin's name beside its base disk; never `.tmp-` (image leftovers are swept by that). */
export const twinPathOf = (baseDisk: string): string => join(dirname(baseDisk), `.uml-${basename(baseDisk)}`);

/**
 * The copy of an image's base disk that pvm guests' kernels read, bound into their jails at the
 * base disk's own path. UML takes a POSIX read lock on the whole backing file of a COW disk, even
 * with the shared flag; the image's vm guests have the same base disk as the backing file of
 * their qcow2 disks, and qemu-img's byte-range locks then refuse their snapshots, exports and
 * copies ("Failed to get consistent read lock") while a pvm guest of the image runs. A file of
 * its own for UML ends that: locks are per file, and the twin has the base disk's bytes, size and
 * mtime (UML checks the last two against the COW header). Made once (sparse, a reflink where the
 * file system has them), read-only, and removed with the image's directory.
 */
export function createBaseDiskTwins(runner: ProcessRunner): (baseDisk: string) => Promise<string> {
  const making = new Map<string, Promise<string>>();
  return (baseDisk) => {
    const pending = making.get(baseDisk);
    if (pending) return pending;
    const work = (async () => {
      const twin = twinPathOf(baseDisk);
      const [base, existing] = await Promise.all([stat(baseDisk), lstat(twin).catch(() => undefined)]);
      const sameTime = Math.trunc(existing?.mtimeMs ?? -1) === Math.trunc(base.mtimeMs);
      if (existing?.isFile() && existing.size === base.size && sameTime) return twin;
      // `.tmp-` in its name: a daemon killed mid-copy leaves it to the image store's sweep.
      const tmp = `${twin}.tmp-${randomBytes(4).toString('hex')}`;
      try {
        await runner.run(['cp', '--sparse=always', '--reflink=auto', '--', baseDisk, tmp]);
        await chmod(tmp, 0o444);
        await utimes(tmp, base.atime, base.mtime);
        await rename(tmp, twin);
      } finally {
        await rm(tmp, { force: true });
      }
      return twin;
    })().finally(() => making.delete(baseDisk));
    making.set(baseDisk, work);
    return work;
  };
}
