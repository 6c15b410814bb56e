import assert from 'node:assert/strict';
import { lstat, readFile, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hostRunner } from '../../src/host/runner.ts';
import { buildBusyboxRootfs } from '../../src/images/busybox-image.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

describe('buildBusyboxRootfs', () => {
  const runner = hostRunner();
  let dir = '';
  before(async () => {
    dir = await makeRunDir('busybox');
  });
  after(async () => {
    await removeRunDir(dir);
  });

  test('builds a tree that runs a shell under chroot and boots with busybox init', async () => {
    const root = join(dir, 'rootfs');
    const metadata = await buildBusyboxRootfs(root, { runner });
    assert.equal(metadata.os, 'busybox');
    assert.equal(metadata.source, 'builtin');
    assert.equal(metadata.properties['stop.signal'], 'SIGUSR2');
    assert.deepEqual(JSON.parse(metadata.properties.init ?? 'null'), ['/sbin/init']);

    const { stdout } = await runner.run(['chroot', root, '/bin/sh', '-c', 'echo hi; ls /bin/ls && id -un']);
    assert.equal(stdout, 'hi\n/bin/ls\nroot\n');

    assert.equal(await readlink(join(root, 'sbin/init')), '/bin/busybox');
    const inittab = await readFile(join(root, 'etc/inittab'), 'utf8');
    assert.match(inittab, /^::sysinit:\/etc\/init\.d\/rcS$/m);
    assert.match(inittab, /^::shutdown:/m);
    assert.doesNotMatch(inittab, /^[^#].*(respawn|getty)/m);
    assert.match(await readFile(join(root, 'etc/os-release'), 'utf8'), /^ID=busybox$/m);
    assert.match(await readFile(join(root, 'etc/passwd'), 'utf8'), /^root:x:0:0:/m);
    assert.match(await readFile(join(root, 'etc/group'), 'utf8'), /^nobody:x:65534:/m);
    assert.equal((await stat(join(root, 'etc/init.d/rcS'))).mode & 0o777, 0o755);
    assert.equal((await stat(join(root, 'tmp'))).mode & 0o7777, 0o1777);
    for (const d of ['dev', 'proc', 'sys', 'run', 'var', 'home', 'root']) {
      assert.ok((await lstat(join(root, d))).isDirectory(), `${d} is a directory`);
    }
    // rcS must succeed even where hostname cannot be set (it just reports nothing fatal). It runs in
    // a UTS namespace of its own: run bare, its `hostname -F` would rename the host.
    const rcs = await runner.run(['unshare', '--uts', 'chroot', root, '/etc/init.d/rcS'], {
      allowFailure: true,
    });
    assert.equal(rcs.code, 0);
  });

  test('busybox init boots in a pid namespace and powers off on SIGUSR2', { timeout: 30_000 }, async () => {
    const root = join(dir, 'rootfs');
    const child = runner.spawn(
      [
        'unshare',
        '--pid',
        '--fork',
        '--mount',
        // Its own UTS and network namespaces: the image's rcS sets the host name from
        // /etc/hostname and runs DHCP on every NIC it sees (on the host's, it took the host off the net).
        '--uts',
        '--net',
        '--propagation',
        'private',
        'sh',
        '-c',
        'mount -t proc proc "$1/proc" && exec chroot "$1" /sbin/init',
        'sh',
        root,
      ],
      { stdio: ['ignore', 'ignore', 'ignore'] },
    );
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    let init = 0;
    try {
      // unshare --fork makes init its only child; it is pid 1 inside.
      for (let i = 0; i < 50 && init === 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
        const children = await readFile(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').catch(
          () => '',
        );
        init = Number(children.trim().split(' ')[0] ?? 0);
      }
      assert.ok(init > 0, 'init started');
      await new Promise((r) => setTimeout(r, 500));
      process.kill(init, 'SIGUSR2');
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        exited.then(() => false),
        new Promise<boolean>((r) => {
          timer = setTimeout(() => r(true), 15_000);
        }),
      ]);
      clearTimeout(timer);
      assert.equal(timedOut, false, 'init powered off within 15 s');
    } finally {
      try {
        if (init > 0) process.kill(init, 'SIGKILL');
      } catch {
        // Already powered off.
      }
      child.kill('SIGKILL');
      await exited;
    }
  });
});
