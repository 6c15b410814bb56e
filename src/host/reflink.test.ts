import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { copyFlags, isOnBtrfs, reflinkFlag } from './reflink.ts';

test('off btrfs a copy may reflink where it can and keeps disk files sparse', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-reflink-'));
  try {
    const from = path.join(dir, 'a');
    await writeFile(from, 'x');
    if (await isOnBtrfs(dir)) return; // the test host's tmp is ext4; btrfs pools are tested in test/system
    assert.equal(await reflinkFlag(from, path.join(dir, 'b')), '--reflink=auto');
    assert.deepEqual(await copyFlags(from, path.join(dir, 'b'), { sparse: true }), [
      '--reflink=auto',
      '--sparse=always',
    ]);
    assert.deepEqual(await copyFlags(from, path.join(dir, 'b')), ['--reflink=auto']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
