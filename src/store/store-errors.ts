import { TrivisorError } from '../core/errors.ts';

/** Thrown by `watch` when `fromRevision` is older than the history the store still keeps. */
export class CompactedError extends TrivisorError {
  /** Every revision up to and including this one has been compacted away. */
  readonly compactRevision: number;
  constructor(fromRevision: number, compactRevision: number) {
    super(
      'FailedPrecondition',
      `Cannot watch from revision ${fromRevision}: history up to revision ${compactRevision} is compacted; list the current state and watch from its revision instead.`,
    );
    this.compactRevision = compactRevision;
  }
}

export function isCompactedError(e: unknown): e is CompactedError {
  return e instanceof CompactedError;
}
