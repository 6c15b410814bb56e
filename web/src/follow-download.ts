/**
 * The browser's side of a followed backup download (`…/export?follow=true`, the frames of
 * src/api/follow-frames.ts, read here without Node's Buffer): the archive's bytes arrive while the
 * daemon's export writes them, and the file is put together in the browser's blob storage (which
 * keeps large blobs on disk, not in the page's memory). A member's tar header comes again at the
 * end, over its placeholder, so the bytes are not final until the end frame: only then is the
 * archive handed over to be saved. A failure frame (the export failed or was cancelled), a body
 * cut short, or bytes that do not add up to the size the end frame gives are errors, and nothing
 * is saved: never a truncated file that looks whole.
 */

const HEAD_BYTES = 13;
const DATA = 0x44;
const END = 0x45;
const FAILED = 0x58;
/** The largest frame accepted: data frames come 1 MiB at a time, a reason is a line. */
const MAX_FRAME_BYTES = 16 << 20;
/** Bytes gathered in the page before they are moved into a blob. */
const BATCH_BYTES = 16 << 20;

/** Puts a followed archive together from the body's chunks, in order. */
export class FollowAssembler {
  private head = new Uint8Array(HEAD_BYTES);
  private headFill = 0;
  private type = 0;
  private offset = 0;
  private left = -1;
  private frameBytes: Uint8Array[] = [];
  private frameFill = 0;
  private blobs: Blob[] = [];
  private pending: Uint8Array<ArrayBuffer>[] = [];
  private pendingBytes = 0;
  /** Bytes appended so far, from offset 0 without a gap. */
  private written = 0;
  /** Bytes written again below `written` (the header blocks), in the order they came. */
  private patches: Array<{ offset: number; bytes: Uint8Array<ArrayBuffer> }> = [];
  private result: { sizeBytes: number } | null = null;

  /** Bytes of the archive received so far. */
  get receivedBytes(): number {
    return this.written;
  }

  /** Reads one chunk of the body; throws the export's reason on a failure frame. */
  push(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.result) throw new Error('The download is damaged: bytes after the end of the archive');
      if (this.left < 0) {
        const n = Math.min(HEAD_BYTES - this.headFill, chunk.length - at);
        this.head.set(chunk.subarray(at, at + n), this.headFill);
        this.headFill += n;
        at += n;
        if (this.headFill < HEAD_BYTES) break;
        this.headFill = 0;
        const view = new DataView(this.head.buffer);
        this.type = view.getUint8(0);
        this.offset = Number(view.getBigUint64(1));
        this.left = view.getUint32(9);
        if (this.type !== DATA && this.type !== END && this.type !== FAILED) {
          throw new Error(`The download is damaged: an unknown frame type ${this.type}`);
        }
        if (this.left > MAX_FRAME_BYTES) throw new Error('The download is damaged: a frame too large');
        if (this.left === 0) this.frameDone();
        continue;
      }
      const n = Math.min(this.left, chunk.length - at);
      const bytes = chunk.slice(at, at + n);
      at += n;
      this.left -= n;
      if (this.type === DATA) this.data(this.offset, bytes);
      else {
        this.frameBytes.push(bytes);
        this.frameFill += n;
      }
      this.offset += n;
      if (this.left === 0) this.frameDone();
    }
  }

  /** The archive, once the body ended: throws when it ended without the end frame or short. */
  finish(): Blob {
    if (!this.result) throw new Error('The download stopped before the archive was complete');
    this.flush();
    let blob = new Blob(this.blobs);
    if (blob.size !== this.result.sizeBytes) {
      throw new Error(`The download ended with ${blob.size} of ${this.result.sizeBytes} bytes`);
    }
    for (const p of this.patches) {
      blob = new Blob([blob.slice(0, p.offset), p.bytes, blob.slice(p.offset + p.bytes.length)]);
    }
    return blob;
  }

  private frameDone(): void {
    const type = this.type;
    this.left = -1;
    if (type === DATA) return;
    const text = new TextDecoder().decode(concat(this.frameBytes, this.frameFill));
    this.frameBytes = [];
    this.frameFill = 0;
    if (type === FAILED) throw new Error(text || 'The export failed');
    // END: its offset is the archive's size.
    this.result = { sizeBytes: this.offset };
  }

  private data(offset: number, bytes: Uint8Array<ArrayBuffer>): void {
    if (offset > this.written) throw new Error('The download is damaged: a gap in the archive');
    const below = Math.min(bytes.length, this.written - offset);
    if (below > 0) this.patches.push({ offset, bytes: bytes.slice(0, below) });
    if (below < bytes.length) {
      const rest = bytes.subarray(below);
      this.pending.push(rest);
      this.pendingBytes += rest.length;
      this.written += rest.length;
      if (this.pendingBytes >= BATCH_BYTES) this.flush();
    }
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    this.blobs.push(new Blob(this.pending));
    this.pending = [];
    this.pendingBytes = 0;
  }
}

function concat(parts: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * How long a followed download may receive nothing once its export has ended: the daemon then
 * holds the whole archive (or the failure) and sends it at once, so a body silent this long is
 * stuck (the CLI's SILENT_AFTER_EXPORT_MS, src/cli/export-download.ts; issue 20).
 */
export const SILENT_AFTER_EXPORT_MS = 30_000;

/**
 * Reads a followed download's body to its end into an archive blob; `onBytes` hears the bytes
 * received so far. Throws the export's reason, or says how the download fell short. Once
 * `exportEnded` has settled (the export's operation ended, either way), a body that brings
 * nothing for `silentMs` is stopped with an error: the page never waits for ever on it.
 */
export async function readFollowed(
  body: ReadableStream<Uint8Array>,
  onBytes?: (receivedBytes: number) => void,
  options: { exportEnded?: Promise<unknown>; silentMs?: number } = {},
): Promise<Blob> {
  const silentMs = options.silentMs ?? SILENT_AFTER_EXPORT_MS;
  const assembler = new FollowAssembler();
  const reader = body.getReader();
  let lastBytesAt = Date.now();
  let watchdog: ReturnType<typeof setInterval> | undefined;
  let finished = false;
  const silent = new Promise<never>((_, reject) => {
    const watch = () => {
      if (finished) return;
      lastBytesAt = Date.now();
      watchdog = setInterval(
        () => {
          if (Date.now() - lastBytesAt < silentMs) return;
          reject(
            new Error(`The download stopped: nothing came for ${silentMs / 1000} s after the export ended`),
          );
        },
        Math.max(10, Math.min(1000, silentMs / 4)),
      );
    };
    options.exportEnded?.then(watch, watch);
  });
  silent.catch(() => {});
  try {
    for (;;) {
      const read = reader.read().catch(() => {
        throw new Error('The download broke off before the archive was complete');
      });
      const { done, value } = await Promise.race([read, silent]);
      if (done) break;
      lastBytesAt = Date.now();
      assembler.push(value);
      onBytes?.(assembler.receivedBytes);
    }
  } catch (e) {
    await reader.cancel().catch(() => {});
    throw e;
  } finally {
    finished = true;
    clearInterval(watchdog);
  }
  return assembler.finish();
}
