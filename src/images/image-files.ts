import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  asTrivisorError,
  cancelled,
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  notSupported,
  unavailable,
} from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { buildBaseDisk } from './base-disk.ts';
import { buildBusyboxRootfs } from './busybox-image.ts';
import { buildDebootstrapRootfs, type ProgressCallback } from './debootstrap-image.ts';
import { removeDeviceNodes } from './device-nodes.ts';
import {
  DISK_DIGEST_PROPERTY,
  DISK_IMAGE_NAME,
  diskImageMetadata,
  inspectDiskImage,
  sha256File,
  storeDiskImage,
  writeSparse,
} from './disk-image.ts';
import { BASE_DISK_NAME, imageInitArgv } from './guest-kit.ts';
import type { ImageMetadata } from './image-metadata.ts';
import { removeTree } from './remove-tree.ts';
import { runStreamed } from './streamed-command.ts';
import { assertRootFileSystem, extractTarball, importedMetadata } from './tarball-image.ts';
import { digestTree } from './tree-manifest.ts';

/** An image as it lies on disk after an add. */
export interface AddedImage {
  fingerprint: string;
  metadata: ImageMetadata;
  sizeBytes: number;
  /**
   * The tree's own digest (tree-manifest.ts), which a copy of the tree on another member must
   * have; it is the fingerprint for built trees, not for imported tarballs (their bytes').
   */
  treeDigest?: string;
}

/** An image tree as one member sends it to another (decision 0034). */
export interface TreeExport {
  /** The digest the received tree must have. */
  treeDigest: string;
  metadata: ImageMetadata;
  /** An uncompressed tar of the tree (numeric owners, modes, xattrs). */
  stream: Readable;
  /** Resolves when tar ended well; rejects with why it did not. */
  done: Promise<void>;
}

/** A disk image's stored qcow2 as one member sends it to another (decision 0034). */
export interface DiskExport {
  /** The sha256 of the stored qcow2, which the copy must have. */
  diskDigest: string;
  metadata: ImageMetadata;
  /** Bytes the stream carries (the file's length). */
  sizeBytes: number;
  /** The qcow2's bytes. */
  stream: Readable;
}

/** Options of the long-running adds. */
export interface AddOptions {
  onProgress?: ProgressCallback;
  signal?: AbortSignal;
}

/**
 * The image trees on one host, under `${stateDir}/images/<fingerprint>/`, root
 * only (0700, as `images/`: docs/decisions/0018): `trees/rootfs/` (the tree),
 * `image.json` (metadata and size) and the base disks of vm and pvm guests
 * (0444: a pvm kernel reads its image's as its own uid, through the bind mount
 * its jail gets from root). Every add builds in `images/.tmp-*` and renames into
 * place, so a directory named by a fingerprint is always complete. Trees hold no
 * device nodes. Records in the KV store are not kept here.
 */
