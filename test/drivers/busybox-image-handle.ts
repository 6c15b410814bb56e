import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { ImageRecord } from '../../src/core/types.ts';
import type { ImageHandle } from '../../src/drivers/guest-driver.ts';
import type { ProcessRunner } from '../../src/host/runner.ts';
import { buildBusyboxRootfs } from '../../src/images/busybox-image.ts';

/**
 * Builds a busybox root file system once into `dir` and wraps it as the
 * ImageHandle a driver sees (ct guests see the tree through idmapped mounts).
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
  return {
    record,
    rootfs,
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
