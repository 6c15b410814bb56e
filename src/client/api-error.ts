import { errorCodeOfStatus } from '../api/errors.ts';
import { type ErrorCode, TrivisorError } from '../core/errors.ts';

/** An error answered by the server (or met reaching it), with the HTTP status it came with (0: no answer). */
export class TrivisorApiError extends TrivisorError {
  readonly status: number;
  constructor(message: string, options: { status: number; code?: ErrorCode; cause?: unknown }) {
    super(options.code ?? errorCodeOfStatus(options.status), message, { cause: options.cause });
    this.status = options.status;
  }
}
