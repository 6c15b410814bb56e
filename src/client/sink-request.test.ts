import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { BadResponse, BodyDecoder, parseHead, requestIntoSink } from './sink-request.ts';

/** A body in chunked form, its chunks `sizes` long, with an extension and a trailer. */
function chunked(body: Buffer, sizes: number[]): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (let i = 0; at < body.length; i++) {
    const n = Math.min(sizes[i % sizes.length] as number, body.length - at);
    parts.push(Buffer.from(`${n.toString(16)}${i === 1 ? ';ext=1' : ''}\r\n`), body.subarray(at, at + n));
    parts.push(Buffer.from('\r\n'));
    at += n;
  }
  parts.push(Buffer.from('0\r\nX-Trailer: yes\r\n\r\n'));
  return Buffer.concat(parts);
}

/** Feeds `wire` to a decoder in pieces of `step` bytes, copying what each push answers (as the sink must). */
function decode(decoder: BodyDecoder, wire: Buffer, step: number): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < wire.length; at += step) {
    for (const piece of decoder.push(wire.subarray(at, at + step))) out.push(Buffer.from(piece));
  }
  return Buffer.concat(out);
}

describe('BodyDecoder', () => {
  const body = randomBytes(10_000);

  test('a chunked body, read in pieces of any size, comes out whole and ends at its last chunk', () => {
    const wire = chunked(body, [1, 4096, 777, 3000]);
    for (const step of [1, 2, 3, 7, 100, 4099, wire.length]) {
      const d = new BodyDecoder({ 'transfer-encoding': 'chunked' }, false);
      assert.deepEqual(decode(d, wire, step), body, `step ${step}`);
      assert.ok(d.done, `step ${step}`);
    }
  });

  test('a chunked body cut short is not done; bytes after the body and a bad size line are refused', () => {
    const wire = chunked(body, [4096]);
    const cut = new BodyDecoder({ 'transfer-encoding': 'chunked' }, false);
    cut.push(wire.subarray(0, wire.length - 3));
    assert.equal(cut.done, false);
    const more = new BodyDecoder({ 'transfer-encoding': 'chunked' }, false);
    assert.throws(() => more.push(Buffer.concat([wire, Buffer.from('x')])), BadResponse);
    const bad = new BodyDecoder({ 'transfer-encoding': 'chunked' }, false);
    assert.throws(() => bad.push(Buffer.from('zz\r\n')), BadResponse);
    const noCrlf = new BodyDecoder({ 'transfer-encoding': 'chunked' }, false);
    assert.throws(() => noCrlf.push(Buffer.from('2\r\nabXY\r\n')), BadResponse);
  });

  test('a Content-Length body ends at its length; without either, it lasts up to the close', () => {
    const fixed = new BodyDecoder({ 'content-length': '10000' }, false);
    assert.deepEqual(decode(fixed, body, 333), body);
    assert.ok(fixed.done);
    assert.throws(() => fixed.push(Buffer.from('x')), BadResponse);
    assert.throws(() => new BodyDecoder({ 'content-length': '-1' }, false), BadResponse);
    const open = new BodyDecoder({}, false);
    assert.deepEqual(decode(open, body, 4096), body);
    assert.ok(!open.done && open.endsAtClose);
    assert.ok(new BodyDecoder({ 'content-length': '5' }, true).done);
  });
});

test('parseHead: the status and the headers, lower-cased, repeated ones joined', () => {
  assert.deepEqual(parseHead('HTTP/1.1 404 Not Found\r\nContent-Type: x\r\nVia: a\r\nvia: b'), {
    status: 404,
    headers: { 'content-type': 'x', via: 'a, b' },
  });
  assert.throws(() => parseHead('SSH-2.0-OpenSSH'), BadResponse);
  assert.throws(() => parseHead('HTTP/1.1 200 OK\r\nno colon'), BadResponse);
});

/**
 * A sink that keeps each chunk for a while before it copies it and says it is done: a reader that
 * reused its buffer before the sink was done would have it copy other bytes.
 */
function slowSink(delayMs: number): { sink: Writable; bytes: () => Buffer; ended: () => boolean } {
  const parts: Buffer[] = [];
  let ended = false;
  const sink = new Writable({
    highWaterMark: 1,
    write(chunk: Buffer, _enc, done) {
      setTimeout(() => {
        parts.push(Buffer.from(chunk));
        done();
      }, delayMs);
    },
    final(done) {
      ended = true;
      done();
    },
  });
  return { sink, bytes: () => Buffer.concat(parts), ended: () => ended };
}

