import {
  copyFile,
  lstat,
  mkdir,
  readdir,
  readlink,
  rename,
  rm,
  rmdir,
  stat,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { failedPrecondition, invalidArgument, notFound } from '../../core/errors.ts';
import type { GuestSpec } from '../../core/types.ts';
import { readFreezerState } from '../../host/cgroups-v1.ts';
import { isMountPoint, unmountIfMounted } from '../../host/mounts.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import { copyFlags } from '../../host/reflink.ts';
import { CommandError } from '../../host/runner.ts';
import { unpackZstdTar } from '../archive-unpack.ts';
import { cgroupParentOf } from '../guest-cgroup.ts';
import type { DriverContext } from '../guest-driver.ts';
import type { BackupChainLink, FromSnapshot, GuestStorage } from '../guest-storage.ts';
import {
  BACKUP_RECEIVED,
  BACKUP_SNAPSHOTS,
  BTRFS_SEND,
  isSubvolume,
  makeBackupSnapshot,
  pruneSubvolumes,
  receiveStream,
  removeBackupSubvolumes,
  removeWithSubvolumes,
  sendSnapshot,
  snapshotNameOf,
} from './ct-btrfs-send.ts';
import {
  buildManifest,
  carriedSnapshotFile,
  decodeManifest,
  encodeManifest,
  type ManifestEntry,
  manifestNameOf,
  readManifest,
  writeManifest,
} from './ct-chain-carry.ts';
import {
  commitChain,
  forgetChains,
  newChainId,
  nextLink,
  readChain,
  readRestored,
  snarNameOf,
  treeStamp,
  writeRestored,
} from './ct-incremental.ts';
import {
  ctLayerOf,
  fillNewImage,
  hasLayerImage,
  LAYER_IMAGE,
  LAYERS_DIR,
  layerImageBytes,
  layerRootOf,
  MOUNT_PREFIX,
  unmountCtLayer,
  withCtLayer,
  withImageReadOnly,
} from './ct-layer-image.ts';
import { guestDirOf } from './guest-dir.ts';
import { readRuncInitIdentity } from './runc-state.ts';
import { packZstdTar } from './tar-zstd-pack.ts';

/** Half-made objects carry this prefix until they are renamed into place. */
const TMP_PREFIX = '.tmp-';

/**
 * tar flags that keep what an overlay upper layer needs: numeric owners, whiteouts, opaque-dir
 * xattrs. `--xattrs-include=*` carries POSIX ACLs as their raw `system.posix_acl_*` xattrs;
 * `--acls` stores them once more as text, for the importers before decision 0085's ct section,
 * which unpack with `--acls` and would otherwise reset every ACL to the file's mode.
 */
export const TAR_KEEP = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '--sparse'];
/**
 * tar's options to unpack an archive, read uncompressed from its standard input (unpackZstdTar):
 * owners, modes and xattrs (ACLs among them) as archived. Not `--acls`: it set an ACL on every
 * file and directory (a setxattr each, 52,000 for /usr/share), the same ACLs the xattrs carry.
 * Not `TAR_PIPE_RECORD_ARGS` (1 MiB records): unpacking the benchmark's tree of 56,000 files
 * onto this machine's ext4 took more system time with them in four pairs out of four (decision
 * 0085, ct section), though less on a tmpfs. The export keeps tar's 10 KiB records too: an
 * archive padded to a 1 MiB record is left partly unread by a tar that reads 10 KiB records
 * (every import before this one), and its zstd then fails writing into the closed pipe.
 */
const TAR_EXTRACT = [
  '--numeric-owner',
  '--xattrs',
  '--xattrs-include=*',
  '--sparse',
  '--same-permissions',
  '--same-owner',
];
/**
 * Incremental archives (decision 48) compare directories by inode only: the
 * device number of a pool's file system may change between mounts (btrfs
 * subvolumes, a remount), which would make every directory look new.
 */
const TAR_NO_DEVICE = '--no-check-device';
/** A chain's id (ct-incremental.ts). */
const CHAIN_ID = /^[0-9a-f]{16}$/;

