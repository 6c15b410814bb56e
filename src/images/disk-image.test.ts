import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { inspectDiskImage, sniffUpload, writeSparse } from './disk-image.ts';

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

  test('writeSparse() writes what arrives in odd chunks, leaving holes for zero blocks, and answers its sha256 and length', async () => {
    const MiB = 1024 * 1024;
    // 4 MiB + 1000 bytes: data at the start, at 3 MiB and in the last partial block; zeros between.
    const bytes = Buffer.alloc(4 * MiB + 1000);
    bytes.fill(0xab, 0, 70_000);
    bytes.fill(0xcd, 3 * MiB, 3 * MiB + 10);
    bytes.fill(0xef, 4 * MiB + 990);
    const chunks: Buffer[] = [];
    for (let at = 0; at < bytes.length; at += 40_000) chunks.push(bytes.subarray(at, at + 40_000));
    const target = join(dir, 'sparse.bin');
    const r = await writeSparse(Readable.from(chunks), target);
    assert.deepEqual(r, {
      sha256: createHash('sha256').update(bytes).digest('hex'),
      sizeBytes: bytes.length,
    });
    assert.ok((await readFile(target)).equals(bytes), 'the same bytes');
    const st = await stat(target);
    assert.equal(st.mode & 0o777, 0o600);
    assert.ok(st.blocks * 512 < MiB, `holes for the zero blocks (${st.blocks * 512} bytes allocated)`);
    // A file that ends in zeros still has its whole length.
    const tail = join(dir, 'zero-tail.bin');
    const zeros = Buffer.alloc(200_000);
    zeros[0] = 1;
    assert.equal((await writeSparse(Readable.from([zeros]), tail)).sizeBytes, 200_000);
    assert.equal((await stat(tail)).size, 200_000);
  });

  test('writeSparse() never writes into an existing file', async () => {
    const existing = await file('taken.bin', Buffer.from('mine'));
    await assert.rejects(writeSparse(Readable.from([Buffer.from('theirs')]), existing), /EEXIST/);
    assert.equal(await readFile(existing, 'utf8'), 'mine');
  });
});
