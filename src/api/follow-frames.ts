/**
 * The body of `GET /1.0/guests/NAME/backups/BACKUP/export?follow=true`: the archive sent while the
 * export still writes it (issue 20 §1). A member of the archive whose size is known only at its
 * end has its tar header written last, over a placeholder, so the bytes cannot simply be sent in
 * order: the body is a sequence of frames, each a type byte, a 64-bit offset and a 32-bit length
 * (big-endian), then that many bytes. `D` puts bytes at an offset of the file (the header blocks
 * come again at the end, as written last); `E` says the archive is complete at `offset` bytes;
 * `X` says the export failed, its bytes the one-line reason. A body that ends without `E` or `X`
 * was cut short. The client writes each `D` at its offset, so its file ends byte for byte the
 * daemon's.
 */

/** The content type of a followed download. */
export const FOLLOW_CONTENT_TYPE = 'application/vnd.trivisor.archive-frames';

/** Bytes of a frame's head: type, offset, length. */
export const FRAME_HEAD_BYTES = 13;

/** The frame types. */
export const FRAME = { data: 0x44, end: 0x45, failed: 0x58 } as const;

/** The largest frame a reader accepts: data frames are sent 1 MiB at a time, a reason is a line. */
const MAX_FRAME_BYTES = 16 << 20;

/** Writes a frame's head into `into` at `at`. */
export function writeFrameHead(into: Buffer, at: number, type: number, offset: number, length: number): void {
  into[at] = type;
  into.writeBigUInt64BE(BigInt(offset), at + 1);
  into.writeUInt32BE(length, at + 9);
}

/** A whole frame, for the small ones (end, failure, a header block). */
export function frame(type: number, offset: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEAD_BYTES + data.length);
  writeFrameHead(out, 0, type, offset, data.length);
  data.copy(out, FRAME_HEAD_BYTES);
  return out;
}

/** What a followed download's body says, in order. */
export type FollowEvent =
  | { type: 'data'; offset: number; bytes: Buffer }
  | { type: 'end'; sizeBytes: number }
  | { type: 'failed'; message: string };

/** Thrown for a body that is not a sequence of frames. */
export class FollowFramesDamaged extends Error {}

/**
 * Reads frames from a body's chunks: `push` answers the events a chunk completes. A data frame's
 * bytes come as slices of the chunks (no copy), each at its own offset.
 */
export class FollowFrameReader {
  private head = Buffer.alloc(FRAME_HEAD_BYTES);
  private headFill = 0;
  private type = 0;
  private offset = 0;
  private left = -1;
  private text: Buffer[] = [];
  private over = false;

  /** Whether an end or failure frame was read. */
  get finished(): boolean {
    return this.over;
  }

  push(chunk: Buffer): FollowEvent[] {
    const events: FollowEvent[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.over) throw new FollowFramesDamaged('bytes after the last frame');
      if (this.left < 0) {
        const n = Math.min(FRAME_HEAD_BYTES - this.headFill, chunk.length - at);
        chunk.copy(this.head, this.headFill, at, at + n);
        this.headFill += n;
        at += n;
        if (this.headFill < FRAME_HEAD_BYTES) break;
        this.headFill = 0;
        this.type = this.head[0] ?? 0;
        this.offset = Number(this.head.readBigUInt64BE(1));
        this.left = this.head.readUInt32BE(9);
        if (this.left > MAX_FRAME_BYTES) throw new FollowFramesDamaged('a frame is too large');
        if (this.type === FRAME.end) {
          events.push({ type: 'end', sizeBytes: this.offset });
          this.over = true;
          this.left = -1;
          continue;
        }
        if (this.type !== FRAME.data && this.type !== FRAME.failed) {
          throw new FollowFramesDamaged(`an unknown frame type ${this.type}`);
        }
      }
      const n = Math.min(this.left, chunk.length - at);
      const bytes = chunk.subarray(at, at + n);
      at += n;
      this.left -= n;
      if (this.type === FRAME.data) {
        if (n > 0) events.push({ type: 'data', offset: this.offset, bytes });
        this.offset += n;
      } else {
        this.text.push(Buffer.from(bytes));
      }
      if (this.left === 0) {
        this.left = -1;
        if (this.type === FRAME.failed) {
          events.push({ type: 'failed', message: Buffer.concat(this.text).toString('utf8') });
          this.over = true;
        }
      }
    }
    return events;
  }
}
