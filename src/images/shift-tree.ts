import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, lchown, lstat, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { alreadyExists, cancelled, internal, invalidArgument } from '../core/errors.ts';

const execFileAsync = promisify(execFile);

/** Highest id a user namespace can map; (uid_t)-1 itself means "no change" to chown. */
const MAX_ID = 0xfffffffe;

/**
 * Copies `sourceDir` to `targetDir` with every uid and gid raised by `base`, so
 * that a user-namespaced container whose root maps to host uid `base` sees the
 * tree as its own. The copy is built in a `${targetDir}.tmp-*` sibling and
 * renamed into place, so `targetDir` either does not exist or is complete.
 * Keeps modes (setuid/setgid restored after chown clears them), symlinks
 * (lchown), hard links and timestamps. File capabilities (security.capability
 * xattrs) are cleared by chown and not restored: the kernel ties them to the
 * namespace's root uid, which a plain copy cannot express anyway.
 */
export async function shiftTree(
  sourceDir: string,
  targetDir: string,
  options: { base: number; signal?: AbortSignal },
): Promise<void> {
  const { base, signal } = options;
  if (!Number.isInteger(base) || base < 0 || base > MAX_ID) {
    throw invalidArgument(
      `Id shift base ${base} is not a valid uid: use an integer between 0 and ${MAX_ID}.`,
    );
  }
  if (await exists(targetDir)) {
    throw alreadyExists(`${targetDir} already exists: remove it first or use it as it is.`);
  }
  const tmp = `${join(dirname(targetDir), basename(targetDir))}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    signal?.throwIfAborted();
    // cp -a keeps hard links, modes, times and xattrs, and reflinks where the file system can.
    await execFileAsync('cp', ['-a', '--reflink=auto', '-T', '--', sourceDir, tmp], {
      ...(signal ? { signal } : {}),
      maxBuffer: 16 * 1024 * 1024,
    }).catch((e: unknown) => {
      if (signal?.aborted) throw e;
      const stderr = (e as { stderr?: string }).stderr?.trim() ?? String(e);
      throw internal(`Copying ${sourceDir} for an id shift failed: ${stderr}`, e);
    });
    await shiftInPlace(tmp, base, signal);
    await rename(tmp, targetDir).catch((e: unknown) => {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        throw alreadyExists(`${targetDir} appeared while it was being built: use the existing one.`);
      }
      throw e;
    });
  } catch (e) {
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    if (signal?.aborted) throw cancelled(`Shifting ${sourceDir} was cancelled.`);
    throw e;
  }
}

/** Raises every entry's uid/gid in `root` by `base`, once per inode. */
async function shiftInPlace(root: string, base: number, signal: AbortSignal | undefined): Promise<void> {
  // A hard-linked inode is reached through each of its names: shift it once only.
  const seen = new Set<string>();
  const stack = [root];
  while (stack.length > 0) {
    signal?.throwIfAborted();
    const path = stack.pop() as string;
    const st = await lstat(path, { bigint: false });
    const key = `${st.dev}:${st.ino}`;
    if (!seen.has(key)) {
      if (st.nlink > 1 && !st.isDirectory()) seen.add(key);
      const uid = st.uid + base;
      const gid = st.gid + base;
      if (uid > MAX_ID || gid > MAX_ID) {
        throw invalidArgument(
          `${path} has uid ${st.uid} or gid ${st.gid} that cannot be shifted by ${base}.`,
        );
      }
      await lchown(path, uid, gid);
      // chown clears setuid/setgid on files; symlink modes do not exist on Linux.
      if (!st.isSymbolicLink() && (st.mode & 0o7000) !== 0) await chmod(path, st.mode & 0o7777);
    }
    if (st.isDirectory()) {
      for (const name of await readdir(path)) stack.push(join(path, name));
    }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}
