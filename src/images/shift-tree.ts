import type { Stats } from 'node:fs';
import { chmod, lchown, lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArgument } from '../core/errors.ts';

/** Highest id a user namespace can map; (uid_t)-1 itself means "no change" to chown. */
const MAX_ID = 0xfffffffe;

/** Which ids move where: ids in [from, from + size) go to [to, to + size). */
export interface IdShift {
  from: number;
  to: number;
  size: number;
  signal?: AbortSignal;
}

/**
 * Moves the owners of a tree from one id range to another, in place: a uid or
 * gid in [from, from + size) becomes `to + (id - from)`; ids outside the range
 * are left as they are (they were unmapped in the old range and stay so). This
 * is how a ct guest's upper layer follows its guest to another range
 * (docs/decisions/0018). Keeps modes (setuid and setgid, which chown clears,
 * are set again), symlinks (lchown) and hard links (one shift per inode).
 * File capabilities (security.capability) are cleared by chown and not
 * restored. The tree's root is shifted last, so that its owner, which says the
 * range the tree is in, changes only once everything below has: a shift cut
 * short is finished by the next one.
 */
export async function shiftIds(root: string, shift: IdShift): Promise<number> {
  const { from, to, size, signal } = shift;
  for (const [what, value] of [
    ['from', from],
    ['to', to],
  ] as const) {
    if (!Number.isInteger(value) || value < 0 || value + size - 1 > MAX_ID) {
      throw invalidArgument(
        `Id shift ${what}=${value} does not fit below ${MAX_ID}: use a valid range base.`,
      );
    }
  }
  if (from === to) return 0;
  const moved = (id: number): number => (id >= from && id < from + size ? to + (id - from) : id);
  // A hard-linked inode is reached through each of its names: shift it once only.
  const seen = new Set<string>();
  let changed = 0;
  const shiftOne = async (path: string, st: Stats): Promise<void> => {
    const uid = moved(st.uid);
    const gid = moved(st.gid);
    if (uid === st.uid && gid === st.gid) return;
    await lchown(path, uid, gid);
    changed++;
    // chown clears setuid/setgid on files; symlink modes do not exist on Linux.
    if (!st.isSymbolicLink() && (st.mode & 0o6000) !== 0) await chmod(path, st.mode & 0o7777);
  };
  const rootStat = await lstat(root);
  const stack = rootStat.isDirectory() ? (await readdir(root)).map((n) => join(root, n)) : [];
  while (stack.length > 0) {
    signal?.throwIfAborted();
    const path = stack.pop() as string;
    const st = await lstat(path);
    const key = `${st.dev}:${st.ino}`;
    if (!seen.has(key)) {
      if (st.nlink > 1 && !st.isDirectory()) seen.add(key);
      await shiftOne(path, st);
    }
    if (st.isDirectory()) {
      for (const name of await readdir(path)) stack.push(join(path, name));
    }
  }
  signal?.throwIfAborted();
  await shiftOne(root, rootStat);
  return changed;
}
