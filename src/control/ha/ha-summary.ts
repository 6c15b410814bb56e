import type { KvStore } from '../../store/kv.ts';
import { createPlacementIndex } from '../placement.ts';
import { admission, restartedFrom } from './admission.ts';
import { readHaWorld } from './ha-store.ts';
import type { HaMemberRecord, Token } from './types.ts';

/** What `cluster list` shows of HA for one member (decision 0052). */
export interface MemberHaSummary {
  /** Whether the member's HA agent holds its HA lease now. */
  live: boolean;
  /** HA guests it owns (or receives by a move). */
  guests: number;
  /** Admission control's answer when this member's loss could not be absorbed (issue 13 §4). */
  warning?: string;
}

/**
 * Reads the HA records and runs admission control (admission.ts) over the members as they are:
 * the same rules the CRM restarts by, so the warning says what a loss would really leave.
 */
export async function haSummary(
  store: KvStore,
  members: readonly HaMemberRecord[],
): Promise<Map<string, MemberHaSummary>> {
  const world = await readHaWorld(store);
  const alive = new Map<string, Token>(world.heartbeats.map((h) => [h.value.member, h.createRevision]));
  const guests = world.guests.map((g) => g.value);
  const verdict = admission(members, alive, guests, (c) => createPlacementIndex(c));
  const out = new Map<string, MemberHaSummary>();
  for (const m of members) {
    const held = guests.filter((g) => restartedFrom(g, m.name)).length;
    out.set(m.name, {
      live: alive.has(m.name),
      guests: held,
      ...(!verdict.ok && verdict.member === m.name && { warning: verdict.reason }),
    });
  }
  return out;
}
