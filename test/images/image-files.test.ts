import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmod,
  copyFile,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { type ImageFiles, imageFiles } from '../../src/images/image-files.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

const runner = hostRunner();

/**
 * Runs argv as host user nobody, without supplementary groups. Through `sh -c exec`: setpriv
 * keeps root's capabilities until its own execve, which would look the program up with them.
 */
function asNobody(argv: string[]) {
  const r = spawnSync(
    'setpriv',
    ['--reuid=65534', '--regid=65534', '--clear-groups', '--', '/bin/sh', '-c', 'exec "$0" "$@"', ...argv],
    { encoding: 'utf8' },
  );
  return { code: r.status ?? 128, stdout: r.stdout ?? '' };
}

const mkfifo = (path: string) => runner.run(['mkfifo', path]);

describe('imageFiles', () => {
  let dir = '';
  let stateDir = '';
  let images: ImageFiles;
  let busyboxFp = '';

  /** What images/ holds besides complete images: must always be empty after an add settles. */
  const leftovers = async (): Promise<string[]> =>
    (await readdir(join(stateDir, 'images'))).filter((n) => !/^[0-9a-f]{64}$/.test(n));

  before(async () => {
    // Searchable by others, as /var/lib is: only the store's own modes may stop a host user.
    dir = await makeRunDir('images', { mode: 0o711 });
    stateDir = join(dir, 'state');
    images = imageFiles(stateDir, { runner, log: silentLogger() });
  });
  after(async () => {
    await removeRunDir(dir);
  });

  test('addBusybox adds a runnable image whose fingerprint is the same on every build', async () => {
    const first = await images.addBusybox();
    busyboxFp = first.fingerprint;
    assert.match(first.fingerprint, /^[0-9a-f]{64}$/);
    assert.equal(first.metadata.os, 'busybox');
    assert.ok(first.sizeBytes > 1_000_000, `size ${first.sizeBytes}`);
    assert.equal(await images.sizeBytes(first.fingerprint), first.sizeBytes);
    const { stdout } = await runner.run([
      'chroot',
      images.rootfsPath(first.fingerprint),
      '/bin/sh',
      '-c',
      'echo hi',
    ]);
    assert.equal(stdout, 'hi\n');

    const again = await images.addBusybox();
    assert.equal(again.fingerprint, first.fingerprint);
    // A second state dir stands for a restarted daemon on the same host.
    const other = imageFiles(join(dir, 'other-state'), { runner, log: silentLogger() });
    assert.equal((await other.addBusybox()).fingerprint, first.fingerprint);
    await rm(join(dir, 'other-state'), { recursive: true });

    assert.deepEqual(await images.list(), [first.fingerprint]);
    assert.ok(await images.exists(first.fingerprint));
    assert.deepEqual(await leftovers(), []);
  });

  test('the tree sits behind root-only directories', async () => {
    const imageDir = join(stateDir, 'images', busyboxFp);
    assert.equal(images.rootfsPath(busyboxFp), join(imageDir, 'trees', 'rootfs'));
    assert.equal((await stat(join(stateDir, 'images'))).mode & 0o777, 0o700);
    assert.equal((await stat(imageDir)).mode & 0o777, 0o700);
    assert.equal((await stat(join(imageDir, 'trees'))).mode & 0o777, 0o700);
    assert.equal((await stat(join(imageDir, 'image.json'))).mode & 0o777, 0o600);
    const r = asNobody(['ls', join(imageDir, 'trees', 'rootfs', 'bin')]);
    assert.notEqual(r.code, 0, 'nobody lists the tree');
  });

  describe('importTarball', () => {
    let tarDir = '';
    let gz = '';
    let xz = '';
    let zst = '';
    before(async () => {
      tarDir = join(dir, 'tarballs');
      await mkdir(tarDir);
      const rootfs = images.rootfsPath(busyboxFp);
      gz = join(tarDir, 'busybox.tar.gz');
      // xz content under a name that says otherwise: compression is told by content.
      xz = join(tarDir, 'busybox-xz.tar');
      await runner.run(['tar', '-C', rootfs, '--numeric-owner', '-czf', gz, '.']);
      await runner.run(['tar', '-C', rootfs, '--numeric-owner', '-cJf', xz, '.']);
      zst = join(tarDir, 'busybox.tar.zst');
      await runner.run(['tar', '-C', rootfs, '--numeric-owner', '--zstd', '-cf', zst, '.']);
    });

    for (const kind of ['gz', 'xz', 'zst'] as const) {
      test(`imports a ${kind} tarball, fingerprinted by its bytes, with metadata read from the tree`, async () => {
        const path = { gz, xz, zst }[kind];
        const percents: number[] = [];
        const added = await images.importTarball(path, { onProgress: (p) => percents.push(p) });
        assert.equal(
          added.fingerprint,
          createHash('sha256')
            .update(await readFile(path))
            .digest('hex'),
        );
        assert.equal(added.metadata.source, 'import');
        assert.equal(added.metadata.os, 'busybox');
        assert.equal(added.metadata.architecture, 'x86_64');
        assert.deepEqual(JSON.parse(added.metadata.properties.init ?? 'null'), ['/sbin/init']);
        assert.equal(added.metadata.properties['stop.signal'], 'SIGUSR2');
        assert.equal(percents.at(-1), 100);
        const root = images.rootfsPath(added.fingerprint);
        assert.equal((await runner.run(['chroot', root, '/bin/sh', '-c', 'echo hi'])).stdout, 'hi\n');
        assert.equal((await stat(join(root, 'tmp'))).mode & 0o7777, 0o1777);
        assert.deepEqual(await leftovers(), []);
        await images.remove(added.fingerprint);
        assert.equal(await images.exists(added.fingerprint), false);
      });
    }

    test('an imported setuid-root shell is out of reach of host users and device nodes are dropped', async () => {
      const tree = join(tarDir, 'evil');
      await runner.run(['cp', '-a', images.rootfsPath(busyboxFp), tree]);
      await copyFile('/bin/bash', join(tree, 'bin/suidsh'));
      await chmod(join(tree, 'bin/suidsh'), 0o4755);
      await runner.run(['mknod', '-m', '0666', join(tree, 'dev/evilnull'), 'c', '1', '3']);
      await runner.run(['mknod', '-m', '0666', join(tree, 'etc/evilloop'), 'b', '7', '0']);
      await mkfifo(join(tree, 'etc/fifo'));
      const tar = join(tarDir, 'evil.tar');
      await runner.run(['tar', '-C', tree, '--numeric-owner', '-cf', tar, '.']);
      const added = await images.importTarball(tar);
      const root = images.rootfsPath(added.fingerprint);
      assert.equal((await stat(join(root, 'bin/suidsh'))).mode & 0o7777, 0o4755, 'setuid kept for guests');
      await assert.rejects(lstat(join(root, 'dev/evilnull')), { code: 'ENOENT' });
      await assert.rejects(lstat(join(root, 'etc/evilloop')), { code: 'ENOENT' });
      assert.ok((await lstat(join(root, 'etc/fifo'))).isFIFO(), 'other special files stay');
      const r = asNobody([join(root, 'bin/suidsh'), '-p', '-c', 'id -u']);
      assert.notEqual(r.code, 0, `nobody ran the image's setuid shell: ${r.stdout}`);
      assert.equal(r.stdout, '');
      await images.remove(added.fingerprint);
      assert.deepEqual(await leftovers(), []);
    });

    test('fingerprints a plain tar by all its bytes, trailing padding included', async () => {
      const plain = join(tarDir, 'padded.tar');
      await runner.run(['tar', '-C', images.rootfsPath(busyboxFp), '--numeric-owner', '-cf', plain, '.']);
      await writeFile(plain, Buffer.alloc(1 << 20), { flag: 'a' });
      const added = await images.importTarball(plain);
      assert.equal(
        added.fingerprint,
        createHash('sha256')
          .update(await readFile(plain))
          .digest('hex'),
      );
      await images.remove(added.fingerprint);
      assert.deepEqual(await leftovers(), []);
    });

    test('refuses a truncated archive and leaves nothing behind', async () => {
      const cut = join(tarDir, 'cut.tar.gz');
      await writeFile(cut, await readFile(gz));
      await truncate(cut, Math.floor((await stat(gz)).size / 2));
      await assert.rejects(images.importTarball(cut), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'InvalidArgument');
        assert.match(e.message, /corrupt or truncated/);
        assert.doesNotMatch(e.message, /\n/);
        return true;
      });
      assert.deepEqual(await leftovers(), []);
      assert.deepEqual(await images.list(), [busyboxFp]);
    });

    test('refuses a file that is not a tar archive', async () => {
      const junk = join(tarDir, 'junk.tar');
      await writeFile(junk, randomBytes(4096));
      await assert.rejects(images.importTarball(junk), { code: 'InvalidArgument' });
      assert.deepEqual(await leftovers(), []);
    });

    test('refuses a tar without /etc and leaves nothing behind', async () => {
      const tree = join(tarDir, 'no-etc');
      await mkdir(join(tree, 'bin'), { recursive: true });
      await writeFile(join(tree, 'bin/hello'), 'hello\n');
      const tar = join(tarDir, 'no-etc.tar');
      await runner.run(['tar', '-C', tree, '-cf', tar, '.']);
      await assert.rejects(images.importTarball(tar), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'InvalidArgument');
        assert.match(e.message, /\/etc/);
        return true;
      });
      assert.deepEqual(await leftovers(), []);
      assert.deepEqual(await images.list(), [busyboxFp]);
    });

    test('a cancelled import leaves nothing behind', async () => {
      const controller = new AbortController();
      await assert.rejects(
        images.importTarball(xz, { signal: controller.signal, onProgress: () => controller.abort() }),
        { code: 'Cancelled' },
      );
      assert.deepEqual(await leftovers(), []);
      assert.deepEqual(await images.list(), [busyboxFp]);
    });
  });

  test('buildDebootstrap refuses an unknown source, naming the supported ones', async () => {
    await assert.rejects(images.buildDebootstrap('debian/hamm'), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'InvalidArgument');
      assert.match(e.message, /debian\/bookworm/);
      return true;
    });
    assert.deepEqual(await leftovers(), []);
  });

  test('prepare() closes an image stored open by an earlier version, shifted copies too', async () => {
    // The earlier layout: images/<fp>/rootfs and rootfs-shift-<base>, 0711/0755 on the way down.
    const imageDir = join(stateDir, 'images', busyboxFp);
    await rename(join(imageDir, 'trees', 'rootfs'), join(imageDir, 'rootfs'));
    await rm(join(imageDir, 'trees'), { recursive: true });
    await runner.run(['cp', '-a', join(imageDir, 'rootfs'), join(imageDir, 'rootfs-shift-1000000')]);
    await runner.run(['mknod', '-m', '0666', join(imageDir, 'rootfs', 'dev', 'evilnull'), 'c', '1', '3']);
    await chmod(join(imageDir, 'image.json'), 0o644);
    await chmod(imageDir, 0o755);
    assert.equal(await images.exists(busyboxFp), false, 'the open layout is not taken as an image');

    const restarted = imageFiles(stateDir, { runner, log: silentLogger() });
    await restarted.prepare();
    assert.equal(await restarted.exists(busyboxFp), true);
    assert.deepEqual((await readdir(imageDir)).sort(), ['image.json', 'trees']);
    assert.deepEqual((await readdir(join(imageDir, 'trees'))).sort(), ['rootfs', 'rootfs-shift-1000000']);
    assert.equal((await stat(join(imageDir, 'trees'))).mode & 0o777, 0o700);
    assert.equal((await stat(imageDir)).mode & 0o777, 0o700);
    assert.equal((await stat(join(imageDir, 'image.json'))).mode & 0o777, 0o600);
    await assert.rejects(lstat(join(imageDir, 'trees', 'rootfs', 'dev', 'evilnull')), { code: 'ENOENT' });
    await restarted.prepare();
    assert.equal(await restarted.exists(busyboxFp), true, 'prepare() again changes nothing');
  });

  test('remove deletes the image and all it holds; removing again is a no-op', async () => {
    await images.remove(busyboxFp);
    assert.deepEqual(await images.list(), []);
    assert.deepEqual(await readdir(join(stateDir, 'images')), []);
    await images.remove(busyboxFp);
    await assert.rejects(images.sizeBytes(busyboxFp), { code: 'NotFound' });
    await assert.rejects(images.exists('../etc'), { code: 'InvalidArgument' });
  });
});
