import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ProcessIdentity } from '../../core/types.ts';

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
