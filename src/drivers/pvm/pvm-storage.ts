import { randomBytes } from 'node:crypto';
import { chmod, chown, lstat, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { failedPrecondition, invalidArgument, notFound } from '../../core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import { copyFlags } from '../../host/reflink.ts';
import { type AgentAccess, FREEZE_MARKER, thawIfMarked, withFrozenFileSystems } from '../agent-fs-freeze.ts';
import { TAR_PIPE_RECORD_ARGS, unpackZstdTar } from '../archive-unpack.ts';
import type { DriverContext } from '../guest-driver.ts';
import { type BackupChainLink, type FromSnapshot, type GuestStorage, TAR_ZSTD } from '../guest-storage.ts';
import { dropPvmAgent, type PvmAgentMap, pvmAgentOf } from './pvm-agent-pool.ts';
import { planCowDisk, planRawDisk, writeDiskArchive } from './pvm-disk-stream.ts';
import { DiskUnpackFailed, unpackDiskArchive } from './pvm-disk-unpack.ts';
import {
  applyBlocks,
  type BlockList,
  blockSummer,
  blockSums,
  changedBlocks,
  commitPvmChain,
  continuePvmChain,
  copyBlocks,
  cowChangedBlocks,
  forgetPvmChains,
  PVM_BLOCK_BYTES,
  parseBlockList,
  pvmChainState,
  readPvmChain,
  readPvmRestored,
  sumsNameOf,
  writePvmRestored,
  writeSums,
} from './pvm-incremental.ts';
import { type PvmRuntimeFile, pvmRuntimePath } from './pvm-runtime-paths.ts';
import { readUmlCowHeader } from './uml-cow.ts';
import { createMconsoleClient } from './uml-mconsole.ts';

/** Half-made files carry this prefix until they are renamed into place. */
const TMP_PREFIX = '.tmp-';
/** The two kinds of pvm disk (pvm-driver.ts): a COW file over the base disk, or a private whole disk. */
const COW = 'root.cow';
const RAW = 'root.img';
/** Name of the flat disk inside an archive made by exportTar. */
const ARCHIVE_DISK = 'disk.img';
/** An incremental link's changed blocks of the flat disk, and their list (pvm-incremental.ts). */
const ARCHIVE_BLOCKS = 'disk.blocks';
const ARCHIVE_BLOCK_LIST = 'disk.blocks.json';
/** Present while the kernel is stopped through mconsole for a snapshot (no agent to freeze with). */
const PAUSE_MARKER = 'paused-for-snapshot';

/** What the pvm storage is built with beyond the driver context. */
export interface PvmStorageOptions {
  /** The pvm driver's agent connections (main.ts makes one map for both). */
  agents: PvmAgentMap;
}

/**
 * Storage of `pvm` guests by COW layering (docs/decisions/0008-vm-and-pvm-storage.md).
 * A guest's writable state is one file in `disk/`: the UML COW file `root.cow`
 * over the image's shared base disk, or a private whole disk `root.img`. UML
 * COW files cannot be chained, so a snapshot is a copy of that file
 * (`cp --reflink=auto --sparse=always`: shared extents where the file system
 * can, only the written sectors elsewhere) in `snapshots/NAME/`, taken with
 * the guest's file systems frozen through its agent when it runs; a snapshot
 * without a file is the pristine state of a guest that never booted. Restore
 * and copy put such a copy in place; archives hold the flat disk (base disk
 * merged in), because base disks are made anew on each host, and come back as
 * a private disk. An export streams that flat disk, sparse, from the disk's
 * files into the archive (pvm-disk-stream.ts, decision 0085); the import's
 * unpacked disk is moved into place, not copied.
 */
export function createPvmStorage(ctx: DriverContext, options: PvmStorageOptions): GuestStorage {
  const { runner, stateDir } = ctx;
  const log = ctx.log.child({ storage: 'pvm' });

  const dirOf = (spec: GuestSpec) => join(stateDir, 'guests', spec.name);
  const diskDirOf = (spec: GuestSpec) => join(dirOf(spec), 'disk');
  const snapshotsOf = (spec: GuestSpec) => join(dirOf(spec), 'snapshots');
  const exists = async (path: string) => (await stat(path).catch(() => undefined)) !== undefined;
  /** A running guest's runtime file (decision 0066: this member's runtime directory). */
  const runtimeOf = (spec: GuestSpec, file: PvmRuntimeFile) => pvmRuntimePath(stateDir, spec.name, file);
  const tmpName = (what: string) => `${TMP_PREFIX}${what}-${randomBytes(4).toString('hex')}`;

  const liveUml = async (spec: GuestSpec): Promise<ProcessIdentity | undefined> => {
    const record = await readFile(runtimeOf(spec, 'uml.json'), 'utf8')
      .then((t) => JSON.parse(t) as ProcessIdentity)
      .catch(() => undefined);
    if (!record || !Number.isInteger(record.pid)) return undefined;
    const identity = { pid: record.pid, startTime: record.startTime };
    return (await isSameProcess(identity)) ? identity : undefined;
  };

  const uidOf = async (spec: GuestSpec): Promise<number> => {
    const uid = Number((await readFile(join(dirOf(spec), 'uid'), 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(uid) || uid <= 0) {
      throw failedPrecondition(`Guest ${spec.name} has no host uid on this host: create it first.`);
    }
    return uid;
  };

  /** The file holding the guest's disk now (a private disk wins, as in the driver), or none before its first boot. */
  const currentDisk = async (dir: string): Promise<string | undefined> => {
    for (const name of [RAW, COW]) if (await exists(join(dir, name))) return join(dir, name);
    return undefined;
  };

  const agentOf =
    (spec: GuestSpec): AgentAccess =>
    async (work) => {
      const paths = { toGuest: runtimeOf(spec, 'agent.in'), fromGuest: runtimeOf(spec, 'agent.out') };
      const agent = await pvmAgentOf(options.agents, spec.name, { paths, timeoutMs: 10_000 });
      try {
        return await work(agent.client);
      } catch (e) {
        if (e instanceof Error && /did not answer|closed|failed/.test(e.message)) {
          dropPvmAgent(options.agents, spec.name);
        }
        throw e;
      }
    };

  const assertStopped = async (spec: GuestSpec, what: string) => {
    if (await liveUml(spec))
      throw failedPrecondition(`Guest ${spec.name} is running: stop it before ${what}.`);
  };

  /**
   * Runs `work` with the running guest's disk quiescent: its file systems
   * frozen through the agent (dirty data written to the COW file, writers
   * blocked). Without an answering agent the kernel is stopped through
   * mconsole instead: crash-consistent only (what the guest had not written
   * yet is not in the copy). A kernel the administrator froze stays frozen,
   * and its copy is crash-consistent too.
   */
  const whileQuiescent = async <T>(spec: GuestSpec, work: () => Promise<T>): Promise<T> => {
    if (!(await liveUml(spec))) return work();
    if (await exists(runtimeOf(spec, 'frozen'))) return work();
    try {
      return await withFrozenFileSystems(
        agentOf(spec),
        { marker: join(dirOf(spec), FREEZE_MARKER), guest: spec.name },
        work,
      );
    } catch (e) {
      if (!(e instanceof Error) || !/Cannot freeze/.test(e.message)) throw e;
      log.warn(
        { guest: spec.name, err: e.message },
        'no guest agent to freeze with: stopping the kernel instead (crash-consistent copy)',
      );
    }
    const mconsole = createMconsoleClient(runtimeOf(spec, 'mconsole'), { runner });
    const marker = join(dirOf(spec), PAUSE_MARKER);
    await writeFile(marker, '', { mode: 0o600 });
    try {
      await mconsole.stop();
      try {
        return await work();
      } finally {
        await mconsole.go();
      }
    } finally {
      await rm(marker, { force: true });
    }
  };

  /** Copies a disk file sparsely (copy-on-write where the file system can). */
  const copyFile = async (from: string, to: string) =>
    runner.run(['cp', ...(await copyFlags(from, to, { sparse: true })), '--', from, to]);

  /** Renames a file, or copies it where it lies on another file system. */
  const moveFile = async (from: string, to: string) => {
    try {
      await rename(from, to);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
      await copyFile(from, to);
      await rm(from, { force: true });
    }
  };

  /**
   * Puts `from` (a COW or private disk file, or undefined for the pristine
   * state) in place as the disk of a stopped guest, owned by its uid: a
   * temporary copy renamed over the disk, then the other kind removed.
   */
  const installDisk = async (
    spec: GuestSpec,
    from: string | undefined,
    kind?: string,
    how: { move?: boolean } = {},
  ): Promise<void> => {
    const diskDir = diskDirOf(spec);
    if (!(await exists(diskDir))) throw failedPrecondition(`Guest ${spec.name} has no disk on this host.`);
    const uid = await uidOf(spec);
    const name = kind ?? (from ? basename(from) : undefined);
    if (from && name) {
      const tmp = join(diskDir, tmpName('disk'));
      try {
        if (how.move) await moveFile(from, tmp);
        else await copyFile(from, tmp);
        await chmod(tmp, 0o600);
        await chown(tmp, uid, uid);
        // ext4 writes back a file renamed over another at once (auto_da_alloc): a whole disk's worth of
        // writeback in the rename, in the import's time. An import replaces a disk it will not keep.
        if (how.move) await rm(join(diskDir, name), { force: true });
        await rename(tmp, join(diskDir, name));
      } catch (e) {
        await rm(tmp, { force: true });
        throw e;
      }
    }
    for (const other of [COW, RAW]) {
      if (other !== name) await rm(join(diskDir, other), { force: true });
    }
    // A disk put in place is no base for the incrementals of any chain.
    await forgetPvmChains(dirOf(spec));
  };

  /** The guest's disk (or a stable copy of it) as one flat disk at `flat`: a private disk, or base and COW merged. */
  const flatten = async (
    disk: { path: string; kind: string },
    flat: string,
    signal: AbortSignal | undefined,
  ): Promise<void> => {
    if (disk.kind === RAW) {
      await copyFile(disk.path, flat);
      return;
    }
    // Base disk and COW merged into one flat disk (the base disk differs on another host).
    const header = await readUmlCowHeader(disk.path);
    await runner.run(['uml_moo', '-b', header.backingFile, disk.path, flat], { ...(signal && { signal }) });
  };

  /** The plan of a disk file's flat disk (pvm-disk-stream.ts): a private disk as it is, a COW file over its base. */
  const planDisk = (disk: { path: string; kind: string }) =>
    disk.kind === RAW ? planRawDisk(runner, disk.path) : planCowDisk(runner, disk.path);

  /** Identifies the content of a private disk that nothing wrote to since: inode, size, mtime. */
  const diskStamp = async (spec: GuestSpec): Promise<string> => {
    const st = await stat(join(diskDirOf(spec), RAW), { bigint: true }).catch(() => undefined);
    return st ? `${st.ino}:${st.size}:${st.mtimeNs}` : 'none';
  };

  /** Unpacks `members` of an archive into `work`; an archive without them is not one of a pvm guest. */
  const unpack = async (
    tarPath: string,
    work: string,
    members: string[],
    signal: AbortSignal | undefined,
  ) => {
    const unpacked = await unpackZstdTar(
      runner,
      tarPath,
      // 1 MiB records read from the pipe (h1's measurement: half the system time of 10 KiB ones).
      ['tar', ...TAR_PIPE_RECORD_ARGS, '-C', work, '-xf', '-', ...members],
      signal,
    );
    if (unpacked.code !== 0) {
      signal?.throwIfAborted();
      if (/No space left/i.test(unpacked.stderr)) throw new Error(unpacked.stderr.trim());
      throw invalidArgument(
        `The archive holds no ${members.join(' and ')}: it was not made from a pvm guest, or it is damaged.`,
      );
    }
    // A link would have root read a host file (a device, another guest's disk…) into this guest's disk.
    for (const m of members) {
      if (!(await lstat(join(work, m)))?.isFile()) {
        throw invalidArgument(`The archive's ${m} is not a regular file: make the export again.`);
      }
    }
  };

  const snapshotDisk = async (spec: GuestSpec, snap: string): Promise<string | undefined> => {
    const dir = join(snapshotsOf(spec), snap);
    if (!(await exists(dir))) {
      throw notFound(`Guest ${spec.name} has no snapshot ${snap} on disk: list its snapshots.`);
    }
    return currentDisk(dir);
  };

  /** Makes snapshot-like directory `target` under `parent` from `fill(tmpDir)`, renamed into place when complete. */
  const makeDir = async (parent: string, target: string, fill: (tmp: string) => Promise<void>) => {
    await mkdir(parent, { recursive: true, mode: 0o700 });
    const tmp = join(parent, tmpName(basename(target)));
    await mkdir(tmp, { mode: 0o700 });
    try {
      await fill(tmp);
      await rm(target, { recursive: true, force: true });
      await rename(tmp, target);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  };

  /** Runs `read` on a file holding the wanted state that nothing writes to meanwhile. */
  const withStableDisk = async <T>(
    spec: GuestSpec,
    from: FromSnapshot | undefined,
    read: (disk: { path: string; kind: string } | undefined) => Promise<T>,
  ): Promise<T> => {
    const described = (path: string | undefined) => (path ? { path, kind: basename(path) } : undefined);
    if (from?.snapshot !== undefined) return read(described(await snapshotDisk(spec, from.snapshot)));
    const disk = await currentDisk(diskDirOf(spec));
    if (!disk || !(await liveUml(spec))) return read(described(disk));
    // Copied while quiescent, read afterwards: the guest is frozen only for the copy.
    const tmp = join(diskDirOf(spec), tmpName('read'));
    try {
      await whileQuiescent(spec, () => copyFile(disk, tmp));
      return await read({ path: tmp, kind: basename(disk) });
    } finally {
      await rm(tmp, { force: true });
    }
  };

  const storage: GuestStorage = {
    async snapshot(spec, snap) {
      const target = join(snapshotsOf(spec), snap);
      if (await exists(target))
        throw failedPrecondition(`Snapshot ${snap} of guest ${spec.name} exists on disk.`);
      if (!(await exists(diskDirOf(spec)))) {
        throw failedPrecondition(`Guest ${spec.name} has no disk on this host.`);
      }
      await makeDir(snapshotsOf(spec), target, (tmp) =>
        whileQuiescent(spec, async () => {
          const disk = await currentDisk(diskDirOf(spec));
          if (disk) await copyFile(disk, join(tmp, basename(disk)));
        }),
      );
    },

    async restoreSnapshot(spec, snap) {
      await assertStopped(spec, 'restoring a snapshot');
      await installDisk(spec, await snapshotDisk(spec, snap));
    },

    async deleteSnapshot(spec, snap) {
      await rm(join(snapshotsOf(spec), snap), { recursive: true, force: true });
    },

    async listSnapshots(spec) {
      const names = await readdir(snapshotsOf(spec)).catch(() => [] as string[]);
      return names.filter((n) => !n.startsWith(TMP_PREFIX)).sort();
    },

    async copy(source, target, copyOptions) {
      await assertStopped(target, 'filling it with a copy');
      // Same image, same base disk: the source's COW file fits the target as it is.
      await withStableDisk(source, copyOptions, (disk) => installDisk(target, disk?.path, disk?.kind));
    },

    async exportTar(spec, tarPath, exportOptions) {
      const signal = exportOptions?.signal;
      await withStableDisk(spec, exportOptions, async (disk) => {
        if (!disk)
          throw failedPrecondition(`Guest ${spec.name} has never booted: it has no disk to export yet.`);
        // One pass from the disk's files into the archive (decision 0085): no merged disk written first.
        const started = performance.now();
        const plan = await planDisk(disk);
        const planned = performance.now();
        const done = await writeDiskArchive(runner, plan, { tarPath, name: ARCHIVE_DISK, signal });
        log.info(
          {
            guest: spec.name,
            disk: disk.kind,
            ...done,
            planMs: Math.round(planned - started),
            streamMs: Math.round(performance.now() - planned),
          },
          'disk streamed into the archive',
        );
      });
    },

    async importTar(spec, tarPath, importOptions) {
      await assertStopped(spec, 'replacing its disk');
      const signal = importOptions?.signal;
      const work = join(diskDirOf(spec), tmpName('import'));
      await mkdir(work, { mode: 0o700 });
      try {
        const started = performance.now();
        const flat = join(work, ARCHIVE_DISK);
        // Not GNU tar: it writes a sparse member 512 bytes at a time (decision 0103).
        await unpackDiskArchive(runner, tarPath, { member: ARCHIVE_DISK, target: flat, signal }).catch(
          (e: unknown) => {
            if (!(e instanceof DiskUnpackFailed)) throw e;
            if (!e.refused) throw new Error(e.message);
            throw invalidArgument(
              `The archive's ${ARCHIVE_DISK} cannot be unpacked (${e.message}): it was not made from a pvm guest, or it is damaged.`,
            );
          },
        );
        const unpacked = performance.now();
        const st = await stat(flat);
        if (!st.isFile() || st.size === 0) {
          throw invalidArgument(`The archive's ${ARCHIVE_DISK} is not a disk image: make the export again.`);
        }
        // Unpacked (sparse) beside the disk: moved into place, not copied again.
        if (importOptions?.snapshot === undefined) await installDisk(spec, flat, RAW, { move: true });
        else {
          await makeDir(snapshotsOf(spec), join(snapshotsOf(spec), importOptions.snapshot), async (tmp) => {
            await moveFile(flat, join(tmp, RAW));
          });
        }
        log.info(
          {
            guest: spec.name,
            sizeBytes: st.size,
            allocatedBytes: st.blocks * 512,
            unpackMs: Math.round(unpacked - started),
            installMs: Math.round(performance.now() - unpacked),
          },
          'disk unpacked from the archive',
        );
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    },

    async exportIncremental(spec, tarPath, exportOptions) {
      const signal = exportOptions?.signal;
      const dir = dirOf(spec);
      const work = join(snapshotsOf(spec), tmpName('export'));
      await mkdir(work, { recursive: true, mode: 0o700 });
      try {
        const next = exportOptions?.newChain ? undefined : await readPvmChain(dir);
        const cow = await currentDisk(diskDirOf(spec));
        const header = cow?.endsWith(`/${COW}`)
          ? await readUmlCowHeader(cow).catch(() => undefined)
          : undefined;
        if (cow && next && header && header.sizeBytes === next.state.sizeBytes) {
          // A COW disk (decision 0067): only its bitmap and the blocks it marks are read, in place,
          // with the guest quiescent; the flat disk is never made.
          const blocksOut = join(work, ARCHIVE_BLOCKS);
          const found = await whileQuiescent(spec, () =>
            cowChangedBlocks(cow, { before: next.sums, blocksOut }),
          );
          log.info(
            { guest: spec.name, readBytes: found.readBytes, changed: found.list.blocks.length },
            'incremental backup of a COW disk',
          );
          const link: BackupChainLink = {
            chain: next.state.chain,
            sequence: next.state.sequence + 1,
            kind: 'incremental',
          };
          await writeFile(join(work, ARCHIVE_BLOCK_LIST), `${JSON.stringify(found.list)}\n`);
          await runner.run(
            ['tar', TAR_ZSTD, '-C', work, '-cf', tarPath, ARCHIVE_BLOCK_LIST, ARCHIVE_BLOCKS],
            { ...(signal && { signal }) },
          );
          await writeSums(dir, sumsNameOf(link), found.sums);
          await commitPvmChain(dir, {
            chain: link.chain,
            sequence: link.sequence,
            sizeBytes: next.state.sizeBytes,
            sums: sumsNameOf(link),
          });
          return link;
        }
        return await withStableDisk(spec, undefined, async (disk) => {
          if (!disk)
            throw failedPrecondition(`Guest ${spec.name} has never booted: it has no disk to export yet.`);
          const plan = await planDisk(disk);
          const sizeBytes = plan.sizeBytes;
          const chain = exportOptions?.newChain ? undefined : await readPvmChain(dir);
          // A disk of another size (grown since) starts a new chain: its blocks do not line up.
          const base = chain && chain.state.sizeBytes === sizeBytes ? chain : undefined;
          const link: BackupChainLink = base
            ? { chain: base.state.chain, sequence: base.state.sequence + 1, kind: 'incremental' }
            : { chain: randomBytes(8).toString('hex'), sequence: 0, kind: 'full' };
          let sums: Buffer;
          if (!base) {
            // A full link is the flat disk streamed as exportTar does, its block checksums taken on the way.
            const summer = blockSummer(sizeBytes);
            await writeDiskArchive(runner, plan, {
              tarPath,
              name: ARCHIVE_DISK,
              signal,
              observe: summer.add,
            });
            sums = summer.finish();
          } else {
            const flat = join(work, ARCHIVE_DISK);
            await flatten(disk, flat, signal);
            sums = await blockSums(flat);
            const list: BlockList = {
              blockBytes: PVM_BLOCK_BYTES,
              sizeBytes,
              blocks: changedBlocks(base.sums, sums),
            };
            await copyBlocks(flat, list, join(work, ARCHIVE_BLOCKS));
            await writeFile(join(work, ARCHIVE_BLOCK_LIST), `${JSON.stringify(list)}\n`);
            await rm(flat, { force: true });
            await runner.run(
              ['tar', TAR_ZSTD, '-C', work, '-cf', tarPath, ARCHIVE_BLOCK_LIST, ARCHIVE_BLOCKS],
              {
                ...(signal && { signal }),
              },
            );
          }
          // The checksums count only once the archive is whole: a failed backup leaves the chain as it was.
          await writeSums(dir, sumsNameOf(link), sums);
          await commitPvmChain(dir, {
            chain: link.chain,
            sequence: link.sequence,
            sizeBytes,
            sums: sumsNameOf(link),
          });
          return link;
        });
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    },

    chainState: (spec) => pvmChainState(dirOf(spec)),

    async continueChain(spec, state) {
      // An incremental of a COW disk reads only the blocks its bitmap marks and takes the others as
      // unchanged since the last link: true only of the COW file that link was read from. A private
      // disk (what a move or an import installs) is read whole and compared block by block.
      const disk = await currentDisk(diskDirOf(spec));
      if (disk === undefined || disk.endsWith(`/${COW}`)) return false;
      return continuePvmChain(dirOf(spec), state);
    },

    async importIncremental(spec, tarPath, importOptions) {
      const { link, signal } = importOptions;
      const dir = dirOf(spec);
      if (link.kind === 'full') {
        await storage.importTar(spec, tarPath, { ...(signal && { signal }) });
      } else {
        await assertStopped(spec, 'applying an incremental backup');
        const previous = await readPvmRestored(dir);
        const expected = `backup ${link.sequence - 1} of chain ${link.chain}`;
        if (!previous || previous.chain !== link.chain || previous.sequence !== link.sequence - 1) {
          throw failedPrecondition(
            `Guest ${spec.name} is not at ${expected}: import the chain's full backup and its incrementals in order.`,
          );
        }
        if ((await diskStamp(spec)) !== previous.stamp) {
          throw failedPrecondition(
            `Guest ${spec.name}'s disk changed since ${expected} was applied (it ran): import the chain again from its full backup.`,
          );
        }
        const work = join(diskDirOf(spec), tmpName('import'));
        await mkdir(work, { mode: 0o700 });
        try {
          await unpack(tarPath, work, [ARCHIVE_BLOCK_LIST, ARCHIVE_BLOCKS], signal);
          const current = join(diskDirOf(spec), RAW);
          const list = parseBlockList(
            await readFile(join(work, ARCHIVE_BLOCK_LIST), 'utf8'),
            (await stat(current)).size,
            (await stat(join(work, ARCHIVE_BLOCKS))).size,
          );
          // Applied to a copy that replaces the disk once whole: a damaged link changes nothing.
          const next = join(work, RAW);
          await copyFile(current, next);
          await applyBlocks(next, list, join(work, ARCHIVE_BLOCKS));
          await installDisk(spec, next, RAW);
        } finally {
          await rm(work, { recursive: true, force: true });
        }
      }
      await writePvmRestored(dir, {
        chain: link.chain,
        sequence: link.sequence,
        stamp: await diskStamp(spec),
      });
    },

    async sweep(spec) {
      const running = (await liveUml(spec)) !== undefined;
      await thawIfMarked(running ? agentOf(spec) : undefined, join(dirOf(spec), FREEZE_MARKER));
      if (await exists(join(dirOf(spec), PAUSE_MARKER))) {
        if (running) {
          await createMconsoleClient(runtimeOf(spec, 'mconsole'), { runner })
            .go()
            .catch(() => {});
        }
        await rm(join(dirOf(spec), PAUSE_MARKER), { force: true });
      }
      for (const dir of [diskDirOf(spec), snapshotsOf(spec)]) {
        for (const name of await readdir(dir).catch(() => [] as string[])) {
          if (name.startsWith(TMP_PREFIX)) await rm(join(dir, name), { recursive: true, force: true });
        }
      }
    },
  };
  return storage;
}
