import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { getBackupDirectoryArchive, listBackupDirectory } from './backup-directory.ts';

const FULL = '20261205T030000Z-full-3f9a1c2b4d5e6f70.tar';
const INCR1 = '20261205T031000Z-incr-3f9a1c2b4d5e6f70-1.tar';
const INCR2 = '20261205T032000Z-incr-3f9a1c2b4d5e6f70-2.tar';

describe('listBackupDirectory (decision 0074)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-backup-dir-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const put = async (guest: string, name: string, bytes = 10) => {
    await mkdir(join(dir, guest), { recursive: true });
    await writeFile(join(dir, guest, name), Buffer.alloc(bytes));
  };

  test('lists a chain oldest first, each incremental with its parent, and other names by their mtime', async () => {
    await put('v1', INCR1, 3);
    await put('v1', FULL, 100);
    await put('v1', 'plain.tar', 7);
    await utimes(
      join(dir, 'v1', 'plain.tar'),
      new Date('2026-12-01T00:00:00Z'),
      new Date('2026-12-01T00:00:00Z'),
    );
    await put('c1', '20261204T030000Z.tar', 5);
    const list = await listBackupDirectory(dir);
    assert.deepEqual(
      list.map((a) => [a.archive, a.kind, a.parent ?? null, a.sizeBytes, a.createdAt, a.restorable]),
      [
        ['c1/20261204T030000Z.tar', 'whole', null, 5, '2026-12-04T03:00:00.000Z', true],
        ['v1/plain.tar', 'other', null, 7, '2026-12-01T00:00:00.000Z', true],
        [`v1/${FULL}`, 'full', null, 100, '2026-12-05T03:00:00.000Z', true],
        [`v1/${INCR1}`, 'incremental', FULL, 3, '2026-12-05T03:10:00.000Z', true],
      ],
    );
    assert.deepEqual(
      [list[3]?.chain, list[3]?.sequence],
      ['3f9a1c2b4d5e6f70', 1],
      'the incremental names its chain and place',
    );
    assert.deepEqual(
      (await listBackupDirectory(dir, { guest: 'c1' })).map((a) => a.name),
      ['20261204T030000Z.tar'],
    );
  });

  test('an incremental after a gap is listed as not restorable, saying which link is missing', async () => {
    await put('v1', FULL);
    await put('v1', INCR2);
    const incr = (await listBackupDirectory(dir)).find((a) => a.name === INCR2);
    assert.equal(incr?.restorable, false);
    assert.equal(incr?.parent, undefined, 'its parent is not there');
    assert.match(incr?.problem ?? '', /Link 1 of chain 3f9a1c2b4d5e6f70 is missing/);
  });

  test('leaves out what an import refuses: symbolic links, dot files, folders that are not guest names or lead outside', async () => {
    const outside = await mkdtemp(join(tmpdir(), 'trivisor-backup-out-'));
    try {
      await writeFile(join(outside, 'x.tar'), 'x');
      await put('v1', FULL);
      await put('v1', `.${FULL}.tmp-abcd`);
      await symlink(join(outside, 'x.tar'), join(dir, 'v1', 'link.tar'));
      await symlink(outside, join(dir, 'evil'));
      await put('Not_A_Guest', 'y.tar');
      assert.deepEqual(
        (await listBackupDirectory(dir)).map((a) => a.archive),
        [`v1/${FULL}`],
      );
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  test('a directory not made yet lists nothing; one archive is shown, or refused as an import refuses it', async () => {
    assert.deepEqual(await listBackupDirectory(join(dir, 'not-yet')), []);
    await put('v1', FULL, 42);
    assert.equal((await getBackupDirectoryArchive(dir, `v1/${FULL}`)).sizeBytes, 42);
    await assert.rejects(getBackupDirectoryArchive(dir, 'v1/missing.tar'), /not found/);
    await assert.rejects(getBackupDirectoryArchive(dir, 'v1/../x.tar'), /not GUEST\/ARCHIVE/);
  });
});
