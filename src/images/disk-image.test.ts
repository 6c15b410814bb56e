import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { inspectDiskImage, sniffUpload } from './disk-image.ts';

describe('disk image uploads', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'disk-image-test-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const file = async (name: string, bytes: Buffer) => {
    const path = join(dir, name);
    await writeFile(path, bytes);
    return path;
  };
  const at = (size: number, writes: Array<[number, Buffer | string]>) => {
    const b = Buffer.alloc(size);
    for (const [offset, data] of writes) Buffer.from(data as string, 'latin1').copy(b, offset);
    return b;
  };

  test('uploads are told apart by content: qcow2, raw disk, ISO (hybrid ones too), tarball, anything else', async () => {
    assert.equal(await sniffUpload(await file('a.img', at(4096, [[0, 'QFI\xfb']]))), 'qcow2');
    assert.equal(await sniffUpload(await file('b.img', at(4096, [[510, '\x55\xaa']]))), 'raw-disk');
    // A hybrid ISO has an MBR too: it is an ISO all the same.
    const hybrid = at(40_000, [
      [510, '\x55\xaa'],
      [32769, 'CD001'],
    ]);
    assert.equal(await sniffUpload(await file('c.iso', hybrid)), 'iso');
    assert.equal(await sniffUpload(await file('d.tar', at(1024, [[257, 'ustar']]))), 'tarball');
    assert.equal(await sniffUpload(await file('e.tar.gz', at(64, [[0, '\x1f\x8b']]))), 'tarball');
    assert.equal(await sniffUpload(await file('f.bin', at(4096, [[0, 'hello']]))), 'unknown');
    assert.equal(await sniffUpload(await file('g.bin', Buffer.alloc(0))), 'unknown');
  });

  test('a qcow2 with a backing file, an external data file or encryption is refused before anything reads it', async () => {
    const infoSaying = (info: Record<string, unknown>) => {
      return fakeRunner((argv) =>
        argv[0] === 'qemu-img' && argv[1] === 'info'
          ? { stdout: JSON.stringify({ 'virtual-size': 1 << 30, ...info }) }
          : undefined,
      );
    };
    await assert.rejects(
      inspectDiskImage(infoSaying({ 'backing-filename': '/etc/shadow' }), '/x', 'qcow2'),
      /has a backing file: flatten it/,
    );
    await assert.rejects(
      inspectDiskImage(
        infoSaying({ 'format-specific': { data: { 'data-file': '/dev/sda' } } }),
        '/x',
        'qcow2',
      ),
      /external file/,
    );
    await assert.rejects(inspectDiskImage(infoSaying({ encrypted: true }), '/x', 'qcow2'), /encrypted/);
    const ok = infoSaying({});
    assert.deepEqual(await inspectDiskImage(ok, '/x', 'qcow2'), {
      format: 'qcow2',
      virtualSizeBytes: 1 << 30,
    });
    // -f: never probed; no --backing-chain: nothing but the file is opened.
    assert.deepEqual(ok.calls[0]?.argv, ['qemu-img', 'info', '-f', 'qcow2', '--output=json', '/x']);
  });
});
