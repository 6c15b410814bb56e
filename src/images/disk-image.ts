import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { invalidArgument } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { ProgressCallback } from './debootstrap-image.ts';
import { hostArchitecture, type ImageMetadata } from './image-metadata.ts';

/** The file a disk image is kept as in its image directory (always qcow2: sparse, and one format to check). */
export const DISK_IMAGE_NAME = 'disk.qcow2';

/**
 * The image property that holds the sha256 of the stored `disk.qcow2` (decision 0034): what a
 * copy another member fetches must hash to. The fingerprint is the sha256 of the bytes that
 * were imported, which the stored qcow2 (converted from them) cannot prove.
 */
export const DISK_DIGEST_PROPERTY = 'disk.qcow2_sha256';

/** The unit of hole detection when a disk arrives: a qcow2 cluster (storeDiskImage's). */
const SPARSE_BLOCK_BYTES = 64 * 1024;
const ZERO_BLOCK = Buffer.alloc(SPARSE_BLOCK_BYTES);

/**
 * Writes a stream into a new file `target` (0600, never an existing one), hashing every byte
 * and leaving a hole for every all-zero 64 KiB block instead of writing it: a disk that left
 * its member sparse arrives sparse, without holding more than a block and a chunk in memory.
 * Answers the sha256 and length of what arrived; the caller decides whether it is the one
 * expected, and removes the file when not (it is also left when this throws).
 */
export async function writeSparse(
  source: Readable,
  target: string,
  options: { signal?: AbortSignal } = {},
): Promise<{ sha256: string; sizeBytes: number }> {
  const hash = createHash('sha256');
  const fh = await open(target, 'wx', 0o600);
  try {
    let position = 0;
    let pending: Buffer = Buffer.alloc(0);
    const put = async (block: Buffer): Promise<void> => {
      const zero =
        block.length === SPARSE_BLOCK_BYTES ? block.equals(ZERO_BLOCK) : block.every((b) => b === 0);
      if (!zero) {
        let done = 0;
        while (done < block.length) {
          done += (await fh.write(block, done, block.length - done, position + done)).bytesWritten;
        }
      }
      position += block.length;
    };
    for await (const chunk of source) {
      options.signal?.throwIfAborted();
      const c = chunk as Buffer;
      hash.update(c);
      let data = pending.length > 0 ? Buffer.concat([pending, c]) : c;
      while (data.length >= SPARSE_BLOCK_BYTES) {
        await put(data.subarray(0, SPARSE_BLOCK_BYTES));
        data = data.subarray(SPARSE_BLOCK_BYTES);
      }
      // Copied: the chunk's memory is the stream's to reuse.
      pending = Buffer.from(data);
    }
    if (pending.length > 0) await put(pending);
    // The file's length, whether or not it ends in a hole.
    await fh.truncate(position);
    await fh.sync();
    return { sha256: hash.digest('hex'), sizeBytes: position };
  } finally {
    await fh.close();
  }
}

/** What an uploaded image file is, told by its content (never by its name). */
export type UploadKind = 'tarball' | 'qcow2' | 'raw-disk' | 'iso' | 'unknown';

/**
 * Tells an upload apart from its first bytes: a qcow2 (`QFI\xfb`), an ISO 9660 or UDF image
 * (a volume descriptor at sector 16; checked before the partition table, since hybrid ISOs
 * have one too), a tarball (compressed, or `ustar` at 257), or a raw whole disk (the boot
 * signature 0x55AA that every MBR and every GPT's protective MBR ends with).
 */
export async function sniffUpload(path: string): Promise<UploadKind> {
  const head = Buffer.alloc(16 * 2048 + 6);
  const fh = await open(path, 'r');
  let length: number;
  try {
    ({ bytesRead: length } = await fh.read(head, 0, head.length, 0));
  } finally {
    await fh.close();
  }
  const at = (offset: number, ...bytes: number[]): boolean =>
    length >= offset + bytes.length && bytes.every((b, i) => head[offset + i] === b);
  const text = (offset: number, s: string): boolean =>
    length >= offset + s.length && head.subarray(offset, offset + s.length).toString('latin1') === s;
  if (text(0, 'QFI\xfb')) return 'qcow2';
  if (text(16 * 2048 + 1, 'CD001') || text(16 * 2048 + 1, 'BEA01')) return 'iso';
  if (
    at(0, 0x1f, 0x8b) ||
    at(0, 0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00) ||
    at(0, 0x28, 0xb5, 0x2f, 0xfd) ||
    at(0, 0x42, 0x5a, 0x68) ||
    text(257, 'ustar')
  ) {
    return 'tarball';
  }
  if (at(510, 0x55, 0xaa)) return 'raw-disk';
  return 'unknown';
}

