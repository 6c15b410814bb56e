import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../core/types.ts';
import { createLogger } from '../../host/logger.ts';
import { hostRunner } from '../../host/runner.ts';
import { gnuSparseHeaders, sparseMap } from './gnu-sparse-tar.ts';
import {
  cowPieces,
  MIN_HOLE_BYTES,
  planCowDisk,
  planOf,
  planRawDisk,
  streamFlatDisk,
  writeDiskArchive,
} from './pvm-disk-stream.ts';
import { blockSummer, blockSums } from './pvm-incremental.ts';
import { createPvmStorage } from './pvm-storage.ts';
import { cowLayoutOf, readUmlCowHeader } from './uml-cow.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const runner = hostRunner();

test('sparseMap ends a file that ends in a hole with (size, 0), and refuses regions out of order', () => {
  assert.deepEqual(sparseMap(100, [{ offset: 0, length: 10 }]), [
    { offset: 0, length: 10 },
    { offset: 100, length: 0 },
  ]);
  assert.deepEqual(sparseMap(10, [{ offset: 0, length: 10 }]), [{ offset: 0, length: 10 }]);
  assert.deepEqual(sparseMap(10, []), [{ offset: 10, length: 0 }]);
  assert.throws(
    () =>
      sparseMap(100, [
        { offset: 20, length: 10 },
        { offset: 25, length: 1 },
      ]),
    /out of order/,
  );
  assert.throws(() => sparseMap(100, [{ offset: 95, length: 10 }]), /past the end/);
});

test('gnuSparseHeaders: four regions in the header, 21 in each extension block, a valid checksum', () => {
  const regions = Array.from({ length: 30 }, (_, i) => ({ offset: i * 2048, length: 512 }));
  const h = gnuSparseHeaders('disk.img', { realSize: 64 * KiB, regions, mtimeMs: 0 });
  // 31 map entries (the last one the end hole): the header's 4, then 21 and 6 in two extension blocks.
  assert.equal(h.length, 3 * 512);
  assert.equal(h.toString('ascii', 156, 157), 'S');
  assert.equal(h.toString('ascii', 257, 265), 'ustar  \0');
  assert.equal(h[482], 1);
  assert.equal(h[512 + 504], 1);
  assert.equal(h[1024 + 504], 0);
  assert.equal(h.toString('ascii', 124, 135), (30 * 512).toString(8).padStart(11, '0'));
  const stored = Number.parseInt(h.toString('ascii', 148, 154), 8);
  const check = Buffer.from(h.subarray(0, 512));
  check.fill(0x20, 148, 156);
  assert.equal(
    check.reduce((n, b) => n + b, 0),
    stored,
  );
});

test('planOf joins pieces less than MIN_HOLE_BYTES apart into one region with zeros between', () => {
  const plan = planOf(
    4 * MiB,
    ['a'],
    [
      { offset: 0, length: 4 * KiB, file: 0, at: 0 },
      { offset: 4 * KiB, length: 4 * KiB, file: 0, at: 4 * KiB },
      { offset: 8 * KiB + MIN_HOLE_BYTES - 1, length: 1, file: 0, at: 0 },
      { offset: MiB, length: 512, file: 0, at: MiB },
    ],
  );
  assert.deepEqual(plan.regions, [
    { offset: 0, length: 8 * KiB + MIN_HOLE_BYTES },
    { offset: MiB, length: 512 },
  ]);
  assert.deepEqual(plan.pieces, [
    { offset: 0, length: 8 * KiB, file: 0, at: 0 },
    { offset: 8 * KiB, length: MIN_HOLE_BYTES - 1, file: -1, at: 0 },
    { offset: 8 * KiB + MIN_HOLE_BYTES - 1, length: 1, file: 0, at: 0 },
    { offset: MiB, length: 512, file: 0, at: MiB },
  ]);
  assert.throws(
    () =>
      planOf(
        MiB,
        ['a'],
        [
          { offset: 0, length: 10, file: 0, at: 0 },
          { offset: 5, length: 10, file: 0, at: 0 },
        ],
      ),
    /overlapping/,
  );
});

