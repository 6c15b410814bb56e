import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { ImageRecord } from '../../src/core/types.ts';
import type { ImageHandle } from '../../src/drivers/guest-driver.ts';
import type { ProcessRunner } from '../../src/host/runner.ts';
import { buildBusyboxRootfs } from '../../src/images/busybox-image.ts';
import { shiftTree } from '../../src/images/shift-tree.ts';

/**
 * Builds a busybox root file system once into `dir` and wraps it as the
 * ImageHandle a driver sees; shifted copies are made on first use per base,
 * as the image store does.
 */
export async function makeBusyboxImage(
  dir: string,
  options: { runner: ProcessRunner },
): Promise<ImageHandle> {
  await mkdir(dir, { recursive: true });
  const rootfs = join(dir, 'rootfs');
  const metadata = await buildBusyboxRootfs(rootfs, { runner: options.runner });
  const record: ImageRecord = {
    ...metadata,
    fingerprint: 'busybox-test',
    aliases: ['busybox'],
    sizeBytes: 0,
    createdAt: new Date().toISOString(),
  };
  const shifted = new Map<number, Promise<string>>();
  return {
    record,
    rootfs,
    shiftedRootfs(base) {
      let p = shifted.get(base);
      if (!p) {
        const target = join(dir, `rootfs-shifted-${base}`);
        p = shiftTree(rootfs, target, { base }).then(() => target);
        shifted.set(base, p);
      }
      return p;
    },
    baseDisk() {
      // The ct driver never asks; vm/pvm tests bring their own image handles.
      return Promise.reject(new Error('no base disk in the ct test image'));
    },
  };
}

/** The same image with another init (and stop signal): e.g. an init that ignores its stop signal. */
export function withInit(image: ImageHandle, init: string[], stopSignal = 'SIGTERM'): ImageHandle {
  return {
    ...image,
    record: {
      ...image.record,
      properties: { ...image.record.properties, init: JSON.stringify(init), 'stop.signal': stopSignal },
    },
  };
}
