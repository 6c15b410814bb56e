import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { hostRunner } from '../host/runner.ts';
import { ArchiveDamaged, ArchiveWriter } from '../storage/backup-archive.ts';
import { feedStreamedPayload, GuardedUpload, readArchiveHead, TarStreamReader } from './archive-stream.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'trivisor-archive-stream-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const index = {
  format: 'trivisor-backup/1',
  guest: { name: 'g1', model: 'ct', config: {}, createdAt: '2026-12-06T00:00:00Z' },
  image: { fingerprint: 'ab', alias: 'busybox', description: '' },
  snapshots: [],
};

/** An archive as an export writes it (with or without its index), and its bytes. */
async function archive(
  name: string,
  options: { index: boolean; incremental?: boolean },
): Promise<{ bytes: Buffer; payload: Buffer }> {
  const file = path.join(dir, name);
  const payload = randomBytes(3 * 2 ** 20 + 333);
  const w = await ArchiveWriter.create(file);
  if (options.index) {
    const written = options.incremental ? { ...index, incremental: true } : index;
    await w.addBuffer('index.json', Buffer.from(JSON.stringify(written)));
  }
  await w.addStream(
    'rootfs.tar.zst',
    (async function* () {
      yield payload.subarray(0, 1000);
      yield payload.subarray(1000);
    })(),
  );
  await w.addDirectory('snapshots');
  await w.addBuffer('manifest.json', Buffer.from('{"format":"trivisor-backup/1"}'));
  await w.finish();
  return { bytes: readFileSync(file), payload };
}

/** The bytes in chunks of `size` (an upload's socket reads), each a copy of its own. */
async function* chunked(bytes: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < bytes.length; at += size) yield Buffer.from(bytes.subarray(at, at + size));
}

async function collect(chunks: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of chunks) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

