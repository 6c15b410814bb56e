import type { Readable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import { ErrorEnvelopeSchema, NameParamsSchema, SyncEnvelope } from '../api/schemas.ts';
import { invalidArgument } from '../core/errors.ts';
import { formatMode, GUEST_FILE_MAX_BYTES, parseMode } from '../core/guest-files.ts';
import type { PushFileRequest } from '../services/types.ts';
import { projectOf, type RouteContext } from './route-context.ts';

type NameParams = { name: string };
type PathQuery = { path: string };

const PathQuerySchema = Type.Object({
  path: Type.String({ description: 'Absolute path of the file in the guest, e.g. /etc/motd' }),
});

/** The attribute headers of a file (Incus's X-Incus-Mode/Uid/Gid, named for Trivisor). */
const FileHeadersSchema = Type.Object({
  'x-trivisor-mode': Type.Optional(Type.String({ description: 'Octal permissions; default 0644' })),
  'x-trivisor-uid': Type.Optional(Type.String({ description: 'Owner in the guest; default 0' })),
  'x-trivisor-gid': Type.Optional(Type.String({ description: 'Group in the guest; default 0' })),
  'x-trivisor-create-dirs': Type.Optional(
    Type.String({ description: 'true: make missing parent directories (0755, root)' }),
  ),
});

function idHeader(value: string | undefined, name: string): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d+$/.test(value))
    throw invalidArgument(`X-Trivisor-${name} ${JSON.stringify(value)} is not a number`);
  return Number(value);
}

/** Reads a raw body whole, refusing more than `maxBytes` (one clear error instead of Fastify's 413). */
async function collect(body: Readable | undefined, maxBytes: number): Promise<Buffer> {
  if (body === undefined || body === null) return Buffer.alloc(0);
  if (typeof (body as { pipe?: unknown }).pipe !== 'function') {
    throw invalidArgument('Send the file as the raw body (Content-Type: application/octet-stream)');
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += (chunk as Buffer).length;
    if (total > maxBytes) {
      body.destroy();
      throw invalidArgument(
        `The file is larger than the ${maxBytes / 2 ** 20} MiB a push may have: copy it in parts or another way`,
      );
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * `/1.0/guests/{name}/files?path=…` (Incus's file API): GET returns a file's
 * bytes with its mode and owner in headers, POST writes one from the raw body.
 * In a plugin scope of its own because the body is raw bytes.
 */
export function registerFileRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { services } = ctx;
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };

  app.addContentTypeParser('application/octet-stream', (_request, payload, done) => done(null, payload));

  app.get<{ Params: NameParams; Querystring: PathQuery }>(
    '/1.0/guests/:name/files',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Read a file of a running guest',
        description:
          'The body is the file; X-Trivisor-Type (file), X-Trivisor-Mode (octal), X-Trivisor-Uid and X-Trivisor-Gid describe it.',
        params: NameParamsSchema,
        querystring: PathQuerySchema,
        produces: ['application/octet-stream'],
        response: { 200: Type.Unsafe({ type: 'string', format: 'binary' }), ...errors },
      },
    },
    async (request, reply) => {
      const file = await services.guests
        .inProject(projectOf(request))
        .pullFile(request.params.name, request.query.path);
      reply
        .type('application/octet-stream')
        .header('x-trivisor-type', 'file')
        .header('x-trivisor-mode', formatMode(file.mode))
        .header('x-trivisor-uid', String(file.uid))
        .header('x-trivisor-gid', String(file.gid));
      return reply.send(file.data);
    },
  );

  app.post<{ Params: NameParams; Querystring: PathQuery; Body: Readable | undefined }>(
    '/1.0/guests/:name/files',
    {
      config: { access: 'operate' },
      bodyLimit: GUEST_FILE_MAX_BYTES + 1,
      schema: {
        summary: 'Write a file into a running guest',
        description:
          'The raw body (application/octet-stream, up to 64 MiB) replaces the file whole; X-Trivisor-Mode, -Uid, -Gid and -Create-Dirs say what it gets.',
        params: NameParamsSchema,
        querystring: PathQuerySchema,
        headers: FileHeadersSchema,
        body: {
          content: {
            // No type: the parsed body is the request stream itself, which a type would reject.
            'application/octet-stream': { schema: Type.Unsafe({ description: 'The file bytes' }) },
          },
        },
        response: { 200: SyncEnvelope(Type.Object({ size: Type.Integer() })), ...errors },
      },
    },
    async (request) => {
      const h = request.headers;
      const push: PushFileRequest = {
        path: request.query.path,
        data: Buffer.alloc(0),
      };
      try {
        const mode = h['x-trivisor-mode'];
        if (typeof mode === 'string' && mode !== '') push.mode = parseMode(mode);
        const uid = idHeader(h['x-trivisor-uid'] as string | undefined, 'Uid');
        const gid = idHeader(h['x-trivisor-gid'] as string | undefined, 'Gid');
        if (uid !== undefined) push.uid = uid;
        if (gid !== undefined) push.gid = gid;
        if (h['x-trivisor-create-dirs'] === 'true') push.createDirs = true;
      } catch (e) {
        // A JSON body (wrong Content-Type) is parsed already: only a stream needs draining.
        const body = request.body as { resume?: unknown } | undefined | null;
        if (typeof body?.resume === 'function') (body as Readable).resume();
        throw e;
      }
      push.data = await collect(request.body, GUEST_FILE_MAX_BYTES);
      return syncResponse(
        await services.guests.inProject(projectOf(request)).pushFile(request.params.name, push),
      );
    },
  );
}
