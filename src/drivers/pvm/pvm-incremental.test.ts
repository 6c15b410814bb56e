import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  copyFile,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../core/types.ts';
import { createLogger } from '../../host/logger.ts';
import { hostRunner } from '../../host/runner.ts';
import {
  applyBlocks,
  blockLength,
  blockSums,
  changedBlocks,
  copyBlocks,
  cowChangedBlocks,
  cowLayoutOf,
  markedBlocks,
  PVM_BLOCK_BYTES,
  parseBlockList,
  parsePvmChain,
} from './pvm-incremental.ts';
import { createPvmStorage } from './pvm-storage.ts';

const MiB = 1024 * 1024;

test('blockLength: whole blocks, a short last one, nothing past the end', () => {
  assert.equal(blockLength(0, 2.5 * MiB), MiB);
  assert.equal(blockLength(2, 2.5 * MiB), MiB / 2);
  assert.equal(blockLength(3, 2.5 * MiB), 0);
});

test('parseBlockList refuses lists that do not fit the disk or the blocks file', () => {
  const size = 3 * MiB + 512;
  const ok = JSON.stringify({ blockBytes: PVM_BLOCK_BYTES, sizeBytes: size, blocks: [0, 3] });
  assert.deepEqual(parseBlockList(ok, size, MiB + 512), {
    blockBytes: PVM_BLOCK_BYTES,
    sizeBytes: size,
    blocks: [0, 3],
  });
  assert.throws(() => parseBlockList(ok, size + 1, MiB + 512), /disk of \d+ bytes, the guest's has/);
  assert.throws(() => parseBlockList(ok, size, MiB), /fewer or more block bytes/);
  for (const blocks of [[3, 0], [0, 0], [4], [-1], [0.5]]) {
    const bad = JSON.stringify({ blockBytes: PVM_BLOCK_BYTES, sizeBytes: size, blocks });
    assert.throws(() => parseBlockList(bad, size, 0), { code: 'InvalidArgument' }, JSON.stringify(blocks));
  }
  assert.throws(() => parseBlockList('{', size, 0), { code: 'InvalidArgument' });
  assert.throws(
    () => parseBlockList(JSON.stringify({ blockBytes: 4096, sizeBytes: size, blocks: [] }), size, 0),
    {
      code: 'InvalidArgument',
    },
  );
});

test('parsePvmChain takes only a well-formed record', () => {
  const good = {
    chain: '0123456789abcdef',
    sequence: 1,
    sizeBytes: MiB,
    sums: 'backup-chain-0123456789abcdef-1.sums',
  };
  assert.deepEqual(parsePvmChain(JSON.stringify(good)), good);
  assert.equal(parsePvmChain(JSON.stringify({ ...good, sums: '../x.sums' })), undefined);
  assert.equal(parsePvmChain('nope'), undefined);
});

describe('changed blocks on real files', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pvm-incremental-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('only the written blocks are carried, and applied to the old disk they give the new one', async () => {
    const oldDisk = path.join(dir, 'old.img');
    const newDisk = path.join(dir, 'new.img');
    const size = 5 * MiB + 1000;
    await writeFile(oldDisk, randomBytes(size));
    await copyFile(oldDisk, newDisk);
    const handle = await open(newDisk, 'r+');
    await handle.write(Buffer.from('changed'), 0, 7, MiB + 10);
    await handle.write(Buffer.from('tail'), 0, 4, size - 4);
    await handle.close();
    const before = await blockSums(oldDisk);
    const after = await blockSums(newDisk);
    assert.equal(before.length, 6 * 32);
    const list = { blockBytes: PVM_BLOCK_BYTES, sizeBytes: size, blocks: changedBlocks(before, after) };
    assert.deepEqual(list.blocks, [1, 5]);
    const blocks = path.join(dir, 'blocks');
    await copyBlocks(newDisk, list, blocks);
    assert.equal((await stat(blocks)).size, MiB + 1000);
    const checked = parseBlockList(JSON.stringify(list), size, (await stat(blocks)).size);
    await applyBlocks(oldDisk, checked, blocks);
    assert.ok((await readFile(oldDisk)).equals(await readFile(newDisk)));
  });

  test('an archive whose disk or blocks are links is refused before anything is read through them', async () => {
    const stateDir = path.join(dir, 'state');
    const disk = path.join(stateDir, 'guests', 'p1', 'disk');
    await mkdir(disk, { recursive: true });
    await writeFile(path.join(stateDir, 'guests', 'p1', 'uid'), '4242');
    const storage = createPvmStorage(
      { runner: hostRunner(), log: createLogger({ level: 'silent' }), stateDir, idmapBase: 1_000_000 },
      { agents: new Map() },
    );
    const spec = { name: 'p1', model: 'pvm' } as GuestSpec;
    const crafted = path.join(dir, 'crafted');
    await mkdir(crafted);
    for (const m of ['disk.img', 'disk.blocks', 'disk.blocks.json'])
      await symlink('/etc/hostname', path.join(crafted, m));
    const tar = path.join(dir, 'crafted.tar.zst');
    await hostRunner().run([
      'tar',
      '--zstd',
      '-C',
      crafted,
      '-cf',
      tar,
      'disk.img',
      'disk.blocks',
      'disk.blocks.json',
    ]);
    await assert.rejects(storage.importTar(spec, tar), {
      code: 'InvalidArgument',
      message: /disk\.img is not a regular file/,
    });
    await assert.rejects(
      async () =>
        storage.importIncremental?.(spec, tar, {
          link: { chain: '0123456789abcdef', sequence: 0, kind: 'full' },
        }),
      { code: 'InvalidArgument' },
    );
    assert.deepEqual(await readdir(disk), []);
  });
});

