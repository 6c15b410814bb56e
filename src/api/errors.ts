import type { ErrorCode } from '../core/errors.ts';

/**
 * The one place where error codes become HTTP status codes. Incus answers a
 * request that does not fit the current state with 400, and so do we
 * (FailedPrecondition); NotSupported is also a request the model cannot do, so
 * 400 rather than 501 (which would mean the server lacks the route).
 * Cancelled means another request cancelled the work: a conflict between two
 * requests, so 409.
 */
const HTTP_STATUS: Record<ErrorCode, number> = {
  NotFound: 404,
  AlreadyExists: 409,
  Conflict: 409,
  InvalidArgument: 400,
  FailedPrecondition: 400,
  NotSupported: 400,
  Unavailable: 503,
  Cancelled: 409,
  Unauthenticated: 401,
  PermissionDenied: 403,
  Internal: 500,
};

/** HTTP status code of an error code. */
export function httpStatusOf(code: ErrorCode): number {
  return HTTP_STATUS[code];
}

/**
 * Best guess of the error code behind an HTTP status, for answers that carry no code
 * (a server before codes travelled, a proxy, the transport's own refusals): several
 * codes share a status, so the most common one wins.
 */
export function errorCodeOfStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
    case 408:
    case 413:
    case 415:
    case 431:
      return 'InvalidArgument';
    case 404:
      return 'NotFound';
    case 409:
      return 'Conflict';
    case 401:
      return 'Unauthenticated';
    case 403:
      return 'PermissionDenied';
    case 429:
    case 503:
      return 'Unavailable';
    default:
      return 'Internal';
  }
}