describe('requestIntoSink against a real HTTP server on a unix socket', () => {
  let dir: string;
  let server: Server;
  let tcp: Server;
  let path: string;
  const big = randomBytes(6 << 20);
  const seen: Array<{ url: string; auth: string | undefined; closed: Promise<void> }> = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-sink-request-'));
    path = join(dir, 's.sock');
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      seen.push({
        url: req.url ?? '',
        auth: req.headers.authorization,
        closed: new Promise((r) => res.once('close', () => r())),
      });
      if (req.url === '/big') {
        // Chunked, in pieces of odd sizes.
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-two': ['a', 'b'] });
        let at = 0;
        const next = () => {
          while (at < big.length) {
            const n = Math.min(100_003, big.length - at);
            const ok = res.write(big.subarray(at, at + n));
            at += n;
            if (!ok) {
              res.once('drain', next);
              return;
            }
          }
          res.end();
        };
        next();
      } else if (req.url === '/length') {
        res.writeHead(200, { 'content-length': String(big.length) });
        res.end(big);
      } else if (req.url === '/cut') {
        res.writeHead(200, { 'content-length': String(big.length) });
        res.write(big.subarray(0, 1 << 20), () => res.destroy());
      } else if (req.url === '/endless') {
        res.writeHead(200);
        res.write(big.subarray(0, 1000));
      } else {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end('{"type":"error","error":"Not found","error_code":404}');
      }
    });
    await new Promise<void>((r) => server.listen(path, r));
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

  const get = (
    url: string,
    sink: Writable,
    more: { signal?: AbortSignal; onBytes?: (n: number) => void } = {},
  ) =>
    requestIntoSink(
      { to: { path }, path: url, host: 'localhost', headers: { authorization: 'Bearer t' }, sink, ...more },
      (e) => new Error(`unreachable: ${e.code}`),
    );

  test('a chunked body of 6 MiB reaches a slow sink byte for byte, which is ended; headers and onBytes as sent', async () => {
    const s = slowSink(1);
    let counted = 0;
    const res = await get('/big', s.sink, { onBytes: (n) => (counted += n) });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-two'], 'a, b');
    assert.equal(res.headers['transfer-encoding'], 'chunked');
    assert.ok(s.bytes().equals(big));
    assert.equal(counted, big.length);
    assert.ok(s.ended());
    assert.equal(seen.at(-1)?.auth, 'Bearer t');
  });

  test('over TCP too', async () => {
    const s = slowSink(0);
    const port = (tcp.address() as { port: number }).port;
    const res = await requestIntoSink(
      { to: { host: '127.0.0.1', port }, path: '/big', host: `127.0.0.1:${port}`, headers: {}, sink: s.sink },
      (e) => new Error(`unreachable: ${e.code}`),
    );
    assert.equal(res.status, 200);
    assert.ok(s.bytes().equals(big));
  });

  test('a Content-Length body likewise', async () => {
    const s = slowSink(0);
    const res = await get('/length', s.sink);
    assert.equal(res.status, 200);
    assert.ok(s.bytes().equals(big));
    assert.ok(s.ended());
  });

  test('an error answer is returned with its body; the sink is neither written nor ended', async () => {
    const s = slowSink(0);
    const res = await get('/nothing-here', s.sink);
    assert.equal(res.status, 404);
    assert.equal(res.headers['content-type'], 'application/json');
    assert.equal(JSON.parse(res.body.toString()).error, 'Not found');
    assert.equal(s.bytes().length, 0);
    assert.ok(!s.ended());
  });

  test('a connection closed before the body is complete fails, and the sink is destroyed unended', async () => {
    const s = slowSink(0);
    await assert.rejects(get('/cut', s.sink), {
      message: 'The daemon closed the connection before the end of its answer',
    });
    assert.ok(s.sink.destroyed);
    assert.ok(!s.ended());
  });

  test('an abort fails with its reason and closes the connection', async () => {
    const s = slowSink(0);
    const stop = new AbortController();
    const pending = get('/endless', s.sink, {
      signal: stop.signal,
      onBytes: () => stop.abort(new Error('stop')),
    });
    await assert.rejects(pending, { message: 'stop' });
    assert.ok(s.sink.destroyed);
    await seen.at(-1)?.closed;
  });

  test("a sink's failure is the request's, and the connection is closed", async () => {
    const sink = new Writable({
      write(_chunk, _enc, done) {
        done(new Error('disk full'));
      },
    });
    await assert.rejects(get('/big', sink), { message: 'disk full' });
    await seen.at(-1)?.closed;
  });

  test('a server that is not there is the caller’s connect error', async () => {
    await assert.rejects(
      requestIntoSink(
        {
          to: { path: join(dir, 'none.sock') },
          path: '/',
          host: 'localhost',
          headers: {},
          sink: slowSink(0).sink,
        },
        (e) => new Error(`unreachable: ${e.code}`),
      ),
      { message: 'unreachable: ENOENT' },
    );
  });
});
