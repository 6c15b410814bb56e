import assert from 'node:assert/strict';
import { chmod, chown, lchown, link, lstat, mkdir, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { shiftIds } from '../../src/images/shift-tree.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

describe('shiftIds', () => {
  const A = 1_000_000;
  const B = 1_262_144;
  let dir = '';
  let tree = '';
  before(async () => {
    dir = await makeRunDir('shift');
    tree = join(dir, 'upper');
    await mkdir(join(tree, 'bin'), { recursive: true });
    await mkdir(join(tree, 'home/user'), { recursive: true });
    await writeFile(join(tree, 'bin/su'), '#!/bin/sh\n');
    await writeFile(join(tree, 'bin/wall'), '#!/bin/sh\n');
    await writeFile(join(tree, 'home/user/file'), 'data');
    await link(join(tree, 'home/user/file'), join(tree, 'home/user/hardlink'));
    // Relative: a link to a host path would make any chown slip a test's hands the host's file.
    await symlink('su', join(tree, 'bin/link'));
    await writeFile(join(tree, 'foreign'), 'owned outside the range');
    await mkdir(join(tree, 'tmp'));
    for (const p of ['', 'bin', 'bin/su', 'home', 'tmp']) await chown(join(tree, p), A, A);
    await chown(join(tree, 'bin/wall'), A, A + 5);
    await chown(join(tree, 'home/user/file'), A + 1000, A + 1000);
    await chown(join(tree, 'home/user'), A + 1000, A + 1000);
    await lchown(join(tree, 'bin/link'), A, A);
    await chown(join(tree, 'foreign'), 4242, 0);
    await chmod(join(tree, 'bin/su'), 0o4755);
    await chmod(join(tree, 'bin/wall'), 0o2755);
    await chmod(join(tree, 'tmp'), 0o1777);
  });
  after(async () => {
    await removeRunDir(dir);
  });

  test('moves ids of one range to another in place, keeping setuid, setgid, sticky bits and hard links', async () => {
    await shiftIds(tree, { from: A, to: B, size: 65536 });
    const root = await lstat(tree);
    assert.deepEqual([root.uid, root.gid], [B, B]);
    const su = await stat(join(tree, 'bin/su'));
    assert.equal(su.uid, B);
    assert.equal(su.mode & 0o7777, 0o4755);
    const wall = await stat(join(tree, 'bin/wall'));
    assert.equal(wall.gid, B + 5);
    assert.equal(wall.mode & 0o7777, 0o2755);
    const file = await stat(join(tree, 'home/user/file'));
    assert.deepEqual([file.uid, file.gid], [B + 1000, B + 1000]);
    const hard = await stat(join(tree, 'home/user/hardlink'));
    assert.equal(hard.ino, file.ino, 'hard link kept');
    assert.equal(hard.uid, B + 1000, 'hard-linked inode shifted once');
    const l = await lstat(join(tree, 'bin/link'));
    assert.ok(l.isSymbolicLink());
    assert.equal(l.uid, B);
    assert.equal((await stat(join(tree, 'tmp'))).mode & 0o7777, 0o1777);
    const foreign = await stat(join(tree, 'foreign'));
    assert.deepEqual([foreign.uid, foreign.gid], [4242, 0], 'ids outside the range stay');
  });

  test('shifting back restores the owners; the same range is a no-op', async () => {
    await shiftIds(tree, { from: B, to: 0, size: 65536 });
    assert.equal((await stat(join(tree, 'home/user/file'))).uid, 1000);
    assert.equal(await shiftIds(tree, { from: 0, to: 0, size: 65536 }), 0);
    await shiftIds(tree, { from: 0, to: A, size: 65536 });
    assert.equal((await stat(join(tree, 'home/user/file'))).uid, A + 1000);
    assert.equal((await stat(join(tree, 'foreign'))).uid, 4242 + A, 'now inside the moved range');
  });

  test('refuses a range that does not fit, and stops when cancelled', async () => {
    await assert.rejects(shiftIds(tree, { from: A, to: 0xffffffff, size: 65536 }), {
      code: 'InvalidArgument',
    });
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(shiftIds(tree, { from: A, to: B, size: 65536, signal: controller.signal }));
    assert.equal((await lstat(tree)).uid, A, 'the root, shifted last, still says the old range');
  });
});
