/**
 * The closed set of error codes every layer speaks. Only `server/` turns them
 * into HTTP status codes (see `httpStatusOf` in api/), once; the code itself
 * travels too: in the API's error envelope, in a failed operation's metadata and
 * in the stored status of a failed convergence.
 */
export const ERROR_CODES = [
  'NotFound',
  'AlreadyExists',
  'InvalidArgument',
  'FailedPrecondition',
  'Conflict',
  'Unavailable',
  'NotSupported',
  'Cancelled',
  'Unauthenticated',
  'PermissionDenied',
  'Internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** Whether a string read from the wire or the store is one of the codes (anything else is not trusted). */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value);
}

/** A typed, user-facing error: `message` is one sentence saying what was wrong and what to do. */
export class TrivisorError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = `TrivisorError(${code})`;
  }
}

export const notFound = (message: string): TrivisorError => new TrivisorError('NotFound', message);
export const alreadyExists = (message: string): TrivisorError => new TrivisorError('AlreadyExists', message);
export const invalidArgument = (message: string): TrivisorError =>
  new TrivisorError('InvalidArgument', message);
export const failedPrecondition = (message: string): TrivisorError =>
  new TrivisorError('FailedPrecondition', message);
export const conflict = (message: string): TrivisorError => new TrivisorError('Conflict', message);
export const unavailable = (message: string): TrivisorError => new TrivisorError('Unavailable', message);
export const notSupported = (message: string): TrivisorError => new TrivisorError('NotSupported', message);
export const cancelled = (message: string): TrivisorError => new TrivisorError('Cancelled', message);
/** The caller did not prove who it is (no or a wrong token or certificate): 401. */
export const unauthenticated = (message: string): TrivisorError =>
  new TrivisorError('Unauthenticated', message);
/** The caller is known, and its role or projects do not allow the request: 403. */
export const permissionDenied = (message: string): TrivisorError =>
  new TrivisorError('PermissionDenied', message);
export const internal = (message: string, cause?: unknown): TrivisorError =>
  new TrivisorError('Internal', message, { cause });

export function isTrivisorError(e: unknown): e is TrivisorError {
  return e instanceof TrivisorError;
}

/** Wraps anything thrown into a TrivisorError, keeping typed ones as they are. */
export function asTrivisorError(e: unknown): TrivisorError {
  if (e instanceof TrivisorError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return internal(message, e);
}