export interface ImageFiles {
  /** Path of an image's tree (whether or not it exists). */
  rootfsPath(fingerprint: string): string;
  /** The image's ext4 base disk for vm and pvm guests, made once and cached. */
  baseDisk(fingerprint: string): Promise<string>;
  /** Adds the builtin busybox image; same fingerprint on every run on the same host. */
  addBusybox(): Promise<AddedImage>;
  /** Builds a Debian minbase image with debootstrap from a source such as `debian/bookworm`. */
  buildDebootstrap(source: string, options?: AddOptions): Promise<AddedImage>;
  /** Imports a root file system tarball (plain, gzip, xz, zstd or bzip2; told apart by content). */
  importTarball(path: string, options?: AddOptions): Promise<AddedImage>;
  /**
   * Imports a whole-disk image (qcow2 or raw, with its own partition table and boot loader) as
   * a vm disk image: checked, fingerprinted by the sha256 of its bytes, stored once as a sparse
   * qcow2 (`images/<fp>/disk.qcow2`, root only).
   */
  importDisk(
    path: string,
    options: AddOptions & { format: 'qcow2' | 'raw'; description: string; sha256?: string },
  ): Promise<AddedImage>;
  /** The image's tree as a tar stream for another member; NotFound if absent, NotSupported for a disk image. */
  exportTree(fingerprint: string): Promise<TreeExport>;
  /** A disk image's stored qcow2 for another member; NotFound if absent, NotSupported for a tree image. */
  exportDisk(fingerprint: string): Promise<DiskExport>;
  /**
   * Adds a disk image another member sent, under `fingerprint`: written sparse as it arrives,
   * refused with nothing left when its bytes do not hash to `diskDigest` (or it is no plain
   * qcow2), and only then put in place.
   */
  receiveDisk(
    fingerprint: string,
    sent: { diskDigest: string; metadata: ImageMetadata },
    disk: Readable,
    options?: { signal?: AbortSignal },
  ): Promise<AddedImage>;
  /**
   * Adds an image tree another member sent, under `fingerprint`: refused, with nothing left,
   * when the tree that arrived is not the one `treeDigest` names.
   */
  receiveTree(
    fingerprint: string,
    sent: { treeDigest: string; metadata: ImageMetadata },
    tar: Readable,
  ): Promise<AddedImage>;
  /** Removes an image and all it holds; does nothing if it is absent. */
  remove(fingerprint: string): Promise<void>;
  exists(fingerprint: string): Promise<boolean>;
  /** Fingerprints of the complete images on disk. */
  list(): Promise<string[]>;
  /** Metadata stored with an image at add time; NotFound if absent. */
  metadata(fingerprint: string): Promise<AddedImage>;
  /** Bytes the image's tree occupies on disk (as measured when added); NotFound if absent. */
  sizeBytes(fingerprint: string): Promise<number>;
  /** Removes temp dirs left by a crash mid-add; call once at daemon start, before any add. */
  removeLeftovers(): Promise<string[]>;
  /**
   * Call once at daemon start, before anything else: removes leftovers and closes the
   * trees of images an earlier version stored open (`images/<fp>/rootfs`, and the
   * `rootfs-shift-*` copies it made for ct guests) by moving them behind `trees/`
   * and dropping their device nodes.
   */
  prepare(): Promise<void>;
}

/**
 * The directory every tree of an image sits behind: root only, so no host user reaches a tree
 * even if the image's directory had to be opened again for a guest uid (as it was for pvm
 * kernels before their jail).
 */
const TREES = 'trees';

const FINGERPRINT = /^[0-9a-f]{64}$/;
const TMP_PREFIX = '.tmp-';

function checkFingerprint(fingerprint: string): void {
  if (!FINGERPRINT.test(fingerprint)) {
    throw invalidArgument(`'${fingerprint}' is not an image fingerprint: give the 64-character sha256 hex.`);
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isFile();
  } catch {
    return false;
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isDirectory();
  } catch {
    return false;
  }
}

