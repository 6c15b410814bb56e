import { type FileHandle, open, stat } from 'node:fs/promises';
import type { ProcessRunner } from '../../host/runner.ts';
import { writeThroughZstd } from '../zstd-writer.ts';
import { gnuSparseHeaders, type SparseRegion, storedBytes } from './gnu-sparse-tar.ts';
import { cowLayoutOf, forEachSectorRun, readUmlCowHeader } from './uml-cow.ts';

/**
 * A pvm guest's flat disk (a private disk, or a UML COW file merged over its base disk) as one
 * sparse member of a zstd tar, made in one pass (decision 0085, pvm section): its data regions
 * are planned first (the private disk's and the base disk's from `qemu-img map`, which finds
 * their holes with SEEK_DATA / SEEK_HOLE; the COW file's from its bitmap), then each region's
 * bytes are read from whichever file holds them, straight into `zstd -T0`. Holes are neither
 * read nor written, no merged disk is written to a temporary file first (as `uml_moo` did), and
 * `tar -x` makes the disk sparse again at import.
 */

/** Holes shorter than this between two data regions are carried as zeros: fewer, larger regions. */
export const MIN_HOLE_BYTES = 64 * 1024;
/** Bytes read at a time into each of the two buffers used in turn. */
const BUFFER_BYTES = 4 * 1024 * 1024;

/** Bytes [offset, offset + length) of the flat disk: read from `files[file]` at `at`, or zeros (file -1). */
export interface DiskPiece {
  offset: number;
  length: number;
  file: number;
  at: number;
}

/** The flat disk's layout: its data regions (the sparse map) and, in disk order, where their bytes come from. */
export interface FlatDiskPlan {
  sizeBytes: number;
  files: string[];
  regions: SparseRegion[];
  pieces: DiskPiece[];
}

/** The data extents of a raw file (holes and zeros left out), ascending, from `qemu-img map`. */
export async function rawDataExtents(runner: ProcessRunner, path: string): Promise<SparseRegion[]> {
  const { stdout } = await runner.run(['qemu-img', 'map', '-U', '--output=json', '-f', 'raw', path]);
  const extents = JSON.parse(stdout) as Array<{
    start: number;
    length: number;
    data: boolean;
    zero: boolean;
  }>;
  return extents
    .filter((e) => e.data && !e.zero && e.length > 0)
    .map((e) => ({ offset: e.start, length: e.length }));
}

/**
 * Turns pieces (ascending, apart) into the plan: pieces less than MIN_HOLE_BYTES apart join one
 * region, the gap between them carried as a zero piece; adjacent pieces of one file merge.
 */
export function planOf(sizeBytes: number, files: string[], pieces: readonly DiskPiece[]): FlatDiskPlan {
  const regions: SparseRegion[] = [];
  const out: DiskPiece[] = [];
  for (const p of pieces) {
    if (p.length <= 0) continue;
    const region = regions.at(-1);
    const end = region ? region.offset + region.length : -1;
    if (p.offset < end) throw new Error(`overlapping disk pieces at ${p.offset}`);
    if (region && p.offset - end < MIN_HOLE_BYTES) {
      if (p.offset > end) out.push({ offset: end, length: p.offset - end, file: -1, at: 0 });
      region.length = p.offset + p.length - region.offset;
    } else {
      regions.push({ offset: p.offset, length: p.length });
    }
    const last = out.at(-1);
    if (
      last &&
      last.file === p.file &&
      last.offset + last.length === p.offset &&
      (p.file < 0 || last.at + last.length === p.at)
    ) {
      last.length += p.length;
    } else {
      out.push({ ...p });
    }
  }
  return { sizeBytes, files, regions, pieces: out };
}

/** The plan of a private disk: its own data extents, read in place. */
export async function planRawDisk(runner: ProcessRunner, path: string): Promise<FlatDiskPlan> {
  const sizeBytes = (await stat(path)).size;
  const pieces = (await rawDataExtents(runner, path)).map((e) => ({
    offset: e.offset,
    length: Math.min(e.length, sizeBytes - e.offset),
    file: 0,
    at: e.offset,
  }));
  return planOf(sizeBytes, [path], pieces);
}

/**
 * The pieces of a COW disk: the sectors the bitmap marks from the COW file's data area, the
 * others from the base disk where it has data (`baseData`, ascending); file 0 is the COW file,
 * file 1 the base disk.
 */
export function cowPieces(
  layout: { sizeBytes: number; sectorSize: number; dataOffset: number },
  bitmap: Buffer,
  baseData: readonly SparseRegion[],
): DiskPiece[] {
  const { sizeBytes, sectorSize: ss, dataOffset } = layout;
  const pieces: DiskPiece[] = [];
  let cursor = 0;
  forEachSectorRun(bitmap, Math.ceil(sizeBytes / ss), (first, end, marked) => {
    const from = first * ss;
    const to = Math.min(end * ss, sizeBytes);
    if (marked) {
      pieces.push({ offset: from, length: to - from, file: 0, at: dataOffset + from });
      return;
    }
    while (cursor < baseData.length) {
      const e = baseData[cursor] as SparseRegion;
      if (e.offset + e.length > from) break;
      cursor++;
    }
    for (let i = cursor; i < baseData.length; i++) {
      const e = baseData[i] as SparseRegion;
      if (e.offset >= to) break;
      const a = Math.max(from, e.offset);
      const b = Math.min(to, e.offset + e.length);
      if (b > a) pieces.push({ offset: a, length: b - a, file: 1, at: a });
    }
  });
  return pieces;
}

