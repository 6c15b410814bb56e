import type { DriverContext, GuestDriver } from '../guest-driver.ts';
import { pvmBoot } from './pvm-boot.ts';
import { createPvmContext, type PvmDriverOptions } from './pvm-context.ts';
import { pvmExec } from './pvm-exec.ts';
import { pvmLive } from './pvm-live.ts';
import { pvmMemory } from './pvm-memory.ts';
import { pvmState } from './pvm-state.ts';
import { pvmStop } from './pvm-stop.ts';

export {
  DEFAULT_UML_KERNEL,
  PVM_MIN_MEMORY_BYTES,
  type PvmDriverOptions,
  type PvmGuestPaths,
} from './pvm-context.ts';

/**
 * User-Mode Linux behind the `pvm` model: one linux.uml kernel per guest,
 * running as its own unprivileged host uid in its own cgroup, its disk a UML
 * copy-on-write file over the image's shared base disk, controlled through
 * its mconsole socket, with qemu-ga inside on the serial line ssl1.
 */
export function createPvmDriver(ctx: DriverContext, options: PvmDriverOptions = {}): GuestDriver {
  // The parts share one context (pvm-context.ts); `driver` is handed to it for one part calling another's method.
  const c = createPvmContext(ctx, options, () => driver);
  const driver: GuestDriver = {
    model: 'pvm',
    ...pvmBoot(c),
    ...pvmStop(c),
    ...pvmState(c),
    ...pvmExec(c),
    ...pvmLive(c),
    ...pvmMemory(c),
  };
  return driver;
}
