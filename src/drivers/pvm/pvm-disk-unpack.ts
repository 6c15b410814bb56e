import type * as NodeFs from 'node:fs';
import type { ProcessRunner } from '../../host/runner.ts';
import { unpackZstdTar } from '../archive-unpack.ts';

/**
 * A pvm archive's disk member unpacked in large writes by a helper process (issue 20, decision
 * 0103): GNU tar writes a sparse member's data 512 bytes at a time (`sparse_extract_region`
 * writes block by block whatever `-b` says), two million write calls for a GiB of data, about
 * 2 s of system time, and every pvm archive's `disk.img` is a GNU sparse member. Here
 * `zstd -d | node -e UNPACKER` replaces `zstd -d | tar -x`: the helper reads the tar from its
 * standard input with blocking reads into one 4 MiB buffer, parses the member's headers (GNU 'S'
 * with its sparse map and extension blocks, or a plain file), truncates the new file to its size
 * (the holes are never written) and writes each region's data at its offset from that buffer,
 * up to 4 MiB at a time. It runs beside `zstd -d` on the other core, never on the daemon's event
 * loop (decision 0096: the same unpacking inside the daemon made imports slower).
 */

/** Exit code of the helper for an archive it refuses (damaged, cut short, member missing or not a file). */
const REFUSED_EXIT = 3;
/** Exit code of the helper for a failure of the host (ENOSPC, EIO…): its message on stderr. */
const HOST_FAULT_EXIT = 4;

/** What the helper wrote: the disk's size, the bytes of data written, and its data regions. */
export interface UnpackedDisk {
  sizeBytes: number;
  storedBytes: number;
  regions: number;
}

/**
 * Reads a tar from file descriptor `input` and writes its member `member` to the new file
 * `target` (refused if it exists), sparse; then reads `input` to its end (so that `zstd -d`
 * ends and checks its frames' checksums). Throws an error whose `refused` is true for an archive
 * it will not unpack. Runs in the helper process: it must stay self-contained (no imports, no
 * names from this module), since its source text is what the helper runs, as written here or as
 * the daemon's bundle has it.
 */