/** The plan of a COW disk: its header and bitmap read, the base disk's data extents mapped. */
export async function planCowDisk(runner: ProcessRunner, path: string): Promise<FlatDiskPlan> {
  const header = await readUmlCowHeader(path);
  const layout = cowLayoutOf(header);
  const bitmap = Buffer.alloc(layout.bitmapBytes);
  const handle = await open(path, 'r');
  try {
    const { bytesRead } = await handle.read(bitmap, 0, bitmap.length, layout.bitmapOffset);
    if (bytesRead !== bitmap.length) throw new Error(`The COW file ${path} is shorter than its bitmap`);
  } finally {
    await handle.close();
  }
  if ((await stat(header.backingFile)).size < header.sizeBytes) {
    throw new Error(`The base disk ${header.backingFile} is shorter than the COW file's disk`);
  }
  const baseData = await rawDataExtents(runner, header.backingFile);
  return planOf(header.sizeBytes, [path, header.backingFile], cowPieces(layout, bitmap, baseData));
}

/**
 * Hands the plan's data to `write` in disk order, read into two buffers used in turn (one is
 * filled again only once `write` has resolved for it). File 0 may end early (a COW file's sparse
 * tail): what lies past its end reads as zeros; any other short file is an error.
 */
export async function streamFlatDisk(
  plan: FlatDiskPlan,
  write: (chunk: Buffer) => Promise<void>,
  options: { signal?: AbortSignal; observe?: DiskObserver } = {},
): Promise<number> {
  const handles: FileHandle[] = [];
  try {
    for (const f of plan.files) handles.push(await open(f, 'r'));
    const buffers = [Buffer.allocUnsafe(BUFFER_BYTES), Buffer.allocUnsafe(BUFFER_BYTES)];
    const pending: Array<Promise<void>> = [Promise.resolve(), Promise.resolve()];
    let turn = 0;
    let fill = 0;
    let readBytes = 0;
    const flush = async () => {
      if (fill === 0) return;
      const chunk = (buffers[turn] as Buffer).subarray(0, fill);
      pending[turn] = write(chunk);
      pending[turn]?.catch(() => {});
      turn = 1 - turn;
      fill = 0;
      await pending[turn];
    };
    for (const p of plan.pieces) {
      let done = 0;
      while (done < p.length) {
        options.signal?.throwIfAborted();
        const buffer = buffers[turn] as Buffer;
        const n = Math.min(p.length - done, BUFFER_BYTES - fill);
        if (p.file < 0) buffer.fill(0, fill, fill + n);
        else {
          const handle = handles[p.file] as FileHandle;
          let got = 0;
          while (got < n) {
            const { bytesRead } = await handle.read(buffer, fill + got, n - got, p.at + done + got);
            if (bytesRead === 0) {
              if (p.file !== 0 || plan.files.length < 2)
                throw new Error(`Short read of ${plan.files[p.file]} at ${p.at + done + got}`);
              buffer.fill(0, fill + got, fill + n);
              break;
            }
            got += bytesRead;
          }
          readBytes += got;
        }
        options.observe?.(p.offset + done, buffer.subarray(fill, fill + n));
        fill += n;
        done += n;
        if (fill === BUFFER_BYTES) await flush();
      }
    }
    await flush();
    await Promise.all(pending);
    return readBytes;
  } finally {
    for (const h of handles) await h.close();
  }
}

/** Sees each stretch of the flat disk's stored data as it passes, in disk order (valid during the call only). */
export type DiskObserver = (offset: number, data: Buffer) => void;

/** What a streamed export did: the disk's size, the bytes of data it stored and read. */
export interface DiskArchiveStats {
  sizeBytes: number;
  storedBytes: number;
  readBytes: number;
  regions: number;
}

/**
 * Writes a zstd-compressed tar holding the plan's disk as sparse member `name` to `tarPath` (the
 * daemon's FIFO): the tar is made here, compressed by `zstd -T0` on every core. An abort kills
 * zstd and rejects with the signal's reason.
 */
export async function writeDiskArchive(
  runner: ProcessRunner,
  plan: FlatDiskPlan,
  options: { tarPath: string; name: string; signal?: AbortSignal | undefined; observe?: DiskObserver },
): Promise<DiskArchiveStats> {
  const { signal } = options;
  let stats: DiskArchiveStats | undefined;
  await writeThroughZstd(runner, options.tarPath, signal, async (write) => {
    const headers = gnuSparseHeaders(options.name, {
      realSize: plan.sizeBytes,
      regions: plan.regions,
      mtimeMs: Date.now(),
    });
    const stored = storedBytes(plan.regions);
    await write(headers);
    const readBytes = await streamFlatDisk(plan, write, {
      ...(signal && { signal }),
      ...(options.observe && { observe: options.observe }),
    });
    const pad = (512 - (stored % 512)) % 512;
    const written = headers.length + stored + pad + 1024;
    // The end: padding to a block, two zero blocks, then up to a whole record of 20 blocks, as GNU tar writes it.
    await write(Buffer.alloc(pad + 1024 + ((10240 - (written % 10240)) % 10240)));
    stats = { sizeBytes: plan.sizeBytes, storedBytes: stored, readBytes, regions: plan.regions.length };
  });
  return stats as DiskArchiveStats;
}
