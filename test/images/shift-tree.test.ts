import assert from 'node:assert/strict';
import { chmod, chown, link, lstat, mkdir, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { shiftTree } from '../../src/images/shift-tree.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

describe('shiftTree', () => {
  let dir = '';
  let src = '';
  before(async () => {
    dir = await makeRunDir('shift');
    src = join(dir, 'src');
    await mkdir(join(src, 'bin'), { recursive: true });
    await mkdir(join(src, 'home/user'), { recursive: true });
    await writeFile(join(src, 'bin/su'), '#!/bin/sh\n');
    await chmod(join(src, 'bin/su'), 0o4755);
    await writeFile(join(src, 'bin/wall'), '#!/bin/sh\n');
    await chown(join(src, 'bin/wall'), 0, 5);
    await chmod(join(src, 'bin/wall'), 0o2755);
    await writeFile(join(src, 'home/user/file'), 'data');
    await chown(join(src, 'home/user/file'), 1000, 1000);
    await chown(join(src, 'home/user'), 1000, 1000);
    await link(join(src, 'home/user/file'), join(src, 'home/user/hardlink'));
    await symlink('/bin/su', join(src, 'bin/link'));
    await mkdir(join(src, 'tmp'));
    await chmod(join(src, 'tmp'), 0o1777);
  });
  after(async () => {
    await removeRunDir(dir);
  });

  test('raises every uid and gid by base and keeps setuid, setgid, sticky bits and hard links', async () => {
    const base = 100000;
    const target = join(dir, 'shifted');
    await shiftTree(src, target, { base });
    const root = await lstat(target);
    assert.equal(root.uid, base);
    assert.equal(root.gid, base);

    const su = await stat(join(target, 'bin/su'));
    assert.equal(su.uid, base);
    assert.equal(su.mode & 0o7777, 0o4755);
    const wall = await stat(join(target, 'bin/wall'));
    assert.equal(wall.gid, base + 5);
    assert.equal(wall.mode & 0o7777, 0o2755);

    const file = await stat(join(target, 'home/user/file'));
    assert.equal(file.uid, base + 1000);
    assert.equal(file.gid, base + 1000);
    const hard = await stat(join(target, 'home/user/hardlink'));
    assert.equal(hard.ino, file.ino, 'hard link kept');
    assert.equal(hard.uid, base + 1000, 'hard-linked inode shifted once');

    const link = await lstat(join(target, 'bin/link'));
    assert.ok(link.isSymbolicLink());
    assert.equal(link.uid, base);
    assert.equal((await stat(join(target, 'tmp'))).mode & 0o7777, 0o1777);

    // The source is untouched.
    assert.equal((await stat(join(src, 'home/user/file'))).uid, 1000);
    assert.deepEqual((await readdir(dir)).sort(), ['shifted', 'src']);
  });

  test('refuses an existing target and leaves no temp dir behind', async () => {
    const target = join(dir, 'exists');
    await mkdir(target);
    await assert.rejects(shiftTree(src, target, { base: 1000 }), { code: 'AlreadyExists' });
    assert.ok(!(await readdir(dir)).some((n) => n.includes('.tmp-')));
    await rm(target, { recursive: true });
  });

  test('a cancelled shift leaves nothing behind', async () => {
    const controller = new AbortController();
    controller.abort();
    const target = join(dir, 'cancelled');
    await assert.rejects(shiftTree(src, target, { base: 1000, signal: controller.signal }), {
      code: 'Cancelled',
    });
    assert.ok(!(await readdir(dir)).some((n) => n.startsWith('cancelled')));
  });
});
