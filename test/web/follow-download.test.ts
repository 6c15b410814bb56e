import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { FRAME, frame } from '../../src/api/follow-frames.ts';
import { type FollowedFile, sendFollowedFile } from '../../src/server/file-response.ts';
import { ArchiveWriter, listArchive } from '../../src/storage/backup-archive.ts';
import { FollowAssembler, readFollowed } from '../../web/src/follow-download.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'trivisor-follow-download-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** An archive written member by member with pauses (its payload's header rewritten at its end). */
function slowArchive(file: string, failAfterBytes?: number): FollowedFile {
  let state: ReturnType<FollowedFile['status']> = { state: 'running' };
  (async () => {
    const writer = await ArchiveWriter.create(file);
    try {
      await writer.addBuffer('index.json', Buffer.from('{}'));
      const payload = randomBytes(5 * 2 ** 20 + 100);
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
  return {
    open: () => open(file, 'r').catch(() => undefined),
    status: () => state,
    changed: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 5))),
    headerOffsets: async () => (await listArchive(file)).map((m) => m.offset - 512),
  };
}

/** Serves `follow` through the daemon's own sender and reads it as the web UI does (fetch's body). */
async function downloadFollowed(follow: FollowedFile, cutAfterBytes?: number): Promise<Blob> {
  const server = http.createServer(async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/vnd.trivisor.archive-frames' });
    if (cutAfterBytes !== undefined) {
      const write = res.write.bind(res);
      let sent = 0;
      // A connection that breaks off in the middle: the body ends without an end frame.
      res.write = ((chunk: Buffer, cb?: (e?: Error | null) => void) => {
        sent += chunk.length;
        if (sent > cutAfterBytes) {
          res.destroy();
          return false;
        }
        return write(chunk, cb);
      }) as typeof res.write;
    }
    await sendFollowedFile(follow, res).catch(() => res.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`);
    assert.ok(res.body);
    return await readFollowed(res.body);
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

describe('a followed backup download in the web UI', () => {
  it("puts together the daemon's archive byte for byte while it is written, header rewrites included", async () => {
    const file = path.join(dir, 'ok.tar');
    const blob = await downloadFollowed(slowArchive(file));
    const got = Buffer.from(await blob.arrayBuffer());
    const want = readFileSync(file);
    assert.equal(got.length, want.length);
    assert.ok(got.equals(want));
    // The payload's header holds its real size, not the placeholder written before the data.
    const rootfs = (await listArchive(file)).find((m) => m.name === 'rootfs.tar.zst');
    assert.equal(rootfs?.size, 5 * 2 ** 20 + 100);
  });

  it("a failed export ends the download with the export's reason, and no archive", async () => {
    await assert.rejects(
      downloadFollowed(slowArchive(path.join(dir, 'failed.tar'), 2 * 2 ** 20)),
      /^Error: Cannot back up guest g: No space left$/,
    );
  });

  it('a body that breaks off before the end frame is refused, not handed over short', async () => {
    await assert.rejects(
      downloadFollowed(slowArchive(path.join(dir, 'cut.tar')), 3 * 2 ** 20),
      /The download (broke off|stopped) before the archive was complete/,
    );
  });
});

/** A body of one data frame, then silence until `endAfterMs` (never, if undefined), then its end frame. */
async function silentThenEnd(o: {
  exportEnded: Promise<unknown>;
  silentMs: number;
  endAfterMs?: number;
}): Promise<Blob> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/vnd.trivisor.archive-frames' });
    res.write(frame(FRAME.data, 0, Buffer.from('abc')));
    if (o.endAfterMs !== undefined) setTimeout(() => res.end(frame(FRAME.end, 3)), o.endAfterMs);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`);
    assert.ok(res.body);
    return await readFollowed(res.body, undefined, { exportEnded: o.exportEnded, silentMs: o.silentMs });
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

describe('a followed download that goes silent (issue 20: never awaited for ever)', () => {
  it('is stopped once nothing came for silentMs after the export ended, with a one-line reason', async () => {
    await assert.rejects(
      silentThenEnd({ exportEnded: Promise.resolve(), silentMs: 200 }),
      /^Error: The download stopped: nothing came for 0\.2 s after the export ended$/,
    );
  });

  it('an export that failed starts the watch too', async () => {
    const failed = Promise.reject(new Error('Cancelled'));
    failed.catch(() => {});
    await assert.rejects(silentThenEnd({ exportEnded: failed, silentMs: 200 }), /nothing came for 0\.2 s/);
  });

  it('is not stopped while the export runs, however long the silence', async () => {
    // The export "ends" after 600 ms, the body 100 ms later: silence of 700 ms in all, 100 after the end.
    const exportEnded = new Promise((r) => setTimeout(r, 600));
    const blob = await silentThenEnd({ exportEnded, silentMs: 300, endAfterMs: 700 });
    assert.equal(Buffer.from(await blob.arrayBuffer()).toString(), 'abc');
  });
});

describe('FollowAssembler', () => {
  const data = (offset: number, bytes: Buffer) => frame(FRAME.data, offset, bytes);

  it('reads frames split at every byte, and applies a rewrite below what was received', async () => {
    const body = Buffer.concat([
      data(0, Buffer.from('aaaa')),
      data(4, Buffer.from('bbbb')),
      data(2, Buffer.from('XY')),
      frame(FRAME.end, 8),
    ]);
    const a = new FollowAssembler();
    for (const byte of body) a.push(Uint8Array.of(byte));
    assert.equal(Buffer.from(await a.finish().arrayBuffer()).toString(), 'aaXYbbbb');
  });

  it('refuses a body without its end frame, a size that does not add up, and a gap', () => {
    const noEnd = new FollowAssembler();
    noEnd.push(data(0, Buffer.from('aaaa')));
    assert.throws(() => noEnd.finish(), /stopped before the archive was complete/);

    const short = new FollowAssembler();
    short.push(Buffer.concat([data(0, Buffer.from('aaaa')), frame(FRAME.end, 6)]));
    assert.throws(() => short.finish(), /ended with 4 of 6 bytes/);

    const gap = new FollowAssembler();
    assert.throws(() => gap.push(data(3, Buffer.from('a'))), /a gap in the archive/);
  });

  it("a failure frame throws the export's one-line reason", () => {
    const a = new FollowAssembler();
    a.push(data(0, Buffer.from('aaaa')));
    assert.throws(
      () => a.push(frame(FRAME.failed, 0, Buffer.from('Operation cancelled'))),
      /^Error: Operation cancelled$/,
    );
  });
});
