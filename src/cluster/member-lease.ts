import { isTrivisorError } from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';
import type { KvStore } from '../store/kv.ts';
import { type MemberHeartbeat, records } from '../store/records.ts';

/** The member's liveness as this member itself sees it. */
export type LeaseState =
  /** Renewed within the fencing window: the member may act as the owner of its guests. */
  | 'live'
  /** No confirmed renewal for the fencing window (or the store said the lease is gone): act as if expired. */
  | 'fenced'
  /** The member's record is gone (removed from the cluster): no heartbeat is written any more. */
  | 'removed'
  | 'stopped';

/** Options of `startMemberLease`. */
export interface MemberLeaseOptions {
  store: KvStore;
  /** This member's name. */
  name: string;
  /** What the heartbeat says (measured usage included); asked at every publication. */
  heartbeat: () => MemberHeartbeat;
  log: Logger;
  /** Lease TTL (default 5 s): a member that stops renewing is Offline within TTL + etcd's expiry check. */
  ttlSeconds?: number;
  /** How often the lease is renewed (default 1000 ms). */
  renewIntervalMs?: number;
  /** How often the heartbeat's measurements are written again (default 10 s). */
  publishIntervalMs?: number;
  /** Fenced this long before the TTL runs out on this member's clock (default 1000 ms). */
  fenceMarginMs?: number;
  /** Monotonic milliseconds (default performance.now): fencing must not jump with the wall clock. */
  clock?: () => number;
  /** Told when the state changes (HA, issue 13, stops guests on `fenced`). */
  onStateChange?: (state: LeaseState) => void;
}

/**
 * A member's lease and heartbeat (decision 0032). The heartbeat key is on the lease, so
 * it goes when the member stops renewing: that is what makes it Offline to the others.
 *
 * Fencing runs on this member's own clock, from the moment its last *confirmed* renewal
 * was sent (the server restarted the TTL no earlier than that): once `ttl - margin` has
 * passed without another, the member is fenced, whatever etcd3's client would say (it
 * reports a lost lease only after 2×TTL). A renewal the store answers NotFound for (the
 * lease expired or was revoked) fences at once; the member then takes a new lease and
 * writes its heartbeat again, unless its member record is gone (removed).
 */
export interface MemberLease {
  state(): LeaseState;
  /** The lease id now held (undefined before the first grant or after a loss). */
  leaseId(): number | undefined;
  /** Milliseconds since the last confirmed renewal was sent, on this member's clock. */
  sinceRenewalMs(): number;
  /** Writes the heartbeat again now (after a change worth publishing). */
  publish(): Promise<void>;
  /** Stops renewing; with `revoke`, the lease goes at once (a clean shutdown: Offline now). */
  stop(options?: { revoke?: boolean }): Promise<void>;
}

/** Grants the lease and writes the heartbeat (throws if the store cannot), then keeps both up. */
export async function startMemberLease(options: MemberLeaseOptions): Promise<MemberLease> {
  const { store, name, log } = options;
  const ttlSeconds = options.ttlSeconds ?? 5;
  const renewIntervalMs = options.renewIntervalMs ?? 1000;
  const publishIntervalMs = options.publishIntervalMs ?? 10_000;
  // A short test TTL keeps half of it at least.
  const fenceAfterMs = Math.max(ttlSeconds * 1000 - (options.fenceMarginMs ?? 1000), (ttlSeconds * 1000) / 2);
  const clock = options.clock ?? (() => performance.now());
  let state: LeaseState = 'live';
  let lease: number | undefined;
  let lastConfirmedSentAt = clock();
  let lastPublishedAt = clock();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = false;

  const setState = (next: LeaseState) => {
    if (next === state) return;
    state = next;
    log.info({ member: name, state: next }, 'member lease state changed');
    options.onStateChange?.(next);
  };

  /** A new lease with the heartbeat on it; its grant counts as a renewal sent when it was asked. */
  const register = async () => {
    const sentAt = clock();
    const granted = await store.grantLease(ttlSeconds);
    const member = await records.member.at(name).get(store);
    if (!member) {
      await store.revokeLease(granted.id).catch(() => {});
      lease = undefined;
      setState('removed');
      return;
    }
    await records.memberHeartbeat.at(name).put(store, options.heartbeat(), { lease: granted.id });
    lease = granted.id;
    lastConfirmedSentAt = sentAt;
    lastPublishedAt = clock();
    setState('live');
  };

  const tick = async () => {
    if (stopped || state === 'removed') return;
    const sentAt = clock();
    try {
      if (lease === undefined) {
        await register();
      } else {
        await store.keepAlive(lease);
        lastConfirmedSentAt = sentAt;
        if (clock() - lastPublishedAt >= publishIntervalMs) {
          lastPublishedAt = clock();
          await records.memberHeartbeat.at(name).put(store, options.heartbeat(), { lease });
        }
        setState('live');
      }
    } catch (e) {
      if (isTrivisorError(e) && e.code === 'NotFound') {
        // The lease is gone: whatever this member held under it, others may take now.
        log.warn({ member: name, lease }, 'the member lease expired or was revoked; taking a new one');
        lease = undefined;
        setState('fenced');
      } else {
        log.warn({ member: name, err: String(e) }, 'cannot renew the member lease');
      }
    }
    if (state === 'live' && clock() - lastConfirmedSentAt >= fenceAfterMs) setState('fenced');
  };

  const loop = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = tick().finally(loop);
    }, renewIntervalMs);
    timer.unref();
  };

  await register();
  loop();

  return {
    state: () => {
      // Checked on read too: a member whose event loop stalled must not think itself live.
      if (state === 'live' && clock() - lastConfirmedSentAt >= fenceAfterMs) setState('fenced');
      return state;
    },
    leaseId: () => lease,
    sinceRenewalMs: () => clock() - lastConfirmedSentAt,
    async publish() {
      if (lease === undefined || stopped) return;
      await records.memberHeartbeat.at(name).put(store, options.heartbeat(), { lease });
      lastPublishedAt = clock();
    },
    async stop(o = {}) {
      stopped = true;
      clearTimeout(timer);
      await running;
      if (o.revoke && lease !== undefined) {
        await store
          .revokeLease(lease)
          .catch((e: unknown) =>
            log.warn(
              { member: name, err: String(e) },
              'cannot revoke the member lease; it expires by itself',
            ),
          );
      }
      lease = undefined;
      setState('stopped');
    },
  };
}
