import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { KERNEL_BOOT_ID_FILE, readBootId } from './boot-id.ts';

test("readBootId() reads the kernel's boot id, and a file's first line", async () => {
  assert.match(await readBootId(KERNEL_BOOT_ID_FILE), /^[0-9a-f-]{36}$/);
  const dir = await mkdtemp(path.join(tmpdir(), 'boot-id-'));
  try {
    const file = path.join(dir, 'boot-id');
    await writeFile(file, ' m4-boot-2 \nmore\n');
    assert.equal(await readBootId(file), 'm4-boot-2');
    await writeFile(file, '\n');
    await assert.rejects(readBootId(file), { code: 'FailedPrecondition', message: /is empty/ });
    await assert.rejects(readBootId(path.join(dir, 'missing')), {
      code: 'FailedPrecondition',
      message: /^Cannot read the boot id from .*missing/,
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
