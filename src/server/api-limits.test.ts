import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { createRequestLimiter } from './api-limits.ts';
import { buildServer } from './build-server.ts';
import { listenTcp } from './listen.ts';

describe('request limiter', () => {
  test('a client gets its burst at once, then the sustained rate; others keep their own bucket', () => {
    let now = 0;
    const limiter = createRequestLimiter({ requestsPerSecond: 2, burst: 3 }, () => now);
    assert.deepEqual(
      [1, 2, 3, 4].map(() => limiter.take('a')),
      [0, 0, 0, 1],
    );
    assert.equal(limiter.take('b'), 0, 'another client is not held back by a');
    now += 500;
    assert.equal(limiter.take('a'), 0, 'one request back after 1/rate seconds');
    assert.equal(limiter.take('a'), 1);
    now += 60_000;
    assert.deepEqual(
      [1, 2, 3, 4].map(() => limiter.take('a')),
      [0, 0, 0, 1],
      'the bucket refills to the burst, no more',
    );
  });
});

/** GET `path` from the local address `from` (127.0.0.x: a different client to the server). */
function get(
  port: number,
  path: string,
  from: string,
): Promise<{ status: number; body: string; retryAfter?: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        localAddress: from,
        agent: false,
        headers: { authorization: 'Bearer t' },
      },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => {
          body += c.toString();
        });
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            body,
            ...(res.headers['retry-after'] ? { retryAfter: String(res.headers['retry-after']) } : {}),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('API limits on a TCP server', () => {
  let app: FastifyInstance;
  let port: number;
  before(async () => {
    app = await buildServer(createFakeServices(), {
      auth: { type: 'token', token: 't' },
      limits: { requestsPerSecond: 1, requestBurst: 10, connectionsPerClient: 4, connections: 8 },
      // The burst must pass within one refill (200 ms): no schema compiling on the first request.
      compileSchemasAtReady: true,
    });
    port = (await listenTcp(app, '127.0.0.1', 0)).port;
  });
  after(async () => {
    await app.close();
  });

  test('a client over its request rate gets 429 with Retry-After; another client is still served', async () => {
    // At once, so that a slow machine refills (1 a second) at most one.
    const answers = await Promise.all(
      Array.from({ length: 14 }, () => get(port, '/1.0/guests', '127.0.0.1')),
    );
    const statuses = answers.map((a) => a.status);
    const passed = statuses.filter((s) => s === 200).length;
    assert.ok(passed >= 10 && passed <= 11, `the burst passes, no more: ${statuses}`);
    assert.ok(statuses.filter((s) => s === 429).length >= 3, `then 429: ${statuses}`);
    assert.ok(
      statuses.every((s) => s === 200 || s === 429),
      `${statuses}`,
    );
    const refused = answers.find((a) => a.status === 429);
    assert.equal(refused?.retryAfter, '1');
    const body = JSON.parse(refused?.body ?? '{}');
    assert.equal(body.type, 'error');
    assert.equal(body.error_code, 429);
    assert.match(
      body.error,
      /^Too many requests from 127\.0\.0\.1: at most 1 a second \(bursts of 10\); retry in 1 s$/,
    );
    // Unauthenticated floods count too: the limit comes before the token check.
    assert.equal((await get(port, '/1.0/guests', '127.0.0.1')).status, 429);
    assert.equal((await get(port, '/1.0/guests', '127.0.0.2')).status, 200, 'another client is not starved');
  });

  test('a client over its connection count gets a 429 on the extra connection; another client connects', async () => {
    const open: Socket[] = [];
    const connectFrom = (from: string) =>
      new Promise<Socket>((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port, localAddress: from }, () => resolve(s));
        s.on('error', reject);
      });
    try {
      for (let i = 0; i < 4; i++) open.push(await connectFrom('127.0.0.3'));
      const extra = await connectFrom('127.0.0.3');
      open.push(extra);
      const answer = await new Promise<string>((resolve) => {
        let text = '';
        extra.on('data', (c: Buffer) => {
          text += c.toString();
        });
        extra.on('close', () => resolve(text));
        extra.write('GET /1.0/guests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n');
      });
      assert.match(answer, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
      assert.match(answer, /Too many connections from 127\.0\.0\.3 \(at most 4 at once\)/);
      assert.equal((await get(port, '/1.0/guests', '127.0.0.4')).status, 200, 'another client connects');
      // Once it closes some, the client connects again.
      for (const s of open.splice(0)) s.destroy();
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await get(port, '/1.0', '127.0.0.3')).status, 200);
    } finally {
      for (const s of open) s.destroy();
    }
  });

  test('the total connection count is capped across clients', async () => {
    const open: Socket[] = [];
    try {
      for (let i = 0; i < 8; i++) {
        const from = `127.0.1.${(i % 4) + 1}`;
        open.push(
          await new Promise<Socket>((resolve, reject) => {
            const s = connect({ host: '127.0.0.1', port, localAddress: from }, () => resolve(s));
            s.on('error', reject);
          }),
        );
      }
      await new Promise((r) => setTimeout(r, 50));
      const r = await get(port, '/1.0', '127.0.2.1');
      assert.equal(r.status, 429);
      assert.match(JSON.parse(r.body).error, /Too many connections to the daemon \(at most 8\)/);
    } finally {
      for (const s of open) s.destroy();
    }
  });
});
