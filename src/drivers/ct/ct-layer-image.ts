import { existsSync } from 'node:fs';
import { mkdir, open, rm, rmdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { failedPrecondition, invalidArgument } from '../../core/errors.ts';
import { parseBytes } from '../../core/sizes.ts';
import type { GuestSpec } from '../../core/types.ts';
import { isMountPoint } from '../../host/mounts.ts';
import { refusesOverlayUpper } from '../../host/overlay-upper.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import { guestDirOf, isPoolLinked } from './guest-dir.ts';

/*
 * A ct guest's own layer in an image file (docs/decisions/0094). overlayfs refuses an upper dir on
 * NFS, FUSE, CIFS and the like ("upper fs does not support tmpfile / RENAME_WHITEOUT ... missing
 * required features"): a guest whose directory is on such a pool (a shared pool is NFS in
 * production) keeps its upper and work dirs in a sparse ext4 image in its directory, `layer.img`,
 * loop-mounted by the member that runs it, from start to stop only, at a mount point in that
 * member's own state dir: nothing of the mount is on the pool, and unmounting it (the HA agent's
 * fence among others) walks no path on the network file system.
 */

/** The layer image in the guest's directory. */
export const LAYER_IMAGE = 'layer.img';
/** The state dir's directory of layer mount points: `ct-layers/NAME`, upper/ and work/ inside. */
export const LAYERS_DIR = 'ct-layers';
/** Temporary mount points of snapshot images, in LAYERS_DIR. */
export const MOUNT_PREFIX = '.mnt-';

/** A ct guest's directory, its layer image (if it has one) and this member's mount point of it. */
export interface CtLayer {
  dir: string;
  image: string;
  mount: string;
}

/** Where guest `name`'s layer is on this member (guestDirOf resolves a pool's link). */
export function ctLayerOf(stateDir: string, name: string): CtLayer {
  const dir = guestDirOf(stateDir, name);
  return { dir, image: join(dir, LAYER_IMAGE), mount: join(stateDir, LAYERS_DIR, name) };
}
/** The image's size when the guest has no limits.disk (sparse: it takes what the guest writes). */
export const DEFAULT_LAYER_IMAGE_BYTES = 8 * 1024 ** 3;
/** The smallest image mkfs.ext4 makes with room for a guest's files. */
const MIN_LAYER_IMAGE_BYTES = 64 * 1024 ** 2;

/** Whether the guest directory `dir` keeps its layer in an image (made so at create). */
export function hasLayerImage(dir: string): boolean {
  return existsSync(join(dir, LAYER_IMAGE));
}

/** The directory that holds the guest's upper/ and work/: its own, or its image's mount point. */
export function layerRootOf(layer: CtLayer): string {
  return hasLayerImage(layer.dir) ? layer.mount : layer.dir;
}

/** The size of a guest's layer image: limits.disk, or the default. */
export function layerImageBytes(spec: GuestSpec): number {
  const disk = spec.config['limits.disk'];
  const bytes = disk ? parseBytes(disk, 'limits.disk') : DEFAULT_LAYER_IMAGE_BYTES;
  if (bytes < MIN_LAYER_IMAGE_BYTES) {
    throw invalidArgument(
      `limits.disk ${bytes} is too small for the layer image of guest ${spec.name} on a network file system: give at least 64MiB.`,
    );
  }
  return bytes;
}

/** Makes a sparse ext4 image of `sizeBytes` at `image` (replacing a half-made one). */
export async function makeLayerImage(
  runner: Pick<ProcessRunner, 'run'>,
  image: string,
  options: { sizeBytes: number },
): Promise<void> {
  const file = await open(image, 'w', 0o600);
  try {
    await file.truncate(options.sizeBytes);
  } finally {
    await file.close();
  }
  try {
    // Lazy inode tables and journal: nothing but the metadata is written over the network.
    await runner.run([
      'mkfs.ext4',
      '-q',
      '-F',
      '-m',
      '0',
      '-E',
      'lazy_itable_init=1,lazy_journal_init=1,nodiscard',
      '-L',
      'trivisor-layer',
      image,
    ]);
  } catch (e) {
    await rm(image, { force: true });
    throw e;
  }
}

/**
 * Loop-mounts `image` at `target` unless something is mounted there already (the guest runs, or
 * a storage operation holds it). The loop device uses direct I/O where the file system allows it,
 * so no member's page cache stands between the image and the pool, and is detached at once:
 * busy, the kernel marks it autoclear instead, and it goes with the unmount.
 */
export async function mountLayerImage(
  runner: Pick<ProcessRunner, 'run'>,
  image: string,
  target: string,
  options?: { readOnly?: boolean },
): Promise<void> {
  await mkdir(target, { recursive: true, mode: 0o700 });
  if (await isMountPoint(target)) return;
  // Never a second file system over the same image on this member (a lazily unmounted one that a
  // guest's processes still hold, say): two ext4 instances writing one image would corrupt it.
  const attached = await loopsOf(runner, image);
  if (attached.length > 0) {
    await rmdir(target).catch(() => {});
    throw failedPrecondition(
      `The layer image ${image} is in use on this member already (${attached.join(', ')}): stop what still uses it, then try again.`,
    );
  }
  const ro = options?.readOnly ? ['--read-only'] : [];
  let attach = await runner.run(['losetup', '--find', '--show', '--direct-io=on', ...ro, '--', image], {
    allowFailure: true,
  });
  if (attach.code !== 0) attach = await runner.run(['losetup', '--find', '--show', ...ro, '--', image]);
  const device = attach.stdout.trim();
  try {
    const r = await runner.run(
      ['mount', '-t', 'ext4', '-o', options?.readOnly ? 'ro,noload' : 'rw', device, target],
      { allowFailure: true },
    );
    if (r.code !== 0) {
      await rmdir(target).catch(() => {});
      throw failedPrecondition(
        `Cannot mount the layer image ${image} (${r.stderr.trim().split('\n')[0] ?? `exit ${r.code}`}): check it with e2fsck -f ${image}.`,
      );
    }
  } finally {
    await runner.run(['losetup', '--detach', device], { allowFailure: true });
  }
}

/**
 * The loop devices backed by `image` (`losetup -j`), waited for a moment: a device set to
 * autoclear is detached by the kernel as its last user closes it, which may lag the unmount.
 */
async function loopsOf(runner: Pick<ProcessRunner, 'run'>, image: string): Promise<string[]> {
  for (let i = 0; ; i++) {
    const r = await runner.run(['losetup', '--associated', image, '--noheadings', '--output', 'NAME'], {
      allowFailure: true,
    });
    const devices = r.code === 0 ? r.stdout.split('\n').filter((l) => l.trim() !== '') : [];
    if (devices.length === 0 || i >= 20) return devices.map((l) => l.trim());
    await sleep(100);
  }
}

/**
 * Unmounts a layer image mounted at `target` (its loop device goes with it) and removes the mount
 * point. Not lazily: a file system detached while something still holds it would keep writing to
 * the image, which another member may mount next.
 */
export async function unmountLayerImage(runner: ProcessRunner, target: string): Promise<void> {
  if (await isMountPoint(target)) {
    const r = await runner.run(['umount', target], { allowFailure: true });
    if (r.code !== 0 && (await isMountPoint(target))) {
      throw failedPrecondition(
        `Cannot unmount the layer at ${target} (${r.stderr.trim().split('\n')[0] ?? `exit ${r.code}`}): stop what still uses it (fuser -m ${target}), then try again.`,
      );
    }
  }
  await rmdir(target).catch(() => {});
}

/**
 * Mounts the guest's layer image (a no-op for a guest without one). When `spec`'s size
 * (layerImageBytes) is larger than the image (limits.disk raised since), the image and its file
 * system are grown first; a smaller one is not applied (ext4 does not shrink mounted) and is
 * returned as `kept`, the image's size.
 */
export async function mountCtLayer(
  runner: ProcessRunner,
  layer: CtLayer,
  options?: { spec?: GuestSpec },
): Promise<{ kept?: number }> {
  if (!hasLayerImage(layer.dir)) return {};
  const { image, mount: target } = layer;
  await mkdir(dirname(target), { recursive: true, mode: 0o700 });
  const size = (await stat(image)).size;
  const want = options?.spec ? layerImageBytes(options.spec) : size;
  const grow = want > size && !(await isMountPoint(target));
  if (grow) {
    const file = await open(image, 'r+');
    try {
      await file.truncate(want);
    } finally {
      await file.close();
    }
  }
  await mountLayerImage(runner, image, target);
  if (grow) {
    const source = await runner.run([
      'findmnt',
      '--noheadings',
      '--output',
      'SOURCE',
      '--mountpoint',
      target,
    ]);
    await runner.run(['resize2fs', source.stdout.trim()]);
  }
  return want < size ? { kept: size } : {};
}

/**
 * Gives a new guest whose directory is on a pool overlayfs refuses as upper (NFS, FUSE…) its
 * layer image and mounts it; mounts the image of a guest that has one. Nothing for the others,
 * and nothing new for a guest made already (its bundle or its plain upper/ exists).
 */
export async function prepareCtLayer(
  runner: ProcessRunner,
  stateDir: string,
  spec: GuestSpec,
): Promise<void> {
  if (!isPoolLinked(join(stateDir, 'guests', spec.name))) return;
  const layer = ctLayerOf(stateDir, spec.name);
  // A guest made already (it may run) is left as it is: create returns at once for it.
  if (existsSync(join(layer.dir, 'bundle'))) return;
  const made = ['upper', LAYER_IMAGE].some((name) => existsSync(join(layer.dir, name)));
  if (!made && refusesOverlayUpper(layer.dir)) {
    await makeLayerImage(runner, layer.image, { sizeBytes: layerImageBytes(spec) });
  }
  await mountCtLayer(runner, layer);
}

/** Whether guest `name` has or will get a layer image (its pool refuses an upper dir): limits.disk sizes it. */
export function takesLayerImage(stateDir: string, name: string): boolean {
  if (!isPoolLinked(join(stateDir, 'guests', name))) return false;
  const dir = guestDirOf(stateDir, name);
  return hasLayerImage(dir) || refusesOverlayUpper(dir);
}

/**
 * Unmounts the guest's layer image if it is mounted on this member. Only this member's mount
 * table is read and only its state dir walked, never the pool: the HA agent's fence calls it too,
 * for a guest it has just killed (decision 0094).
 */
export async function unmountCtLayer(runner: ProcessRunner, stateDir: string, name: string): Promise<void> {
  const mount = join(stateDir, LAYERS_DIR, name);
  // A mount point exists only while mounted (or a moment after): most guests cost one stat.
  if (!existsSync(mount)) return;
  await unmountLayerImage(runner, mount);
}

/**
 * Runs `work` with the guest's layer mounted: mounted for it (and unmounted after) when it was
 * not (the guest is stopped), used as it is when it was (the guest runs).
 */
export async function withCtLayer<T>(
  runner: ProcessRunner,
  layer: CtLayer,
  work: () => Promise<T>,
): Promise<T> {
  if (!hasLayerImage(layer.dir)) return work();
  if (await isMountPoint(layer.mount)) return work();
  await mountCtLayer(runner, layer);
  try {
    return await work();
  } finally {
    await unmountLayerImage(runner, layer.mount);
  }
}

/**
 * Runs `work` on the tree of a layer image other than the guest's own (a snapshot's), mounted
 * read-only at a temporary mount point under `scratch`; `work` gets the image's root.
 */
export async function withImageReadOnly<T>(
  runner: ProcessRunner,
  image: string,
  options: { scratch: string; work: (root: string) => Promise<T> },
): Promise<T> {
  const target = join(options.scratch, `${MOUNT_PREFIX}${process.pid}-${Date.now().toString(36)}`);
  await mkdir(options.scratch, { recursive: true, mode: 0o700 });
  await mountLayerImage(runner, image, target, { readOnly: true });
  try {
    return await options.work(target);
  } finally {
    await unmountLayerImage(runner, target);
  }
}

/**
 * Makes a new layer image at `image` and runs `fill` on its root, mounted at a temporary mount
 * point under `scratch` (an imported snapshot). The image is removed when `fill` fails.
 */
export async function fillNewImage(
  runner: ProcessRunner,
  image: string,
  options: { sizeBytes: number; scratch: string; fill: (root: string) => Promise<void> },
): Promise<void> {
  await makeLayerImage(runner, image, { sizeBytes: options.sizeBytes });
  await mkdir(options.scratch, { recursive: true, mode: 0o700 });
  const target = join(options.scratch, `${MOUNT_PREFIX}${process.pid}-${Date.now().toString(36)}`);
  try {
    await mountLayerImage(runner, image, target);
    try {
      await options.fill(target);
    } finally {
      await unmountLayerImage(runner, target);
    }
  } catch (e) {
    await rm(image, { force: true });
    throw e;
  }
}
