import type { FastifyReply } from 'fastify';
import { type AsyncResponse, asyncResponse, operationUrl } from '../api/envelopes.ts';
import { invalidArgument } from '../core/errors.ts';
import type { Operation } from '../core/types.ts';
import type { Services } from '../services/types.ts';
import type { ExecRegistry } from './exec-bridge.ts';
import type { WebSocketTickets } from './websocket-tickets.ts';

/** What every route module gets. */
export interface RouteContext {
  services: Services;
  execs: ExecRegistry;
  uploadDir: string | undefined;
  execConnectTimeoutMs: number;
  authType: 'none' | 'token';
  /** Tickets that open one WebSocket without the token in the URL (auth.ts). */
  tickets: WebSocketTickets;
  /** True when `path` (no query) is the path of a WebSocket route. */
  isWebSocketPath: (path: string) => boolean;
}

/** Answers 202 with the async envelope and a Location header, as Incus does. */
export function sendAsync(reply: FastifyReply, op: Operation): AsyncResponse {
  reply.code(202).header('location', operationUrl(op.id));
  return asyncResponse(op);
}

/**
 * A PATCH body's config change: keys in `config` are set, keys with a null value and keys
 * in `unset` are removed. An empty change is refused rather than silently accepted.
 */
export function configChange(body: { config?: Record<string, string | null>; unset?: string[] }): {
  set: Record<string, string>;
  unset: string[];
} {
  const set: Record<string, string> = {};
  const unset = [...(body.unset ?? [])];
  for (const [key, value] of Object.entries(body.config ?? {})) {
    if (value === null) unset.push(key);
    else set[key] = value;
  }
  if (Object.keys(set).length === 0 && unset.length === 0) {
    throw invalidArgument('Nothing to change: give "config" with keys to set or "unset" with keys to remove');
  }
  return { set, unset };
}
