import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../../../test/leftovers.ts';
import { hostRunner } from '../../host/runner.ts';
import { planRawDisk, writeDiskArchive } from './pvm-disk-stream.ts';
import { DiskUnpackFailed, unpackDiskArchive } from './pvm-disk-unpack.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const runner = hostRunner();

describe('unpackDiskArchive (zstd -d | the helper process)', () => {
  // A test run's directory (test/leftovers.ts): a zstd or helper left by a killed run names it and is swept.
  let dir = '';
  before(async () => {
    dir = await makeRunDir('pvm-unpack');
  });
  after(async () => {
    const { left } = await removeRunDir(dir);
    assert.deepEqual(left, [], 'the suite left nothing behind');
  });

  const allocated = async (file: string) => (await stat(file)).blocks * 512;
  /** A sparse file of `sizeBytes` with random data at each of `at` (`length` bytes each). */
  const sparseFile = async (name: string, sizeBytes: number, at: number[], length: number) => {
    const file = path.join(dir, name);
    const h = await open(file, 'w');
    for (const a of at) await h.write(randomBytes(length), 0, length, a);
    await h.truncate(sizeBytes);
    await h.close();
    return file;
  };
  let n = 0;
  const unpack = async (archive: string, member = 'disk.img', signal?: AbortSignal) => {
    const target = path.join(dir, `out-${n++}.img`);
    await unpackDiskArchive(runner, archive, { member, target, ...(signal && { signal }) });
    return target;
  };
  const refusal = async (archive: string, message: RegExp, member = 'disk.img') => {
    const target = path.join(dir, `out-${n++}.img`);
    await assert.rejects(unpackDiskArchive(runner, archive, { member, target }), (e: unknown) => {
      assert.ok(e instanceof DiskUnpackFailed, String(e));
      assert.equal(e.refused, true, e.message);
      assert.match(e.message, message);
      return true;
    });
    await rm(target, { force: true });
  };

  test('a GNU tar --sparse member with extension blocks comes back byte for byte, its holes unwritten', async () => {
    // 40 data regions of 40 KiB, 1 MiB apart: the header's 4 map entries and two extension blocks.
    const src = await sparseFile(
      'disk.img',
      48 * MiB,
      Array.from({ length: 40 }, (_, i) => i * MiB + 4096),
      40 * KiB,
    );
    const tar = path.join(dir, 'gnu.tar.zst');
    await runner.run(['tar', '--sparse', '--zstd', '-C', dir, '-cf', tar, 'disk.img']);
    const back = await unpack(tar);
    assert.equal((await stat(back)).size, 48 * MiB);
    assert.ok((await readFile(back)).equals(await readFile(src)));
    assert.ok((await allocated(back)) <= (await allocated(src)) + 64 * KiB, `${await allocated(back)} B`);
  });

  test('a member written by the export, past 8 GiB (base-256 numbers), has its data in place and its size', async () => {
    const data = randomBytes(3 * MiB + 512);
    const at = 9 * 1024 * MiB - 4096;
    const src = path.join(dir, 'big.img');
    const h = await open(src, 'w');
    await h.write(data, 0, data.length, at);
    await h.write(data, 0, 8192, 0);
    await h.truncate(10 * 1024 * MiB);
    await h.close();
    const tar = path.join(dir, 'big.tar.zst');
    await writeDiskArchive(runner, await planRawDisk(runner, src), { tarPath: tar, name: 'disk.img' });
    await rm(src);
    const back = await unpack(tar);
    assert.equal((await stat(back)).size, 10 * 1024 * MiB);
    const r = await open(back, 'r');
    const got = Buffer.alloc(data.length + 8192);
    await r.read(got, 0, got.length, at - 4096);
    const first = Buffer.alloc(8192);
    await r.read(first, 0, 8192, 0);
    await r.close();
    assert.ok(got.subarray(4096, 4096 + data.length).equals(data));
    assert.ok(got.subarray(0, 4096).every((b) => b === 0));
    assert.ok(first.equals(data.subarray(0, 8192)));
    assert.ok((await allocated(back)) < 8 * MiB, `${await allocated(back)} B`);
    await rm(back);
  });

  test('a plain member, in an uncompressed tar, after other members and a long name, comes back whole', async () => {
    const content = randomBytes(5 * MiB + 100);
    await writeFile(path.join(dir, 'plain-src'), content);
    const sub = path.join(dir, 'p');
    await runner.run(['mkdir', '-p', sub]);
    await writeFile(path.join(sub, 'disk.img'), content);
    await writeFile(path.join(sub, 'a'.repeat(150)), 'long name');
    const tar = path.join(dir, 'plain.tar');
    await runner.run(['tar', '--format=gnu', '-C', sub, '-cf', tar, 'a'.repeat(150), 'disk.img']);
    const back = await unpack(tar);
    assert.ok((await readFile(back)).equals(content));
    const pax = path.join(dir, 'plain-pax.tar.zst');
    await runner.run(['tar', '--format=pax', '--zstd', '-C', sub, '-cf', pax, 'a'.repeat(150), 'disk.img']);
    assert.ok((await readFile(await unpack(pax))).equals(content));
  });

  test("the daemon's NODE_OPTIONS do not reach the helper (a --require meant for the daemon)", async () => {
    const content = randomBytes(64 * KiB);
    const sub = path.join(dir, 'opts');
    await runner.run(['mkdir', '-p', sub]);
    await writeFile(path.join(sub, 'disk.img'), content);
    const tar = path.join(dir, 'opts.tar');
    await runner.run(['tar', '-C', sub, '-cf', tar, 'disk.img']);
    const preload = path.join(dir, 'not-for-the-helper.cjs');
    await writeFile(preload, 'process.exit(7);\n');
    const saved = process.env.NODE_OPTIONS;
    process.env.NODE_OPTIONS = `--require ${preload}`;
    try {
      assert.ok((await readFile(await unpack(tar))).equals(content));
    } finally {
      if (saved === undefined) delete process.env.NODE_OPTIONS;
      else process.env.NODE_OPTIONS = saved;
    }
  });

  test('refused, as the archive’s fault: cut short, not a tar, a damaged header, the member missing, a link, a pax sparse map', async () => {
    await sparseFile('disk.img', 16 * MiB, [0, 8 * MiB], 2 * MiB);
    const good = path.join(dir, 'good.tar.zst');
    await runner.run(['tar', '--sparse', '--zstd', '-C', dir, '-cf', good, 'disk.img']);
    const bytes = await readFile(good);
    const cut = path.join(dir, 'cut.tar.zst');
    await writeFile(cut, bytes.subarray(0, Math.floor(bytes.length / 2)));
    await refusal(cut, /.+/);
    const garbage = path.join(dir, 'garbage');
    await writeFile(garbage, randomBytes(64 * KiB));
    await refusal(garbage, /checksum|not a tar/);
    const plain = path.join(dir, 'damaged.tar');
    await runner.run(['tar', '--sparse', '-C', dir, '-cf', plain, 'disk.img']);
    const damaged = await readFile(plain);
    damaged[10] = (damaged[10] ?? 0) ^ 0xff;
    await writeFile(plain, damaged);
    await refusal(plain, /checksum/);
    await refusal(good, /holds no other\.img/, 'other.img');
    const links = path.join(dir, 'links');
    await runner.run(['mkdir', '-p', links]);
    await symlink('/etc/hostname', path.join(links, 'disk.img'));
    const linkTar = path.join(dir, 'link.tar.zst');
    await runner.run(['tar', '--zstd', '-C', links, '-cf', linkTar, 'disk.img']);
    await refusal(linkTar, /not a regular file/);
    const paxSparse = path.join(dir, 'pax-sparse.tar.zst');
    await runner.run(['tar', '--format=pax', '--sparse', '--zstd', '-C', dir, '-cf', paxSparse, 'disk.img']);
    await refusal(paxSparse, /pax/);
  });

  test('a target that exists is the host’s failure, not the archive’s; an abort kills the pipeline and rejects', async () => {
    await sparseFile('disk.img', 16 * MiB, [0], MiB);
    const tar = path.join(dir, 'host.tar.zst');
    await runner.run(['tar', '--sparse', '--zstd', '-C', dir, '-cf', tar, 'disk.img']);
    const target = path.join(dir, 'exists.img');
    await writeFile(target, 'x');
    await assert.rejects(unpackDiskArchive(runner, tar, { member: 'disk.img', target }), (e: unknown) => {
      assert.ok(e instanceof DiskUnpackFailed);
      assert.equal(e.refused, false);
      assert.match(e.message, /EEXIST/);
      return true;
    });
    // A FIFO nobody writes: the pipeline waits until the abort.
    const fifo = path.join(dir, 'never.fifo');
    await runner.run(['mkfifo', fifo]);
    const controller = new AbortController();
    const pending = unpackDiskArchive(runner, fifo, {
      member: 'disk.img',
      target: path.join(dir, 'aborted.img'),
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new Error('cancelled')), 300);
    await assert.rejects(pending, /cancelled/);
  });
});
