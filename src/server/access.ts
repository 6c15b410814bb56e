import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify';
import { errorResponse } from '../api/envelopes.ts';
import { errorCodeOfStatus } from '../api/errors.ts';
import { ACTION_CLASSES, type ActionClass, ALL_PROJECTS, type Caller, decideAccess } from '../core/access.ts';
import { isTrivisorError } from '../core/errors.ts';
import type { AuditLog } from '../services/audit-log.ts';
import { wasPassedOn } from './forward.ts';
import { allProjectsOf, projectOf } from './route-context.ts';

/** What a route needs: its class, and where the project it acts in comes from if not `?project=`. */
export type AccessNeed = ActionClass | { class: ActionClass; project: string };

/**
 * Declared beside every route as `config: { access }` (a route without one is refused when it
 * is registered): a class, or a function of the request for the few routes whose class
 * depends on what is asked (`/1.0/events?type=audit`) or whose project is in the path
 * (`/1.0/projects/NAME`).
 */
export type RouteAccess = ActionClass | ((request: FastifyRequest) => AccessNeed);

/** One route and what it declared, as `app.accessTable` lists them (tests, docs). */
export interface RouteAccessEntry {
  method: string;
  url: string;
  access: RouteAccess;
  websocket: boolean;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
  interface FastifyInstance {
    /** Every route registered so far with its declared access (HEAD routes Fastify adds are left out). */
    accessTable: RouteAccessEntry[];
  }
  interface FastifyRequest {
    /** Who sent the request (null: nobody proved who; only `public` routes answer then). */
    caller: Caller | null;
  }
}

/** Options of `installAccess`. */
export interface AccessOptions {
  /** Who sent a request, or undefined when it carries no valid credential. */
  authenticate(request: FastifyRequest): Promise<Caller | undefined>;
  /** Where changes are recorded; none: not recorded (tests, the OpenAPI writer). */
  audit?: AuditLog;
  /** The 401's line (says what to send on this listener). */
  unauthenticatedMessage: string;
}

/** The route's declared access, evaluated for `request` (undefined: no route matched: a 404). */
export function accessNeedOf(request: FastifyRequest): { class: ActionClass; project: string } | undefined {
  if (request.is404) return undefined;
  const declared = request.routeOptions.config.access;
  if (declared === undefined) return { class: 'host-admin', project: ALL_PROJECTS };
  const need = typeof declared === 'function' ? declared(request) : declared;
  if (typeof need !== 'string') return need;
  if (need === 'host-read' || need === 'host-admin' || need === 'public' || need === 'authenticated') {
    return { class: need, project: ALL_PROJECTS };
  }
  return { class: need, project: allProjectsOf(request) ? ALL_PROJECTS : projectOf(request) };
}

/** Non-GET requests change something, except a ticket's issue (which opens only what the caller may open). */
function changes(request: FastifyRequest, need: { class: ActionClass } | undefined): boolean {
  if (need === undefined || need.class === 'public' || need.class === 'authenticated') return false;
  return !['GET', 'HEAD', 'OPTIONS'].includes(request.method);
}

const sendError = (reply: FastifyReply, status: number, message: string) =>
  reply.code(status).type('application/json; charset=utf-8').send(errorResponse(message, status));

const kError = Symbol('audit error code');
const kNeed = Symbol('access need');
type Marked = FastifyRequest & {
  [kError]?: string;
  [kNeed]?: { class: ActionClass; project: string } | undefined;
};

/**
 * The one place where access is decided (issue 11): every request is authenticated, then
 * its route's declared class is checked against the caller's role and projects; a change is
 * recorded in the audit log once answered, refused or not. Install before any route.
 */
