import { chmod, lstat, mkdir, open, rename, rm, stat, statfs, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition, invalidArgument } from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import { formatBytes, parseBytes } from '../core/sizes.ts';
import type { Model } from '../core/types.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { PoolDriverName } from './storage-pools.ts';

/**
 * What a custom volume holds: a file system tree (ct), a raw disk (vm, pvm), or an ISO image a
 * vm guest reads as a CD-ROM (read-only, uploaded whole: `storage volume import --type iso`).
 */
export type VolumeType = 'filesystem' | 'block' | 'iso';
/** The types `create` makes (an iso volume is made by an upload). */
export const VOLUME_TYPES: readonly VolumeType[] = ['filesystem', 'block'];

/** A custom volume (Incus's `custom` storage volume), stored at `keys.storageVolume(pool, name)`. */
export interface VolumeRecord {
  name: string;
  pool: string;
  type: VolumeType;
  /** Size asked for: a raw disk's length, a btrfs filesystem volume's qgroup limit (advisory on a dir pool). */
  sizeBytes: number;
  description: string;
  createdAt: string;
  /**
   * The member whose disks hold it (decision 28); records made before owners were recorded have
   * none until that member's controller stamps its own at start.
   */
  location?: string;
}

/** Default size of a new volume (Incus's default for block volumes). */
export const DEFAULT_VOLUME_BYTES = 10 * 1024 ** 3;
/** Smallest volume: below this an ext4 made inside has hardly room for its journal. */
export const MIN_VOLUME_BYTES = 1024 ** 2;
/** Sizes are rounded up to this (QEMU's block_resize wants whole sectors; 4 KiB suits every file system). */
export const VOLUME_SIZE_STEP = 4096;

/** Models that can use a volume of a type. */
export function modelsFor(type: VolumeType): Model[] {
  return type === 'filesystem' ? ['ct'] : type === 'iso' ? ['vm'] : ['vm', 'pvm'];
}

/** Checks and rounds a volume size (`1GiB`); InvalidArgument with what to write otherwise. */
export function parseVolumeSize(text: string): number {
  const bytes = parseBytes(text, 'volume size');
  if (bytes < MIN_VOLUME_BYTES) {
    throw invalidArgument(`The volume size ${JSON.stringify(text)} is too small: give at least 1MiB`);
  }
  return Math.ceil(bytes / VOLUME_SIZE_STEP) * VOLUME_SIZE_STEP;
}

/** Checks a volume's type; `undefined` means filesystem (Incus's default). */
export function parseVolumeType(text: string | undefined): VolumeType {
  if (text === undefined) return 'filesystem';
  if (text === 'iso') {
    throw invalidArgument(
      'An iso volume is made by uploading the ISO file: trivisor storage volume import POOL FILE NAME --type iso',
    );
  }
  if (!VOLUME_TYPES.includes(text as VolumeType)) {
    throw invalidArgument(`Unknown volume type ${JSON.stringify(text)}: use filesystem or block`);
  }
  return text as VolumeType;
}

/** The config keys of a volume create or update: only `size`. */
export function checkVolumeConfig(config: Record<string, string>): { sizeBytes?: number } {
  for (const key of Object.keys(config)) {
    if (key !== 'size') throw invalidArgument(`A volume has no key ${JSON.stringify(key)}: only size`);
  }
  return config.size === undefined ? {} : { sizeBytes: parseVolumeSize(config.size) };
}

/** A resize may only grow a volume (the same size is a no-op): InvalidArgument for a shrink. */
export function checkGrow(volume: VolumeRecord, sizeBytes: number): void {
  if (sizeBytes < volume.sizeBytes) {
    throw invalidArgument(
      `Volume ${volume.name} is ${formatBytes(volume.sizeBytes)}; it can only grow, not shrink to ${formatBytes(sizeBytes)}`,
    );
  }
}

/**
 * Checks the mount path of a filesystem volume in a ct guest: absolute,
 * normalized, not the root and not under the kernel's or runtime's own trees.
 */
