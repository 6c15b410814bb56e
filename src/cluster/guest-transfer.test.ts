import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { TrivisorError } from '../core/errors.ts';
import { createMoveTransport } from './guest-transfer.ts';
import type { MemberClient } from './member-client.ts';

// The move transport's send over a plain TCP socket (the member client's TLS is its own tests'):
// what the destination answers, and a destination whose daemon dies before it answers.
let server: Server;
let dir: string;
let archive: string;
/** What the fake destination does with the next upload, once it has read it whole. */
let onUpload: (res: import('node:http').ServerResponse) => void = () => {};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'guest-transfer-'));
  archive = join(dir, 'a.tar');
  await writeFile(archive, Buffer.alloc(3 << 20, 7));
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => onUpload(res));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

function transport() {
  const { port } = server.address() as AddressInfo;
  const client: MemberClient = {
    request: () => Promise.reject(new Error('not used')),
    connect: () =>
      new Promise<TLSSocket>((resolve, reject) => {
        const s = connect(port, '127.0.0.1', () => resolve(s as unknown as TLSSocket));
        s.once('error', reject);
      }),
  };
  return createMoveTransport({
    client,
    member: async (name) => (name === 'm2' ? { name, address: `127.0.0.1:${port}` } : undefined),
  });
}

test('send: the destination applied the archive (200): no error', async () => {
  onUpload = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"metadata":{}}');
  await transport().send('m2', 'g', archive, new AbortController().signal);
});

test("send: the destination's refusal is its error, with its code", async () => {
  onUpload = (res) =>
    res
      .writeHead(409, { 'content-type': 'application/json' })
      .end('{"error":"Guest g is busy","code":"Conflict"}');
  await assert.rejects(transport().send('m2', 'g', archive, new AbortController().signal), (e: unknown) => {
    assert.ok(e instanceof TrivisorError);
    assert.deepEqual([e.code, e.message], ['Conflict', 'Guest g is busy']);
    return true;
  });
});

test('send: a destination that breaks the connection before it answers (its daemon died) is Unavailable, in one line naming it', async () => {
  onUpload = (res) => res.socket?.destroy();
  await assert.rejects(transport().send('m2', 'g', archive, new AbortController().signal), (e: unknown) => {
    assert.ok(e instanceof TrivisorError);
    assert.equal(e.code, 'Unavailable');
    assert.match(e.message, /^m2 broke the connection before it answered \([^\n]+\)$/);
    return true;
  });
});

test('send: an aborted send throws the abort, not a broken connection', async () => {
  onUpload = () => {};
  const ac = new AbortController();
  const sending = transport().send('m2', 'g', archive, ac.signal);
  setTimeout(() => ac.abort(new TrivisorError('Unavailable', 'm2 went Offline')), 100);
  await assert.rejects(sending, (e: unknown) => {
    // The request's own abort: the caller reads its signal's reason (member-watch.ts causeOf).
    assert.equal((e as Error).name, 'AbortError', String(e));
    return true;
  });
});

test('send: an unknown member is NotFound', async () => {
  await assert.rejects(
    transport().send('m9', 'g', archive, new AbortController().signal),
    /Member m9 not found/,
  );
});
