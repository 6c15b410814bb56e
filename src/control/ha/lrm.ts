import { type HaGuestRecord, type HaTimings, type HaWrite, haKeys, type Read, type Token } from './types.ts';

/**
 * The local resource manager of one member (decision 0044): the part of HA that runs on every
 * member, in a small agent of its own beside the daemon, so that a daemon killed with -9 leaves
 * the lease renewed and the guests where they are. It holds the member's lease, and it alone
 * decides when this member may run its HA guests:
 *
 * - It counts from the moment it *sent* its last renewal that the store confirmed (the store
 *   restarted the TTL no earlier than that), on its own monotonic clock. Once `fenceAfterMs`
 *   has passed without another, it kills this member's HA guests, then gives the lease up for
 *   good (revoked at each look until the store answers; never renewed again, so a renewal that
 *   reaches the store without an answer cannot keep the lease alive behind its back), and takes
 *   a new lease: a new token, under which it owns nothing until the CRM gives it guests again.
 *   Nobody else ever revokes a member's lease: the CRM's margin holds only for leases that
 *   expired or that their holder gave up after the kill.
 * - It starts a guest only while its lease is live on its clock and the guest's record names
 *   this member with this token; so a member in the minority of a partition, or one that comes
 *   back after its guests were given to others, starts nothing.
 * - It pets the host's watchdog only while its lease is live and HA guests run here (or are
 *   moving here): a member stuck anywhere (the agent stopped, the host frozen) is reset before
 *   the store can expire its lease.
 *
 * Pure: the clock's readings, the store's answers and what runs here come in; actions go out.
 */
export type LrmAction =
  /** Grant a lease and put the heartbeat key on it; answer with `leaseAnswer`. */
  | { kind: 'grant' }
  /** Renew the lease held; answer with `leaseAnswer`. */
  | { kind: 'renew' }
  /** Kill these guests at once (SIGKILL, their cgroup): the lease may be about to expire. */
  | { kind: 'fence'; guests: string[] }
  /** Give the fenced lease up; sent again at each look until the store answers (it expires by itself otherwise). */
  | { kind: 'revoke' }
  | { kind: 'start'; guest: string }
  | { kind: 'stop'; guest: string; why: string }
  /** Re-arm the host's watchdog: it resets the host at `untilMs` unless petted again. */
  | { kind: 'pet'; untilMs: number }
  | { kind: 'disarm' }
  /** A compare-and-swap write of a guest's record (failed starts). */
  | { kind: 'write'; guest: string; write: HaWrite };

/** The store's answer to a grant, a renewal or the revoke of a fenced lease. */
export type LeaseAnswer =
  | { kind: 'granted'; token: Token; sentAt: number }
  | { kind: 'renewed'; sentAt: number }
  /** The store says the lease is gone (expired or revoked). */
  | { kind: 'gone' }
  /** No answer (unreachable, timed out, an answer lost). */
  | { kind: 'failed' }
  /** The store answered the revoke of the fenced lease: it is gone, a new one can be taken. */
  | { kind: 'revoked' };

/** What the LRM looks at when it manages guests. */
export interface LrmView {
  /** Every guest's HA record as read now. */
  guests: Read<HaGuestRecord>[];
  /** Guests whose processes run on this member. */
  running: ReadonlySet<string>;
  /**
   * Guests made HA a moment ago (their specs say so) that the CRM has not recorded yet: one that
   * runs here is left running (it ran before it was made HA; the CRM records it on this member at
   * its next pass), never started; a fence kills it like any HA guest.
   */
  awaiting?: ReadonlySet<string>;
}

