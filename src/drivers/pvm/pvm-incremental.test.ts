import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  applyBlocks,
  blockLength,
  blockSums,
  changedBlocks,
  copyBlocks,
  PVM_BLOCK_BYTES,
  parseBlockList,
  parsePvmChain,
} from './pvm-incremental.ts';

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
});