/**
 * Wraps the tar that applies an incremental link in a bubblewrap sandbox that
 * sees only the layer being made (writable), the archive's directory and the
 * host's /usr (read-only), on a read-only root. tar follows the symlinks that
 * exist before it starts: a crafted link could otherwise write or delete, as
 * root, through a symlink an earlier link left in the layer (`x -> /etc`, then
 * `x/passwd`). In the sandbox such a path ends on a read-only file system and
 * the import fails with nothing changed. A full link goes into an empty
 * directory, where tar's own delayed symlinks already keep it inside.
 */
async function sandboxFor(into: string, archive: string, argv: string[]): Promise<string[]> {
  const root: string[] = [];
  // Merged /usr (Debian 12) has these as links into /usr; older layouts have directories.
  for (const top of ['/bin', '/sbin', '/lib', '/lib64']) {
    const st = await lstat(top).catch(() => undefined);
    if (st?.isSymbolicLink()) root.push('--symlink', await readlink(top), top);
    else if (st?.isDirectory()) root.push('--ro-bind', top, top);
  }
  return [
    'bwrap',
    '--die-with-parent',
    '--unshare-net',
    '--unshare-ipc',
    // tar makes whiteouts (mknod), sets owners of the guest's range and trusted.* xattrs.
    '--cap-add',
    'ALL',
    '--ro-bind',
    '/usr',
    '/usr',
    ...root,
    '--dev',
    '/dev',
    '--ro-bind',
    dirname(archive),
    dirname(archive),
    '--bind',
    into,
    into,
    '--remount-ro',
    '/',
    '--',
    ...argv,
  ];
}

/**
 * Storage of `ct` guests on a directory pool: the overlay's upper layer is the
 * guest's whole writable state; snapshots are copies of it (`cp --reflink=auto`:
 * copy-on-write on btrfs/xfs, a plain copy elsewhere) under the guest's dir.
 * Incremental backups are GNU tar's listed-incremental archives of that layer
 * (docs/decisions/0048-ct-incremental-backups.md): whiteouts are character
 * devices and opaque directories xattrs in it, so deletions of the image's
 * files travel as files do.
 */
