import { TrivisorError } from '../core/errors.ts';

/** Why a watch ended without being cancelled by its owner. */
export type WatchLostReason = 'compacted' | 'cancelled';

/**
 * Handed to a watch's `onLost` when the watch ends on its own: events after its
 * last delivered revision may be missing, so its owner lists again and watches
 * from the list's revision (the informer does this).
 */
export class WatchLostError extends TrivisorError {
  readonly reason: WatchLostReason;
  constructor(reason: WatchLostReason, message: string, code: 'FailedPrecondition' | 'Unavailable') {
    super(code, message);
    this.reason = reason;
  }
}

/** The history a watch needs is compacted away: from `fromRevision`, or while it was catching up. */
export class CompactedError extends WatchLostError {
  /** Every revision up to and including this one has been compacted away. */
  readonly compactRevision: number;
  constructor(fromRevision: number, compactRevision: number) {
    super(
      'compacted',
      `Cannot watch from revision ${fromRevision}: history up to revision ${compactRevision} is compacted; list the current state and watch from its revision instead.`,
      'FailedPrecondition',
    );
    this.compactRevision = compactRevision;
  }
}

/** The store's server cancelled a watch (etcd: a lost leader, a revoked permission, a fault). */
export function watchCancelled(why: string): WatchLostError {
  return new WatchLostError(
    'cancelled',
    `The store cancelled a watch (${why}); list the current state and watch from its revision again.`,
    'Unavailable',
  );
}

export function isCompactedError(e: unknown): e is CompactedError {
  return e instanceof CompactedError;
}

export function isWatchLostError(e: unknown): e is WatchLostError {
  return e instanceof WatchLostError;
}
