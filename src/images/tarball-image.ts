import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, open, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { internal, invalidArgument } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { ProgressCallback } from './debootstrap-image.ts';
import { type ImageMetadata, initProperties, SH_INIT_ARGV } from './image-metadata.ts';
import { runStreamed } from './streamed-command.ts';
import { readOsRelease, resolveInTree, treeArchitecture } from './tree-inspection.ts';

/** Compression of a tarball, as told by its first bytes. */
export type TarCompression = 'none' | 'gzip' | 'xz' | 'zstd' | 'bzip2';

const TAR_FLAGS: Record<TarCompression, string[]> = {
  none: [],
  gzip: ['--gzip'],
  xz: ['--xz'],
  zstd: ['--zstd'],
  bzip2: ['--bzip2'],
};

/** Detects a tarball's compression from its magic bytes, whatever its name says. */
export async function detectTarCompression(path: string): Promise<TarCompression> {
  const header = Buffer.alloc(512);
  const fh = await open(path, 'r');
  let length: number;
  try {
    ({ bytesRead: length } = await fh.read(header, 0, 512, 0));
  } finally {
    await fh.close();
  }
  const starts = (...bytes: number[]): boolean => bytes.every((b, i) => header[i] === b);
  if (starts(0x1f, 0x8b)) return 'gzip';
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return 'xz';
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return 'zstd';
  if (starts(0x42, 0x5a, 0x68)) return 'bzip2';
  if (length >= 262 && header.subarray(257, 262).toString('latin1') === 'ustar') return 'none';
  throw invalidArgument(
    `${basename(path)} is not a tar archive (plain, gzip, xz, zstd or bzip2): export the root file system with tar and retry.`,
  );
}

/**
 * Unpacks a root file system tarball into `targetDir` (must exist, empty) and
 * returns the sha256 of the tarball's bytes, hashed while it streams into tar.
 * GNU tar's own protections (no absolute names, no `..`, delayed symlinks)
 * stay on: no option here turns them off.
 */
export async function extractTarball(
  tarball: string,
  targetDir: string,
  options: { runner: ProcessRunner; onProgress?: ProgressCallback; signal?: AbortSignal },
): Promise<{ fingerprint: string }> {
  const compression = await detectTarCompression(tarball);
  const totalBytes = (await stat(tarball)).size;
  const hash = createHash('sha256');
  let readBytes = 0;
  let lastPercent = -1;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      readBytes += chunk.length;
      const percent = Math.floor((readBytes / Math.max(totalBytes, 1)) * 90);
      if (percent !== lastPercent) {
        lastPercent = percent;
        options.onProgress?.(percent, `Unpacking ${basename(tarball)}`);
      }
      done(null, chunk);
    },
  });
  const argv = [
    'tar',
    '--extract',
    '--file=-',
    `--directory=${targetDir}`,
    ...TAR_FLAGS[compression],
    '--numeric-owner',
    '--same-owner',
    '--same-permissions',
    '--xattrs',
    '--xattrs-include=user.*',
    '--xattrs-include=security.capability',
    '--warning=no-unknown-keyword',
  ];
  const file = createReadStream(tarball);
  try {
    await runStreamed(options.runner, argv, {
      input: file.pipe(counter),
      ...(options.signal ? { signal: options.signal } : {}),
      env: { LC_ALL: 'C' },
      onFailure: ({ tail }) => {
        if (/No space left|Disk quota/i.test(tail)) {
          return internal(`Unpacking ${basename(tarball)} ran out of disk space: free some and retry.`);
        }
        const reason = tail.split('\n').find((l) => l.trim() !== '') ?? 'tar failed';
        return invalidArgument(
          `${basename(tarball)} is corrupt or truncated (${reason.replace(/\s+/g, ' ').trim()}): export it again and retry.`,
        );
      },
    });
  } finally {
    file.destroy();
  }
  // tar may stop reading at the end-of-archive blocks, before trailing padding: hash what it left too.
  if (readBytes === totalBytes) return { fingerprint: hash.digest('hex') };
  const whole = createHash('sha256');
  await pipeline(createReadStream(tarball), whole);
  return { fingerprint: whole.digest('hex') };
}

/** Refuses trees that cannot be a guest's root: no /etc, or neither /bin nor /usr/bin. */
export async function assertRootFileSystem(root: string, name: string): Promise<void> {
  const isDir = async (path: string): Promise<boolean> => {
    try {
      return (await lstat(path)).isDirectory();
    } catch {
      return false;
    }
  };
  const etc = await isDir(`${root}/etc`);
  const bin = (await resolveInTree(root, '/bin')) !== null || (await isDir(`${root}/usr/bin`));
  if (!etc || !bin) {
    throw invalidArgument(
      `${name} does not hold a root file system (no ${etc ? '/bin or /usr/bin' : '/etc'} at its top): archive the tree from inside its root directory and retry.`,
    );
  }
}

/** Metadata of an imported tree, read from the tree itself. */
export async function importedMetadata(root: string, tarball: string): Promise<ImageMetadata> {
  const osRelease = await readOsRelease(root);
  const init = await resolveInTree(root, '/sbin/init');
  let properties = initProperties(SH_INIT_ARGV, 'SIGTERM');
  if (init) {
    const name = basename(init);
    // Each init has its own "power off" signal: busybox SIGUSR2, systemd SIGRTMIN+3.
    const stopSignal = name === 'busybox' ? 'SIGUSR2' : name === 'systemd' ? 'SIGRTMIN+3' : 'SIGTERM';
    properties = initProperties(['/sbin/init'], stopSignal);
  }
  const os = osRelease.ID ?? 'unknown';
  return {
    description: osRelease.PRETTY_NAME ?? `Imported from ${basename(tarball)}`,
    os,
    release: osRelease.VERSION_CODENAME || osRelease.VERSION_ID || '',
    architecture: await treeArchitecture(root),
    source: 'import',
    properties,
  };
}
