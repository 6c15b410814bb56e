import type { GuestDriver } from '../guest-driver.ts';
import type { PvmContext } from './pvm-context.ts';
import { releaseFreePages } from './uml-free-pages.ts';

/** The host memory of a running guest's free pages, given back (uml-free-pages.ts). */
export function pvmMemory(c: PvmContext): Pick<GuestDriver, 'releaseFreeMemory'> {
  const { log, mconsoleOf, liveUml } = c;
  return {
    async releaseFreeMemory(spec) {
      // A guest that is not running has no memory to give back (and no mconsole to ask).
      if (!(await liveUml(spec))) return 0;
      const r = await releaseFreePages(mconsoleOf(spec));
      if (r.error)
        log.warn({ guest: spec.name, err: r.error }, 'cannot give back the free memory of a pvm guest');
      return r.releasedKiB * 1024;
    },
  };
}