export function installAccess(app: FastifyInstance, options: AccessOptions): void {
  app.decorateRequest('caller', null);
  const table: RouteAccessEntry[] = [];
  app.decorate('accessTable', table);

  app.addHook('onRoute', (route: RouteOptions) => {
    const access = route.config?.access;
    if (access === undefined || (typeof access !== 'function' && !ACTION_CLASSES.includes(access))) {
      throw new Error(
        `Route ${String(route.method)} ${route.url} declares no access class: add config: { access } (read, operate, admin, host-read, host-admin, authenticated or public; src/core/access.ts)`,
      );
    }
    for (const method of [route.method].flat()) {
      if (method === 'HEAD' && table.some((r) => r.method === 'GET' && r.url === route.url)) continue;
      table.push({
        method,
        url: route.url,
        access,
        websocket: (route as { websocket?: boolean }).websocket === true,
      });
    }
  });

  app.addHook('onRequest', async (request, reply) => {
    const caller = (await options.authenticate(request)) ?? null;
    request.caller = caller;
    if (!request.is404 && request.routeOptions.config.access === 'public') {
      (request as Marked)[kNeed] = { class: 'public', project: ALL_PROJECTS };
      return;
    }
    // Before anything of the request is read (its ?project=, say): a stranger learns nothing but 401.
    if (!caller) {
      (request as Marked)[kError] = 'Unauthenticated';
      reply.header('www-authenticate', 'Bearer');
      return sendError(reply, 401, options.unauthenticatedMessage);
    }
    const need = accessNeedOf(request);
    (request as Marked)[kNeed] = need;
    // Unknown routes: any caller gets the 404 that says so.
    if (!need) return;
    const route = request.routeOptions.url ?? request.url.split('?')[0];
    const decision = decideAccess(caller, need.class, {
      project: need.project,
      what: `${request.method} ${route}`,
    });
    if (decision.allowed) return;
    (request as Marked)[kError] = 'PermissionDenied';
    return sendError(reply, 403, decision.message);
  });

  const audit = options.audit;
  if (!audit) return;
  app.addHook('onError', async (request, _reply, error) => {
    if (isTrivisorError(error)) (request as Marked)[kError] = error.code;
  });
  app.addHook('onResponse', async (request, reply) => {
    const need = (request as Marked)[kNeed];
    const caller = request.caller;
    // Unauthenticated attempts are not recorded: a flood of them would rotate the
    // accountable history out of the log, and they name nobody (decision 0022).
    if (!caller || !changes(request, need)) return;
    // A request passed on to another member is audited there, where it was carried out (decision 0034).
    if (wasPassedOn(request)) return;
    const status = reply.statusCode;
    const location = reply.getHeader('location');
    const operation =
      typeof location === 'string' ? /^\/1\.0\/operations\/([^/?]+)$/.exec(location)?.[1] : undefined;
    const error = status >= 400 ? ((request as Marked)[kError] ?? errorCodeOfStatus(status)) : undefined;
    const object = objectOf(request);
    audit.record({
      actor: {
        method: caller.method,
        name: caller.name,
        ...(caller.fingerprint !== undefined && { fingerprint: caller.fingerprint }),
      },
      source: request.raw.socket?.remoteAddress ?? 'unix',
      request: {
        method: request.method,
        route: request.routeOptions.url ?? '',
        path: request.url.split('?')[0] ?? '',
        project: need?.project ?? ALL_PROJECTS,
        ...(object !== undefined && { object }),
      },
      result: { status, ...(error !== undefined && { error }) },
      ...(operation !== undefined && { operation }),
    });
  });
}

/**
 * What a change acted on: the names in its path (`web1/snap0`), else the name a create gives
 * in its body or headers. Only names: a body's other fields may be secrets.
 */
function objectOf(request: FastifyRequest): string | undefined {
  const params = Object.values((request.params ?? {}) as Record<string, unknown>).filter(
    (v): v is string => typeof v === 'string' && v !== '',
  );
  if (params.length > 0) return params.join('/').slice(0, 300);
  const body = request.body as { name?: unknown } | undefined;
  if (body && typeof body === 'object' && !Buffer.isBuffer(body) && typeof body.name === 'string') {
    return body.name.slice(0, 300);
  }
  for (const header of ['x-trivisor-name', 'x-trivisor-alias']) {
    const value = request.headers[header];
    if (typeof value === 'string' && value !== '') return value.slice(0, 300);
  }
  return undefined;
}

/** The client certificate a TLS request came with (undefined on plain sockets or without one). */
export function peerCertificateOf(request: FastifyRequest): { fingerprint256?: string } | undefined {
  const socket = request.raw.socket as Partial<TLSSocket>;
  if (!socket.encrypted || typeof socket.getPeerCertificate !== 'function') return undefined;
  const cert = socket.getPeerCertificate();
  return cert && Object.keys(cert).length > 0 ? cert : undefined;
}
