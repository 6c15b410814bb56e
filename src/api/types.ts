import type { Guest } from '../core/types.ts';

/*
 * Wire types shared by the server and its clients: the domain objects exactly as
 * the API shows them, and the request bodies.
 */
export type {
  Guest,
  GuestNicState,
  GuestUsage,
  ImageRecord,
  Model,
  Network,
  NetworkAclRule,
  NetworkForward,
  NicDevice,
  Operation,
  OperationStatus,
  TrivisorEvent,
} from '../core/types.ts';
export type { NicChange } from '../services/network-service.ts';
export type { CreateGuestRequest, ExecRequest, StateChangeRequest } from '../services/types.ts';
export type { ApiResponse, AsyncResponse, ErrorResponse, SyncResponse } from './envelopes.ts';
export type {
  AddForwardBody,
  BuildImageBody,
  CreateGuestBody,
  CreateNetworkBody,
  ExecBody,
  GuestStateResponse,
  HostInfo,
  PatchGuestBody,
  StateChangeBody,
} from './schemas.ts';

/** Answer of `PATCH /1.0/guests/{name}`. */
export interface ConfigUpdateResult {
  guest: Guest;
  /** Keys that take effect at the next restart. */
  pendingRestart: string[];
}

/** Client -> server control message on an exec WebSocket. */
export type ExecClientControl =
  | { type: 'resize'; width: number; height: number }
  | { type: 'signal'; signal: string }
  | { type: 'eof' };

/** Server -> client control message on an exec WebSocket. */
export type ExecServerControl =
  | { type: 'exit'; code: number }
  /** `code`: the typed error code (core/errors.ts), as in the error envelope. */
  | { type: 'error'; error: string; code?: string };

/** First byte of a binary frame on an exec WebSocket. */
export const EXEC_CHANNEL = { stdin: 0, stdout: 1, stderr: 2 } as const;

/** Maximum bytes of stdout and of stderr kept by `record-output` exec. */
export const RECORD_OUTPUT_MAX_BYTES = 1024 * 1024;
