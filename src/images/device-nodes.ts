import type { ProcessRunner } from '../host/runner.ts';

/**
 * Deletes every character and block device node in the tree `root` and returns
 * their paths. Image trees keep none (docs/decisions/0018): a node in an imported
 * tarball (`dev/sda`, mode 0666) would be a door to a host device for whoever
 * reaches the tree, and no model needs one from the image. ct guests get their
 * /dev from runc, vm and pvm guest kernels have devtmpfs, and the base disk gets
 * the console and null nodes the guest kit needs. Dropped rather than turned into
 * regular files: a program that writes to a "null" that is a plain file fills
 * the disk quietly, while a missing node fails loudly.
 * `find -xdev` never follows symlinks nor leaves the tree's file system.
 */
export async function removeDeviceNodes(root: string, options: { runner: ProcessRunner }): Promise<string[]> {
  const { stdout } = await options.runner.run([
    'find',
    root,
    '-xdev',
    '(',
    '-type',
    'b',
    '-o',
    '-type',
    'c',
    ')',
    '-print0',
    '-delete',
  ]);
  return stdout.split('\0').filter((p) => p !== '');
}
