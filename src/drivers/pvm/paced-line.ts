import { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

/** How a paced line spaces its writes. */
export interface PacingOptions {
  chunkBytes: number;
  gapMs: number;
}

/**
 * Wraps a byte stream so that writes go out in small pieces with a pause
 * between them. UML's serial line driver (6.1) stops reading its host side
 * for good once the guest's tty throttles it (more than ~4 KiB unread): the
 * guest agent must be given time to read each piece before the next comes.
 */
export function pacedLine(inner: Duplex, options: PacingOptions): Duplex {
  const outer = new Duplex({
    read() {
      inner.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      (async () => {
        for (let at = 0; at < chunk.length; at += options.chunkBytes) {
          if (at > 0) await sleep(options.gapMs);
          const piece = chunk.subarray(at, at + options.chunkBytes);
          await new Promise<void>((resolve, reject) =>
            inner.write(piece, (err) => (err ? reject(err) : resolve())),
          );
        }
      })().then(() => callback(), callback);
    },
    final(callback) {
      inner.end();
      callback();
    },
    destroy(err, callback) {
      inner.destroy();
      callback(err);
    },
  });
  inner.on('data', (d: Buffer) => {
    if (!outer.push(d)) inner.pause();
  });
  inner.on('end', () => outer.push(null));
  inner.on('error', (e) => outer.destroy(e));
  inner.on('close', () => outer.destroy());
  return outer;
}
