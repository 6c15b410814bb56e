import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { FollowFrameReader } from '../api/follow-frames.ts';
import { ArchiveWriter, listArchive } from '../storage/backup-archive.ts';
import { type FollowedFile, sendFileBody, sendFollowedFile } from './file-response.ts';

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

/** Serves `follow` as a followed download and reads the frames back into one buffer (or the failure). */
async function fetchFollowed(
  follow: FollowedFile,
): Promise<{ file: Buffer; sizeBytes?: number; failed?: string }> {
  const server = http.createServer(async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/vnd.trivisor.archive-frames' });
    await sendFollowedFile(follow, res).catch(() => res.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: '/' }, (res) => {
          const reader = new FollowFrameReader();
          let file = Buffer.alloc(0);
          let sizeBytes: number | undefined;
          let failed: string | undefined;
          res.on('data', (c: Buffer) => {
            for (const e of reader.push(c)) {
              if (e.type === 'data') {
                if (file.length < e.offset + e.bytes.length) {
                  file = Buffer.concat([file, Buffer.alloc(e.offset + e.bytes.length - file.length)]);
                }
                e.bytes.copy(file, e.offset);
              } else if (e.type === 'end') sizeBytes = e.sizeBytes;
              else failed = e.message;
            }
          });
          res.on('end', () =>
            resolve({
              file,
              ...(sizeBytes !== undefined && { sizeBytes }),
              ...(failed !== undefined && { failed }),
            }),
          );
          res.on('error', reject);
        })
        .on('error', reject);
    });
  } finally {
    server.close();
  }
}

/** An archive written member by member with pauses, and a FollowedFile of it. */
function slowArchive(file: string, failAfterBytes?: number) {
  let state: ReturnType<FollowedFile['status']> = { state: 'running' };
  const follow: FollowedFile = {
    open: () => open(file, 'r').catch(() => undefined),
    status: () => state,
    changed: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 5))),
    headerOffsets: async () => (await listArchive(file)).map((m) => m.offset - 512),
  };
  const written = (async () => {
    const writer = await ArchiveWriter.create(file);
    try {
      await writer.addBuffer('index.json', Buffer.from('{}'));
      const payload = randomBytes(6 * 2 ** 20 + 100);
      await writer.addStream(
        'rootfs.tar.zst',
        (async function* () {
          for (let at = 0; at < payload.length; at += 300_000) {
            if (failAfterBytes !== undefined && at >= failAfterBytes) throw new Error('No space left');
            await new Promise((r) => setTimeout(r, 2));
            yield payload.subarray(at, at + 300_000);
          }
        })(),
      );
      await writer.addBuffer('manifest.json', Buffer.from('{"files":{}}'));
      state = { state: 'done', sizeBytes: await writer.finish() };
    } catch (e) {
      await writer.abandon();
      state = { state: 'failed', error: { message: `Cannot back up guest g: ${(e as Error).message}` } };
    }
  })();
  return { follow, written };
}

describe('sendFollowedFile', () => {
  it('sends an archive while it is written: the frames put together are the finished file, byte for byte', async () => {
    const file = path.join(dir, 'followed.tar');
    const { follow, written } = slowArchive(file);
    const got = await fetchFollowed(follow);
    await written;
    const final = readFileSync(file);
    assert.equal(got.failed, undefined);
    assert.equal(got.sizeBytes, final.length);
    assert.ok(got.file.equals(final), 'the received bytes are the final file');
    // The streamed member's header was a placeholder when its data went: it came again at the end.
    assert.deepEqual(
      (await listArchive(file)).map((m) => m.name),
      ['index.json', 'rootfs.tar.zst', 'manifest.json'],
    );
  });

  it('ends with the export failure, not an end, when the writer fails', async () => {
    const file = path.join(dir, 'failing.tar');
    const { follow, written } = slowArchive(file, 2 * 2 ** 20);
    const got = await fetchFollowed(follow);
    await written;
    assert.equal(got.sizeBytes, undefined);
    assert.equal(got.failed, 'Cannot back up guest g: No space left');
  });
});
