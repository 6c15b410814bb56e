import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { operationUrl, syncResponse } from '../api/envelopes.ts';
import {
  ErrorEnvelopeSchema,
  IdParamsSchema,
  OperationSchema,
  RecursionQuerySchema,
  SyncEnvelope,
} from '../api/schemas.ts';
import { TrivisorError } from '../core/errors.ts';
import type { Operation } from '../core/types.ts';
import { isForwarded } from './forward.ts';
import { allProjectsOf, assertInProject, projectOf, type RouteContext } from './route-context.ts';

type IdParams = { id: string };

/** `/1.0/operations...`: list, show, wait, cancel, and the websocket of an exec or console. */
export function registerOperationRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { services } = ctx;
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const opReply = { 200: SyncEnvelope(OperationSchema), ...errors };
  /** The operation if it belongs to the request's project; another project's is NotFound, as a missing one. */
  const opOf = (request: FastifyRequest, id: string): Operation => {
    const op = services.operations.get(id);
    assertInProject(request, op, `Operation ${id} not found`);
    return op;
  };

  app.get<{ Querystring: { recursion?: number } }>(
    '/1.0/operations',
    {
      config: { access: 'read' },
      schema: {
        summary: 'List operations (running and recently finished)',
        description: 'recursion=0: URLs; 1 or 2: operations.',
        querystring: RecursionQuerySchema,
        response: {
          200: SyncEnvelope(Type.Union([Type.Array(OperationSchema), Type.Array(Type.String())])),
          ...errors,
        },
      },
    },
    async (request) => {
      const all = allProjectsOf(request);
      const project = projectOf(request);
      const ops = services.operations.list().filter((o) => all || o.project === project);
      // On a cluster the list is the cluster's: every other member's operations too (decision 0034).
      const forward = ctx.forward;
      if (forward && !isForwarded(request)) {
        const query = new URLSearchParams(request.query as Record<string, string>);
        query.set('recursion', '1');
        const theirs = await Promise.all(
          (await forward.others()).map((member) =>
            forward.get<Operation[]>(request, member, `/1.0/operations?${query}`).catch(() => []),
          ),
        );
        ops.push(...theirs.flat());
      }
      return syncResponse((request.query.recursion ?? 0) === 0 ? ops.map((o) => operationUrl(o.id)) : ops);
    },
  );

  app.get<{ Params: IdParams }>(
    '/1.0/operations/:id',
    {
      config: { access: 'read' },
      schema: { summary: 'Show an operation', params: IdParamsSchema, response: opReply },
    },
    async (request) => syncResponse(opOf(request, request.params.id)),
  );

  app.get<{ Params: IdParams; Querystring: { timeout?: number } }>(
    '/1.0/operations/:id/wait',
    {
      config: { access: 'read' },
      schema: {
        summary: 'Wait for an operation to end',
        description:
          'Answers when the operation ends or after `timeout` seconds (-1, the default: no limit).',
        params: IdParamsSchema,
        querystring: Type.Object({ timeout: Type.Optional(Type.Number({ minimum: -1 })) }),
        response: opReply,
      },
    },
    async (request) => {
      const timeout = request.query.timeout ?? -1;
      opOf(request, request.params.id);
      const op = await services.operations.wait(request.params.id, timeout < 0 ? undefined : timeout * 1000);
      return syncResponse(op);
    },
  );

  app.delete<{ Params: IdParams }>(
    '/1.0/operations/:id',
    {
      config: { access: 'operate' },
      schema: { summary: 'Cancel an operation', params: IdParamsSchema, response: opReply },
    },
    async (request) => {
      opOf(request, request.params.id);
      return syncResponse(services.operations.cancel(request.params.id));
    },
  );

  app.get<{ Params: IdParams; Querystring: { secret?: string } }>(
    '/1.0/operations/:id/websocket',
    {
      config: { access: 'operate' },
      websocket: true,
      schema: {
        summary: 'Streams of an exec or console operation (WebSocket; protocol in docs/api.md)',
        params: IdParamsSchema,
        querystring: Type.Object({ secret: Type.String() }),
        response: errors,
      },
      preValidation: async (request) => {
        const { id } = request.params as IdParams;
        const { secret } = request.query as { secret?: string };
        opOf(request, id);
        if (typeof secret !== 'string' || !ctx.execs.accepts(id, secret)) {
          throw new TrivisorError(
            'FailedPrecondition',
            `Operation ${id} has no websocket waiting for this secret (wrong secret, or already connected)`,
          );
        }
      },
    },
    (socket, request) => {
      if (!ctx.execs.attach(request.params.id, request.query.secret ?? '', socket)) {
        socket.close(1008, 'no longer waiting');
      }
    },
  );
}
