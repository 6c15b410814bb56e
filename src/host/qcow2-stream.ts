import { type FileHandle, open } from 'node:fs/promises';
import type { ProcessRunner } from './runner.ts';

/**
 * A flat qcow2 (no backing file, no snapshots, no bitmaps) of a disk and its backing chain,
 * written in one sequential pass without a seekable target: the layout is planned first from
 * `qemu-img map` (which clusters hold data), then the metadata (header, L1 table, refcounts,
 * L2 tables) and the data clusters in guest order are produced as bytes, read straight from
 * the chain's files at the offsets the map gives. `qemu-img convert` needs a file to write
 * and tar then reads it again: this removes that write and read (decision 0085).
 */

const CLUSTER_BITS = 16;
/** Bytes of one qcow2 cluster (the default, 64 KiB). */
export const CLUSTER_BYTES = 1 << CLUSTER_BITS;
/** Refcount entries are 16 bits (refcount_order 4, QEMU's default). */
const REFCOUNTS_PER_BLOCK = CLUSTER_BYTES / 2;
const L2_ENTRIES = CLUSTER_BYTES / 8;
/** L1 and L2 entries of a cluster whose refcount is exactly one. */
const COPIED = 1n << 63n;
/** Bytes read from the chain's files at a time (the clusters of one batch). */
const BATCH_CLUSTERS = 32;

/** One extent of `qemu-img map --output=json`. */
export interface MapExtent {
  start: number;
  length: number;
  depth: number;
  data: boolean;
  zero: boolean;
  present?: boolean;
  /** Byte offset in the file of layer `depth`: absent for compressed or encrypted clusters. */
  offset?: number;
}

/** The layout of a flat qcow2: its metadata clusters, then the listed guest clusters' data in order. */
export interface FlatQcow2Plan {
  virtualSizeBytes: number;
  /** Header, L1 table, refcount table, refcount blocks and L2 tables: whole clusters. */
  metadata: Buffer;
  /** Guest cluster indexes that hold data, ascending: written after the metadata, one cluster each. */
  clusters: number[];
  /** Bytes of the whole image: metadata and data clusters. */
  sizeBytes: number;
}

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);

/** Guest clusters that any extent with data (not read as zeros) touches, ascending. */
export function dataClusters(extents: readonly MapExtent[]): number[] {
  const out: number[] = [];
  for (const e of extents) {
    if (!e.data || e.zero || e.present === false || e.length <= 0) continue;
    const first = Math.floor(e.start / CLUSTER_BYTES);
    const last = Math.floor((e.start + e.length - 1) / CLUSTER_BYTES);
    for (let c = first; c <= last; c++) if (out.at(-1) !== c) out.push(c);
  }
  return out;
}

/** Plans a flat qcow2 (version 3, 64 KiB clusters, 16-bit refcounts) of `virtualSizeBytes` holding `clusters`. */
export function planFlatQcow2(virtualSizeBytes: number, clusters: readonly number[]): FlatQcow2Plan {
  const l1Entries = Math.max(1, ceilDiv(virtualSizeBytes, CLUSTER_BYTES * L2_ENTRIES));
  const l1Clusters = ceilDiv(l1Entries * 8, CLUSTER_BYTES);
  const l2Tables = [...new Set(clusters.map((c) => Math.floor(c / L2_ENTRIES)))];
  // The refcount blocks cover every cluster of the file, themselves and the refcount table included.
  let refcountBlocks = 1;
  let refcountTableClusters = 1;
  let total = 0;
  for (;;) {
    total = 1 + l1Clusters + refcountTableClusters + refcountBlocks + l2Tables.length + clusters.length;
    const blocks = ceilDiv(total, REFCOUNTS_PER_BLOCK);
    const tableClusters = ceilDiv(blocks * 8, CLUSTER_BYTES);
    if (blocks === refcountBlocks && tableClusters === refcountTableClusters) break;
    refcountBlocks = blocks;
    refcountTableClusters = tableClusters;
  }
  const l1At = 1;
  const refcountTableAt = l1At + l1Clusters;
  const refcountBlocksAt = refcountTableAt + refcountTableClusters;
  const l2At = refcountBlocksAt + refcountBlocks;
  const dataAt = l2At + l2Tables.length;
  const metadataClusters = dataAt;
  const metadata = Buffer.alloc(metadataClusters * CLUSTER_BYTES);
  const offsetOf = (cluster: number) => BigInt(cluster) * BigInt(CLUSTER_BYTES);

  metadata.write('QFI\xfb', 0, 'latin1');
  metadata.writeUInt32BE(3, 4); // version
  metadata.writeUInt32BE(CLUSTER_BITS, 20);
  metadata.writeBigUInt64BE(BigInt(virtualSizeBytes), 24);
  metadata.writeUInt32BE(l1Entries, 36);
  metadata.writeBigUInt64BE(offsetOf(l1At), 40);
  metadata.writeBigUInt64BE(offsetOf(refcountTableAt), 48);
  metadata.writeUInt32BE(refcountTableClusters, 56);
  metadata.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  metadata.writeUInt32BE(104, 100); // header_length; the header extensions' end marker follows as zeros

  for (let b = 0; b < refcountBlocks; b++) {
    metadata.writeBigUInt64BE(offsetOf(refcountBlocksAt + b), refcountTableAt * CLUSTER_BYTES + b * 8);
  }
  for (let c = 0; c < total; c++) metadata.writeUInt16BE(1, refcountBlocksAt * CLUSTER_BYTES + c * 2);
  l2Tables.forEach((table, i) => {
    metadata.writeBigUInt64BE(offsetOf(l2At + i) | COPIED, l1At * CLUSTER_BYTES + table * 8);
  });
  const l2Index = new Map(l2Tables.map((table, i) => [table, i]));
  clusters.forEach((c, i) => {
    const table = l2Index.get(Math.floor(c / L2_ENTRIES)) as number;
    const at = (l2At + table) * CLUSTER_BYTES + (c % L2_ENTRIES) * 8;
    metadata.writeBigUInt64BE(offsetOf(dataAt + i) | COPIED, at);
  });
  return { virtualSizeBytes, metadata, clusters: [...clusters], sizeBytes: total * CLUSTER_BYTES };
}

