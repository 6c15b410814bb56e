import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { readFileInRoot, writeFileInRoot } from './rooted-fs.ts';

describe('rooted-fs', () => {
  let root: string;
  let outside: string;
  const me = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const write = (path: string, data: string, extra: { createDirs?: boolean } = {}) =>
    writeFileInRoot(root, path, Buffer.from(data), {
      mode: 0o640,
      ...me,
      ...(extra.createDirs ? { createDirs: me } : {}),
    });

  before(async () => {
    const base = await mkdtemp(join(tmpdir(), 'trivisor-rooted-'));
    root = join(base, 'root');
    outside = join(base, 'outside');
    await mkdir(join(root, 'etc'), { recursive: true });
    await mkdir(outside);
    await writeFile(join(root, 'etc', 'passwd'), 'guest passwd\n');
    await writeFile(join(outside, 'secret'), 'host secret\n');
    // Links a guest could plant: absolute ones must resolve inside its root, relative ones must not climb out.
    await symlink('/', join(root, 'slash'));
    await symlink('../../../../../../..', join(root, 'up'));
    await symlink(outside, join(root, 'abs-outside'));
    await symlink('/etc/passwd', join(root, 'passwd-link'));
    await symlink('/etc', join(root, 'etc-link'));
  });

  after(async () => {
    await rm(join(root, '..'), { recursive: true, force: true });
  });

  test('writes a file with its mode and reads it back with mode and owner', async () => {
    await write('/etc/motd', 'hello\n');
    assert.equal(await readFile(join(root, 'etc', 'motd'), 'utf8'), 'hello\n');
    assert.equal((await stat(join(root, 'etc', 'motd'))).mode & 0o7777, 0o640);
    const r = await readFileInRoot(root, '/etc/motd', { maxBytes: 100 });
    assert.equal(r.data.toString(), 'hello\n');
    assert.equal(r.mode, 0o640);
    assert.equal(r.uid, me.uid);
  });

  test('absolute and climbing symlinks resolve inside the root', async () => {
    assert.equal(
      (await readFileInRoot(root, '/slash/etc/passwd', { maxBytes: 100 })).data.toString(),
      'guest passwd\n',
    );
    assert.equal(
      (await readFileInRoot(root, '/up/etc/passwd', { maxBytes: 100 })).data.toString(),
      'guest passwd\n',
    );
    assert.equal(
      (await readFileInRoot(root, '/passwd-link', { maxBytes: 100 })).data.toString(),
      'guest passwd\n',
    );
    await assert.rejects(readFileInRoot(root, '/abs-outside/secret', { maxBytes: 100 }), {
      code: 'NotFound',
    });
    await write('/up/escaped', 'x');
    assert.ok(existsSync(join(root, 'escaped')));
    await write('/etc-link/through-link', 'y');
    assert.equal(await readFile(join(root, 'etc', 'through-link'), 'utf8'), 'y');
  });

  test('a symlink at the path itself is replaced by the write, not followed', async () => {
    await symlink('/etc/passwd', join(root, 'replace-me'));
    await write('/replace-me', 'new');
    assert.equal(await readFile(join(root, 'etc', 'passwd'), 'utf8'), 'guest passwd\n');
    assert.equal(await readFile(join(root, 'replace-me'), 'utf8'), 'new');
  });

  test('directories, missing files and too large files get typed errors', async () => {
    await assert.rejects(readFileInRoot(root, '/etc', { maxBytes: 100 }), { code: 'InvalidArgument' });
    await assert.rejects(readFileInRoot(root, '/etc-link', { maxBytes: 100 }), { code: 'InvalidArgument' });
    await assert.rejects(write('/etc', 'x'), { code: 'InvalidArgument' });
    await assert.rejects(readFileInRoot(root, '/nope', { maxBytes: 100 }), { code: 'NotFound' });
    await assert.rejects(readFileInRoot(root, '/no/dir/file', { maxBytes: 100 }), { code: 'NotFound' });
    await assert.rejects(write('/no/dir/file', 'x'), { code: 'NotFound' });
    await assert.rejects(readFileInRoot(root, '/etc/passwd', { maxBytes: 4 }), { code: 'InvalidArgument' });
    await assert.rejects(readFileInRoot(root, '/etc/passwd/x', { maxBytes: 100 }), {
      code: 'InvalidArgument',
    });
  });

  test('createDirs makes the missing directories, inside the root', async () => {
    await write('/slash/new/deep/file', 'z', { createDirs: true });
    assert.equal(await readFile(join(root, 'new', 'deep', 'file'), 'utf8'), 'z');
    assert.equal((await stat(join(root, 'new', 'deep'))).mode & 0o777, 0o755);
  });

  test('paths into proc, sysfs or cgroup and overlong names are typed errors that name no host path', async () => {
    // The host's own root stands in for a guest's: its /proc and /sys are the kernel's file systems.
    const refusals: Array<[string, () => Promise<unknown>]> = [
      // /proc/mounts -> self/mounts: `self` cannot be read through another process's /proc (was ENOENT).
      ['/proc/mounts', () => readFileInRoot('/', '/proc/mounts', { maxBytes: 1 << 20 })],
      [
        '/proc/self/root/etc/hostname',
        () => readFileInRoot('/', '/proc/self/root/etc/hostname', { maxBytes: 100 }),
      ],
      // A write below /sys/fs/cgroup (was EOVERFLOW from the tmpfs or cgroup below sysfs).
      [
        '/sys/fs/cgroup/x',
        () => writeFileInRoot('/', '/sys/fs/cgroup/x', Buffer.from('1'), { mode: 0o644, uid: 0, gid: 0 }),
      ],
      // A 300-byte name (was ENAMETOOLONG naming /proc/self/fd/N/…).
      [`/${'a'.repeat(300)}`, () => readFileInRoot(root, `/${'a'.repeat(300)}`, { maxBytes: 100 })],
      [`/etc/${'b'.repeat(300)}`, () => write(`/etc/${'b'.repeat(300)}`, 'x')],
    ];
    for (const [path, attempt] of refusals) {
      const error = await attempt().then(
        () => assert.fail(`${path} was not refused`),
        (e: unknown) => e as { code?: string; message: string },
      );
      assert.equal(error.code, 'InvalidArgument', `${path}: ${error.message}`);
      assert.doesNotMatch(error.message, /\/proc\/self\/fd|\n/, `${path}: ${error.message}`);
    }
    // A guest's symlink to /proc/self/root is followed inside the guest, into its /proc.
    await mkdir(join(root, 'proc'), { recursive: true });
    await symlink('/proc/self/root', join(root, 'to-self-root'));
    await assert.rejects(readFileInRoot(root, '/to-self-root/etc/passwd', { maxBytes: 100 }), {
      code: 'NotFound',
    });
  });

  test('a failed write leaves no temporary file behind', async () => {
    await assert.rejects(
      writeFileInRoot(root, '/etc/bad-owner', Buffer.from('x'), { mode: 0o644, uid: -5, gid: 0 }),
    );
    const { readdir } = await import('node:fs/promises');
    assert.deepEqual(
      (await readdir(join(root, 'etc'))).filter((n) => n.includes('trivisor')),
      [],
    );
  });
});