/** A member's LRM: one per agent life; its state is what the agent keeps across its own restarts. */
export interface Lrm {
  readonly member: string;
  /**
   * The clock check first (fencing: it kills what runs here, listed by the agent itself, so it
   * needs no read of the store), then the lease request to send, if any.
   */
  tick(nowMs: number, running: ReadonlySet<string>): LrmAction[];
  leaseAnswer(nowMs: number, answer: LeaseAnswer): LrmAction[];
  /** Whether this member may run its HA guests now, on its clock. */
  live(nowMs: number): boolean;
  /** The token of the lease held while live. */
  token(nowMs: number): Token | undefined;
  /** What to start and stop, while live; nothing otherwise. */
  manage(nowMs: number, view: LrmView): LrmAction[];
  /** A start's outcome: a failed one is retried after a backoff and recorded for the CRM. */
  started(nowMs: number, guest: string, ok: boolean): void;
  /**
   * Fences now, whatever the clock says (the agent stopped cleanly, or asked to fence): the only
   * way a member's lease may be revoked before it expires is by its holder, after the kill.
   */
  fenceNow(running: ReadonlySet<string>): LrmAction[];
}

export function createLrm(member: string, timings: HaTimings): Lrm {
  let token: Token | undefined;
  let lastConfirmedSentAt = Number.NEGATIVE_INFINITY;
  let lastRequestAt = Number.NEGATIVE_INFINITY;
  let lastFailed = false;
  /** A fenced lease whose revoke the store has not answered yet. */
  let revoking = false;
  let armed = false;
  /** What the last read said of each guest running here (HA or not), for fencing without a read. */
  const haKnown = new Map<string, boolean>();
  /** Guests running here at the last look (fencing kills those that are HA or unknown). */
  let runningHere: ReadonlySet<string> = new Set();
  const retryAt = new Map<string, number>();
  /** Failed starts in a row (the backoff doubles with each). */
  const failedStarts = new Map<string, number>();
  /** Failed starts not yet recorded, and guests started since they last failed. */
  const pendingFailures = new Map<string, number>();
  const startedOk = new Set<string>();

  const live = (now: number) => token !== undefined && now - lastConfirmedSentAt < timings.fenceAfterMs;

  function fence(): LrmAction[] {
    const victims = [...runningHere].filter((g) => haKnown.get(g) !== false).sort();
    token = undefined;
    revoking = true;
    lastConfirmedSentAt = Number.NEGATIVE_INFINITY;
    retryAt.clear();
    failedStarts.clear();
    pendingFailures.clear();
    startedOk.clear();
    const actions: LrmAction[] = [{ kind: 'fence', guests: victims }, { kind: 'revoke' }];
    // Only once the guests are dead: the watchdog stays armed until then.
    if (armed) actions.push({ kind: 'disarm' });
    armed = false;
    return actions;
  }

  return {
    member,
    live,
    token: (now) => (live(now) ? token : undefined),
    tick(now, running) {
      runningHere = new Set(running);
      if (token !== undefined && !live(now)) return fence();
      // Petted at every look while live, whether or not the store answers: the watchdog is for
      // a member that cannot look any more, the fencing above for one that cannot renew.
      const actions: LrmAction[] = armed ? [{ kind: 'pet', untilMs: now + timings.watchdogMs }] : [];
      // Until the old lease is gone its heartbeat key is too, and no new lease can be taken.
      if (revoking) actions.push({ kind: 'revoke' });
      // A request that got no answer is sent again at the next look, not a period later.
      if (lastFailed || now - lastRequestAt >= timings.renewEveryMs) {
        lastRequestAt = now;
        actions.push({ kind: token === undefined ? 'grant' : 'renew' });
      }
      return actions;
    },
    leaseAnswer(now, answer) {
      // The revoke's answer says nothing of the grant or renewal sent beside it.
      if (answer.kind !== 'revoked') lastFailed = answer.kind === 'failed';
      switch (answer.kind) {
        case 'granted':
          revoking = false;
          token = answer.token;
          lastConfirmedSentAt = answer.sentAt;
          return [];
        case 'renewed':
          if (token !== undefined) lastConfirmedSentAt = answer.sentAt;
          return [];
        case 'gone':
          return token === undefined ? [] : fence();
        case 'failed':
          return token !== undefined && !live(now) ? fence() : [];
        case 'revoked':
          revoking = false;
          return [];
      }
    },
    manage(now, view) {
      runningHere = new Set(view.running);
      if (!live(now) || token === undefined) return [];
      const mine = token;
      const actions: LrmAction[] = [];
      const byName = new Map(view.guests.map((r) => [r.value.name, r]));
      for (const r of view.guests) if (view.running.has(r.value.name)) haKnown.set(r.value.name, r.value.ha);
      const owns = (g: HaGuestRecord) => g.owner === member && (!g.ha || g.token === mine);

      for (const name of [...view.running].sort()) {
        const r = byName.get(name);
        if (!r) {
          if (view.awaiting?.has(name)) continue;
          actions.push({ kind: 'stop', guest: name, why: 'its record is gone' });
          continue;
        }
        const g = r.value;
        // A move's two ends are its mover's: the source runs it until the switch-over.
        if (g.moving && (g.owner === member || g.moving.to === member)) continue;
        if (!owns(g))
          actions.push({
            kind: 'stop',
            guest: name,
            why:
              g.owner === member
                ? 'it was given to this member before it lost its lease'
                : `${g.owner} owns it`,
          });
        else if (g.want === 'stopped')
          actions.push({ kind: 'stop', guest: name, why: 'it is to be stopped' });
      }

      for (const r of view.guests) {
        const g = r.value;
        if (!owns(g)) continue;
        const pending = pendingFailures.get(g.name) ?? 0;
        const succeeded = startedOk.has(g.name) && view.running.has(g.name) && g.failures > 0;
        if (pending > 0 || succeeded) {
          // Told to the CRM, which gives the guest to another member after too many.
          pendingFailures.delete(g.name);
          startedOk.delete(g.name);
          actions.push({
            kind: 'write',
            guest: g.name,
            write: {
              compare: [
                { key: haKeys.guest(g.name), target: 'modRevision', op: '=', value: r.modRevision },
                { key: haKeys.heartbeat(member), target: 'createRevision', op: '=', value: mine },
              ],
              put: {
                key: haKeys.guest(g.name),
                value: { ...g, failures: pending > 0 ? g.failures + pending : 0 },
              },
            },
          });
          continue;
        }
        if (g.want !== 'started' || g.moving || g.error !== undefined || view.running.has(g.name)) continue;
        if (g.failures >= timings.maxStartFailures) continue;
        if ((retryAt.get(g.name) ?? Number.NEGATIVE_INFINITY) > now) continue;
        actions.push({ kind: 'start', guest: g.name });
        haKnown.set(g.name, g.ha);
      }

      const haRunning = [...view.running].some((g) => haKnown.get(g) !== false);
      const starting = actions.some((a) => a.kind === 'start');
      // A guest moving here runs here from its switch-over on, before this member owns it: the
      // watchdog is armed from the start of the move, or a member stuck then would run it unfenced.
      const arriving = view.guests.some((r) => r.value.ha && r.value.moving?.to === member);
      if (haRunning || starting || arriving) {
        armed = true;
        actions.push({ kind: 'pet', untilMs: now + timings.watchdogMs });
      } else if (armed) {
        armed = false;
        actions.push({ kind: 'disarm' });
      }
      return actions;
    },
    fenceNow(running) {
      runningHere = new Set(running);
      return token === undefined ? [] : fence();
    },
    started(now, guest, ok) {
      if (ok) {
        retryAt.delete(guest);
        failedStarts.delete(guest);
        startedOk.add(guest);
        return;
      }
      const n = (failedStarts.get(guest) ?? 0) + 1;
      failedStarts.set(guest, n);
      pendingFailures.set(guest, (pendingFailures.get(guest) ?? 0) + 1);
      retryAt.set(guest, now + timings.retryBaseMs * 2 ** (n - 1));
    },
  };
}
