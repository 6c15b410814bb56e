import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../src/core/types.ts';
import type { ImageHandle } from '../../src/drivers/guest-driver.ts';
import { GUEST_KERNEL_DIR } from '../../src/drivers/vm/boot-kit.ts';
import { eventually } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';
import { makeVmFixture, type VmFixture } from './vm-fixture.ts';

/** Debian's memtest86+ (package memtest86+): a standalone OS with its own kernel, not Linux. setup/test unpacks it. */
const MEMTEST = join(GUEST_KERNEL_DIR, 'boot/memtest86+x64.bin');

describe('vm guests run an OS other than the host', () => {
  let f: VmFixture;
  let spec: GuestSpec;
  before(async () => {
    assert.ok(existsSync(MEMTEST), `${MEMTEST} is missing: run setup/test (it unpacks memtest86+)`);
    f = await makeVmFixture();
    spec = testGuestSpec('memtest', 'vm', { 'limits.memory': '128MiB' });
  });
  after(async () => {
    await f.driver.stop(spec, { timeoutMs: 0, force: true }).catch(() => {});
    await f.driver.delete(spec).catch(() => {});
    await f.cleanup();
  });

  test('memtest86+ boots as the kernel of a vm guest, tests the guest RAM on the serial console, and is killed on stop', async () => {
    // memtest needs no disk, but every vm guest has one: an empty raw file stands in for the base disk.
    const blank = join(f.dir, 'blank.raw');
    await writeFile(blank, Buffer.alloc(1024 * 1024));
    const image: ImageHandle = {
      ...f.image,
      record: {
        ...f.image.record,
        fingerprint: 'memtest86plus',
        properties: { 'vm.kernel': MEMTEST, 'vm.cmdline': 'console=ttyS0,115200', 'vm.ready': 'Memtest86+' },
      },
      baseDisk: () => Promise.resolve(blank),
    };
    await f.driver.create(spec, image);
    const id = await f.driver.start(spec, image);
    assert.equal((await f.driver.inspect(spec, id)).state, 'running');
    const log = () => readFile(f.driver.consoleLogPath(spec), 'utf8');
    // Its first screen names the RAM it found: the guest's 128 MiB less what the firmware keeps.
    assert.ok(await eventually(async () => /Memory\s*:\s*12\dMB/.test(await log()), 30_000), await log());
    assert.match(await log(), /Memtest86\+ v\d+/);
    assert.doesNotMatch(await log(), /Linux version/);
    // It has no agent and ignores ACPI: stop kills it after the timeout.
    await f.driver.stop(spec, { timeoutMs: 1000, force: false });
    assert.equal((await f.driver.inspect(spec, id)).state, 'stopped');
    await f.driver.delete(spec);
    await f.assertNoLeftovers(spec);
  });
});
