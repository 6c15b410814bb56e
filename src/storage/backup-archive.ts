import { constants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { offloadedSha256, sharedBuffer } from '../host/sha256-offload.ts';

/**
 * The outer tar of a backup archive (manifest.json, rootfs.tar.zst, snapshots/*),
 * written and read by the daemon itself rather than by `tar`: each payload goes
 * from its producer into the archive, and from the archive into its consumer,
 * once, hashed on the way (docs/decisions/0035-streamed-backups.md). Plain
 * ustar, which GNU tar lists and extracts; sizes of 8 GiB and more use GNU's
 * base-256 field, as GNU tar does.
 */

const BLOCK = 512;
const CHUNK = 1 << 20;
const WRITE_BATCH = 4 << 20;

/** Where a member's data lies in an archive file. */
export interface ArchiveMember {
  name: string;
  type: 'file' | 'directory';
  offset: number;
  size: number;
}

/** A payload's checksum and size, as the manifest records them. */
export interface Digest {
  sha256: string;
  sizeBytes: number;
}

/** Thrown for an archive whose tar structure is damaged or cut short. */
export class ArchiveDamaged extends Error {}

function writeOctal(b: Buffer, offset: number, width: number, value: number): void {
  b.write(`${value.toString(8).padStart(width - 1, '0')}\0`, offset, width, 'ascii');
}

/** A ustar header; the size field in base-256 when octal cannot hold it. */
export function tarHeader(name: string, type: ArchiveMember['type'], size: number, mtime: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  if (Buffer.byteLength(name) > 100) throw new Error(`archive member name too long: ${name}`);
  b.write(name, 0, 100, 'utf8');
  writeOctal(b, 100, 8, type === 'directory' ? 0o755 : 0o600);
  writeOctal(b, 108, 8, 0);
  writeOctal(b, 116, 8, 0);
  if (size < 8 ** 11) writeOctal(b, 124, 12, size);
  else {
    b[124] = 0x80;
    b.writeBigUInt64BE(BigInt(size), 128);
  }
  writeOctal(b, 136, 12, Math.floor(mtime / 1000));
  b.fill(0x20, 148, 156);
  b.write(type === 'directory' ? '5' : '0', 156, 1, 'ascii');
  b.write('ustar\0', 257, 6, 'ascii');
  b.write('00', 263, 2, 'ascii');
  b.write('root', 265, 32, 'ascii');
  b.write('root', 297, 32, 'ascii');
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return b;
}

const padding = (size: number) => (BLOCK - (size % BLOCK)) % BLOCK;

/** Writes an archive member by member; `finish` ends it, `abandon` closes it unfinished (the caller removes it). */
export class ArchiveWriter {
  private position = 0;
  private readonly file: FileHandle;
  private constructor(file: FileHandle) {
    this.file = file;
  }

  static async create(path: string): Promise<ArchiveWriter> {
    return new ArchiveWriter(await open(path, 'wx', 0o600));
  }

  private async write(data: Buffer): Promise<void> {
    await this.writeAt(data, this.position);
    this.position += data.length;
  }

  private async writeAt(data: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.file.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }

  async addDirectory(name: string): Promise<void> {
    await this.write(tarHeader(name.endsWith('/') ? name : `${name}/`, 'directory', 0, Date.now()));
  }

  async addBuffer(name: string, data: Buffer): Promise<void> {
    await this.write(tarHeader(name, 'file', data.length, Date.now()));
    await this.write(Buffer.concat([data, Buffer.alloc(padding(data.length))]));
  }

  /**
   * Copies `source` into a member, hashing it on the way. The header is written
   * first with size 0 and rewritten in place once the size is known.
   */
  async addStream(
    name: string,
    source: AsyncIterable<Buffer>,
    onBytes?: (bytes: number) => void,
  ): Promise<Digest> {
    const headerAt = this.position;
    await this.write(Buffer.alloc(BLOCK));
    // The sha256 runs in a worker thread (src/host/sha256-offload.ts), over each batch as it is
    // written: the batches are in shared memory, which the worker reads in place.
    const hash = offloadedSha256();
    let size = 0;
    // Chunks (64 KiB from a pipe) are gathered into writes of WRITE_BATCH bytes, one write in flight
    // while the next batch gathers: a write per chunk, each a trip through libuv's thread pool,
    // cost seconds per GiB on a loaded host. Chunks are copied into two batch buffers used in turn
    // (a chunk may be reused by its source once the next is asked for), and nothing is allocated
    // per chunk: the garbage collector was the daemon's largest cost of an export (decision 0072).
    let fill = sharedBuffer(WRITE_BATCH);
    let spare = sharedBuffer(WRITE_BATCH);
    let batchBytes = 0;
    let inFlight: Promise<unknown> = Promise.resolve();
    const flush = async () => {
      if (batchBytes === 0) return;
      const at = this.position;
      const data = fill.subarray(0, batchBytes);
      this.position += batchBytes;
      batchBytes = 0;
      await inFlight;
      // The write and the hash only read the batch: they run at once, off the event loop.
      inFlight = Promise.all([this.writeAt(data, at), hash.update(data)]);
      // The spare's write and hash were awaited just above: it is free to fill.
      [fill, spare] = [spare, fill];
    };
    let sha256: string;
    try {
      for await (const chunk of source) {
        size += chunk.length;
        onBytes?.(chunk.length);
        let from = 0;
        while (from < chunk.length) {
          const n = Math.min(chunk.length - from, WRITE_BATCH - batchBytes);
          chunk.copy(fill, batchBytes, from, from + n);
          batchBytes += n;
          from += n;
          if (batchBytes === WRITE_BATCH) await flush();
        }
      }
      await flush();
      await inFlight;
      sha256 = await hash.digest();
    } finally {
      await inFlight.catch(() => {});
      hash.discard();
    }
    await this.write(Buffer.alloc(padding(size)));
    await this.file.write(tarHeader(name, 'file', size, Date.now()), 0, BLOCK, headerAt);
    return { sha256, sizeBytes: size };
  }

  /** Two zero blocks end a tar archive. No fsync: the CLI downloads the file at once and it is deleted then. */
  async finish(): Promise<number> {
    await this.write(Buffer.alloc(2 * BLOCK));
    await this.file.close();
    return this.position;
  }

  async abandon(): Promise<void> {
    await this.file.close().catch(() => {});
  }
}

function readOctal(b: Buffer, offset: number, width: number): number {
  if ((b[offset] ?? 0) & 0x80) {
    // GNU base-256: big-endian, the top bit of the first byte a marker.
    let v = 0n;
    for (let i = 0; i < width; i++) v = (v << 8n) | BigInt((b[offset + i] ?? 0) & (i === 0 ? 0x7f : 0xff));
    return Number(v);
  }
  const text = b
    .toString('ascii', offset, offset + width)
    .replace(/[\0 ]+$/, '')
    .trim();
  if (!/^[0-7]*$/.test(text)) throw new ArchiveDamaged('a tar header is damaged');
  return text === '' ? 0 : Number.parseInt(text, 8);
}

const cString = (b: Buffer, offset: number, width: number) => {
  const end = b.indexOf(0, offset);
  return b.toString('utf8', offset, end < 0 || end > offset + width ? offset + width : end);
};

/** A tar header block: its member's name, size and type flag; undefined for an end-of-archive block. */
export interface TarHeader {
  name: string;
  size: number;
  flag: string;
}

/** Reads a 512-byte tar header; refuses one whose checksum or numbers are damaged. */
export function parseTarHeader(header: Buffer): TarHeader | undefined {
  if (header.every((x) => x === 0)) return undefined;
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
  if (readOctal(header, 148, 8) !== sum) throw new ArchiveDamaged('a tar header fails its checksum');
  const size = readOctal(header, 124, 12);
  const prefix = header.toString('ascii', 257, 262) === 'ustar' ? cString(header, 345, 155) : '';
  const name = prefix ? `${prefix}/${cString(header, 0, 100)}` : cString(header, 0, 100);
  return { name, size, flag: String.fromCharCode(header[156] ?? 0) };
}

/** The member a file or directory header stands for; any other kind is refused. */
export function memberOf(name: string, flag: string, offset: number, size: number): ArchiveMember {
  if (flag === '0' || flag === '\0') return { name, type: 'file', offset, size };
  if (flag === '5') return { name: name.replace(/\/+$/, ''), type: 'directory', offset, size: 0 };
  throw new ArchiveDamaged(`member ${JSON.stringify(name)} is of an unexpected kind`);
}

/** Zero bytes that pad a member of `size` bytes to whole blocks. */
export const tarPadding = padding;

/**
 * Lists the members of the archive at `path` by reading its headers only (each
 * member's data is skipped by offset). Refuses a damaged header, a member that
 * runs past the end of the file, and a file with no end-of-archive block.
 */
export async function listArchive(
  path: string,
  /** A tar stored inside the file at this byte range (a payload of an archive): its members, offsets in the file. */
  window?: { offsetBytes: number; sizeBytes: number },
): Promise<ArchiveMember[]> {
  const file = await open(path, constants.O_RDONLY);
  try {
    const { size: wholeSize } = await file.stat();
    const fileSize = window ? Math.min(wholeSize, window.offsetBytes + window.sizeBytes) : wholeSize;
    const members: ArchiveMember[] = [];
    const header = Buffer.alloc(BLOCK);
    let position = window?.offsetBytes ?? 0;
    let longName: string | undefined;
    for (;;) {
      const { bytesRead } = await file.read(header, 0, BLOCK, position);
      if (bytesRead < BLOCK || position + BLOCK > fileSize)
        throw new ArchiveDamaged('the file ends before the end-of-archive block');
      const parsed = parseTarHeader(header);
      if (!parsed) return members;
      const { size, flag } = parsed;
      const offset = position + BLOCK;
      if (offset + size > fileSize) throw new ArchiveDamaged(`member data runs past the end of the file`);
      position = offset + size + padding(size);
      if (flag === 'L') {
        // GNU long name: the next member's name is this member's data.
        const data = Buffer.alloc(size);
        await file.read(data, 0, size, offset);
        longName = cString(data, 0, size);
        continue;
      }
      if (flag === 'x' || flag === 'g') continue;
      const name = longName ?? parsed.name;
      longName = undefined;
      members.push(memberOf(name, flag, offset, size));
    }
  } finally {
    await file.close();
  }
}

/** Reads a member's bytes (for the manifest: small), refusing one larger than `limit`. */
export async function readMember(path: string, member: ArchiveMember, limit: number): Promise<Buffer> {
  if (member.size > limit) throw new ArchiveDamaged(`${member.name} is larger than ${limit} bytes`);
  const file = await open(path, constants.O_RDONLY);
  try {
    const data = Buffer.alloc(member.size);
    await file.read(data, 0, member.size, member.offset);
    return data;
  } finally {
    await file.close();
  }
}

/**
 * The bytes of a member, chunk by chunk. Every chunk is read into the same buffer: a chunk is
 * valid until the next one is asked for (each caller hashes or writes it before that). A new
 * buffer per MiB made the daemon's garbage collector the largest cost of an import (decision 0072).
 */
export async function* memberChunks(path: string, member: ArchiveMember): AsyncGenerator<Buffer> {
  const file = await open(path, constants.O_RDONLY);
  try {
    let done = 0;
    // In shared memory, so that a sha256 thread can read a chunk in place (hashedOnTheWay).
    const buffer = sharedBuffer(Math.min(CHUNK, member.size));
    while (done < member.size) {
      const want = Math.min(CHUNK, member.size - done);
      const { bytesRead } = await file.read(buffer, 0, want, member.offset + done);
      if (bytesRead === 0) throw new ArchiveDamaged(`${member.name} ends early`);
      done += bytesRead;
      yield buffer.subarray(0, bytesRead);
    }
  } finally {
    await file.close();
  }
}

/** The sha256 and size of a member's bytes, hashed off the event loop; `signal` stops it between chunks. */
export async function digestOf(path: string, member: ArchiveMember, signal?: AbortSignal): Promise<Digest> {
  const hash = offloadedSha256();
  try {
    for await (const chunk of memberChunks(path, member)) {
      signal?.throwIfAborted();
      await hash.update(chunk);
    }
    return { sha256: await hash.digest(), sizeBytes: member.size };
  } finally {
    hash.discard();
  }
}