export function imageFiles(stateDir: string, deps: { runner: ProcessRunner; log: Logger }): ImageFiles {
  const { runner } = deps;
  const log = deps.log.child({ component: 'image-files' });
  const imagesDir = join(stateDir, 'images');
  const imageDir = (fp: string): string => join(imagesDir, fp);
  const treeOf = (fp: string): string => join(imageDir(fp), TREES, 'rootfs');
  const diskBuilds = new Map<string, Promise<string>>();

  const diskOf = (fp: string): string => join(imageDir(fp), DISK_IMAGE_NAME);
  /** A complete image: its tree (rootfs images) or its disk (disk images) is there. */
  const hasContent = async (fingerprint: string): Promise<boolean> =>
    (await isDirectory(treeOf(fingerprint))) || (await isFile(diskOf(fingerprint)));

  const exists = async (fingerprint: string): Promise<boolean> => {
    checkFingerprint(fingerprint);
    return (await hasContent(fingerprint)) && (await readRecord(fingerprint)) !== null;
  };

  const readRecord = async (fingerprint: string): Promise<AddedImage | null> => {
    try {
      return JSON.parse(await readFile(join(imageDir(fingerprint), 'image.json'), 'utf8')) as AddedImage;
    } catch {
      return null;
    }
  };

  // Nothing but the daemon opens anything here: ct guests get the tree through an idmapped mount,
  // vm guests their disks as descriptors, pvm kernels through bind mounts made by root.
  const ensureImagesDir = async (): Promise<void> => {
    await mkdir(imagesDir, { recursive: true, mode: 0o700 });
    await chmod(imagesDir, 0o700);
  };

  /**
   * Moves the trees of an image stored by an earlier version (`rootfs/`, `rootfs-shift-*`, open to
   * every host user) behind `trees/`. A shifted copy may be the lower layer of a ct guest still
   * running on the shared id range: a rename does not disturb a mounted overlay, which holds its
   * layers, not their paths.
   */
  const closeImage = async (fingerprint: string): Promise<void> => {
    const dir = imageDir(fingerprint);
    const trees = join(dir, TREES);
    await mkdir(trees, { mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    await chmod(trees, 0o700);
    for (const inner of await readdir(dir)) {
      if (inner !== 'rootfs' && !inner.startsWith('rootfs-shift-')) continue;
      if (inner === 'rootfs') {
        const dropped = await removeDeviceNodes(join(dir, inner), { runner });
        if (dropped.length > 0) log.info({ fingerprint, count: dropped.length }, 'dropped device nodes');
      }
      await rename(join(dir, inner), join(trees, inner));
      log.info({ fingerprint, tree: inner }, 'moved an image tree behind trees/');
    }
    await chmod(dir, 0o700);
    if (await isFile(join(dir, 'image.json'))) await chmod(join(dir, 'image.json'), 0o600);
  };

  const metadata = async (fingerprint: string): Promise<AddedImage> => {
    checkFingerprint(fingerprint);
    const record = (await hasContent(fingerprint)) ? await readRecord(fingerprint) : null;
    if (!record)
      throw notFound(`Image ${fingerprint.slice(0, 12)} is not on this host: add or import it first.`);
    return record;
  };

  /**
   * Writes an image's record into its temp dir and puts the dir in place. Another add of the
   * same fingerprint that got there first wins, as good as ours: its record is answered and ours
   * removed. Undefined when ours is in place.
   */
  const install = async (
    tmp: string,
    record: AddedImage,
    signal: AbortSignal | undefined,
  ): Promise<AddedImage | undefined> => {
    await writeFile(join(tmp, 'image.json'), `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
    signal?.throwIfAborted();
    try {
      await rename(tmp, imageDir(record.fingerprint));
      return undefined;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      await removeTree(tmp, { runner });
      return await metadata(record.fingerprint);
    }
  };

  /**
   * Runs `build` on a fresh `trees/rootfs` dir inside a fresh `images/.tmp-<random>`, drops the
   * tree's device nodes, fingerprints it and renames it into place; on any failure or cancel the
   * temp dir goes away.
   */
  const add = async (
    what: string,
    options: AddOptions & { expectTreeDigest?: string },
    build: (rootfs: string) => Promise<{ metadata: ImageMetadata; fingerprint?: string }>,
  ): Promise<AddedImage> => {
    const { signal } = options;
    signal?.throwIfAborted();
    await ensureImagesDir();
    const tmp = join(imagesDir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const rootfs = join(tmp, TREES, 'rootfs');
    // Closed while the tree is made: an importing tarball's setuid files are there from the start.
    await mkdir(tmp, { mode: 0o700 });
    try {
      await mkdir(join(tmp, TREES), { mode: 0o700 });
      await chmod(join(tmp, TREES), 0o700);
      await mkdir(rootfs, { mode: 0o755 });
      const built = await build(rootfs);
      signal?.throwIfAborted();
      const dropped = await removeDeviceNodes(rootfs, { runner });
      if (dropped.length > 0) {
        log.info({ what, count: dropped.length, first: dropped.slice(0, 5) }, 'dropped device nodes');
      }
      signal?.throwIfAborted();
      options.onProgress?.(99, 'Fingerprinting the tree');
      const digest = await digestTree(rootfs, signal ? { signal } : {});
      const fingerprint = built.fingerprint ?? digest.fingerprint;
      if (options.expectTreeDigest !== undefined && digest.fingerprint !== options.expectTreeDigest) {
        throw failedPrecondition(
          `${what} arrived changed: its tree digest is ${digest.fingerprint.slice(0, 12)}, the sender's ${options.expectTreeDigest.slice(0, 12)}; nothing was added`,
        );
      }
      const record: AddedImage = {
        fingerprint,
        metadata: built.metadata,
        sizeBytes: digest.sizeBytes,
        treeDigest: digest.fingerprint,
      };
      const existing = await readRecord(fingerprint);
      if (existing && (await isDirectory(treeOf(fingerprint)))) {
        log.info({ fingerprint, what }, 'image already on disk: discarding the new tree');
        await removeTree(tmp, { runner });
        return existing;
      }
      const theirs = await install(tmp, record, signal);
      if (theirs) return theirs;
      options.onProgress?.(100, 'Done');
      log.info({ fingerprint, what, sizeBytes: record.sizeBytes }, 'image added');
      return record;
    } catch (e) {
      await removeTree(tmp, { runner }).catch((err: unknown) =>
        log.error({ err, tmp }, 'cannot remove the temp dir of a failed image add'),
      );
      if (signal?.aborted) throw cancelled(`Adding ${what} was cancelled.`);
      throw asTrivisorError(e);
    }
  };

  const files: ImageFiles = {
    async exportTree(fingerprint) {
      const { metadata: meta, treeDigest } = await metadata(fingerprint);
      if (meta.type === 'disk') {
        throw notSupported(
          `Image ${fingerprint.slice(0, 12)} is a disk image: import it on each member that runs guests of it`,
        );
      }
      const rootfs = treeOf(fingerprint);
      // Images added before tree digests were kept: the digest of the tree as it is now.
      const digest = treeDigest ?? (await digestTree(rootfs)).fingerprint;
      const child = runner.spawn(
        ['tar', '--create', '--file=-', `--directory=${rootfs}`, '--numeric-owner', '--xattrs', '.'],
        { stdio: ['ignore', 'pipe', 'pipe'], env: { LC_ALL: 'C' } },
      );
      let stderr = '';
      child.stderr?.on('data', (c: Buffer) => {
        stderr = (stderr + c.toString()).slice(-500);
      });
      const done = new Promise<void>((resolve, reject) => {
        child.once('error', reject);
        child.once('close', (code) =>
          code === 0
            ? resolve()
            : reject(internal(`tar of image ${fingerprint.slice(0, 12)} failed: ${stderr.trim()}`)),
        );
      });
      return { treeDigest: digest, metadata: meta, stream: child.stdout as Readable, done };
    },

    receiveTree(fingerprint, sent, tar) {
      checkFingerprint(fingerprint);
      return add(
        `Image ${fingerprint.slice(0, 12)} from another member`,
        { expectTreeDigest: sent.treeDigest },
        async (rootfs) => {
          await runStreamed(
            runner,
            [
              'tar',
              '--extract',
              '--file=-',
              `--directory=${rootfs}`,
              '--numeric-owner',
              '--same-owner',
              '--same-permissions',
              '--xattrs',
              '--xattrs-include=user.*',
              '--xattrs-include=security.capability',
            ],
            {
              input: tar,
              env: { LC_ALL: 'C' },
              onFailure: ({ tail }) =>
                unavailable(`The image tree broke off on the way: ${tail.replace(/\s+/g, ' ').trim()}`),
            },
          );
          return { metadata: sent.metadata, fingerprint };
        },
      );
    },

    async exportDisk(fingerprint) {
      const { metadata: meta } = await metadata(fingerprint);
      if (meta.type !== 'disk') {
        throw notSupported(`Image ${fingerprint.slice(0, 12)} is a tree image: ask for its tree`);
      }
      const disk = diskOf(fingerprint);
      // Images imported before the stored disk's digest was kept: the digest of the file as it is.
      const diskDigest = meta.properties[DISK_DIGEST_PROPERTY] ?? (await sha256File(disk));
      const { size } = await stat(disk);
      return {
        diskDigest,
        metadata: meta,
        sizeBytes: size,
        stream: createReadStream(disk, { highWaterMark: 1024 * 1024 }),
      };
    },

    async receiveDisk(fingerprint, sent, disk, options = {}) {
      checkFingerprint(fingerprint);
      const { signal } = options;
      const what = `Disk image ${fingerprint.slice(0, 12)} from another member`;
      // A connection that breaks before the disk is read must not throw where nobody listens:
      // writeSparse's reading meets the error all the same (the stream is errored).
      disk.on('error', () => {});
      if (!/^[0-9a-f]{64}$/.test(sent.diskDigest)) {
        disk.destroy();
        throw invalidArgument(`${what} came without the digest of its disk: nothing was added`);
      }
      const existing = await readRecord(fingerprint);
      if (existing && (await isFile(diskOf(fingerprint)))) {
        disk.destroy();
        return existing;
      }
      await ensureImagesDir();
      const tmp = join(imagesDir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
      await mkdir(tmp, { mode: 0o700 });
      try {
        const target = join(tmp, DISK_IMAGE_NAME);
        let arrived: { sha256: string; sizeBytes: number };
        try {
          arrived = await writeSparse(disk, target, signal ? { signal } : {});
        } catch (e) {
          if (signal?.aborted) throw e;
          throw unavailable(`${what} broke off on the way: ${asTrivisorError(e).message}`);
        }
        if (arrived.sha256 !== sent.diskDigest) {
          throw failedPrecondition(
            `${what} arrived changed: its sha256 is ${arrived.sha256.slice(0, 12)}, the image's ${sent.diskDigest.slice(0, 12)}; nothing was added`,
          );
        }
        // The bytes are the image's own; checked all the same before QEMU ever opens them.
        await inspectDiskImage(runner, target, 'qcow2');
        await chmod(target, 0o400);
        const metaData: ImageMetadata = {
          ...sent.metadata,
          properties: { ...sent.metadata.properties, [DISK_DIGEST_PROPERTY]: sent.diskDigest },
        };
        const record: AddedImage = {
          fingerprint,
          metadata: metaData,
          sizeBytes: (await lstat(target)).blocks * 512,
        };
        const theirs = await install(tmp, record, signal);
        if (theirs) return theirs;
        log.info(
          { fingerprint, sizeBytes: record.sizeBytes, lengthBytes: arrived.sizeBytes },
          'disk image received',
        );
        return record;
      } catch (e) {
        disk.destroy();
        await removeTree(tmp, { runner }).catch((err: unknown) =>
          log.error({ err, tmp }, 'cannot remove the temp dir of a failed disk image transfer'),
        );
        if (signal?.aborted) throw cancelled(`Receiving ${what.toLowerCase()} was cancelled.`);
        throw asTrivisorError(e);
      }
    },

    rootfsPath(fingerprint) {
      checkFingerprint(fingerprint);
      return treeOf(fingerprint);
    },

    baseDisk(fingerprint) {
      checkFingerprint(fingerprint);
      const pending = diskBuilds.get(fingerprint);
      if (pending) return pending;
      const target = join(imageDir(fingerprint), BASE_DISK_NAME);
      const work = (async () => {
        const { metadata: meta } = await metadata(fingerprint);
        // A disk image is its own disk: guests are overlays on it.
        if (meta.type === 'disk') return diskOf(fingerprint);
        // Never rebuilt once made: guests' copy-on-write layers point at this very file. A
        // changed kit gets a disk of its own name (BASE_DISK_NAME); older ones stay for their guests.
        if (await isFile(target)) return target;
        log.info({ fingerprint }, 'making the base disk of the image for vm and pvm guests');
        const { sizeBytes } = await buildBaseDisk(treeOf(fingerprint), target, {
          runner,
          initArgv: imageInitArgv(meta.properties),
        });
        log.info({ fingerprint, sizeBytes }, 'base disk made');
        return target;
      })().finally(() => diskBuilds.delete(fingerprint));
      diskBuilds.set(fingerprint, work);
      return work;
    },
    addBusybox() {
      return add('the busybox image', {}, async (rootfs) => ({
        metadata: await buildBusyboxRootfs(rootfs, { runner }),
      }));
    },

    buildDebootstrap(source, options = {}) {
      return add(`image ${source}`, options, async (rootfs) => ({
        metadata: await buildDebootstrapRootfs(rootfs, {
          runner,
          source,
          ...(options.onProgress ? { onProgress: options.onProgress } : {}),
          ...(options.signal ? { signal: options.signal } : {}),
        }),
      }));
    },

    importTarball(path, options = {}) {
      return add(basename(path), options, async (rootfs) => {
        const { fingerprint } = await extractTarball(path, rootfs, {
          runner,
          ...(options.onProgress ? { onProgress: options.onProgress } : {}),
          ...(options.signal ? { signal: options.signal } : {}),
        });
        await assertRootFileSystem(rootfs, basename(path));
        return { fingerprint, metadata: await importedMetadata(rootfs, path) };
      });
    },

    async importDisk(path, options) {
      const { signal } = options;
      signal?.throwIfAborted();
      const info = await inspectDiskImage(runner, path, options.format);
      const fingerprint = options.sha256 ?? (await sha256File(path, options));
      const existing = await readRecord(fingerprint);
      if (existing && (await isFile(diskOf(fingerprint)))) {
        log.info({ fingerprint }, 'disk image already on disk');
        return existing;
      }
      await ensureImagesDir();
      const tmp = join(imagesDir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
      await mkdir(tmp, { mode: 0o700 });
      try {
        options.onProgress?.(45, 'Storing the disk image');
        const disk = join(tmp, DISK_IMAGE_NAME);
        await storeDiskImage(runner, { path, format: options.format }, disk, signal ? { signal } : {});
        // Shared read-only by every guest made from it (QEMU gets it as a descriptor, decision 19).
        await chmod(disk, 0o400);
        const sizeBytes = (await lstat(disk)).blocks * 512;
        // What another member's copy must hash to (decision 0034): kept in the image's record.
        options.onProgress?.(90, 'Fingerprinting the stored disk');
        const diskDigest = await sha256File(disk, signal ? { signal } : {});
        const meta = diskImageMetadata(options.description, info);
        meta.properties[DISK_DIGEST_PROPERTY] = diskDigest;
        const record: AddedImage = { fingerprint, metadata: meta, sizeBytes };
        const theirs = await install(tmp, record, signal);
        if (theirs) return theirs;
        options.onProgress?.(100, 'Done');
        log.info({ fingerprint, sizeBytes, virtualSizeBytes: info.virtualSizeBytes }, 'disk image added');
        return record;
      } catch (e) {
        await removeTree(tmp, { runner }).catch(() => {});
        if (signal?.aborted) throw cancelled(`Importing ${options.description} was cancelled.`);
        throw asTrivisorError(e);
      }
    },

    async remove(fingerprint) {
      checkFingerprint(fingerprint);
      const dir = imageDir(fingerprint);
      if (!(await isDirectory(dir))) return;
      // Rename first: a half-removed image must not look like a complete one.
      const doomed = join(imagesDir, `${TMP_PREFIX}remove-${randomBytes(8).toString('hex')}`);
      await rename(dir, doomed);
      await removeTree(doomed, { runner });
      log.info({ fingerprint }, 'image removed');
    },

    exists,

    async list() {
      let names: string[];
      try {
        names = await readdir(imagesDir);
      } catch {
        return [];
      }
      const complete: string[] = [];
      for (const name of names.sort()) {
        if (FINGERPRINT.test(name) && (await exists(name))) complete.push(name);
      }
      return complete;
    },

    metadata,

    async sizeBytes(fingerprint) {
      return (await metadata(fingerprint)).sizeBytes;
    },

    async prepare() {
      await ensureImagesDir();
      await files.removeLeftovers();
      // A few calls per image, and idempotent: a start killed half-way finishes the job at the next.
      for (const name of await readdir(imagesDir)) {
        if (FINGERPRINT.test(name)) await closeImage(name);
      }
    },

    async removeLeftovers() {
      const removed: string[] = [];
      let names: string[];
      try {
        names = await readdir(imagesDir);
      } catch {
        return removed;
      }
      for (const name of names) {
        if (name.startsWith(TMP_PREFIX)) {
          await removeTree(join(imagesDir, name), { runner });
          removed.push(name);
        } else if (FINGERPRINT.test(name)) {
          for (const inner of await readdir(imageDir(name)).catch(() => [] as string[])) {
            if (inner.includes('.tmp-')) {
              await removeTree(join(imageDir(name), inner), { runner });
              removed.push(`${name}/${inner}`);
            }
          }
        }
      }
      if (removed.length > 0) log.warn({ removed }, 'removed leftovers of interrupted image work');
      return removed;
    },
  };
  return files;
}