/** A disk ready to be streamed as a flat qcow2: its plan, its map and the files of its chain by depth. */
export interface FlatQcow2Source {
  plan: FlatQcow2Plan;
  extents: MapExtent[];
  layers: string[];
}

/**
 * Reads the map and the backing chain of a disk that nothing writes to (a stopped guest's), or
 * undefined when it cannot be streamed from its files (a compressed or encrypted cluster, a
 * layer that is neither qcow2 nor raw): the caller then converts it as before.
 */
export async function flatQcow2Source(
  runner: ProcessRunner,
  disk: string,
  format = 'qcow2',
): Promise<FlatQcow2Source | undefined> {
  const chain = JSON.parse(
    (await runner.run(['qemu-img', 'info', '--backing-chain', '--output=json', '-f', format, disk])).stdout,
  ) as Array<{ filename: string; format: string; 'virtual-size': number; encrypted?: boolean }>;
  if (chain.length === 0 || chain.some((l) => (l.format !== 'qcow2' && l.format !== 'raw') || l.encrypted))
    return undefined;
  const extents = JSON.parse(
    (await runner.run(['qemu-img', 'map', '--output=json', '-f', format, disk])).stdout,
  ) as MapExtent[];
  const virtualSizeBytes = chain[0]?.['virtual-size'] ?? 0;
  for (const e of extents) {
    if (e.data && !e.zero && e.present !== false && (e.offset === undefined || chain[e.depth] === undefined))
      return undefined;
  }
  const layers = chain.map((l) => l.filename);
  return { plan: planFlatQcow2(virtualSizeBytes, dataClusters(extents)), extents, layers };
}

/**
 * Hands the flat qcow2 of `source` to `write` in order: the metadata, then the data clusters,
 * read into two buffers used in turn (a buffer is filled again only once `write` has resolved
 * for it). `write` is called for the next chunk before the last call has resolved (at most two
 * outstanding), so the sink must keep the order of its calls, as a stream's write() does; one
 * that places chunks at offsets must take each chunk's offset when it is called. Stops with the
 * signal's reason when aborted.
 */
export async function streamFlatQcow2(
  source: FlatQcow2Source,
  write: (chunk: Buffer) => Promise<void>,
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  const { plan, extents, layers } = source;
  await write(plan.metadata);
  const files = new Map<number, FileHandle>();
  const fileOf = async (depth: number) => {
    let f = files.get(depth);
    if (!f) {
      f = await open(layers[depth] as string, 'r');
      files.set(depth, f);
    }
    return f;
  };
  const buffers = [
    Buffer.allocUnsafe(BATCH_CLUSTERS * CLUSTER_BYTES),
    Buffer.allocUnsafe(BATCH_CLUSTERS * CLUSTER_BYTES),
  ];
  const pending: Array<Promise<void>> = [Promise.resolve(), Promise.resolve()];
  const data = extents.filter((e) => e.data && !e.zero && e.present !== false && e.length > 0);
  let cursor = 0;
  /** Reads guest bytes [from, to) into `buffer` at `at`: zeros where no extent has data. */
  const fill = async (buffer: Buffer, at: number, from: number, to: number) => {
    buffer.fill(0, at, at + (to - from));
    while (
      cursor < data.length &&
      (data[cursor] as MapExtent).start + (data[cursor] as MapExtent).length <= from
    )
      cursor++;
    for (let i = cursor; i < data.length; i++) {
      const e = data[i] as MapExtent;
      if (e.start >= to) break;
      const a = Math.max(from, e.start);
      const b = Math.min(to, e.start + e.length);
      const file = await fileOf(e.depth);
      let done = 0;
      while (done < b - a) {
        const { bytesRead } = await file.read(
          buffer,
          at + (a - from) + done,
          b - a - done,
          (e.offset as number) + (a - e.start) + done,
        );
        if (bytesRead === 0) break; // past the end of a raw layer: zeros
        done += bytesRead;
      }
    }
  };
  try {
    let turn = 0;
    for (let i = 0; i < plan.clusters.length; i += BATCH_CLUSTERS) {
      options.signal?.throwIfAborted();
      const buffer = buffers[turn] as Buffer;
      await pending[turn];
      const batch = plan.clusters.slice(i, i + BATCH_CLUSTERS);
      // Runs of guest-contiguous clusters are read with one read per extent they cross.
      let j = 0;
      while (j < batch.length) {
        let k = j + 1;
        while (k < batch.length && (batch[k] as number) === (batch[k - 1] as number) + 1) k++;
        const from = (batch[j] as number) * CLUSTER_BYTES;
        await fill(buffer, j * CLUSTER_BYTES, from, from + (k - j) * CLUSTER_BYTES);
        j = k;
      }
      pending[turn] = write(buffer.subarray(0, batch.length * CLUSTER_BYTES));
      pending[turn]?.catch(() => {});
      turn = 1 - turn;
    }
    await Promise.all(pending);
  } finally {
    for (const f of files.values()) await f.close();
  }
}
