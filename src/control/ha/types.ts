import type { Model } from '../../core/types.ts';
import type { Compare } from '../../store/kv.ts';

/**
 * The records and timings the HA state machines (decision 0044) work on. Nothing here does
 * I/O: the local resource manager (lrm.ts) and the cluster resource manager (crm.ts) read
 * these shapes and answer with actions and compare-and-swap writes that whoever runs them
 * (the simulator today, the daemon later) carries out.
 */

/** Keys of the HA records, etcd-style: one prefix per kind. */
export const haKeys = {
  /** A member's liveness key, put on its lease: gone when the lease expires. */
  heartbeat: (member: string) => `/trivisor/ha/heartbeats/${member}`,
  heartbeatPrefix: '/trivisor/ha/heartbeats/',
  /** The CRM's election key, put on the elected member's lease. */
  crm: '/trivisor/ha/crm',
  /** One guest's HA record: what the CRM and the owner's LRM agree on. */
  guest: (name: string) => `/trivisor/ha/guests/${name}`,
  guestPrefix: '/trivisor/ha/guests/',
  /** A member's record (evacuated or not). */
  member: (name: string) => `/trivisor/ha/members/${name}`,
  memberPrefix: '/trivisor/ha/members/',
} as const;

/**
 * A member's incarnation, the fencing token: the create revision of its heartbeat key. The key
 * is on the member's lease, so a member whose lease expired and who took a new one has a new
 * token, and a write compared on the old one fails. etcd compares create revisions in a
 * transaction; it cannot compare a key's lease.
 */
export type Token = number;

/** A move (migration or evacuation) under way: the guest is not recovered as if it were lost. */
export interface HaMove {
  to: string;
  /** The destination's token when the move began: a destination that lost its lease since is lost. */
  token: Token;
  /** Why it moves (`evacuation`, `migration`). */
  reason: string;
  /**
   * It ran when its move began (decision 0108): a cold move stops it through its desired state,
   * which is the mover's, not the administrator's; HA, giving it away from a lost source, wants it
   * started again.
   */
  wasRunning?: boolean;
}

/** One guest as HA sees it (the HA projection of its spec and location). */
export interface HaGuestRecord {
  name: string;
  model: Model;
  memoryBytes: number;
  cpus: number;
  /** `ha.enabled`: restarted elsewhere when its member is lost, stopped when its member is fenced. */
  ha: boolean;
  /** `ha.priority`: higher first. */
  priority: number;
  /** Desired state. */
  want: 'started' | 'stopped';
  /** The member that may run it. */
  owner: string;
  /** The owner's token when it was given the guest: only that incarnation of the owner may start it. */
  token: Token;
  /** The store revision the owner was decided at (a recovery records it; creation too). */
  decidedAt: number;
  moving?: HaMove;
  /** Failed starts on the owner since it was given the guest. */
  failures: number;
  /** Members where it failed to start since it was last lost (relocation passes them by). */
  failedOn: string[];
  /** Why the CRM gave up on it (no member could start it). */
  error?: string;
}

/** A member as HA sees it. */
export interface HaMemberRecord {
  name: string;
  memoryTotalBytes: number;
  cpus: number;
  evacuated: boolean;
}

/** What a member's heartbeat key holds. */
export interface HeartbeatValue {
  member: string;
  /** The member's capacity, as its agent found it (what the CRM places HA guests by). */
  memoryTotalBytes?: number;
  cpus?: number;
}

/** What the CRM's election key holds. */
export interface CrmLockValue {
  member: string;
  /** The elected member's token: a member elected in an earlier life of its lease is not elected now. */
  token: Token;
}

/** One value read with its revisions (what etcd's range answers). */
export interface Read<T> {
  value: T;
  createRevision: number;
  modRevision: number;
}

/** A compare-and-swap write: kv.ts's compares, puts and deletes of typed values. */
export interface HaWrite {
  compare: Compare[];
  put?: { key: string; value: unknown; lease?: 'own' };
  delete?: string;
}

/**
 * The timings. The rule that makes a lost member's guests safe to restart elsewhere:
 * an owner stops its HA guests (self-fences) `fenceAfterMs` after sending its last renewal
 * that the store confirmed, its watchdog resets the host `watchdogMs` after its last pet
 * (petted only while the lease is live on its own clock), and the CRM restarts them only
 * `marginMs` after it saw the lease gone, which is at least `leaseTtlMs` after that renewal
 * reached the store. See `checkTimings`.
 */
export interface HaTimings {
  leaseTtlMs: number;
  renewEveryMs: number;
  fenceAfterMs: number;
  watchdogMs: number;
  marginMs: number;
  /** How often the CRM looks. */
  crmEveryMs: number;
  /** First retry of a failed start; doubled each failure. */
  retryBaseMs: number;
  /** Failed starts on one member before the CRM gives the guest to another. */
  maxStartFailures: number;
  /** Members tried before the CRM gives up on a guest (an `error` it reports). */
  maxRelocations: number;
}

/** The numbers of decision 0044: a dead member's HA guests are given to others 7–10.5 s after it died. */
export const DEFAULT_TIMINGS: HaTimings = {
  leaseTtlMs: 6000,
  renewEveryMs: 1000,
  fenceAfterMs: 3000,
  watchdogMs: 2000,
  marginMs: 2000,
  crmEveryMs: 1000,
  retryBaseMs: 1000,
  maxStartFailures: 3,
  maxRelocations: 2,
};
