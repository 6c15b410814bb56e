import { copyFile, lstat, mkdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
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
 * Whether a process listens on the unix socket at `path` (through a link too): a connect is
 * accepted, or refused only because its queue is full. A socket file left by a QEMU that is gone
 * refuses the connect at once (ECONNREFUSED).
 */
export function socketListens(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (answer: boolean) => {
      s.destroy();
      resolve(answer);
    };
    s.once('connect', () => done(true));
    s.once('error', (e: NodeJS.ErrnoException) => done(e.code === 'EAGAIN'));
  });
}

/**
 * Removes the sockets and pid file of a QEMU that is gone: an adopted guest's links and the old
 * sockets they name too (that QEMU was this member's; a guest's directory on a shared pool holds
 * old sockets only of a QEMU started before decision 0061, which only its member ran). A socket
 * something still listens on is a running QEMU's, whatever its boot record says (a QEMU whose
 * record is not written yet, issue 13): then nothing is removed, and the sockets found listening
 * are answered (empty: all removed).
 */
export async function removeRuntimeFiles(
  paths: VmGuestPaths,
  options: { settleMs?: number } = {},
): Promise<string[]> {
  // A QEMU that just exited still listens while its last threads end (its main thread is a zombie
  // by then, which is how stop() saw it gone): a socket that listens is looked at again for a while.
  const deadline = Date.now() + (options.settleMs ?? 2000);
  for (;;) {
    const live: string[] = [];
    for (const socket of SOCKETS) {
      if ((await lstat(paths[socket]).catch(() => undefined)) && (await socketListens(paths[socket])))
        live.push(paths[socket]);
    }
    if (live.length === 0) break;
    if (Date.now() >= deadline) return live;
    await sleep(50);
  }
  for (const socket of SOCKETS) {
    const path = paths[socket];
    if ((await lstat(path).catch(() => undefined))?.isSymbolicLink()) {
      const target = await readlink(path).catch(() => undefined);
      if (target !== undefined) await rm(target, { force: true });
    }
    await rm(path, { force: true });
  }
  await rm(paths.pidFile, { force: true });
  return [];
}

/**
 * Removes the guest's runtime directory whole (its QEMU must be gone): nothing of it when a QEMU
 * still listens on its sockets (`removeRuntimeFiles`), whose sockets are answered.
 */
export async function removeRuntimeDir(
  paths: VmGuestPaths,
  options: { settleMs?: number } = {},
): Promise<string[]> {
  const live = await removeRuntimeFiles(paths, options);
  if (live.length > 0) return live;
  await rm(paths.runDir, { recursive: true, force: true });
  return [];
}
