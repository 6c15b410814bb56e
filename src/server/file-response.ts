import type { FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';

/** Bytes of each read of a file sent as a response body. */
const READ_BYTES = 1 << 20;

/**
 * Sends `size` bytes of `file` as the body of `res` (its head already written) through two
 * buffers used in turn: one is read into while the other is being written, and a buffer is
 * read into again only once its write has completed. A stream (createReadStream) makes a new
 * buffer per read, and a GiB of them made garbage collection most of the daemon's CPU in a
 * backup's download (decision 0072). Rejects when the client goes away or the file is shorter.
 */
export async function sendFileBody(file: FileHandle, res: ServerResponse, size: number): Promise<void> {
  const gone = new Promise<never>((_, reject) => {
    res.once('close', () => {
      if (!res.writableFinished) reject(new Error('The client closed the connection'));
    });
  });
  gone.catch(() => {});
  const buffers = [Buffer.allocUnsafe(READ_BYTES), Buffer.allocUnsafe(READ_BYTES)];
  const written: Array<Promise<void>> = [Promise.resolve(), Promise.resolve()];
  let position = 0;
  let turn = 0;
  while (position < size) {
    const buffer = buffers[turn] as Buffer;
    await Promise.race([written[turn], gone]);
    const { bytesRead } = await file.read(buffer, 0, Math.min(READ_BYTES, size - position), position);
    if (bytesRead === 0) throw new Error('The file ended before its size');
    position += bytesRead;
    written[turn] = new Promise<void>((resolve, reject) => {
      res.write(buffer.subarray(0, bytesRead), (e) => (e ? reject(e) : resolve()));
    });
    written[turn]?.catch(() => {});
    turn = 1 - turn;
  }
  await Promise.race([Promise.all(written), gone]);
  await Promise.race([new Promise<void>((resolve) => res.end(resolve)), gone]);
}
