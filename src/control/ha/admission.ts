import { asTrivisorError } from '../../core/errors.ts';
import { byPriority, haCandidates, type Placer, wantsRunning } from './crm.ts';
import type { HaGuestRecord, HaMemberRecord, Token } from './types.ts';

/** Whether the cluster could restart one member's HA guests, and if not, why. */
export type Admission =
  | { ok: true }
  | {
      ok: false;
      /** The member whose loss could not be absorbed. */
      member: string;
      /** Its HA guests that would find no member, highest priority first. */
      unplaced: string[];
      /** One line for the event and `cluster list`'s warning. */
      reason: string;
    };

/**
 * Whether HA guest `g` is one member `m` holds for HA: running or to run (a cold move's stop
 * counts, decision 0108), not given up, and on `m` or moving to it. Restarted elsewhere if `m` is lost.
 */
export const restartedFrom = (g: HaGuestRecord, m: string): boolean =>
  g.ha && wantsRunning(g) && g.error === undefined && (g.moving?.to ?? g.owner) === m;

/**
 * Admission control (issue 13 §4): can the other members hold the HA guests of any one member
 * if it is lost? Each Online member is tried, the one with the most HA memory first (the
 * largest), and its running HA guests are placed in the CRM's order, by the CRM's placement, on
 * the others as they are now. The first member whose loss leaves a guest without a place is the
 * answer, with the guests that would be left and the scheduler's reason for the first of them.
 */
export function admission(
  members: readonly HaMemberRecord[],
  alive: ReadonlyMap<string, Token>,
  guests: readonly HaGuestRecord[],
  placer: Placer,
): Admission {
  const haOf = (m: string) => guests.filter((g) => restartedFrom(g, m));
  const memoryOf = (m: string) => haOf(m).reduce((sum, g) => sum + g.memoryBytes, 0);
  const online = members.filter((m) => alive.has(m.name));
  const largestFirst = [...online].sort(
    (a, b) => memoryOf(b.name) - memoryOf(a.name) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  for (const lost of largestFirst) {
    const held = haOf(lost.name).sort(byPriority);
    if (held.length === 0) continue;
    const survivors = new Map(alive);
    survivors.delete(lost.name);
    const index = placer(haCandidates(members, survivors, guests));
    const unplaced: string[] = [];
    let first: string | undefined;
    for (const g of held) {
      try {
        index.place({ model: g.model, memoryBytes: g.memoryBytes, cpus: g.cpus });
      } catch (e) {
        unplaced.push(g.name);
        first ??= asTrivisorError(e).message;
      }
    }
    if (unplaced.length > 0)
      return {
        ok: false,
        member: lost.name,
        unplaced,
        reason: `If ${lost.name} were lost, ${unplaced.length} of its ${held.length} HA guests could not be restarted (${unplaced.join(', ')}): ${first}`,
      };
  }
  return { ok: true };
}
