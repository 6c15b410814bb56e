import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { type ImageFiles, imageFiles } from '../../src/images/image-files.ts';
import { debianArchiveUnreachable } from '../debian-archive.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

// Needs Debian's archive (about 25-60 s); without it there is nothing to test, and it says why.
const offline = await debianArchiveUnreachable();
describe('buildDebootstrap', { timeout: 600_000, skip: offline ?? false }, () => {
  const runner = hostRunner();
  let stateDir = '';
  let images: ImageFiles;
  before(async () => {
    stateDir = await makeRunDir('debootstrap');
    images = imageFiles(stateDir, { runner, log: silentLogger() });
  });
  after(async () => {
    await removeRunDir(stateDir);
  });

  test('a cancelled build leaves nothing behind, not even mounts', async () => {
    const controller = new AbortController();
    let mountedAtAbort = false;
    const build = images.buildDebootstrap('debian/bookworm', {
      signal: controller.signal,
      onProgress: (percent) => {
        // Configuring runs with /proc mounted in the target: the worst moment to stop.
        if (percent >= 80 && !controller.signal.aborted) {
          mountedAtAbort = readFileSync('/proc/self/mountinfo', 'utf8').includes(stateDir);
          controller.abort();
        }
      },
    });
    await assert.rejects(build, { code: 'Cancelled' });
    assert.ok(mountedAtAbort, 'debootstrap had mounts in the target when it was cancelled');
    assert.deepEqual(await readdir(join(stateDir, 'images')), []);
    const mounts = await readFile('/proc/self/mountinfo', 'utf8');
    assert.ok(!mounts.includes(stateDir), 'no mount left under the state dir');
  });

  test('builds Debian bookworm minbase with rising progress', async () => {
    const progress: Array<[number, string]> = [];
    const added = await images.buildDebootstrap('debian/bookworm', {
      onProgress: (percent, text) => progress.push([percent, text]),
    });
    const percents = progress.map(([p]) => p);
    for (let i = 1; i < percents.length; i++) {
      assert.ok(
        (percents[i] as number) >= (percents[i - 1] as number),
        `progress fell at step ${i}: ${percents}`,
      );
    }
    assert.ok(new Set(percents).size > 20, 'progress moves in many steps');
    assert.equal(percents.at(-1), 100);
    assert.ok(progress.some(([, text]) => /Configuring/.test(text)));

    assert.equal(added.metadata.os, 'debian');
    assert.equal(added.metadata.release, 'bookworm');
    assert.equal(added.metadata.source, 'debootstrap');
    assert.equal(added.metadata.properties['stop.signal'], 'SIGTERM');
    const init = JSON.parse(added.metadata.properties.init ?? '[]') as string[];
    assert.equal(init[0], '/bin/sh');

    const root = images.rootfsPath(added.fingerprint);
    assert.match(await readFile(join(root, 'etc/debian_version'), 'utf8'), /^12\./);
    assert.equal(await readFile(join(root, 'etc/hostname'), 'utf8'), 'debian\n');
    assert.equal((await stat(join(root, 'etc/resolv.conf'))).size, 0);
    const debs = await readdir(join(root, 'var/cache/apt/archives'));
    assert.ok(!debs.some((n) => n.endsWith('.deb')), 'package cache emptied');
    // Device nodes are dropped from image trees (decision 0018): a guest gets its /dev from its
    // engine, so the tree is run here with the host's /dev bound in, in a mount namespace of its own.
    const devs = await runner.run(['find', root, '-xdev', '(', '-type', 'c', '-o', '-type', 'b', ')']);
    assert.equal(devs.stdout, '', 'no device nodes in the tree');
    const inTree = (argv: string[]) => [
      'unshare',
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      'mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"',
      root,
      ...argv,
    ];
    const { stdout } = await runner.run(inTree(['/bin/sh', '-c', 'echo hi; id -un']));
    assert.equal(stdout, 'hi\nroot\n');

    // The sh init must stop with exit 0 on SIGTERM.
    const sh = await runner.run(inTree([...init.slice(0, 2), `(sleep 0.3; kill -TERM $$) & ${init[2]}`]), {
      timeoutMs: 10_000,
    });
    assert.equal(sh.code, 0);
    assert.deepEqual(
      (await readdir(join(stateDir, 'images'))).filter((n) => n.startsWith('.')),
      [],
    );
  });
});
