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
