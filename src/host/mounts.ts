import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { invalidArgument } from '../core/errors.ts';
import type { ProcessRunner } from './runner.ts';

/** Decodes the octal escapes (`\040` for a space) mountinfo uses in paths. */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/** Mount points of this process's mount namespace, in mountinfo order. */
export async function listMountPoints(mountinfoPath = '/proc/self/mountinfo'): Promise<string[]> {
  const text = await readFile(mountinfoPath, 'utf8');
  return text
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescapeMountPath);
}

/** Whether `path` is a mount point now. */
export async function isMountPoint(path: string): Promise<boolean> {
  const target = resolve(path);
  return (await listMountPoints()).includes(target);
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
