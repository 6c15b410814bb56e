import type { FastifyReply } from 'fastify';
import { type AsyncResponse, asyncResponse, operationUrl } from '../api/envelopes.ts';
import type { Operation } from '../core/types.ts';
import type { Services } from '../services/types.ts';
import type { ExecRegistry } from './exec-bridge.ts';

/** What every route module gets. */
export interface RouteContext {
  services: Services;
  execs: ExecRegistry;
  uploadDir: string | undefined;
  execConnectTimeoutMs: number;
  authType: 'none' | 'token';
}

/** Answers 202 with the async envelope and a Location header, as Incus does. */
export function sendAsync(reply: FastifyReply, op: Operation): AsyncResponse {
  reply.code(202).header('location', operationUrl(op.id));
  return asyncResponse(op);
}
