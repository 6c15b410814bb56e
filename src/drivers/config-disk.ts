import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, open, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CONFIG_DISK_MAGIC, formatMode, type InjectedFile } from '../core/guest-files.ts';
import type { ProcessRunner } from '../host/runner.ts';

/** Serial number of a vm guest's config drive (`/sys/block/vdX/serial`), for people looking. */
export const CONFIG_DISK_SERIAL = 'trivisor-config';

const MiB = 1024 * 1024;

/**
 * Makes (or, without files, removes) the config disk of a vm or pvm guest at
 * `target`: a small ext4 file system without a journal holding `manifest`
 * (the magic line, then `MODE UID GID NAME PATH` per file) and the files as
 * `f0`, `f1`…, which the guest kit's init mounts read-only and copies into
 * place before it runs the image's init (guest-kit-init-script.ts). Made
 * beside `target` under `.tmp-` names and renamed, so a guest never boots a
 * half-made disk; `group` makes it readable by that group (pvm kernels run as
 * the guest's own uid and gid). Returns whether there is a disk.
 */
export async function writeConfigDisk(
  files: readonly InjectedFile[],
  target: string,
  options: { runner: ProcessRunner; group?: number },
): Promise<boolean> {
  if (files.length === 0) {
    await rm(target, { force: true });
    return false;
  }
  const suffix = randomBytes(6).toString('hex');
  const staging = join(dirname(target), `.${basename(target)}-tree.tmp-${suffix}`);
  const image = join(dirname(target), `.${basename(target)}.tmp-${suffix}`);
  try {
    await mkdir(staging, { mode: 0o700 });
    const lines = [CONFIG_DISK_MAGIC];
    let total = 0;
    for (const [i, f] of files.entries()) {
      await writeFile(join(staging, `f${i}`), f.content, { mode: 0o600 });
      lines.push(`${formatMode(f.mode)} ${f.uid} ${f.gid} f${i} ${f.path}`);
      total += f.content.length;
    }
    await writeFile(join(staging, 'manifest'), `${lines.join('\n')}\n`, { mode: 0o600 });
    // 1 KiB blocks: the files and their inodes, twice over, plus room for ext4's own tables.
    const sizeBytes = Math.ceil((2 * MiB + 2 * total + files.length * 2048) / MiB) * MiB;
    const handle = await open(image, 'wx', 0o600);
    await handle.close();
    await truncate(image, sizeBytes);
    await options.runner.run([
      'mkfs.ext4',
      '-q',
      '-F',
      '-O',
      '^has_journal',
      '-b',
      '1024',
      '-L',
      CONFIG_DISK_SERIAL,
      '-d',
      staging,
      image,
    ]);
    if (options.group !== undefined) {
      await chown(image, 0, options.group);
      await chmod(image, 0o440);
    }
    await rename(image, target);
  } finally {
    await rm(staging, { recursive: true, force: true });
    await rm(image, { force: true });
  }
  return true;
}
