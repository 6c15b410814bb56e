import { open } from 'node:fs/promises';
import { ownsItsMemory, releaseChunk } from '../api/chunk-memory.ts';

/** Bytes of each write of an upload into its file. */
const WRITE_BYTES = 1 << 20;

/**
 * Writes an upload's body to a new file at `path` and answers with its size: the body's chunks
 * (64 KiB each, from the socket) are copied into two 1 MiB buffers used in turn, one filling
 * while the other is being written, and a buffer is filled again only once its write has
 * completed. Through a Transform and a write stream (the way before) each chunk went through
 * two streams' buffering and the file got a write per few chunks; this is the upload's half of
 * decision 0072 (decision 0085: the import of a vm guest's 1 GiB archive). Rejects, with the
 * file left for the caller to remove, when the body fails (the client went away). `release`: the
 * body's chunks are this function's alone (a request's) and are released once copied (decision 0100).
 */
export async function receiveToFile(
  body: AsyncIterable<Buffer>,
  path: string,
  options: { mode: number; release?: boolean },
): Promise<number> {
  const file = await open(path, 'w', options.mode);
  const buffers = [Buffer.allocUnsafe(WRITE_BYTES), Buffer.allocUnsafe(WRITE_BYTES)];
  let turn = 0;
  let fill = 0;
  let received = 0;
  let writing: Promise<void> = Promise.resolve();
  const writeAll = async (buffer: Buffer, length: number) => {
    let done = 0;
    while (done < length) done += (await file.write(buffer, done, length - done)).bytesWritten;
  };
  /** Hands the buffer being filled to a write of its own, once the other buffer's write has ended. */
  const flush = async () => {
    await writing;
    writing = writeAll(buffers[turn] as Buffer, fill);
    writing.catch(() => {});
    turn = 1 - turn;
    fill = 0;
  };
  try {
    for await (const chunk of body) {
      received += chunk.length;
      let at = 0;
      while (at < chunk.length) {
        const n = chunk.copy(buffers[turn] as Buffer, fill, at);
        fill += n;
        at += n;
        if (fill === WRITE_BYTES) await flush();
      }
      if (options.release && ownsItsMemory(chunk)) releaseChunk(chunk.buffer);
    }
    if (fill > 0) await flush();
    await writing;
    return received;
  } finally {
    await writing.catch(() => {});
    await file.close();
  }
}
