import { PassThrough, type Readable, Writable } from 'node:stream';
import type WebSocket from 'ws';
import { EXEC_CHANNEL, type ExecClientControl, type ExecServerControl } from '../api/types.ts';
import { isErrorCode } from '../core/errors.ts';
import { TrivisorApiError } from './api-error.ts';

/** A command running in a guest, joined over the exec WebSocket. */
export interface ExecHandle {
  operationId: string;
  /** Bytes for the command's stdin; `end()` closes its stdin. */
  stdin: Writable;
  stdout: Readable;
  /** Empty in interactive (tty) mode, where stderr is part of the terminal's output. */
  stderr: Readable;
  resize(width: number, height: number): void;
  signal(signal: string): void;
  /** The command's exit code, once its output has been delivered. */
  exit: Promise<number>;
  /** Drops the connection (the server then kills the command). */
  close(): void;
}

/** Wraps an open exec WebSocket into streams (protocol in docs/api.md). */
export function execHandleOf(socket: WebSocket, operationId: string): ExecHandle {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let exitCode: number | null = null;
  let failure: Error | null = null;
  const control = (message: ExecClientControl) => {
    if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
  };

  const exit = new Promise<number>((resolve, reject) => {
    socket.on('message', (data, isBinary) => {
      const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]);
      if (isBinary) {
        const target =
          buf[0] === EXEC_CHANNEL.stdout ? stdout : buf[0] === EXEC_CHANNEL.stderr ? stderr : null;
        if (target && !target.write(buf.subarray(1))) {
          socket.pause();
          target.once('drain', () => socket.resume());
        }
        return;
      }
      try {
        const message = JSON.parse(buf.toString('utf8')) as ExecServerControl;
        if (message.type === 'exit') exitCode = message.code;
        else if (message.type === 'error') {
          const code = isErrorCode(message.code) ? message.code : undefined;
          failure = new TrivisorApiError(message.error, { status: 400, ...(code !== undefined && { code }) });
        }
      } catch {
        // not ours: ignore
      }
    });
    socket.on('error', (e) => {
      failure ??= new TrivisorApiError(`The exec connection failed: ${e.message}`, {
        status: 0,
        code: 'Unavailable',
      });
    });
    socket.on('close', () => {
      stdout.end();
      stderr.end();
      if (exitCode !== null) resolve(exitCode);
      else
        reject(
          failure ??
            new TrivisorApiError('The exec connection closed before the command exited', {
              status: 0,
              code: 'Unavailable',
            }),
        );
    });
  });
  // Callers that only watch the streams must not crash on an unobserved rejection.
  exit.catch(() => {});

  const stdin = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (socket.readyState !== socket.OPEN) return callback();
      socket.send(Buffer.concat([Buffer.from([EXEC_CHANNEL.stdin]), chunk]), { binary: true }, () =>
        callback(),
      );
    },
    final(callback) {
      control({ type: 'eof' });
      callback();
    },
  });

  return {
    operationId,
    stdin,
    stdout,
    stderr,
    resize: (width, height) => control({ type: 'resize', width, height }),
    signal: (signal) => control({ type: 'signal', signal }),
    exit,
    close: () => socket.close(),
  };
}
