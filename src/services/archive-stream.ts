import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ownsItsMemory, releaseChunk } from '../api/chunk-memory.ts';
import { invalidArgument, TrivisorError } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { hashedOnTheWay, offloadedSha256, sharedBuffer } from '../host/sha256-offload.ts';
import {
  ArchiveDamaged,
  type Digest,
  memberOf,
  parseTarHeader,
  tarPadding,
} from '../storage/backup-archive.ts';
import { writeThroughFifo } from '../storage/fifo-stream.ts';
import type { BackupManifest } from '../storage/storage-records.ts';

/**
 * Reading a backup archive front to back as it arrives (an upload), so that an import unpacks
 * while the upload runs instead of after it (issue 20 §1, decision 0085). An archive made since
 * then starts with `index.json`: what the manifest says of the guest (model, configuration,
 * image, snapshots), known before the export starts; the manifest, with the checksums computed
 * on the way, still comes last and is checked once the payloads have gone by.
 */

/** The first member of an archive written since decision 0085's streamed import: the manifest without its checksums. */
export interface BackupIndex {
  format: BackupManifest['format'];
  guest: BackupManifest['guest'];
  image: BackupManifest['image'];
  snapshots: BackupManifest['snapshots'];
  /** An incremental export: its link is known only at its end, so its import reads the whole file first. */
  incremental?: true;
}

/** An upload being read: the archive's index, and the reader standing after it. */
export interface Upload {
  index: BackupIndex;
  reader: TarStreamReader;
}

/** The name of the index member. */
export const INDEX_MEMBER = 'index.json';

/** An index is a few KiB; anything far larger is not one. */
const MAX_INDEX_BYTES = 16 * 2 ** 20;

const BLOCK = 512;

/** A member of an archive being read from a stream: its data must be read (or is skipped) before the next. */
export interface StreamMember {
  name: string;
  type: 'file' | 'directory';
  size: number;
}

/** An upload that brings no byte for this long while the daemon waits for one fails (decision 0106, amended). */
export const UPLOAD_IDLE_MS = 300_000;

/** The one-line failure of an upload that went silent for `idleMs`. */
export function uploadStalled(idleMs: number): TrivisorError {
  const span = idleMs >= 1000 ? `${Math.round(idleMs / 1000)} s` : `${idleMs} ms`;
  return invalidArgument(`The upload stopped: no bytes for ${span}; send the archive again`);
}

/**
 * An upload's body that is never waited on for ever (decision 0106, amended). A wait for its next
 * chunk that lasts `idleMs` fails with `uploadStalled`, and `stop` (a cancel: `stopOn`) fails the
 * wait under way at once, and every read after it. Only the time spent waiting on the client
 * counts: a consumer slow to ask (tar on a busy disk, the body paused meanwhile) is not the
 * client's silence, which a socket's idle timeout could not tell apart. Its connection is left
 * to the route, whose answer closes it. One read at a time.
 */
export class GuardedUpload implements AsyncIterable<Buffer>, AsyncIterator<Buffer> {
  private readonly source: AsyncIterator<Buffer>;
  private readonly idleMs: number;
  private stopped: unknown;
  /** Fails the read under way, while one is. */
  private waiting: ((reason: unknown) => void) | undefined;
  /** One timer, restarted by each read (16,000 reads a GiB: no new timer each). */
  private timer: NodeJS.Timeout | undefined;

  constructor(body: AsyncIterable<Buffer>, idleMs = UPLOAD_IDLE_MS) {
    this.source = body[Symbol.asyncIterator]();
    this.idleMs = idleMs;
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return this;
  }

  next(): Promise<IteratorResult<Buffer>> {
    if (this.stopped !== undefined) return Promise.reject(this.stopped);
    const next = this.source.next();
    return new Promise<IteratorResult<Buffer>>((resolve, reject) => {
      this.waiting = reject;
      if (this.timer) this.timer.refresh();
      else {
        this.timer = setTimeout(() => {
          if (this.waiting) this.stop(uploadStalled(this.idleMs));
        }, this.idleMs);
        this.timer.unref();
      }
      // A read given up (stopped) settles later, or never: its outcome is dropped.
      next.then(
        (r) => {
          if (this.waiting === reject) this.waiting = undefined;
          if (r.done) this.disarm();
          resolve(r);
        },
        (e: unknown) => {
          if (this.waiting === reject) this.waiting = undefined;
          this.disarm();
          reject(e);
        },
      );
    });
  }

