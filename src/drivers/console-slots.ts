import { conflict } from '../core/errors.ts';
import type { ConsoleStream } from './guest-driver.ts';

/** Who holds the console of which guest, per driver instance. */
export interface ConsoleSlots {
  /**
   * Opens a guest's console with `open` unless it is already attached (Conflict);
   * the slot is free again once the stream closes or `open` fails.
   */
  claim(name: string, open: () => Promise<ConsoleStream>): Promise<ConsoleStream>;
}

/**
 * One attached console per guest: a serial line has one reader, and two
 * people typing into one shell at once is never what either of them wanted.
 */
export function createConsoleSlots(): ConsoleSlots {
  const held = new Set<string>();
  return {
    async claim(name, open) {
      if (held.has(name)) {
        throw conflict(`Guest ${name}'s console is already attached elsewhere: detach that session first`);
      }
      held.add(name);
      let stream: ConsoleStream;
      try {
        stream = await open();
      } catch (e) {
        held.delete(name);
        throw e;
      }
      stream.once('close', () => held.delete(name));
      return stream;
    },
  };
}
