import { configValue } from '../../core/config-keys.ts';
import { failedPrecondition } from '../../core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import type { ImageHandle } from '../guest-driver.ts';
import type { MachineType } from './qemu-command.ts';

/** What start() chose for a boot, kept in the guest dir for stop(), usage() and update(). */
export interface BootRecord {
  identity: ProcessIdentity;
  accelerator: string;
  machine: MachineType;
  memoryBytes: number;
  /** Guest RAM after the last balloon change. */
  balloonBytes: number;
  vcpus: number;
  stopSignal: string;
  kernelRelease: string;
  /** The host uid QEMU runs as (absent: a QEMU started as root before guests had their own). */
  uid?: number;
  /** Booted another OS's kernel without the guest kit (image property vm.kernel): no agent. */
  foreign?: boolean;
  /**
   * How it booted: the kit (cloud kernel and initramfs), another OS's kernel (vm.kernel), or
   * its own disk or CD through its firmware (a disk image, an ISO install). Absent: kit, or
   * kernel when `foreign`.
   */
  boot?: BootMode;
  firmware?: 'bios' | 'uefi';
  /** It has a VGA device and a VNC server (vm.display). */
  display?: boolean;
  nicModel?: 'virtio' | 'e1000';
}

/** How a vm guest boots (BootRecord.boot). */
export type BootMode = 'kit' | 'kernel' | 'firmware';

export const noDisk = (): Promise<string> => Promise.reject(new Error('no disk'));

/** How a started guest booted, also for boot records written before it was recorded. */
export const bootOf = (boot: BootRecord | undefined): BootMode =>
  boot?.boot ?? (boot?.foreign ? 'kernel' : 'kit');

/** How a guest of this image boots: through its firmware (a disk image or a blank disk), another kernel, or the kit. */
export function bootModeOf(image: ImageHandle): BootMode {
  if (image.blank || image.record.type === 'disk') return 'firmware';
  return image.record.properties['vm.kernel'] ? 'kernel' : 'kit';
}

/**
 * Keys that only mean something for a guest that boots through its firmware are refused on
 * one the kit boots: its kernel is handed to QEMU directly, and its initramfs has virtio
 * drivers only.
 */
export function assertBootConfig(spec: GuestSpec, mode: BootMode): void {
  if (mode === 'firmware') return;
  const how = mode === 'kit' ? "Trivisor's kernel" : "its image's vm.kernel";
  const offending = [
    configValue.vmFirmware(spec.config) === 'uefi' && 'vm.firmware=uefi',
    configValue.vmSecureBoot(spec.config) && 'vm.secureboot=true',
    configValue.vmDiskBus(spec.config) === 'sata' && 'vm.disk_bus=sata',
    configValue.vmNicModel(spec.config) === 'e1000' && 'vm.nic_model=e1000',
  ].filter((k): k is string => typeof k === 'string');
  if (offending.length > 0) {
    throw failedPrecondition(
      `Guest ${spec.name} boots ${how} directly (with virtio devices), so ${offending.join(' and ')} cannot apply: it is for guests of disk images and ISO installs; unset ${offending.length > 1 ? 'them' : 'it'}.`,
    );
  }
}

/**
 * Image properties that boot another OS's kernel directly instead of the
 * cloud kernel and the kit: `vm.kernel` (host path), `vm.cmdline` (its whole
 * command line) and `vm.ready` (console text that means it is up). Such
 * guests have no agent: exec fails, and stop ends in a kill after the timeout
 * unless the OS acts on ACPI power-down.
 */
export function foreignBootOf(
  image: ImageHandle,
): { kernel: string; cmdline: string[]; ready: string | undefined } | undefined {
  const kernel = image.record.properties['vm.kernel'];
  if (!kernel) return undefined;
  const cmdline = (image.record.properties['vm.cmdline'] ?? 'console=ttyS0,115200')
    .split(/\s+/)
    .filter(Boolean);
  return { kernel, cmdline, ready: image.record.properties['vm.ready'] };
}
