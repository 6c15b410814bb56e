import { PassThrough, type Readable, Writable } from 'node:stream';
import type WebSocket from 'ws';

/** A guest's console attached over its WebSocket (protocol in docs/api.md). */
export interface ConsoleHandle {
  operationId: string;
  /** Bytes typed into the console. */
  input: Writable;
  /** The console's output from the moment of attaching; ends with the session. */
  output: Readable;
  /** Detaches: the guest keeps running, and so does whatever was started on its console. */
  close(): void;
  /**
   * Resolves when the session is over, with the server's reason: `detached`
   * (after close()), `console closed` (the guest's console went away: it
   * stopped), or the error the server sent.
   */
  closed: Promise<{ reason: string }>;
}

/** Wraps an open console WebSocket into streams. */
export function consoleHandleOf(socket: WebSocket, operationId: string): ConsoleHandle {
  const output = new PassThrough();
  let error: string | undefined;
  let detaching = false;
  socket.on('message', (data, isBinary) => {
    const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]);
    if (isBinary) {
      if (!output.write(buf)) {
        socket.pause();
        output.once('drain', () => socket.resume());
      }
      return;
    }
    try {
      const message = JSON.parse(buf.toString('utf8')) as { type?: string; error?: string };
      if (message.type === 'error' && typeof message.error === 'string') error = message.error;
    } catch {
      // not ours: ignore
    }
  });
  const closed = new Promise<{ reason: string }>((resolve) => {
    socket.on('error', (e) => {
      error ??= `The console connection failed: ${e.message}`;
    });
    socket.on('close', (_code, reason) => {
      output.end();
      resolve({ reason: detaching ? 'detached' : (error ?? (reason.toString('utf8') || 'closed')) });
    });
  });
  const input = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (socket.readyState !== socket.OPEN) return callback();
      socket.send(chunk, { binary: true }, () => callback());
    },
  });
  const close = () => {
    detaching = true;
    socket.close(1000, 'detached');
  };
  return { operationId, input, output, close, closed };
}
