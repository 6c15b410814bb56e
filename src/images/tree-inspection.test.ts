import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { detectTarCompression } from './tarball-image.ts';
import { readOsRelease, resolveInTree } from './tree-inspection.ts';

describe('tree inspection', () => {
  let root = '';
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'trivisor-inspect-'));
    await mkdir(join(root, 'usr/bin'), { recursive: true });
    await mkdir(join(root, 'usr/lib'), { recursive: true });
    await mkdir(join(root, 'etc'));
    await symlink('usr/bin', join(root, 'bin'));
    await writeFile(join(root, 'usr/bin/dash'), '');
    await symlink('dash', join(root, 'usr/bin/sh'));
    await symlink('/etc/passwd', join(root, 'usr/bin/escape'));
    await symlink('../../../../../../etc/shadow', join(root, 'usr/bin/climb'));
    await writeFile(join(root, 'usr/lib/os-release'), 'ID=debian\nPRETTY_NAME="Debian GNU/Linux 12"\n# c\n');
    await symlink('../usr/lib/os-release', join(root, 'etc/os-release'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('resolveInTree follows links as the guest sees them and never leaves the tree', async () => {
    assert.equal(await resolveInTree(root, '/bin/sh'), join(root, 'usr/bin/dash'));
    assert.equal(await resolveInTree(root, '/bin/escape'), null);
    assert.equal(await resolveInTree(root, '/bin/climb'), null);
    assert.equal(await resolveInTree(root, '/sbin/init'), null);
  });

  test('readOsRelease unquotes values', async () => {
    assert.deepEqual(await readOsRelease(root), { ID: 'debian', PRETTY_NAME: 'Debian GNU/Linux 12' });
  });

  test('detectTarCompression tells formats apart by magic bytes', async () => {
    const cases: Array<[Buffer, string]> = [
      [Buffer.from([0x1f, 0x8b, 8, 0]), 'gzip'],
      [Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), 'xz'],
      [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), 'zstd'],
      [Buffer.concat([Buffer.alloc(257), Buffer.from('ustar\0'), Buffer.alloc(249)]), 'none'],
    ];
    for (const [bytes, expected] of cases) {
      const path = join(root, 'archive.tar.gz');
      await writeFile(path, bytes);
      assert.equal(await detectTarCompression(path), expected);
    }
    await writeFile(join(root, 'x.tgz'), 'hello');
    await assert.rejects(detectTarCompression(join(root, 'x.tgz')), { code: 'InvalidArgument' });
  });
});
