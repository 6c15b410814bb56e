import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

/** Identity and disk usage of a tree, computed in one walk. */
export interface TreeDigest {
  /** sha256 hex of the tree's manifest. */
  fingerprint: string;
  /** Bytes the tree occupies on disk (hard-linked inodes counted once). */
  sizeBytes: number;
}

function typeOf(st: Awaited<ReturnType<typeof lstat>>): string {
  if (st.isFile()) return 'f';
  if (st.isDirectory()) return 'd';
  if (st.isSymbolicLink()) return 'l';
  if (st.isCharacterDevice()) return 'c';
  if (st.isBlockDevice()) return 'b';
  if (st.isFIFO()) return 'p';
  return 's';
}

async function hashFile(path: string, signal: AbortSignal | undefined): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash, signal ? { signal } : {});
  return hash.digest('hex');
}

/**
 * Fingerprints a tree by hashing a manifest with one line per entry, in byte
 * order of paths: path, type, mode, uid, gid, size and the content hash, link
 * target or device number. Times are left out on purpose, so building the same
 * tree twice gives the same fingerprint.
 */
export async function digestTree(root: string, options: { signal?: AbortSignal } = {}): Promise<TreeDigest> {
  const { signal } = options;
  const manifest = createHash('sha256');
  const contentByInode = new Map<string, string>();
  const counted = new Set<string>();
  let sizeBytes = 0;

  const visit = async (rel: string): Promise<void> => {
    signal?.throwIfAborted();
    const path = rel === '' ? root : join(root, rel);
    const st = await lstat(path);
    const inode = `${st.dev}:${st.ino}`;
    if (!counted.has(inode)) {
      counted.add(inode);
      sizeBytes += st.blocks * 512;
    }
    const type = typeOf(st);
    let extra = '';
    if (type === 'f') {
      extra = contentByInode.get(inode) ?? (await hashFile(path, signal));
      if (st.nlink > 1) contentByInode.set(inode, extra);
    } else if (type === 'l') {
      extra = await readlink(path);
    } else if (type === 'c' || type === 'b') {
      extra = String(st.rdev);
    }
    const size = type === 'f' ? st.size : 0;
    manifest.update(
      `${JSON.stringify(rel === '' ? '.' : rel)} ${type} ${(st.mode & 0o7777).toString(8)} ${st.uid} ${st.gid} ${size} ${JSON.stringify(extra)}\n`,
    );
    if (type === 'd') {
      const names = (await readdir(path)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      for (const name of names) await visit(rel === '' ? name : `${rel}/${name}`);
    }
  };
  await visit('');
  return { fingerprint: manifest.digest('hex'), sizeBytes };
}

/** Bytes a tree occupies on disk, hard-linked inodes counted once. */
export async function treeSizeBytes(root: string): Promise<number> {
  const counted = new Set<string>();
  let sizeBytes = 0;
  const stack = [root];
  while (stack.length > 0) {
    const path = stack.pop() as string;
    const st = await lstat(path);
    const inode = `${st.dev}:${st.ino}`;
    if (!counted.has(inode)) {
      counted.add(inode);
      sizeBytes += st.blocks * 512;
    }
    if (st.isDirectory()) for (const name of await readdir(path)) stack.push(join(path, name));
  }
  return sizeBytes;
}
