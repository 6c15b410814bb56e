import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ConnectionOptions, connect, type TLSSocket } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { hostRunner } from '../host/runner.ts';
import { ensureServerCertificate, type ServerCertificate } from '../host/server-certificate.ts';
import { createAuthService } from '../services/auth-service.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { buildServer } from './build-server.ts';
import { listenTcp } from './listen.ts';

/** One raw HTTP/1.1 request over TLS; the whole answer as text. */
function ask(
  port: number,
  request: string,
  options: { cert?: ServerCertificate; from?: string } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: '127.0.0.1',
      port,
      rejectUnauthorized: false,
      ...(options.from !== undefined && { localAddress: options.from }),
      ...(options.cert && { cert: options.cert.cert, key: options.cert.key }),
    });
    let text = '';
    socket.on('data', (c: Buffer) => {
      text += c.toString();
    });
    socket.on('secureConnect', () => socket.write(request));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
}

const get = (path: string, headers = '') =>
  `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${headers}\r\n`;

describe('the API over TLS', () => {
  let dir: string;
  let server: ServerCertificate;
  let laptop: ServerCertificate;
  let stranger: ServerCertificate;
  let app: FastifyInstance;
  let port: number;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'trivisor-tls-server-'));
    const make = async (name: string) => {
      await mkdir(path.join(dir, name));
      return ensureServerCertificate(path.join(dir, name), { runner: hostRunner(), hostName: name });
    };
    [server, laptop, stranger] = await Promise.all([make('server'), make('laptop'), make('stranger')]);
    const services = createFakeServices();
    services.auth = createAuthService({ store: createMemoryStore() });
    await services.auth.trustCertificate(
      { certificate: laptop.cert, role: 'viewer', projects: ['default'] },
      'test',
    );
    app = await buildServer(services, {
      auth: { type: 'token', token: 'admin-secret' },
      https: { key: server.key, cert: server.cert },
      limits: { connectionsPerClient: 2, connections: 100 },
    });
    port = (await listenTcp(app, '127.0.0.1', 0)).port;
  });
  after(async () => {
    await app?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('a trusted client certificate authenticates with its role; an unknown one does not', async () => {
    assert.match(await ask(port, get('/1.0/guests'), { cert: laptop }), /^HTTP\/1\.1 200 /);
    const denied = await ask(
      port,
      `POST /1.0/guests HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
      {
        cert: laptop,
      },
    );
    assert.match(denied, /^HTTP\/1\.1 403 /);
    assert.match(
      denied,
      /Permission denied: certificate trivisor-laptop \([0-9a-f]{12}…\) is a viewer in project default/,
    );
    assert.match(await ask(port, get('/1.0/guests'), { cert: stranger }), /^HTTP\/1\.1 401 /);
    assert.match(await ask(port, get('/1.0/guests')), /^HTTP\/1\.1 401 /);
    // A token that is sent is what counts: a wrong one is refused whatever certificate came with it.
    assert.match(
      await ask(port, get('/1.0/guests', 'Authorization: Bearer nope\r\n'), { cert: laptop }),
      /^HTTP\/1\.1 401 /,
    );
    assert.match(
      await ask(port, get('/1.0/guests', 'Authorization: Bearer admin-secret\r\n')),
      /^HTTP\/1\.1 200 /,
    );
  });

  test('plain HTTP on the TLS port gets no answer', async () => {
    const { connect: plain } = await import('node:net');
    const text = await new Promise<string>((resolve) => {
      const s = plain({ host: '127.0.0.1', port }, () => s.write(get('/1.0')));
      let t = '';
      s.on('data', (c: Buffer) => {
        t += c.toString('latin1');
      });
      s.on('close', () => resolve(t));
      s.on('error', () => resolve(t));
    });
    assert.doesNotMatch(text, /^HTTP\/1\.1 200/);
  });

  test('a connection over the per-client count gets a 429 it can read, over TLS', async () => {
    const open: TLSSocket[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        open.push(
          await new Promise<TLSSocket>((resolve, reject) => {
            // localAddress is net's, passed through by tls.connect (its types leave it out).
            const options = { host: '127.0.0.1', port, rejectUnauthorized: false, localAddress: '127.0.0.5' };
            const s = connect(options as ConnectionOptions, () => resolve(s));
            s.on('error', reject);
          }),
        );
      }
      await new Promise((r) => setTimeout(r, 50));
      const answer = await ask(port, get('/1.0'), { from: '127.0.0.5' });
      assert.match(answer, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
      assert.match(answer, /Too many connections from 127\.0\.0\.5 \(at most 2 at once\)/);
    } finally {
      for (const s of open) s.destroy();
    }
  });
});
