import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import { ErrorEnvelopeSchema, RecursionQuerySchema, SyncEnvelope } from '../api/schemas.ts';
import { failedPrecondition, invalidArgument, notSupported } from '../core/errors.ts';
import type { VolumeService } from '../services/volume-service.ts';
import { assertVolumeName } from '../storage/volumes.ts';
import { assertTarget } from './member-lists.ts';
import { onGuestOwner } from './owner-routes.ts';
import { allProjectsOf, projectOf, type RouteContext } from './route-context.ts';

/** Largest ISO image accepted by upload (a DVD image of an OS installer fits). */
export const ISO_UPLOAD_LIMIT_BYTES = 16 * 1024 ** 3;
const ISO_UPLOAD_TYPES = ['application/octet-stream', 'application/x-iso9660-image'];

type PoolParams = { pool: string };
type VolumeParams = { pool: string; volume: string };

const PoolParamsSchema = Type.Object({ pool: Type.String() });
const VolumeParamsSchema = Type.Object({ pool: Type.String(), volume: Type.String() });

export const VolumeSchema = Type.Object({
  name: Type.String(),
  project: Type.String(),
  pool: Type.String(),
  kind: Type.Literal('custom'),
  type: Type.Union([Type.Literal('filesystem'), Type.Literal('block'), Type.Literal('iso')], {
    description:
      'filesystem (ct guests mount it at a path), block (a disk for vm and pvm guests) or iso (an uploaded ISO image: a CD-ROM for vm guests)',
  }),
  sizeBytes: Type.Number({ description: 'Raw disk length, or the quota of a btrfs filesystem volume' }),
  description: Type.String(),
  createdAt: Type.String(),
  path: Type.String({ description: 'Where it is on the host' }),
  location: Type.Optional(Type.String({ description: 'The member whose disks hold it' })),
  usedBy: Type.Array(Type.String()),
  attachments: Type.Array(
    Type.Object({ guest: Type.String(), device: Type.String(), path: Type.Optional(Type.String()) }),
  ),
  usedBytes: Type.Union([Type.Number(), Type.Null()], { description: 'Space it takes on its pool' }),
});

const VolumeChangeSchema = Type.Object({
  volume: VolumeSchema,
  guest: Type.Optional(Type.String()),
  device: Type.Optional(Type.String()),
  applied: Type.Union([Type.Literal('live'), Type.Literal('next-start'), Type.Literal('none')], {
    description:
      'live: the running guest has the change now; next-start: when it starts next; none: it is not running',
  }),
  message: Type.String(),
});

/**
 * `/1.0/storage-pools/{pool}/volumes/custom…`: custom volumes (Incus's shapes),
 * and attach/detach as Incus `disk` devices of a guest (like networks' attach).
 */
