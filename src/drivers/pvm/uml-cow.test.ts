import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseUmlCowHeader } from './uml-cow.ts';

/** A version 3 header as linux.uml writes it (big-endian). */
function header(backing: string): Buffer {
  const buf = Buffer.alloc(4096);
  buf.writeUInt32BE(0x4f4f4f4d, 0);
  buf.writeUInt32BE(3, 4);
  buf.writeUInt32BE(1_790_000_000, 8);
  buf.writeBigUInt64BE(256n * 1024n * 1024n, 12);
  buf.writeUInt32BE(512, 20);
  buf.writeUInt32BE(4096, 24);
  buf.write(backing, 32, 'utf8');
  return buf;
}

test('parseUmlCowHeader() reads the backing file, its size and mtime', () => {
  assert.deepEqual(parseUmlCowHeader(header('/var/lib/trivisor/images/abc/base.ext4')), {
    mtimeSeconds: 1_790_000_000,
    sizeBytes: 256 * 1024 * 1024,
    sectorSize: 512,
    alignment: 4096,
    backingFile: '/var/lib/trivisor/images/abc/base.ext4',
  });
});

test('parseUmlCowHeader() refuses a file that is not a UML COW file', () => {
  assert.throws(() => parseUmlCowHeader(Buffer.alloc(4096)), /not a UML copy-on-write file/);
  const v2 = header('/x');
  v2.writeUInt32BE(2, 4);
  assert.throws(() => parseUmlCowHeader(v2), /version 2/);
});