test('cowPieces: marked sectors from the COW file, the others from the base disk where it has data', () => {
  const layout = { sizeBytes: 64 * 512, sectorSize: 512, dataOffset: 12288 };
  const bitmap = Buffer.alloc(8);
  bitmap[0] = 0b0000_0110; // sectors 1 and 2
  bitmap[3] = 0xff; // sectors 24..31
  const pieces = cowPieces(layout, bitmap, [
    { offset: 0, length: 4 * 512 },
    { offset: 30 * 512, length: 10 * 512 },
  ]);
  assert.deepEqual(pieces, [
    { offset: 0, length: 512, file: 1, at: 0 },
    { offset: 512, length: 1024, file: 0, at: 12288 + 512 },
    { offset: 1536, length: 512, file: 1, at: 1536 },
    { offset: 24 * 512, length: 8 * 512, file: 0, at: 12288 + 24 * 512 },
    { offset: 32 * 512, length: 8 * 512, file: 1, at: 32 * 512 },
  ]);
});

test('blockSummer gives the checksums blockSums reads, holes hashed as zeros without being read', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pvm-sums-'));
  try {
    const size = 5 * MiB + 1536;
    const file = path.join(dir, 'disk');
    const handle = await open(file, 'w');
    const stretches = [
      [512, 1000],
      [MiB - 100, 300],
      [3 * MiB + 4096, MiB],
      [size - 512, 512],
    ] as const;
    const summer = blockSummer(size);
    for (const [at, len] of stretches) {
      const data = randomBytes(len);
      await handle.write(data, 0, len, at);
      summer.add(at, data);
    }
    await handle.truncate(size);
    await handle.close();
    assert.ok(summer.finish().equals(await blockSums(file)));
    const ended = blockSummer(MiB);
    assert.throws(() => ended.add(MiB - 10, Buffer.alloc(20)), /past the end/);
    const ordered = blockSummer(MiB);
    ordered.add(100, Buffer.alloc(10));
    assert.throws(() => ordered.add(50, Buffer.alloc(1)), /out of order/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('streamFlatDisk stops at the next read once aborted: nothing more is read or handed over', async () => {
  const controller = new AbortController();
  const plan = planOf(64 * MiB, ['/dev/zero'], [{ offset: 0, length: 64 * MiB, file: 0, at: 0 }]);
  let writes = 0;
  await assert.rejects(
    streamFlatDisk(
      plan,
      async () => {
        writes++;
        controller.abort();
      },
      { signal: controller.signal },
    ),
    { name: 'AbortError' },
  );
  assert.equal(writes, 1);
});

describe('pvm disks streamed into a zstd tar and unpacked by tar', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pvm-stream-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Unpacks `disk.img` of a zstd tar into a new directory the way the import does; answers its path. */
  const unpackDisk = async (tar: string, into: string) => {
    await mkdir(into);
    await runner.run(['sh', '-c', 'zstd -d -c -q -- "$1" | tar -C "$2" -xf - disk.img', 'sh', tar, into]);
    return path.join(into, 'disk.img');
  };
  const allocated = async (file: string) => (await stat(file)).blocks * 512;

  test('a private disk: its data read, its holes neither read nor written, the same bytes back', async () => {
    const disk = path.join(dir, 'root.img');
    const size = 40 * MiB + 512;
    const want = Buffer.alloc(size);
    const handle = await open(disk, 'w');
    for (const [at, len] of [
      [0, 3 * KiB],
      [5 * MiB + 512, 2 * MiB],
      [20 * MiB, 4 * KiB],
      [20 * MiB + 16 * KiB, 8 * KiB],
      [size - 512, 512],
    ] as const) {
      const data = randomBytes(len);
      data.copy(want, at);
      await handle.write(data, 0, len, at);
    }
    await handle.truncate(size);
    await handle.close();
    const plan = await planRawDisk(runner, disk);
    const tar = path.join(dir, 'raw.tar.zst');
    const done = await writeDiskArchive(runner, plan, { tarPath: tar, name: 'disk.img' });
    assert.equal(done.sizeBytes, size);
    // The file system's blocks around the data at most, not the 40 MiB of holes.
    assert.ok(done.readBytes < 3 * MiB, `read ${done.readBytes} B`);
    const back = await unpackDisk(tar, path.join(dir, 'raw-out'));
    assert.ok((await readFile(back)).equals(want));
    assert.ok((await allocated(back)) < 3 * MiB, `unpacked allocates ${await allocated(back)} B`);
  });

  test('a disk that ends in a hole comes back with its whole size; one of holes only too', async () => {
    for (const [name, data] of [
      ['tail-hole', true],
      ['empty', false],
    ] as const) {
      const disk = path.join(dir, `${name}.img`);
      await writeFile(disk, data ? randomBytes(4 * KiB) : Buffer.alloc(0));
      await truncate(disk, 8 * MiB);
      const tar = path.join(dir, `${name}.tar.zst`);
      await writeDiskArchive(runner, await planRawDisk(runner, disk), { tarPath: tar, name: 'disk.img' });
      const back = await unpackDisk(tar, path.join(dir, `${name}-out`));
      assert.equal((await stat(back)).size, 8 * MiB, name);
      assert.ok((await readFile(back)).equals(await readFile(disk)), name);
    }
  });

  test('a COW disk over its base disk unpacks to the bytes uml_moo merges, sparse', async () => {
    const base = path.join(dir, 'base.ext4');
    const size = 16 * MiB;
    const handle = await open(base, 'w');
    await handle.write(randomBytes(MiB), 0, MiB, 0);
    await handle.write(randomBytes(64 * KiB), 0, 64 * KiB, 9 * MiB);
    await handle.truncate(size);
    await handle.close();
    const cow = path.join(dir, 'root.cow');
    await runner.run(['uml_mkcow', cow, base]);
    const layout = cowLayoutOf(await readUmlCowHeader(cow));
    const bitmap = Buffer.alloc(layout.bitmapBytes);
    const c = await open(cow, 'r+');
    // Sectors over the base's data, over its hole, and 30 scattered ones (many map entries).
    const sectors = [3, 4, 5, 2048 + 1, 4 * 2048, ...Array.from({ length: 30 }, (_, i) => 6000 + i * 300)];
    for (const s of sectors) {
      bitmap[s >> 3] = (bitmap[s >> 3] ?? 0) | (1 << (s & 7));
      await c.write(randomBytes(512), 0, 512, layout.dataOffset + s * 512);
    }
    await c.write(bitmap, 0, bitmap.length, layout.bitmapOffset);
    await c.close();
    const merged = path.join(dir, 'merged.img');
    await runner.run(['uml_moo', '-b', base, cow, merged]);

    const plan = await planCowDisk(runner, cow);
    assert.ok(plan.regions.length > 25, `${plan.regions.length} regions`);
    const tar = path.join(dir, 'cow.tar.zst');
    // The block checksums of an incremental backup's full link, taken on the way, are the merged disk's.
    const summer = blockSummer(size);
    const done = await writeDiskArchive(runner, plan, {
      tarPath: tar,
      name: 'disk.img',
      observe: summer.add,
    });
    assert.ok(summer.finish().equals(await blockSums(merged)));
    assert.ok(done.readBytes < 4 * MiB, `read ${done.readBytes} B`);
    const back = await unpackDisk(tar, path.join(dir, 'cow-out'));
    assert.equal((await stat(back)).size, size);
    assert.ok((await readFile(back)).equals(await readFile(merged)));
    assert.ok((await allocated(back)) < 4 * MiB, `unpacked allocates ${await allocated(back)} B`);
  });

  test('a disk of 10 GiB (numbers past octal, in base-256) lists and unpacks with its data in place', async () => {
    const disk = path.join(dir, 'big.img');
    const data = randomBytes(128 * KiB);
    const at = 9 * 1024 * MiB + 4096;
    const handle = await open(disk, 'w');
    await handle.write(data, 0, data.length, at);
    await handle.truncate(10 * 1024 * MiB);
    await handle.close();
    const tar = path.join(dir, 'big.tar.zst');
    await writeDiskArchive(runner, await planRawDisk(runner, disk), { tarPath: tar, name: 'disk.img' });
    await rm(disk);
    const back = await unpackDisk(tar, path.join(dir, 'big-out'));
    assert.equal((await stat(back)).size, 10 * 1024 * MiB);
    const read = await open(back, 'r');
    const got = Buffer.alloc(data.length + 8192);
    await read.read(got, 0, got.length, at - 4096);
    await read.close();
    assert.ok(got.subarray(4096, 4096 + data.length).equals(data));
    assert.ok(got.subarray(0, 4096).every((b) => b === 0));
    await rm(back);
  });

  test('the storage exports a COW disk and imports it as a private disk, and imports an archive of the old tar --sparse kind; a damaged archive leaves nothing', async () => {
    const stateDir = path.join(dir, 'state');
    const base = path.join(dir, 'base2.ext4');
    await writeFile(base, randomBytes(2 * MiB));
    await truncate(base, 8 * MiB);
    const storage = createPvmStorage(
      { runner, log: createLogger({ level: 'silent' }), stateDir, idmapBase: 1_000_000 },
      { agents: new Map() },
    );
    const specOf = async (name: string) => {
      await mkdir(path.join(stateDir, 'guests', name, 'disk'), { recursive: true });
      await writeFile(path.join(stateDir, 'guests', name, 'uid'), '4242');
      return { name, model: 'pvm' } as GuestSpec;
    };
    const src = await specOf('p1');
    const cow = path.join(stateDir, 'guests', 'p1', 'disk', 'root.cow');
    await runner.run(['uml_mkcow', cow, base]);
    const layout = cowLayoutOf(await readUmlCowHeader(cow));
    const c = await open(cow, 'r+');
    await c.write(Buffer.from([1]), 0, 1, layout.bitmapOffset + 1); // sector 8
    await c.write(randomBytes(512), 0, 512, layout.dataOffset + 8 * 512);
    await c.close();
    const merged = path.join(dir, 'merged2.img');
    await runner.run(['uml_moo', '-b', base, cow, merged]);

    const tar = path.join(dir, 'p1.tar.zst');
    await storage.exportTar(src, tar);
    const dst = await specOf('p2');
    const dstDisk = path.join(stateDir, 'guests', 'p2', 'disk');
    await storage.importTar(dst, tar);
    assert.deepEqual(await readdir(dstDisk), ['root.img']);
    const img = path.join(dstDisk, 'root.img');
    assert.ok((await readFile(img)).equals(await readFile(merged)));
    assert.equal((await stat(img)).uid, 4242);
    assert.equal((await stat(img)).mode & 0o777, 0o600);

    // An archive made the way exports were made before (tar --sparse of the merged disk) imports the same.
    const old = path.join(dir, 'old-export');
    await mkdir(old);
    await runner.run(['cp', '--sparse=always', merged, path.join(old, 'disk.img')]);
    const oldTar = path.join(dir, 'old.tar.zst');
    await runner.run(['tar', '--zstd', '--sparse', '-C', old, '-cf', oldTar, 'disk.img']);
    const fromOld = await specOf('p4');
    await storage.importTar(fromOld, oldTar);
    const oldImg = path.join(stateDir, 'guests', 'p4', 'disk', 'root.img');
    assert.ok((await readFile(oldImg)).equals(await readFile(merged)));

    // Cut short, or a byte of its data changed: refused, the disk as it was, no work files.
    const whole = await readFile(tar);
    const truncated = path.join(dir, 'truncated.tar.zst');
    await writeFile(truncated, whole.subarray(0, Math.floor(whole.length / 2)));
    const dst3 = await specOf('p3');
    const p3Disk = path.join(stateDir, 'guests', 'p3', 'disk');
    await assert.rejects(storage.importTar(dst3, truncated), { code: 'InvalidArgument' });
    assert.deepEqual(await readdir(p3Disk), []);
    const damaged = path.join(dir, 'damaged.tar.zst');
    const bad = Buffer.from(whole);
    bad.writeUInt8(bad.readUInt8(100) ^ 0xff, 100);
    await writeFile(damaged, bad);
    await assert.rejects(storage.importTar(dst3, damaged), { code: 'InvalidArgument' });
    assert.deepEqual(await readdir(p3Disk), []);
  });
});
