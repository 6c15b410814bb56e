import { type FileHandle, open } from 'node:fs/promises';
import { invalidArgument } from '../../core/errors.ts';
import { childEnded, type ProcessRunner } from '../../host/runner.ts';
import type { SparseRegion } from './gnu-sparse-tar.ts';

/**
 * Unpacks the disk member of a pvm archive (a zstd tar) into a file, sparse, without `tar -x`:
 * GNU tar writes a sparse member's data 512 bytes at a time (two million writes per GiB; decision
 * 0085, pvm section), while here the regions are written in 4 MiB writes at their offsets and the
 * holes are left unwritten. Reads what the pvm export writes and what `tar --sparse` wrote before
 * it (GNU tar's own format: a sparse 'S' member, or a plain one); any other kind of member named
 * like the disk is refused. The tar itself is checked as it comes: header checksums, the sparse
 * map (ascending, within the disk, adding up to the member's data), the end-of-archive blocks.
 */

const BLOCK = 512;
const WRITE_BYTES = 4 * 1024 * 1024;
const IN_HEADER = 4;
const IN_EXTENSION = 21;
/** A sparse map longer than this is not one the export writes (a disk has at most one region per 64 KiB). */
const MAX_REGIONS = 4 * 1024 * 1024;

const damaged = (what: string) => invalidArgument(`The archive is damaged (${what}): make the export again.`);

function readNumber(b: Buffer, at: number, width: number): number {
  if (((b[at] ?? 0) & 0x80) !== 0) {
    let v = 0n;
    for (let i = 0; i < width; i++) v = (v << 8n) | BigInt((b[at + i] ?? 0) & (i === 0 ? 0x7f : 0xff));
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw damaged('a number too large');
    return Number(v);
  }
  const text = b
    .toString('ascii', at, at + width)
    .replace(/[\0 ]+$/, '')
    .trim();
  if (!/^[0-7]*$/.test(text)) throw damaged('a tar header field is not a number');
  return text === '' ? 0 : Number.parseInt(text, 8);
}

function checkHeader(h: Buffer): void {
  const want = readNumber(h, 148, 8);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] as number);
  if (sum !== want) throw damaged('a tar header checksum does not match');
}

/** The map entries of a sparse header or extension block, up to the first empty one. */
function entriesOf(b: Buffer, at: number, count: number, into: SparseRegion[]): void {
  for (let i = 0; i < count; i++) {
    const o = at + i * 24;
    if (b[o] === 0) return;
    into.push({ offset: readNumber(b, o, 12), length: readNumber(b, o + 12, 12) });
  }
}

/** Pulls exact byte counts out of a stream of chunks. */
class ByteReader {
  private chunk: Buffer = Buffer.alloc(0);
  private at = 0;
  private readonly source: AsyncIterator<Buffer>;
  constructor(source: AsyncIterable<Buffer>) {
    this.source = source[Symbol.asyncIterator]();
  }
  private async fill(): Promise<boolean> {
    while (this.at >= this.chunk.length) {
      const next = await this.source.next();
      if (next.done) return false;
      this.chunk = next.value;
      this.at = 0;
    }
    return true;
  }
  /** Hands `n` bytes to `take` in pieces (valid during the call); false when the stream ends first. */
  async pass(n: number, take: (piece: Buffer) => Promise<void> | void): Promise<boolean> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill())) return false;
      const k = Math.min(left, this.chunk.length - this.at);
      await take(this.chunk.subarray(this.at, this.at + k));
      this.at += k;
      left -= k;
    }
    return true;
  }
  /** The next `n` bytes as one buffer (for headers), or undefined when the stream ends first. */
  async read(n: number): Promise<Buffer | undefined> {
    const out = Buffer.alloc(n);
    let got = 0;
    const ok = await this.pass(n, (piece) => {
      piece.copy(out, got);
      got += piece.length;
    });
    return ok ? out : undefined;
  }
  /** Reads to the end. */
  async drain(): Promise<void> {
    while (await this.fill()) this.at = this.chunk.length;
  }
}

/** Writes regions of a file in large writes, gathering the bytes of each region into one buffer. */
class RegionWriter {
  private readonly buffer = Buffer.allocUnsafe(WRITE_BYTES);
  private fill = 0;
  private at = 0;
  written = 0;
  private readonly file: FileHandle;
  constructor(file: FileHandle) {
    this.file = file;
  }
  startAt(offset: number): void {
    this.at = offset;
  }
  async add(piece: Buffer): Promise<void> {
    let from = 0;
    while (from < piece.length) {
      const n = Math.min(piece.length - from, WRITE_BYTES - this.fill);
      piece.copy(this.buffer, this.fill, from, from + n);
      this.fill += n;
      from += n;
      if (this.fill === WRITE_BYTES) await this.flush();
    }
  }
  async flush(): Promise<void> {
    let done = 0;
    while (done < this.fill) {
      const { bytesWritten } = await this.file.write(this.buffer, done, this.fill - done, this.at + done);
      done += bytesWritten;
    }
    this.at += this.fill;
    this.written += this.fill;
    this.fill = 0;
  }
}

