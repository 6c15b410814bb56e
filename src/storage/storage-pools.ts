import { mkdir, rm, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition, invalidArgument, notSupported } from '../core/errors.ts';
import { parseBytes } from '../core/sizes.ts';
import { isMountPoint, unmountIfMounted } from '../host/mounts.ts';
import type { ProcessRunner } from '../host/runner.ts';

/** Pool backends. */
export type PoolDriverName = 'dir' | 'btrfs';
export const POOL_DRIVERS: readonly PoolDriverName[] = ['dir', 'btrfs'];

/** A storage pool, stored at `keys.storagePool(name)`. */
export interface PoolRecord {
  name: string;
  driver: PoolDriverName;
  description: string;
  /** `size` (btrfs loop file, e.g. 2GiB) or `source` (a block device for btrfs, a directory for dir). */
  config: Record<string, string>;
  createdAt: string;
  /**
   * The member whose disks hold it (decision 28); records made before owners were recorded have
   * none until that member's controller stamps its own at start.
   */
  location?: string;
  /**
   * Defined on every member of a cluster under this one name (decision 0038): each member's pool
   * controller makes its own instance under its own state dir; no `location`.
   */
  everyMember?: boolean;
  /**
   * One directory every member sees at the same path (`source`, NFS or a cluster file system;
   * decision 0049): a dir pool on every member whose instances are all that directory, so any
   * member can run a guest on it. Always with `everyMember` and `marker`.
   */
  shared?: boolean;
  /** A shared pool's random id, also written at its root: each member proves it sees that very directory. */
  marker?: string;
}

/** Space of a pool as its file system reports it. */
export interface PoolUsage {
  totalBytes: number;
  usedBytes: number;
}

/** One pool backend (Incus's storage drivers): makes, mounts, measures and removes pools. */
export interface PoolDriver {
  readonly name: PoolDriverName;
  /** Checks a pool's config before anything is made. */
  validate(pool: PoolRecord): void;
  /** Makes the pool and mounts it at `mountPath(pool)`; leaves nothing behind when it fails. */
  create(pool: PoolRecord): Promise<void>;
  /** Mounts an existing pool again (daemon start after a host reboot); idempotent. */
  mount(pool: PoolRecord): Promise<void>;
  usage(pool: PoolRecord): Promise<PoolUsage>;
  /** Unmounts and removes the pool and everything in it. */
  delete(pool: PoolRecord): Promise<void>;
  /** Where the pool's file system is reachable. */
  mountPath(pool: PoolRecord): string;
}

/** Smallest btrfs loop file: mkfs.btrfs refuses much less. */
const BTRFS_MIN_BYTES = 256 * 1024 ** 2;
const DEFAULT_BTRFS_BYTES = 1024 ** 3;

async function usageOf(path: string): Promise<PoolUsage> {
  const s = await statfs(path);
  return { totalBytes: s.blocks * s.bsize, usedBytes: (s.blocks - s.bfree) * s.bsize };
}

const exists = async (path: string) => (await stat(path).catch(() => undefined)) !== undefined;

/** The pool backends of one state dir. */
export function createPoolDrivers(options: {
  runner: ProcessRunner;
  stateDir: string;
}): Record<PoolDriverName, PoolDriver> {
  const { runner, stateDir } = options;
  const poolsDir = join(stateDir, 'storage-pools');
  const defaultPath = (pool: PoolRecord) => join(poolsDir, pool.name);

  const dir: PoolDriver = {
    name: 'dir',
    validate(pool) {
      for (const key of Object.keys(pool.config)) {
        if (key !== 'source')
          throw invalidArgument(`A dir pool has no key ${JSON.stringify(key)}: only source`);
      }
      if (pool.config.source !== undefined && !pool.config.source.startsWith('/')) {
        throw invalidArgument('The source of a dir pool must be an absolute path');
      }
    },
    mountPath: (pool) => pool.config.source ?? defaultPath(pool),
    async create(pool) {
      await mkdir(dir.mountPath(pool), { recursive: true, mode: 0o711 });
    },
    async mount(pool) {
      await mkdir(dir.mountPath(pool), { recursive: true, mode: 0o711 });
    },
    usage: (pool) => usageOf(dir.mountPath(pool)),
    async delete(pool) {
      // A source directory belongs to the administrator: only what Trivisor made goes.
      if (pool.config.source === undefined) await rm(defaultPath(pool), { recursive: true, force: true });
    },
  };

  const imageOf = (pool: PoolRecord) => join(poolsDir, `${pool.name}.img`);
  const deviceOf = (pool: PoolRecord) => pool.config.source ?? imageOf(pool);

  const btrfs: PoolDriver = {
    name: 'btrfs',
    validate(pool) {
      for (const key of Object.keys(pool.config)) {
        if (key !== 'size' && key !== 'source') {
          throw invalidArgument(`A btrfs pool has no key ${JSON.stringify(key)}: use size or source`);
        }
      }
      if (pool.config.size !== undefined && pool.config.source !== undefined) {
        throw invalidArgument(
          'Give a btrfs pool either size (a loop file) or source (a block device), not both',
        );
      }
      if (pool.config.size !== undefined && parseBytes(pool.config.size, 'size') < BTRFS_MIN_BYTES) {
        throw invalidArgument('A btrfs pool needs at least 256MiB');
      }
    },
    mountPath: defaultPath,
    async create(pool) {
      const probe = await runner
        .run(['mkfs.btrfs', '--version'], { allowFailure: true })
        .catch(() => undefined);
      if (probe?.code !== 0) {
        throw notSupported("btrfs pools need mkfs.btrfs: install Debian's btrfs-progs package");
      }
      const mnt = defaultPath(pool);
      await mkdir(poolsDir, { recursive: true, mode: 0o711 });
      if (await exists(mnt))
        throw failedPrecondition(`${mnt} exists already: remove it or pick another pool name`);
      const sizeBytes = pool.config.size ? parseBytes(pool.config.size, 'size') : DEFAULT_BTRFS_BYTES;
      try {
        if (pool.config.source === undefined) {
          await runner.run(['truncate', '-s', String(sizeBytes), imageOf(pool)]);
        }
        await runner.run(['mkfs.btrfs', '-q', '-f', '-L', `trivisor-${pool.name}`, deviceOf(pool)]);
        await btrfs.mount(pool);
        // Quotas make per-guest limits.disk (qgroups) possible.
        await runner.run(['btrfs', 'quota', 'enable', mnt]);
      } catch (e) {
        await unmountIfMounted(mnt, { runner }).catch(() => {});
        await rm(mnt, { recursive: true, force: true });
        if (pool.config.source === undefined) await rm(imageOf(pool), { force: true });
        throw e;
      }
    },
    async mount(pool) {
      const mnt = defaultPath(pool);
      if (await isMountPoint(mnt)) return;
      await mkdir(mnt, { recursive: true, mode: 0o711 });
      // A loop mount with autoclear: unmounting frees the loop device too.
      const loop = pool.config.source === undefined ? ['-o', 'loop'] : [];
      await runner.run(['mount', '-t', 'btrfs', ...loop, deviceOf(pool), mnt]);
    },
    usage: (pool) => usageOf(defaultPath(pool)),
    async delete(pool) {
      const mnt = defaultPath(pool);
      await unmountIfMounted(mnt, { runner });
      if (await isMountPoint(mnt))
        throw failedPrecondition(`${mnt} is busy: stop what uses it and delete again`);
      await rm(mnt, { recursive: true, force: true });
      if (pool.config.source === undefined) await rm(imageOf(pool), { force: true });
    },
  };

  return { dir, btrfs };
}
