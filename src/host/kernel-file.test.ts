import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { readKernelFile } from './kernel-file.ts';

// A pseudo-file that reports a size of 0 and does not change while the test runs.
const PSEUDO = '/proc/self/cmdline';

test('a pseudo-file of size 0 reads as readFileSync reads it', async () => {
  assert.equal(statSync(PSEUDO).size, 0);
  const expected = readFileSync(PSEUDO, 'utf8');
  assert.ok(expected.length > 0);
  assert.equal(await readKernelFile(PSEUDO), expected);
});

test('a file larger than the first buffer is read whole, a small and an empty one too', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kernel-file-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const big = path.join(dir, 'big');
  const text = Array.from({ length: 20_000 }, (_, i) => `line ${i}\n`).join('');
  writeFileSync(big, text);
  const small = path.join(dir, 'small');
  writeFileSync(small, '42\n');
  assert.equal(await readKernelFile(big), text);
  assert.equal(await readKernelFile(small), '42\n');
  writeFileSync(small, '');
  assert.equal(await readKernelFile(small), '');
});

test('a missing file throws ENOENT, as readFile does', async () => {
  await assert.rejects(readKernelFile('/proc/self/no-such-file'), { code: 'ENOENT' });
});
