import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { imageUrl, syncResponse } from '../api/envelopes.ts';
import {
  AsyncEnvelopeSchema,
  type BuildImageBody,
  BuildImageBodySchema,
  ErrorEnvelopeSchema,
  ImageSchema,
  RecursionQuerySchema,
  SyncEnvelope,
} from '../api/schemas.ts';
import { invalidArgument } from '../core/errors.ts';
import { assertImageAlias } from '../core/names.ts';
import { allProjectsOf, projectOf, type RouteContext, sendAsync } from './route-context.ts';

/** Largest image tarball accepted by upload. */
export const UPLOAD_LIMIT_BYTES = 8 * 1024 ** 3;
const UPLOAD_TYPES = [
  'application/octet-stream',
  'application/x-tar',
  'application/gzip',
  'application/x-xz',
];

type RefParams = { '*': string };

/**
 * `/1.0/images...`. Registered in its own plugin scope because raw uploads need
 * a streaming body parser that must not apply to the other routes.
 */
export function registerImageRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { services } = ctx;
  /** The images of the request's project: another project's image is a 404. */
  const imagesOf = (request: FastifyRequest) => services.images.inProject(projectOf(request));
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };

  // Hand the raw request stream to the handler: it is spooled to disk, never buffered in memory.
  app.addContentTypeParser(UPLOAD_TYPES, { bodyLimit: UPLOAD_LIMIT_BYTES }, (_request, payload, done) => {
    done(null, payload);
  });

  app.get<{ Querystring: { recursion?: number } }>(
    '/1.0/images',
    {
      config: { access: 'read' },
      schema: {
        summary: 'List images',
        description: 'recursion=0: URLs; 1 or 2: images.',
        querystring: RecursionQuerySchema,
        response: {
          200: SyncEnvelope(Type.Union([Type.Array(ImageSchema), Type.Array(Type.String())])),
          ...errors,
        },
      },
    },
    async (request) => {
      const images = await imagesOf(request).list({ allProjects: allProjectsOf(request) });
      return syncResponse(
        (request.query.recursion ?? 0) === 0 ? images.map((i) => imageUrl(i.fingerprint)) : images,
      );
    },
  );

  app.post<{ Body: BuildImageBody | Readable }>(
    '/1.0/images',
    {
      config: { access: 'operate' },
      bodyLimit: UPLOAD_LIMIT_BYTES,
      schema: {
        summary:
          'Build an image from a source, or import an uploaded root file system tarball or whole-disk image',
        description:
          'JSON {source, alias?} builds (e.g. debian/bookworm). A raw body (application/octet-stream) with header X-Trivisor-Alias imports a root file system tarball or a whole-disk image (qcow2 or raw: a vm disk image), told apart by content, up to 8 GiB.',
        headers: Type.Object({
          'x-trivisor-alias': Type.Optional(Type.String()),
          'x-trivisor-checksum': Type.Optional(
            Type.String({
              description: 'sha256:HEX or sha512:HEX the upload must have (else 400, nothing imported)',
            }),
          ),
        }),
        body: {
          content: {
            'application/json': { schema: BuildImageBodySchema },
            // No type: the parsed body is the request stream itself, which a type would reject.
            'application/octet-stream': { schema: Type.Unsafe({ description: 'The tarball bytes' }) },
          },
        },
        response: { 202: AsyncEnvelopeSchema, ...errors },
      },
    },
    async (request, reply) => {
      const contentType = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
      if (!UPLOAD_TYPES.includes(contentType)) {
        // Without a Content-Type no body schema applies (they are per content type): check here.
        const body = request.body as BuildImageBody | undefined;
        if (typeof body !== 'object' || body === null || typeof body.source !== 'string') {
          throw invalidArgument(
            'Send {"source": "debian/bookworm"} as JSON (Content-Type: application/json) to build an image, or a tarball as application/octet-stream to import one',
          );
        }
        const build: { source: string; alias?: string } = { source: body.source };
        if (body.alias !== undefined) build.alias = body.alias;
        return sendAsync(reply, await imagesOf(request).build(build));
      }
      const stream = request.body as Readable;
      const alias = request.headers['x-trivisor-alias'];
      if (typeof alias !== 'string' || alias === '') {
        stream.resume();
        throw invalidArgument('An image upload needs its alias in the X-Trivisor-Alias header');
      }
      try {
        assertImageAlias(alias);
      } catch (e) {
        stream.resume();
        throw e;
      }
      let expected: { algorithm: 'sha256' | 'sha512'; hex: string } | undefined;
      try {
        expected = checksumOf(request.headers['x-trivisor-checksum']);
      } catch (e) {
        stream.resume();
        throw e;
      }
      const path = join(ctx.uploadDir ?? tmpdir(), `trivisor-upload-${randomBytes(8).toString('hex')}.tar`);
      let received = 0;
      // Hashed as it arrives: the sha256 is a disk image's fingerprint, and the checksum the
      // client asked for is checked before anything is imported.
      const sha256 = createHash('sha256');
      const other = expected?.algorithm === 'sha512' ? createHash('sha512') : undefined;
      const limit = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          received += chunk.length;
          if (received > UPLOAD_LIMIT_BYTES) {
            cb(Object.assign(new Error('The upload is larger than 8 GiB'), { statusCode: 413 }));
          } else {
            sha256.update(chunk);
            other?.update(chunk);
            cb(null, chunk);
          }
        },
      });
      try {
        await pipeline(stream, limit, createWriteStream(path, { mode: 0o600 }));
        if (received === 0)
          throw invalidArgument('The upload is empty: send the tarball as the request body');
        const digest = sha256.digest('hex');
        if (expected) {
          const got = expected.algorithm === 'sha256' ? digest : (other?.digest('hex') ?? '');
          if (got !== expected.hex) {
            throw invalidArgument(
              `The upload's ${expected.algorithm} is ${got}, not the ${expected.hex} it was sent with: the file is damaged or not the one meant; nothing was imported`,
            );
          }
        }
        return sendAsync(
          reply,
          await imagesOf(request).importTarball({ tarballPath: path, alias, sha256: digest }),
        );
      } catch (e) {
        await rm(path, { force: true });
        throw e;
      }
    },
  );

  app.get<{ Params: RefParams }>(
    '/1.0/images/*',
    {
      config: { access: 'read' },
      schema: {
        summary: 'Show an image by alias (may contain slashes) or fingerprint prefix',
        params: Type.Object({ '*': Type.String() }),
        response: { 200: SyncEnvelope(ImageSchema), ...errors },
      },
    },
    async (request) => syncResponse(await imagesOf(request).get(refOf(request.params))),
  );

  app.delete<{ Params: RefParams }>(
    '/1.0/images/*',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Delete an image (refused while a guest uses it)',
        params: Type.Object({ '*': Type.String() }),
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await imagesOf(request).delete(refOf(request.params));
      return syncResponse({});
    },
  );
}

/** The `X-Trivisor-Checksum` header (`sha256:HEX` or `sha512:HEX`), or undefined when absent. */
function checksumOf(
  header: string | string[] | undefined,
): { algorithm: 'sha256' | 'sha512'; hex: string } | undefined {
  if (header === undefined) return undefined;
  const m = typeof header === 'string' ? /^(sha256|sha512):([0-9a-fA-F]+)$/.exec(header.trim()) : null;
  const hexLength = { sha256: 64, sha512: 128 };
  if (!m || m[2]?.length !== hexLength[m[1] as 'sha256' | 'sha512']) {
    throw invalidArgument('X-Trivisor-Checksum must be sha256:<64 hex digits> or sha512:<128 hex digits>');
  }
  return { algorithm: m[1] as 'sha256' | 'sha512', hex: (m[2] ?? '').toLowerCase() };
}

function refOf(params: RefParams): string {
  let ref = params['*'];
  try {
    ref = decodeURIComponent(ref);
  } catch {
    throw invalidArgument(`The image reference ${JSON.stringify(ref)} is not validly URL-encoded`);
  }
  if (ref === '') throw invalidArgument('Give an image alias or fingerprint');
  return ref;
}
