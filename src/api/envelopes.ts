import type { ErrorCode } from '../core/errors.ts';
import type { Operation } from '../core/types.ts';
import { errorCodeOfStatus } from './errors.ts';

/** A finished answer (HTTP 200). */
export interface SyncResponse<T> {
  type: 'sync';
  status: 'Success';
  status_code: 200;
  metadata: T;
}

/** An operation was started (HTTP 202); `metadata` is the operation as it was when created. */
export interface AsyncResponse {
  type: 'async';
  status: 'Operation created';
  status_code: 100;
  operation: string;
  metadata: Operation;
}

/**
 * A failed request. `error_code` repeats the HTTP status, as Incus's envelope does (its
 * clients read that); `code` is the typed error code the server met, which a status
 * alone cannot tell apart (409 is AlreadyExists, Conflict or Cancelled).
 */
export interface ErrorResponse {
  type: 'error';
  error: string;
  error_code: number;
  code: ErrorCode;
}

export type ApiResponse<T> = SyncResponse<T> | AsyncResponse | ErrorResponse;

export function syncResponse<T>(metadata: T): SyncResponse<T> {
  return { type: 'sync', status: 'Success', status_code: 200, metadata };
}

export function asyncResponse(op: Operation): AsyncResponse {
  return {
    type: 'async',
    status: 'Operation created',
    status_code: 100,
    operation: operationUrl(op.id),
    metadata: op,
  };
}

/** The error envelope; without `code`, the code an HTTP status most often stands for. */
export function errorResponse(message: string, status: number, code?: ErrorCode): ErrorResponse {
  return { type: 'error', error: message, error_code: status, code: code ?? errorCodeOfStatus(status) };
}

export const operationUrl = (id: string): string => `/1.0/operations/${encodeURIComponent(id)}`;
export const guestUrl = (name: string): string => `/1.0/guests/${encodeURIComponent(name)}`;
export const imageUrl = (fingerprint: string): string => `/1.0/images/${encodeURIComponent(fingerprint)}`;