export function checkMountPath(path: string): string {
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw invalidArgument(`The mount path ${JSON.stringify(path)} must be absolute, e.g. /mnt/data`);
  }
  const parts = path.split('/').filter((p) => p !== '');
  if (parts.some((p) => p === '.' || p === '..') || /[\0\n,:]/.test(path) || path.length > 255) {
    throw invalidArgument(
      `The mount path ${JSON.stringify(path)} is not valid: no '.', '..', commas, colons or newlines`,
    );
  }
  const normal = `/${parts.join('/')}`;
  if (normal === '/')
    throw invalidArgument('A volume cannot be mounted on / : give a path such as /mnt/data');
  const top = parts[0] ?? '';
  if (['proc', 'sys', 'dev', '.trivisor'].includes(top)) {
    throw invalidArgument(`A volume cannot be mounted under /${top}: give a path such as /mnt/data`);
  }
  return normal;
}

/** A volume name is a DNS label, as guests, pools and networks are. */
export function assertVolumeName(name: unknown): asserts name is string {
  assertDnsLabel(name, 'volume name');
}

/**
 * Where a volume is: `<pool>/custom/<name>` (a directory or subvolume), `<pool>/custom/<name>.img`
 * (raw disk) or `<pool>/custom/<name>.iso`.
 */
export function volumePath(poolPath: string, volume: Pick<VolumeRecord, 'name' | 'type'>): string {
  const suffix = volume.type === 'block' ? '.img' : volume.type === 'iso' ? '.iso' : '';
  return join(poolPath, 'custom', `${volume.name}${suffix}`);
}

/** Where ISO 9660 (`CD001`) and UDF (`BEA01`) put their signature: the first volume descriptor, sector 16. */
const ISO_SIGNATURE_OFFSET = 16 * 2048 + 1;

/** Whether `path` is an ISO image: an ISO 9660 or UDF file system's volume descriptor at sector 16. */
export async function isIsoImage(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const { bytesRead, buffer } = await handle.read(Buffer.alloc(5), 0, 5, ISO_SIGNATURE_OFFSET);
    const signature = buffer.subarray(0, bytesRead).toString('latin1');
    return signature === 'CD001' || signature === 'BEA01';
  } finally {
    await handle.close();
  }
}

/** Bytes of a volume as its pool counts them (null when unknown). */
export interface VolumeUsage {
  usedBytes: number | null;
}

/** Makes, grows, measures and removes volumes on a pool of either driver. */
export interface VolumeBackend {
  create(poolDriver: PoolDriverName, poolPath: string, volume: VolumeRecord): Promise<void>;
  /** Puts an uploaded ISO file in place as an iso volume (moved when it can be, else copied sparse). */
  importIso?(poolDriver: PoolDriverName, poolPath: string, volume: VolumeRecord, file: string): Promise<void>;
  resize(
    poolDriver: PoolDriverName,
    poolPath: string,
    volume: VolumeRecord,
    sizeBytes: number,
  ): Promise<void>;
  usage(poolDriver: PoolDriverName, poolPath: string, volume: VolumeRecord): Promise<VolumeUsage>;
  delete(poolDriver: PoolDriverName, poolPath: string, volume: VolumeRecord): Promise<void>;
}

/** A command's failure as the user should read it: a full pool says so. */
function explain(what: string, e: unknown): Error {
  const text = e instanceof Error ? e.message : String(e);
  if (/no space left|ENOSPC|quota exceeded|EDQUOT/i.test(text)) {
    return failedPrecondition(`Cannot ${what}: the pool is full; free some space or use another pool`);
  }
  return e instanceof Error ? e : new Error(text);
}

/**
 * Makes a pool's `custom/` root only, if it exists (decision 18): earlier versions left it 0711
 * for guest uids that no longer walk there. Called for every pool at daemon start.
 */
export async function closeVolumesDir(poolPath: string): Promise<void> {
  await chmod(join(poolPath, 'custom'), 0o700).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}

