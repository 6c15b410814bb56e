import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, open, rename, rm, truncate } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { asTrivisorError, cancelled } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { installGuestKit, KIT_DIR } from './guest-kit.ts';
import { removeTree } from './remove-tree.ts';

const MiB = 1024 * 1024;
/** Smallest base disk: room for a guest's first writes before the kit grows the file system. */
export const MIN_BASE_DISK_BYTES = 256 * MiB;

/** Options of buildBaseDisk. */
export interface BuildBaseDiskOptions {
  runner: ProcessRunner;
  /** The image's init argv, run by the kit's init once the guest is ready. */
  initArgv: readonly string[];
  signal?: AbortSignal;
}

/** What buildBaseDisk made. */
export interface BaseDiskInfo {
  path: string;
  sizeBytes: number;
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** Size of the disk for a tree of `usedBytes`: the tree twice over, rounded up to whole MiB. */
export function baseDiskSizeBytes(usedBytes: number): number {
  const wanted = Math.max(MIN_BASE_DISK_BYTES, 2 * usedBytes + 64 * MiB);
  return Math.ceil(wanted / MiB) * MiB;
}

/**
 * Makes a raw ext4 disk image at `targetPath` holding the tree `treeDir` plus
 * the guest kit under /.trivisor, atomically (a root-only `*.tmp-*` directory
 * beside the target holds the work, then a rename). The tree is never written to: the disk is
 * made from a hard-linked copy of it (a plain copy across file systems), to
 * which the kit is added, with `mkfs.ext4 -d`. Overwrites `targetPath`, so
 * callers must not rebuild a disk that guests already use as backing file.
 */
export async function buildBaseDisk(
  treeDir: string,
  targetPath: string,
  options: BuildBaseDiskOptions,
): Promise<BaseDiskInfo> {
  const { runner, initArgv, signal } = options;
  const dir = dirname(targetPath);
  const suffix = randomBytes(6).toString('hex');
  // The staging copy hard-links the image's setuid files and device nodes: it sits behind a
  // root-only directory, as the image tree does (docs/decisions/0018), never beside the disk,
  // whose directory a pvm guest's uid (and so every host user) may pass.
  const work = join(dir, `${basename(targetPath)}.tmp-${suffix}`);
  const staging = join(work, 'tree');
  const tmpDisk = join(work, 'disk');
  const run = (argv: string[]) => runner.run(argv, signal ? { signal } : {});
  try {
    signal?.throwIfAborted();
    await mkdir(dir, { recursive: true });
    await mkdir(work, { mode: 0o700 });
    await chmod(work, 0o700);
    try {
      await run(['cp', '-a', '--link', '--', treeDir, staging]);
    } catch {
      // Hard links need one file system; copy when the tree lives elsewhere.
      await removeTree(staging, { runner });
      await run(['cp', '-a', '--reflink=auto', '--', treeDir, staging]);
    }
    signal?.throwIfAborted();
    // Unlinking in the staging copy only drops links: the image's own files stay.
    await rm(join(staging, KIT_DIR), { recursive: true, force: true });
    for (const [name, mode] of [
      ['proc', 0o555],
      ['sys', 0o555],
      ['dev', 0o755],
      ['tmp', 0o1777],
      ['run', 0o755],
    ] as const) {
      if (!(await exists(join(staging, name)))) {
        await mkdir(join(staging, name));
        await chmod(join(staging, name), mode);
      }
    }
    // The kernel opens /dev/console before init runs, and devtmpfs may not be mounted yet.
    for (const [name, major, minor, mode] of [
      ['console', '5', '1', '600'],
      ['null', '1', '3', '666'],
    ] as const) {
      const path = join(staging, 'dev', name);
      if (!(await exists(path))) await run(['mknod', '-m', mode, path, 'c', major, minor]);
    }
    await installGuestKit(join(staging, KIT_DIR), { runner, initArgv });
    signal?.throwIfAborted();

    const { stdout: usedOut } = await run(['du', '-sx', '--block-size=1', staging]);
    const { stdout: inodesOut } = await run(['du', '-sx', '--inodes', staging]);
    const usedBytes = Number.parseInt(usedOut, 10) || 0;
    const files = Number.parseInt(inodesOut, 10) || 0;
    const sizeBytes = baseDiskSizeBytes(usedBytes);
    // Room for twice the files the tree has, and never fewer than one inode per 16 KiB.
    const inodes = Math.max(2 * files + 1024, Math.floor(sizeBytes / 16384));

    const handle = await open(tmpDisk, 'wx', 0o644);
    await handle.close();
    await truncate(tmpDisk, sizeBytes);
    // -T default and 4 KiB blocks: small disks would otherwise get 1 KiB blocks, slow and hard to grow.
    await run([
      'mkfs.ext4',
      '-q',
      '-F',
      '-T',
      'default',
      '-b',
      '4096',
      '-m',
      '1',
      '-N',
      String(inodes),
      '-L',
      'trivisor-root',
      '-E',
      'root_owner=0:0,nodiscard',
      '-d',
      staging,
      tmpDisk,
    ]);
    signal?.throwIfAborted();
    const synced = await open(tmpDisk, 'r+');
    try {
      await synced.sync();
    } finally {
      await synced.close();
    }
    // Shared read-only by every guest made from the image: nobody but root may change it.
    await chmod(tmpDisk, 0o444);
    await rename(tmpDisk, targetPath);
    return { path: targetPath, sizeBytes };
  } catch (e) {
    await rm(tmpDisk, { force: true }).catch(() => {});
    if (signal?.aborted) throw cancelled(`Building the base disk ${targetPath} was cancelled.`);
    throw asTrivisorError(e);
  } finally {
    await removeTree(work, { runner }).catch(() => {});
  }
}
