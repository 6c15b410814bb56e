import type { FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';

/**
 * A file sent as a request's body through two buffers used in turn (decision 0106): one is read
 * into while the other is being written, and a buffer is read into again only once its write has
 * completed. `createReadStream` makes a new buffer per read, and a GiB of them cost the CLI's
 * upload of an import most of its CPU in garbage collection. The daemon's `sendFileBody`
 * (src/server/file-response.ts) sends a download the same way.
 */

/** Bytes of each read of the file. */
export const FILE_BODY_READ_BYTES = 1 << 20;

/**
 * Writes `size` bytes of `file` from its start into `out` (a request, its head not yet sent) and
 * ends it. `out`'s write callbacks say when a buffer may be read into again: Node's HTTP client and
 * sockets hand the buffer itself to the kernel, without a copy. Rejects when `out` fails or closes
 * before the body is written (the server went away), when a write fails, and when the file is
 * shorter than `size`. `readBytes`: the buffers' size (tests).
 */
export async function writeFileBody(
  file: FileHandle,
  out: Writable,
  options: { size: number; readBytes?: number },
): Promise<void> {
  const { size } = options;
  const readBytes = options.readBytes ?? FILE_BODY_READ_BYTES;
  let onClose: (() => void) | undefined;
  let onError: ((e: Error) => void) | undefined;
  const gone = new Promise<never>((_, reject) => {
    onClose = () => {
      if (!out.writableFinished) reject(new Error('The connection closed before the upload was complete'));
    };
    onError = reject;
    out.once('close', onClose);
    out.once('error', onError);
  });
  gone.catch(() => {});
  const buffers = [Buffer.allocUnsafe(readBytes), Buffer.allocUnsafe(readBytes)];
  const written: Array<Promise<void>> = [Promise.resolve(), Promise.resolve()];
  const write = (bytes: Buffer) =>
    new Promise<void>((resolve, reject) => {
      out.write(bytes, (e) => (e ? reject(e) : resolve()));
    });
  try {
    let position = 0;
    let turn = 0;
    while (position < size) {
      const buffer = buffers[turn] as Buffer;
      await Promise.race([written[turn], gone]);
      const { bytesRead } = await file.read(buffer, 0, Math.min(readBytes, size - position), position);
      if (bytesRead === 0) throw new Error(`The file ended after ${position} of its ${size} bytes`);
      position += bytesRead;
      written[turn] = write(buffer.subarray(0, bytesRead));
      written[turn]?.catch(() => {});
      turn = 1 - turn;
    }
    await Promise.race([Promise.all(written), gone]);
    await Promise.race([new Promise<void>((resolve) => out.end(resolve)), gone]);
  } finally {
    out.off('close', onClose as () => void);
    out.off('error', onError as (e: Error) => void);
  }
}