export function unpackDiskMember(
  fs: typeof NodeFs,
  options: { input: number; member: string; target: string },
): UnpackedDisk {
  const BLOCK = 512;
  const CAPACITY = 4 * 1024 * 1024;
  const MAX_META_BYTES = 1024 * 1024;
  const MAX_MAP_ENTRIES = 1_000_000;
  const refuse = (why: string): never => {
    const e = new Error(why) as Error & { refused: boolean };
    e.refused = true;
    throw e;
  };
  const buf = Buffer.allocUnsafe(CAPACITY);
  const waitCell = new Int32Array(new SharedArrayBuffer(4));
  let pos = 0;
  let end = 0;
  let eof = false;
  /** One read into buf[end, CAPACITY); false at the end of the input. */
  const readMore = (): boolean => {
    if (eof) return false;
    for (;;) {
      try {
        const n = fs.readSync(options.input, buf, end, CAPACITY - end, null);
        if (n === 0) eof = true;
        end += n;
        return n > 0;
      } catch (e) {
        // A descriptor left non-blocking by whoever made the pipe: wait a little, read again.
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        Atomics.wait(waitCell, 0, 0, 2);
      }
    }
  };
  /** Makes `n` bytes (at most CAPACITY) available at buf[pos]; false when the input ends first. */
  const need = (n: number): boolean => {
    if (end - pos >= n) return true;
    if (CAPACITY - pos < n) {
      buf.copyWithin(0, pos, end);
      end -= pos;
      pos = 0;
    }
    while (end - pos < n) if (!readMore()) return false;
    return true;
  };
  /** Reads until the buffer is full or the input ends (fewer, larger writes). */
  const topUp = () => {
    if (pos === end) pos = end = 0;
    while (end < CAPACITY && readMore());
  };
  const cutShort = () => refuse('it ends in the middle of a member');
  const take = (n: number): Buffer => {
    if (!need(n)) cutShort();
    const out = Buffer.from(buf.subarray(pos, pos + n));
    pos += n;
    return out;
  };
  const skip = (n: number) => {
    let left = n;
    while (left > 0) {
      if (pos === end) topUp();
      if (pos === end) cutShort();
      const k = Math.min(left, end - pos);
      pos += k;
      left -= k;
    }
  };
  const padding = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;
  /** A numeric field: octal (NUL- or space-ended), or GNU's base-256 after a 0x80 byte. */
  const number = (b: Buffer, at: number, width: number): number => {
    if (((b[at] ?? 0) & 0x80) !== 0) {
      let v = 0n;
      for (let i = 0; i < width; i++) v = (v << 8n) | BigInt((b[at + i] ?? 0) & (i === 0 ? 0x7f : 0xff));
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) refuse('a number in a header is out of range');
      return Number(v);
    }
    const text = b
      .toString('latin1', at, at + width)
      .replace(/[\0 ]+$/, '')
      .trim();
    if (!/^[0-7]*$/.test(text)) refuse('a number in a header is not octal');
    return text === '' ? 0 : Number.parseInt(text, 8);
  };
  const text = (b: Buffer, at: number, width: number): string => {
    const z = b.indexOf(0, at);
    return b.toString('utf8', at, z < 0 || z > at + width ? at + width : z);
  };
  /** The map entries of a block (`count` from `at`), up to the first whose length field is empty (GNU tar's test). */
  const entries = (b: Buffer, at: number, count: number, into: Array<{ offset: number; length: number }>) => {
    for (let i = 0; i < count; i++) {
      const o = at + i * 24;
      if (b[o + 12] === 0) break;
      into.push({ offset: number(b, o, 12), length: number(b, o + 12, 12) });
    }
    if (into.length > MAX_MAP_ENTRIES) refuse('a sparse map is too long');
  };
  const writeAll = (fd: number, from: number, length: number, at: number) => {
    let done = 0;
    while (done < length) done += fs.writeSync(fd, buf, from + done, length - done, at + done);
  };

  let found: UnpackedDisk | undefined;
  let longName: string | undefined;
  let paxName: string | undefined;
  for (;;) {
    if (!need(BLOCK)) refuse('it ends before its end-of-archive block');
    const header = take(BLOCK);
    if (header.every((byte) => byte === 0)) break;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] as number);
    let stored = -1;
    try {
      stored = number(header, 148, 8);
    } catch {}
    if (stored !== sum) refuse("a header's checksum does not match: it is not a tar, or damaged");
    const flag = String.fromCharCode(header[156] as number);
    const size = number(header, 124, 12);
    // POSIX ustar keeps a name's first part in its prefix field; GNU's own headers keep times there.
    const prefix = header.toString('latin1', 257, 263) === 'ustar\0' ? text(header, 345, 155) : '';
    const name = longName ?? paxName ?? (prefix ? `${prefix}/${text(header, 0, 100)}` : text(header, 0, 100));
    longName = undefined;
    paxName = undefined;
    if (flag === 'L' || flag === 'K' || flag === 'x' || flag === 'g') {
      if (size > MAX_META_BYTES) refuse('a long name or pax header is too large');
      const data = take(size);
      skip(padding(size));
      if (flag === 'L') longName = text(data, 0, data.length);
      else if (flag === 'x') {
        const records = data.toString('utf8');
        // pax's sparse formats (tar --format=pax --sparse) keep the map elsewhere: no export wrote one.
        if (records.includes('GNU.sparse'))
          refuse('its sparse files are in a format this daemon does not unpack (pax)');
        const path = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(records);
        if (path) paxName = path[1];
      }
      continue;
    }
    const regions: Array<{ offset: number; length: number }> = [];
    let realSize = size;
    if (flag === 'S') {
      realSize = number(header, 483, 12);
      const map: Array<{ offset: number; length: number }> = [];
      entries(header, 386, 4, map);
      let extended = header[482] !== 0;
      while (extended) {
        const block = take(BLOCK);
        entries(block, 0, 21, map);
        extended = block[504] !== 0;
      }
      let at = 0;
      let stored = 0;
      for (const r of map) {
        if (r.offset < at || r.offset + r.length > realSize) {
          refuse('its sparse map is out of order or past the end of the file');
        }
        if (r.length === 0) continue;
        regions.push(r);
        at = r.offset + r.length;
        stored += r.length;
      }
      if (stored !== size) refuse("its sparse map does not add up to the member's size");
    } else if (size > 0) regions.push({ offset: 0, length: size });
    if (name !== options.member && name !== `./${options.member}`) {
      skip(size + padding(size));
      continue;
    }
    // A link or a device would have root read a host file into the guest's disk.
    if (!['0', '\0', '7', 'S'].includes(flag)) refuse(`its ${options.member} is not a regular file`);
    if (found) refuse(`it holds ${options.member} twice`);
    const fd = fs.openSync(options.target, 'wx', 0o600);
    try {
      // The holes are the file's own: nothing is written there.
      fs.ftruncateSync(fd, realSize);
      for (const r of regions) {
        let left = r.length;
        let at = r.offset;
        while (left > 0) {
          if (pos === end || (end - pos < left && end < CAPACITY)) topUp();
          if (pos === end) cutShort();
          const n = Math.min(left, end - pos);
          writeAll(fd, pos, n, at);
          pos += n;
          at += n;
          left -= n;
        }
      }
    } finally {
      fs.closeSync(fd);
    }
    skip(padding(size));
    found = { sizeBytes: realSize, storedBytes: size, regions: regions.length };
  }
  if (!found) refuse(`it holds no ${options.member}`);
  // The rest (the end blocks' record) is read to its end, so that zstd ends and checks its frames.
  pos = end = 0;
  while (readMore()) pos = end = 0;
  return found as UnpackedDisk;
}

