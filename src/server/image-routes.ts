import { randomBytes } from 'node:crypto';
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
        summary: 'Build an image from a source, or import an uploaded root file system tarball',
        description:
          'JSON {source, alias?} builds (e.g. debian/bookworm). A raw body (application/octet-stream) with header X-Trivisor-Alias imports a tarball (up to 8 GiB).',
        headers: Type.Object({ 'x-trivisor-alias': Type.Optional(Type.String()) }),
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
      const path = join(ctx.uploadDir ?? tmpdir(), `trivisor-upload-${randomBytes(8).toString('hex')}.tar`);
      let received = 0;
      const limit = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          received += chunk.length;
          if (received > UPLOAD_LIMIT_BYTES) {
            cb(Object.assign(new Error('The upload is larger than 8 GiB'), { statusCode: 413 }));
          } else cb(null, chunk);
        },
      });
      try {
        await pipeline(stream, limit, createWriteStream(path, { mode: 0o600 }));
        if (received === 0)
          throw invalidArgument('The upload is empty: send the tarball as the request body');
        return sendAsync(reply, await imagesOf(request).importTarball({ tarballPath: path, alias }));
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
