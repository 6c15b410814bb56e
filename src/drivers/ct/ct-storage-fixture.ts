import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { createLogger } from '../../host/logger.ts';
import { hostRunner } from '../../host/runner.ts';
import { createCtStorage } from './ct-storage.ts';

/**
 * The fixture of the ct storage tests (ct-storage, ct-chain-carry): a guest's directories as a
 * create makes them, the storage on a state directory with the host's runner, and a tree read
 * apart from the code under test. Not a test file.
 */

/** Guest `name`'s directory in `stateDir` with its upper, work, rootfs and bundle made; returns the guest's directory. */
export const makeCtGuestDirs = async (stateDir: string, name: string): Promise<string> => {
  const dir = path.join(stateDir, 'guests', name);
  for (const d of ['upper', 'work', 'rootfs', 'bundle']) await mkdir(path.join(dir, d), { recursive: true });
  return dir;
};

/** The ct storage of `stateDir`, running the host's tools, logging nothing. */
export const ctStorageAt = (stateDir: string) =>
  createCtStorage({
    runner: hostRunner(),
    log: createLogger({ level: 'silent' }),
    stateDir,
    idmapBase: 1_000_000,
  });

/**
 * Every entry of a tree, a line each in walk order: path, type and mode, owner, then the content's
 * sha256, a symlink's target or a device's numbers. `mtime`: also a non-directory's mtime in ns;
 * `xattrs`: also the entry's xattrs as that function gives them, in brackets.
 */
export const treeOf = async (
  root: string,
  options: { mtime?: boolean; xattrs?: (p: string) => Promise<string> } = {},
): Promise<string[]> => {
  const out: string[] = [];
  const walk = async (rel: string) => {
    const p = path.join(root, rel);
    const st: BigIntStats = await lstat(p, { bigint: true });
    const what = st.isFile()
      ? createHash('sha256')
          .update(await readFile(p))
          .digest('hex')
      : st.isSymbolicLink()
        ? `-> ${await readlink(p)}`
        : st.isCharacterDevice()
          ? `c ${st.rdev}`
          : '';
    const mtime = options.mtime && !st.isDirectory() ? ` ${st.mtimeNs}` : '';
    const xattrs = options.xattrs ? ` [${await options.xattrs(p)}]` : '';
    out.push(`${rel} ${st.mode.toString(8)} ${st.uid}:${st.gid}${mtime} ${what}${xattrs}`);
    if (st.isDirectory()) for (const n of (await readdir(p)).sort()) await walk(path.join(rel, n));
  };
  await walk('.');
  return out;
};
