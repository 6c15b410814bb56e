import { open } from 'node:fs/promises';
import { invalidArgument } from '../../core/errors.ts';

/** The header of a UML copy-on-write file (version 3, as linux.uml writes it; big-endian). */
export interface UmlCowHeader {
  /** mtime of the backing file when the COW file was made (UML refuses a backing file that changed). */
  mtimeSeconds: number;
  /** Size of the backing file, and of the disk. */
  sizeBytes: number;
  sectorSize: number;
  alignment: number;
  backingFile: string;
}

const MAGIC = 0x4f4f4f4d; // "OOOM"
/** magic, version, mtime (u32), size (u64), sector size, alignment, cow_format, then the path. */
const BACKING_OFFSET = 32;
const BACKING_MAX = 4096;

/** Parses the header of a UML COW file (arch/um/drivers/cow_user.c, version 3). */
export function parseUmlCowHeader(buf: Buffer): UmlCowHeader {
  if (buf.length < BACKING_OFFSET + 1 || buf.readUInt32BE(0) !== MAGIC) {
    throw invalidArgument('The file is not a UML copy-on-write file (no OOOM magic).');
  }
  const version = buf.readUInt32BE(4);
  if (version !== 3) throw invalidArgument(`The UML copy-on-write file has version ${version}, not 3.`);
  const path = buf.subarray(BACKING_OFFSET, BACKING_OFFSET + BACKING_MAX);
  const end = path.indexOf(0);
  return {
    mtimeSeconds: buf.readUInt32BE(8),
    sizeBytes: Number(buf.readBigUInt64BE(12)),
    sectorSize: buf.readUInt32BE(20),
    alignment: buf.readUInt32BE(24),
    backingFile: path.subarray(0, end < 0 ? path.length : end).toString('utf8'),
  };
}

/** Reads the header of the UML COW file at `path`. */
export async function readUmlCowHeader(path: string): Promise<UmlCowHeader> {
  const handle = await open(path, 'r');
  try {
    const buf = Buffer.alloc(BACKING_OFFSET + BACKING_MAX);
    const { bytesRead } = await handle.read(buf, 0, buf.length, 0);
    return parseUmlCowHeader(buf.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

/** The size of a version 3 UML COW header (packed: 32 bytes of fields, then a 4096-byte path). */
const COW_V3_HEADER_BYTES = BACKING_OFFSET + BACKING_MAX;
/** Sector sizes must divide this (the incremental backups' block, pvm-incremental.ts). */
const LARGEST_BLOCK_BYTES = 1024 * 1024;

/** Where a UML COW file keeps its bitmap of written sectors and their data (arch/um/drivers/cow_user.c). */
export interface CowLayout {
  sizeBytes: number;
  sectorSize: number;
  bitmapOffset: number;
  bitmapBytes: number;
  dataOffset: number;
}

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/**
 * The layout cow_user.c's cow_sizes gives a version 3 COW file of this header: the bitmap at the
 * header's size rounded up to the alignment, one bit per sector (bit n: byte n/8, bit n%8), then
 * the sectors' data at the bitmap's end rounded up to the alignment.
 */
export function cowLayoutOf(header: UmlCowHeader): CowLayout {
  const { sizeBytes, sectorSize, alignment } = header;
  if (alignment <= 0 || sectorSize <= 0 || LARGEST_BLOCK_BYTES % sectorSize !== 0) {
    throw invalidArgument(
      `The UML copy-on-write file has sectors of ${sectorSize} bytes aligned to ${alignment}: not a layout this daemon reads.`,
    );
  }
  const bitmapOffset = roundUp(COW_V3_HEADER_BYTES, alignment);
  const bitmapBytes = Math.ceil(Math.ceil(sizeBytes / sectorSize) / 8);
  return {
    sizeBytes,
    sectorSize,
    bitmapOffset,
    bitmapBytes,
    dataOffset: roundUp(bitmapOffset + bitmapBytes, alignment),
  };
}

/** Whether the bitmap marks sector `n` as written to the COW file (a sector past the bitmap counts as written). */
export const sectorMarked = (bitmap: Buffer, n: number): boolean => {
  const byte = bitmap[n >> 3];
  return byte === undefined || (byte & (1 << (n & 7))) !== 0;
};

/**
 * Calls `run(first, end, marked)` for each run of sectors [first, end) of `sectors` that the
 * bitmap marks alike, in order; whole bytes of 0x00 or 0xff are skipped at once.
 */
export function forEachSectorRun(
  bitmap: Buffer,
  sectors: number,
  run: (first: number, end: number, marked: boolean) => void,
): void {
  let s = 0;
  while (s < sectors) {
    const m = sectorMarked(bitmap, s);
    const same = m ? 0xff : 0;
    let e = s + 1;
    while (e < sectors) {
      if ((e & 7) === 0 && e + 8 <= sectors && bitmap[e >> 3] === same) {
        e += 8;
        continue;
      }
      if (sectorMarked(bitmap, e) !== m) break;
      e++;
    }
    run(s, e, m);
    s = e;
  }
}
