import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import {
  ArchiveDamaged,
  ArchiveWriter,
  digestOf,
  listArchive,
  memberChunks,
  readMember,
  tarHeader,
} from './backup-archive.ts';
import { byteProgress } from './byte-progress.ts';
import { readThroughFifo, writeThroughFifo } from './fifo-stream.ts';
import { ZstdFrameEnd } from './zstd-frames.ts';

const run = promisify(execFile);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
async function* chunksOf(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

describe('backup archive (outer tar written and read by the daemon)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-backup-archive-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('GNU tar lists and extracts what the writer wrote; the reader finds each member and its digest', async () => {
    const payload = randomBytes(3 * 2 ** 20 + 123);
    const file = path.join(dir, 'a.tar');
    const w = await ArchiveWriter.create(file);
    const digest = await w.addStream('rootfs.tar.zst', chunksOf(payload, 65_536));
    await w.addDirectory('snapshots');
    await w.addStream('snapshots/s0.tar.zst', chunksOf(Buffer.from('snap'), 2));
    await w.addBuffer('manifest.json', Buffer.from('{"x":1}\n'));
    const size = await w.finish();
    assert.equal((await readFile(file)).length, size);
    assert.deepEqual(digest, { sha256: sha(payload), sizeBytes: payload.length });
    const listing = execFileSync('tar', ['-tf', file], { encoding: 'utf8' });
    assert.equal(listing, 'rootfs.tar.zst\nsnapshots/\nsnapshots/s0.tar.zst\nmanifest.json\n');
    execFileSync('mkdir', ['-p', path.join(dir, 'x')]);
    execFileSync('tar', ['-C', path.join(dir, 'x'), '-xf', file]);
    assert.ok((await readFile(path.join(dir, 'x', 'rootfs.tar.zst'))).equals(payload));
    const members = await listArchive(file);
    assert.deepEqual(
      members.map((m) => [m.name, m.type, m.size]),
      [
        ['rootfs.tar.zst', 'file', payload.length],
        ['snapshots', 'directory', 0],
        ['snapshots/s0.tar.zst', 'file', 4],
        ['manifest.json', 'file', 8],
      ],
    );
    const [rootfs, , , manifest] = members;
    assert.ok(rootfs && manifest);
    assert.equal((await digestOf(file, rootfs)).sha256, sha(payload));
    assert.equal((await readMember(file, manifest, 100)).toString(), '{"x":1}\n');
    await assert.rejects(readMember(file, manifest, 4), ArchiveDamaged);
    const parts: Buffer[] = [];
    // A chunk is valid until the next is asked for (one buffer, reused): kept as copies.
    for await (const c of memberChunks(file, rootfs)) parts.push(Buffer.from(c));
    assert.ok(Buffer.concat(parts).equals(payload));
  });

  test('a payload of many write batches is written and hashed whole, the batch buffers reused in turn', async () => {
    // 4 MiB batches, two buffers used in turn: 13 MiB and a bit in 64 KiB chunks fills each several
    // times, so a hash or a write that read a buffer after its refill would differ.
    const payload = randomBytes(13 * 2 ** 20 + 4097);
    const file = path.join(dir, 'batches.tar');
    const w = await ArchiveWriter.create(file);
    const digest = await w.addStream('rootfs.tar.zst', chunksOf(payload, 65_536));
    await w.finish();
    assert.deepEqual(digest, { sha256: sha(payload), sizeBytes: payload.length });
    const [rootfs] = await listArchive(file);
    assert.ok(rootfs);
    const parts: Buffer[] = [];
    for await (const c of memberChunks(file, rootfs)) parts.push(Buffer.from(c));
    assert.ok(Buffer.concat(parts).equals(payload));
    assert.deepEqual(await digestOf(file, rootfs), { sha256: sha(payload), sizeBytes: payload.length });
  });

  test('a source that fails mid-payload fails the member, and the writer can be abandoned', async () => {
    const file = path.join(dir, 'broken.tar');
    const w = await ArchiveWriter.create(file);
    async function* failing(): AsyncGenerator<Buffer> {
      yield randomBytes(5 * 2 ** 20);
      throw new Error('the producer failed');
    }
    await assert.rejects(w.addStream('rootfs.tar.zst', failing()), /the producer failed/);
    await w.abandon();
  });

  test('the reader reads archives GNU tar made (manifest first, a directory entry)', async () => {
    const src = path.join(dir, 'gnu');
    execFileSync('mkdir', ['-p', path.join(src, 'snapshots')]);
    await writeFile(path.join(src, 'manifest.json'), '{}');
    await writeFile(path.join(src, 'rootfs.tar.zst'), randomBytes(20_000));
    await writeFile(path.join(src, 'snapshots', 'a.tar.zst'), 'a');
    const file = path.join(dir, 'gnu.tar');
    execFileSync('tar', ['-C', src, '-cf', file, 'manifest.json', 'rootfs.tar.zst', 'snapshots']);
    const names = (await listArchive(file)).map((m) => `${m.type}:${m.name}:${m.size}`);
    assert.deepEqual(names, [
      'file:manifest.json:2',
      'file:rootfs.tar.zst:20000',
      'directory:snapshots:0',
      'file:snapshots/a.tar.zst:1',
    ]);
  });

  test('a truncated archive, a damaged header and a file that is no tar are refused as damaged', async () => {
    const file = path.join(dir, 'b.tar');
    const w = await ArchiveWriter.create(file);
    await w.addStream('rootfs.tar.zst', chunksOf(randomBytes(100_000), 4096));
    await w.addBuffer('manifest.json', Buffer.from('{}'));
    await w.finish();
    const whole = await readFile(file);
    const cut = path.join(dir, 'cut.tar');
    await writeFile(cut, whole);
    await truncate(cut, 50_000);
    await assert.rejects(listArchive(cut), { message: /runs past the end/ });
    await writeFile(cut, whole.subarray(0, whole.length - 1024));
    await assert.rejects(listArchive(cut), { message: /ends before the end-of-archive block/ });
    const bad = Buffer.from(whole);
    bad.writeUInt8(bad.readUInt8(10) ^ 1, 10);
    await writeFile(cut, bad);
    await assert.rejects(listArchive(cut), { message: /fails its checksum/ });
    await writeFile(cut, 'not an archive at all');
    await assert.rejects(listArchive(cut), ArchiveDamaged);
  });

  test('sizes of 8 GiB and more go in the base-256 field, which the reader reads back', () => {
    const h = tarHeader('big', 'file', 9 * 2 ** 30, 0);
    assert.equal(h[124], 0x80);
    assert.equal(h.readBigUInt64BE(128), BigInt(9 * 2 ** 30));
  });

  test('a command writing a FIFO streams into the consumer; one that fails before opening it does not hang', async () => {
    execFileSync('mkdir', ['-p', path.join(dir, 'src')]);
    const data = randomBytes(2 * 2 ** 20);
    await writeFile(path.join(dir, 'src', 'd'), data);
    execFileSync('mkfifo', [path.join(dir, 'f1')]);
    const got = await readThroughFifo(
      path.join(dir, 'f1'),
      (p) => run('cp', [path.join(dir, 'src', 'd'), p]),
      async (chunks) => {
        const parts: Buffer[] = [];
        // A chunk is valid until the next is asked for (one buffer, reused): kept as copies.
        for await (const c of chunks) parts.push(Buffer.from(c));
        return Buffer.concat(parts);
      },
    );
    assert.ok(got.equals(data));
    execFileSync('mkfifo', [path.join(dir, 'f2')]);
    await assert.rejects(
      readThroughFifo(
        path.join(dir, 'f2'),
        async () => {
          throw new Error('failed before opening');
        },
        async (chunks) => {
          for await (const _ of chunks);
        },
      ),
      { message: 'failed before opening' },
    );
  });

  test('feeding a command through a FIFO: every byte is observed even when the command stops reading', async () => {
    const data = randomBytes(3 * 2 ** 20);
    execFileSync('mkfifo', [path.join(dir, 'f3')]);
    let seen = 0;
    await writeThroughFifo(
      path.join(dir, 'f3'),
      (p) => run('cp', [p, path.join(dir, 'copy')]),
      chunksOf(data, 100_000),
      (c) => {
        seen += c.length;
      },
    );
    assert.ok((await readFile(path.join(dir, 'copy'))).equals(data));
    assert.equal(seen, data.length);
    execFileSync('mkfifo', [path.join(dir, 'f4')]);
    seen = 0;
    await assert.rejects(
      writeThroughFifo(
        path.join(dir, 'f4'),
        (p) => run('head', ['-c', '10', p]).then(() => Promise.reject(new Error('stopped early'))),
        chunksOf(data, 100_000),
        (c) => {
          seen += c.length;
        },
      ),
      { message: 'stopped early' },
    );
    assert.equal(seen, data.length);
    execFileSync('mkfifo', [path.join(dir, 'f5')]);
    await assert.rejects(
      writeThroughFifo(
        path.join(dir, 'f5'),
        async () => {
          throw new Error('never opened it');
        },
        chunksOf(data, 100_000),
        () => {},
      ),
      { message: 'never opened it' },
    );
  });

  test('the zeros tar pads a zstd stream with are dropped; the frames themselves are kept, whatever the chunking', async () => {
    const src = path.join(dir, 'z.src');
    await writeFile(src, Buffer.concat([randomBytes(100_000), Buffer.alloc(100_000, 7)]));
    const zst = execFileSync('zstd', ['-q', '-c', '-T0', src]);
    const padded = Buffer.concat([zst, zst, Buffer.alloc(10_240 - ((2 * zst.length) % 10_240))]);
    for (const size of [3, 1000, 1 << 20]) {
      const frames = new ZstdFrameEnd();
      const out: Buffer[] = [];
      for await (const c of chunksOf(padded, size)) out.push(frames.take(c));
      frames.end();
      assert.ok(Buffer.concat(out).equals(Buffer.concat([zst, zst])), `chunks of ${size}`);
    }
    const cut = new ZstdFrameEnd();
    cut.take(zst.subarray(0, zst.length - 3));
    assert.throws(() => cut.end(), /ends inside a frame/);
    assert.throws(() => new ZstdFrameEnd().take(Buffer.from('not zstd')), /not zstd frames/);
    const trailing = new ZstdFrameEnd();
    assert.throws(
      () => trailing.take(Buffer.concat([zst, Buffer.alloc(8), Buffer.from([1])])),
      /other than zeros/,
    );
  });

  test('progress tells bytes, rate and time left', () => {
    const told: Array<[number | null, string]> = [];
    let t = 0;
    const p = byteProgress((percent, text) => told.push([percent, text]), {
      total: 100 * 2 ** 20,
      now: () => t,
    });
    p.stage('root file system');
    t = 1000;
    p.add(25 * 2 ** 20);
    assert.deepEqual(told.at(-1), [25, 'root file system: 25MiB of 100MiB, 25MiB/s, 3s left']);
    const open: string[] = [];
    const q = byteProgress((_, text) => open.push(text), { now: () => t });
    q.stage('snapshot s0');
    t = 3000;
    q.add(2 ** 30);
    assert.equal(open.at(-1), 'snapshot s0: 1GiB, 512MiB/s');
  });
});
