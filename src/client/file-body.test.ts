import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { TrivisorApiError } from './api-error.ts';
import { writeFileBody } from './file-body.ts';
import { storageMethods } from './storage-client.ts';
import { createTransport } from './transport.ts';

/** The descriptors this process holds open on `path`. */
const openOn = (path: string) =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  }).length;

/**
 * A writable that says a write is done only some time after it was given, and checks then that
 * the chunk still holds what it held when written: a sender that read into a buffer before its
 * write was done would have changed it under the writer.
 */
function slowWriter(delayMs: number): { out: Writable; bytes: () => Buffer; changed: () => number } {
  const parts: Buffer[] = [];
  let changed = 0;
  const out = new Writable({
    highWaterMark: 1,
    write(chunk: Buffer, _encoding, done) {
      const copy = Buffer.from(chunk);
      setTimeout(() => {
        if (!copy.equals(chunk)) changed++;
        parts.push(copy);
        done();
      }, delayMs);
    },
  });
  return { out, bytes: () => Buffer.concat(parts), changed: () => changed };
}

describe('writeFileBody', () => {
  let dir: string;
  const data = randomBytes((5 << 20) + 12_345);
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-file-body-'));
    await writeFile(join(dir, 'data'), data);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('sends the file byte for byte through two buffers, never reading into one whose write is not done', async () => {
    const file = await open(join(dir, 'data'));
    try {
      const w = slowWriter(2);
      // Buffers of 64 KiB: about 80 reads, each write done 2 ms later than given.
      await writeFileBody(file, w.out, { size: data.length, readBytes: 64 << 10 });
      assert.equal(w.changed(), 0, 'a buffer was read into while its write was pending');
      assert.ok(w.bytes().equals(data));
      assert.ok(w.out.writableFinished, 'the writable is ended');
    } finally {
      await file.close();
    }
  });

  test('sends only `size` bytes; a file shorter than `size` fails with what it had', async () => {
    const file = await open(join(dir, 'data'));
    try {
      const part = slowWriter(0);
      await writeFileBody(file, part.out, { size: 100_000, readBytes: 64 << 10 });
      assert.ok(part.bytes().equals(data.subarray(0, 100_000)));
      await assert.rejects(
        writeFileBody(file, slowWriter(0).out, { size: data.length + 10 }),
        new RegExp(`^Error: The file ended after ${data.length} of its ${data.length + 10} bytes$`),
      );
    } finally {
      await file.close();
    }
  });

  test('a writable that fails or closes before the end fails the send instead of leaving it waiting', async () => {
    const file = await open(join(dir, 'data'));
    try {
      const failing = new Writable({
        write(_chunk, _encoding, done) {
          setTimeout(() => done(new Error('EPIPE')), 1);
        },
      });
      failing.on('error', () => {});
      await assert.rejects(writeFileBody(file, failing, { size: data.length }), /EPIPE/);
      // One that never says a write is done, then is destroyed (the connection went away).
      const stuck = new Writable({ highWaterMark: 1, write() {} });
      setTimeout(() => stuck.destroy(), 20);
      await assert.rejects(
        writeFileBody(file, stuck, { size: data.length, readBytes: 64 << 10 }),
        /^Error: The connection closed before the upload was complete$/,
      );
    } finally {
      await file.close();
    }
  });
});

describe("importBackup's upload against a real HTTP server, on a unix socket and over TCP", () => {
  let dir: string;
  let server: Server;
  let tcp: Server;
  let socketPath: string;
  let archive: string;
  const data = randomBytes((6 << 20) + 777);
  const received: Array<{ url: string; headers: IncomingMessage['headers']; body: Buffer }> = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-upload-'));
    socketPath = join(dir, 's.sock');
    archive = join(dir, 'b1.tar.zst');
    await writeFile(archive, data);
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      const parts: Buffer[] = [];
      if (req.headers['x-trivisor-name'] === 'taken') {
        // Refused once the upload has begun, the rest not read (as the daemon does).
        req.once('data', () => {
          res.writeHead(409, { 'content-type': 'application/json', connection: 'close' });
          res.end(
            '{"type":"error","error":"Guest taken already exists: give the import another name","error_code":409}',
          );
        });
        return;
      }
      if (req.headers['x-trivisor-name'] === 'cut') {
        let got = 0;
        req.on('data', (c: Buffer) => {
          got += c.length;
          if (got > 1 << 20) req.socket.destroy();
        });
        return;
      }
      // Read slowly, as a daemon unpacking the archive does: the client waits on its writes.
      req.on('data', (c: Buffer) => {
        parts.push(c);
        req.pause();
        setTimeout(() => req.resume(), 1);
      });
      req.on('end', () => {
        received.push({ url: req.url ?? '', headers: req.headers, body: Buffer.concat(parts) });
        res.writeHead(202, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            type: 'async',
            status: 'Operation created',
            status_code: 100,
            operation: '/1.0/operations/op1',
            metadata: { id: 'op1', status: 'Running' },
          }),
        );
      });
    });
    await new Promise<void>((r) => server.listen(socketPath, r));
    tcp = createServer((req, res) => server.emit('request', req, res));
    await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', r));
  });
  after(async () => {
    for (const s of [server, tcp]) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    await rm(dir, { recursive: true, force: true });
  });

  const clientOver = (how: 'unix' | 'tcp') => {
    const port = (tcp.address() as { port: number }).port;
    const transport = createTransport(how === 'unix' ? { socketPath } : { url: `http://127.0.0.1:${port}` });
    const never = () => Promise.reject(new Error('not called'));
    return storageMethods(transport, { call: never, callAsync: never });
  };

  for (const how of ['unix', 'tcp'] as const) {
    test(`the archive arrives byte for byte with its headers; the operation is answered; the file is closed (${how})`, async () => {
      received.length = 0;
      const op = await clientOver(how).importBackup(archive, { name: 'b2', storage: 'p1', target: 'm1' });
      assert.equal(op.id, 'op1');
      const got = received[0];
      assert.ok(got);
      assert.equal(got.url, '/1.0/backups?target=m1');
      assert.equal(got.headers['content-length'], String(data.length));
      assert.equal(got.headers['x-trivisor-name'], 'b2');
      assert.equal(got.headers['x-trivisor-pool'], 'p1');
      assert.ok(got.body.equals(data), 'the body is the file');
      assert.equal(openOn(archive), 0);
    });
  }

  test("a refusal sent while the upload runs is the daemon's one-line error; the file is closed", async () => {
    await assert.rejects(
      clientOver('unix').importBackup(archive, { name: 'taken' }),
      (e: unknown) =>
        e instanceof TrivisorApiError &&
        e.status === 409 &&
        e.message === 'Guest taken already exists: give the import another name',
    );
    for (let i = 0; i < 100 && openOn(archive) > 0; i++) await sleep(10);
    assert.equal(openOn(archive), 0);
  });

  test('a connection closed in the middle of the upload fails the import, and the file is closed', async () => {
    await assert.rejects(
      clientOver('unix').importBackup(archive, { name: 'cut' }),
      /socket hang up|ECONNRESET|EPIPE/,
    );
    for (let i = 0; i < 100 && openOn(archive) > 0; i++) await sleep(10);
    assert.equal(openOn(archive), 0);
  });

  test('a file that is not there fails before anything is sent', async () => {
    await assert.rejects(clientOver('unix').importBackup(join(dir, 'nothing')), /ENOENT/);
  });
});
