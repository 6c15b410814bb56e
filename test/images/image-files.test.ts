import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { type ImageFiles, imageFiles } from '../../src/images/image-files.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

const runner = hostRunner();

describe('imageFiles', () => {
  let dir = '';
  let stateDir = '';
  let images: ImageFiles;
  let busyboxFp = '';

  /** What images/ holds besides complete images: must always be empty after an add settles. */
  const leftovers = async (): Promise<string[]> =>
    (await readdir(join(stateDir, 'images'))).filter((n) => !/^[0-9a-f]{64}$/.test(n));

  before(async () => {
    dir = await makeRunDir('images');
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

  test('shiftedRootfs makes one shifted copy, shared by concurrent callers', async () => {
    const base = 200000;
    const calls = [images.shiftedRootfs(busyboxFp, base), images.shiftedRootfs(busyboxFp, base)];
    assert.equal(calls[0], calls[1]);
    const [path] = await Promise.all(calls);
    assert.equal(path, join(stateDir, 'images', busyboxFp, `rootfs-shift-${base}`));
    const st = await stat(join(path as string, 'etc/passwd'));
    assert.equal(st.uid, base);
    assert.equal(st.gid, base);
    assert.equal((await stat(join(path as string, 'tmp'))).mode & 0o7777, 0o1777);
    // A user-namespaced runc must be able to walk down to the tree as the guest's root.
    assert.equal((await stat(join(stateDir, 'images'))).mode & 0o111, 0o111);
    assert.equal((await stat(join(stateDir, 'images', busyboxFp))).mode & 0o111, 0o111);
    assert.equal(await images.shiftedRootfs(busyboxFp, base), path);
    await assert.rejects(images.shiftedRootfs('0'.repeat(64), base), { code: 'NotFound' });
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

  test('remove deletes the image and its shifted copies; removing again is a no-op', async () => {
    await images.remove(busyboxFp);
    assert.deepEqual(await images.list(), []);
    assert.deepEqual(await readdir(join(stateDir, 'images')), []);
    await images.remove(busyboxFp);
    await assert.rejects(images.sizeBytes(busyboxFp), { code: 'NotFound' });
    await assert.rejects(images.exists('../etc'), { code: 'InvalidArgument' });
  });
});
