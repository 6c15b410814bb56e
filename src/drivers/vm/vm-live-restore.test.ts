import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { listArchive, tarHeader } from '../../storage/backup-archive.ts';
import { rootBlockdev } from './qemu-command.ts';
import { qemuFds } from './qemu-fds.ts';
import { liveRestoreLayer } from './vm-live-restore.ts';

describe('live restore of a vm guest (decision 0063)', () => {
  test("the archive's qcow2 is a window of the archive file under the overlay, read-only, unlocked", () => {
    const fds = qemuFds();
    const node = rootBlockdev(
      [
        { path: '/s/guests/web1/root.qcow2', format: 'qcow2' },
        liveRestoreLayer({ archivePath: '/s/imports/live-web1-0a.tar', offsetBytes: 1024, sizeBytes: 65536 }),
      ],
      fds,
    );
    assert.deepEqual(node, {
      driver: 'qcow2',
      'node-name': 'root',
      discard: 'unmap',
      file: { driver: 'file', filename: '/dev/fdset/1' },
      backing: {
        driver: 'qcow2',
        'read-only': true,
        file: {
          driver: 'raw',
          'read-only': true,
          offset: 1024,
          size: 65536,
          file: { driver: 'file', filename: '/dev/fdset/2', 'read-only': true, locking: 'off' },
        },
        backing: null,
      },
    });
    assert.deepEqual(fds.entries[1]?.source, {
      kind: 'file',
      path: '/s/imports/live-web1-0a.tar',
      access: 'read',
    });
  });

  test('a tar stored inside an archive is listed in place, offsets in the file; a header cut by the window is refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'trivisor-live-'));
    try {
      const data = Buffer.alloc(1000, 7);
      const inner = Buffer.concat([
        tarHeader('disk.qcow2', 'file', data.length, 0),
        data,
        Buffer.alloc(24),
        Buffer.alloc(1024),
      ]);
      const outer = Buffer.concat([
        tarHeader('rootfs.tar', 'file', inner.length, 0),
        inner,
        Buffer.alloc(1024),
      ]);
      const path = join(dir, 'a.tar');
      await writeFile(path, outer);
      assert.deepEqual(await listArchive(path, { offsetBytes: 512, sizeBytes: inner.length }), [
        { name: 'disk.qcow2', type: 'file', offset: 1024, size: 1000 },
      ]);
      await assert.rejects(listArchive(path, { offsetBytes: 512, sizeBytes: 1000 }), /past the end/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
