/**
 * The header of a sparse file in GNU tar's own format (type 'S', the "old GNU" sparse format that
 * `tar --sparse` writes by default): a ustar-like header with the first four regions of the sparse
 * map and the file's real size, then extension blocks of 21 regions each while `isextended` is
 * set. The member's data is the regions' bytes, one after the other; what lies between them is a
 * hole, which `tar -x` leaves unwritten (it seeks over it, and truncates to the real size when the
 * file ends in a hole). Numbers that octal cannot hold (8 GiB and more) use GNU's base-256 form.
 */

const BLOCK = 512;
/** Regions in the header itself, and in each extension block. */
const IN_HEADER = 4;
const IN_EXTENSION = 21;
/** struct oldgnu_header: the sparse map, the isextended flag and the real size. */
const SPARSE_AT = 386;
const IS_EXTENDED_AT = 482;
const REAL_SIZE_AT = 483;
/** struct sparse_header (an extension block): its isextended flag after 21 regions. */
const EXTENSION_IS_EXTENDED_AT = 504;
const ENTRY_BYTES = 24;

/** Bytes [offset, offset + length) of the file are stored in the archive; the rest is a hole. */
export interface SparseRegion {
  offset: number;
  length: number;
}

/** A numeric field: octal and NUL when it fits, else base-256 (a 0x80 byte, then big-endian). */
function writeNumber(b: Buffer, at: number, width: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`not a tar number: ${value}`);
  if (value < 8 ** (width - 1)) {
    b.write(`${value.toString(8).padStart(width - 1, '0')}\0`, at, width, 'ascii');
    return;
  }
  b.fill(0, at, at + width);
  b[at] = 0x80;
  b.writeBigUInt64BE(BigInt(value), at + width - 8);
}

function writeEntry(b: Buffer, at: number, region: SparseRegion): void {
  writeNumber(b, at, 12, region.offset);
  writeNumber(b, at + 12, 12, region.length);
}

/** Bytes of a sparse member's data in the archive (before the padding to a whole block). */
export const storedBytes = (regions: readonly SparseRegion[]): number =>
  regions.reduce((n, r) => n + r.length, 0);

/**
 * The map as GNU tar writes it: the regions, ascending and apart, then `(realSize, 0)` when the
 * file does not end with data (tar truncates there), or that entry alone for a file of holes only.
 */
export function sparseMap(realSize: number, regions: readonly SparseRegion[]): SparseRegion[] {
  let end = 0;
  for (const r of regions) {
    if (r.length <= 0 || r.offset < end || r.offset + r.length > realSize) {
      throw new Error(`sparse regions out of order or past the end: ${r.offset}+${r.length}`);
    }
    end = r.offset + r.length;
  }
  return end === realSize && regions.length > 0
    ? [...regions]
    : [...regions, { offset: realSize, length: 0 }];
}

/**
 * The header blocks of sparse member `name` (mode 0600, owned by root) of a file of `realSize`
 * bytes whose data is `regions`: the member's data that follows is `storedBytes(regions)` long.
 */
export function gnuSparseHeaders(
  name: string,
  options: { realSize: number; regions: readonly SparseRegion[]; mtimeMs: number },
): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`archive member name too long: ${name}`);
  const map = sparseMap(options.realSize, options.regions);
  const extensions = Math.max(0, Math.ceil((map.length - IN_HEADER) / IN_EXTENSION));
  const out = Buffer.alloc(BLOCK * (1 + extensions));
  const h = out.subarray(0, BLOCK);
  h.write(name, 0, 100, 'utf8');
  writeNumber(h, 100, 8, 0o600);
  writeNumber(h, 108, 8, 0);
  writeNumber(h, 116, 8, 0);
  writeNumber(h, 124, 12, storedBytes(map));
  writeNumber(h, 136, 12, Math.floor(options.mtimeMs / 1000));
  h.write('S', 156, 1, 'ascii');
  // GNU's magic and version: "ustar  \0".
  h.write('ustar ', 257, 6, 'ascii');
  h.write(' \0', 263, 2, 'ascii');
  h.write('root', 265, 32, 'ascii');
  h.write('root', 297, 32, 'ascii');
  map.slice(0, IN_HEADER).forEach((r, i) => {
    writeEntry(h, SPARSE_AT + i * ENTRY_BYTES, r);
  });
  h[IS_EXTENDED_AT] = extensions > 0 ? 1 : 0;
  writeNumber(h, REAL_SIZE_AT, 12, options.realSize);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  for (let x = 0; x < extensions; x++) {
    const block = out.subarray(BLOCK * (1 + x), BLOCK * (2 + x));
    const first = IN_HEADER + x * IN_EXTENSION;
    map.slice(first, first + IN_EXTENSION).forEach((r, i) => {
      writeEntry(block, i * ENTRY_BYTES, r);
    });
    block[EXTENSION_IS_EXTENDED_AT] = x < extensions - 1 ? 1 : 0;
  }
  return out;
}
