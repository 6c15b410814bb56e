import { createHash } from 'node:crypto';
import { open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArgument } from '../../core/errors.ts';
import type { PortableChainState } from '../guest-storage.ts';
import { type CowLayout, cowLayoutOf, sectorMarked as marked, readUmlCowHeader } from './uml-cow.ts';

export { type CowLayout, cowLayoutOf };

/**
 * Incremental backups of pvm disks by block checksums
 * (docs/decisions/0048-ct-incremental-backups.md, pvm section): each backup
 * keeps the sha256 of every block of the flat disk it archived; the next one
 * archives only the blocks whose checksum differs. UML's COW bitmap marks what
 * was ever written since the COW file was made, not since a backup, so it
 * cannot say what changed; but a block none of whose sectors it marks is the
 * base disk's, which never changes: only the marked blocks are read and
 * hashed (decision 0067), not the whole disk.
 */
export const PVM_BLOCK_BYTES = 1024 * 1024;
/** Per guest: the chain of its last incremental backup, and the checksum file it continues from. */
export const PVM_CHAIN_FILE = 'backup-chain.json';
/** Per guest: which backup of which chain its disk was last restored to, and the disk's stamp then. */
export const PVM_RESTORED_CHAIN_FILE = 'restored-chain.json';
const SUMS_PREFIX = 'backup-chain-';
const SUMS_NAME = /^backup-chain-[0-9a-f]{16}-\d+\.sums$/;
const CHAIN_ID = /^[0-9a-f]{16}$/;
const HASH_BYTES = 32;

/** The guest's own chain: its last link, the disk size then, and the file of block checksums after it. */
export interface PvmChainState {
  chain: string;
  sequence: number;
  sizeBytes: number;
  sums: string;
}

/** What an incremental link's `disk.blocks` holds: the listed blocks of a disk of `sizeBytes`, in order. */
export interface BlockList {
  blockBytes: number;
  sizeBytes: number;
  blocks: number[];
}

export const sumsNameOf = (link: { chain: string; sequence: number }): string =>
  `${SUMS_PREFIX}${link.chain}-${link.sequence}.sums`;

/** Bytes of block `index` of a disk of `sizeBytes` (the last one may be short). */
export function blockLength(index: number, sizeBytes: number, blockBytes = PVM_BLOCK_BYTES): number {
  return Math.max(0, Math.min(blockBytes, sizeBytes - index * blockBytes));
}

/** The sha256 of each block of a file, concatenated. */
export async function blockSums(path: string, blockBytes = PVM_BLOCK_BYTES): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const { size } = await handle.stat();
    const count = Math.ceil(size / blockBytes);
    const out = Buffer.alloc(count * HASH_BYTES);
    const buf = Buffer.alloc(blockBytes);
    for (let i = 0; i < count; i++) {
      const want = blockLength(i, size, blockBytes);
      const { bytesRead } = await handle.read(buf, 0, want, i * blockBytes);
      createHash('sha256')
        .update(buf.subarray(0, bytesRead))
        .digest()
        .copy(out, i * HASH_BYTES);
    }
    return out;
  } finally {
    await handle.close();
  }
}

/**
 * The sha256 of each block of a disk of `sizeBytes` whose data is handed over in disk order,
 * stretch by stretch (`add`): what lies between stretches, and after the last one, is zeros (a
 * hole), hashed without being read; `finish` answers the checksums as blockSums gives them.
 */
export function blockSummer(
  sizeBytes: number,
  blockBytes = PVM_BLOCK_BYTES,
): { add: (offset: number, data: Buffer) => void; finish: () => Buffer } {
  const out = Buffer.alloc(Math.ceil(sizeBytes / blockBytes) * HASH_BYTES);
  const zeros = Buffer.alloc(blockBytes);
  const zeroBlockSum = createHash('sha256').update(zeros).digest();
  let hash = createHash('sha256');
  let pos = 0;
  const feed = (data: Buffer) => {
    let at = 0;
    while (at < data.length) {
      const index = Math.floor(pos / blockBytes);
      const blockEnd = Math.min((index + 1) * blockBytes, sizeBytes);
      const n = Math.min(data.length - at, blockEnd - pos);
      if (n <= 0) throw new Error(`data past the end of a disk of ${sizeBytes} bytes`);
      hash.update(data.subarray(at, at + n));
      pos += n;
      at += n;
      if (pos === blockEnd) {
        hash.digest().copy(out, index * HASH_BYTES);
        hash = createHash('sha256');
      }
    }
  };
  const holeTo = (to: number) => {
    if (to > sizeBytes) throw new Error(`data past the end of a disk of ${sizeBytes} bytes`);
    while (pos < to) {
      const index = Math.floor(pos / blockBytes);
      const blockEnd = Math.min((index + 1) * blockBytes, sizeBytes);
      if (pos === index * blockBytes && blockEnd === pos + blockBytes && blockEnd <= to) {
        zeroBlockSum.copy(out, index * HASH_BYTES);
        pos = blockEnd;
        continue;
      }
      feed(zeros.subarray(0, Math.min(to, blockEnd) - pos));
    }
  };
  return {
    add(offset, data) {
      if (offset < pos) throw new Error(`disk data out of order at ${offset}`);
      holeTo(offset);
      feed(data);
    },
    finish() {
      holeTo(sizeBytes);
      return out;
    },
  };
}

