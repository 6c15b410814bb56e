import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import Fastify, { type FastifyInstance, type InjectOptions } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { buildServer } from './build-server.ts';
import { lazySchemaCompilers } from './lazy-schema-compilers.ts';

/** One route that leans on what Ajv and fast-json-stringify do: defaults, coercion (also of a root value), errors. */
async function appWith(compilers: 'fastify' | 'lazy'): Promise<FastifyInstance> {
  const app = Fastify({
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false },
    },
    ...(compilers === 'lazy'
      ? { schemaController: { compilersFactory: lazySchemaCompilers().compilersFactory } }
      : {}),
  });
  app.post(
    '/things/:id',
    {
      schema: {
        params: { type: 'object', properties: { id: { type: 'integer' } }, required: ['id'] },
        querystring: { type: 'object', properties: { tags: { type: 'array', items: { type: 'string' } } } },
        body: {
          type: 'object',
          properties: { name: { type: 'string', minLength: 2 }, size: { type: 'integer', default: 1 } },
          required: ['name'],
        },
        response: {
          200: {
            type: 'object',
            properties: {
              id: { type: 'integer' },
              name: { type: 'string' },
              size: { type: 'integer' },
              tags: {},
            },
          },
        },
      },
    },
    async (request) => ({
      ...(request.body as object),
      ...(request.params as object),
      ...(request.query as object),
      secret: 'not in the response schema',
    }),
  );
  app.put('/count', { schema: { body: { type: 'integer' } } }, async (request) => ({ count: request.body }));
  await app.ready();
  return app;
}

describe('lazySchemaCompilers', () => {
  test("answers as Fastify's own compilers do: defaults, coercion, serialization, validation errors", async () => {
    const requests: InjectOptions[] = [
      { method: 'POST', url: '/things/7?tags=a', payload: { name: 'box' } },
      { method: 'POST', url: '/things/7', payload: { name: 'box', size: '3' } },
      { method: 'POST', url: '/things/x', payload: { name: 'box' } },
      { method: 'POST', url: '/things/7', payload: { name: 'b' } },
      { method: 'POST', url: '/things/7', payload: {} },
      { method: 'PUT', url: '/count', payload: '42', headers: { 'content-type': 'application/json' } },
      { method: 'PUT', url: '/count', payload: '"many"', headers: { 'content-type': 'application/json' } },
    ];
    const eager = await appWith('fastify');
    const lazy = await appWith('lazy');
    try {
      for (const request of requests) {
        // Twice: the first call compiles, the second uses what it compiled.
        for (let i = 0; i < 2; i++) {
          const [a, b] = [await eager.inject(request), await lazy.inject(request)];
          assert.equal(b.statusCode, a.statusCode, `${request.method} ${request.url}`);
          assert.deepEqual(b.json(), a.json(), `${request.method} ${request.url}`);
        }
      }
    } finally {
      await eager.close();
      await lazy.close();
    }
  });

  test("every route's schemas compile (a bad schema fails at ready, not on its route's first request)", async () => {
    const app = await buildServer(createFakeServices(), {
      auth: { type: 'none' },
      compileSchemasAtReady: true,
    });
    try {
      await app.ready();
    } finally {
      await app.close();
    }
  });

  test('compileAll throws what a bad schema throws', async () => {
    const compilers = lazySchemaCompilers();
    const app = Fastify({ schemaController: { compilersFactory: compilers.compilersFactory } });
    app.get('/bad', { schema: { querystring: { type: 'no-such-type' } } }, async () => 'x');
    await app.ready();
    try {
      assert.throws(() => compilers.compileAll(), /no-such-type|type must be|schema is invalid/);
    } finally {
      await app.close();
    }
  });
});
