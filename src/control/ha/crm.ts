import { asTrivisorError } from '../../core/errors.ts';
import type { Placement, PlacementCandidate, PlacementRequest } from '../placement.ts';
import {
  type CrmLockValue,
  type HaGuestRecord,
  type HaMemberRecord,
  type HaTimings,
  type HaWrite,
  type HeartbeatValue,
  haKeys,
  type Read,
  type Token,
} from './types.ts';

/**
 * The cluster resource manager (decision 0044): run by every member's daemon, acting only on
 * the one elected (the member whose token the election key names; the key is on its lease, so it
 * goes with it). It gives a lost member's HA guests to the surviving members:
 *
 * - A member is lost when the token its guests' records name is no longer its heartbeat's (the
 *   lease expired or was revoked; a new lease is a new token). The CRM waits `marginMs` on its own
 *   clock from the pass that first saw it, so a CRM that just took over waits the whole margin.
 * - Then, highest `ha.priority` first, each of those guests goes to the member placement picks
 *   (decision 0033's scheduler, injected), over the members' capacity less what they hold. A guest
 *   no member can take is reported and tried again at each pass.
 * - A guest being moved whose destination still holds the token it had when the move began goes
 *   to that destination (which may run it already): never restarted a second time elsewhere.
 *   A move whose destination was lost is given back to its source once the margin passed.
 * - A guest that failed `maxStartFailures` times on its owner goes to another member, up to
 *   `maxRelocations` members, then is marked in error.
 * Every write compares the guest's record (an edit or a delete during recovery wins), the
 * election key (a CRM that lost its election writes nothing), the lost owner's token (it is still
 * lost) and the new owner's token (it is still there).
 */
export interface CrmView {
  /** The store revision the view was read at. */
  revision: number;
  lock: Read<CrmLockValue> | undefined;
  heartbeats: Read<HeartbeatValue>[];
  members: HaMemberRecord[];
  guests: Read<HaGuestRecord>[];
}

/** One write the CRM wants, and what to log when it succeeds. */
export interface CrmDecision {
  write: HaWrite;
  /** The event it is (`elected`, `g1 → h2 …`). */
  says: string;
  /** The event when the store refuses it (another won the race). */
  ifRefused: string;
}

/**
 * A lost member's HA guest waiting out the margin, and the member placement picks for it now:
 * the loop marks it as moving there (a move mark of kind `ha`), so that the other members' networks
 * take its frames from that member before it can run there, as they do for a move's destination.
 */
export interface HaPrebind {
  guest: string;
  /** Its lost owner. */
  from: string;
  to: string;
}

/** Chooses members for guests, counting each one placed (placement.ts's `createPlacementIndex`). */
export type Placer = (candidates: readonly PlacementCandidate[]) => {
  place(request: PlacementRequest): Placement;
};

/** A member's CRM. */
export interface Crm {
  readonly member: string;
  /**
   * One pass: the writes to try, in order, and the events seen (losses, refusals). `token` is
   * this member's while its LRM is live, undefined otherwise (then it forgets what it saw).
   */
  step(
    nowMs: number,
    token: Token | undefined,
    view: CrmView,
  ): { decisions: CrmDecision[]; notes: string[]; prebinds?: HaPrebind[] };
}

const guestCompare = (r: Read<HaGuestRecord>) => ({
  key: haKeys.guest(r.value.name),
  target: 'modRevision' as const,
  op: '=' as const,
  value: r.modRevision,
});

/** The record without a move or an error: what a guest given to a member starts from. */
export function settled(g: HaGuestRecord): HaGuestRecord {
  const { moving: _moving, error: _error, ...rest } = g;
  return rest;
}

/**
 * Whether HA keeps guest `g` running: its desired state says so, or a cold move stopped it
 * (decision 0108: the move's mark says it ran; the mover stops it through its desired state, and
 * starts it again at the end, on one member or the other).
 */
export const wantsRunning = (g: HaGuestRecord): boolean =>
  g.want === 'started' || g.moving?.wasRunning === true;

/**
 * A lost owner's guest as the CRM gives it to another member: settled, and wanted started if it
 * ran when a cold move stopped it (the hand-over's transaction writes that desired state to its
 * spec: ha-store.ts's `txnOf`).
 */
const recovered = (g: HaGuestRecord): HaGuestRecord => ({
  ...settled(g),
  want: wantsRunning(g) ? 'started' : g.want,
});

/** Highest priority first, then by name: the order of restarts and of admission. */
export const byPriority = (a: HaGuestRecord, b: HaGuestRecord): number =>
  b.priority - a.priority || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/**
 * The members as placement sees them: Online while their heartbeat is there, Evacuated when
 * marked so; free memory is their memory less the guests they hold or receive.
 */
