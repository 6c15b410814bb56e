import { unavailable } from '../core/errors.ts';

/** How often a move that waits on another member looks whether that member is still there. */
export const MEMBER_POLL_MS = 1000;

/** A member is gone when it is Offline (its heartbeat's lease expired), powered off, or removed. */
const gone = (status: string | undefined) =>
  status === undefined || status === 'Offline' || status === 'Standby';

/**
 * A signal that aborts once member `member` is seen gone in `members()` (the cluster's list:
 * Offline once its heartbeat's lease expired, its daemon dead or cut off from the store and
 * fencing itself; Standby; removed). Its reason is an Unavailable error naming the member and
 * `doing`. A read that fails is no verdict (a store that did not answer is the waiter's own
 * failure, met by its own timeout). Stop it when the wait ends.
 */
export function whileMemberUp(
  members: () => Promise<Array<{ name: string; status: string }>>,
  member: string,
  doing: string,
  everyMs = MEMBER_POLL_MS,
): { signal: AbortSignal; stop(): void } {
  const ac = new AbortController();
  let reading = false;
  const timer = setInterval(() => {
    if (reading || ac.signal.aborted) return;
    reading = true;
    members()
      .then((all) => {
        const status = all.find((m) => m.name === member)?.status;
        if (gone(status) && !ac.signal.aborted) {
          ac.abort(unavailable(`${member} went ${status ?? 'away'} while ${doing}`));
        }
      })
      .catch(() => {})
      .finally(() => {
        reading = false;
      });
  }, everyMs);
  timer.unref();
  return { signal: ac.signal, stop: () => clearInterval(timer) };
}