  /** Fails the read under way and every later one with `reason`. */
  stop(reason: unknown): void {
    if (this.stopped !== undefined) return;
    this.stopped = reason;
    this.disarm();
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.(reason);
  }

  private disarm(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Stops the upload, as a cancelled import, when `signal` aborts. */
  stopOn(signal: AbortSignal): void {
    const cancel = () => this.stop(new TrivisorError('Cancelled', 'The import was cancelled'));
    if (signal.aborted) cancel();
    else signal.addEventListener('abort', cancel, { once: true });
  }
}

/** Reads a tar archive from a stream, member by member; the stream's chunks are handed on without copies. */
export class TarStreamReader {
  private readonly source: AsyncIterator<Buffer>;
  /** The upload under the source, stopped by a cancel (`stopOn`). */
  private readonly upload: GuardedUpload;
  /** What failed the source: every later read fails the same way (a cancel is not an archive cut short). */
  private failure: unknown;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private ended = false;
  /** Bytes of the current member's data (and padding) not yet read. */
  private left = 0;
  private leftPadding = 0;
  /** With `release`: the source's chunks that are whole buffers, given back once read. */
  private owned: WeakSet<ArrayBuffer> | undefined;
  /** Chunks read to their end, released when the next bytes are asked for (the last stays valid until then). */
  private retired: ArrayBuffer[] = [];

  /**
   * `release`: the source's chunks are the reader's alone (an HTTP request's body): each is
   * released (`releaseChunk`) once read, and a chunk handed out by `data()` is valid only until
   * the next is asked for. Without it, chunks are left to the garbage collector.
   */
  constructor(source: AsyncIterable<Buffer>, options: { release?: boolean; upload?: GuardedUpload } = {}) {
    // `upload`: the guarded body under `source` (readArchiveHead's); else the source is guarded here.
    this.upload = options.upload ?? new GuardedUpload(source);
    this.source = options.upload ? source[Symbol.asyncIterator]() : this.upload;
    if (options.release) this.releaseChunks();
  }

  /** A cancel: the read waiting for upload bytes fails at once (as Cancelled), and every read after it. */
  stopOn(signal: AbortSignal): void {
    this.upload.stopOn(signal);
  }

  /** The source's next chunk; a failure is remembered, and thrown again by every later read. */
  private async pull(): Promise<IteratorResult<Buffer>> {
    if (this.failure !== undefined) throw this.failure;
    try {
      return await this.source.next();
    } catch (e) {
      this.failure = e ?? new Error('the upload failed');
      throw e;
    }
  }

  /** Releases the chunks the source hands over from now on (as with `release`): those read before are left alone. */
  releaseChunks(): void {
    this.owned ??= new WeakSet();
  }

  private releaseRetired(): void {
    for (const buffer of this.retired) releaseChunk(buffer);
    this.retired = [];
  }

  private async more(): Promise<boolean> {
    if (this.ended) return false;
    const r = await this.pull();
    if (r.done) {
      this.ended = true;
      return false;
    }
    if (r.value.length > 0) {
      if (this.owned && ownsItsMemory(r.value)) this.owned.add(r.value.buffer);
      this.pending.push(r.value);
      this.pendingBytes += r.value.length;
    }
    return true;
  }

  /** The next `n` bytes (a header: small), or undefined when the stream ends first. */
  private async take(n: number): Promise<Buffer | undefined> {
    this.releaseRetired();
    while (this.pendingBytes < n) if (!(await this.more())) return undefined;
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const head = this.pending[0] as Buffer;
      const k = Math.min(head.length, n - at);
      head.copy(out, at, 0, k);
      at += k;
      this.drop(k);
    }
    return out;
  }

  private drop(n: number): void {
    const head = this.pending[0] as Buffer;
    if (n === head.length) {
      this.pending.shift();
      if (this.owned?.has(head.buffer as ArrayBuffer)) this.retired.push(head.buffer as ArrayBuffer);
    } else this.pending[0] = head.subarray(n);
    this.pendingBytes -= n;
  }

