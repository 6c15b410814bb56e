import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { asTrivisorError, cancelled, invalidArgument, notFound } from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { buildBaseDisk } from './base-disk.ts';
import { buildBusyboxRootfs } from './busybox-image.ts';
import { buildDebootstrapRootfs, type ProgressCallback } from './debootstrap-image.ts';
import { BASE_DISK_NAME, imageInitArgv } from './guest-kit.ts';
import type { ImageMetadata } from './image-metadata.ts';
import { removeTree } from './remove-tree.ts';
import { shiftTree } from './shift-tree.ts';
import { assertRootFileSystem, extractTarball, importedMetadata } from './tarball-image.ts';
import { digestTree } from './tree-manifest.ts';

/** An image as it lies on disk after an add. */
export interface AddedImage {
  fingerprint: string;
  metadata: ImageMetadata;
  sizeBytes: number;
}

/** Options of the long-running adds. */
export interface AddOptions {
  onProgress?: ProgressCallback;
  signal?: AbortSignal;
}

/**
 * The image trees on one host, under `${stateDir}/images/<fingerprint>/`:
 * `rootfs/` (the tree), `image.json` (metadata and size) and lazily made
 * `rootfs-shift-<base>/` copies for user-namespaced containers. Every add builds
 * in `images/.tmp-*` and renames into place, so a directory named by a
 * fingerprint is always complete. Records in the KV store are not kept here.
 */
export interface ImageFiles {
  /** Path of an image's tree (whether or not it exists). */
  rootfsPath(fingerprint: string): string;
  /** Path of the image's tree with ids raised by `base`, made on first use; NotFound if the image is absent. */
  shiftedRootfs(fingerprint: string, base: number): Promise<string>;
  /** The image's ext4 base disk for vm and pvm guests, made once and cached. */
  baseDisk(fingerprint: string): Promise<string>;
  /** Adds the builtin busybox image; same fingerprint on every run on the same host. */
  addBusybox(): Promise<AddedImage>;
  /** Builds a Debian minbase image with debootstrap from a source such as `debian/bookworm`. */
  buildDebootstrap(source: string, options?: AddOptions): Promise<AddedImage>;
  /** Imports a root file system tarball (plain, gzip, xz, zstd or bzip2; told apart by content). */
  importTarball(path: string, options?: AddOptions): Promise<AddedImage>;
  /** Removes an image and its shifted copies; does nothing if it is absent. */
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
}

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
  const shifting = new Map<string, Promise<string>>();
  const diskBuilds = new Map<string, Promise<string>>();

  const exists = async (fingerprint: string): Promise<boolean> => {
    checkFingerprint(fingerprint);
    return (
      (await isDirectory(join(imageDir(fingerprint), 'rootfs'))) && (await readRecord(fingerprint)) !== null
    );
  };

  const readRecord = async (fingerprint: string): Promise<AddedImage | null> => {
    try {
      return JSON.parse(await readFile(join(imageDir(fingerprint), 'image.json'), 'utf8')) as AddedImage;
    } catch {
      return null;
    }
  };

  const metadata = async (fingerprint: string): Promise<AddedImage> => {
    checkFingerprint(fingerprint);
    const record = (await isDirectory(join(imageDir(fingerprint), 'rootfs')))
      ? await readRecord(fingerprint)
      : null;
    if (!record)
      throw notFound(`Image ${fingerprint.slice(0, 12)} is not on this host: add or import it first.`);
    return record;
  };

  /**
   * Runs `build` on a fresh `rootfs` dir inside a fresh `images/.tmp-<random>`, fingerprints the result and
   * renames it into place; on any failure or cancel the temp dir goes away.
   */
  const add = async (
    what: string,
    options: AddOptions,
    build: (rootfs: string) => Promise<{ metadata: ImageMetadata; fingerprint?: string }>,
  ): Promise<AddedImage> => {
    const { signal } = options;
    signal?.throwIfAborted();
    // Search-only for others: runc in a user namespace must traverse to a shifted rootfs as the guest's root.
    await mkdir(imagesDir, { recursive: true, mode: 0o711 });
    await chmod(imagesDir, 0o711);
    const tmp = join(imagesDir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const rootfs = join(tmp, 'rootfs');
    await mkdir(tmp, { mode: 0o711 });
    await chmod(tmp, 0o711);
    try {
      await mkdir(rootfs, { mode: 0o755 });
      const built = await build(rootfs);
      signal?.throwIfAborted();
      options.onProgress?.(99, 'Fingerprinting the tree');
      const digest = await digestTree(rootfs, signal ? { signal } : {});
      const fingerprint = built.fingerprint ?? digest.fingerprint;
      const record: AddedImage = { fingerprint, metadata: built.metadata, sizeBytes: digest.sizeBytes };
      const existing = await readRecord(fingerprint);
      if (existing && (await isDirectory(join(imageDir(fingerprint), 'rootfs')))) {
        log.info({ fingerprint, what }, 'image already on disk: discarding the new tree');
        await removeTree(tmp, { runner });
        return existing;
      }
      await writeFile(join(tmp, 'image.json'), `${JSON.stringify(record, null, 2)}\n`);
      signal?.throwIfAborted();
      try {
        await rename(tmp, imageDir(fingerprint));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
        // Another add of the same tree won the race; theirs is as good as ours.
        await removeTree(tmp, { runner });
        return await metadata(fingerprint);
      }
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

  return {
    rootfsPath(fingerprint) {
      checkFingerprint(fingerprint);
      return join(imageDir(fingerprint), 'rootfs');
    },

    baseDisk(fingerprint) {
      checkFingerprint(fingerprint);
      const pending = diskBuilds.get(fingerprint);
      if (pending) return pending;
      const target = join(imageDir(fingerprint), BASE_DISK_NAME);
      const work = (async () => {
        const { metadata: meta } = await metadata(fingerprint);
        // Never rebuilt once made: guests' copy-on-write layers point at this very file. A
        // changed kit gets a disk of its own name (BASE_DISK_NAME); older ones stay for their guests.
        if (await isFile(target)) return target;
        log.info({ fingerprint }, 'making the base disk of the image for vm and pvm guests');
        const { sizeBytes } = await buildBaseDisk(join(imageDir(fingerprint), 'rootfs'), target, {
          runner,
          initArgv: imageInitArgv(meta.properties),
        });
        log.info({ fingerprint, sizeBytes }, 'base disk made');
        return target;
      })().finally(() => diskBuilds.delete(fingerprint));
      diskBuilds.set(fingerprint, work);
      return work;
    },
    shiftedRootfs(fingerprint, base) {
      checkFingerprint(fingerprint);
      if (!Number.isInteger(base) || base < 0) {
        return Promise.reject(
          invalidArgument(`Id shift base ${base} is not a valid uid: use a non-negative integer.`),
        );
      }
      const key = `${fingerprint}:${base}`;
      const pending = shifting.get(key);
      if (pending) return pending;
      const target = join(imageDir(fingerprint), `rootfs-shift-${base}`);
      const work = (async () => {
        await metadata(fingerprint);
        if (await isDirectory(target)) return target;
        log.info({ fingerprint, base }, 'making an id-shifted copy of the image');
        await shiftTree(join(imageDir(fingerprint), 'rootfs'), target, { base });
        return target;
      })().finally(() => shifting.delete(key));
      shifting.set(key, work);
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
}