/** The helper's program: runs unpackDiskMember on its standard input, argv MEMBER TARGET. */
const HELPER_SOURCE = `
const fs = require('node:fs');
const [member, target] = process.argv.slice(1);
try {
  const done = (${unpackDiskMember.toString()})(fs, { input: 0, member, target });
  process.stdout.write(JSON.stringify(done) + '\\n');
} catch (e) {
  process.stderr.write(String((e && e.message) || e) + '\\n');
  process.exitCode = e && e.refused ? ${REFUSED_EXIT} : ${HOST_FAULT_EXIT};
}
`;

/** Why an archive's disk could not be unpacked: `refused` for the archive's fault, else the host's. */
export class DiskUnpackFailed extends Error {
  readonly refused: boolean;
  constructor(message: string, refused: boolean) {
    super(message);
    this.refused = refused;
  }
}

/**
 * Unpacks member `member` of the zstd tar (or plain tar) at `archive` (a file or the daemon's
 * FIFO) into the new file `target` through `zstd -d | helper`. A DiskUnpackFailed whose `refused`
 * is true when the archive is damaged, cut short, not a tar, or its member missing or not a
 * regular file (zstd's own refusals included); false for the host's failures (ENOSPC: its message
 * names it). An abort kills both and rejects with the signal's reason. `target` may be left
 * behind on a failure: it belongs in the caller's work directory.
 */
export async function unpackDiskArchive(
  runner: ProcessRunner,
  archive: string,
  options: { member: string; target: string; signal?: AbortSignal | undefined },
): Promise<void> {
  const { signal } = options;
  const ended = await unpackZstdTar(
    runner,
    archive,
    // Not the daemon's NODE_OPTIONS (a --cpu-prof or --max-old-space-size meant for the daemon).
    ['env', '-u', 'NODE_OPTIONS', process.execPath, '-e', HELPER_SOURCE, options.member, options.target],
    signal,
  );
  signal?.throwIfAborted();
  if (ended.code === 0) return;
  const last = ended.stderr.trim().split('\n').at(-1) || `exit ${ended.code}`;
  // The helper's code comes first (unpackZstdTar), then zstd's: 1 is zstd refusing its input.
  throw new DiskUnpackFailed(last, ended.code === REFUSED_EXIT || ended.code === 1);
}