export function createCtStorage(ctx: DriverContext): GuestStorage {
  const { runner, stateDir } = ctx;
  const runc = ['runc', '--root', join(stateDir, 'runc')];
  const cgroupParent = cgroupParentOf(stateDir);

  const dirOf = (spec: GuestSpec) => guestDirOf(stateDir, spec.name);
  // A guest on a network file system keeps upper/ in its layer image (decision 0094).
  const layerOf = (spec: GuestSpec) => ctLayerOf(stateDir, spec.name);
  const upperOf = (spec: GuestSpec) => join(layerRootOf(layerOf(spec)), 'upper');
  const imaged = (spec: GuestSpec) => hasLayerImage(dirOf(spec));
  /** Where snapshot images are mounted for a moment (this member's, not the pool's). */
  const scratch = join(stateDir, LAYERS_DIR);
  /** Runs `work` with the guest's layer mounted (a guest with a layer image, stopped: for `work` only). */
  const withLayer = <T>(spec: GuestSpec, work: () => Promise<T>): Promise<T> =>
    withCtLayer(runner, layerOf(spec), work);
  const snapshotsOf = (spec: GuestSpec) => join(dirOf(spec), 'snapshots');
  const snapshotUpper = (spec: GuestSpec, snap: string) => join(snapshotsOf(spec), snap, 'upper');

  const exists = async (path: string) => (await stat(path).catch(() => undefined)) !== undefined;

  const sourceOf = async (spec: GuestSpec, options: FromSnapshot | undefined): Promise<string> => {
    if (options?.snapshot === undefined) return upperOf(spec);
    const path = imaged(spec)
      ? join(snapshotsOf(spec), options.snapshot, LAYER_IMAGE)
      : snapshotUpper(spec, options.snapshot);
    if (!(await exists(path))) {
      throw notFound(`Guest ${spec.name} has no snapshot ${options.snapshot} on disk: list its snapshots.`);
    }
    return path;
  };

  /**
   * Runs `work` on the upper tree of the guest or of one of its snapshots: for a guest with a
   * layer image, its layer mounted, or the snapshot's image mounted read-only for `work` only.
   */
  const withSource = async <T>(
    spec: GuestSpec,
    options: FromSnapshot | undefined,
    work: (upper: string) => Promise<T>,
  ): Promise<T> => {
    const from = await sourceOf(spec, options);
    if (!imaged(spec)) return work(from);
    if (options?.snapshot === undefined) return withLayer(spec, () => work(from));
    return withImageReadOnly(runner, from, {
      scratch,
      work: (root) => work(join(root, 'upper')),
    });
  };

  /** Runs `work` with the guest's processes frozen (if they run and are not frozen already). */
  const whileFrozen = async <T>(spec: GuestSpec, work: () => Promise<T>): Promise<T> => {
    const freezer = await readFreezerState(`${cgroupParent}/${spec.name}`);
    const paused = freezer === 'THAWED' && (await exists(join(stateDir, 'runc', spec.name)));
    if (paused) await runner.run([...runc, 'pause', spec.name]);
    try {
      return await work();
    } finally {
      if (paused) await runner.run([...runc, 'resume', spec.name], { allowFailure: true });
    }
  };

  /**
   * A guest runs while the init runc recorded for it lives (its root is mounted in its own mount
   * namespace only, docs/decisions/0064); one started by an older daemon also has its root
   * mounted on the host until it stops.
   */
  const isRunning = async (spec: GuestSpec): Promise<boolean> => {
    const init = await readRuncInitIdentity(join(stateDir, 'runc'), spec.name);
    return (init !== undefined && (await isSameProcess(init))) || isMountPoint(join(dirOf(spec), 'rootfs'));
  };

  /**
   * Copies the guest's layer image to `to` (a snapshot): while it runs, with its processes and
   * then its file system frozen, so that the copy is the file system as its last sync left it.
   */
  const copyLayerImage = async (spec: GuestSpec, to: string) => {
    const { mount } = layerOf(spec);
    const copy = () =>
      runner.run(['cp', '--sparse=always', '--reflink=auto', '--', join(dirOf(spec), LAYER_IMAGE), to]);
    if (!(await isMountPoint(mount))) {
      await copy();
      return;
    }
    await whileFrozen(spec, async () => {
      await runner.run(['fsfreeze', '--freeze', mount]);
      try {
        await copy();
      } finally {
        await runner.run(['fsfreeze', '--unfreeze', mount], { allowFailure: true });
      }
    });
  };

  /** Puts a snapshot's image in place of the stopped guest's layer image; the backup chains end here. */
  const restoreLayerImage = async (spec: GuestSpec, from: string) => {
    await assertStopped(spec);
    const dir = dirOf(spec);
    const tmp = join(dir, `${TMP_PREFIX}${LAYER_IMAGE}`);
    await rm(tmp, { force: true });
    try {
      await runner.run(['cp', '--sparse=always', '--reflink=auto', '--', from, tmp]);
      await forgetChains(dir);
      await unmountCtLayer(runner, stateDir, spec.name);
      await rename(tmp, join(dir, LAYER_IMAGE));
    } finally {
      await rm(tmp, { force: true });
    }
  };

  const assertStopped = async (spec: GuestSpec) => {
    const init = await readRuncInitIdentity(join(stateDir, 'runc'), spec.name);
    if ((init && (await isSameProcess(init))) || (await isMountPoint(join(dirOf(spec), 'rootfs')))) {
      throw failedPrecondition(
        `Guest ${spec.name} is running: stop it before replacing its root file system.`,
      );
    }
  };

  /** Swaps the guest's upper layer for `fill`'s result, keeping the old one until the new one is complete. */
  const replaceUpper = async (
    spec: GuestSpec,
    fill: (tmp: string) => Promise<void>,
    options?: { keepReceived?: string },
  ) => {
    await assertStopped(spec);
    await withLayer(spec, () => replaceUpperMounted(spec, fill, options));
  };

  const replaceUpperMounted = async (
    spec: GuestSpec,
    fill: (tmp: string) => Promise<void>,
    options?: { keepReceived?: string },
  ) => {
    const upper = upperOf(spec);
    const layerRoot = layerRootOf(layerOf(spec));
    const tmp = join(layerRoot, `${TMP_PREFIX}upper`);
    const old = join(layerRoot, `${TMP_PREFIX}upper-old`);
    await rm(tmp, { recursive: true, force: true });
    try {
      await fill(tmp);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
    await rm(old, { recursive: true, force: true });
    // The layer is new: the guest's own backup chain and the one it was restored from end here.
    await forgetChains(dirOf(spec));
    if (options?.keepReceived === undefined) await removeBackupSubvolumes(runner, dirOf(spec));
    else {
      await removeWithSubvolumes(runner, join(dirOf(spec), BACKUP_SNAPSHOTS));
      await pruneSubvolumes(runner, join(dirOf(spec), BACKUP_RECEIVED), options.keepReceived);
    }
    await rename(upper, old);
    await rename(tmp, upper);
    await rm(old, { recursive: true, force: true });
    // overlayfs's work dir must be empty and on the same file system as upper/.
    const work = join(layerRoot, 'work');
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { mode: 0o755 });
  };

  /** Refuses an incremental link unless the guest is at the one before it, unchanged since. */
  const assertAtPrevious = async (spec: GuestSpec, link: BackupChainLink): Promise<string> => {
    const dir = dirOf(spec);
    const previous = await readRestored(dir);
    const expected = `backup ${link.sequence - 1} of chain ${link.chain}`;
    if (!previous || previous.chain !== link.chain || previous.sequence !== link.sequence - 1) {
      throw failedPrecondition(
        `Guest ${spec.name} is not at ${expected}: import the chain's full backup and its incrementals in order.`,
      );
    }
    if ((await treeStamp(upperOf(spec))) !== previous.stamp) {
      throw failedPrecondition(
        `Guest ${spec.name}'s files changed since ${expected} was applied (it ran): import the chain again from its full backup.`,
      );
    }
    return expected;
  };

  /**
   * Applies a link made by `btrfs send` (decision 0067): `btrfs receive` into a new subvolume
   * of the guest's pool (an incremental one finds its parent, the previous link's received
   * subvolume, by its UUID), whose `upper/` is then copied (reflinks) into a new layer that
   * replaces the guest's once whole. The received subvolume is kept as the next link's parent.
   */
  const importSent = async (
    spec: GuestSpec,
    tarPath: string,
    options: { link: BackupChainLink; signal?: AbortSignal },
  ) => {
    const { link, signal } = options;
    const dir = dirOf(spec);
    if (!(await isSubvolume(dir))) {
      throw invalidArgument(
        `The backup of guest ${spec.name} is a btrfs send stream: import it onto a btrfs storage pool (--storage POOL).`,
      );
    }
    await assertStopped(spec);
    let parent: string | undefined;
    if (link.kind === 'incremental') {
      const expected = await assertAtPrevious(spec, link);
      parent = join(dir, BACKUP_RECEIVED, snapshotNameOf({ chain: link.chain, sequence: link.sequence - 1 }));
      if (!(await isSubvolume(parent))) {
        throw failedPrecondition(
          `Guest ${spec.name} no longer holds the subvolume ${expected} was received into: import the chain again from its full backup.`,
        );
      }
    }
    const name = snapshotNameOf(link);
    const received = await receiveStream(runner, tarPath, {
      guestDir: dir,
      name,
      guest: spec.name,
      ...(parent !== undefined && { parent }),
      ...(signal && { signal }),
    });
    try {
      // replaceUpper forgets the chains and their subvolumes: the one just received is kept.
      await replaceUpper(
        spec,
        async (tmp) => {
          const from = join(received, 'upper');
          const flags = await copyFlags(from, tmp);
          await runner.run(['cp', '-a', ...flags, '--', from, tmp]);
        },
        { keepReceived: name },
      );
    } catch (e) {
      await removeWithSubvolumes(runner, received).catch(() => {});
      throw e;
    }
    await writeRestored(dir, {
      chain: link.chain,
      sequence: link.sequence,
      stamp: await treeStamp(upperOf(spec)),
    });
  };

  /**
   * The next link of the guest's chain (decision 48; 0067 on btrfs). Each link also leaves the
   * manifest of what it archived (ct-chain-carry.ts, decision 0062 amended 2026-12-07), read in the
   * same freeze, for another member to go on from. A chain taken over from another member has only
   * that manifest: its next link is tar's incremental over a snapshot file made from it for this
   * member's inodes, which archives what differs from the manifest; from then on the chain is tar's.
   */
  const exportLink: NonNullable<GuestStorage['exportIncremental']> = async (spec, tarPath, options) => {
    const dir = dirOf(spec);
    let chain = options?.newChain ? undefined : await readChain(dir);
    const linkManifest = chain?.manifest !== undefined ? await readManifest(dir, chain.manifest) : undefined;
    // A taken-over chain whose manifest does not read is no chain: a full link.
    if (chain && chain.snar === undefined && !linkManifest) chain = undefined;
    const carried = chain && chain.snar === undefined ? linkManifest : undefined;
    const link = nextLink(chain, newChainId);
    // tar rewrites the snapshot file it is given: the link's own copy, which counts only once
    // the archive is whole (commitChain), so a failed backup leaves the chain where it was.
    const snar = join(dir, snarNameOf(link));
    await rm(snar, { force: true });
    // On a btrfs pool (decision 0067): `btrfs send` of a read-only snapshot, against the previous
    // link's snapshot while it exists; without it (deleted by hand, a guest moved) tar's snapshot
    // file, which every btrfs link keeps too, carries the chain on with GNU tar's incrementals.
    const parent =
      chain?.method === BTRFS_SEND ? join(dir, BACKUP_SNAPSHOTS, snapshotNameOf(chain)) : undefined;
    const send =
      (await isSubvolume(dir)) &&
      (link.kind === 'full' || (parent !== undefined && (await isSubvolume(parent))));
    let snap: string | undefined;
    let manifest: ManifestEntry[] | undefined;
    // Of an own chain's link the manifest is a bonus: without it the chain goes on here, only not elsewhere.
    const takeManifest = async () => {
      try {
        manifest = await buildManifest(runner, upperOf(spec), {
          previous: linkManifest,
          signal: options?.signal,
        });
      } catch (e) {
        ctx.log.warn(
          { guest: spec.name, err: (e as Error).message },
          'no manifest of the backup: its chain cannot go on on another member',
        );
      }
    };
    let carryFailed: Error | undefined;
    try {
      if (chain?.snar !== undefined) await copyFile(join(dir, chain.snar), snar);
      const listed = [TAR_NO_DEVICE, `--listed-incremental=${snar}`, '-C', upperOf(spec)];
      if (send) {
        snap = await makeBackupSnapshot(runner, dir, {
          name: snapshotNameOf(link),
          freeze: (work) =>
            whileFrozen(spec, async () => {
              await work();
              // Into /dev/null GNU tar reads no file's data: only the listing for its snapshot file.
              await runner.run(['tar', ...TAR_KEEP, ...listed, '-cf', '/dev/null', '.'], {
                ...(options?.signal && { signal: options.signal }),
              });
              await takeManifest();
            }),
        });
        await sendSnapshot(runner, snap, {
          ...(link.kind === 'incremental' && parent !== undefined && { parent }),
          out: tarPath,
          ...(options?.signal && { signal: options.signal }),
        });
      } else {
        await whileFrozen(spec, async () => {
          if (carried) {
            try {
              manifest = await buildManifest(runner, upperOf(spec), { signal: options?.signal });
            } catch (e) {
              carryFailed = e as Error;
              return;
            }
            await writeFile(snar, carriedSnapshotFile(manifest, carried), { mode: 0o600 });
          }
          // The manifest is read while tar reads the same frozen tree (the guest stays frozen for
          // the longer of the two, not their sum); it never rejects, and is awaited even when tar fails.
          const reading = carried ? undefined : takeManifest();
          try {
            await packZstdTar(runner, ['tar', ...TAR_KEEP, ...listed, '-cf', '-', '.'], {
              out: tarPath,
              signal: options?.signal,
            });
          } finally {
            await reading;
          }
        });
      }
      if (carryFailed === undefined) {
        const manifestName = manifest ? manifestNameOf(link) : undefined;
        if (manifest && manifestName) await writeManifest(dir, manifestName, encodeManifest(manifest));
        await commitChain(dir, {
          chain: link.chain,
          sequence: link.sequence,
          snar: snarNameOf(link),
          ...(manifestName && { manifest: manifestName }),
          ...(send && { method: BTRFS_SEND }),
        });
      }
    } catch (e) {
      await rm(snar, { force: true });
      await rm(join(dir, manifestNameOf(link)), { force: true });
      if (snap) await removeWithSubvolumes(runner, snap).catch(() => {});
      throw e;
    }
    if (carryFailed !== undefined) {
      // The layer cannot be compared with the carried manifest: a new chain, as without one.
      await rm(snar, { force: true });
      ctx.log.warn(
        { guest: spec.name, chain: link.chain, err: carryFailed.message },
        'the backup chain taken over cannot go on: a full backup',
      );
      return exportLink(spec, tarPath, { ...options, newChain: true });
    }
    // Only the last link's snapshot is kept: the next backup is sent against it.
    const keep = send ? snapshotNameOf(link) : undefined;
    await pruneSubvolumes(runner, join(dir, BACKUP_SNAPSHOTS), keep).catch(() => {});
    if (!send) await removeWithSubvolumes(runner, join(dir, BACKUP_SNAPSHOTS)).catch(() => {});
    return send ? { ...link, method: BTRFS_SEND } : link;
  };

  const storage: GuestStorage = {
    async snapshot(spec, snap) {
      const target = join(snapshotsOf(spec), snap);
      if (await exists(target))
        throw failedPrecondition(`Snapshot ${snap} of guest ${spec.name} exists on disk.`);
      await mkdir(snapshotsOf(spec), { recursive: true, mode: 0o700 });
      const tmp = join(snapshotsOf(spec), `${TMP_PREFIX}${snap}`);
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp, { mode: 0o700 });
      try {
        if (imaged(spec)) await copyLayerImage(spec, join(tmp, LAYER_IMAGE));
        else {
          const flags = await copyFlags(upperOf(spec), tmp);
          await whileFrozen(spec, () =>
            runner.run(['cp', '-a', ...flags, '--', upperOf(spec), join(tmp, 'upper')]),
          );
        }
        await rename(tmp, target);
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        throw e;
      }
    },

    async restoreSnapshot(spec, snap) {
      const from = await sourceOf(spec, { snapshot: snap });
      if (imaged(spec)) {
        await restoreLayerImage(spec, from);
        return;
      }
      await replaceUpper(spec, (tmp) =>
        copyFlags(from, tmp)
          .then((flags) => runner.run(['cp', '-a', ...flags, '--', from, tmp]))
          .then(() => {}),
      );
    },

    async deleteSnapshot(spec, snap) {
      await rm(join(snapshotsOf(spec), snap), { recursive: true, force: true });
    },

    async listSnapshots(spec) {
      const names = await readdir(snapshotsOf(spec)).catch(() => [] as string[]);
      return names.filter((n) => !n.startsWith(TMP_PREFIX)).sort();
    },

    async copy(source, target, options) {
      await withSource(source, options, (from) =>
        replaceUpper(target, async (tmp) => {
          const flags = await copyFlags(from, tmp);
          const cp = () => runner.run(['cp', '-a', ...flags, '--', from, tmp]);
          if (options?.snapshot !== undefined) await cp();
          else await whileFrozen(source, cp);
        }),
      );
    },

    async exportTar(spec, tarPath, options) {
      await withSource(spec, options, async (from) => {
        const run = () =>
          packZstdTar(runner, ['tar', ...TAR_KEEP, '-C', from, '-cf', '-', '.'], {
            out: tarPath,
            signal: options?.signal,
          });
        if (options?.snapshot !== undefined) await run();
        else await whileFrozen(spec, run);
      });
    },

    async importTar(spec, tarPath, options) {
      const extract = async (dir: string) => {
        await mkdir(dir, { mode: 0o755 });
        const argv = ['tar', ...TAR_EXTRACT, '-C', dir, '-xf', '-'];
        const r = await unpackZstdTar(runner, tarPath, argv, options?.signal);
        if (r.code !== 0) throw new CommandError(argv, { ...r, stdout: '' });
      };
      if (options?.snapshot === undefined) {
        await replaceUpper(spec, extract);
        return;
      }
      const target = join(snapshotsOf(spec), options.snapshot);
      await mkdir(snapshotsOf(spec), { recursive: true, mode: 0o700 });
      const tmp = join(snapshotsOf(spec), `${TMP_PREFIX}${options.snapshot}`);
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp, { mode: 0o700 });
      try {
        if (imaged(spec)) {
          // A snapshot of a guest with a layer image is an image too (decision 0094).
          await fillNewImage(runner, join(tmp, LAYER_IMAGE), {
            sizeBytes: layerImageBytes(spec),
            scratch,
            fill: (root) => extract(join(root, 'upper')),
          });
        } else await extract(join(tmp, 'upper'));
        await rm(target, { recursive: true, force: true });
        await rename(tmp, target);
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        throw e;
      }
    },

    exportIncremental: (spec, tarPath, options) => exportLink(spec, tarPath, options),

    async chainState(spec) {
      const dir = dirOf(spec);
      const chain = await readChain(dir);
      if (chain?.manifest === undefined) return undefined;
      const entries = await readManifest(dir, chain.manifest);
      if (!entries) return undefined;
      return {
        chain: chain.chain,
        sequence: chain.sequence,
        data: encodeManifest(entries, { portable: true }),
      };
    },

    async continueChain(spec, state) {
      if (!CHAIN_ID.test(state.chain) || !Number.isSafeInteger(state.sequence) || state.sequence < 0) {
        return false;
      }
      const entries = decodeManifest(state.data);
      if (!entries) return false;
      // The upper dir's owner says which id range the files are in (decision 18): in another range
      // than the link's, every file changed owner, and a full link is as big and stands alone.
      const root = await lstat(upperOf(spec)).catch(() => undefined);
      if (!root?.isDirectory() || root.uid !== entries[0]?.u || root.gid !== entries[0]?.g) return false;
      const dir = dirOf(spec);
      const name = manifestNameOf(state);
      // Another member's inodes and ctimes mean nothing here: none of its digests is lent.
      await writeManifest(dir, name, encodeManifest(entries, { portable: true }));
      await commitChain(dir, { chain: state.chain, sequence: state.sequence, manifest: name });
      return true;
    },

    async importIncremental(spec, tarPath, options) {
      const { link, signal } = options;
      const dir = dirOf(spec);
      if (link.method === BTRFS_SEND) {
        await importSent(spec, tarPath, { link, ...(signal && { signal }) });
        return;
      }
      // `--listed-incremental=/dev/null` makes tar apply each directory's listing: what the archived
      // directory no longer held is deleted (renames follow from that), whiteouts come as devices.
      const extract = async (into: string) => {
        const r = await unpackZstdTar(
          runner,
          tarPath,
          await sandboxFor(into, tarPath, [
            'tar',
            ...TAR_EXTRACT,
            TAR_NO_DEVICE,
            '--listed-incremental=/dev/null',
            '-C',
            into,
            '-xf',
            '-',
          ]),
          signal,
        );
        if (r.code === 0) return;
        signal?.throwIfAborted();
        const stderr = r.stderr.trim();
        if (/No space left/i.test(stderr) || stderr.startsWith('bwrap:')) throw new Error(stderr);
        // The archive's checksums matched its manifest: what tar refuses was made so (or by another tool).
        throw invalidArgument(
          `The backup cannot be applied to guest ${spec.name} (${stderr.split('\n')[0] ?? ''}): it was not made by a ct export.`,
        );
      };
      if (link.kind === 'full') {
        await replaceUpper(spec, async (tmp) => {
          await mkdir(tmp, { mode: 0o755 });
          await extract(tmp);
        });
      } else {
        await assertAtPrevious(spec, link);
        // Applied to a copy that replaces the layer once whole: a damaged archive changes nothing.
        await replaceUpper(spec, async (tmp) => {
          const flags = await copyFlags(upperOf(spec), tmp);
          await runner.run(['cp', '-a', ...flags, '--', upperOf(spec), tmp]);
          await extract(tmp);
        });
      }
      await writeRestored(dir, {
        chain: link.chain,
        sequence: link.sequence,
        stamp: await treeStamp(upperOf(spec)),
      });
    },

    async sweep(spec) {
      // An interrupted restore may have left (between its two renames) the old upper aside and no new one in place.
      const upper = upperOf(spec);
      const layerRoot = layerRootOf(layerOf(spec));
      if (!(await exists(upper)) && (await exists(join(layerRoot, `${TMP_PREFIX}upper-old`)))) {
        await rename(join(layerRoot, `${TMP_PREFIX}upper-old`), upper);
      }
      // A backup or a receive cut short leaves a subvolume that no chain names.
      const chain = await readChain(dirOf(spec));
      await pruneSubvolumes(
        runner,
        join(dirOf(spec), BACKUP_SNAPSHOTS),
        chain?.method === BTRFS_SEND ? snapshotNameOf(chain) : undefined,
      );
      const restored = await readRestored(dirOf(spec));
      await pruneSubvolumes(
        runner,
        join(dirOf(spec), BACKUP_RECEIVED),
        restored ? snapshotNameOf(restored) : undefined,
      );
      for (const dir of new Set([dirOf(spec), layerRootOf(layerOf(spec)), snapshotsOf(spec)])) {
        for (const name of await readdir(dir).catch(() => [] as string[])) {
          if (!name.startsWith(TMP_PREFIX)) continue;
          // A cp of a killed daemon may still write here: move it away first so that it fails.
          const trash = join(dir, `${name}.trash`);
          await rename(join(dir, name), trash).catch(() => {});
          await rm(trash, { recursive: true, force: true, maxRetries: 3 });
        }
      }
    },
  };

  // With a layer image, these work on the mounted layer, mounted for them while the guest is stopped.
  const plain = { ...storage };
  storage.exportIncremental = (spec, tarPath, options) =>
    withLayer(spec, () => plain.exportIncremental?.(spec, tarPath, options) ?? Promise.reject());
  storage.importIncremental = (spec, tarPath, options) =>
    withLayer(spec, () => plain.importIncremental?.(spec, tarPath, options) ?? Promise.resolve());
  storage.continueChain = (spec, state) =>
    withLayer(spec, () => plain.continueChain?.(spec, state) ?? Promise.resolve(false));
  storage.sweep = async (spec) => {
    if (!imaged(spec)) return plain.sweep(spec);
    // A daemon killed while it had a snapshot's image mounted leaves that mount (its pid in the name).
    for (const name of await readdir(scratch).catch(() => [] as string[])) {
      if (!name.startsWith(MOUNT_PREFIX) || name.startsWith(`${MOUNT_PREFIX}${process.pid}-`)) continue;
      await unmountIfMounted(join(scratch, name), { runner });
      await rmdir(join(scratch, name)).catch(() => {});
    }
    await withLayer(spec, () => plain.sweep(spec));
    // A guest that stopped while no daemon watched keeps its layer mounted: it is unmounted here.
    if (!(await isRunning(spec))) await unmountCtLayer(runner, stateDir, spec.name);
  };
  return storage;
}
