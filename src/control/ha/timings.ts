import type { HaTimings } from './types.ts';

/** How often etcd looks for expired leases (its lease checkpoint loop runs every 500 ms). */
export const STORE_EXPIRY_CHECK_MS = 500;
/**
 * How far apart the members' clocks may run (a fraction of real time). Real monotonic clocks
 * drift by parts per million; this is far beyond that, as the simulator's random runs are.
 */
export const CLOCK_RATE_TOLERANCE = 0.2;

/**
 * Why these timings could let a guest run twice or fence members for nothing; empty when they
 * hold. The safety rule: a member's last watchdog pet comes less than `fenceAfterMs` after it sent
 * its last confirmed renewal, so a member stuck anywhere (daemon, agent, kernel) is reset at
 * most `fenceAfterMs + watchdogMs` after that renewal, which must come before the store can
 * expire the lease (`leaseTtlMs` after the renewal reached it); `marginMs` on top covers the kill
 * itself and clocks that run at different rates (`CLOCK_RATE_TOLERANCE`). Only a lease's holder
 * ever revokes it (decision 0044), so a lease gone from the store is one its holder fenced for.
 */
export function checkTimings(t: HaTimings): string[] {
  const problems: string[] = [];
  if (t.fenceAfterMs + t.watchdogMs > t.leaseTtlMs)
    problems.push(
      `fence after (${t.fenceAfterMs} ms) plus the watchdog (${t.watchdogMs} ms) exceed the lease TTL (${t.leaseTtlMs} ms): a stuck member could still run its guests when they are restarted elsewhere`,
    );
  if (t.renewEveryMs * 2 > t.fenceAfterMs)
    problems.push(
      `renewals every ${t.renewEveryMs} ms leave less than two per fencing window (${t.fenceAfterMs} ms): one lost renewal fences the member`,
    );
  if (t.watchdogMs <= t.renewEveryMs)
    problems.push(
      `the watchdog (${t.watchdogMs} ms) fires between two renewals (${t.renewEveryMs} ms) of a healthy member`,
    );
  // A stuck member whose clock runs slow is reset late, measured on the store's clock; a CRM whose
  // clock runs fast waits a short margin. The margin must cover both at once.
  const slow = 1 - CLOCK_RATE_TOLERANCE;
  const fast = 1 + CLOCK_RATE_TOLERANCE;
  if ((t.fenceAfterMs + t.watchdogMs) / slow >= t.leaseTtlMs + t.marginMs / fast)
    problems.push(
      `the margin (${t.marginMs} ms) does not cover clocks ${CLOCK_RATE_TOLERANCE * 100} % apart: a member whose clock runs slow could still run its guests when a CRM whose clock runs fast restarts them`,
    );
  return problems;
}

/**
 * When a dead member's HA guests are given to other members, after its death: earliest when it
 * died just before a renewal, latest when it died just after one and every loop's period is
 * lost on top (the store's expiry check, the CRM's pass that sees the lease gone, and the one
 * that acts after the margin). Starting the guest comes on top.
 */
export function recoveryWindowMs(t: HaTimings): { earliestMs: number; latestMs: number } {
  return {
    earliestMs: t.leaseTtlMs - t.renewEveryMs + t.marginMs,
    latestMs: t.leaseTtlMs + STORE_EXPIRY_CHECK_MS + 2 * t.crmEveryMs + t.marginMs,
  };
}
