import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import { AsyncEnvelopeSchema, ErrorEnvelopeSchema, NameParamsSchema, SyncEnvelope } from '../api/schemas.ts';
import { invalidArgument, notFound } from '../core/errors.ts';
import { projectOf, type RouteContext, sendAsync } from './route-context.ts';
import { BACKUP_UPLOAD_LIMIT_BYTES } from './storage-routes.ts';

const MoveBodySchema = Type.Object(
  {
    migration: Type.Literal(true, { description: 'Move the guest to the member `target` names (Incus)' }),
    live: Type.Optional(
      Type.Boolean({
        description:
          'Keep it running through the move (vm: live migration, its disk mirrored; NotSupported, with the reason, where the model cannot)',
      }),
    ),
  },
  { additionalProperties: false },
);

/**
 * `POST /1.0/guests/{name}?target=MEMBER` with `{"migration": true}` moves a guest (Incus's
 * instance migration within a cluster); it is passed on to the guest's member like every
 * guest request (decision 0034), which runs the move. The two member routes are the
 * destination's side of it: only members call them (host-admin, their certificates).
 */
export function registerMoveRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const moves = () => ctx.services.moves;
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  // The archive comes as the raw body (this scope only: the other routes take JSON).
  app.addContentTypeParser(
    'application/octet-stream',
    { bodyLimit: BACKUP_UPLOAD_LIMIT_BYTES },
    (_request, payload, done) => done(null, payload),
  );

  app.post<{
    Params: { name: string };
    Querystring: { target?: string };
    Body: { migration: true; live?: boolean };
  }>(
    '/1.0/guests/:name',
    {
      config: { access: 'admin' },
      schema: {
        summary: 'Move a guest to another member of the cluster (cold; `live` where the model allows)',
        params: NameParamsSchema,
        querystring: Type.Object({
          target: Type.String({ minLength: 1, description: 'The member to move the guest to' }),
        }),
        body: MoveBodySchema,
        response: { 202: AsyncEnvelopeSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      const target = request.query.target;
      if (target === undefined) throw invalidArgument('Give the member to move to: ?target=MEMBER');
      // Another project's guest is NotFound, as one that does not exist.
      await ctx.services.guests.inProject(projectOf(request)).get(name);
      const m = moves();
      if (!m) {
        const host = (await ctx.services.cluster?.info())?.host;
        throw notFound(
          `Member ${target} not found: this host${host ? ` (${host})` : ''} is not in a cluster`,
        );
      }
      return sendAsync(
        reply,
        await m.mover.move(name, {
          target,
          ...(request.body.live !== undefined && { live: request.body.live }),
        }),
      );
    },
  );

  app.post<{ Params: { name: string }; Body: Readable }>(
    '/1.0/cluster/guest-moves/:name',
    {
      config: { access: 'host-admin' },
      bodyLimit: BACKUP_UPLOAD_LIMIT_BYTES,
      schema: {
        summary: "A moved guest's archive, for the member it moves to: applied before the answer",
        params: NameParamsSchema,
        body: {
          content: {
            'application/octet-stream': { schema: Type.Unsafe({ description: 'The backup archive bytes' }) },
          },
        },
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request, reply) => {
      const stream = request.body;
      const m = moves();
      if (!m || typeof (stream as { pipe?: unknown })?.pipe !== 'function') {
        (stream as Readable | undefined)?.resume?.();
        throw invalidArgument(
          m
            ? 'Send the archive as the raw body (Content-Type: application/octet-stream)'
            : 'This host is not in a cluster',
        );
      }
      const path = join(ctx.uploadDir ?? tmpdir(), `trivisor-move-${randomBytes(8).toString('hex')}.tar`);
      try {
        await pipeline(stream, createWriteStream(path, { mode: 0o600 }));
      } catch (e) {
        await rm(path, { force: true });
        throw e;
      }
      // The receiver removes the archive, whatever the outcome. The sender gone before the answer
      // (its move given up: it undoes it) stops the apply.
      const aborted = new AbortController();
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) aborted.abort();
      });
      await m.receiver.receive(request.params.name, path, aborted.signal);
      return syncResponse({});
    },
  );

  const LivePreparedSchema = Type.Object({
    process: Type.Object({
      pid: Type.Integer({ description: "The destination QEMU's pid" }),
      startTime: Type.Integer({ description: 'Its start time (field 22 of /proc/PID/stat)' }),
    }),
    endpoints: Type.Object({
      host: Type.String({ description: "The destination's cluster address" }),
      nbdPort: Type.Integer({ description: "Port of the NBD export of the guest's disk" }),
      migrationPort: Type.Integer({ description: "Port of QEMU's incoming migration" }),
    }),
    tls: Type.Object(
      {
        caCert: Type.String({ description: 'The CA made for this migration alone (PEM)' }),
        cert: Type.String({ description: "The source's client certificate, signed by it (PEM)" }),
        key: Type.String({ description: "The client certificate's key (PEM)" }),
      },
      { description: "The source's credentials for this migration's TLS (both streams)" },
    ),
  });

  app.post<{ Params: { name: string } }>(
    '/1.0/cluster/live-moves/:name',
    {
      config: { access: 'host-admin' },
      schema: {
        summary:
          'For the member a guest moves to live: make its disk and start its QEMU waiting for the migration; answers where it listens',
        params: NameParamsSchema,
        body: Type.Object({}, { additionalProperties: false }),
        response: { 200: SyncEnvelope(LivePreparedSchema), ...errors },
      },
    },
    async (request) => {
      const m = moves();
      if (!m) throw invalidArgument('This host is not in a cluster');
      return syncResponse(await m.receiver.prepareLive(request.params.name));
    },
  );

  app.post<{ Params: { name: string } }>(
    '/1.0/cluster/live-moves/:name/finish',
    {
      config: { access: 'host-admin' },
      schema: {
        summary:
          'For the member a guest moved to live: the migration is in and the records name it; run the guest',
        params: NameParamsSchema,
        body: Type.Object({}, { additionalProperties: false }),
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      const m = moves();
      if (!m) throw invalidArgument('This host is not in a cluster');
      await m.receiver.finishLive(request.params.name);
      return syncResponse({});
    },
  );

  app.delete<{ Params: { name: string } }>(
    '/1.0/cluster/guest-moves/:name',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: "Remove this member's copy of a guest whose move to it was undone",
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      const m = moves();
      if (!m) throw invalidArgument('This host is not in a cluster');
      await m.receiver.discard(request.params.name);
      return syncResponse({});
    },
  );
}
