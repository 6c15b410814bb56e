import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import {
  ErrorEnvelopeSchema,
  EventSchema,
  type HostInfo,
  HostInfoSchema,
  SyncEnvelope,
} from '../api/schemas.ts';
import { ALL_PROJECTS, decideAccess } from '../core/access.ts';
import { invalidArgument } from '../core/errors.ts';
import { DEFAULT_PROJECT } from '../core/projects.ts';
import type { TrivisorEvent } from '../core/types.ts';
import { isForwarded } from './forward.ts';
import { allProjectsOf, projectOf, type RouteContext } from './route-context.ts';

const EVENT_TYPES: readonly TrivisorEvent['type'][] = ['lifecycle', 'operation', 'logging', 'audit'];
/** What a stream without `?type=` carries: the audit log only when asked for, since it needs an admin. */
const DEFAULT_EVENT_TYPES: TrivisorEvent['type'][] = ['lifecycle', 'operation', 'logging'];

/** `?type=…audit…` reads the audit log: an admin's (of the project, or of all with ?all-projects). */
const wantsAudit = (request: FastifyRequest) =>
  String((request.query as { type?: unknown } | undefined)?.type ?? '')
    .split(',')
    .some((t) => t.trim() === 'audit');

/** `/1.0`, metrics, the OpenAPI document and the event stream. */
export function registerHostRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { services } = ctx;
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };

  app.get(
    '/1.0',
    {
      schema: {
        summary: 'Server and host information',
        description:
          'Answers untrusted callers too, with `auth: untrusted` and nothing else. A trusted caller also learns who it is to the server and what its role allows (`auth_user_*`).',
        response: { 200: SyncEnvelope(HostInfoSchema), ...errors },
      },
      config: { access: 'public' },
    },
    async (request) => {
      const caller = request.caller;
      const info: HostInfo = {
        api_version: '1.0',
        auth: caller ? 'trusted' : 'untrusted',
        auth_methods: ctx.authType === 'none' ? ['unix'] : ctx.tls ? ['token', 'certificate'] : ['token'],
      };
      if (caller) {
        info.auth_user_name = caller.name;
        info.auth_user_method = caller.method;
        info.auth_role = caller.role;
        info.auth_projects = caller.projects;
        info.environment = await services.host.info();
      }
      return syncResponse(info);
    },
  );

  app.get(
    '/1.0/metrics',
    {
      schema: {
        summary: 'Prometheus metrics (text exposition format)',
        produces: ['text/plain'],
        response: { 200: Type.String(), ...errors },
      },
      // Every project's guests are in it: the host's to read.
      config: { access: 'host-read' },
    },
    async (_request, reply) => {
      const metrics = await services.host.metrics();
      reply.type(metrics.contentType);
      return metrics.body;
    },
  );

  app.get(
    '/1.0/openapi.json',
    {
      schema: { summary: 'This API as an OpenAPI 3 document', hide: true },
      config: { access: 'authenticated' },
    },
    async () => app.swagger(),
  );

  app.post<{ Body: { path: string } }>(
    '/1.0/websocket-tickets',
    {
      schema: {
        summary: 'A ticket that opens one WebSocket without the token in its URL',
        description:
          'For clients that cannot set an Authorization header on a WebSocket (browsers): connect to `path` with `?ticket=` (or `&ticket=` after the secret) within `expiresInSeconds`; the ticket is good once, for that path only.',
        body: Type.Object(
          {
            path: Type.String({
              maxLength: 512,
              description:
                'The WebSocket path without a query: /1.0/events or /1.0/operations/{id}/websocket',
            }),
          },
          { additionalProperties: false },
        ),
        response: {
          200: SyncEnvelope(
            Type.Object({ ticket: Type.String(), path: Type.String(), expiresInSeconds: Type.Integer() }),
          ),
          ...errors,
        },
      },
      // Changes nothing: the ticket opens only what its caller may open (checked at the upgrade).
      config: { access: 'authenticated' },
    },
    async (request) => {
      const { path } = request.body;
      if (!ctx.isWebSocketPath(path)) {
        throw invalidArgument(
          `${JSON.stringify(path.slice(0, 100))} is not a WebSocket path: give /1.0/events or /1.0/operations/{id}/websocket, without a query`,
        );
      }
      // The socket opens as whoever asked, and its route's access is checked then, as for a header.
      return syncResponse({ ...ctx.tickets.issue(path, request.caller!), path });
    },
  );

  app.get(
    '/1.0/events',
    {
      websocket: true,
      schema: {
        summary: 'Event stream (WebSocket): one JSON TrivisorEvent per text message',
        querystring: Type.Object({
          type: Type.Optional(
            Type.String({
              description:
                "Comma-separated: lifecycle,operation,logging (the default: all three; logging, the daemon's warnings and errors, goes to host readers only), audit (the audit log: admins only)",
            }),
          ),
        }),
        response: { 101: EventSchema, ...errors },
      },
      config: { access: (request) => (wantsAudit(request) ? 'admin' : 'read') },
      preValidation: async (request) => {
        eventTypesOf(request.query as { type?: string });
      },
    },
    (socket, request) => {
      const types = eventTypesOf(request.query as { type?: string });
      const project = projectOf(request);
      const all = allProjectsOf(request);
      const here = ctx.forward?.here;
      // The daemon's own warnings name any project's guests and the host's paths: host readers only.
      const caller = request.caller;
      const hostReader =
        caller !== null &&
        decideAccess(caller, 'host-read', { project: ALL_PROJECTS, what: 'logging events' }).allowed;
      const unsubscribe = services.events.subscribe((event) => {
        if (event.type === 'logging' && !hostReader) return;
        // Another project's events are not this project's business (unlabelled ones are default's).
        if (!all && (event.project ?? DEFAULT_PROJECT) !== project) return;
        if (socket.readyState === socket.OPEN)
          socket.send(JSON.stringify(here === undefined ? event : { ...event, location: here }));
      }, types);
      const stops = [unsubscribe];
      const stop = () => {
        for (const s of stops.splice(0)) s();
      };
      socket.on('close', stop);
      socket.on('error', stop);
      // On a cluster the stream is the cluster's: every other member's events are passed on, each
      // saying its member (decision 0034). A member asked by another sends only its own.
      const forward = ctx.forward;
      if (forward && !isForwarded(request)) {
        const query = new URLSearchParams(request.query as Record<string, string>);
        query.delete('ticket');
        // Which members are streamed; one that ends (a restart) or joins is taken up at the next look.
        const streaming = new Set<string>();
        // A member whose stream ended is looked for again soon, then less often while it stays away.
        const retryMs = new Map<string, number>();
        const lookAgain = (member: string) => {
          const wait = Math.min((retryMs.get(member) ?? MEMBER_RETRY_MS / 2) * 2, MEMBER_LOOK_MS);
          retryMs.set(member, wait);
          setTimeout(look, wait).unref();
        };
        const look = (): void =>
          void forward
            .others()
            .then((members) => {
              for (const member of members) {
                if (stops.length === 0 || streaming.has(member)) continue;
                streaming.add(member);
                stops.push(
                  forward.stream(
                    request,
                    member,
                    `/1.0/events?${query}`,
                    (text) => {
                      if (socket.readyState !== socket.OPEN) return;
                      retryMs.delete(member);
                      try {
                        const event = JSON.parse(text) as TrivisorEvent;
                        socket.send(JSON.stringify({ ...event, location: event.location ?? member }));
                      } catch {
                        // Not an event: nothing to pass on.
                      }
                    },
                    () => {
                      streaming.delete(member);
                      if (stops.length > 0) lookAgain(member);
                    },
                  ),
                );
              }
            })
            .catch(() => {});
        look();
        const timer = setInterval(look, MEMBER_LOOK_MS);
        timer.unref();
        stops.push(() => clearInterval(timer));
      }
      // Incoming messages carry nothing; reading them keeps the socket's buffers empty.
      socket.on('message', () => {});
    },
  );
}

/** How often an event subscription looks for members it does not stream yet (joined, restarted). */
const MEMBER_LOOK_MS = 5000;
/** The first wait before a member whose event stream ended is looked for again. */
const MEMBER_RETRY_MS = 500;

function eventTypesOf(query: { type?: string }): TrivisorEvent['type'][] {
  if (!query.type) return DEFAULT_EVENT_TYPES;
  const types = query.type
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t.length > 0);
  for (const t of types) {
    if (!EVENT_TYPES.includes(t as TrivisorEvent['type'])) {
      throw invalidArgument(`Unknown event type ${JSON.stringify(t)}: use ${EVENT_TYPES.join(', ')}`);
    }
  }
  return types as TrivisorEvent['type'][];
}