/** What an unpack wrote: the disk's size and the bytes of data written (holes left out). */
export interface UnpackedDisk {
  sizeBytes: number;
  writtenBytes: number;
}

/**
 * Unpacks member `name` of the zstd tar (or plain tar) at `archive` into a new file `target`
 * (mode 0600). Refuses, as InvalidArgument, an archive without it, a damaged or truncated one, or
 * a member of that name that is not a regular or sparse file. The caller removes `target` on failure.
 */
export async function unpackDiskMember(
  runner: ProcessRunner,
  archive: string,
  options: { name: string; target: string; signal?: AbortSignal | undefined },
): Promise<UnpackedDisk> {
  const { signal } = options;
  signal?.throwIfAborted();
  const zstd = runner.spawn(['zstd', '-d', '-f', '-c', '-q', '--', archive], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = childEnded(zstd);
  const stdout = zstd.stdout;
  if (!stdout) throw new Error('zstd has no stdout');
  const kill = () => zstd.kill('SIGKILL');
  signal?.addEventListener('abort', kill, { once: true });
  const file = await open(options.target, 'wx', 0o600);
  let result: UnpackedDisk | undefined;
  try {
    const input = new ByteReader(stdout as AsyncIterable<Buffer>);
    const truncated = () => damaged('it ends early');
    for (;;) {
      const h = await input.read(BLOCK);
      if (!h) throw truncated();
      if (h.every((b) => b === 0)) {
        // The end: a second zero block, then whatever padding the writer added.
        const second = await input.read(BLOCK);
        if (!second) throw truncated();
        await input.drain();
        break;
      }
      checkHeader(h);
      const end = h.indexOf(0);
      const memberName = h.toString('utf8', 0, end < 0 || end > 100 ? 100 : end);
      const type = String.fromCharCode(h[156] ?? 0);
      const size = readNumber(h, 124, 12);
      const padded = size + ((BLOCK - (size % BLOCK)) % BLOCK);
      const mine = memberName === options.name || memberName === `./${options.name}`;
      if (!mine) {
        if (type === 'S' && h[482] === 1) {
          // Another sparse member's extension blocks come before its data.
          for (let more = true; more; ) {
            const x = await input.read(BLOCK);
            if (!x) throw truncated();
            more = x[504] === 1;
          }
        }
        if (!(await input.pass(padded, () => {}))) throw truncated();
        continue;
      }
      if (result) throw damaged(`it holds ${options.name} twice`);
      if (type !== '0' && type !== '\0' && type !== 'S') {
        throw invalidArgument(`The archive's ${options.name} is not a regular file: make the export again.`);
      }
      let realSize = size;
      let regions: SparseRegion[] = [{ offset: 0, length: size }];
      if (type === 'S') {
        realSize = readNumber(h, 483, 12);
        regions = [];
        entriesOf(h, 386, IN_HEADER, regions);
        for (let more = h[482] === 1; more; ) {
          const x = await input.read(BLOCK);
          if (!x) throw truncated();
          entriesOf(x, 0, IN_EXTENSION, regions);
          if (regions.length > MAX_REGIONS) throw damaged('its sparse map is too long');
          more = x[504] === 1;
        }
        let last = 0;
        let stored = 0;
        for (const r of regions) {
          if (r.offset < last || r.offset + r.length > realSize)
            throw damaged('its sparse map is out of order');
          last = r.offset + r.length;
          stored += r.length;
        }
        if (stored !== size) throw damaged('its sparse map does not add up');
      }
      const writer = new RegionWriter(file);
      for (const r of regions) {
        signal?.throwIfAborted();
        writer.startAt(r.offset);
        if (!(await input.pass(r.length, (piece) => writer.add(piece)))) throw truncated();
        await writer.flush();
      }
      if (!(await input.pass(padded - size, () => {}))) throw truncated();
      await file.truncate(realSize);
      result = { sizeBytes: realSize, writtenBytes: writer.written };
    }
    const { code, stderr } = await exited;
    signal?.throwIfAborted();
    if (code !== 0) throw damaged(stderr.trim() || `zstd exit ${code}`);
    if (!result) {
      throw invalidArgument(
        `The archive holds no ${options.name}: it was not made from a pvm guest, or it is damaged.`,
      );
    }
    return result;
  } catch (e) {
    zstd.kill('SIGKILL');
    // What zstd wrote and nobody read would keep its stdout, and so its end, open.
    stdout.destroy();
    await exited;
    signal?.throwIfAborted();
    throw e;
  } finally {
    signal?.removeEventListener('abort', kill);
    await file.close();
  }
}