  /** The next chunk of the current member's data, or undefined at its end. */
  private async nextChunk(): Promise<Buffer | undefined> {
    this.releaseRetired();
    if (this.left === 0) return undefined;
    if (this.pendingBytes === 0 && !(await this.more())) {
      throw new ArchiveDamaged('the upload ends in the middle of a member');
    }
    const head = this.pending[0] as Buffer;
    const k = Math.min(head.length, this.left);
    const chunk = head.subarray(0, k);
    this.drop(k);
    this.left -= k;
    return chunk;
  }

  /** The current member's data, chunk by chunk (each valid as long as the caller keeps it; with `release`, until the next is asked for). */
  async *data(): AsyncGenerator<Buffer> {
    for (;;) {
      const chunk = await this.nextChunk();
      if (!chunk) return;
      yield chunk;
    }
  }

  /** Skips what is left of the current member and its padding. */
  private async finishMember(): Promise<void> {
    while (await this.nextChunk());
    if (this.leftPadding > 0) {
      if (!(await this.take(this.leftPadding))) {
        throw new ArchiveDamaged('the upload ends in the middle of a member');
      }
      this.leftPadding = 0;
    }
  }

  /**
   * The next member, or undefined at the end-of-archive block. Refuses a damaged header and a
   * stream that ends before the end-of-archive block. GNU long names and pax headers are read as
   * `listArchive` reads them.
   */
  async next(): Promise<StreamMember | undefined> {
    await this.finishMember();
    let longName: string | undefined;
    for (;;) {
      const header = await this.take(BLOCK);
      if (!header) throw new ArchiveDamaged('the upload ends before the end-of-archive block');
      const parsed = parseTarHeader(header);
      if (!parsed) return undefined;
      this.left = parsed.size;
      this.leftPadding = tarPadding(parsed.size);
      if (parsed.flag === 'L' || parsed.flag === 'x' || parsed.flag === 'g') {
        const data = await this.readSmall(parsed.size, MAX_INDEX_BYTES);
        if (parsed.flag === 'L') {
          const end = data.indexOf(0);
          longName = data.toString('utf8', 0, end < 0 ? data.length : end);
        }
        await this.finishMember();
        continue;
      }
      const member = memberOf(longName ?? parsed.name, parsed.flag, 0, parsed.size);
      if (member.type === 'directory') this.left = 0;
      return { name: member.name, type: member.type, size: member.size };
    }
  }

  /** The current member's data whole (the index, the manifest), refusing one larger than `limit`. */
  async readSmall(size: number, limit: number): Promise<Buffer> {
    if (size > limit) throw new ArchiveDamaged(`a member is larger than ${limit} bytes`);
    const parts: Buffer[] = [];
    for await (const chunk of this.data()) parts.push(Buffer.from(chunk));
    return Buffer.concat(parts);
  }

  /** Reads whatever follows the end-of-archive block (a tar's record padding) to the end of the stream. */
  async drain(): Promise<void> {
    this.pending = [];
    this.pendingBytes = 0;
    while (await this.more()) {
      this.pending = [];
      this.pendingBytes = 0;
    }
  }

  /** Everything not read yet, in order: what the reader holds, then the rest of the stream. */
  async *rest(): AsyncGenerator<Buffer> {
    const held = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    yield* held;
    for (;;) {
      const r = await this.pull();
      if (r.done) return;
      yield r.value;
    }
  }
}

/**
 * The start of an uploaded archive: its index when it has one (`reader` then stands after it),
 * else the whole upload again (`all`: the bytes read so far, then the rest), for the file path.
 */
export type ArchiveHead =
  | { index: BackupIndex; reader: TarStreamReader }
  | { index: undefined; all: AsyncIterable<Buffer> };

/**
 * Reads the first member of an uploaded archive. An archive without an index (made before it, or
 * re-packed by hand) or that is not a tar at all is handed back whole, to be written to a file and
 * read as before, where its faults are named. `release`: the body's chunks are the daemon's alone
 * (a request's), and those of a streamed import are released once read (TarStreamReader's).
 */
