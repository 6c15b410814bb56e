import { chmod, stat } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * Lets a process running as an unprivileged uid (a user-namespaced container's root, a
 * pvm kernel) walk to files under Trivisor's directories: `own` directories get search
 * permission for others (o+x, not listing); every directory above each of `paths` is only
 * checked, since those belong to the administrator. Returns the first one that cannot be
 * passed, or undefined when all can.
 */
export async function ensureSearchable(own: string[], paths: string[]): Promise<string | undefined> {
  for (const dir of own) {
    const mode = (await stat(dir)).mode;
    if ((mode & 0o001) === 0) await chmod(dir, (mode & 0o7777) | 0o001);
  }
  for (const path of paths) {
    for (let dir = dirname(path); ; dir = dirname(dir)) {
      if (((await stat(dir)).mode & 0o001) === 0) return dir;
      if (dir === dirname(dir)) break;
    }
  }
  return undefined;
}