/** Indices of the blocks whose checksums differ (both lists of the same disk size). */
export function changedBlocks(before: Buffer, after: Buffer): number[] {
  if (before.length !== after.length) throw new Error('Block lists of different disk sizes');
  const changed: number[] = [];
  for (let i = 0; i * HASH_BYTES < after.length; i++) {
    const a = before.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
    const b = after.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
    if (!a.equals(b)) changed.push(i);
  }
  return changed;
}

/** Writes the listed blocks of `disk`, in order, to `out`. */
export async function copyBlocks(disk: string, list: BlockList, out: string): Promise<void> {
  const from = await open(disk, 'r');
  const to = await open(out, 'w', 0o600);
  try {
    const buf = Buffer.alloc(list.blockBytes);
    for (const i of list.blocks) {
      const len = blockLength(i, list.sizeBytes, list.blockBytes);
      const { bytesRead } = await from.read(buf, 0, len, i * list.blockBytes);
      if (bytesRead !== len) throw new Error(`Short read of block ${i} of ${disk}`);
      await to.write(buf, 0, len);
    }
  } finally {
    await to.close();
    await from.close();
  }
}

/** Writes the blocks of `blocksFile` into `disk` at their places. */
export async function applyBlocks(disk: string, list: BlockList, blocksFile: string): Promise<void> {
  const from = await open(blocksFile, 'r');
  const to = await open(disk, 'r+');
  try {
    const buf = Buffer.alloc(list.blockBytes);
    let at = 0;
    for (const i of list.blocks) {
      const len = blockLength(i, list.sizeBytes, list.blockBytes);
      const { bytesRead } = await from.read(buf, 0, len, at);
      if (bytesRead !== len) throw invalidArgument('The archive holds fewer blocks than it lists.');
      at += len;
      await to.write(buf, 0, len, i * list.blockBytes);
    }
    await to.sync();
  } finally {
    await to.close();
    await from.close();
  }
}

/**
 * Parses and checks a link's block list against the disk it goes onto:
 * the same size, the block size this code writes, indices in order and in
 * range, and a blocks file of exactly their length.
 */
export function parseBlockList(text: string, diskBytes: number, blocksFileBytes: number): BlockList {
  let v: Partial<BlockList>;
  try {
    v = JSON.parse(text) as Partial<BlockList>;
  } catch {
    throw invalidArgument('The archive has a damaged block list: make the export again.');
  }
  const { blockBytes, sizeBytes, blocks } = v;
  if (blockBytes !== PVM_BLOCK_BYTES || !Number.isSafeInteger(sizeBytes) || !Array.isArray(blocks)) {
    throw invalidArgument('The archive has a damaged block list: make the export again.');
  }
  if (sizeBytes !== diskBytes) {
    throw invalidArgument(
      `The incremental backup is of a disk of ${sizeBytes} bytes, the guest's has ${diskBytes}: import its chain from the full backup.`,
    );
  }
  const count = Math.ceil((sizeBytes as number) / blockBytes);
  let total = 0;
  let last = -1;
  for (const i of blocks) {
    if (!Number.isSafeInteger(i) || i <= last || i >= count) {
      throw invalidArgument('The archive has a damaged block list: make the export again.');
    }
    last = i;
    total += blockLength(i, sizeBytes as number, blockBytes);
  }
  if (total !== blocksFileBytes) {
    throw invalidArgument(
      'The archive holds fewer or more block bytes than it lists: make the export again.',
    );
  }
  return { blockBytes, sizeBytes: sizeBytes as number, blocks };
}

