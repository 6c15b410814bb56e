import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { sendFileBody } from './file-response.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'trivisor-file-response-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Serves `file` claiming `size` bytes, and fetches it: the body received, or the error. */
async function fetchServed(
  file: string,
  size: number,
): Promise<{ body?: Buffer; error?: Error; sendError?: Error }> {
  let sendError: Error | undefined;
  const server = http.createServer(async (_req, res) => {
    const handle = await open(file, 'r');
    res.writeHead(200, { 'content-length': String(size) });
    try {
      await sendFileBody(handle, res, size);
    } catch (e) {
      sendError = e as Error;
      res.destroy();
    } finally {
      await handle.close();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  try {
    const body = await new Promise<Buffer>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: '/' }, (res) => {
          const parts: Buffer[] = [];
          res.on('data', (c: Buffer) => parts.push(c));
          res.on('end', () => resolve(Buffer.concat(parts)));
          res.on('error', reject);
          res.on('aborted', () => reject(new Error('aborted')));
        })
        .on('error', reject);
    });
    return { body, ...(sendError && { sendError }) };
  } catch (e) {
    return { error: e as Error, ...(sendError && { sendError }) };
  } finally {
    server.close();
  }
}

describe('sendFileBody', () => {
  it('sends every byte of a file of several buffers, in order', async () => {
    const data = randomBytes(5 * 2 ** 20 + 777);
    const file = path.join(dir, 'a');
    writeFileSync(file, data);
    const got = await fetchServed(file, data.length);
    assert.equal(got.error, undefined);
    assert.ok(got.body?.equals(data));
  });

  it('a file shorter than its announced size fails the send, and the client sees the body cut short', async () => {
    const file = path.join(dir, 'b');
    writeFileSync(file, randomBytes(3 * 2 ** 20));
    const got = await fetchServed(file, 4 * 2 ** 20);
    assert.match(String(got.sendError?.message), /ended before its size/);
    assert.notEqual(got.error, undefined);
  });
});
