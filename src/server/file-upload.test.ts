import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { receiveToFile } from './file-upload.ts';

async function* chunksOf(data: Buffer, sizes: number[]): AsyncGenerator<Buffer> {
  let at = 0;
  for (let i = 0; at < data.length; i++) {
    const n = sizes[i % sizes.length] as number;
    yield data.subarray(at, at + n);
    at += n;
  }
}

test('receiveToFile() writes every byte in order across buffer boundaries, whatever the chunk sizes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'trivisor-upload-'));
  try {
    // 2.5 MiB and a few bytes: chunks straddle both buffers, and the last write is partial.
    const data = randomBytes((5 << 19) + 7);
    for (const sizes of [[65536], [1, 511, 4096], [3, 1 << 20, 70000], [(5 << 19) + 7]]) {
      const path = join(dir, `u-${sizes.join('-')}`);
      const size = await receiveToFile(chunksOf(data, sizes), path, { mode: 0o600 });
      assert.equal(size, data.length);
      assert.ok((await readFile(path)).equals(data), `sizes ${sizes.join(',')}`);
    }
    const empty = join(dir, 'empty');
    assert.equal(await receiveToFile(chunksOf(Buffer.alloc(0), [1]), empty, { mode: 0o600 }), 0);
    assert.equal((await readFile(empty)).length, 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('receiveToFile() rejects with the body’s failure and closes the file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'trivisor-upload-'));
  try {
    async function* failing(): AsyncGenerator<Buffer> {
      yield randomBytes(3 << 19);
      throw new Error('aborted');
    }
    await assert.rejects(receiveToFile(failing(), join(dir, 'f'), { mode: 0o600 }), /aborted/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('receiveToFile() with release gives back each whole chunk once copied, and writes the same bytes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'trivisor-upload-'));
  try {
    const data = randomBytes((5 << 19) + 7);
    const given: Buffer[] = [];
    async function* owned(): AsyncGenerator<Buffer> {
      for (let at = 0; at < data.length; at += 65536) {
        const chunk = Buffer.allocUnsafeSlow(Math.min(65536, data.length - at));
        data.copy(chunk, 0, at, at + chunk.length);
        given.push(chunk);
        yield chunk;
      }
    }
    const path = join(dir, 'released');
    assert.equal(await receiveToFile(owned(), path, { mode: 0o600, release: true }), data.length);
    assert.ok((await readFile(path)).equals(data));
    assert.ok(given.length > 1 && given.every((c) => (c.buffer as ArrayBuffer).detached));
    // A chunk that is a view into a larger buffer is not this function's to release.
    await receiveToFile(chunksOf(data, [65536]), join(dir, 'views'), { mode: 0o600, release: true });
    assert.equal((data.buffer as ArrayBuffer).detached, false);
    assert.ok((await readFile(join(dir, 'views'))).equals(data));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
