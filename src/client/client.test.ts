import assert from 'node:assert/strict';
import { appendFile, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { get as httpGet } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices, type FakeServices } from '../../test/fakes/fake-services.ts';
import type { TrivisorEvent } from '../api/types.ts';
import { buildServer } from '../server/build-server.ts';
import { listenTcp, listenUnix } from '../server/listen.ts';
import { TrivisorApiError } from './api-error.ts';
import { createClient, type TrivisorClient } from './client.ts';

const readAll = async (stream: NodeJS.ReadableStream): Promise<string> => {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks).toString('utf8');
};

describe('client against a server on a unix socket', () => {
  let dir: string;
  let app: FastifyInstance;
  let fake: FakeServices;
  let client: TrivisorClient;
  let socketPath: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-client-'));
    fake = createFakeServices({ consoleLogPath: join(dir, 'console.log') });
    app = await buildServer(fake, { auth: { type: 'none' }, uploadDir: dir });
    socketPath = join(dir, 'trivisor.sock');
    await listenUnix(app, socketPath);
    client = createClient({ socketPath });
  });
  after(async () => {
    await app.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('listenUnix makes the socket root-only', async () => {
    assert.equal((await stat(socketPath)).mode & 0o777, 0o600);
  });

  test('listenUnix refuses a socket another server answers on, and replaces a stale one', async () => {
    const other = await buildServer(createFakeServices(), { auth: { type: 'none' } });
    await assert.rejects(listenUnix(other, socketPath), /Another daemon already listens/);
    await other.close();

    const stalePath = join(dir, 'stale.sock');
    const dead = createServer();
    await new Promise<void>((r) => dead.listen(stalePath, r));
    // Closing a net server removes its socket file; recreate a dead one by leaking the file.
    await new Promise<void>((r) => dead.close(() => r()));
    const leaked = createServer();
    await new Promise<void>((r) => leaked.listen(stalePath, r));
    (leaked as unknown as { _handle: { close(): void } | null })._handle?.close();
    const third = await buildServer(createFakeServices(), { auth: { type: 'none' } });
    try {
      await listenUnix(third, stalePath);
      assert.equal((await createClient({ socketPath: stalePath }).serverInfo()).api_version, '1.0');
    } finally {
      await third.close();
    }
  });

  test('typed calls return metadata and errors throw TrivisorApiError with the status', async () => {
    const guests = await client.listGuests({ usage: true });
    assert.equal(guests[0]?.name, 'web1');
    assert.equal(guests[0]?.state.usage?.processes, 2);
    const err = await client.getGuest('nope').catch((e: unknown) => e);
    assert.ok(err instanceof TrivisorApiError);
    assert.equal(err.status, 404);
    assert.equal(err.code, 'NotFound');
    assert.match(err.message, /not found/);
  });

  test('waitOperation returns the finished operation, and throws for a failed one', async () => {
    const op = await client.createGuest({ name: 'c1', image: 'busybox', start: true });
    const done = await client.waitOperation(op.id);
    assert.equal(done.status, 'Success');
    assert.equal((await client.getGuest('c1')).status, 'Running');
    const failing = await client.startExec('web1', { command: ['sleep'] });
    const seen: string[] = [];
    setTimeout(() => client.cancelOperation(failing.id).catch(() => {}), 100);
    await assert.rejects(
      client.waitOperation(failing.id, { onProgress: (o) => seen.push(o.status), pollMs: 20 }),
      (e: unknown) => e instanceof TrivisorApiError && e.code === 'Cancelled',
    );
    assert.ok(seen.includes('Running'));
  });

  test('the events websocket delivers a published event, filtered by type', async () => {
    const got: TrivisorEvent[] = [];
    const sub = await client.events((e) => got.push(e), { types: ['lifecycle'] });
    try {
      fake.events.publish({ type: 'logging', metadata: { message: 'skip me' } });
      fake.events.publish({ type: 'lifecycle', action: 'guest-started', metadata: { name: 'web1' } });
      for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(got.length, 1);
      assert.equal(got[0]?.action, 'guest-started');
      assert.ok(got[0]?.timestamp);
    } finally {
      sub.close();
      await sub.closed;
    }
  });

  test('a bad event type is refused before the upgrade', async () => {
    await assert.rejects(
      client.events(() => {}, { types: ['bogus' as never] }),
      (e: unknown) =>
        e instanceof TrivisorApiError && e.status === 400 && /Unknown event type/.test(e.message),
    );
  });

  test('exec over the websocket: stdin is echoed to stdout and the exit code comes back', async () => {
    const handle = await client.exec('web1', { command: ['cat'] });
    handle.resize(100, 40);
    handle.stdin.write('hello ');
    handle.stdin.end('exec\n');
    const [out, code] = await Promise.all([readAll(handle.stdout), handle.exit]);
    assert.equal(out, 'hello exec\n');
    assert.equal(code, 0);
    const op = await client.waitOperation(handle.operationId);
    assert.equal(op.metadata.return, 0);
    assert.deepEqual(fake.execs.at(-1)?.resizes, [[100, 40]]);
  });

  test('exec over the websocket passes exit codes, stderr and signals', async () => {
    const exit7 = await client.exec('web1', { command: ['exit', '7'] });
    assert.equal(await exit7.exit, 7);
    const err = await client.exec('web1', { command: ['stderr', 'oops'] });
    const [stderr, code] = await Promise.all([readAll(err.stderr), err.exit]);
    assert.deepEqual([stderr, code], ['oops', 1]);
    const sleeper = await client.exec('web1', { command: ['sleep'] });
    sleeper.signal('SIGINT');
    assert.equal(await sleeper.exit, 137);
    assert.deepEqual(fake.execs.at(-1)?.signals, ['SIGINT']);
  });

  test('an exec websocket with a wrong secret is refused', async () => {
    const op = await client.startExec('web1', { command: ['cat'], 'wait-for-websocket': true });
    const url = String(op.metadata.websocket);
    assert.match(url, /^\/1\.0\/operations\/[^/]+\/websocket\?secret=[0-9a-f]{48}$/);
    const { default: WebSocket } = await import('ws');
    const bad = new WebSocket(`ws+unix://${socketPath}:${url.replace(/secret=.*/, 'secret=nope')}`);
    const status = await new Promise<number>((resolve) => {
      bad.on('unexpected-response', (req, res) => {
        req.destroy();
        resolve(res.statusCode ?? 0);
      });
      bad.on('open', () => resolve(101));
    });
    assert.equal(status, 400);
    await client.cancelOperation(op.id);
    const done = await client.waitOperation(op.id, { allowFailure: true });
    assert.equal(done.status, 'Cancelled');
  });

  test('exec with record-output through the client', async () => {
    const op = await client.startExec('web1', {
      command: ['env'],
      environment: { A: '1' },
      'record-output': true,
    });
    const done = await client.waitOperation(op.id);
    assert.deepEqual([done.metadata.return, done.metadata.stdout], [0, 'A=1\n']);
  });

  test('image upload streams the file to importTarball', async () => {
    const file = join(dir, 'rootfs.tar');
    const bytes = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
    bytes.write('ustar-ish header', 0);
    await writeFile(file, bytes);
    const op = await client.importImage(file, { alias: 'uploaded/one' });
    const done = await client.waitOperation(op.id);
    assert.equal(done.status, 'Success');
    assert.deepEqual(fake.imports.at(-1)?.alias, 'uploaded/one');
    assert.equal(fake.imports.at(-1)?.sizeBytes, bytes.length);
    assert.match(fake.imports.at(-1)?.head ?? '', /^ustar-ish header/);
    assert.equal((await client.getImage('uploaded/one')).sizeBytes, bytes.length);
    await assert.rejects(client.importImage(file, { alias: 'Bad Alias' }), /not valid/);
  });

  test('console log and follow', async () => {
    assert.equal(await client.consoleLog('web1'), '');
    await writeFile(fake.consoleLogPath, 'boot line 1\n');
    assert.equal(await client.consoleLog('web1'), 'boot line 1\n');
    const follow = await client.followConsole('web1');
    let text = '';
    follow.stream.on('data', (c: Buffer) => {
      text += c.toString();
    });
    await appendFile(fake.consoleLogPath, 'boot line 2\n');
    for (let i = 0; i < 200 && !text.includes('line 2'); i++) await new Promise((r) => setTimeout(r, 10));
    follow.close();
    assert.equal(text, 'boot line 1\nboot line 2\n');
    await assert.rejects(
      client.followConsole('nope'),
      (e: unknown) => e instanceof TrivisorApiError && e.status === 404,
    );
  });

  test('metrics and openapi', async () => {
    assert.equal(await client.metrics(), 'trivisor_guests 1\n');
    assert.equal((await client.openapi()).openapi, '3.0.3');
  });
});

