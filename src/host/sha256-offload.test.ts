import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { hashedOnTheWay, offloadedSha256, sharedBuffer } from './sha256-offload.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** `data` handed out as the same shared buffer refilled for every chunk (as memberChunks does). */
async function* reusedChunksOf(data: Buffer, size: number): AsyncGenerator<Buffer> {
  const buffer = sharedBuffer(size);
  for (let at = 0; at < data.length; at += size) {
    const n = data.copy(buffer, 0, at, at + size);
    yield buffer.subarray(0, n);
    // What a reusing source does once the next chunk is asked for: a hash still reading this one would see it.
    buffer.fill(0xaa);
  }
}

describe('sha256 in a worker thread, over shared memory', () => {
  test('the digest is the sha256 of the updates in order, for empty, small and multi-MiB inputs', async () => {
    for (const size of [0, 1, 511, 3 * 2 ** 20 + 7]) {
      const data = randomBytes(size);
      const hash = offloadedSha256();
      const memory = sharedBuffer(size);
      data.copy(memory);
      // Updates of uneven sizes, at offsets inside the same shared buffer.
      for (let at = 0; at < size; at += 100_003)
        await hash.update(memory.subarray(at, Math.min(size, at + 100_003)));
      assert.equal(await hash.digest(), sha(data), `size ${size}`);
    }
  });

  test('hashes running at once stay apart, and updates not awaited one by one keep their order', async () => {
    const a = randomBytes(2 ** 20);
    const b = randomBytes(2 ** 20 + 1);
    const ha = offloadedSha256();
    const hb = offloadedSha256();
    const ma = sharedBuffer(a.length);
    const mb = sharedBuffer(b.length);
    a.copy(ma);
    b.copy(mb);
    const updates: Promise<void>[] = [];
    for (let at = 0; at < b.length; at += 65_536) {
      if (at < a.length) updates.push(ha.update(ma.subarray(at, at + 65_536)));
      updates.push(hb.update(mb.subarray(at, at + 65_536)));
    }
    await Promise.all(updates);
    assert.deepEqual(await Promise.all([ha.digest(), hb.digest()]), [sha(a), sha(b)]);
  });

  test('several shared buffers in one hash, each used again, are told apart', async () => {
    const a = sharedBuffer(1000);
    const b = sharedBuffer(3000);
    a.fill(1);
    b.fill(2);
    const hash = offloadedSha256();
    await hash.update(a.subarray(0, 500));
    await hash.update(b.subarray(1000));
    await hash.update(a.subarray(500));
    await hash.update(b.subarray(0, 1000));
    const want = Buffer.concat([a.subarray(0, 500), b.subarray(1000), a.subarray(500), b.subarray(0, 1000)]);
    assert.equal(await hash.digest(), sha(want));
  });

  test('a chunk is handed on whole and hashed before its source may reuse the buffer', async () => {
    const data = randomBytes(5 * 2 ** 20 + 333);
    const hash = offloadedSha256();
    const seen = createHash('sha256');
    let bytes = 0;
    for await (const chunk of hashedOnTheWay(reusedChunksOf(data, 2 ** 20), hash)) {
      seen.update(chunk);
      bytes += chunk.length;
    }
    assert.equal(bytes, data.length);
    assert.equal(seen.digest('hex'), sha(data));
    // The buffer is overwritten after each chunk: a hash that read late would differ.
    assert.equal(await hash.digest(), sha(data));
  });

  test('a consumer that stops early ends the chunks; the hash can be discarded', async () => {
    const hash = offloadedSha256();
    let n = 0;
    for await (const _ of hashedOnTheWay(reusedChunksOf(randomBytes(4 * 65_536), 65_536), hash)) {
      if (++n === 2) break;
    }
    hash.discard();
    hash.discard();
    await assert.rejects(hash.digest(), /after its end/);
    await assert.rejects(hash.update(sharedBuffer(1)), /after its end/);
  });

  test('memory that is not shared is refused, not copied', async () => {
    const hash = offloadedSha256();
    await assert.rejects(hash.update(Buffer.alloc(10)), /shared memory/);
    hash.discard();
  });

  test('a failed update fails the digest instead of giving the digest of part of the bytes', async () => {
    const hash = offloadedSha256();
    const memory = sharedBuffer(16);
    // A view claiming a range past the end of its shared memory: the worker cannot read it.
    const bad = memory.subarray(0, 8);
    Object.defineProperty(bad, 'byteOffset', { value: 12 });
    await assert.rejects(hash.update(bad), /sha256 failed/);
    await assert.rejects(hash.digest(), /sha256 failed/);
  });
});
