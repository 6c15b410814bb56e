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
