import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { buildServer } from './build-server.ts';

describe('file routes (inject)', () => {
  let app: FastifyInstance;
  before(async () => {
    app = await buildServer(createFakeServices(), { auth: { type: 'none' } });
  });
  after(async () => {
    await app.close();
  });

  test('a JSON body with bad attribute headers is a 400, not a TypeError on resume()', async () => {
    for (const payload of ['{}', 'false', '1', '"x"']) {
      const r = await app.inject({
        method: 'POST',
        url: '/1.0/guests/web1/files?path=/etc/motd',
        payload,
        headers: { 'content-type': 'application/json', 'x-trivisor-mode': 'Bad Alias' },
      });
      assert.equal(r.statusCode, 400, `${payload}: ${r.body}`);
      assert.match(r.json().error, /mode/i);
      const plain = await app.inject({
        method: 'POST',
        url: '/1.0/guests/web1/files?path=/etc/motd',
        payload,
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(plain.statusCode, 400, `${payload}: ${plain.body}`);
      assert.match(plain.json().error, /raw body/);
    }
  });

  test('POST then GET /1.0/guests/{name}/files round-trips bytes, mode and owner', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const put = await app.inject({
      method: 'POST',
      url: `/1.0/guests/web1/files?path=${encodeURIComponent('/etc/bin')}`,
      payload: bytes,
      headers: {
        'content-type': 'application/octet-stream',
        'x-trivisor-mode': '0600',
        'x-trivisor-uid': '1000',
        'x-trivisor-gid': '100',
      },
    });
    assert.equal(put.statusCode, 200, put.body);
    assert.deepEqual(put.json().metadata, { size: 256 });
    const got = await app.inject({ url: '/1.0/guests/web1/files?path=/etc/bin' });
    assert.equal(got.statusCode, 200);
    assert.equal(got.headers['content-type'], 'application/octet-stream');
    assert.deepEqual(got.rawPayload, bytes);
    assert.equal(got.headers['x-trivisor-mode'], '0600');
    assert.equal(got.headers['x-trivisor-uid'], '1000');
    assert.equal(got.headers['x-trivisor-gid'], '100');
    assert.equal(got.headers['x-trivisor-type'], 'file');
  });

  test('an empty body pushes an empty file', async () => {
    const put = await app.inject({
      method: 'POST',
      url: '/1.0/guests/web1/files?path=/empty',
      headers: { 'content-type': 'application/octet-stream' },
    });
    assert.equal(put.statusCode, 200, put.body);
    const got = await app.inject({ url: '/1.0/guests/web1/files?path=/empty' });
    assert.equal(got.rawPayload.length, 0);
  });

  test('bad requests get one-line 4xx errors', async () => {
    const missing = await app.inject({ url: '/1.0/guests/web1/files?path=/nope' });
    assert.equal(missing.statusCode, 404);
    assert.match(missing.json().error, /does not exist/);
    const noPath = await app.inject({ url: '/1.0/guests/web1/files' });
    assert.equal(noPath.statusCode, 400);
    const badMode = await app.inject({
      method: 'POST',
      url: '/1.0/guests/web1/files?path=/x',
      payload: Buffer.from('x'),
      headers: { 'content-type': 'application/octet-stream', 'x-trivisor-mode': 'rwx' },
    });
    assert.equal(badMode.statusCode, 400);
    assert.match(badMode.json().error, /octal/);
    const noGuest = await app.inject({ url: '/1.0/guests/ghost/files?path=/x' });
    assert.equal(noGuest.statusCode, 404);
  });
});
