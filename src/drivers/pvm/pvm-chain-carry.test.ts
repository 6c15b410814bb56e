import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../core/types.ts';
import { createLogger } from '../../host/logger.ts';
import { hostRunner } from '../../host/runner.ts';
import type { GuestStorage } from '../guest-storage.ts';
import { continuePvmChain } from './pvm-incremental.ts';
import { createPvmStorage } from './pvm-storage.ts';

const MiB = 1024 * 1024;
const SIZE = 6 * MiB + 1000;
const spec = { name: 'p1', model: 'pvm' } as GuestSpec;

/**
 * A pvm guest's backup chain carried across a move (decision 0062, amended): real disks, real tar
 * and zstd, three state directories standing for three members. The chain state of member a's
 * last link, taken over on member b after the move's archive was applied there, makes b's next
 * backup that chain's next link; the chain restored on member c is b's disk byte for byte.
 */
describe('a pvm backup chain goes on on the member a guest moved to', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-pvm-chain-carry-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A member's pvm storage with guest p1's directory (and its host uid) made, as a create does. */
  const member = async (name: string): Promise<{ storage: GuestStorage; disk: string }> => {
    const stateDir = path.join(dir, name);
    const diskDir = path.join(stateDir, 'guests', spec.name, 'disk');
    await mkdir(diskDir, { recursive: true });
    await writeFile(path.join(stateDir, 'guests', spec.name, 'uid'), '4242');
    const storage = createPvmStorage(
      { runner: hostRunner(), log: createLogger({ level: 'silent' }), stateDir, idmapBase: 1_000_000 },
      { agents: new Map() },
    );
    return { storage, disk: path.join(diskDir, 'root.img') };
  };
  const write = async (disk: string, at: number, text: string) => {
    const handle = await open(disk, 'r+');
    await handle.write(Buffer.from(text), 0, text.length, at);
    await handle.close();
  };
  const blockListOf = async (tar: string): Promise<number[]> => {
    const { stdout } = await hostRunner().run(['tar', '--zstd', '-xOf', tar, 'disk.blocks.json']);
    return (JSON.parse(stdout) as { blocks: number[] }).blocks;
  };

  test('the first backup after the move is the next link, holding what changed before and after the move, and the chain restores the disk exactly', async () => {
    const a = await member('a');
    await writeFile(a.disk, randomBytes(SIZE));
    const full = path.join(dir, 'full.tar.zst');
    const link0 = await a.storage.exportIncremental?.(spec, full);
    assert.equal(link0?.kind, 'full');
    const state = await a.storage.chainState?.(spec);
    assert.ok(state);
    assert.deepEqual([state.chain, state.sequence], [link0?.chain, 0]);
    // Written on a after its last backup, then the move: the move's archive applied on b.
    await write(a.disk, 2 * MiB + 7, 'before the move');
    const moved = path.join(dir, 'move.tar.zst');
    await a.storage.exportTar(spec, moved);
    const b = await member('b');
    await b.storage.importTar(spec, moved);
    assert.equal(await b.storage.chainState?.(spec), undefined, 'an import ends the chain on b');
    await write(b.disk, 4 * MiB, 'after the move');
    await write(b.disk, SIZE - 5, 'tail!');

    assert.equal(await b.storage.continueChain?.(spec, state), true);
    const incr = path.join(dir, 'incr.tar.zst');
    const link1 = await b.storage.exportIncremental?.(spec, incr);
    assert.deepEqual(link1, { chain: link0?.chain, sequence: 1, kind: 'incremental' });
    // Blocks 2 (written on a), 4 and 6 (on b): nothing else, though every block of b's disk was written by the import.
    assert.deepEqual(await blockListOf(incr), [2, 4, 6]);

    const c = await member('c');
    await c.storage.importIncremental?.(spec, full, { link: { ...(link0 ?? state), kind: 'full' } });
    await c.storage.importIncremental?.(spec, incr, {
      link: { chain: state.chain, sequence: 1, kind: 'incremental' },
    });
    assert.ok((await readFile(c.disk)).equals(await readFile(b.disk)), 'the chain restores b disk');
    // a's disk lacks b's writes: the incremental, not the full alone, made c's.
    assert.ok(!(await readFile(c.disk)).equals(await readFile(a.disk)));
  });

  test('without the carried state the first backup after the move is a full one, as before', async () => {
    const d = await member('d');
    await writeFile(d.disk, randomBytes(2 * MiB));
    const link = await d.storage.exportIncremental?.(spec, path.join(dir, 'd.tar.zst'));
    assert.equal(link?.kind, 'full');
  });

  test('a COW disk does not take a carried chain: its unmarked blocks would be taken as unchanged', async () => {
    const e = await member('e');
    const cow = path.join(path.dirname(e.disk), 'root.cow');
    await writeFile(cow, 'not read');
    const state = { chain: '0123456789abcdef', sequence: 3, data: Buffer.alloc(8 + 32) };
    state.data.writeBigUInt64BE(BigInt(MiB));
    assert.equal(await e.storage.continueChain?.(spec, state), false);
    assert.deepEqual((await readdir(path.dirname(path.dirname(e.disk)))).sort(), ['disk', 'uid']);
  });

  test('a state that is not one is refused with nothing written', async () => {
    const f = path.join(dir, 'f');
    await mkdir(f);
    const data = Buffer.alloc(8 + 31);
    data.writeBigUInt64BE(BigInt(MiB));
    assert.equal(await continuePvmChain(f, { chain: '0123456789abcdef', sequence: 1, data }), false);
    assert.equal(await continuePvmChain(f, { chain: 'x', sequence: 1, data: Buffer.alloc(40) }), false);
    assert.equal(
      await continuePvmChain(f, { chain: '0123456789abcdef', sequence: 1, data: Buffer.alloc(3) }),
      false,
    );
    assert.deepEqual(await readdir(f), []);
  });
});