/** The volume backend over the host's tools (truncate, btrfs). */
export function createVolumeBackend(options: { runner: ProcessRunner }): VolumeBackend {
  const { runner } = options;
  const btrfsNumber = (s: string | undefined) => (s !== undefined && /^\d+$/.test(s) ? Number(s) : null);

  return {
    async create(poolDriver, poolPath, volume) {
      const dir = join(poolPath, 'custom');
      // Root only (decision 18): the daemon attaches volumes to ct guests (idmapped) and to vm
      // guests (descriptors), and pvm jails get theirs bound by root; no guest uid walks here.
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
      const path = volumePath(poolPath, volume);
      if (await lstat(path).catch(() => undefined)) {
        throw failedPrecondition(`${path} exists already: remove it or pick another volume name`);
      }
      try {
        if (volume.type === 'block') {
          const fs = await statfs(poolPath);
          if (volume.sizeBytes > fs.blocks * fs.bsize) {
            throw failedPrecondition(
              `Cannot create volume ${volume.name}: ${formatBytes(volume.sizeBytes)} is more than the whole pool (${formatBytes(fs.blocks * fs.bsize)})`,
            );
          }
          // Sparse: blocks are taken as the guest writes. No copy-on-write for a disk image on btrfs.
          await runner.run(['touch', path]);
          if (poolDriver === 'btrfs') await runner.run(['chattr', '+C', path], { allowFailure: true });
          await truncate(path, volume.sizeBytes);
          await chmod(path, 0o600);
        } else if (poolDriver === 'btrfs') {
          await runner.run(['btrfs', 'subvolume', 'create', path]);
          await runner.run(['btrfs', 'qgroup', 'limit', String(volume.sizeBytes), path]);
          await chmod(path, 0o755);
        } else {
          await mkdir(path, { mode: 0o755 });
        }
      } catch (e) {
        await removePath(poolDriver, path, volume.type).catch(() => {});
        throw explain(`create volume ${volume.name}`, e);
      }
    },

    async importIso(_poolDriver, poolPath, volume, file) {
      const dir = join(poolPath, 'custom');
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
      const path = volumePath(poolPath, volume);
      if (await lstat(path).catch(() => undefined)) {
        throw failedPrecondition(`${path} exists already: remove it or pick another volume name`);
      }
      const tmp = `${path}.tmp-${process.pid}`;
      try {
        // Root's and read-only to everyone else: QEMU gets it as a descriptor (decision 19).
        await rename(file, tmp).catch(async (e: NodeJS.ErrnoException) => {
          if (e.code !== 'EXDEV') throw e;
          await runner.run(['cp', '--sparse=always', '--', file, tmp]);
        });
        await chmod(tmp, 0o600);
        await rename(tmp, path);
      } catch (e) {
        await rm(tmp, { force: true });
        throw explain(`import volume ${volume.name}`, e);
      }
    },

    async resize(poolDriver, poolPath, volume, sizeBytes) {
      const path = volumePath(poolPath, volume);
      try {
        if (volume.type === 'block') await truncate(path, sizeBytes);
        else if (poolDriver === 'btrfs')
          await runner.run(['btrfs', 'qgroup', 'limit', String(sizeBytes), path]);
        // A filesystem volume on a dir pool has no enforced size: the record is all there is.
      } catch (e) {
        throw explain(`resize volume ${volume.name}`, e);
      }
    },

    async usage(poolDriver, poolPath, volume) {
      const path = volumePath(poolPath, volume);
      if (volume.type === 'block' || volume.type === 'iso') {
        const s = await stat(path).catch(() => undefined);
        return { usedBytes: s ? s.blocks * 512 : null };
      }
      if (poolDriver === 'btrfs') {
        const shown = await runner
          .run(['btrfs', 'qgroup', 'show', '--raw', '-f', path], { allowFailure: true })
          .catch(() => undefined);
        const fields =
          shown?.code === 0 ? (shown.stdout.trim().split('\n').pop() ?? '').trim().split(/\s+/) : [];
        return { usedBytes: btrfsNumber(fields[1]) };
      }
      const du = await runner.run(['du', '-sxb', path], { allowFailure: true }).catch(() => undefined);
      const n = du?.code === 0 ? Number(du.stdout.split(/\s/)[0]) : Number.NaN;
      return { usedBytes: Number.isFinite(n) ? n : null };
    },

    async delete(poolDriver, poolPath, volume) {
      await removePath(poolDriver, volumePath(poolPath, volume), volume.type);
    },
  };

  async function removePath(poolDriver: PoolDriverName, path: string, type: VolumeType): Promise<void> {
    if (!(await lstat(path).catch(() => undefined))) return;
    if (poolDriver === 'btrfs' && type === 'filesystem') {
      const r = await runner.run(['btrfs', 'subvolume', 'delete', path], { allowFailure: true });
      if (r.code === 0) return;
    }
    await rm(path, { recursive: true, force: true });
  }
}