export function parsePvmChain(text: string): PvmChainState | undefined {
  try {
    const v = JSON.parse(text) as Partial<PvmChainState>;
    if (
      typeof v.chain === 'string' &&
      CHAIN_ID.test(v.chain) &&
      Number.isSafeInteger(v.sequence) &&
      (v.sequence ?? -1) >= 0 &&
      Number.isSafeInteger(v.sizeBytes) &&
      typeof v.sums === 'string' &&
      SUMS_NAME.test(v.sums)
    ) {
      return {
        chain: v.chain,
        sequence: v.sequence as number,
        sizeBytes: v.sizeBytes as number,
        sums: v.sums,
      };
    }
  } catch {
    // Not JSON: no chain.
  }
  return undefined;
}

/** The guest's chain with its block checksums, if both are there and agree. */
export async function readPvmChain(dir: string): Promise<{ state: PvmChainState; sums: Buffer } | undefined> {
  const state = parsePvmChain(await readFile(join(dir, PVM_CHAIN_FILE), 'utf8').catch(() => ''));
  if (!state) return undefined;
  const sums = await readFile(join(dir, state.sums)).catch(() => undefined);
  if (!sums || sums.length !== Math.ceil(state.sizeBytes / PVM_BLOCK_BYTES) * HASH_BYTES) return undefined;
  return { state, sums };
}

/** Makes `state` the guest's chain (one rename), then drops earlier checksum files. */
export async function commitPvmChain(dir: string, state: PvmChainState): Promise<void> {
  await writeAtomically(join(dir, PVM_CHAIN_FILE), state);
  await removeSums(dir, state.sums);
}

/**
 * The guest's chain as another member can take it over (decision 0062, amended): the disk's size
 * (8 bytes, big-endian) then the block checksums of its last link. Checksums of the content, not
 * of a file of this host: any disk of that size can be compared with them.
 */
export async function pvmChainState(dir: string): Promise<PortableChainState | undefined> {
  const chain = await readPvmChain(dir);
  if (!chain) return undefined;
  const size = Buffer.alloc(8);
  size.writeBigUInt64BE(BigInt(chain.state.sizeBytes));
  return {
    chain: chain.state.chain,
    sequence: chain.state.sequence,
    data: Buffer.concat([size, chain.sums]),
  };
}

/**
 * Makes a state of pvmChainState the guest's chain: its checksums file and record written as a
 * backup's are. False, with nothing written, for a state that is not one (wrong length, an id that
 * is not a chain's). The caller decides whether the disk may be compared with it (its whole
 * content read: see pvm-storage.ts).
 */
export async function continuePvmChain(dir: string, state: PortableChainState): Promise<boolean> {
  if (!CHAIN_ID.test(state.chain) || !Number.isSafeInteger(state.sequence) || state.sequence < 0)
    return false;
  if (state.data.length < 8) return false;
  const sizeBytes = Number(state.data.readBigUInt64BE(0));
  const sums = state.data.subarray(8);
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) return false;
  if (sums.length !== Math.ceil(sizeBytes / PVM_BLOCK_BYTES) * HASH_BYTES) return false;
  const name = sumsNameOf(state);
  await writeSums(dir, name, sums);
  await commitPvmChain(dir, { chain: state.chain, sequence: state.sequence, sizeBytes, sums: name });
  return true;
}

/** Forgets the guest's own chain and the one it was restored from: its disk is new. */
export async function forgetPvmChains(dir: string): Promise<void> {
  await rm(join(dir, PVM_CHAIN_FILE), { force: true });
  await rm(join(dir, PVM_RESTORED_CHAIN_FILE), { force: true });
  await removeSums(dir);
}

export async function readPvmRestored(
  dir: string,
): Promise<{ chain: string; sequence: number; stamp: string } | undefined> {
  try {
    const v = JSON.parse(await readFile(join(dir, PVM_RESTORED_CHAIN_FILE), 'utf8')) as {
      chain?: unknown;
      sequence?: unknown;
      stamp?: unknown;
    };
    if (typeof v.chain === 'string' && typeof v.sequence === 'number' && typeof v.stamp === 'string') {
      return { chain: v.chain, sequence: v.sequence, stamp: v.stamp };
    }
  } catch {
    // Missing or damaged: restored from no chain.
  }
  return undefined;
}

export async function writePvmRestored(
  dir: string,
  state: { chain: string; sequence: number; stamp: string },
): Promise<void> {
  await writeAtomically(join(dir, PVM_RESTORED_CHAIN_FILE), state);
}

async function removeSums(dir: string, keep?: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith(SUMS_PREFIX) && name.endsWith('.sums') && name !== keep) {
      await rm(join(dir, name), { force: true });
    }
  }
}

