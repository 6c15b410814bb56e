import type { FastifyReply, FastifyRequest } from 'fastify';
import { type AsyncResponse, asyncResponse, operationUrl } from '../api/envelopes.ts';
import type { Caller } from '../core/access.ts';
import { invalidArgument, notFound } from '../core/errors.ts';
import { assertProjectName, DEFAULT_PROJECT } from '../core/projects.ts';
import type { Operation } from '../core/types.ts';
import type { Services } from '../services/types.ts';
import type { ExecRegistry } from './exec-bridge.ts';
import type { Forwarder } from './forward.ts';
import type { WebSocketTickets } from './websocket-tickets.ts';

/** What every route module gets. */
export interface RouteContext {
  services: Services;
  execs: ExecRegistry;
  uploadDir: string | undefined;
  /** The daemon's backup directory (TRIVISOR_BACKUP_DIR), which import can read from (decision 0070). */
  backupDir?: string;
  execConnectTimeoutMs: number;
  authType: 'none' | 'token';
  /** Serving HTTPS (client certificates then authenticate too). */
  tls: boolean;
  /** Tickets that open one WebSocket as their caller without the token in the URL (auth.ts). */
  tickets: WebSocketTickets<Caller>;
  /** True when `path` (no query) is the path of a WebSocket route. */
  isWebSocketPath: (path: string) => boolean;
  /** On a cluster member: passes requests on to the member that must answer them (decision 0034). */
  forward?: Forwarder;
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

/**
 * The project a request acts in: `?project=NAME` (Incus's convention), `default` when
 * absent. The one reading of it, shared by the routes, the project check and the role
 * check of auth: InvalidArgument for a malformed name (never a silent fallback to default).
 */
export function projectOf(request: FastifyRequest): string {
  const query = (request.query ?? {}) as Record<string, unknown>;
  const project = query.project;
  if (project === undefined || project === '') return DEFAULT_PROJECT;
  if (typeof project !== 'string') throw invalidArgument('Give one project: ?project=NAME');
  assertProjectName(project);
  return project;
}

/** `?all-projects=true`: a list shows every project's objects, each with its `project`. */
export function allProjectsOf(request: FastifyRequest): boolean {
  const value = ((request.query ?? {}) as Record<string, unknown>)['all-projects'];
  return value === true || value === 'true' || value === '1';
}

/** NotFound unless `object` (anything with a `project`) is in the request's project, worded as a missing one. */
export function assertInProject(
  request: FastifyRequest,
  object: { project?: string },
  missing: string,
): void {
  if ((object.project ?? DEFAULT_PROJECT) !== projectOf(request)) throw notFound(missing);
}
