/**
 * Finds where the zstd frames of a stream end, so that what follows them is
 * dropped. GNU tar writing a compressed archive to anything but a regular file
 * (the FIFO of a streamed backup) pads the compressor's output with zeros to
 * its record size (10 KiB), and zstd refuses such trailing zeros when it
 * decompresses. The frames are walked by their headers (RFC 8878): frame
 * header, then blocks of known sizes up to the last one, then the optional
 * checksum; skippable frames are kept as they are.
 */
export class ZstdFrameEnd {
  private state: 'magic' | 'skippable-size' | 'frame-header' | 'block-header' | 'padding' = 'magic';
  /** Header bytes gathered across chunks for the current state. */
  private header: number[] = [];
  /** Bytes still to pass through unparsed (block data, header fields, checksum). */
  private skip = 0;
  private afterSkip: 'magic' | 'block-header' = 'magic';
  private checksum = false;
  private frames = 0;

  /** The bytes of a magic number begun in an earlier chunk, held back until it is known to start a frame. */
  private held: Buffer = Buffer.alloc(0);

  /**
   * Takes the next chunk; returns what of it (and of earlier chunks' held-back bytes) belongs to the frames.
   * What is kept of a chunk is always its beginning (a magic number not yet whole at its end, or the
   * padding, is what is left out), so it is returned as a slice of the chunk, not copied: this runs on
   * every byte of an export (decision 0072).
   */
  take(chunk: Buffer): Buffer {
    const heldIn = this.held;
    this.held = Buffer.alloc(0);
    let keepHeld = false;
    let keepEnd = chunk.length;
    // Where the magic number being read began in this chunk; -1: in an earlier one (held).
    let magicAt = this.state === 'magic' && this.header.length > 0 ? -1 : 0;
    if (this.state === 'padding') keepEnd = 0;
    let i = 0;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.skip -= n;
        i += n;
        if (this.skip === 0) this.state = this.afterSkip;
        continue;
      }
      const byte = chunk[i] ?? 0;
      if (this.state === 'padding') {
        if (byte !== 0) throw new Error('bytes other than zeros follow the zstd frames');
        i++;
        continue;
      }
      if (this.state === 'magic' && this.header.length === 0) magicAt = i;
      i++;
      this.header.push(byte);
      if (this.state === 'magic' && this.header.length === 4) {
        const magic = Buffer.from(this.header).readUInt32LE(0);
        if (magic === 0 && this.frames > 0) {
          this.state = 'padding';
          keepEnd = Math.max(0, magicAt);
        } else if (magic === 0xfd2fb528) {
          this.state = 'frame-header';
          this.frames++;
          if (magicAt < 0) keepHeld = true;
        } else if ((magic & 0xfffffff0) === 0x184d2a50) {
          this.state = 'skippable-size';
          if (magicAt < 0) keepHeld = true;
        } else {
          throw new Error('the stream is not zstd frames');
        }
        this.header = [];
      } else if (this.state === 'skippable-size' && this.header.length === 4) {
        this.skip = Buffer.from(this.header).readUInt32LE(0);
        this.header = [];
        this.afterSkip = 'magic';
        this.state = 'magic';
      } else if (this.state === 'frame-header') {
        const fhd = byte;
        this.header = [];
        const single = (fhd >> 5) & 1;
        const fcsFlag = fhd >> 6;
        const fcs = fcsFlag === 0 ? single : (FCS_BYTES[fcsFlag] ?? 0);
        this.checksum = ((fhd >> 2) & 1) === 1;
        this.skip = (single ? 0 : 1) + (DICT_ID_BYTES[fhd & 3] ?? 0) + fcs;
        this.afterSkip = 'block-header';
        this.state = 'block-header';
      } else if (this.state === 'block-header' && this.header.length === 3) {
        const h = this.header;
        this.header = [];
        const v = (h[0] ?? 0) | ((h[1] ?? 0) << 8) | ((h[2] ?? 0) << 16);
        const last = (v & 1) === 1;
        const type = (v >> 1) & 3;
        if (type === 3) throw new Error('a zstd block header is damaged');
        this.skip = (type === 1 ? 1 : v >>> 3) + (last && this.checksum ? 4 : 0);
        this.afterSkip = last ? 'magic' : 'block-header';
        if (this.skip === 0) this.state = this.afterSkip;
      }
    }
    if (this.state === 'magic' && this.header.length > 0) {
      // A magic number not yet whole: held back until the next chunk says what it starts.
      if (magicAt >= 0) {
        keepEnd = magicAt;
        this.held = Buffer.from(chunk.subarray(magicAt));
      } else {
        keepEnd = 0;
        this.held = Buffer.concat([heldIn, chunk]);
      }
    }
    const kept = chunk.subarray(0, keepEnd);
    return keepHeld ? Buffer.concat([heldIn, kept]) : kept;
  }

  /** Checks the stream ended between frames, or in the padding (a cut-short frame is an error). */
  end(): void {
    if (this.state === 'padding' && this.skip === 0) return;
    if (this.state === 'magic' && this.skip === 0 && this.header.every((b) => b === 0)) {
      if (this.header.length === 0 || this.frames > 0) return;
    }
    throw new Error('the zstd stream ends inside a frame');
  }
}

const FCS_BYTES = [0, 2, 4, 8];
const DICT_ID_BYTES = [0, 1, 2, 4];
