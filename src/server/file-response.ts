import type { FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { FRAME, FRAME_HEAD_BYTES, frame, writeFrameHead } from '../api/follow-frames.ts';

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

/** What `sendFollowedFile` reads: a file that may still be written (src/services/storage-backups.ts's BackupFollow). */
export interface FollowedFile {
  open(): Promise<FileHandle | undefined>;
  status():
    | { state: 'running' }
    | { state: 'done'; sizeBytes: number }
    | { state: 'failed'; error: { message: string } };
  changed(timeoutMs: number): Promise<void>;
  headerOffsets(): Promise<number[]>;
}

/** How long a follower that caught up waits before it looks at the file again unasked. */
const FOLLOW_POLL_MS = 100;

/**
 * Sends a file while it is written, as frames (src/api/follow-frames.ts): what is in the file is
 * sent as soon as it is there, 1 MiB a frame, through two reused buffers as `sendFileBody` does;
 * once the writer is done, the header blocks it rewrote, then the end frame with the size. A
 * failed writer is a failure frame with its one-line reason. Rejects when the client goes away.
 */
export async function sendFollowedFile(file: FollowedFile, res: ServerResponse): Promise<void> {
  const gone = new Promise<never>((_, reject) => {
    res.once('close', () => {
      if (!res.writableFinished) reject(new Error('The client closed the connection'));
    });
  });
  gone.catch(() => {});
  const send = (data: Buffer) =>
    Promise.race([
      new Promise<void>((resolve, reject) => res.write(data, (e) => (e ? reject(e) : resolve()))),
      gone,
    ]);
  const buffers = [
    Buffer.allocUnsafe(FRAME_HEAD_BYTES + READ_BYTES),
    Buffer.allocUnsafe(FRAME_HEAD_BYTES + READ_BYTES),
  ];
  const written: Array<Promise<void>> = [Promise.resolve(), Promise.resolve()];
  let turn = 0;
  let sent = 0;
  let handle: FileHandle | undefined;
  try {
    for (;;) {
      const status = file.status();
      if (status.state === 'failed') {
        await Promise.all(written);
        await send(frame(FRAME.failed, sent, Buffer.from(status.error.message)));
        break;
      }
      handle ??= await file.open();
      const available = status.state === 'done' ? status.sizeBytes : handle ? (await handle.stat()).size : 0;
      if (handle && sent < available) {
        const buffer = buffers[turn] as Buffer;
        await Promise.race([written[turn], gone]);
        const want = Math.min(READ_BYTES, available - sent);
        const { bytesRead } = await handle.read(buffer, FRAME_HEAD_BYTES, want, sent);
        if (bytesRead === 0) throw new Error('The file ended before its size');
        writeFrameHead(buffer, 0, FRAME.data, sent, bytesRead);
        sent += bytesRead;
        written[turn] = send(buffer.subarray(0, FRAME_HEAD_BYTES + bytesRead));
        written[turn]?.catch(() => {});
        turn = 1 - turn;
        continue;
      }
      if (status.state === 'done') {
        await Promise.all(written);
        const block = Buffer.allocUnsafe(512);
        for (const offset of await file.headerOffsets()) {
          const { bytesRead } = await (handle as FileHandle).read(block, 0, 512, offset);
          await send(frame(FRAME.data, offset, block.subarray(0, bytesRead)));
        }
        await send(frame(FRAME.end, status.sizeBytes));
        break;
      }
      await Promise.race([file.changed(FOLLOW_POLL_MS), gone]);
    }
    await Promise.race([new Promise<void>((resolve) => res.end(resolve)), gone]);
  } finally {
    await Promise.all(written).catch(() => {});
    await handle?.close();
  }
}