export function registerVolumeRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  /** The volumes of the request's project: another project's volume is a 404. */
  const volumes = (request: FastifyRequest): VolumeService => {
    const v = ctx.services.volumes;
    if (!v) throw notSupported('This daemon has no storage volumes');
    return v.inProject(projectOf(request));
  };
  const base = '/1.0/storage-pools/:pool/volumes';

  for (const path of [base, `${base}/custom`]) {
    app.get<{ Params: PoolParams; Querystring: { recursion?: number } }>(
      path,
      {
        config: { access: 'read' },
        schema: {
          summary: 'List the custom volumes of a pool',
          params: PoolParamsSchema,
          querystring: RecursionQuerySchema,
          response: {
            200: SyncEnvelope(Type.Union([Type.Array(VolumeSchema), Type.Array(Type.String())])),
            ...errors,
          },
        },
      },
      async (request) => {
        const list = await volumes(request).list(request.params.pool, {
          allProjects: allProjectsOf(request),
        });
        return syncResponse(
          (request.query.recursion ?? 0) === 0
            ? list.map((v) => `/1.0/storage-pools/${v.pool}/volumes/custom/${v.name}`)
            : list,
        );
      },
    );
  }

  // An ISO upload is the raw request stream, spooled to a file (never buffered in memory).
  app.addContentTypeParser(
    ISO_UPLOAD_TYPES,
    { bodyLimit: ISO_UPLOAD_LIMIT_BYTES },
    (_request, payload, done) => {
      done(null, payload);
    },
  );

  type CreateBody = { name: string; type?: string; description?: string; config?: Record<string, string> };
  app.post<{ Params: PoolParams; Body: CreateBody | Readable; Querystring: { target?: string } }>(
    `${base}/custom`,
    {
      config: { access: 'operate' },
      bodyLimit: ISO_UPLOAD_LIMIT_BYTES,
      schema: {
        summary:
          'Create a custom volume (filesystem for ct guests, block for vm and pvm guests), or keep an uploaded ISO image as an iso volume',
        description:
          'JSON {name, type?, config?} creates. A raw body (application/octet-stream) with headers X-Trivisor-Name and X-Trivisor-Type: iso (Incus: X-Incus-name, X-Incus-type) uploads an ISO image (up to 16 GiB), checked for an ISO 9660 or UDF volume descriptor.',
        params: PoolParamsSchema,
        querystring: Type.Object({
          target: Type.Optional(
            Type.String({
              description:
                "On a cluster, for a pool on every member or the default pool: the member to make the volume on, the request passed on to it (default: the one asked); another pool's volumes are made on its member",
              minLength: 1,
            }),
          ),
        }),
        headers: Type.Object({
          'x-trivisor-name': Type.Optional(Type.String()),
          'x-trivisor-type': Type.Optional(Type.String()),
        }),
        body: {
          content: {
            'application/json': {
              schema: Type.Object(
                {
                  name: Type.String(),
                  type: Type.Optional(Type.String({ description: 'filesystem (default) or block' })),
                  description: Type.Optional(Type.String()),
                  config: Type.Optional(
                    Type.Record(Type.String(), Type.String(), { description: 'size (default 10GiB)' }),
                  ),
                },
                { additionalProperties: false },
              ),
            },
            // No type: the parsed body is the request stream itself, which a type would reject.
            'application/octet-stream': { schema: Type.Unsafe({ description: 'The ISO image bytes' }) },
          },
        },
        response: { 200: SyncEnvelope(VolumeSchema), ...errors },
      },
    },
    async (request) => {
      // A volume of a pool on every member (decision 0038) or of the default pool was passed on to
      // the member target= names before its body was read; one of a pool of one member, to that
      // member, which is then not the one asked for.
      const target = request.query.target;
      try {
        await assertTarget(ctx, target);
        if (target !== undefined && ctx.forward && target !== ctx.forward.here) {
          throw failedPrecondition(
            `Storage pool ${request.params.pool} is on member ${ctx.forward.here}: its volumes are made there; leave out the target`,
          );
        }
      } catch (e) {
        (request.body as Readable | undefined)?.resume?.();
        throw e;
      }
      const contentType = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
      if (!ISO_UPLOAD_TYPES.includes(contentType)) {
        const body = request.body as CreateBody | undefined;
        if (typeof body !== 'object' || body === null || typeof body.name !== 'string') {
          throw invalidArgument(
            'Send {"name": "vol1", "type": "block"} as JSON to create a volume, or an ISO as application/octet-stream with X-Trivisor-Name and X-Trivisor-Type: iso to upload one',
          );
        }
        return syncResponse(await volumes(request).create(request.params.pool, body));
      }
      const stream = request.body as Readable;
      const header = (name: string) => {
        const v = request.headers[`x-trivisor-${name}`] ?? request.headers[`x-incus-${name}`];
        return typeof v === 'string' ? v : undefined;
      };
      const name = header('name');
      const type = header('type');
      if (name === undefined || name === '' || type !== 'iso') {
        stream.resume();
        throw invalidArgument(
          'A volume upload needs X-Trivisor-Name (the new volume) and X-Trivisor-Type: iso (only ISO images are uploaded)',
        );
      }
      try {
        assertVolumeName(name);
      } catch (e) {
        stream.resume();
        throw e;
      }
      const path = join(ctx.uploadDir ?? tmpdir(), `trivisor-upload-${randomBytes(8).toString('hex')}.iso`);
      let received = 0;
      const limit = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          received += chunk.length;
          if (received > ISO_UPLOAD_LIMIT_BYTES) {
            cb(Object.assign(new Error('The upload is larger than 16 GiB'), { statusCode: 413 }));
          } else cb(null, chunk);
        },
      });
      try {
        await pipeline(stream, limit, createWriteStream(path, { mode: 0o600 }));
        if (received === 0)
          throw invalidArgument('The upload is empty: send the ISO image as the request body');
      } catch (e) {
        await rm(path, { force: true });
        throw e;
      }
      // The service takes the file over (moved into the pool, or removed).
      return syncResponse(await volumes(request).importIso(request.params.pool, { name, file: path }));
    },
  );

  app.get<{ Params: VolumeParams }>(
    `${base}/custom/:volume`,
    {
      config: { access: 'read' },
      schema: {
        summary: 'Show a custom volume, who uses it and its space',
        params: VolumeParamsSchema,
        response: { 200: SyncEnvelope(VolumeSchema), ...errors },
      },
    },
    async (request) => syncResponse(await volumes(request).get(request.params.pool, request.params.volume)),
  );

  app.patch<{ Params: VolumeParams; Body: { config: Record<string, string> } }>(
    `${base}/custom/:volume`,
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Grow a custom volume (config.size; shrinking is refused)',
        description:
          'A running vm guest sees the new size at once; a pvm guest too unless it holds the disk open (then at its next start).',
        params: VolumeParamsSchema,
        body: Type.Object(
          { config: Type.Record(Type.String(), Type.String()) },
          { additionalProperties: false },
        ),
        response: { 200: SyncEnvelope(VolumeChangeSchema), ...errors },
      },
    },
    async (request) =>
      syncResponse(await volumes(request).update(request.params.pool, request.params.volume, request.body)),
  );

  app.delete<{ Params: VolumeParams }>(
    `${base}/custom/:volume`,
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Delete a custom volume (refused while it is attached)',
        params: VolumeParamsSchema,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await volumes(request).delete(request.params.pool, request.params.volume);
      return syncResponse({});
    },
  );

  app.post<{ Params: VolumeParams; Body: { guest: string; device?: string; path?: string } }>(
    `${base}/custom/:volume/attach`,
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Attach a custom volume to a guest (a disk device; live where the guest runs)',
        description:
          'Recorded in the guest as devices-style `disks.DEVICE: {type: disk, pool, source, path}` and applied at every start. ct: a bind mount at path; vm: virtio-blk; pvm: ubd.',
        params: VolumeParamsSchema,
        body: Type.Object(
          {
            guest: Type.String(),
            device: Type.Optional(Type.String({ description: 'Device name (default: the volume name)' })),
            path: Type.Optional(Type.String({ description: 'Mount path in a ct guest' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: SyncEnvelope(VolumeChangeSchema), ...errors },
      },
    },
    // The live plug needs the guest's host: on its owner (decision 0028).
    async (request) =>
      syncResponse(
        await onGuestOwner(ctx, request, request.body.guest, () =>
          volumes(request).attach(request.params.pool, request.params.volume, request.body),
        ),
      ),
  );

  app.post<{ Params: VolumeParams; Body: { guest: string; device?: string } }>(
    `${base}/custom/:volume/detach`,
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Detach a custom volume from a guest (live where the guest runs)',
        params: VolumeParamsSchema,
        body: Type.Object(
          { guest: Type.String(), device: Type.Optional(Type.String()) },
          { additionalProperties: false },
        ),
        response: { 200: SyncEnvelope(VolumeChangeSchema), ...errors },
      },
    },
    async (request) =>
      syncResponse(
        await onGuestOwner(ctx, request, request.body.guest, () =>
          volumes(request).detach(request.params.pool, request.params.volume, request.body),
        ),
      ),
  );
}
