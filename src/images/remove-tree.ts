import { readFile, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { ProcessRunner } from '../host/runner.ts';

/** Decodes the octal escapes (`\040` for a space) mountinfo uses in paths. */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/** Mount points at or below `dir`, deepest first. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const root = resolve(dir);
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const points = text
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescapeMountPath)
    .filter((p) => p === root || p.startsWith(`${root}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/**
 * Removes a tree that a killed builder may have left mounts in (debootstrap
 * mounts /proc and /sys inside its target): unmounts them first, and never
 * crosses into another file system, so a stray mount is never emptied.
 */
export async function removeTree(dir: string, options: { runner: ProcessRunner }): Promise<void> {
  for (const point of await mountsUnder(dir)) {
    await options.runner.run(['umount', '--lazy', point], { allowFailure: true });
  }
  if ((await mountsUnder(dir)).length === 0) {
    await rm(dir, { recursive: true, force: true });
  } else {
    await options.runner.run(['rm', '-rf', '--one-file-system', '--', dir], { allowFailure: true });
  }
}
