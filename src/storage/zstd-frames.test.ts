import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { ZstdFrameEnd } from './zstd-frames.ts';

/** Two real zstd frames (compressible and random data) with a skippable frame between them. */
function frames(): Buffer {
  const z = (data: Buffer) => execFileSync('zstd', ['-q', '-c', '--check'], { input: data });
  const skippable = Buffer.alloc(8 + 5, 7);
  skippable.writeUInt32LE(0x184d2a50, 0);
  skippable.writeUInt32LE(5, 4);
  return Buffer.concat([z(Buffer.alloc(300_000, 'a')), skippable, z(randomBytes(200_000))]);
}

/** Feeds `stream` in chunks of `size` and returns what was kept. */
function feed(stream: Buffer, size: number): Buffer {
  const f = new ZstdFrameEnd();
  const out: Buffer[] = [];
  for (let i = 0; i < stream.length; i += size) out.push(f.take(stream.subarray(i, i + size)));
  f.end();
  return Buffer.concat(out);
}

describe('ZstdFrameEnd', () => {
  const data = frames();
  const padded = Buffer.concat([data, Buffer.alloc(10_240 - (data.length % 10_240))]);

  it('keeps the frames and drops the zeros after them, whatever the chunk boundaries', () => {
    for (const size of [1, 2, 3, 5, 7, 4096, 65_536, 1 << 20]) {
      assert.deepEqual(feed(padded, size), data, `chunks of ${size}`);
      assert.deepEqual(feed(data, size), data, `unpadded, chunks of ${size}`);
    }
  });

  it('hands back slices of the chunks, not copies, when a chunk holds no cut magic number', () => {
    const f = new ZstdFrameEnd();
    const chunk = padded.subarray(0, 65_536);
    assert.equal(f.take(chunk).buffer, chunk.buffer);
  });

  it('refuses a stream that ends inside a frame', () => {
    assert.throws(() => feed(data.subarray(0, data.length - 10), 4096), /ends inside a frame/);
  });

  it('refuses bytes other than zeros after the frames, and a stream that is not zstd', () => {
    const bad = Buffer.concat([padded, Buffer.from([0, 0, 0, 0, 1])]);
    assert.throws(() => feed(bad, 4096), /other than zeros/);
    assert.throws(() => feed(Buffer.from('not zstd at all'), 3), /not zstd frames/);
  });
});
