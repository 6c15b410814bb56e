import { readFile } from 'node:fs/promises';
import { failedPrecondition } from '../core/errors.ts';

/** The kernel's id of this boot: a new random one each time the host boots. */
export const KERNEL_BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id';

/**
 * This host's boot identity (decision 0055): the first line of `file`, the kernel's boot id unless
 * the daemon is told another file (TRIVISOR_BOOT_ID_FILE: a test member in a network namespace
 * shares the machine's kernel, so its "power switch" writes the file it boots with). Power
 * management takes a member as back on when its heartbeat shows another boot id than the one it
 * went off in.
 */
export async function readBootId(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw failedPrecondition(`Cannot read the boot id from ${file}: ${(e as Error).message}`);
  }
  const id = text.split('\n', 1)[0]?.trim() ?? '';
  if (id === '') throw failedPrecondition(`The boot id file ${file} is empty: it must hold one line`);
  return id;
}