export async function readArchiveHead(
  body: AsyncIterable<Buffer>,
  options: { release?: boolean } = {},
): Promise<ArchiveHead> {
  // Never waited on for ever, here or in the reader, and stopped by the import's cancel (`stopOn`).
  const upload = body instanceof GuardedUpload ? body : new GuardedUpload(body);
  const iterator: AsyncIterator<Buffer> = upload;
  // Every chunk taken until the index is read, to hand the upload back whole when it is not streamed.
  const taken: Buffer[] = [];
  let recording = true;
  const pull = async (): Promise<IteratorResult<Buffer>> => {
    const r = await iterator.next();
    if (!r.done && recording) taken.push(r.value);
    return r;
  };
  const rest = async function* (): AsyncGenerator<Buffer> {
    for (;;) {
      const r = await iterator.next();
      if (r.done) return;
      yield r.value;
    }
  };
  /** The upload from its first byte: what was taken, then the rest. */
  const whole = (): AsyncIterable<Buffer> => {
    recording = false;
    return (async function* () {
      yield* taken;
      yield* rest();
    })();
  };
  let firstBytes = 0;
  while (firstBytes < BLOCK) {
    const r = await pull();
    if (r.done) break;
    firstBytes += r.value.length;
  }
  const header = Buffer.concat(taken).subarray(0, BLOCK);
  let named: string | undefined;
  try {
    named = header.length === BLOCK ? parseTarHeader(header)?.name : undefined;
  } catch {
    named = undefined;
  }
  if (named !== INDEX_MEMBER) return { index: undefined, all: whole() };
  const reader = new TarStreamReader(
    (async function* () {
      yield* [...taken];
      for (;;) {
        const r = await pull();
        if (r.done) return;
        yield r.value;
      }
    })(),
    { upload },
  );
  const member = await reader.next();
  if (member?.type !== 'file') throw new ArchiveDamaged('its index.json is not a file');
  const index = parseIndex(await reader.readSmall(member.size, MAX_INDEX_BYTES));
  // An incremental link is checked whole before it touches the guest it goes onto (and its link
  // is known only from the manifest): it is read from a file.
  if (index.incremental) return { index: undefined, all: whole() };
  recording = false;
  taken.length = 0;
  // The chunks taken so far may still be handed back whole (above): only those after are released.
  if (options.release) reader.releaseChunks();
  return { index, reader };
}

function parseIndex(data: Buffer): BackupIndex {
  let index: BackupIndex;
  try {
    index = JSON.parse(data.toString('utf8')) as BackupIndex;
  } catch {
    throw new ArchiveDamaged('its index.json is not readable');
  }
  if (index?.format !== 'trivisor-backup/1') {
    throw new ArchiveDamaged(
      `its backup format ${JSON.stringify(index?.format)} is not known to this daemon`,
    );
  }
  if (!index.guest || !index.image || !Array.isArray(index.snapshots)) {
    throw new ArchiveDamaged('its index.json lacks the guest, its image or its snapshots');
  }
  return index;
}

/** The index of a manifest (what an export writes first). */
export function indexOf(
  manifest: Omit<BackupManifest, 'files' | 'createdAt'>,
  incremental: boolean,
): BackupIndex {
  return {
    format: manifest.format,
    guest: manifest.guest,
    image: manifest.image,
    snapshots: manifest.snapshots,
    ...(incremental && { incremental: true }),
  };
}

/** Whether the manifest at an archive's end says of the guest what its index said at the start. */
export function indexMatches(index: BackupIndex, manifest: BackupManifest): boolean {
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  return (
    same(index.guest, manifest.guest) &&
    same(index.image, manifest.image) &&
    same(index.snapshots, manifest.snapshots) &&
    manifest.incremental === undefined
  );
}

/** What feeding one streamed payload gave: its digest, and the consumer's failure if it failed. */
export interface StreamedPayload {
  digest: Digest;
  failure?: unknown;
}

/**
 * Feeds the reader's current member to `consume` (a driver's importTar, given a FIFO's path),
 * hashing it on the way; with `skip`, only hashes it (a guest already doomed). A consumer that
 * fails does not stop the reading: the rest of the member is hashed, so that the caller can tell
 * a damaged payload (its checksum, known from the manifest at the end) from a failing driver.
 * A stream that ends or breaks mid-member is thrown as the archive's fault; a cancel as one.
 */
