import type { GuestSpec, Model } from '../core/types.ts';

/** A custom volume attached to a guest, resolved to what a driver needs on the host. */
export interface AttachedVolume {
  /** Device name in the guest spec's `disks` (the volume's name unless chosen otherwise). */
  device: string;
  pool: string;
  volume: string;
  type: 'filesystem' | 'block' | 'iso';
  /** A directory or subvolume (filesystem), a raw disk image (block), an ISO image (iso: a vm's CD-ROM). */
  hostPath: string;
  /** Mount path in a ct guest (filesystem volumes). */
  path?: string;
  sizeBytes: number;
}

/** Resolves a guest's `disks` to host paths (from the pool and volume records); injected into drivers. */
export interface VolumeResolver {
  /** The guest's attached volumes in device-name order; volumes whose record is gone are left out. */
  resolve(spec: GuestSpec): Promise<AttachedVolume[]>;
}

/** What a hot change did: applied to the running guest, or left for its next start. */
export type LiveResult = 'live' | 'next-start';

/**
 * Hot attach, detach and resize of custom volumes on a running guest, one per
 * model (beside GuestDriver, as GuestStorage is). Called only while the guest
 * runs; a guest that does not run picks its volumes up at its next start.
 */
export interface GuestVolumes {
  readonly model: Model;
  /** Plugs `volume` into the running guest (`pid`: its top process, checked by the caller). */
  attach(spec: GuestSpec, volume: AttachedVolume, options: { pid: number }): Promise<LiveResult>;
  /** Unplugs it; FailedPrecondition when the guest still uses it and the engine cannot take it away. */
  detach(spec: GuestSpec, volume: AttachedVolume, options: { pid: number }): Promise<LiveResult>;
  /** Tells the running guest that an attached volume grew (already grown on the host). */
  resize(spec: GuestSpec, volume: AttachedVolume, options: { pid: number }): Promise<LiveResult>;
}

/** Short, stable id of a volume's device in an engine (QEMU ids, virtio serials are at most 20 bytes). */
export function engineIdOf(device: string): string {
  return `vol-${device}`.slice(0, 20);
}
