import type { ImageRecord } from '../core/types.ts';

/**
 * What the image layer knows about an image from its tree alone. The image
 * service adds the store-owned fields (fingerprint, aliases, createdAt,
 * sizeBytes) when it persists an `ImageRecord`.
 */
export type ImageMetadata = Omit<ImageRecord, 'fingerprint' | 'aliases' | 'createdAt' | 'sizeBytes'>;

/**
 * Init argv for trees that have no init of their own (debootstrap minbase, bare
 * tarballs): POSIX sh as pid 1 waits forever, reaps orphans through `wait`, and
 * exits 0 when asked to stop, taking its sleep along (outside a pid namespace
 * an orphaned sleep would hold the caller's pipes open).
 */
export const SH_INIT_ARGV: readonly string[] = [
  '/bin/sh',
  '-c',
  "trap 'kill $! 2>/dev/null; exit 0' TERM INT PWR; while :; do sleep 3600 & wait $!; done",
];

/** Image properties for an init argv and the signal that asks it to power off. */
export function initProperties(init: readonly string[], stopSignal: string): Record<string, string> {
  return { init: JSON.stringify(init), 'stop.signal': stopSignal };
}

/** The host's architecture in the kernel's (`uname -m`) spelling, which image records use. */
export function hostArchitecture(): string {
  const names: Record<string, string> = {
    x64: 'x86_64',
    arm64: 'aarch64',
    ia32: 'i686',
    arm: 'armv7l',
    riscv64: 'riscv64',
    ppc64: 'ppc64le',
    s390x: 's390x',
  };
  return names[process.arch] ?? process.arch;
}