export async function feedStreamedPayload(options: {
  reader: TarStreamReader;
  rel: string;
  work: string;
  runner: ProcessRunner;
  signal: AbortSignal;
  onBytes?: (n: number) => void;
  consume: (path: string) => Promise<unknown>;
  skip?: boolean;
  /** Bytes of each batch (tests); default 4 MiB. */
  batchBytes?: number;
}): Promise<StreamedPayload> {
  const { reader, signal } = options;
  // Hashed in a worker thread, over the batches in shared memory (src/host/sha256-offload.ts).
  const hash = offloadedSha256();
  let size = 0;
  const observe = (chunk: Buffer) => {
    signal.throwIfAborted();
    size += chunk.length;
    options.onBytes?.(chunk.length);
  };
  let streamError: unknown;
  const chunks = hashedOnTheWay(
    (async function* () {
      try {
        yield* batched(reader.data(), options.batchBytes);
      } catch (e) {
        streamError = e ?? new Error('the upload failed');
        throw e;
      }
    })(),
    hash,
  );
  let failure: unknown;
  try {
    if (options.skip) {
      try {
        for await (const chunk of chunks) observe(chunk);
      } catch (e) {
        failure = e;
      }
    } else {
      const fifo = join(options.work, options.rel.replaceAll('/', '-'));
      await options.runner.run(['mkfifo', '-m', '0600', fifo]);
      failure = await writeThroughFifo(fifo, options.consume, chunks, observe).then(
        () => undefined,
        (e: unknown) => e ?? new Error('failed'),
      );
      await rm(fifo, { force: true });
    }
    if (signal.aborted) throw new TrivisorError('Cancelled', 'The import was cancelled');
    if (streamError !== undefined) throw uploadFault(streamError);
    // Throws if the hashing itself failed (the thread), which is no fault of the upload's.
    const sha256 = await hash.digest();
    return {
      digest: { sha256, sizeBytes: size },
      ...(failure !== undefined && { failure }),
    };
  } finally {
    hash.discard();
  }
}

/** Bytes of each write of a streamed payload into its FIFO (and of each of the sha256 thread's updates). */
const BATCH_BYTES = 4 << 20;

/**
 * The upload's chunks (64 KiB from the socket) gathered into 4 MiB batches, in two reused buffers
 * filled in turn (decision 0106): one batch is with the consumer (its FIFO write, its hash) while
 * the upload goes on into the other, and a buffer is filled again only once the consumer has asked
 * past the batch it held. A FIFO write per socket chunk, each a trip through libuv's thread pool,
 * made a streamed pvm import slower than the same payload fed from a file (measured on a loaded
 * host); 1 MiB batches in one buffer (before 0106) stopped the upload during each write, and cost
 * a sha256 message and a write's dispatch per MiB. A batch is valid until the next is asked for.
 */
async function* batched(chunks: AsyncIterable<Buffer>, batchBytes = BATCH_BYTES): AsyncGenerator<Buffer> {
  // In shared memory, so that the sha256 thread reads each batch in place.
  const buffers = [sharedBuffer(batchBytes), sharedBuffer(batchBytes)];
  const source = chunks[Symbol.asyncIterator]();
  /** What is left of the source's current chunk (valid until the next is asked for). */
  let rest: Buffer = Buffer.alloc(0);
  let ended = false;
  /** Fills `buffer` from the source: the part filled, empty once the source has ended. */
  const fill = async (buffer: Buffer): Promise<Buffer> => {
    let filled = 0;
    while (filled < buffer.length) {
      if (rest.length === 0) {
        if (ended) break;
        const r = await source.next();
        if (r.done) {
          ended = true;
          break;
        }
        rest = r.value;
      }
      const n = rest.copy(buffer, filled);
      filled += n;
      rest = rest.subarray(n);
    }
    return buffer.subarray(0, filled);
  };
  let turn = 0;
  let filling = fill(buffers[turn] as Buffer);
  let finished = false;
  try {
    for (;;) {
      const batch = await filling;
      if (batch.length === 0) {
        finished = true;
        return;
      }
      turn = 1 - turn;
      // The other buffer: the consumer asked past the batch it held there.
      filling = fill(buffers[turn] as Buffer);
      filling.catch(() => {});
      yield batch;
    }
  } finally {
    // A consumer that stopped early does not wait for the upload's next bytes: the filling under
    // way ends on its own (a cancel fails it at once: TarStreamReader.stopOn), and the import that
    // stopped reads the upload no more.
    if (!finished) filling.catch(() => {});
  }
}

/** An upload's tar that is damaged, cut short or broken off, in the words of a file's refusal. */
export function uploadFault(e: unknown): TrivisorError {
  if (e instanceof TrivisorError) return e;
  const why = e instanceof ArchiveDamaged ? e.message : 'the upload was broken off';
  return invalidArgument(`The backup archive is corrupted or truncated (${why}): make the export again`);
}
