import type { Operation } from '../core/types.ts';

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

/** A failed request; `error_code` repeats the HTTP status. */
export interface ErrorResponse {
  type: 'error';
  error: string;
  error_code: number;
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

export function errorResponse(message: string, status: number): ErrorResponse {
  return { type: 'error', error: message, error_code: status };
}

export const operationUrl = (id: string): string => `/1.0/operations/${encodeURIComponent(id)}`;
export const guestUrl = (name: string): string => `/1.0/guests/${encodeURIComponent(name)}`;
export const imageUrl = (fingerprint: string): string => `/1.0/images/${encodeURIComponent(fingerprint)}`;
