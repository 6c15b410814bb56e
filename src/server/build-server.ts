import { type Server, STATUS_CODES } from 'node:http';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyHttpOptions,
  type FastifyInstance,
  type FastifyReply,
  LogController,
} from 'fastify';
import { errorResponse } from '../api/envelopes.ts';
import { httpStatusOf } from '../api/errors.ts';
import type { Caller } from '../core/access.ts';
import { type ErrorCode, isTrivisorError } from '../core/errors.ts';
import type { Services } from '../services/types.ts';
import { installAccess } from './access.ts';
import { type ApiLimits, installApiLimits, TCP_API_LIMITS, UNIX_API_LIMITS } from './api-limits.ts';
import { type AuthOptions, createAuthenticator } from './auth.ts';
import { registerAuthRoutes } from './auth-routes.ts';
import { registerClusterRoutes } from './cluster-routes.ts';
import { createExecRegistry } from './exec-bridge.ts';
import { registerFileRoutes } from './file-routes.ts';
import { createForwarder, isForwarded, type MemberForwarding } from './forward.ts';
import { registerGuestRoutes } from './guest-routes.ts';
import { registerHostRoutes } from './host-routes.ts';
import { registerImageRoutes } from './image-routes.ts';
import { lazySchemaCompilers } from './lazy-schema-compilers.ts';
import { registerMetricsHistoryRoutes } from './metrics-history-routes.ts';
import { registerMoveRoutes } from './move-routes.ts';
import { registerNetworkRoutes } from './network-routes.ts';
import { finishOpenApi, type OpenApiDocument } from './openapi-document.ts';
import { createOperationPlaces, operationOf } from './operation-places.ts';
import { registerOperationRoutes } from './operation-routes.ts';
import { ownerScopedGuest, storageScoped, targetScoped } from './owner-routes.ts';
import { registerPlanRoutes } from './plan-routes.ts';
import { isListRoute, isProjectRoute, registerProjectRoutes, withProjectQuery } from './project-routes.ts';
import { projectOf, type RouteContext } from './route-context.ts';
import { formatSchemaErrors } from './schema-errors.ts';
import { registerStorageRoutes } from './storage-routes.ts';
import { registerVolumeRoutes } from './volume-routes.ts';
import { registerWebSessionRoutes, registerWebUi, type WebOptions } from './web-routes.ts';
import { createWebSocketTickets } from './websocket-tickets.ts';

/** Options of `buildServer`. */
export interface BuildServerOptions {
  auth: AuthOptions;
  /** false (default) for silence, a pino logger instance, or pino options. */
  logger?: false | object;
  /** Where uploaded image tarballs are spooled (default: os.tmpdir()). */
  uploadDir?: string;
  /** The daemon's backup directory, which `POST /1.0/backups/import` reads (decision 0070). */
  backupDir?: string;
  /** How long an exec waits for its client to connect to the websocket (default 30 s). */
  execConnectTimeoutMs?: number;
  /** Compile every route's schemas when the server gets ready (tests: a bad schema fails there) instead of on first use. */
  compileSchemasAtReady?: boolean;
  /** On a cluster member: how to reach the other members, to pass on what they must answer (decision 0034). */
  forward?: MemberForwarding;
  /** Request rate and connection limits (default: TCP_API_LIMITS with a token, UNIX_API_LIMITS without). */
  limits?: ApiLimits;
  /**
   * Serve HTTPS with this key and certificate (PEM). Clients may present a certificate of
   * their own: it is not checked against any CA (they are self-signed), only looked up
   * among the trusted ones (services.auth), by fingerprint.
   */
  https?: { key: string; cert: string };
  /** Browser sessions and login links, and (with `uiRoot`) the web UI's pages (docs/decisions/0026-web-ui.md). */
  web?: WebOptions;
}

/** JSON bodies; image uploads have their own, larger limit. */
const JSON_BODY_LIMIT_BYTES = 1024 * 1024;

