import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { invalidArgument } from '../core/errors.ts';
import { readKernelFile } from './kernel-file.ts';
import type { ProcessRunner } from './runner.ts';

/** Decodes the octal escapes (`\040` for a space) mountinfo uses in paths. */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/** Mount points of this process's mount namespace, in mountinfo order. */
export async function listMountPoints(mountinfoPath = '/proc/self/mountinfo'): Promise<string[]> {
  return mountPointsOf(await readFile(mountinfoPath, 'utf8'));
}

function mountPointsOf(mountinfo: string): string[] {
  return mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescapeMountPath);
}

/** Whether `path` is a mount point now (`mountinfoPath`: tests). */
export async function isMountPoint(path: string, mountinfoPath = '/proc/self/mountinfo'): Promise<boolean> {
  const target = resolve(path);
  const text = await readKernelFile(mountinfoPath);
  // Most answers are no (a ct guest's root and staging dir are not mounted on the host since
  // decision 0064, and each start, stop and delete asks for both), and a busy host's mountinfo has a
  // thousand lines and more: a path the kernel writes as it is (no space, tab, newline or backslash
  // to escape) and that is nowhere in the text is no mount point, without splitting every line
  // (decision 0078).
  if (!/[ \t\n\\]/.test(target) && !text.includes(target)) return false;
  return mountPointsOf(text).includes(target);
}

/** Mount points at or below `dir`, deepest first. */
export async function mountPointsUnder(dir: string): Promise<string[]> {
  const root = resolve(dir);
  const points = (await listMountPoints()).filter((p) => p === root || p.startsWith(`${root}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/** Layers of an overlay mount. */
export interface OverlayLayers {
  /** Read-only lower tree (one directory). */
  lowerDir: string;
  upperDir: string;
  workDir: string;
}

/** Mounts an overlay at `target`; paths must not contain the option separators `,` or `:`. */
export async function mountOverlay(
  target: string,
  layers: OverlayLayers,
  options: { runner: ProcessRunner },
): Promise<void> {
  for (const p of [target, layers.lowerDir, layers.upperDir, layers.workDir]) {
    if (/[,:\s]/.test(p)) {
      throw invalidArgument(
        `The path ${JSON.stringify(p)} cannot be an overlay layer: use one without , : or spaces.`,
      );
    }
  }
  const data = `lowerdir=${layers.lowerDir},upperdir=${layers.upperDir},workdir=${layers.workDir}`;
  await options.runner.run(['mount', '-t', 'overlay', 'overlay', '-o', data, target]);
}

/** Unmounts `target` if it is mounted (lazily when busy, so a stuck reader cannot pin it). */
export async function unmountIfMounted(target: string, options: { runner: ProcessRunner }): Promise<void> {
  if (!(await isMountPoint(target))) return;
  const result = await options.runner.run(['umount', target], { allowFailure: true });
  if (result.code !== 0 && (await isMountPoint(target))) {
    await options.runner.run(['umount', '--lazy', target]);
  }
}

/** One mountinfo line's mount point and its propagation (`shared:N` among the optional fields). */
export interface MountEntry {
  mountPoint: string;
  shared: boolean;
}

/** Parses /proc/self/mountinfo text. */
export function parseMountinfo(text: string): MountEntry[] {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .flatMap((line) => {
      const fields = line.split(' ');
      const point = fields[4];
      if (point === undefined) return [];
      const dash = fields.indexOf('-');
      const optional = fields.slice(6, dash < 0 ? undefined : dash);
      return [
        { mountPoint: unescapeMountPath(point), shared: optional.some((f) => f.startsWith('shared:')) },
      ];
    });
}

/** What ensureSharedMount found or did. */
export type SharedMountResult = 'already-shared' | 'made-shared' | 'busy';

/**
 * Makes `dir` part of a shared mount, so that mounts and unmounts below it propagate into the
 * mount namespaces of processes started with `--propagation slave` (a pvm guest's UML, which
 * needs one of its own): a pool unmounted or a guest's overlay taken down on the host then
 * goes in those namespaces too, instead of staying pinned there while the guest runs.
 * When the mount holding `dir` is shared already (`/` on a systemd host), nothing changes.
 * Otherwise `dir` is bind-mounted onto itself and made shared: only Trivisor's own directory
 * changes, never the host's other mounts. That is done only while nothing is mounted below
 * `dir`, because a bind would hide (and pin) what is: then the result is `busy`.
 */
export async function ensureSharedMount(
  dir: string,
  options: { runner: ProcessRunner; mountinfoPath?: string },
): Promise<SharedMountResult> {
  const target = resolve(dir);
  const entries = parseMountinfo(await readFile(options.mountinfoPath ?? '/proc/self/mountinfo', 'utf8'));
  // The last entry for the longest mount point at or above `dir` is the one that is visible.
  let holder: MountEntry | undefined;
  for (const e of entries) {
    const covers = e.mountPoint === '/' || target === e.mountPoint || target.startsWith(`${e.mountPoint}/`);
    if (covers && (!holder || e.mountPoint.length >= holder.mountPoint.length)) holder = e;
  }
  if (holder?.shared) return 'already-shared';
  if (holder?.mountPoint === target) {
    await options.runner.run(['mount', '--make-shared', target]);
    return 'made-shared';
  }
  if (entries.some((e) => e.mountPoint.startsWith(`${target}/`))) return 'busy';
  await options.runner.run(['mount', '--bind', target, target]);
  await options.runner.run(['mount', '--make-shared', target]);
  return 'made-shared';
}
