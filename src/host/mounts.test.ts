import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { ensureSharedMount, isMountPoint, parseMountinfo } from './mounts.ts';

const line = (id: number, point: string, optional: string) =>
  `${id} 1 0:${id} / ${point} rw,relatime ${optional} - ext4 /dev/vda rw`.replace('  ', ' ');

async function withMountinfo(lines: string[], fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'mountinfo-'));
  try {
    const path = join(dir, 'mountinfo');
    await writeFile(path, `${lines.join('\n')}\n`);
    await fn(path);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('parseMountinfo reads mount points and whether they are shared', () => {
  const entries = parseMountinfo(
    [line(1, '/', 'shared:1'), line(2, '/var/lib/a\\040b', ''), line(3, '/x', 'master:4')].join('\n'),
  );
  assert.deepEqual(entries, [
    { mountPoint: '/', shared: true },
    { mountPoint: '/var/lib/a b', shared: false },
    { mountPoint: '/x', shared: false },
  ]);
});

test('a state dir on a shared mount is left as it is', async () => {
  await withMountinfo([line(1, '/', 'shared:1')], async (mountinfoPath) => {
    const runner = fakeRunner();
    assert.equal(await ensureSharedMount('/var/lib/trivisor', { runner, mountinfoPath }), 'already-shared');
    assert.deepEqual(runner.commands(), []);
  });
});

test('on a private root the state dir is bound onto itself and made shared, nothing else', async () => {
  await withMountinfo([line(1, '/', ''), line(2, '/var', '')], async (mountinfoPath) => {
    const runner = fakeRunner();
    assert.equal(await ensureSharedMount('/var/lib/trivisor', { runner, mountinfoPath }), 'made-shared');
    assert.deepEqual(runner.commands(), [
      'mount --bind /var/lib/trivisor /var/lib/trivisor',
      'mount --make-shared /var/lib/trivisor',
    ]);
  });
});

test('a state dir that is its own private mount is only made shared', async () => {
  await withMountinfo([line(1, '/', ''), line(2, '/srv/t', '')], async (mountinfoPath) => {
    const runner = fakeRunner();
    assert.equal(await ensureSharedMount('/srv/t', { runner, mountinfoPath }), 'made-shared');
    assert.deepEqual(runner.commands(), ['mount --make-shared /srv/t']);
  });
});

test('with mounts already below it the state dir is not bound over them (that would pin them)', async () => {
  await withMountinfo([line(1, '/', ''), line(2, '/srv/t/storage-pools/fast', '')], async (mountinfoPath) => {
    const runner = fakeRunner();
    assert.equal(await ensureSharedMount('/srv/t', { runner, mountinfoPath }), 'busy');
    assert.deepEqual(runner.commands(), []);
  });
});

test('isMountPoint: a mount point, an escaped one, and paths that only appear inside another line', async () => {
  await withMountinfo(
    [line(1, '/', 'shared:1'), line(2, '/srv/pool', ''), line(3, '/srv/with\\040space', 'shared:2')],
    async (path) => {
      assert.equal(await isMountPoint('/srv/pool', path), true);
      assert.equal(await isMountPoint('/srv/pool/', path), true, 'resolved first');
      assert.equal(await isMountPoint('/srv/with space', path), true, 'unescaped');
      // In the text (a prefix of a mount point, a field of another line) but no mount point itself.
      assert.equal(await isMountPoint('/srv', path), false);
      assert.equal(await isMountPoint('/dev/vda', path), false);
      // Nowhere in the text.
      assert.equal(await isMountPoint('/var/lib/trivisor/guests/web/rootfs', path), false);
      assert.equal(await isMountPoint('/srv/with\\040space', path), false, 'an escaped name is not the path');
    },
  );
});
