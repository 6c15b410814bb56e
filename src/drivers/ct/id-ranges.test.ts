import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readlink, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  createIdRanges,
  FIRST_OWN_BLOCK,
  ID_RANGE_SIZE,
  isRangeBase,
  ownRangeBase,
  ownRangeSlots,
  readIdRangeOf,
} from './id-ranges.ts';

const BASE = 1_000_000;

describe('id ranges', () => {
  let stateDir: string;
  const dirOf = async (name: string) => {
    const dir = join(stateDir, 'guests', name);
    await mkdir(dir, { recursive: true });
    return dir;
  };
  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'trivisor-id-ranges-'));
  });
  after(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  test('own ranges sit above the shared, vm and pvm blocks, 65536 ids each, below the highest id', () => {
    assert.equal(ownRangeBase(BASE, 0), BASE + FIRST_OWN_BLOCK * ID_RANGE_SIZE);
    assert.equal(ownRangeBase(BASE, 1) - ownRangeBase(BASE, 0), ID_RANGE_SIZE);
    const slots = ownRangeSlots(BASE);
    assert.ok(slots > 10_000, `room for issue 16's 10,000 guests: ${slots}`);
    assert.ok(ownRangeBase(BASE, slots - 1) + ID_RANGE_SIZE - 1 <= 0xfffffffe);
    assert.ok(ownRangeBase(BASE, slots) + ID_RANGE_SIZE - 1 > 0xfffffffe);
  });

  test('a tree owner names a range only when it is a range base a guest cannot forge', () => {
    assert.ok(isRangeBase(BASE, 0));
    assert.ok(isRangeBase(BASE, BASE));
    assert.ok(isRangeBase(BASE, ownRangeBase(BASE, 0)));
    assert.ok(isRangeBase(BASE, ownRangeBase(BASE, 7)));
    // What a guest's root can make its / owned by: another id of its own range.
    assert.ok(!isRangeBase(BASE, ownRangeBase(BASE, 7) + 1000));
    assert.ok(!isRangeBase(BASE, BASE + 65535));
    assert.ok(!isRangeBase(BASE, 1000));
    // The vm and pvm blocks are no ct range.
    assert.ok(!isRangeBase(BASE, BASE + 2 * ID_RANGE_SIZE));
    assert.ok(!isRangeBase(BASE, ownRangeBase(BASE, ownRangeSlots(BASE))));
  });

  test('guests claim the lowest free slot, keep it, and give it back', async () => {
    const ranges = createIdRanges(stateDir, BASE);
    const a = await ranges.own('a', await dirOf('a'));
    const b = await ranges.own('b', await dirOf('b'));
    assert.deepEqual(a, { base: ownRangeBase(BASE, 0), size: ID_RANGE_SIZE, own: true });
    assert.equal(b.base, ownRangeBase(BASE, 1));
    assert.deepEqual(await ranges.own('a', await dirOf('a')), a, 'the same range at every start');
    assert.equal(await readlink(join(stateDir, 'idmap', '0')), 'a');
    assert.deepEqual(JSON.parse(await readFile(join(await dirOf('a'), 'idmap.json'), 'utf8')), {
      base: a.base,
      size: ID_RANGE_SIZE,
      slot: 0,
    });
    await ranges.release('a', await dirOf('a'));
    const c = await ranges.own('c', await dirOf('c'));
    assert.equal(c.base, a.base, 'a freed slot is taken again');
    await ranges.release('a', await dirOf('a'));
    assert.equal(
      await readlink(join(stateDir, 'idmap', '0')),
      'c',
      "releasing does not free another guest's slot",
    );
  });

  test('a slot claimed meanwhile by another guest is never shared: the guest moves to a free one', async () => {
    const ranges = createIdRanges(stateDir, BASE);
    const dir = await dirOf('d');
    const d = await ranges.own('d', dir);
    await rm(join(stateDir, 'idmap', String((d.base - ownRangeBase(BASE, 0)) / ID_RANGE_SIZE)));
    await symlink(
      'intruder',
      join(stateDir, 'idmap', String((d.base - ownRangeBase(BASE, 0)) / ID_RANGE_SIZE)),
    );
    const moved = await ranges.own('d', dir);
    assert.notEqual(moved.base, d.base);
  });

  test('a state dir restored without its claims takes the recorded slot back when it is free', async () => {
    const ranges = createIdRanges(stateDir, BASE);
    const dir = await dirOf('e');
    const e = await ranges.own('e', dir);
    await rm(join(stateDir, 'idmap'), { recursive: true });
    assert.deepEqual(await ranges.own('e', dir), e);
  });

  test('the shared range gives back an own one; recorded() tells the two apart', async () => {
    const ranges = createIdRanges(stateDir, BASE);
    const dir = await dirOf('f');
    const f = await ranges.own('f', dir);
    const slot = String((f.base - ownRangeBase(BASE, 0)) / ID_RANGE_SIZE);
    assert.deepEqual(await ranges.shared('f', dir), { base: BASE, size: ID_RANGE_SIZE, own: false });
    await assert.rejects(readlink(join(stateDir, 'idmap', slot)), { code: 'ENOENT' });
    assert.deepEqual(await ranges.recorded(dir), {
      base: BASE,
      size: ID_RANGE_SIZE,
      own: false,
    });
    assert.equal(await ranges.recorded(await dirOf('never')), undefined);
  });

  test('when every range is taken, the error says what to do', async () => {
    // Room for exactly two own ranges below the highest id, 0xfffffffe.
    const top = 0xffffffff - (FIRST_OWN_BLOCK + 2) * ID_RANGE_SIZE;
    const ranges = createIdRanges(join(stateDir, 'small'), top);
    assert.equal(ownRangeSlots(top), 2);
    await ranges.own('x', await dirOf('x'));
    await ranges.own('y', await dirOf('y'));
    await assert.rejects(ranges.own('z', await dirOf('z')), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'FailedPrecondition');
      assert.match(e.message, /security\.idmap\.isolated=false/);
      return true;
    });
  });

  test("readIdRangeOf reads a process's uid_map", async () => {
    assert.deepEqual(await readIdRangeOf(process.pid), { base: 0, size: 4294967295 });
  });
});
