import { unavailable } from '../core/errors.ts';

/** How often a move that waits on another member looks whether that member is still there. */
export const MEMBER_POLL_MS = 1000;
/**
 * How long a member must be seen gone, read after read, before a wait on it is given up: a lease
 * that lapsed for a moment (a store that changed leader) is not a dead member, and a daemon the
 * test harness holds (SIGSTOP) for a step is not one yet either.
 */
export const MEMBER_GONE_AFTER_MS = 10_000;

/** A member is gone when it is Offline (its heartbeat's lease expired), powered off, or removed. */
const gone = (status: string | undefined) =>
  status === undefined || status === 'Offline' || status === 'Standby';

/**
 * A signal that aborts once member `member` has been seen gone in `members()` for `goneAfterMs`
 * (the cluster's list: Offline once its heartbeat's lease expired, its daemon dead or cut off from
 * the store and fencing itself; Standby; removed). Its reason is an Unavailable error naming the
 * member and `doing`. A read that fails is no verdict (a store that did not answer is the waiter's
 * own failure, met by its own timeout). `causeOf(e)` is what a wait the signal cut short failed
 * of: the member's absence once it aborted, else `e` itself. Stop it when the wait ends.
 */
export function whileMemberUp(
  members: () => Promise<Array<{ name: string; status: string }>>,
  member: string,
  doing: string,
  o: { everyMs?: number; goneAfterMs?: number; now?: () => number } = {},
): { signal: AbortSignal; causeOf(e: unknown): unknown; stop(): void } {
  const everyMs = o.everyMs ?? MEMBER_POLL_MS;
  const goneAfterMs = o.goneAfterMs ?? MEMBER_GONE_AFTER_MS;
  const now = o.now ?? Date.now;
  const ac = new AbortController();
  let reading = false;
  /** When the member was first seen gone in the reads since it was last seen there. */
  let goneSince: number | undefined;
  const timer = setInterval(() => {
    if (reading || ac.signal.aborted) return;
    reading = true;
    members()
      .then((all) => {
        const status = all.find((m) => m.name === member)?.status;
        if (!gone(status)) {
          goneSince = undefined;
          return;
        }
        goneSince ??= now();
        if (now() - goneSince >= goneAfterMs && !ac.signal.aborted) {
          ac.abort(unavailable(`${member} went ${status ?? 'away'} while ${doing}`));
        }
      })
      .catch(() => {})
      .finally(() => {
        reading = false;
      });
  }, everyMs);
  timer.unref();
  return {
    signal: ac.signal,
    causeOf: (e) => (ac.signal.aborted ? ac.signal.reason : e),
    stop: () => clearInterval(timer),
  };
}
