import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ensureSearchable } from './searchable-path.ts';

test('ensureSearchable opens our own dirs for search only and names the first dir above that blocks', async () => {
  const top = await mkdtemp(join(tmpdir(), 'searchable-'));
  try {
    await chmod(top, 0o711);
    const own = join(top, 'state');
    await mkdir(own, { mode: 0o700 });
    await chmod(own, 0o700);
    assert.equal(await ensureSearchable([own], [join(own, 'x')]), undefined);
    assert.equal((await stat(own)).mode & 0o777, 0o701, 'search for others, no listing');
    await chmod(top, 0o700);
    assert.equal(await ensureSearchable([own], [join(own, 'x')]), top);
  } finally {
    await rm(top, { recursive: true, force: true });
  }
});
