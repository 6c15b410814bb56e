import { sameIdentity } from '../../host/proc-stat.ts';
import type { GuestDriver } from '../guest-driver.ts';
import type { PvmContext } from './pvm-context.ts';
import { releaseFreePages } from './uml-free-pages.ts';

/** The host memory of a running guest's free pages, given back (uml-free-pages.ts). */
export function pvmMemory(
  c: Pick<PvmContext, 'log' | 'mconsoleOf' | 'liveUml'>,
): Pick<GuestDriver, 'releaseFreeMemory'> {
  const { log, mconsoleOf, liveUml } = c;
  return {
    async releaseFreeMemory(spec, run) {
      // A guest that is not running has no memory to give back (and no mconsole to ask), and a
      // kernel other than the run asked about is a restart's, maybe still booting: unplugging
      // its free memory then leaves its init none (UML panics "System is deadlocked on memory").
      if (!sameIdentity(await liveUml(spec), run)) return 0;
      const r = await releaseFreePages(mconsoleOf(spec));
      if (r.error)
        log.warn({ guest: spec.name, err: r.error }, 'cannot give back the free memory of a pvm guest');
      return r.releasedKiB * 1024;
    },
  };
}
