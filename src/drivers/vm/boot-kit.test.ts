import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { isTrivisorError } from '../../core/errors.ts';
import { findCloudKernel, INITRAMFS_INIT, moduleLoadOrder, moduleName, parseModulesDep } from './boot-kit.ts';

const DEP = `kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
`;

describe('boot kit', () => {
  test('module names drop the suffix and spell dashes as underscores', () => {
    assert.equal(moduleName('kernel/drivers/char/hw_random/virtio-rng.ko.xz'), 'virtio_rng');
    assert.equal(moduleName('kernel/fs/ext4/ext4.ko'), 'ext4');
  });

  test('modules load dependencies first, each once, and built-in ones are skipped', () => {
    const order = moduleLoadOrder(['virtio_pci', 'virtio_blk', 'virtio_rng', 'ext4'], {
      modules: parseModulesDep(DEP),
      builtin: new Set(['ext4']),
    }).map((m) => moduleName(m.path));
    assert.deepEqual(order, [
      'virtio_pci_modern_dev',
      'virtio_pci_legacy_dev',
      'virtio_ring',
      'virtio',
      'virtio_pci',
      'virtio_blk',
      'virtio_rng',
    ]);
  });

  test('a module the kernel lacks is a FailedPrecondition naming it', () => {
    assert.throws(
      () => moduleLoadOrder(['virtio_balloon'], { modules: parseModulesDep(DEP), builtin: new Set() }),
      (e: unknown) =>
        isTrivisorError(e) && e.code === 'FailedPrecondition' && /virtio_balloon/.test(e.message),
    );
  });

  test('the newest cloud kernel is found by release order', async () => {
    const dir = await mkdtemp('/tmp/trivisor-bootkit-');
    try {
      assert.equal(await findCloudKernel(dir), undefined);
      for (const n of [
        'vmlinuz-6.1.0-9-cloud-amd64',
        'vmlinuz-6.1.0-56-cloud-amd64',
        'vmlinuz-6.1.0-60-amd64',
      ]) {
        await writeFile(join(dir, n), '');
      }
      await mkdir(join(dir, 'grub'));
      assert.deepEqual(await findCloudKernel(dir), {
        kernelPath: join(dir, 'vmlinuz-6.1.0-56-cloud-amd64'),
        kernelRelease: '6.1.0-56-cloud-amd64',
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('the initramfs init powers off on any failure instead of dropping to a shell', () => {
    assert.match(INITRAMFS_INIT, /^#!\/bin\/busybox sh\n/);
    assert.match(INITRAMFS_INIT, /exec switch_root \/newroot "\$init" "\$@"/);
    assert.match(INITRAMFS_INIT, /fail\(\) \{.*poweroff -f/);
    assert.doesNotMatch(INITRAMFS_INIT, /exec sh|\/bin\/sh -i/);
  });
});
