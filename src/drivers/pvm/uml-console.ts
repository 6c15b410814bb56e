import { constants, type FSWatcher, watch } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { failedPrecondition } from '../../core/errors.ts';
import type { ConsoleStream } from '../guest-driver.ts';

/** Fallback for missed file events: how often the log is looked at for growth. */
const POLL_MS = 200;
/** How often the stream checks that the kernel still runs. */
const ALIVE_CHECK_MS = 1_000;
/** Input goes to the kernel in pieces of at most this much (its serial line is easily flooded). */
const INPUT_CHUNK_BYTES = 1024;
/** How long to wait when the FIFO is full before writing again. */
const FULL_RETRY_MS = 10;
const READ_BYTES = 64 * 1024;

/** What a pvm console is made of. */
export interface UmlConsoleOptions {
  /** The FIFO con0 reads, held open read-write by the kernel (fd 5 of the launcher). */
  input: string;
  /** console.log, which con0 writes (the kernel's stdout). */
  log: string;
  /** False once the kernel is gone: the stream then ends. */
  alive(): Promise<boolean>;
  guestName: string;
}

/**
 * Attaches to a pvm guest's console without a pseudo-terminal: typed bytes
 * are written to the FIFO con0 reads, and the output is console.log followed
 * from its end at the moment of attaching (the guest's tty echoes input
 * there too). Nothing stays attached to the kernel: the FIFO has a reader
 * (the kernel) whether or not anyone writes, and the log is a file, so a
 * guest never waits for a console client, with or without the daemon.
 */
export async function openUmlConsole(options: UmlConsoleOptions): Promise<ConsoleStream> {
  let input: FileHandle;
  try {
    // Non-blocking: with no reader (a kernel started without the FIFO) open fails at once with ENXIO.
    input = await open(options.input, constants.O_WRONLY | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENXIO' || code === 'ENOENT') {
      throw failedPrecondition(
        `Guest ${options.guestName} runs without console input (it was started by an older Trivisor): restart it to attach`,
      );
    }
    throw e;
  }
  let log: FileHandle;
  let offset: number;
  try {
    log = await open(options.log, 'r');
    offset = (await log.stat()).size;
  } catch (e) {
    await input.close();
    throw e;
  }

  let closed = false;
  let wanted = true;
  let reading = false;
  let watcher: FSWatcher | undefined;
  const buffer = Buffer.alloc(READ_BYTES);

  const stream = new Duplex({
    // The console ends with the guest: then there is nowhere to type to either.
    allowHalfOpen: false,
    read() {
      wanted = true;
      void pump();
    },
    write(chunk: Buffer, _encoding, callback) {
      writeAll(chunk).then(() => callback(), callback);
    },
    destroy(error, callback) {
      closed = true;
      watcher?.close();
      clearInterval(poll);
      clearInterval(aliveCheck);
      Promise.allSettled([input.close(), log.close()]).then(() => callback(error));
    },
  });

  async function writeAll(chunk: Buffer): Promise<void> {
    let done = 0;
    while (done < chunk.length && !closed) {
      try {
        const { bytesWritten } = await input.write(
          chunk,
          done,
          Math.min(INPUT_CHUNK_BYTES, chunk.length - done),
        );
        done += bytesWritten;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        await sleep(FULL_RETRY_MS);
      }
    }
  }

  /** Reads what the log gained since `offset`, as far as the reader wants it. */
  async function pump(): Promise<void> {
    if (reading || closed) return;
    reading = true;
    try {
      while (wanted && !closed) {
        const size = (await log.stat()).size;
        // A log emptied or replaced under us (not done today, but cheap to survive): read it from its start.
        if (size < offset) offset = 0;
        if (size === offset) break;
        const { bytesRead } = await log.read(buffer, 0, Math.min(buffer.length, size - offset), offset);
        if (bytesRead === 0 || closed) break;
        offset += bytesRead;
        wanted = stream.push(Buffer.from(buffer.subarray(0, bytesRead)));
      }
    } catch (e) {
      if (!closed) stream.destroy(e as Error);
    } finally {
      reading = false;
    }
  }

  try {
    watcher = watch(options.log, () => void pump());
    watcher.on('error', () => {});
  } catch {
    // No file events (some file systems): the poll below still follows the log.
  }
  const poll = setInterval(() => void pump(), POLL_MS);
  const aliveCheck = setInterval(() => {
    void options.alive().then(async (up) => {
      if (up || closed) return;
      clearInterval(aliveCheck);
      await pump();
      if (!closed) stream.push(null);
    });
  }, ALIVE_CHECK_MS);
  // A console nobody detaches must not keep a process alive on its own.
  poll.unref();
  aliveCheck.unref();
  return stream;
}