/** Messages for Fastify's own errors that say what to do. */
const FASTIFY_MESSAGES: Record<string, string> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'Unsupported Content-Type: send application/json',
  FST_ERR_CTP_BODY_TOO_LARGE: 'The request body is too large (JSON bodies are limited to 1 MiB)',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'The body is empty but Content-Type is application/json: send a JSON object',
  FST_ERR_CTP_INVALID_JSON_BODY: 'The body is not valid JSON',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'The Content-Length header does not match the body',
};

function isLoggerInstance(logger: object): boolean {
  const l = logger as Record<string, unknown>;
  return typeof l.child === 'function' && typeof l.info === 'function';
}

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, ' ').trim();

/**
 * Builds the HTTP + WebSocket API over `services` (not listening yet: see
 * listen.ts). Thin by design: parse, call a service, map errors.
 */
export async function buildServer(services: Services, options: BuildServerOptions): Promise<FastifyInstance> {
  const compilers = lazySchemaCompilers();
  const fastifyOptions: FastifyHttpOptions<Server> = {
    bodyLimit: JSON_BODY_LIMIT_BYTES,
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: true,
    return503OnClosing: true,
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false },
    },
    schemaErrorFormatter: formatSchemaErrors,
    schemaController: { compilersFactory: compilers.compilersFactory },
    // Malformed HTTP (a bad header, a body that does not match its framing) gets the envelope too,
    // and only when no answer has begun on the connection: a second one would corrupt the stream.
    clientErrorHandler: (error, socket) => {
      const e = error as NodeJS.ErrnoException & { reason?: string };
      if (e.code === 'ECONNRESET' || socket.destroyed) return;
      const [status, message] =
        e.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? [408, 'The request took too long to arrive']
          : e.code === 'HPE_HEADER_OVERFLOW'
            ? [431, "The request's headers are too large (16 KiB at most)"]
            : [400, `Malformed HTTP request${e.reason ? `: ${oneLine(e.reason)}` : ''}`];
      const pending = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
      if (socket.writable && !pending?.headersSent) {
        const body = JSON.stringify(errorResponse(message, status));
        socket.write(
          `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
      }
      socket.destroy();
    },
    // Errors met before routing (e.g. a malformed URL) get the same envelope.
    frameworkErrors: (error, _request, rawReply) => {
      const status = typeof error.statusCode === 'number' && error.statusCode >= 400 ? error.statusCode : 400;
      const reply = rawReply as unknown as FastifyReply;
      reply
        .code(status)
        .type('application/json; charset=utf-8')
        .send(errorResponse(oneLine(error.message), status));
    },
  };
  if (options.https) {
    (fastifyOptions as { https?: object }).https = {
      key: options.https.key,
      cert: options.https.cert,
      minVersion: 'TLSv1.2',
      // Connections count against the API's limits from the end of the handshake (api-limits.ts): one that
      // never finishes it holds a socket for this long at most (Node's default is 120 s).
      handshakeTimeout: 10_000,
      requestCert: true,
      rejectUnauthorized: false,
    };
  }
  const logger = options.logger ?? false;
  if (logger !== false && isLoggerInstance(logger))
    fastifyOptions.loggerInstance = logger as FastifyBaseLogger;
  else fastifyOptions.logger = logger as NonNullable<FastifyHttpOptions<Server>['logger']>;
  const app: FastifyInstance = Fastify(fastifyOptions);
  if (options.compileSchemasAtReady) app.addHook('onReady', async () => compilers.compileAll());

  app.setErrorHandler((error: FastifyError, request, reply) => {
    let status: number;
    let message: string;
    let code: ErrorCode | undefined;
    if (isTrivisorError(error)) {
      status = httpStatusOf(error.code);
      message = error.message;
      code = error.code;
    } else if (error.validation) {
      status = 400;
      message = error.message;
      code = 'InvalidArgument';
    } else if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
      status = error.statusCode;
      message = FASTIFY_MESSAGES[error.code] ?? error.message;
      if (error instanceof SyntaxError) message = `The body is not valid JSON: ${error.message}`;
    } else {
      // Not one of ours: its message may name host paths (ENOENT, '/var/lib/…') or be a
      // TypeError's, so it goes to the log, and the caller gets the request id to look it up.
      status = 500;
      message = `Internal error (request ${request.id}): the daemon's log has the details`;
    }
    if (status >= 500)
      request.log.error({ err: error, url: request.url, reqId: request.id }, 'request failed');
    reply
      .code(status)
      .type('application/json; charset=utf-8')
      .send(errorResponse(oneLine(message), status, code));
  });
  app.setNotFoundHandler((request, reply) => {
    reply
      .code(404)
      .type('application/json; charset=utf-8')
      .send(errorResponse(`No such endpoint: ${request.method} ${request.url.split('?')[0]}`, 404));
  });

  // JSON only (plus raw image uploads, registered with the image routes): anything else is a 415.
  app.removeContentTypeParser('text/plain');

  // Before the auth hook: the plugin's own onRequest hook must mark upgrade requests first, so that
  // a refused upgrade's socket gets destroyed (an undestroyed one would keep close() waiting).
  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });
  // Before authentication: a client flooding the API without a token is held back too.
  installApiLimits(app, options.limits ?? (options.auth.type === 'token' ? TCP_API_LIMITS : UNIX_API_LIMITS));

  // Which routes serve WebSockets: the only ones where a ticket may stand in for the token.
  const webSocketRoutes = new Set<string>();
  app.addHook('onRoute', (route) => {
    if ((route as { websocket?: boolean }).websocket) webSocketRoutes.add(route.url);
  });
  // Every route that lists or acts on project-owned objects takes ?project= (and lists ?all-projects=):
  // added here, once, so that no route can forget it and docs/openapi.json shows it on each.
  app.addHook('onRoute', (route) => {
    if (!isProjectRoute(route.url)) return;
    route.schema = withProjectQuery(route.schema, { list: isListRoute(route.method, route.url) });
  });
  const tickets = createWebSocketTickets<Caller>();
  // Who the caller is, what its role allows on the route, and the audit of changes: one place (access.ts).
  installAccess(app, {
    authenticate: createAuthenticator(options.auth, {
      tickets,
      isWebSocketRoute: (url) => url !== undefined && webSocketRoutes.has(url),
      ...(services.auth !== undefined && { service: services.auth }),
      ...(options.web !== undefined && { sessions: options.web.sessions }),
    }),
    ...(services.audit !== undefined && { audit: services.audit }),
    unauthenticatedMessage: options.https
      ? 'Not authorized: send a token as "Authorization: Bearer <token>" or a trusted client certificate'
      : 'Not authorized: send the API token as "Authorization: Bearer <token>"',
  });
  // A request in a project that does not exist is a 404 before any route looks at it.
  app.addHook('preHandler', async (request) => {
    if (!isProjectRoute(request.routeOptions.url)) return;
    await services.projects.assertExists(projectOf(request));
  });
  // A request that must run where its guest is goes to the guest's owner, and one about an operation to
  // the member that runs it (decisions 0028, 0034): before its body is read, so that it is passed on as
  // it came. Registered after the access hook: only a request this member let in is passed on.
  const forwarder = options.forward ? createForwarder(options.forward) : undefined;
  const operationPlaces = createOperationPlaces();
  const owner = services.owner;
  app.addHook('onRequest', async (request, reply) => {
    if (reply.sent) return;
    const url = request.routeOptions.url;
    const guest = owner ? ownerScopedGuest(request.method, url, request.params) : undefined;
    if (owner && guest !== undefined) {
      const place = await owner.placeOf(guest, { project: projectOf(request) });
      if (place.here) return;
      if (!forwarder || isForwarded(request)) {
        await owner.onOwner(guest, async () => {}, { project: projectOf(request) });
        return;
      }
      await forwarder.proxy(request, reply, place.member);
      return reply;
    }
    // A pool's or a volume's change runs on the member whose disks hold it.
    const storage = owner && forwarder ? storageScoped(request.method, url, request.params) : undefined;
    if (owner && forwarder && storage && !isForwarded(request)) {
      const target = (request.query as { target?: unknown } | undefined)?.target;
      const place = await owner.placeOfStorage(
        storage.pool,
        storage.volume,
        typeof target === 'string' ? target : undefined,
      );
      if (place.here) return;
      await forwarder.proxy(request, reply, place.member);
      return reply;
    }
    // An import, a new pool or the backup directory's listing goes to the member asked for (?target=),
    // its body unread. An unknown member is the forwarder's one-line 404.
    if (targetScoped(request.method, url) && forwarder && !isForwarded(request)) {
      const target = (request.query as { target?: unknown }).target;
      if (typeof target === 'string' && target !== forwarder.here) {
        await forwarder.proxy(request, reply, target);
        return reply;
      }
      return;
    }
    const operation = operationOf(url, request.params);
    if (operation === undefined || !forwarder || isForwarded(request)) return;
    if (services.operations.has(operation)) return;
    const member = await operationPlaces.locate(operation, forwarder, request, options.forward!);
    if (member === undefined) return;
    await forwarder.proxy(request, reply, member);
    return reply;
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Trivisor API',
        version: '1.0',
        description:
          'REST API of the Trivisor daemon, modelled on Incus: sync/async/error envelopes, operations, events. See docs/api.md.',
      },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      },
      security: [{ bearer: [] }],
    },
    // operationIds, tags, servers and the wildcard route's parameter (openapi-document.ts, decision 0030).
    transformObject: (d) =>
      finishOpenApi(('openapiObject' in d ? d.openapiObject : {}) as OpenApiDocument) as object,
  });

  const ctx: RouteContext = {
    services,
    execs: createExecRegistry(),
    uploadDir: options.uploadDir,
    ...(options.backupDir !== undefined && { backupDir: options.backupDir }),
    execConnectTimeoutMs: options.execConnectTimeoutMs ?? 30_000,
    authType: options.auth.type,
    tls: options.https !== undefined,
    tickets,
    isWebSocketPath: (path) =>
      [...webSocketRoutes].some((pattern) =>
        new RegExp(`^${pattern.replace(/[.]/g, '\\.').replace(/:[^/]+/g, '[^/?#]+')}$`).test(path),
      ),
    ...(forwarder !== undefined && { forward: forwarder }),
  };
  registerHostRoutes(app, ctx);
  registerGuestRoutes(app, ctx);
  await app.register(async (scope) => registerMoveRoutes(scope, ctx));
  await app.register(async (scope) => registerImageRoutes(scope, ctx));
  await app.register(async (scope) => registerStorageRoutes(scope, ctx));
  await app.register(async (scope) => registerFileRoutes(scope, ctx));
  registerOperationRoutes(app, ctx);
  registerNetworkRoutes(app, ctx);
  // In a scope of their own: ISO uploads need a streaming body parser the other routes must not get.
  await app.register(async (scope) => registerVolumeRoutes(scope, ctx));
  registerAuthRoutes(app, ctx);
  registerProjectRoutes(app, ctx);
  registerClusterRoutes(app, ctx);
  registerMetricsHistoryRoutes(app, ctx);
  await app.register(async (scope) => registerPlanRoutes(scope, ctx));
  registerWebSessionRoutes(app, { web: options.web, auth: options.auth, service: services.auth });
  if (options.web?.uiRoot !== undefined)
    await app.register(async (scope) => registerWebUi(scope, options.web!.uiRoot!));

  app.addHook('onClose', async () => ctx.execs.closeAll());
  return app;
}
