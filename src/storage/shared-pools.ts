import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, link, lstat, mkdir, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { conflict, failedPrecondition, internal } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { PoolRecord } from './storage-pools.ts';

/**
 * The file at a shared pool's root that holds its marker (decision 0049). Written once by the
 * member that creates the pool; every member reads it back to prove it sees that very directory.
 */
export const SHARED_MARKER_FILE = '.trivisor-shared-pool';

/** Where a shared pool keeps its copies of images' base disks (the backing files of its guests' disks). */
export const SHARED_BASES_DIR = 'bases';

/** A new random marker id. */
export function newSharedMarker(): string {
  return randomBytes(16).toString('hex');
}

/** A shared pool's directory: its `source`, the same path on every member. */
export function sharedRootOf(pool: PoolRecord): string {
  const root = pool.config.source;
  if (!pool.shared || root === undefined) throw internal(`Storage pool ${pool.name} is not a shared pool`);
  return root;
}

/**
 * Writes the marker at a new shared pool's root. Refused (409) when the directory holds another
 * pool's marker already: two shared pools over one directory would each delete the other's files.
 */
export async function writeSharedMarker(root: string, marker: string): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o711 });
  const file = join(root, SHARED_MARKER_FILE);
  try {
    await writeFile(file, `${marker}\n`, { mode: 0o644, flag: 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    throw conflict(
      `${root} holds another shared pool's marker (${file}): pick another directory, or delete that pool first`,
    );
  }
}

/**
 * Undefined when this member reads the pool's marker at its root; otherwise the one line that
 * says what it found instead (its pool status's error).
 */
export async function checkSharedMarker(pool: PoolRecord, member: string): Promise<string | undefined> {
  const root = pool.config.source ?? '';
  const file = join(root, SHARED_MARKER_FILE);
  const text = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => e);
  if (typeof text !== 'string') {
    return `Member ${member} does not see shared pool ${pool.name}'s directory ${root}: ${
      text.code === 'ENOENT' ? `${SHARED_MARKER_FILE} is missing there` : text.message
    }; mount the shared file system at ${root} on ${member}`;
  }
  if (text.trim() !== pool.marker) {
    return `Member ${member} sees another directory at ${root} than shared pool ${pool.name}'s: its marker reads ${text.trim().slice(0, 40)}, not ${pool.marker}; mount the shared file system at ${root} on ${member}`;
  }
  return undefined;
}

/**
 * Removes what Trivisor made in a shared pool that holds no guest and no volume any more: the
 * marker, the record copy, its base disk copies and its own directories when empty. Anything
 * else in the directory (the administrator's, or a member's files that should not be there) stays.
 */
export async function removeSharedStructure(pool: PoolRecord, recordFile: string): Promise<void> {
  const root = sharedRootOf(pool);
  const bases = join(root, SHARED_BASES_DIR);
  for (const name of await readdir(bases).catch(() => [] as string[])) {
    // Base copies, their pvm twins and half-made copies: the names sharedBaseDisk and the pvm driver give.
    if (/^(\.uml-)?[0-9a-f]{64}-/.test(name) || /^\.tmp-/.test(name))
      await rm(join(bases, name), { force: true });
  }
  for (const dir of [bases, join(root, 'guests'), join(root, 'volumes')]) await rmdir(dir).catch(() => {});
  await rm(join(root, recordFile), { force: true });
  await rm(join(root, SHARED_MARKER_FILE), { force: true });
}

async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/**
 * The copy of an image's base disk in a shared pool, made once: every member's guests of that
 * image on the pool name it as their backing file, since each member's own base disk is built on
 * that member (mkfs.ext4 gives it its own UUIDs and times) and is not the same file elsewhere.
 * The copy is checksummed against the member's base disk, then published with link(2), which
 * fails when another member published first: the file a guest's disk names never changes once
 * it exists (a pvm guest's COW header also holds its size and mtime).
 */
export function createSharedBases(
  runner: Pick<ProcessRunner, 'run'>,
): (pool: PoolRecord, fingerprint: string, baseDisk: string) => Promise<string> {
  const making = new Map<string, Promise<string>>();
  return (pool, fingerprint, baseDisk) => {
    const dir = join(sharedRootOf(pool), SHARED_BASES_DIR);
    const target = join(dir, `${fingerprint}-${basename(baseDisk)}`);
    const pending = making.get(target);
    if (pending) return pending;
    const work = (async () => {
      if ((await lstat(target).catch(() => undefined))?.isFile()) return target;
      await mkdir(dir, { recursive: true, mode: 0o755 });
      const tmp = join(dir, `.tmp-${randomBytes(6).toString('hex')}`);
      try {
        await runner.run(['cp', '--sparse=always', '--reflink=auto', '--', baseDisk, tmp]);
        const [want, got] = await Promise.all([sha256Of(baseDisk), sha256Of(tmp)]);
        if (want !== got) {
          throw failedPrecondition(
            `The copy of ${baseDisk} in shared pool ${pool.name} differs from it (sha256 ${got.slice(0, 12)}, not ${want.slice(0, 12)}): check ${dir}`,
          );
        }
        await chmod(tmp, 0o444);
        await link(tmp, target).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'EEXIST') throw e;
        });
      } finally {
        await rm(tmp, { force: true });
      }
      return target;
    })().finally(() => making.delete(target));
    making.set(target, work);
    return work;
  };
}
