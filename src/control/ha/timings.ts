import type { HaTimings } from './types.ts';

/** How often etcd looks for expired leases (its lease checkpoint loop runs every 500 ms). */
export const STORE_EXPIRY_CHECK_MS = 500;

/**
 * Why these timings could let a guest run twice or fence members for nothing; empty when they
 * hold. The safety rule: a member's last watchdog pet comes less than `fenceAfterMs` after it sent
 * its last confirmed renewal, so a member stuck anywhere (daemon, agent, kernel) is reset at
 * most `fenceAfterMs + watchdogMs` after that renewal, which must come before the store can
 * expire the lease (`leaseTtlMs` after the renewal reached it); `marginMs` on top covers the kill
 * itself and clocks that run at different rates.
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
  if (t.marginMs <= t.renewEveryMs)
    problems.push(
      `the margin (${t.marginMs} ms) must exceed the renewal period (${t.renewEveryMs} ms): a member whose lease was revoked learns it only at its next renewal`,
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
