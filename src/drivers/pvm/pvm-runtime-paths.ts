import { lstatSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Where the parts of the pvm code that are not the driver (its storage, its volumes) find a
 * running guest's runtime files: in this member's runtime directory `STATE/run/pvm/NAME`
 * (decision 0066), or, for a guest started before it that the driver has not adopted yet, where
 * they were in the guest's directory.
 */
export type PvmRuntimeFile = 'uml.json' | 'frozen' | 'agent.in' | 'agent.out' | 'mconsole';

/** The runtime file's path: the runtime directory's, unless only the old place has it. */
export function pvmRuntimePath(stateDir: string, guest: string, file: PvmRuntimeFile): string {
  const now = join(stateDir, 'run', 'pvm', guest, ...(file === 'mconsole' ? ['uml', 'uml', file] : [file]));
  const before = join(stateDir, 'guests', guest, ...(file === 'mconsole' ? ['run', 'uml', file] : [file]));
  const there = (path: string) => lstatSync(path, { throwIfNoEntry: false }) !== undefined;
  return !there(now) && there(before) ? before : now;
}
