import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hostRunner } from '../../host/runner.ts';
import { planRawDisk, writeDiskArchive } from './pvm-disk-stream.ts';
import { DiskArchiveRefused, unpackDiskArchive } from './pvm-disk-unpack.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const runner = hostRunner();

describe('unpackDiskArchive: a disk member of a (zstd) tar written by the daemon in large writes', () => {
  let dir: string;
  let n = 0;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pvm-unpack-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A fresh directory. */
  const fresh = async () => {
    const d = path.join(dir, `d${n++}`);
    await mkdir(d);
    return d;
  };
  /** Unpacks `member` of `archive` into a fresh work directory; answers the file's path and the result. */
  const unpack = async (archive: string, member = 'disk.img', signal?: AbortSignal) => {
    const work = await fresh();
    const target = path.join(work, 'out.img');
    const result = await unpackDiskArchive(runner, archive, { member, target, work, signal });
    // The FIFO is gone; only the disk is left.
    assert.deepEqual(await readdir(work), ['out.img']);
    return { target, result };
  };
  /** A sparse file of `size` bytes with random data at `at` (offset, length pairs). */
  const sparseFile = async (file: string, size: number, at: ReadonlyArray<readonly [number, number]>) => {
    const h = await open(file, 'w');
    for (const [offset, length] of at) await h.write(randomBytes(length), 0, length, offset);
    await h.truncate(size);
    await h.close();
  };
  const refused = (p: Promise<unknown>, why: RegExp) =>
    assert.rejects(p, (e: unknown) => e instanceof DiskArchiveRefused && why.test(e.message));

  test('a GNU sparse member of tar --sparse, its map in extension blocks, comes back byte for byte with its holes unwritten', async () => {
    const src = await fresh();
    // 30 data regions (the header holds 4, each extension block 21), the file ending in a hole.
    const regions = Array.from({ length: 30 }, (_, i) => [i * 256 * KiB + 512, 4 * KiB + i] as const);
    await sparseFile(path.join(src, 'disk.img'), 9 * MiB, regions);
    // Other members before and after it are skipped: a directory, a file, a name longer than 100 bytes.
    await writeFile(path.join(src, 'other'), randomBytes(3000));
    await writeFile(path.join(src, 'x'.repeat(120)), 'long');
    const archive = path.join(dir, 'sparse.tar.zst');
    await runner.run([
      'tar',
      '--zstd',
      '--sparse',
      '-C',
      src,
      '-cf',
      archive,
      'other',
      'x'.repeat(120),
      'disk.img',
      '.',
    ]);
    const { target, result } = await unpack(archive);
    assert.ok((await readFile(target)).equals(await readFile(path.join(src, 'disk.img'))));
    assert.equal((await stat(target)).size, 9 * MiB);
    assert.equal(result.sizeBytes, 9 * MiB);
    assert.equal(result.regions, 30);
    // tar maps data by the file system's blocks: each region rounded to whole 4 KiB blocks.
    assert.ok(
      result.storedBytes >= regions.reduce((sum, [, l]) => sum + l, 0) && result.storedBytes < 300 * KiB,
    );
    // 30 regions of about 4 KiB: a few pages each, not the 9 MiB.
    assert.ok(
      (await stat(target)).blocks * 512 < 1 * MiB,
      `allocates ${(await stat(target)).blocks * 512} B`,
    );
  });

  test('a plain member, an uncompressed tar, and a disk of 10 GiB (base-256 numbers) of the streamed export', async () => {
    const src = await fresh();
    const plain = randomBytes(5 * MiB + 100);
    await writeFile(path.join(src, 'disk.img'), plain);
    const tar = path.join(dir, 'plain.tar');
    await runner.run(['tar', '-C', src, '-cf', tar, 'disk.img']);
    assert.ok((await readFile((await unpack(tar)).target)).equals(plain));

    const big = path.join(src, 'big.img');
    const data = randomBytes(6 * MiB + 3);
    const at = 9 * 1024 * MiB + 4096;
    await sparseFile(big, 10 * 1024 * MiB, []);
    const h = await open(big, 'r+');
    await h.write(data, 0, data.length, at);
    await h.close();
    const archive = path.join(dir, 'big.tar.zst');
    await writeDiskArchive(runner, await planRawDisk(runner, big), { tarPath: archive, name: 'disk.img' });
    await rm(big);
    const { target } = await unpack(archive);
    assert.equal((await stat(target)).size, 10 * 1024 * MiB);
    const got = Buffer.alloc(data.length + 8192);
    const r = await open(target, 'r');
    await r.read(got, 0, got.length, at - 4096);
    await r.close();
    assert.ok(got.subarray(4096, 4096 + data.length).equals(data));
    assert.ok(got.subarray(0, 4096).every((b) => b === 0));
    assert.ok((await stat(target)).blocks * 512 < 8 * MiB);
    await rm(target);
  });

  test('refuses an archive without the member, with it as a link, twice, in pax sparse format, cut short, damaged or not a tar', async () => {
    const src = await fresh();
    await sparseFile(path.join(src, 'disk.img'), 4 * MiB, [
      [0, 64 * KiB],
      [2 * MiB, 512 * KiB],
    ]);
    const good = path.join(dir, 'good.tar.zst');
    await runner.run(['tar', '--zstd', '--sparse', '-C', src, '-cf', good, 'disk.img']);
    await refused(unpack(good, 'root.img'), /holds no root\.img/);

    const linked = await fresh();
    await symlink('/etc/passwd', path.join(linked, 'disk.img'));
    const link = path.join(dir, 'link.tar.zst');
    await runner.run(['tar', '--zstd', '-C', linked, '-cf', link, 'disk.img']);
    await refused(unpack(link), /not a regular file/);

    const twice = path.join(dir, 'twice.tar');
    // Appended by a second tar: one command would store the second as a hard link to the first.
    await runner.run(['tar', '-C', src, '-cf', twice, 'disk.img']);
    await runner.run(['tar', '-C', src, '-rf', twice, 'disk.img']);
    await refused(unpack(twice), /twice/);

    const pax = path.join(dir, 'pax.tar.zst');
    await runner.run(['tar', '--zstd', '--sparse', '--format=pax', '-C', src, '-cf', pax, 'disk.img']);
    await refused(unpack(pax), /pax/);

    const whole = await readFile(good);
    for (const [name, bytes] of [
      ['half', whole.subarray(0, Math.floor(whole.length / 2))],
      ['no end', whole.subarray(0, whole.length - 5)],
      ['one byte changed', Buffer.from(whole).fill((whole[200] ?? 0) ^ 0xff, 200, 201)],
      ['not a tar', randomBytes(4096)],
    ] as const) {
      const file = path.join(dir, `bad-${n++}`);
      await writeFile(file, bytes);
      await assert.rejects(unpack(file), DiskArchiveRefused, name);
    }
    // A plain tar cut inside the member's data, and one whose header's checksum fails.
    const plainTar = path.join(dir, 'plain2.tar');
    await runner.run(['tar', '-C', src, '-cf', plainTar, 'disk.img']);
    const plain = await readFile(plainTar);
    const cut = path.join(dir, 'cut.tar');
    await writeFile(cut, plain.subarray(0, 100 * KiB));
    await refused(unpack(cut), /ends in the middle/);
    const badSum = path.join(dir, 'badsum.tar');
    await writeFile(badSum, Buffer.from(plain).fill(0x41, 0, 1));
    await refused(unpack(badSum), /checksum/);
  });

  test('an abort kills zstd and rejects with the reason, leaving no FIFO', async () => {
    const src = await fresh();
    await writeFile(path.join(src, 'disk.img'), randomBytes(32 * MiB));
    await truncate(path.join(src, 'disk.img'), 64 * MiB);
    const archive = path.join(dir, 'abort.tar.zst');
    await runner.run(['tar', '--zstd', '--sparse', '-C', src, '-cf', archive, 'disk.img']);
    const work = await fresh();
    const controller = new AbortController();
    controller.abort(new Error('stop now'));
    await assert.rejects(
      unpackDiskArchive(runner, archive, {
        member: 'disk.img',
        target: path.join(work, 'out.img'),
        work,
        signal: controller.signal,
      }),
      /stop now/,
    );
    const late = new AbortController();
    const running = unpackDiskArchive(runner, archive, {
      member: 'disk.img',
      target: path.join(work, 'late.img'),
      work,
      signal: late.signal,
    });
    setTimeout(() => late.abort(new Error('stopped later')), 20);
    await assert.rejects(running, /stopped later/);
    assert.ok(!(await readdir(work)).includes('.unpack-fifo'));
  });
});