describe('client against a TCP server with a token', () => {
  test('401 without the token, 200 with it, websockets too', async () => {
    const fake = createFakeServices();
    const app = await buildServer(fake, { auth: { type: 'token', token: 'tok-123' } });
    try {
      const { port } = await listenTcp(app, '127.0.0.1', 0);
      const url = `http://127.0.0.1:${port}`;
      const anonymous = createClient({ url, token: '' });
      await assert.rejects(
        anonymous.listGuests(),
        (e: unknown) => e instanceof TrivisorApiError && e.status === 401 && /Not authorized/.test(e.message),
      );
      assert.equal((await anonymous.serverInfo()).auth, 'untrusted');
      await assert.rejects(
        anonymous.events(() => {}),
        (e: unknown) => e instanceof TrivisorApiError && e.status === 401,
      );
      const { default: WebSocket } = await import('ws');
      /** Whether a header-less (browser-like) WebSocket to `path` opens; else the refusal's status. */
      const opens = (path: string) =>
        new Promise<true | number>((resolve, reject) => {
          const socket = new WebSocket(`ws://127.0.0.1:${port}${path}`);
          socket.once('open', () => {
            socket.close();
            resolve(true);
          });
          socket.once('unexpected-response', (_req, res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          socket.once('error', reject);
        });
      // The token in a URL is refused everywhere, WebSocket upgrades included (finding 9).
      assert.equal(await opens('/1.0/events?token=tok-123'), 401);
      // The old hole: any route took ?token= when an Upgrade header came with it.
      const tokenInQuery = await new Promise<number>((resolve, reject) => {
        const req = httpGet(
          `${url}/1.0/guests?token=tok-123`,
          { headers: { upgrade: 'websocket', connection: 'Upgrade' } },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on('upgrade', () => resolve(101));
        req.on('error', reject);
      });
      assert.equal(tokenInQuery, 401);
      const client = createClient({ url, token: 'tok-123' });
      // A browser asks for a ticket with the token in a header, then opens the WebSocket with it, once.
      const { ticket, expiresInSeconds } = await client.websocketTicket('/1.0/events');
      assert.equal(expiresInSeconds, 10);
      assert.equal(await opens(`/1.0/events?type=lifecycle&ticket=${ticket}`), true);
      assert.equal(await opens(`/1.0/events?ticket=${ticket}`), 401, 'a ticket is good once');
      const other = await client.websocketTicket('/1.0/events');
      assert.equal(await opens(`/1.0/operations/x/websocket?secret=s&ticket=${other.ticket}`), 401);
      assert.equal(
        await opens(`/1.0/events?ticket=${other.ticket}`),
        401,
        'tried once on another path: gone',
      );
      const third = await client.websocketTicket('/1.0/events');
      const notWs = await fetch(`${url}/1.0/guests?ticket=${third.ticket}`);
      assert.equal(notWs.status, 401, 'a ticket opens WebSocket routes only');
      await assert.rejects(
        client.websocketTicket('/1.0/guests'),
        (e: unknown) =>
          e instanceof TrivisorApiError && e.status === 400 && /not a WebSocket path/.test(e.message),
      );
      await assert.rejects(
        anonymous.websocketTicket('/1.0/events'),
        (e: unknown) => e instanceof TrivisorApiError && e.status === 401,
      );
      assert.equal((await client.listGuests()).length, 1);
      assert.equal((await client.serverInfo()).auth, 'trusted');
      const handle = await client.exec('web1', { command: ['echo', 'over', 'tcp'] });
      assert.equal(await readAll(handle.stdout), 'over tcp\n');
      assert.equal(await handle.exit, 0);
    } finally {
      await app.close();
    }
  });

  test('an unreachable daemon is a clear Unavailable error', async () => {
    const client = createClient({ socketPath: '/nonexistent/trivisor.sock' });
    await assert.rejects(
      client.listGuests(),
      (e: unknown) =>
        e instanceof TrivisorApiError &&
        e.code === 'Unavailable' &&
        /Cannot reach the Trivisor daemon/.test(e.message),
    );
  });
});

describe('exec websocket lifetimes', () => {
  test('an exec nobody connects to fails after the connect timeout; a client that leaves kills the command', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'trivisor-exec-'));
    const fake = createFakeServices();
    const app = await buildServer(fake, { auth: { type: 'none' }, execConnectTimeoutMs: 200 });
    try {
      const socketPath = join(dir, 'trivisor.sock');
      await listenUnix(app, socketPath);
      const client = createClient({ socketPath });
      const op = await client.startExec('web1', { command: ['cat'], 'wait-for-websocket': true });
      const done = await client.waitOperation(op.id, { allowFailure: true });
      assert.equal(done.status, 'Failure');
      assert.match(done.error ?? '', /No client connected to the operation's websocket/);
      assert.equal(fake.execs.length, 0, 'the command never started');

      const handle = await client.exec('web1', { command: ['sleep'] });
      for (let i = 0; i < 100 && fake.execs.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      handle.close();
      await assert.rejects(handle.exit, /closed before the command exited/);
      const ended = await client.waitOperation(handle.operationId, { allowFailure: true });
      assert.equal(ended.metadata.return, 137);
      assert.deepEqual(fake.execs.at(-1)?.signals, ['SIGKILL']);
    } finally {
      await app.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