/** What `qemu-img info` says of a disk image that matters before it is taken. */
interface DiskInfo {
  format: string;
  virtualSizeBytes: number;
}

/**
 * Checks a whole-disk image before anything reads it as a disk: qcow2 without a backing file,
 * an external data file or encryption (a backing file or data file would name a file of this
 * host, which root would then read into the image), or raw. InvalidArgument otherwise.
 */
export async function inspectDiskImage(
  runner: ProcessRunner,
  path: string,
  format: 'qcow2' | 'raw',
): Promise<DiskInfo> {
  // -f: never probed, and no --backing-chain: nothing but the file itself is opened.
  const r = await runner.run(['qemu-img', 'info', '-f', format, '--output=json', path], {
    allowFailure: true,
  });
  if (r.code !== 0) {
    throw invalidArgument(
      `${basename(path)} is not a readable ${format} disk image: ${r.stderr.trim().split('\n').pop() ?? ''}`,
    );
  }
  const info = JSON.parse(r.stdout) as {
    'virtual-size': number;
    'backing-filename'?: string;
    encrypted?: boolean;
    'format-specific'?: { data?: { 'data-file'?: string; encrypt?: unknown } };
  };
  if (info['backing-filename'] !== undefined) {
    throw invalidArgument(
      'The qcow2 image has a backing file: flatten it first (qemu-img convert -O qcow2 IN OUT) and import that.',
    );
  }
  if (info['format-specific']?.data?.['data-file'] !== undefined) {
    throw invalidArgument(
      'The qcow2 image keeps its data in an external file: flatten it first (qemu-img convert -O qcow2 IN OUT).',
    );
  }
  if (info.encrypted || info['format-specific']?.data?.encrypt !== undefined) {
    throw invalidArgument('The qcow2 image is encrypted: import a decrypted copy.');
  }
  if (!(info['virtual-size'] > 0)) throw invalidArgument('The disk image is empty.');
  return { format, virtualSizeBytes: info['virtual-size'] };
}

/** sha256 of a file's bytes (what a disk image's fingerprint is), with progress. */
export async function sha256File(
  path: string,
  options: { onProgress?: ProgressCallback; signal?: AbortSignal } = {},
): Promise<string> {
  const total = (await stat(path)).size;
  const hash = createHash('sha256');
  let read = 0;
  let shown = -1;
  await pipeline(
    createReadStream(path, { highWaterMark: 1024 * 1024 }),
    new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        read += chunk.length;
        const percent = total > 0 ? Math.floor((read / total) * 40) : 40;
        if (percent !== shown) {
          shown = percent;
          options.onProgress?.(percent, 'Checking the disk image');
        }
        cb();
      },
    }),
    ...(options.signal ? [{ signal: options.signal }] : []),
  );
  return hash.digest('hex');
}

/**
 * Copies a checked disk image into `target` as a qcow2 (only allocated clusters: sparse,
 * whatever the source was; compressed clusters, internal snapshots and bitmaps left out).
 */
export async function storeDiskImage(
  runner: ProcessRunner,
  source: { path: string; format: 'qcow2' | 'raw' },
  target: string,
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  await runner.run(
    [
      'qemu-img',
      'convert',
      '-q',
      '-f',
      source.format,
      '-O',
      'qcow2',
      '-o',
      'cluster_size=65536',
      source.path,
      target,
    ],
    options.signal ? { signal: options.signal } : {},
  );
}

/** The metadata of an imported disk image: what can be told without booting it. */
export function diskImageMetadata(description: string, info: DiskInfo): ImageMetadata {
  return {
    description,
    os: 'unknown',
    release: '',
    architecture: hostArchitecture(),
    source: 'import',
    type: 'disk',
    properties: {
      'disk.format': info.format,
      'disk.virtual_size': String(info.virtualSizeBytes),
    },
  };
}