/** A version 3 UML COW header as uml_mkcow writes it (big-endian fields, then the backing path). */
function cowHeader(backing: string, sizeBytes: number): Buffer {
  const h = Buffer.alloc(32 + 4096);
  h.writeUInt32BE(0x4f4f4f4d, 0);
  h.writeUInt32BE(3, 4);
  h.writeUInt32BE(0, 8);
  h.writeBigUInt64BE(BigInt(sizeBytes), 12);
  h.writeUInt32BE(512, 20);
  h.writeUInt32BE(4096, 24);
  h.write(backing, 32);
  return h;
}

test('cowLayoutOf: the offsets uml_mkcow gives an 8 MiB disk (a 8400896-byte COW file: data at 12288)', () => {
  const layout = cowLayoutOf({
    mtimeSeconds: 0,
    sizeBytes: 8 * MiB,
    sectorSize: 512,
    alignment: 4096,
    backingFile: '/x',
  });
  assert.deepEqual(layout, {
    sizeBytes: 8 * MiB,
    sectorSize: 512,
    bitmapOffset: 8192,
    bitmapBytes: 2048,
    dataOffset: 12288,
  });
  assert.throws(
    () => cowLayoutOf({ mtimeSeconds: 0, sizeBytes: MiB, sectorSize: 512, alignment: 0, backingFile: '/x' }),
    /not a layout this daemon reads/,
  );
});

test('markedBlocks: blocks with any sector marked, none for an empty bitmap', () => {
  const layout = cowLayoutOf({
    mtimeSeconds: 0,
    sizeBytes: 4.5 * MiB,
    sectorSize: 512,
    alignment: 4096,
    backingFile: '/x',
  });
  const bitmap = Buffer.alloc(layout.bitmapBytes);
  assert.deepEqual(markedBlocks(bitmap, layout), []);
  // Sector 2048 is the first of block 1; sector 4*2048+3 lies in the short last block.
  bitmap[2048 >> 3] = 1;
  bitmap[(4 * 2048 + 3) >> 3] = 1 << 3;
  assert.deepEqual(markedBlocks(bitmap, layout), [1, 4]);
});

describe('changed blocks of a COW disk, read from its bitmap', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pvm-cow-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('only marked blocks are read; one rewritten with the same bytes is not changed; the sums are the flat disk', async () => {
    const size = 4.5 * MiB;
    const base = path.join(dir, 'base');
    const baseBytes = randomBytes(size);
    await writeFile(base, baseBytes);
    const layout = cowLayoutOf({
      mtimeSeconds: 0,
      sizeBytes: size,
      sectorSize: 512,
      alignment: 4096,
      backingFile: base,
    });
    const cow = path.join(dir, 'cow');
    const handle = await open(cow, 'w');
    const bitmap = Buffer.alloc(layout.bitmapBytes);
    const flat = Buffer.from(baseBytes);
    const put = async (sector: number, data: Buffer) => {
      bitmap[sector >> 3] = (bitmap[sector >> 3] ?? 0) | (1 << (sector & 7));
      await handle.write(data, 0, 512, layout.dataOffset + sector * 512);
      data.copy(flat, sector * 512);
    };
    await handle.write(cowHeader(base, size), 0, 32 + 4096, 0);
    await handle.truncate(layout.dataOffset + size);
    await put(2048 + 7, randomBytes(512)); // block 1: new bytes
    await put(3 * 2048, baseBytes.subarray(3 * MiB, 3 * MiB + 512)); // block 3: written, same bytes
    await put(4 * 2048 + 1, randomBytes(512)); // block 4 (short): new bytes
    await handle.write(bitmap, 0, bitmap.length, layout.bitmapOffset);
    await handle.close();
    const flatPath = path.join(dir, 'flat');
    await writeFile(flatPath, flat);

    const before = await blockSums(base);
    const out = path.join(dir, 'blocks');
    const found = await cowChangedBlocks(cow, { before, blocksOut: out });
    assert.deepEqual(found.list, { blockBytes: PVM_BLOCK_BYTES, sizeBytes: size, blocks: [1, 4] });
    assert.deepEqual(found.sums, await blockSums(flatPath));
    assert.deepEqual(
      await readFile(out),
      Buffer.concat([flat.subarray(MiB, 2 * MiB), flat.subarray(4 * MiB, size)]),
    );
    // Header and bitmap, and the three marked blocks (the last one short): not the whole disk's 4.5 MiB.
    assert.equal(found.readBytes, layout.bitmapOffset + layout.bitmapBytes + 2.5 * MiB);
    // Nothing changed since: nothing listed.
    const again = await cowChangedBlocks(cow, { before: found.sums, blocksOut: out });
    assert.deepEqual(again.list.blocks, []);
  });
});
