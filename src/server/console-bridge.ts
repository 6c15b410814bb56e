import type { WebSocket } from 'ws';
import type { ConsoleStream } from '../services/types.ts';
import { releaseEarlyMessages } from './exec-bridge.ts';

/**
 * Above this much unsent output the console's output is dropped rather than
 * read more slowly: a vm guest's serial line waits for its reader, and the
 * console log keeps everything anyway.
 */
const DROP_ABOVE_BYTES = 1024 * 1024;

/** How a console session ended. */
export type ConsoleEnd = 'detached' | 'console-closed';

/**
 * The part both bridges share: client bytes (binary frames) go to the stream with the
 * stream's backpressure, the stream's bytes go to `forward`, and either side ending ends both.
 * Resolves with how it ended, having closed the other side.
 */
function bridgeStream(
  socket: WebSocket,
  stream: ConsoleStream,
  options: {
    signal: AbortSignal;
    closedReason: string;
    forward: (chunk: Buffer) => void;
    start?: () => void;
  },
): Promise<ConsoleEnd> {
  return new Promise((resolve) => {
    let ended: ConsoleEnd | undefined;
    const finish = (how: ConsoleEnd) => {
      if (ended) return;
      ended = how;
      options.signal.removeEventListener('abort', onAbort);
      stream.destroy();
      if (socket.readyState === socket.OPEN) {
        socket.close(1000, how === 'detached' ? 'detached' : options.closedReason);
      }
      resolve(how);
    };
    const onAbort = () => finish('detached');
    options.signal.addEventListener('abort', onAbort, { once: true });
    socket.on('close', () => finish('detached'));
    socket.on('error', () => {});
    stream.on('error', () => finish('console-closed'));
    stream.on('close', () => finish('console-closed'));
    stream.on('end', () => finish('console-closed'));

    const onMessage = (data: WebSocket.RawData, isBinary: boolean) => {
      if (!isBinary || ended) return;
      const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]);
      if (!stream.write(buf)) {
        socket.pause();
        stream.once('drain', () => socket.resume());
      }
    };
    // Synchronously: stop buffering, listen, replay what came while the stream was being attached.
    for (const [data, isBinary] of releaseEarlyMessages(socket)) onMessage(data, isBinary);
    socket.on('message', onMessage);

    stream.on('data', options.forward);
    options.start?.();
    // The client may have gone between connecting and the stream opening.
    if (socket.readyState !== socket.OPEN) finish('detached');
  });
}

/**
 * Joins an attached console and a client WebSocket (protocol in docs/api.md):
 * binary frames carry console bytes both ways; text frames are JSON control
 * messages (none from the client yet; the server's `{type:'error'}`). Resolves
 * when the client goes (detached) or the console ends (the guest stopped),
 * having closed the other side.
 */
export function bridgeConsole(
  socket: WebSocket,
  stream: ConsoleStream,
  options: { signal: AbortSignal },
): Promise<ConsoleEnd> {
  return bridgeStream(socket, stream, {
    signal: options.signal,
    closedReason: 'console closed',
    forward: (chunk) => {
      if (socket.readyState !== socket.OPEN || socket.bufferedAmount > DROP_ABOVE_BYTES) return;
      socket.send(chunk, { binary: true });
    },
  });
}

/** Unsent display bytes above which the display's stream is paused (RFB must not lose a byte). */
const DISPLAY_PAUSE_ABOVE_BYTES = 4 * 1024 * 1024;

/**
 * Joins a guest's display (an RFB connection to its VNC server) and a client WebSocket: binary
 * frames carry RFB bytes both ways, as noVNC and websockify speak it. Unlike a console, nothing
 * is ever dropped (RFB is a protocol, not a log): a slow client pauses the display's stream,
 * which QEMU's VNC server tolerates (it coalesces screen updates). Resolves when either side ends.
 */
export function bridgeDisplay(
  socket: WebSocket,
  stream: ConsoleStream,
  options: { signal: AbortSignal },
): Promise<ConsoleEnd> {
  return bridgeStream(socket, stream, {
    signal: options.signal,
    closedReason: 'display closed',
    forward: (chunk) => {
      if (socket.readyState !== socket.OPEN) return;
      socket.send(chunk, { binary: true }, () => {
        if (stream.isPaused() && socket.bufferedAmount <= DISPLAY_PAUSE_ABOVE_BYTES / 2) stream.resume();
      });
      if (socket.bufferedAmount > DISPLAY_PAUSE_ABOVE_BYTES) stream.pause();
    },
    // The display's stream comes paused (nothing of the RFB greeting may be lost before here).
    start: () => stream.resume(),
  });
}
