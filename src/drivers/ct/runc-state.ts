import { constants } from 'node:fs';
import { type FileHandle, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ProcessIdentity } from '../../core/types.ts';
import { isSameProcess } from '../../host/proc-stat.ts';

/**
 * The init identity runc recorded for a container, read from its state.json
 * (runc --root ROOT keeps one directory per container). Reading the file is
 * much cheaper than spawning `runc state`, which matters when the daemon
 * re-adopts a thousand guests. undefined when runc has no such container.
 */
export async function readRuncInitIdentity(
  runcRoot: string,
  id: string,
): Promise<ProcessIdentity | undefined> {
  try {
    const state = JSON.parse(await readFile(join(runcRoot, id, 'state.json'), 'utf8')) as {
      init_process_pid?: unknown;
      init_process_start?: unknown;
    };
    const pid = Number(state.init_process_pid);
    const startTime = Number(state.init_process_start);
    if (!Number.isInteger(pid) || pid <= 0 || !Number.isInteger(startTime)) return undefined;
    return { pid, startTime };
  } catch {
    return undefined;
  }
}

/** How often startCreatedContainer() reads the exec FIFO: from 1 ms, doubling up to 50 ms. */
const FIFO_POLL_FIRST_MS = 1;
const FIFO_POLL_MS = 50;

/** Why startCreatedContainer() could not start a created container. */
export class CreatedContainerError extends Error {}

/**
 * What `runc start` does for a container `runc create` made (runc 1.1, libcontainer's
 * `exec()`), without spawning runc (docs/decisions/0091): runc's init waits to open the
 * container's `exec.fifo` for writing, writes one byte once a reader opened it, and execs the
 * guest's init, which closes its end. Reading that byte and then the end of the file, and
 * removing the FIFO, is the start; runc then reports the container running (its status is
 * `created` while the FIFO exists). Opened without blocking, so that an init that died before
 * opening its end cannot hold a thread of the daemon: the FIFO is read every few milliseconds
 * while `init` (runc's init, checked by its start time, as runc checks it) lives. Throws
 * CreatedContainerError when init died before it took the byte's way to exec, or past `timeoutMs`;
 * false, having done nothing, when there is no FIFO (not runc's layout: the caller runs `runc start`).
 */
export async function startCreatedContainer(
  runcRoot: string,
  id: string,
  options: { init: ProcessIdentity; timeoutMs: number },
): Promise<boolean> {
  const fifo = join(runcRoot, id, 'exec.fifo');
  let file: FileHandle;
  try {
    file = await open(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new CreatedContainerError(`cannot open ${fifo}: ${(e as Error).message}`);
  }
  const buffer = Buffer.alloc(16);
  let taken = false;
  try {
    const deadline = Date.now() + options.timeoutMs;
    for (let wait = FIFO_POLL_FIRST_MS; ; ) {
      const { bytesRead } = await file.read(buffer, 0, buffer.length, null).catch((e: unknown) => {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return { bytesRead: -1 };
        throw e;
      });
      if (bytesRead > 0) {
        taken = true;
        wait = FIFO_POLL_FIRST_MS;
        continue;
      }
      // No writer: before init opened its end (0 before the byte), or after it exec'd (0 after).
      if (bytesRead === 0 && taken) break;
      if (!(await isSameProcess(options.init))) {
        if (taken) break;
        throw new CreatedContainerError(`runc's init (pid ${options.init.pid}) exited before it started`);
      }
      if (Date.now() >= deadline) {
        throw new CreatedContainerError(`runc's init (pid ${options.init.pid}) did not start in time`);
      }
      await sleep(wait);
      wait = Math.min(wait * 2, FIFO_POLL_MS);
    }
  } finally {
    await file.close();
  }
  await rm(fifo, { force: true });
  return true;
}
