import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition } from '../core/errors.ts';
import type { GuestSpec } from '../core/types.ts';

/**
 * Hands out host uids to a model's guests from its block (docs/decisions/0017, 0019): the lowest
 * uid of `slots` from `base` that no other guest of this state dir holds (their `uid` files),
 * written to the guest's uid file. Serialised: two creates must not share one.
 */
export function createUidAllocator(o: {
  stateDir: string;
  base: number;
  slots: number;
  model: string;
  uidFileOf: (spec: GuestSpec) => string;
}): (spec: GuestSpec) => Promise<number> {
  let lock: Promise<unknown> = Promise.resolve();
  return (spec) => {
    const work = lock.then(async () => {
      const taken = new Set<number>();
      const guestsDir = join(o.stateDir, 'guests');
      for (const name of await readdir(guestsDir).catch(() => [] as string[])) {
        if (name === spec.name) continue;
        const text = await readFile(join(guestsDir, name, 'uid'), 'utf8').catch(() => '');
        if (text.trim() !== '') taken.add(Number(text.trim()));
      }
      for (let uid = o.base; uid < o.base + o.slots; uid++) {
        if (!taken.has(uid)) {
          await writeFile(o.uidFileOf(spec), `${uid}\n`, { mode: 0o644 });
          return uid;
        }
      }
      throw failedPrecondition(
        `All ${o.slots} ${o.model} host uids are in use: delete unused ${o.model} guests.`,
      );
    });
    lock = work.catch(() => {});
    return work;
  };
}
