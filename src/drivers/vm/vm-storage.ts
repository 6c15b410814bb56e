import { randomBytes } from 'node:crypto';
import {
  chmod,
  chown,
  copyFile,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { failedPrecondition, invalidArgument, notFound } from '../../core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import { type FlatQcow2Source, flatQcow2Source, streamFlatQcow2 } from '../../host/qcow2-stream.ts';
import { qemuImg } from '../../host/qemu-img.ts';
import { copyFlags } from '../../host/reflink.ts';
import { tarHeader } from '../../storage/backup-archive.ts';
import { type AgentAccess, FREEZE_MARKER, thawIfMarked, withFrozenFileSystems } from '../agent-fs-freeze.ts';
import { TAR_PIPE_RECORD_ARGS, unpackZstdTar } from '../archive-unpack.ts';
import type { DriverContext } from '../guest-driver.ts';
import { type FromSnapshot, type GuestStorage, TAR_ZSTD } from '../guest-storage.ts';
import { writeThroughZstd } from '../zstd-writer.ts';
import { UEFI_VARS_META } from './firmware.ts';
import { vmGuestPaths } from './qemu-command.ts';
import { connectQmp, type QmpClient } from './qmp-client.ts';
import type { AgentPool } from './vm-agent.ts';
import {
  createVmIncrementalBackups,
  isBackupBitmap,
  isSoundBitmap,
  linkBitmap,
  storedBitmaps,
} from './vm-incremental.ts';
import { createVmLiveRestore } from './vm-live-restore.ts';

/** Half-made files and internal snapshots carry this prefix until they are complete. */
const TMP_PREFIX = '.tmp-';
/** The block device of the root disk in the QEMU command line (`-drive …,id=root`). */
const ROOT_DEVICE = 'root';
/** Name of the disk inside an archive made by exportTar. */
const ARCHIVE_DISK = 'disk.qcow2';
/**
 * The disk's backup bitmaps inside an archive made by exportTar (decision 0062, amended
 * 2026-12-07): an empty qcow2 of the disk's size holding them, so that the chain can go on where
 * the archive is imported. The flat disk is streamed without bitmaps (decision 0085).
 */
const ARCHIVE_BITMAPS = 'disk-bitmaps.qcow2';
/** Largest bitmap image an archive may bring: 1 bit per 64 KiB is 2 MiB for 1 TiB. */
const MAX_BITMAPS_BYTES = 64 * 1024 * 1024;
/** The guest's UEFI variables inside an archive (guests with vm.firmware=uefi). */
const ARCHIVE_UEFI_VARS = 'uefi-vars.fd';
/** Largest UEFI variable store an archive may bring (OVMF's is 528 KiB, or 128 KiB for 2 MiB builds). */
const MAX_UEFI_VARS_BYTES = 4 * 1024 * 1024;
/** Present while the guest's vCPUs are paused for a snapshot (no agent to freeze with). */
const PAUSE_MARKER = 'paused-for-snapshot';
/** vm-incremental.ts's record of the guest's own backup chain. */
const CHAIN_FILE = 'backup-chain.json';
/** Which backup of which chain the guest's disk was last restored to (by importIncremental), and its mtime then. */
const RESTORED_CHAIN_FILE = 'restored-chain.json';
/** The guest's UEFI variables beside each snapshot, `<snapshot>.fd` (vm.firmware=uefi guests). */
const UEFI_SNAPSHOTS_DIR = 'uefi-snapshots';

/** What the vm storage is built with beyond the driver context. */
export interface VmStorageOptions {
  /** The vm driver's agent connections (main.ts makes one pool for both). */
  agents: AgentPool;
}

/**
 * Storage of `vm` guests (docs/decisions/0008-vm-and-pvm-storage.md): a guest's
 * writable state is its qcow2 overlay `root.qcow2` on the image's shared base
 * disk. Snapshots are internal qcow2 snapshots of that file (copy-on-write
 * inside it): taken with QMP `blockdev-snapshot-internal-sync` while QEMU runs,
 * with the guest's file systems frozen through its agent, and with
 * `qemu-img snapshot` when it is stopped. Copies are new overlays on the same
 * base disk holding only the source's own clusters; archives hold a flat
 * qcow2 (base disk included), because base disks are made anew on each host.
 */
export function createVmStorage(ctx: DriverContext, options: VmStorageOptions): GuestStorage {
  const { runner, stateDir } = ctx;
  const log = ctx.log.child({ storage: 'vm' });
  const img = qemuImg(runner);
  const pathsOf = (spec: GuestSpec) => vmGuestPaths(stateDir, spec.name);
  const incremental = createVmIncrementalBackups(ctx, options);

  const exists = async (path: string) => (await stat(path).catch(() => undefined)) !== undefined;
  const tmpName = (what: string) => `${TMP_PREFIX}${what}-${randomBytes(4).toString('hex')}`;

  /**
   * UEFI variables (docs/decisions/0023): the firmware's boot entries and keys live in
   * `uefi-vars.fd`, outside the qcow2, so every snapshot, copy and archive carries a copy of
   * that file too. A guest without one (BIOS, the kit) has nothing to carry.
   */
  const uefiVarsOf = (spec: GuestSpec): string => pathsOf(spec).uefiVars;
  const uefiMetaOf = (spec: GuestSpec): string => join(pathsOf(spec).dir, UEFI_VARS_META);
  const uefiSnapshotOf = (spec: GuestSpec, snap: string): string =>
    join(pathsOf(spec).dir, UEFI_SNAPSHOTS_DIR, `${snap}.fd`);
  /** Copies `from` to `to` through a temporary name beside it (a crash leaves no half file); false when there is no `from`. */
  const copyAside = async (from: string, to: string): Promise<boolean> => {
    if (!(await exists(from))) return false;
    await mkdir(dirname(to), { recursive: true, mode: 0o700 });
    const tmp = join(dirname(to), tmpName('uefi'));
    try {
      await copyFile(from, tmp);
      // Root's alone whatever the source's mode (an archive's member has the mode tar gave it).
      await chmod(tmp, 0o600);
      await rename(tmp, to);
    } finally {
      await rm(tmp, { force: true });
    }
    return true;
  };
  /** The variables of a state of the guest: those kept with a snapshot, or its current ones. */
  const uefiVarsAt = (spec: GuestSpec, snap: string | undefined): string =>
    snap === undefined ? uefiVarsOf(spec) : uefiSnapshotOf(spec, snap);

  /** The QEMU of the guest when it runs (identity from the driver's boot.json, checked against pid reuse). */
  const liveQemu = async (spec: GuestSpec): Promise<ProcessIdentity | undefined> => {
    const boot = await readFile(pathsOf(spec).bootRecord, 'utf8')
      .then((t) => JSON.parse(t) as { identity?: ProcessIdentity })
      .catch(() => undefined);
    return boot?.identity && (await isSameProcess(boot.identity)) ? boot.identity : undefined;
  };

  const withQmp = async <T>(spec: GuestSpec, work: (qmp: QmpClient) => Promise<T>): Promise<T> => {
    const qmp = await connectQmp(pathsOf(spec).qmpSocket, { timeoutMs: 10_000 });
    try {
      return await work(qmp);
    } finally {
      qmp.close();
    }
  };

  const agentOf =
    (spec: GuestSpec): AgentAccess =>
    (work) =>
      options.agents.use(pathsOf(spec).agentSocket, { timeoutMs: 10_000 }, work);

  const diskOf = async (spec: GuestSpec): Promise<string> => {
    const disk = pathsOf(spec).disk;
    if (!(await exists(disk))) throw failedPrecondition(`Guest ${spec.name} has no disk on this host.`);
    return disk;
  };

  /** Internal snapshots of the disk, `.tmp-` ones included (the table only changes under the storage lock). */
  const allSnapshots = async (spec: GuestSpec, running: boolean): Promise<string[]> =>
    (await img.info(await diskOf(spec), { forceShare: running })).snapshots;

  const assertStopped = async (spec: GuestSpec, what: string) => {
    if (await liveQemu(spec)) {
      throw failedPrecondition(`Guest ${spec.name} is running: stop it before ${what}.`);
    }
  };

  /**
   * Makes an internal snapshot of a running guest's disk: file systems frozen
   * through the agent for it. Without an agent (another OS, or it does not
   * answer) the vCPUs are paused instead, which makes it crash-consistent only;
   * a guest the administrator paused stays paused and is crash-consistent too.
   */
  const liveSnapshot = async (spec: GuestSpec, name: string): Promise<void> => {
    const take = () =>
      withQmp(spec, (q) =>
        q.execute('blockdev-snapshot-internal-sync', { device: ROOT_DEVICE, name }, { timeoutMs: 120_000 }),
      );
    const status = await withQmp(spec, (q) => q.execute<{ status: string }>('query-status'));
    if (status.status === 'io-error') {
      // QEMU paused the guest on a failed write (werror=enospc: a full disk); space may be back, so it retries.
      log.warn({ guest: spec.name }, 'resuming a guest QEMU paused on an I/O error before its snapshot');
      await withQmp(spec, (q) => q.execute('cont'));
    }
    if (status.status === 'paused') {
      await take();
      return;
    }
    const p = pathsOf(spec);
    try {
      await withFrozenFileSystems(
        agentOf(spec),
        { marker: join(p.dir, FREEZE_MARKER), guest: spec.name },
        take,
      );
      return;
    } catch (e) {
      if (!(e instanceof Error) || !/Cannot freeze/.test(e.message)) throw e;
      log.warn(
        { guest: spec.name, err: e.message },
        'no guest agent to freeze with: pausing the vCPUs instead (crash-consistent snapshot)',
      );
    }
    await writeFile(join(p.dir, PAUSE_MARKER), '', { mode: 0o600 });
    try {
      await withQmp(spec, (q) => q.execute('stop'));
      try {
        await take();
      } finally {
        await withQmp(spec, (q) => q.execute('cont'));
      }
    } finally {
      await rm(join(p.dir, PAUSE_MARKER), { force: true });
    }
  };

  const deleteInternal = async (spec: GuestSpec, name: string): Promise<void> => {
    if (await liveQemu(spec)) {
      await withQmp(spec, (q) =>
        q.execute(
          'blockdev-snapshot-delete-internal-sync',
          { device: ROOT_DEVICE, name },
          { timeoutMs: 60_000 },
        ),
      );
    } else {
      await img.deleteSnapshot(await diskOf(spec), name);
    }
  };

  /**
   * Runs `read` on a state of the disk that cannot change while it reads: a
   * named snapshot, the disk itself when the guest is stopped, or a throw-away
   * internal snapshot taken (frozen) when it runs, deleted afterwards.
   */
  const withStableState = async <T>(
    spec: GuestSpec,
    from: FromSnapshot | undefined,
    read: (state: { disk: string; snapshot?: string; forceShare: boolean }) => Promise<T>,
  ): Promise<T> => {
    const disk = await diskOf(spec);
    const running = (await liveQemu(spec)) !== undefined;
    if (from?.snapshot !== undefined) {
      if (!(await allSnapshots(spec, running)).includes(from.snapshot)) {
        throw notFound(`Guest ${spec.name} has no snapshot ${from.snapshot} on disk: list its snapshots.`);
      }
      return read({ disk, snapshot: from.snapshot, forceShare: running });
    }
    if (!running) return read({ disk, forceShare: false });
    const temp = tmpName('read');
    await liveSnapshot(spec, temp);
    try {
      // QEMU writes on: the reader may only look at the snapshot, whose clusters nobody changes.
      return await read({ disk, snapshot: temp, forceShare: true });
    } finally {
      await deleteInternal(spec, temp).catch((e: unknown) =>
        log.warn({ guest: spec.name, err: String(e) }, 'cannot delete a temporary snapshot; sweep will'),
      );
    }
  };

  /**
   * Writes the archive of exportTar to `tarPath` in one pass: a tar whose `disk.qcow2` is the
   * flat qcow2 of `source`, made on the way, and `uefi-vars.fd` when the guest has one, through
   * `zstd -T0` (decision 0085). The same tar as `tar --zstd` of the converted image would make,
   * less its holes, which a flat qcow2 made this way does not have.
   */
  const streamDiskArchive = async (
    source: FlatQcow2Source,
    tarPath: string,
    extra: { vars: Buffer | undefined; bitmaps: Buffer | undefined },
    signal: AbortSignal | undefined,
  ): Promise<void> => {
    const { vars, bitmaps } = extra;
    await writeThroughZstd(runner, tarPath, signal, async (write) => {
      let written = 0;
      const member = async (name: string, size: number, body: () => Promise<void>) => {
        await write(tarHeader(name, 'file', size, Date.now()));
        await body();
        const pad = (512 - (size % 512)) % 512;
        if (pad > 0) await write(Buffer.alloc(pad));
        written += 512 + size + pad;
      };
      await member(ARCHIVE_DISK, source.plan.sizeBytes, () =>
        streamFlatQcow2(source, write, signal ? { signal } : {}),
      );
      if (vars) await member(ARCHIVE_UEFI_VARS, vars.length, () => write(vars));
      if (bitmaps) await member(ARCHIVE_BITMAPS, bitmaps.length, () => write(bitmaps));
      // The end: two zero blocks, then up to a whole record of 20 blocks, as GNU tar writes it.
      written += 1024;
      await write(Buffer.alloc(1024 + ((10240 - (written % 10240)) % 10240)));
    });
  };

  /**
   * Builds a new disk file beside the guest's disk with `fill`, then renames it into place.
   * `dropOld`: the old disk is removed first, when nothing of it is kept (a whole import): ext4
   * (auto_da_alloc) writes a file renamed over another back to the disk inside rename(), 0.27-0.35 s
   * for a GiB just unpacked (decision 0085); a failure in between leaves the guest without a disk,
   * which a failed import deletes anyway.
   */
  const replaceDisk = async (
    spec: GuestSpec,
    fill: (tmp: string) => Promise<void>,
    options: { dropOld?: boolean } = {},
  ): Promise<void> => {
    const disk = await diskOf(spec);
    const tmp = join(dirname(disk), `${tmpName('disk')}.qcow2`);
    try {
      await fill(tmp);
      if (options.dropOld) await rm(disk, { force: true });
      await rename(tmp, disk);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  };

  /** A copy of the guest's disk file (snapshots included) to work on before it replaces the disk. */
  const copyDisk = async (disk: string, tmp: string) => {
    await runner.run(['cp', ...(await copyFlags(disk, tmp, { sparse: true })), '--', disk, tmp]);
  };

  /** Removes the incremental-backup bitmap (vm-incremental.ts) from a disk that is not in use. */
  const dropBackupBitmap = async (disk: string): Promise<void> => {
    for (const b of await storedBitmaps(runner, disk)) {
      if (isBackupBitmap(b.name)) await runner.run(['qemu-img', 'bitmap', '--remove', disk, b.name]);
    }
  };

  /**
   * Writes the sound backup bitmaps of a stopped guest's `disk` into a new qcow2 `target` of its
   * size (`qemu-img bitmap --merge`: only the bitmaps, no data); false, with nothing written, when
   * it has none. An `in-use` bitmap (a QEMU died holding the disk) is not carried.
   */
  const bitmapsAside = async (disk: string, target: string): Promise<boolean> => {
    const carried = (await storedBitmaps(runner, disk)).filter(
      (b) => isBackupBitmap(b.name) && isSoundBitmap(b),
    );
    if (carried.length === 0) return false;
    const size = (await img.info(disk)).virtualSizeBytes;
    await runner.run(['qemu-img', 'create', '-q', '-f', 'qcow2', target, String(size)]);
    for (const b of carried) await copyBitmap(disk, target, b.name, b.granularity);
    return true;
  };

  /**
   * The export's bitmap image of a stopped guest's disk (bitmapsAside), or none: one that cannot be
   * made only costs a full backup where the archive is imported, never the export.
   */
  const bitmapsOfExport = async (
    spec: GuestSpec,
    disk: string,
    target: string,
  ): Promise<string | undefined> => {
    try {
      return (await bitmapsAside(disk, target)) ? target : undefined;
    } catch (e) {
      log.warn(
        { guest: spec.name, err: e instanceof Error ? e.message : String(e) },
        'the backup bitmaps are left out of the export: where it is imported, the next backup is a full one',
      );
      await rm(target, { force: true });
      return undefined;
    }
  };

  /** Adds bitmap `name` of qcow2 `from` to qcow2 `to` (same virtual size), with its bits. */
  const copyBitmap = async (from: string, to: string, name: string, granularity: number) => {
    await runner.run(['qemu-img', 'bitmap', '--add', '-g', String(granularity), '-f', 'qcow2', to, name]);
    await runner.run([
      'qemu-img',
      'bitmap',
      '--merge',
      name,
      '-b',
      from,
      '-F',
      'qcow2',
      '-f',
      'qcow2',
      to,
      name,
    ]);
  };

  /**
   * Gives the flat disk of an archive the backup bitmaps the archive carries beside it, when they
   * are what exportTar writes (a qcow2 of the disk's size, no backing file, no data); anything
   * else is left out (the next backup is then a full one), never refused: the disk is whole anyway.
   */
  const carryBitmaps = async (bitmaps: string, flat: string, sizeBytes: number): Promise<void> => {
    const st = await lstat(bitmaps).catch(() => undefined);
    if (!st) return;
    try {
      if (!st.isFile() || st.size > MAX_BITMAPS_BYTES)
        throw new Error('not a regular file of at most 64 MiB');
      const info = await img.info(bitmaps);
      if (info.format !== 'qcow2' || info.backingFile !== undefined || info.virtualSizeBytes !== sizeBytes) {
        throw new Error('not a qcow2 of the disk size without a backing file');
      }
      const have = new Set((await storedBitmaps(runner, flat)).map((b) => b.name));
      for (const b of await storedBitmaps(runner, bitmaps)) {
        if (isBackupBitmap(b.name) && isSoundBitmap(b) && !have.has(b.name)) {
          await copyBitmap(bitmaps, flat, b.name, b.granularity);
        }
      }
    } catch (e) {
      log.warn(
        { err: e instanceof Error ? e.message : String(e) },
        `backup bitmaps not carried from ${bitmaps}: the guest's next backup is a full one`,
      );
      // Half-added bitmaps would name a link they do not follow.
      await dropBackupBitmap(flat).catch(() => {});
    }
  };

  /**
   * Unpacks the qcow2 of an archive made by exportTar or exportIncremental and
   * runs `apply` on a copy of the stopped guest's disk (grown to the archived
   * size if smaller), which then replaces the disk. The disk's old backup
   * chains end: its content is new.
   */
  const withArchiveDisk = async (
    spec: GuestSpec,
    tarPath: string,
    signal: AbortSignal | undefined,
    apply: ((files: { flat: string; tmp: string }) => Promise<void>) | 'whole',
    uefiTarget?: string,
  ): Promise<void> => {
    await assertStopped(spec, 'replacing its disk');
    const disk = await diskOf(spec);
    const work = join(dirname(disk), tmpName('vm-import'));
    await mkdir(work, { mode: 0o700 });
    try {
      // One pass over the archive (it may be a FIFO fed by the daemon): every member, of which only
      // the disk and the firmware's variables (when the guest had them) are used.
      // `zstd -f` passes a plain tar through: an uncompressed export (decision 0063) imports as well.
      const unpacked = await unpackZstdTar(
        runner,
        tarPath,
        ['tar', '--no-same-owner', ...TAR_PIPE_RECORD_ARGS, '-C', work, '-xf', '-'],
        signal,
      );
      if (unpacked.code !== 0 || !(await lstat(join(work, ARCHIVE_DISK)).catch(() => undefined))?.isFile()) {
        signal?.throwIfAborted();
        if (/No space left/i.test(unpacked.stderr)) throw new Error(unpacked.stderr.trim());
        throw invalidArgument(
          `The archive holds no ${ARCHIVE_DISK}: it was not made from a vm guest, or it is damaged.`,
        );
      }
      const flat = join(work, ARCHIVE_DISK);
      const info = await img.info(flat).catch(() => undefined);
      // A backing file inside an archive would point anywhere on this host (another guest's disk…).
      if (info?.format !== 'qcow2' || info.backingFile !== undefined || info.snapshots.length > 0) {
        throw invalidArgument(
          'The archive does not hold a flat qcow2 disk of a vm guest: make the export again.',
        );
      }
      // Checked before anything changes: a bad store refuses the whole import.
      const vars = join(work, ARCHIVE_UEFI_VARS);
      const varsStat = await lstat(vars).catch(() => undefined);
      // A link would have root copy a host file (another guest's store…) for this guest's QEMU to read;
      // OVMF's variable store is 528 KiB (4 MiB builds), so anything far larger is not one.
      if (varsStat && (!varsStat.isFile() || varsStat.size > MAX_UEFI_VARS_BYTES)) {
        throw invalidArgument(
          `The archive's ${ARCHIVE_UEFI_VARS} is not an OVMF variable store (a regular file of at most 4 MiB): make the export again.`,
        );
      }
      const carryVars = uefiTarget !== undefined && varsStat !== undefined;
      const diskInfo = await img.info(disk);
      for (const f of [CHAIN_FILE, RESTORED_CHAIN_FILE])
        await rm(join(pathsOf(spec).dir, f), { force: true });
      if (apply === 'whole' && diskInfo.snapshots.length === 0) {
        // The whole disk replaced, no snapshot to keep: the archive's flat disk becomes the guest's
        // disk as it is (QEMU takes a disk without a backing file), at its size or the guest's if larger.
        // Re-basing it onto the image's base disk would write it twice more for a little space.
        await replaceDisk(
          spec,
          async (tmp) => {
            if (diskInfo.virtualSizeBytes > info.virtualSizeBytes) {
              // Grown: a bitmap of the archived size would not fit it (and the next backup is full).
              await runner.run([
                'qemu-img',
                'resize',
                '-q',
                '-f',
                'qcow2',
                flat,
                String(diskInfo.virtualSizeBytes),
              ]);
            } else {
              // The disk as it was exported: its backup bitmaps hold what changed since their link.
              await carryBitmaps(join(work, ARCHIVE_BITMAPS), flat, info.virtualSizeBytes);
            }
            const was = await stat(disk);
            await chown(flat, was.uid, was.gid);
            await chmod(flat, was.mode & 0o7777);
            await rename(flat, tmp);
          },
          { dropOld: true },
        );
      } else {
        await replaceDisk(spec, async (tmp) => {
          await copyDisk(disk, tmp);
          if (info.virtualSizeBytes > diskInfo.virtualSizeBytes) {
            await runner.run(['qemu-img', 'resize', '-q', '-f', 'qcow2', tmp, String(info.virtualSizeBytes)]);
          }
          if (apply === 'whole')
            await img.setContent(tmp, { path: flat, format: 'qcow2' }, signal ? { signal } : {});
          else await apply({ flat, tmp });
        });
      }
      if (carryVars) await copyAside(vars, uefiTarget);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  };

  const storage: GuestStorage = {
    async snapshot(spec, snap) {
      const running = (await liveQemu(spec)) !== undefined;
      if ((await allSnapshots(spec, running)).includes(snap)) {
        throw failedPrecondition(`Snapshot ${snap} of guest ${spec.name} exists on disk.`);
      }
      if (running) await liveSnapshot(spec, snap);
      else await img.createSnapshot(await diskOf(spec), snap);
      await copyAside(uefiVarsOf(spec), uefiSnapshotOf(spec, snap));
    },

    async restoreSnapshot(spec, snap) {
      await assertStopped(spec, 'restoring a snapshot');
      if (!(await allSnapshots(spec, false)).includes(snap)) {
        throw notFound(`Guest ${spec.name} has no snapshot ${snap} on disk: list its snapshots.`);
      }
      // qcow2 refuses to roll back under a dirty bitmap, and a rolled-back disk ends its backup chain anyway.
      await dropBackupBitmap(await diskOf(spec));
      for (const f of [CHAIN_FILE, RESTORED_CHAIN_FILE])
        await rm(join(pathsOf(spec).dir, f), { force: true });
      // In place: qcow2 switches the active L1 table in one write; the snapshot itself stays.
      await img.applySnapshot(await diskOf(spec), snap);
      // The firmware's variables go back to that moment too (boot entries an installer made after it, keys).
      await copyAside(uefiSnapshotOf(spec, snap), uefiVarsOf(spec));
    },

    async deleteSnapshot(spec, snap) {
      await rm(uefiSnapshotOf(spec, snap), { force: true });
      if (!(await exists(pathsOf(spec).disk))) return;
      const running = (await liveQemu(spec)) !== undefined;
      if (!(await allSnapshots(spec, running)).includes(snap)) return;
      await deleteInternal(spec, snap);
    },

    async listSnapshots(spec) {
      if (!(await exists(pathsOf(spec).disk))) return [];
      const running = (await liveQemu(spec)) !== undefined;
      return (await allSnapshots(spec, running)).filter((n) => !n.startsWith(TMP_PREFIX)).sort();
    },

    async copy(source, target, copyOptions) {
      await assertStopped(target, 'filling it with a copy');
      const targetInfo = await img.info(await diskOf(target));
      const sourceInfo = await img.info(await diskOf(source), { forceShare: true });
      await replaceDisk(target, async (tmp) => {
        await withStableState(source, copyOptions, async (state) => {
          const read = {
            forceShare: state.forceShare,
            ...(state.snapshot === undefined ? {} : { snapshot: state.snapshot }),
          };
          if (targetInfo.backingFile && targetInfo.backingFile === sourceInfo.backingFile) {
            // Same base disk: the copy is a new overlay holding only the source's own clusters.
            await img.convert(state.disk, tmp, {
              ...read,
              backing: { path: targetInfo.backingFile, format: targetInfo.backingFormat ?? 'raw' },
            });
            return;
          }
          // Another base disk (the image was rebuilt): through a flat copy, keeping only what differs.
          const flat = `${tmp}.flat`;
          try {
            await img.convert(state.disk, flat, read);
            await copyDisk(pathsOf(target).disk, tmp);
            await img.setContent(tmp, { path: flat, format: 'qcow2' });
          } finally {
            await rm(flat, { force: true });
          }
        });
      });
      if (await copyAside(uefiVarsAt(source, copyOptions?.snapshot), uefiVarsOf(target))) {
        await copyAside(uefiMetaOf(source), uefiMetaOf(target));
      }
    },

    async exportTar(spec, tarPath, exportOptions) {
      const work = join(dirname(tarPath), tmpName('vm-export'));
      await mkdir(work, { mode: 0o700 });
      const signal = exportOptions?.signal;
      const carried: string[] = [];
      try {
        // A stopped guest's disk goes into the archive in one pass (decision 0085): the flat qcow2
        // is made on the way, read from the chain's files, with no temporary image to write and read.
        const streamed = await withStableState(spec, exportOptions, async (state) => {
          // A stopped guest's current state carries its backup bitmaps (decision 0062, amended
          // 2026-12-07): where it is imported, its backup chain can go on. A running guest's are in
          // its QEMU (the file's are in-use), a snapshot has none of its own.
          const current = state.snapshot === undefined && !state.forceShare && !exportOptions?.uncompressed;
          const bitmaps = current
            ? await bitmapsOfExport(spec, state.disk, join(work, ARCHIVE_BITMAPS))
            : undefined;
          if (bitmaps) carried.push(ARCHIVE_BITMAPS);
          if (current) {
            const source = await flatQcow2Source(runner, state.disk);
            if (source) {
              const vars = await readFile(uefiVarsAt(spec, exportOptions?.snapshot)).catch(() => undefined);
              const extra = { vars, bitmaps: bitmaps ? await readFile(bitmaps) : undefined };
              await streamDiskArchive(source, tarPath, extra, signal);
              return true;
            }
          }
          // Flat: the base disk is made anew on every host (mkfs), so an overlay would not fit another one.
          await img.convert(state.disk, join(work, ARCHIVE_DISK), {
            forceShare: state.forceShare,
            ...(state.snapshot === undefined ? {} : { snapshot: state.snapshot }),
            ...(signal && { signal }),
          });
          return false;
        });
        if (streamed) return;
        const members = [ARCHIVE_DISK, ...carried];
        if (await copyAside(uefiVarsAt(spec, exportOptions?.snapshot), join(work, ARCHIVE_UEFI_VARS))) {
          members.push(ARCHIVE_UEFI_VARS);
        }
        // Uncompressed (decision 0063): a plain, non-sparse member QEMU can read in place at its offset.
        const format = exportOptions?.uncompressed ? [] : [TAR_ZSTD, '--sparse'];
        await runner.run(['tar', ...format, '-C', work, '-cf', tarPath, ...members], {
          ...(signal && { signal }),
        });
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    },

    async importTar(spec, tarPath, importOptions) {
      const signal = importOptions?.signal;
      const snapshot = importOptions?.snapshot;
      await withArchiveDisk(
        spec,
        tarPath,
        signal,
        snapshot === undefined
          ? 'whole'
          : async ({ flat, tmp }) => {
              const content = { path: flat, format: 'qcow2' };
              const snap = snapshot;
              // The current state is kept aside in an internal snapshot while the disk takes the snapshot's content.
              // qcow2 applies no snapshot under a bitmap: the backup bitmaps wait beside it meanwhile,
              // and come back once the current state is back as it was (a moved guest's chain goes on).
              const kept = join(dirname(tmp), `${tmpName('bitmaps')}.qcow2`);
              try {
                const hadBitmaps = await bitmapsAside(tmp, kept);
                await dropBackupBitmap(tmp);
                const active = tmpName('active');
                await img.createSnapshot(tmp, active);
                await img.setContent(tmp, content, signal ? { signal } : {});
                if ((await img.info(tmp)).snapshots.includes(snap)) await img.deleteSnapshot(tmp, snap);
                await img.createSnapshot(tmp, snap);
                await img.applySnapshot(tmp, active);
                await img.deleteSnapshot(tmp, active);
                if (hadBitmaps) await carryBitmaps(kept, tmp, (await img.info(tmp)).virtualSizeBytes);
              } finally {
                await rm(kept, { force: true });
              }
            },
        uefiVarsAt(spec, snapshot),
      );
    },

    async exportIncremental(spec, tarPath, exportOptions) {
      const signal = exportOptions?.signal;
      const work = join(dirname(tarPath), tmpName('vm-export'));
      await mkdir(work, { mode: 0o700 });
      try {
        const target = join(work, ARCHIVE_DISK);
        const link = await incremental
          .backup(spec, target, { incremental: !exportOptions?.newChain })
          .catch((e: unknown) => {
            // No chain yet, or the disk was rolled back: this link starts a new chain.
            if (e instanceof Error && /full backup first/.test(e.message)) {
              return incremental.backup(spec, target, { incremental: false });
            }
            throw e;
          });
        const members = [ARCHIVE_DISK];
        if (await copyAside(uefiVarsOf(spec), join(work, ARCHIVE_UEFI_VARS))) members.push(ARCHIVE_UEFI_VARS);
        await runner.run(['tar', TAR_ZSTD, '--sparse', '-C', work, '-cf', tarPath, ...members], {
          ...(signal && { signal }),
        });
        return link;
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    },

    async importIncremental(spec, tarPath, importOptions) {
      const { link, signal } = importOptions;
      const restored = join(pathsOf(spec).dir, RESTORED_CHAIN_FILE);
      const previous = await readFile(restored, 'utf8')
        .then((t) => JSON.parse(t) as { chain: string; sequence: number; diskMtimeNs: string })
        .catch(() => undefined);
      if (link.kind === 'incremental') {
        const expected = `backup ${link.sequence - 1} of chain ${link.chain}`;
        if (!previous || previous.chain !== link.chain || previous.sequence !== link.sequence - 1) {
          throw failedPrecondition(
            `Guest ${spec.name} is not at ${expected}: import the chain's full backup and its incrementals in order.`,
          );
        }
        const mtime = (await stat(pathsOf(spec).disk, { bigint: true })).mtimeNs.toString();
        if (mtime !== previous.diskMtimeNs) {
          throw failedPrecondition(
            `Guest ${spec.name}'s disk changed since ${expected} was applied (it ran): import the chain again from its full backup.`,
          );
        }
      }
      await withArchiveDisk(
        spec,
        tarPath,
        signal,
        link.kind === 'full'
          ? 'whole'
          : async ({ flat, tmp }) => {
              // The incremental holds only the changed clusters: on top of the disk, then committed into it.
              await runner.run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', tmp, flat]);
              await runner.run(['qemu-img', 'commit', '-q', '-f', 'qcow2', flat], {
                ...(signal && { signal }),
              });
            },
        uefiVarsOf(spec),
      );
      // The disk is the link's whole content now: an empty bitmap named for the link lets the
      // chain go on from it (decision 0062, amended: a recovery's first backup is the next link once
      // the chain's shipped state is taken over). What an earlier link left goes first.
      const disk = pathsOf(spec).disk;
      await dropBackupBitmap(disk);
      await runner.run(['qemu-img', 'bitmap', '--add', disk, linkBitmap(link.chain, link.sequence)]);
      const mtime = (await stat(disk, { bigint: true })).mtimeNs.toString();
      await writeFile(
        `${restored}.tmp`,
        `${JSON.stringify({ chain: link.chain, sequence: link.sequence, diskMtimeNs: mtime })}\n`,
      );
      await rename(`${restored}.tmp`, restored);
    },

    async sweep(spec) {
      const p = pathsOf(spec);
      const running = (await liveQemu(spec)) !== undefined;
      // A daemon killed mid-snapshot must not leave the guest frozen or paused.
      await thawIfMarked(running ? agentOf(spec) : undefined, join(p.dir, FREEZE_MARKER));
      if (await exists(join(p.dir, PAUSE_MARKER))) {
        if (running) await withQmp(spec, (q) => q.execute('cont'));
        await rm(join(p.dir, PAUSE_MARKER), { force: true });
      }
      for (const dir of [p.dir, join(p.dir, UEFI_SNAPSHOTS_DIR)]) {
        for (const name of await readdir(dir).catch(() => [] as string[])) {
          if (name.startsWith(TMP_PREFIX)) await rm(join(dir, name), { recursive: true, force: true });
        }
      }
      if (!(await exists(p.disk))) return;
      for (const name of await allSnapshots(spec, running)) {
        if (name.startsWith(TMP_PREFIX)) await deleteInternal(spec, name);
      }
    },
    // The chain goes on across a move where the disk brought the bitmap named for the link
    // (decision 0062, amended 2026-12-07): a cold move's archive carries it, a live move migrates it.
    chainState: (spec) => incremental.chainState(spec),
    continueChain: (spec, state) => incremental.continueChain(spec, state),
    live: createVmLiveRestore(ctx),
  };
  return storage;
}
