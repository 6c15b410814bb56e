import { lstat, open, readFile, readlink } from 'node:fs/promises';
import { posix } from 'node:path';
import { hostArchitecture } from './image-metadata.ts';

/**
 * Resolves `path` (absolute, as seen from inside the guest) against the tree at
 * `root`, following symlinks as the guest would see them, never leaving the
 * tree. Returns the host path of the final entry, or null if it does not exist.
 */
export async function resolveInTree(root: string, path: string): Promise<string | null> {
  let parts = path.split('/').filter((p) => p !== '' && p !== '.');
  const done: string[] = [];
  let hops = 0;
  while (parts.length > 0) {
    const part = parts.shift() as string;
    if (part === '..') {
      done.pop();
      continue;
    }
    const hostPath = posix.join(root, ...done, part);
    let isLink: boolean;
    try {
      isLink = (await lstat(hostPath)).isSymbolicLink();
    } catch {
      return null;
    }
    if (!isLink) {
      done.push(part);
      continue;
    }
    if (++hops > 40) return null;
    const target = await readlink(hostPath);
    if (target.startsWith('/')) done.length = 0;
    parts = [...target.split('/').filter((p) => p !== '' && p !== '.'), ...parts];
  }
  return posix.join(root, ...done);
}

/** Parses /etc/os-release (or /usr/lib/os-release) of a tree; empty when it has none. */
export async function readOsRelease(root: string): Promise<Record<string, string>> {
  for (const candidate of ['/etc/os-release', '/usr/lib/os-release']) {
    const path = await resolveInTree(root, candidate);
    if (!path) continue;
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch {
      continue;
    }
    const fields: Record<string, string> = {};
    for (const line of text.split('\n')) {
      const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
      if (!m?.[1] || m[2] === undefined) continue;
      fields[m[1]] = m[2].replace(/^(["'])(.*)\1$/, '$2');
    }
    return fields;
  }
  return {};
}

const ELF_MACHINES: Record<number, string> = {
  3: 'i686',
  40: 'armv7l',
  62: 'x86_64',
  183: 'aarch64',
  243: 'riscv64',
  21: 'ppc64le',
  22: 's390x',
};

/** Architecture of a tree, read from the ELF header of its /bin/sh; the host's if that cannot be read. */
export async function treeArchitecture(root: string): Promise<string> {
  const sh = await resolveInTree(root, '/bin/sh');
  if (!sh) return hostArchitecture();
  try {
    const fh = await open(sh, 'r');
    try {
      const header = Buffer.alloc(20);
      await fh.read(header, 0, 20, 0);
      if (header.readUInt32BE(0) !== 0x7f454c46) return hostArchitecture();
      const machine = header[5] === 2 ? header.readUInt16BE(18) : header.readUInt16LE(18);
      return ELF_MACHINES[machine] ?? hostArchitecture();
    } finally {
      await fh.close();
    }
  } catch {
    return hostArchitecture();
  }
}
