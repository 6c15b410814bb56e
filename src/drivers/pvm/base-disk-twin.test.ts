import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { hostRunner } from '../../host/runner.ts';
import { createBaseDiskTwins, twinPathOf } from './base-disk-twin.ts';

test("a base disk's twin has its bytes, size and mtime, read-only, and is made once", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'twin-'));
  try {
    const base = join(dir, 'disk-abc.ext4');
    await writeFile(base, Buffer.concat([Buffer.from('superblock'), Buffer.alloc(1 << 20)]));
    await utimes(base, new Date(1_700_000_000_000), new Date(1_700_000_123_456));
    const twins = createBaseDiskTwins(hostRunner());
    const [a, b] = await Promise.all([twins(base), twins(base)]);
    assert.equal(a, twinPathOf(base));
    assert.equal(b, a);
    const [t, s] = await Promise.all([stat(a), stat(base)]);
    assert.equal(t.size, s.size);
    assert.equal(Math.trunc(t.mtimeMs), Math.trunc(s.mtimeMs));
    assert.equal(t.mode & 0o777, 0o444);
    assert.deepEqual(await readFile(a), await readFile(base));
    // Made once: a second call keeps the same file (same inode).
    assert.equal((await stat(await twins(base))).ino, t.ino);
    // A base disk that changed (another mtime) gets a new twin.
    await utimes(base, new Date(1_700_000_000_000), new Date(1_700_000_999_000));
    assert.notEqual((await stat(await twins(base))).ino, t.ino);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