async function writeAtomically(path: string, value: unknown): Promise<void> {
  await writeFile(`${path}.tmp`, `${JSON.stringify(value)}\n`, { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}

export async function writeSums(dir: string, name: string, sums: Buffer): Promise<void> {
  await writeFile(join(dir, name), sums, { mode: 0o600 });
}

/** Blocks of the flat disk with at least one sector written to the COW file. */
export function markedBlocks(bitmap: Buffer, layout: CowLayout, blockBytes = PVM_BLOCK_BYTES): number[] {
  const perBlock = blockBytes / layout.sectorSize;
  const sectors = Math.ceil(layout.sizeBytes / layout.sectorSize);
  const out: number[] = [];
  for (let block = 0; block * perBlock < sectors; block++) {
    const first = block * perBlock;
    const last = Math.min(sectors, first + perBlock);
    // Whole bytes of the bitmap at once where they are zero (the common case).
    for (let n = first; n < last; ) {
      if ((n & 7) === 0 && n + 8 <= last && bitmap[n >> 3] === 0) {
        n += 8;
        continue;
      }
      if (marked(bitmap, n)) {
        out.push(block);
        break;
      }
      n++;
    }
  }
  return out;
}

/** What an incremental of a COW disk found: the changed blocks (written to a file), the new checksums, and bytes read. */
export interface CowIncrement {
  list: BlockList;
  sums: Buffer;
  readBytes: number;
}

/**
 * Finds the blocks of the flat disk (base disk under COW file) that changed since the
 * checksums `before` were taken, reading only the COW header and bitmap and the blocks
 * the bitmap marks; the changed ones are written, in order, to `blocksOut`.
 */
export async function cowChangedBlocks(
  cowPath: string,
  options: { before: Buffer; blocksOut: string },
): Promise<CowIncrement> {
  const header = await readUmlCowHeader(cowPath);
  const layout = cowLayoutOf(header);
  const count = Math.ceil(layout.sizeBytes / PVM_BLOCK_BYTES);
  if (options.before.length !== count * HASH_BYTES) throw new Error('Block checksums of another disk size');
  const cow = await open(cowPath, 'r');
  const base = await open(header.backingFile, 'r');
  const out = await open(options.blocksOut, 'w', 0o600);
  try {
    if ((await base.stat()).size < layout.sizeBytes) {
      throw new Error(`The base disk ${header.backingFile} is shorter than the COW file's disk`);
    }
    const bitmap = Buffer.alloc(layout.bitmapBytes);
    await readExactly(cow, bitmap, layout.bitmapOffset);
    let readBytes = layout.bitmapOffset + layout.bitmapBytes;
    const sums = Buffer.from(options.before);
    const blocks: number[] = [];
    const buf = Buffer.alloc(PVM_BLOCK_BYTES);
    const ss = layout.sectorSize;
    for (const i of markedBlocks(bitmap, layout)) {
      const len = blockLength(i, layout.sizeBytes);
      const first = (i * PVM_BLOCK_BYTES) / ss;
      const sectors = Math.ceil(len / ss);
      // Runs of sectors from the same file: the COW file where marked, the base disk elsewhere.
      for (let s = 0; s < sectors; ) {
        const fromCow = marked(bitmap, first + s);
        let e = s + 1;
        while (e < sectors && marked(bitmap, first + e) === fromCow) e++;
        const at = s * ss;
        const bytes = Math.min(len, e * ss) - at;
        const offset = fromCow ? layout.dataOffset + (first + s) * ss : (first + s) * ss;
        await readExactly(fromCow ? cow : base, buf.subarray(at, at + bytes), offset, !fromCow);
        readBytes += bytes;
        s = e;
      }
      const sum = createHash('sha256').update(buf.subarray(0, len)).digest();
      if (!sum.equals(options.before.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES))) {
        blocks.push(i);
        await out.write(buf, 0, len);
        sum.copy(sums, i * HASH_BYTES);
      }
    }
    return { list: { blockBytes: PVM_BLOCK_BYTES, sizeBytes: layout.sizeBytes, blocks }, sums, readBytes };
  } finally {
    await out.close();
    await base.close();
    await cow.close();
  }
}

/** Fills `buf` from `offset`; a COW file's sparse tail reads as zeros, a short base disk is an error. */
async function readExactly(
  handle: Awaited<ReturnType<typeof open>>,
  buf: Buffer,
  offset: number,
  strict = true,
): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await handle.read(buf, done, buf.length - done, offset + done);
    if (bytesRead === 0) {
      if (strict) throw new Error('Short read of a disk file');
      buf.fill(0, done);
      return;
    }
    done += bytesRead;
  }
}