describe('reading an uploaded archive as it arrives', () => {
  for (const size of [509, 4097, 65_536]) {
    it(`reads the index, then each member with its bytes, in chunks of ${size} bytes`, async () => {
      const { bytes, payload } = await archive(`a-${size}.tar`, { index: true });
      const head = await readArchiveHead(chunked(bytes, size));
      assert.ok(head.index);
      assert.deepEqual(head.index, index);
      const { reader } = head;
      const rootfs = await reader.next();
      assert.deepEqual(rootfs, { name: 'rootfs.tar.zst', type: 'file', size: payload.length });
      assert.ok((await collect(reader.data())).equals(payload));
      assert.deepEqual(await reader.next(), { name: 'snapshots', type: 'directory', size: 0 });
      const manifest = await reader.next();
      assert.equal(manifest?.name, 'manifest.json');
      // Not read: the next member skips it.
      assert.equal(await reader.next(), undefined);
      await reader.drain();
    });
  }

  it('hands an archive without an index back whole, byte for byte, for the file path', async () => {
    const { bytes } = await archive('old.tar', { index: false });
    const head = await readArchiveHead(chunked(bytes, 100));
    assert.equal(head.index, undefined);
    assert.ok(!head.index && (await collect(head.all)).equals(bytes));
  });

  it('hands an incremental link back whole, index and all, for the file path', async () => {
    const { bytes } = await archive('incremental.tar', { index: true, incremental: true });
    for (const size of [100, 65_536]) {
      const head = await readArchiveHead(chunked(bytes, size));
      assert.equal(head.index, undefined);
      assert.ok(!head.index && (await collect(head.all)).equals(bytes));
    }
  });

  it('with release, gives back each chunk of a streamed upload once read, and reads the same bytes', async () => {
    const { bytes, payload } = await archive('release.tar', { index: true });
    for (const size of [4097, 65_536]) {
      const given: Buffer[] = [];
      // Each chunk a buffer of its own size, as Node's HTTP parser hands a body over.
      const source = (async function* () {
        for (let at = 0; at < bytes.length; at += size) {
          const chunk = Buffer.allocUnsafeSlow(Math.min(size, bytes.length - at));
          bytes.copy(chunk, 0, at, at + chunk.length);
          given.push(chunk);
          yield chunk;
        }
      })();
      const head = await readArchiveHead(source, { release: true });
      assert.ok(head.index);
      const { reader } = head;
      await reader.next();
      // A chunk handed out stays whole until the next is asked for.
      const parts: Buffer[] = [];
      for await (const chunk of reader.data()) {
        const copy = Buffer.from(chunk);
        await Promise.resolve();
        assert.ok(chunk.equals(copy));
        parts.push(copy);
      }
      assert.ok(Buffer.concat(parts).equals(payload));
      await reader.next();
      await reader.next();
      assert.equal(await reader.next(), undefined);
      await reader.drain();
      // The chunks read before the index was known may be handed back whole: they are not released.
      const released = given.filter((c) => (c.buffer as ArrayBuffer).detached).length;
      const beforeIndex = Math.ceil(1024 / size) + 1;
      assert.ok(released >= given.length - beforeIndex - 2, `${released} of ${given.length} released`);
      assert.ok(given.slice(0, Math.ceil(1024 / size)).every((c) => !(c.buffer as ArrayBuffer).detached));
    }
  });

  it('with release, hands an incremental link back whole: nothing read for its index is released', async () => {
    const { bytes } = await archive('incremental-release.tar', { index: true, incremental: true });
    const head = await readArchiveHead(chunked(bytes, 4097), { release: true });
    assert.ok(!head.index && (await collect(head.all)).equals(bytes));
  });

  it('hands back what is not a tar at all, and an empty upload, unchanged', async () => {
    const junk = Buffer.from('not an archive at all');
    const head = await readArchiveHead(chunked(junk, 5));
    assert.ok(!head.index && (await collect(head.all)).equals(junk));
    const empty = await readArchiveHead(chunked(Buffer.alloc(0), 5));
    assert.ok(!empty.index && (await collect(empty.all)).length === 0);
  });

  it('refuses an upload cut short inside a member and one without the end-of-archive block', async () => {
    const { bytes } = await archive('cut.tar', { index: true });
    const cut = await readArchiveHead(chunked(bytes.subarray(0, 2 ** 20), 4096));
    assert.ok(cut.index);
    await cut.reader.next();
    await assert.rejects(collect(cut.reader.data()), ArchiveDamaged);
    const noEnd = new TarStreamReader(chunked(bytes.subarray(0, bytes.length - 1024), 4096));
    await noEnd.next();
    await noEnd.next();
    await noEnd.next();
    await noEnd.next();
    await assert.rejects(noEnd.next(), /ends before the end-of-archive block/);
  });

  it('refuses a damaged header', async () => {
    const { bytes } = await archive('damaged.tar', { index: true });
    const copy = Buffer.from(bytes);
    // The rootfs member's header: after the index's header and its one block of data.
    copy[1024 + 10] = (copy[1024 + 10] ?? 0) ^ 0xff;
    const head = await readArchiveHead(chunked(copy, 4096));
    assert.ok(head.index);
    await assert.rejects(head.reader.next(), /fails its checksum/);
  });
});

describe('feeding a streamed payload to its consumer', () => {
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

  it('hands the consumer every byte through its FIFO and hashes them on the way', async () => {
    const { bytes, payload } = await archive('feed.tar', { index: true });
    const head = await readArchiveHead(chunked(bytes, 65_536));
    assert.ok(head.index);
    await head.reader.next();
    let got = Buffer.alloc(0);
    const fed = await feedStreamedPayload({
      reader: head.reader,
      rel: 'rootfs.tar.zst',
      work: dir,
      runner: hostRunner(),
      signal: new AbortController().signal,
      consume: async (fifo) => {
        got = await readFile(fifo);
      },
    });
    assert.equal(fed.failure, undefined);
    assert.deepEqual(fed.digest, { sha256: sha(payload), sizeBytes: payload.length });
    assert.ok(got.equals(payload));
  });

  it('reads and hashes the rest of the payload when its consumer fails, and says how it failed', async () => {
    const { bytes, payload } = await archive('feed-fail.tar', { index: true });
    const head = await readArchiveHead(chunked(bytes, 65_536));
    assert.ok(head.index);
    await head.reader.next();
    const fed = await feedStreamedPayload({
      reader: head.reader,
      rel: 'rootfs.tar.zst',
      work: dir,
      runner: hostRunner(),
      signal: new AbortController().signal,
      consume: async (fifo) => {
        const f = await open(fifo, 'r');
        await f.read(Buffer.alloc(1000), 0, 1000, null);
        await f.close();
        throw new Error('tar: Unexpected EOF');
      },
    });
    assert.match(String(fed.failure), /Unexpected EOF/);
    assert.deepEqual(fed.digest, { sha256: sha(payload), sizeBytes: payload.length });
    assert.equal((await head.reader.next())?.type, 'directory');
  });
});

