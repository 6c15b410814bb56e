import { copyFile, lstat, mkdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LEGACY_RUNTIME_FILES, type VmGuestPaths } from './qemu-command.ts';

/**
 * A vm guest's runtime directory, `STATE/run/vm/NAME` (decision 0061): what a running QEMU owns
 * lives there, on this member, never in the guest's directory, which may be on a shared pool
 * that another member's QEMU of the same guest uses during a live move.
 */

/** Makes the guest's runtime directory (root's alone: root binds the sockets and hands them over). */
export async function ensureRuntimeDir(paths: VmGuestPaths): Promise<void> {
  await mkdir(paths.runDir, { recursive: true, mode: 0o700 });
}

const SOCKETS = ['qmpSocket', 'consoleSocket', 'agentSocket'] as const;

/**
 * Adopts the runtime files of a guest started before decision 0061, which are in its directory:
 * a QEMU that runs on is left alone, and found through its new names. Its sockets cannot move
 * (a listening socket is bound to its path, and the pool may be another file system), so the
 * runtime directory gets symbolic links to them, which connect() follows; its pid file, log and
 * boot record are copied over and the old ones removed, the boot record last (its presence in
 * the runtime directory says the adoption is done: one lstat on every later call). Idempotent,
 * and safe when two callers race (each step tolerates the other's).
 */
export async function adoptLegacyRuntime(paths: VmGuestPaths): Promise<boolean> {
  if (await lstat(paths.bootRecord).catch(() => undefined)) return false;
  const legacy = (file: keyof typeof LEGACY_RUNTIME_FILES) => join(paths.dir, LEGACY_RUNTIME_FILES[file]);
  const boot = await readFile(legacy('bootRecord'), 'utf8').catch(() => undefined);
  if (boot === undefined) return false;
  await ensureRuntimeDir(paths);
  for (const socket of SOCKETS) {
    if (!(await lstat(legacy(socket)).catch(() => undefined))?.isSocket()) continue;
    await symlink(legacy(socket), paths[socket]).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
  }
  for (const file of ['pidFile', 'qemuLog'] as const) {
    await copyFile(legacy(file), paths[file]).catch(() => {});
  }
  const tmp = `${paths.bootRecord}.${process.pid}.tmp`;
  await writeFile(tmp, boot, { mode: 0o600 });
  await rename(tmp, paths.bootRecord);
  for (const file of ['pidFile', 'qemuLog', 'bootRecord'] as const) await rm(legacy(file), { force: true });
  return true;
}

/**
 * Removes the sockets and pid file of a QEMU that is gone: an adopted guest's links and the old
 * sockets they name too (that QEMU was this member's; a guest's directory on a shared pool holds
 * old sockets only of a QEMU started before decision 0061, which only its member ran).
 */
export async function removeRuntimeFiles(paths: VmGuestPaths): Promise<void> {
  for (const socket of SOCKETS) {
    const path = paths[socket];
    if ((await lstat(path).catch(() => undefined))?.isSymbolicLink()) {
      const target = await readlink(path).catch(() => undefined);
      if (target !== undefined) await rm(target, { force: true });
    }
    await rm(path, { force: true });
  }
  await rm(paths.pidFile, { force: true });
}

/** Removes the guest's runtime directory whole (its QEMU must be gone). */
export async function removeRuntimeDir(paths: VmGuestPaths): Promise<void> {
  await removeRuntimeFiles(paths);
  await rm(paths.runDir, { recursive: true, force: true });
}
