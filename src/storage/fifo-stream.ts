import { closeSync, constants, openSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { Socket, type SocketConstructorOpts } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Streams between the daemon and a command that reads or writes a file by
 * path (the drivers' `tar -f PATH`), through a FIFO at that path: the bytes
 * pass once, without a temporary file (docs/decisions/0035-streamed-backups.md).
 * The caller makes the FIFO (mkfifo) in a private directory and removes it.
 *
 * Opening one end of a FIFO blocks until the other end is opened. When the
 * command ends without ever opening it (it failed first, or was cancelled),
 * the daemon opens the other end itself, so that its own open returns.
 */

/** Opens the other end of `fifo` (non-blocking) until `settled()`: the pending open on our side then returns. */
async function release(fifo: string, flags: number, settled: () => boolean): Promise<void> {
  while (!settled()) {
    const handle = await open(fifo, flags | constants.O_NONBLOCK).catch(() => undefined);
    await handle?.close();
    if (!settled()) await sleep(5);
  }
}

/** Settles both and throws the first failure, preferring `first`'s (the cause, when the other only saw a broken pipe). */
async function both<T>(first: Promise<T>, second: Promise<unknown>): Promise<T> {
  const [a, b] = await Promise.allSettled([first, second]);
  if (a.status === 'rejected') throw a.reason;
  if (b.status === 'rejected') throw b.reason;
  return a.value;
}

/** Bytes of one read from the FIFO (a pipe hands over at most 64 KiB at a time unless it has more buffered). */
const READ_BYTES = 256 << 10;

/**
 * The data of a socket read into one buffer, reused: a chunk is valid until the next is asked
 * for. The socket is paused while a chunk is with the consumer, so no read overwrites it. A new
 * buffer per read (the streams' way) cost the daemon more in garbage collection than all the rest
 * of an export (decision 0072).
 */
async function* reusedChunks(makeSocket: (onread: SocketOnRead) => Socket): AsyncGenerator<Buffer> {
  const buffer = Buffer.allocUnsafe(READ_BYTES);
  let pending: Buffer | undefined;
  let ended = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const socket = makeSocket({
    buffer,
    callback: (n: number) => {
      pending = buffer.subarray(0, n);
      notify();
      return false; // paused until the consumer is done with this chunk
    },
  });
  socket.on('end', () => {
    ended = true;
    notify();
  });
  socket.on('error', (e: Error) => {
    failure = e;
    notify();
  });
  socket.on('close', () => {
    ended = true;
    notify();
  });
  try {
    socket.resume();
    for (;;) {
      if (pending === undefined && !ended && failure === undefined) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
      if (pending !== undefined) {
        const chunk = pending;
        pending = undefined;
        yield chunk;
        socket.resume();
        continue;
      }
      if (failure) throw failure;
      if (ended) return;
    }
  } finally {
    socket.destroy();
  }
}

/** net.Socket's `onread` option: data goes into `buffer`, `callback` returning false pauses the socket. */
interface SocketOnRead {
  buffer: Buffer;
  callback: (bytes: number, buffer: Buffer) => boolean;
}

/**
 * Runs `produce(fifo)`, which writes a file at `fifo`, and hands what it writes
 * to `consume` as it comes, in chunks each valid until the next is asked for
 * (one buffer, reused). A failure of `consume` closes the read end (the
 * producer then fails on a broken pipe); a producer that fails after writing
 * part of its output fails the whole.
 *
 * The read end is opened non-blocking and read through the event loop (a
 * `net.Socket` on the FIFO), not by blocking reads in libuv's thread pool: in
 * the daemon that pool also serves the store and every file operation, and a
 * pipe hands over at most 64 KiB per read, so a busy pool made the reads
 * queue (an export of 400 MiB took 20 s instead of 5 on a loaded host). The
 * daemon holds a write end of its own until the producer has ended, so that
 * the reader sees the end of the data only then, and never before the
 * producer has opened its end.
 */
export async function readThroughFifo<T>(
  fifo: string,
  produce: (path: string) => Promise<unknown>,
  consume: (chunks: AsyncIterable<Buffer>) => Promise<T>,
): Promise<T> {
  // Non-blocking opens return at once (a FIFO's write end opens once it has a reader: ours).
  const readEnd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  let ownWriteEnd: number;
  try {
    ownWriteEnd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  } catch (e) {
    closeSync(readEnd);
    throw e;
  }
  // The socket owns the read end from here, and closes it when destroyed.
  // (Socket takes `onread` in its constructor too, which its type does not say.)
  let socket: Socket | undefined;
  const chunks = reusedChunks((onread) => {
    const options: SocketConstructorOpts & { onread: SocketOnRead } = {
      fd: readEnd,
      readable: true,
      writable: false,
      onread,
    };
    socket = new Socket(options);
    return socket;
  });
  const producing = produce(fifo).finally(() => closeSync(ownWriteEnd));
  const consuming = (async () => {
    try {
      return await consume(chunks);
    } finally {
      await chunks.return(undefined);
      // A consumer that failed before its first read never made the socket: the read end is closed here.
      if (socket === undefined) closeSync(readEnd);
      else socket.destroy();
    }
  })();
  return both(consuming, producing);
}

/**
 * Runs `consume(fifo)`, which reads a file at `fifo`, and writes `chunks` into
 * it. Every chunk is handed to `observe` (the checksum) even after the consumer
 * stopped reading, so that a damaged payload is known as such. Resolves once
 * both ended; the consumer's failure is thrown.
 */
export async function writeThroughFifo(
  fifo: string,
  consume: (path: string) => Promise<unknown>,
  chunks: AsyncIterable<Buffer>,
  observe: (chunk: Buffer) => void,
): Promise<void> {
  let opened = false;
  const writing = open(fifo, constants.O_WRONLY).finally(() => {
    opened = true;
  });
  const consuming = consume(fifo).finally(() => release(fifo, constants.O_RDONLY, () => opened));
  const feeding = (async () => {
    const handle: FileHandle = await writing;
    let broken = false;
    /** Writes the whole chunk, or answers false once the consumer has closed its end. */
    const writeAll = async (chunk: Buffer): Promise<boolean> => {
      let done = 0;
      while (done < chunk.length) {
        const r = await handle.write(chunk, done, chunk.length - done).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'EPIPE') throw e;
          return undefined;
        });
        if (!r) return false;
        done += r.bytesWritten;
      }
      return true;
    };
    try {
      for await (const chunk of chunks) {
        if (broken) {
          observe(chunk);
          continue;
        }
        // The write (in the thread pool) and `observe` (the checksum, on this thread) only read the
        // chunk: they run at once, so the hashing no longer waits for the consumer (decision 0085).
        const written = writeAll(chunk);
        try {
          observe(chunk);
        } catch (e) {
          // A cancel: the chunk's write ends before anything else touches the chunk's buffer.
          await written.catch(() => {});
          throw e;
        }
        broken = !(await written);
      }
    } finally {
      await handle.close().catch(() => {});
    }
  })();
  await both(consuming, feeding);
}