describe('the batches of a streamed payload (decision 0106)', () => {
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const BATCH = 256 << 10;

  it('the upload goes on into the second batch while the first is being written, every byte intact', async () => {
    const { bytes, payload } = await archive('batches.tar', { index: true });
    let handedOut = 0;
    const counted = async function* () {
      for await (const chunk of chunked(bytes, 65_536)) {
        handedOut += chunk.length;
        yield chunk;
      }
    };
    // Released once read: a batch that still pointed into a chunk given back would read nothing.
    const head = await readArchiveHead(counted(), { release: true });
    assert.ok(head.index);
    await head.reader.next();
    let whileWriting = 0;
    let got = Buffer.alloc(0);
    const fed = await feedStreamedPayload({
      reader: head.reader,
      rel: 'rootfs.tar.zst',
      work: dir,
      runner: hostRunner(),
      signal: new AbortController().signal,
      batchBytes: BATCH,
      consume: async (fifo) => {
        const f = await open(fifo, 'r');
        const parts: Buffer[] = [];
        const first = Buffer.alloc(1000);
        const { bytesRead } = await f.read(first, 0, 1000, null);
        parts.push(first.subarray(0, bytesRead));
        // The first batch's write waits on this reader (a pipe holds 64 KiB): meanwhile the upload
        // fills the other buffer.
        await new Promise((r) => setTimeout(r, 200));
        whileWriting = handedOut;
        for (;;) {
          const b = Buffer.alloc(100_000);
          const r = await f.read(b, 0, b.length, null);
          if (r.bytesRead === 0) break;
          parts.push(b.subarray(0, r.bytesRead));
        }
        await f.close();
        got = Buffer.concat(parts);
      },
    });
    assert.equal(fed.failure, undefined);
    assert.ok(got.equals(payload), 'the consumer read the payload');
    assert.deepEqual(fed.digest, { sha256: sha(payload), sizeBytes: payload.length });
    // Two batches (and the index's and headers' blocks), not one, had come from the upload.
    assert.ok(
      whileWriting >= 2 * BATCH,
      `${whileWriting} bytes read from the upload while a batch was written`,
    );
    assert.ok(whileWriting <= 2 * BATCH + 3 * 65_536, `${whileWriting} bytes read ahead`);
    assert.equal((await head.reader.next())?.type, 'directory');
  });

  it('a cancel ends the feed without waiting for upload bytes that do not come', async () => {
    const { bytes } = await archive('stalled.tar', { index: true });
    let unstall: () => void = () => {};
    const stalled = new Promise<void>((r) => {
      unstall = r;
    });
    // The index, the payload's header and two and a half batches of it, then nothing until the test ends.
    const upload = async function* () {
      yield* chunked(bytes.subarray(0, 1536 + 2.5 * BATCH), 65_536);
      await stalled;
    };
    const head = await readArchiveHead(upload());
    assert.ok(head.index);
    await head.reader.next();
    const abort = new AbortController();
    try {
      await assert.rejects(
        feedStreamedPayload({
          reader: head.reader,
          rel: 'rootfs.tar.zst',
          work: dir,
          runner: hostRunner(),
          signal: abort.signal,
          batchBytes: BATCH,
          consume: async (fifo) => {
            const f = await open(fifo, 'r');
            const b = Buffer.alloc(65_536);
            for (;;) {
              const r = await f.read(b, 0, b.length, null);
              if (r.bytesRead === 0) break;
              // Cancelled at once: the second batch, filled meanwhile, is the one that sees it,
              // while the third is being filled from an upload that stalls.
              abort.abort();
            }
            await f.close();
          },
        }),
        /The import was cancelled/,
      );
    } finally {
      unstall();
    }
  });

  it('a cancel while the upload stalls with no batch complete: the feed and the reader reject at once', async () => {
    const { bytes } = await archive('stalled-early.tar', { index: true });
    let unstall: () => void = () => {};
    const stalled = new Promise<void>((r) => {
      unstall = r;
    });
    let handedOut = 0;
    const THIRD = Math.floor(BATCH / 3);
    // The index, the payload's header and a third of a batch, then nothing until the test ends.
    const upload = async function* () {
      for await (const chunk of chunked(bytes.subarray(0, 1536 + THIRD), 65_536)) {
        handedOut += chunk.length;
        yield chunk;
      }
      await stalled;
    };
    const head = await readArchiveHead(upload());
    assert.ok(head.index);
    await head.reader.next();
    const abort = new AbortController();
    head.reader.stopOn(abort.signal);
    let consumerEnded = false;
    const feeding = feedStreamedPayload({
      reader: head.reader,
      rel: 'rootfs.tar.zst',
      work: dir,
      runner: hostRunner(),
      signal: abort.signal,
      batchBytes: BATCH,
      consume: async (fifo) => {
        const f = await open(fifo, 'r');
        const b = Buffer.alloc(65_536);
        while ((await f.read(b, 0, b.length, null)).bytesRead > 0);
        await f.close();
        consumerEnded = true;
      },
    });
    let cancelledAt = 0;
    const outcome = feeding.then(
      () => 'resolved',
      (e: unknown) => ({ error: String(e), afterMs: Date.now() - cancelledAt }),
    );
    try {
      // Everything sent has been read, and the first batch waits on the upload.
      while (handedOut < 1536 + THIRD) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 50));
      cancelledAt = Date.now();
      abort.abort();
      const got = await Promise.race([
        outcome,
        new Promise((r) => setTimeout(() => r('still waiting after 5 s'), 5000).unref()),
      ]);
      assert.equal(typeof got, 'object', String(got));
      const { error, afterMs } = got as { error: string; afterMs: number };
      assert.match(error, /The import was cancelled/);
      assert.ok(afterMs < 1000, `rejected ${afterMs} ms after the cancel`);
      assert.ok(consumerEnded, 'the FIFO was closed: its reader saw the end');
      // The reader stays stopped, as a cancel, not as an archive cut short.
      await assert.rejects(head.reader.next(), /The import was cancelled/);
    } finally {
      unstall();
    }
  });
});