export function haCandidates(
  members: readonly HaMemberRecord[],
  alive: ReadonlyMap<string, Token>,
  guests: readonly HaGuestRecord[],
): PlacementCandidate[] {
  const used = new Map<string, number>();
  for (const g of guests) {
    if (!wantsRunning(g) || g.error !== undefined) continue;
    const where = g.moving ? g.moving.to : g.owner;
    used.set(where, (used.get(where) ?? 0) + g.memoryBytes);
  }
  return members.map((m) => ({
    name: m.name,
    status: !alive.has(m.name) ? 'Offline' : m.evacuated ? 'Evacuated' : 'Online',
    cpus: m.cpus,
    cpuFree: m.cpus,
    memoryTotalBytes: m.memoryTotalBytes,
    memoryFreeBytes: m.memoryTotalBytes - (used.get(m.name) ?? 0),
  }));
}

export function createCrm(member: string, timings: HaTimings, placer: Placer): Crm {
  /** When this CRM first saw each lost member incarnation (`member@token`). */
  const lostSince = new Map<string, number>();
  /** Guests reported as waiting for room, so that a refusal is told once, not every pass. */
  const refused = new Set<string>();

  function forget() {
    lostSince.clear();
    refused.clear();
  }

  return {
    member,
    step(now, token, view) {
      if (token === undefined) {
        forget();
        return { decisions: [], notes: [] };
      }
      if (!view.lock) {
        forget();
        return {
          decisions: [
            {
              write: {
                compare: [{ key: haKeys.crm, target: 'version', op: '=', value: 0 }],
                put: { key: haKeys.crm, value: { member, token } satisfies CrmLockValue, lease: 'own' },
              },
              says: 'crm: elected',
              ifRefused: 'crm: another member was elected first',
            },
          ],
          notes: [],
        };
      }
      if (view.lock.value.member === member && view.lock.value.token !== token) {
        // Its own election from an earlier lease (its daemon kept renewing the election's lease
        // through a fence it did not see): nobody could be elected while it stands.
        forget();
        return {
          decisions: [
            {
              write: {
                compare: [
                  { key: haKeys.crm, target: 'createRevision', op: '=', value: view.lock.createRevision },
                ],
                delete: haKeys.crm,
              },
              says: 'crm: gives up its election of an earlier lease',
              ifRefused: 'crm: its election of an earlier lease changed meanwhile',
            },
          ],
          notes: [],
        };
      }
      if (view.lock.value.member !== member) {
        forget();
        return { decisions: [], notes: [] };
      }
      const lock = view.lock;
      const alive = new Map(view.heartbeats.map((h) => [h.value.member, h.createRevision]));
      const notes: string[] = [];
      const decisions: CrmDecision[] = [];
      const lockCompare = {
        key: haKeys.crm,
        target: 'createRevision' as const,
        op: '=' as const,
        value: lock.createRevision,
      };
      const holds = (m: string, t: Token) => ({
        key: haKeys.heartbeat(m),
        target: 'createRevision' as const,
        op: '=' as const,
        value: t,
      });
      const lostCompare = (m: string, t: Token) => ({
        key: haKeys.heartbeat(m),
        target: 'createRevision' as const,
        op: '!=' as const,
        value: t,
      });
      /** Whether the margin passed since `m@t` was first seen lost (noting it the first time). */
      const marginPassed = (m: string, t: Token): boolean => {
        const key = `${m}@${t}`;
        const since = lostSince.get(key);
        if (since === undefined) {
          lostSince.set(key, now);
          notes.push(
            `crm: ${m} lost (token ${t}); its HA guests are given to others after the margin (${timings.marginMs / 1000} s on this clock)`,
          );
          return false;
        }
        return now - since >= timings.marginMs;
      };
      const stillLost = new Set<string>();

      /** Memory given out by this pass, which the view does not hold yet. */
      const placed = new Map<string, number>();
      const candidates = haCandidates(
        view.members,
        alive,
        view.guests.map((r) => r.value),
      );
      /** Where `g` goes, passing members by (those it failed on), or why nowhere. */
      const place = (g: HaGuestRecord, passBy: readonly string[]): Placement | string => {
        const offered = candidates.map((c) => ({
          ...c,
          status: passBy.includes(c.name) ? ('Offline' as const) : c.status,
          memoryFreeBytes: c.memoryFreeBytes - (placed.get(c.name) ?? 0),
        }));
        try {
          return placer(offered).place(request(g));
        } catch (e) {
          return asTrivisorError(e).message;
        }
      };
      const refuse = (g: HaGuestRecord, why: string) => {
        // Told once per guest while it waits (the figures in the reason change as others are placed).
        if (refused.has(g.name)) return;
        refused.add(g.name);
        notes.push(`crm: ${g.name} cannot be placed: ${why}`);
      };
      const give = (
        r: Read<HaGuestRecord>,
        to: string,
        compare: HaWrite['compare'],
        value: HaGuestRecord,
        says: string,
      ) => {
        refused.delete(r.value.name);
        placed.set(to, (placed.get(to) ?? 0) + r.value.memoryBytes);
        decisions.push({
          write: {
            compare: [guestCompare(r), lockCompare, holds(to, alive.get(to) as Token), ...compare],
            put: { key: haKeys.guest(r.value.name), value },
          },
          says,
          ifRefused: `crm: ${r.value.name} → ${to} refused: its record, the election or a token changed`,
        });
      };

      /** Lost owners' guests still waiting out the margin, in priority order. */
      const waiting: HaGuestRecord[] = [];
      const ordered = [...view.guests].sort((a, b) => byPriority(a.value, b.value));
      for (const r of ordered) {
        const g = r.value;
        if (!g.ha || g.error !== undefined) continue;
        const ownerAlive = alive.get(g.owner) === g.token;
        const movingTo = g.moving;
        const destAlive = movingTo !== undefined && alive.get(movingTo.to) === movingTo.token;
        if (ownerAlive && movingTo && !destAlive) {
          // The destination of a move was lost: once it is surely fenced, the source has it again.
          stillLost.add(`${movingTo.to}@${movingTo.token}`);
          if (!marginPassed(movingTo.to, movingTo.token)) continue;
          decisions.push({
            write: {
              compare: [guestCompare(r), lockCompare, lostCompare(movingTo.to, movingTo.token)],
              put: { key: haKeys.guest(g.name), value: settled(g) },
            },
            says: `crm: ${g.name} stays on ${g.owner}: the destination of its move, ${movingTo.to}, was lost`,
            ifRefused: `crm: ${g.name}'s move could not be ended: its record or the election changed`,
          });
          continue;
        }
        if (ownerAlive) {
          if (g.failures < timings.maxStartFailures || g.moving) continue;
          const failedOn = [...g.failedOn, g.owner];
          if (failedOn.length > timings.maxRelocations) {
            decisions.push({
              write: {
                compare: [guestCompare(r), lockCompare],
                put: {
                  key: haKeys.guest(g.name),
                  value: { ...g, failedOn, error: `it failed to start on ${failedOn.join(', ')}` },
                },
              },
              says: `crm: ${g.name} failed to start on ${failedOn.join(', ')}: given up`,
              ifRefused: `crm: ${g.name} could not be marked in error: its record or the election changed`,
            });
            continue;
          }
          const p = place(g, failedOn);
          if (typeof p === 'string') {
            decisions.push({
              write: {
                compare: [guestCompare(r), lockCompare],
                put: {
                  key: haKeys.guest(g.name),
                  value: { ...g, failedOn, error: `it failed to start on ${failedOn.join(', ')}; ${p}` },
                },
              },
              says: `crm: ${g.name} failed to start on ${failedOn.join(', ')} and no other member can take it: given up`,
              ifRefused: `crm: ${g.name} could not be marked in error: its record or the election changed`,
            });
            continue;
          }
          give(
            r,
            p.member,
            [holds(g.owner, g.token)],
            {
              ...settled(g),
              owner: p.member,
              token: alive.get(p.member) as Token,
              decidedAt: view.revision,
              failures: 0,
              failedOn,
            },
            `crm: ${g.name} failed to start on ${g.owner} ${g.failures} times: → ${p.member} (${p.reason})`,
          );
          continue;
        }
        stillLost.add(`${g.owner}@${g.token}`);
        if (!marginPassed(g.owner, g.token)) {
          // A moving guest is marked to its destination already (the move's own mark).
          if (wantsRunning(g) && !(movingTo && destAlive)) waiting.push(g);
          continue;
        }
        if (!wantsRunning(g)) continue;
        if (movingTo && destAlive) {
          give(
            r,
            movingTo.to,
            [lostCompare(g.owner, g.token)],
            {
              ...recovered(g),
              owner: movingTo.to,
              token: movingTo.token,
              decidedAt: view.revision,
              failures: 0,
              failedOn: [],
            },
            `crm: ${g.name} → ${movingTo.to}, the destination of its move (rev ${view.revision})`,
          );
          continue;
        }
        const p = place(g, []);
        if (typeof p === 'string') {
          refuse(g, p);
          continue;
        }
        give(
          r,
          p.member,
          [lostCompare(g.owner, g.token)],
          {
            ...recovered(g),
            owner: p.member,
            token: alive.get(p.member) as Token,
            decidedAt: view.revision,
            failures: 0,
            failedOn: [],
          },
          `crm: ${g.name} → ${p.member} (rev ${view.revision}; ${p.reason})`,
        );
      }
      for (const key of lostSince.keys()) if (!stillLost.has(key)) lostSince.delete(key);
      // Where the waiting guests would go now, after this pass's own placements: usually where
      // they go once the margin passed (a different pick then is bound from its hand-over on).
      const prebinds: HaPrebind[] = [];
      for (const g of waiting) {
        const p = place(g, []);
        if (typeof p === 'string') continue;
        placed.set(p.member, (placed.get(p.member) ?? 0) + g.memoryBytes);
        prebinds.push({ guest: g.name, from: g.owner, to: p.member });
      }
      return { decisions, notes, prebinds };
    },
  };
}

function request(g: HaGuestRecord): PlacementRequest {
  return { model: g.model, memoryBytes: g.memoryBytes, cpus: g.cpus };
}