describe('an upload gone silent (decision 0106, amended)', () => {
  it('fails a read that waits longer than the idle cutoff, in the head or after it', {
    timeout: 20_000,
  }, async () => {
    const { bytes } = await archive('silent.tar', { index: true });
    let unstall: () => void = () => {};
    const stalled = new Promise<void>((r) => {
      unstall = r;
    });
    const cutAt = (n: number) =>
      async function* () {
        yield* chunked(bytes.subarray(0, n), 4096);
        await stalled;
      };
    try {
      // Within the index: the head is never read.
      const started = Date.now();
      await assert.rejects(
        readArchiveHead(new GuardedUpload(cutAt(700)(), 100)),
        /^TrivisorError\(InvalidArgument\): The upload stopped: no bytes for 100 ms; send the archive again$/,
      );
      assert.ok(Date.now() - started < 2000);
      // Within the payload.
      const head = await readArchiveHead(new GuardedUpload(cutAt(1536 + 10_000)(), 100));
      assert.ok(head.index);
      await head.reader.next();
      await assert.rejects(collect(head.reader.data()), /The upload stopped: no bytes for 100 ms/);
    } finally {
      unstall();
    }
  });

  it('does not count the time a slow consumer takes: only the wait for the client', {
    timeout: 20_000,
  }, async () => {
    const { bytes, payload } = await archive('slow-consumer.tar', { index: true });
    const head = await readArchiveHead(new GuardedUpload(chunked(bytes, 1 << 20), 100));
    assert.ok(head.index);
    await head.reader.next();
    const parts: Buffer[] = [];
    for await (const chunk of head.reader.data()) {
      parts.push(Buffer.from(chunk));
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.ok(Buffer.concat(parts).equals(payload));
    assert.equal((await head.reader.next())?.type, 'directory');
  });
});
