import { finished } from 'node:stream/promises';
import { setTimeout as delay } from 'node:timers/promises';
import type { WebSocket } from 'ws';
import { EXEC_CHANNEL, type ExecClientControl, type ExecServerControl } from '../api/types.ts';
import { asTrivisorError, failedPrecondition } from '../core/errors.ts';
import type { ExecSession } from '../services/types.ts';

/** An exec operation waiting for its client to connect to `/1.0/operations/{id}/websocket`. */
export interface PendingExec {
  /** Resolves with the client's socket; rejects after `timeoutMs` or when `signal` aborts. */
  connected(timeoutMs: number, signal: AbortSignal): Promise<WebSocket>;
}

/** The exec operations of one server that wait for (or hold) a WebSocket. */
export interface ExecRegistry {
  register(operationId: string, secret: string): PendingExec;
  /** True when `secret` opens the websocket of the waiting exec `operationId`. */
  accepts(operationId: string, secret: string): boolean;
  /** Hands the socket to the waiting exec; false when nothing waits (any more). */
  attach(operationId: string, secret: string, socket: WebSocket): boolean;
  closeAll(): void;
}

export function createExecRegistry(): ExecRegistry {
  const waiting = new Map<string, { secret: string; deliver: (socket: WebSocket) => void }>();
  const open = new Set<WebSocket>();
  return {
    register(operationId, secret) {
      let socket: WebSocket | undefined;
      let deliver: ((s: WebSocket) => void) | undefined;
      waiting.set(operationId, {
        secret,
        deliver(s) {
          socket = s;
          open.add(s);
          s.once('close', () => open.delete(s));
          deliver?.(s);
        },
      });
      return {
        connected(timeoutMs, signal) {
          if (socket) return Promise.resolve(socket);
          return new Promise<WebSocket>((resolve, reject) => {
            const done = () => {
              clearTimeout(timer);
              signal.removeEventListener('abort', onAbort);
              waiting.delete(operationId);
            };
            const onAbort = () => {
              done();
              reject(
                failedPrecondition('The operation was cancelled before a client connected to its websocket'),
              );
            };
            const timer = setTimeout(() => {
              done();
              reject(
                failedPrecondition(
                  `No client connected to the operation's websocket within ${Math.round(timeoutMs / 1000)} seconds`,
                ),
              );
            }, timeoutMs);
            signal.addEventListener('abort', onAbort, { once: true });
            deliver = (s) => {
              done();
              resolve(s);
            };
          });
        },
      };
    },
    accepts(operationId, secret) {
      return waiting.get(operationId)?.secret === secret;
    },
    attach(operationId, secret, socket) {
      const w = waiting.get(operationId);
      if (!w || w.secret !== secret) return false;
      waiting.delete(operationId);
      holdEarlyMessages(socket);
      w.deliver(socket);
      return true;
    },
    closeAll() {
      for (const s of open) s.terminate();
      waiting.clear();
    },
  };
}

/** Above this much unsent output, stop reading the command's output until the socket drains. */
const HIGH_WATER_BYTES = 4 * 1024 * 1024;

function sendControl(socket: WebSocket, message: ExecServerControl): void {
  if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
}

/**
 * Joins an exec session and a client WebSocket (protocol in docs/api.md):
 * binary frames carry a channel byte then data, text frames JSON control
 * messages. Resolves with the exit code once `{type:'exit'}` is sent. A client
 * that goes away kills the command, so nothing keeps running unseen.
 */
export async function bridgeExec(
  socket: WebSocket,
  session: ExecSession,
  options: { signal: AbortSignal },
): Promise<number> {
  let exited = false;
  const kill = () => {
    if (!exited) session.signal('SIGKILL');
  };
  session.stdin.on('error', () => {});
  options.signal.addEventListener('abort', kill, { once: true });
  socket.on('close', kill);
  socket.on('error', () => {});
  // The client may have gone between connecting and the command starting.
  if (socket.readyState !== socket.OPEN) kill();

  const onMessage = (data: WebSocket.RawData, isBinary: boolean) => {
    const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]);
    if (isBinary) {
      if (buf[0] === EXEC_CHANNEL.stdin && !session.stdin.writableEnded && !session.stdin.destroyed) {
        if (!session.stdin.write(buf.subarray(1))) {
          socket.pause();
          session.stdin.once('drain', () => socket.resume());
        }
      }
      return;
    }
    let control: ExecClientControl;
    try {
      control = JSON.parse(buf.toString('utf8')) as ExecClientControl;
    } catch {
      return;
    }
    try {
      if (control.type === 'eof') {
        if (!session.stdin.writableEnded) session.stdin.end();
      } else if (control.type === 'resize') {
        if (Number.isInteger(control.width) && Number.isInteger(control.height) && control.width > 0) {
          session.resize(control.width, control.height);
        }
      } else if (control.type === 'signal' && /^SIG[A-Z0-9]+$/.test(String(control.signal))) {
        session.signal(control.signal as NodeJS.Signals);
      }
    } catch {
      // A control message the session cannot honour (e.g. resize without a tty) is ignored.
    }
  };
  // Synchronously: stop buffering, listen, replay what came while the command was starting.
  for (const [data, isBinary] of releaseEarlyMessages(socket)) onMessage(data, isBinary);
  socket.on('message', onMessage);

  const pump = (stream: NodeJS.ReadableStream & { pause(): void; resume(): void }, channel: number) => {
    stream.on('data', (chunk: Buffer) => {
      if (socket.readyState !== socket.OPEN) return;
      socket.send(Buffer.concat([Buffer.from([channel]), chunk]), { binary: true }, () => {
        if (socket.bufferedAmount < HIGH_WATER_BYTES / 4) stream.resume();
      });
      if (socket.bufferedAmount > HIGH_WATER_BYTES) stream.pause();
    });
  };
  pump(session.stdout, EXEC_CHANNEL.stdout);
  if (session.stderr) pump(session.stderr, EXEC_CHANNEL.stderr);

  const code = await session.exit;
  exited = true;
  // Output may still be buffered after the process ended: flush it before saying goodbye.
  const outputs = [session.stdout, session.stderr].filter((s) => s !== null);
  await Promise.race([Promise.allSettled(outputs.map((s) => finished(s))), delay(2000)]);
  sendControl(socket, { type: 'exit', code });
  if (socket.readyState === socket.OPEN) socket.close(1000, 'exit');
  return code;
}

/** Sends an error and closes, for an exec that could not start. */
export function failExecSocket(socket: WebSocket, error: unknown): void {
  const e = asTrivisorError(error);
  sendControl(socket, { type: 'error', error: e.message, code: e.code });
  if (socket.readyState === socket.OPEN) socket.close(1011, 'exec failed');
}

/** Reads a stream to its end, keeping at most `maxBytes`. */
export async function collectCapped(stream: NodeJS.ReadableStream | null, maxBytes: number): Promise<string> {
  if (!stream) return '';
  const chunks: Buffer[] = [];
  let kept = 0;
  for await (const chunk of stream) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
    if (kept < maxBytes) {
      const part = buf.subarray(0, maxBytes - kept);
      chunks.push(part);
      kept += part.length;
    }
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Messages a client sent between attaching and the command (or console) starting (stdin, EOF, resize). */
const early = new WeakMap<
  WebSocket,
  { queue: Array<[WebSocket.RawData, boolean]>; listener: (d: WebSocket.RawData, b: boolean) => void }
>();

function holdEarlyMessages(socket: WebSocket): void {
  const queue: Array<[WebSocket.RawData, boolean]> = [];
  const listener = (d: WebSocket.RawData, b: boolean) => queue.push([d, b]);
  socket.on('message', listener);
  early.set(socket, { queue, listener });
}

/** Stops holding the messages of a socket handed over by the registry; returns those held so far, in order. */
export function releaseEarlyMessages(socket: WebSocket): Array<[WebSocket.RawData, boolean]> {
  const held = early.get(socket);
  if (!held) return [];
  early.delete(socket);
  socket.off('message', held.listener);
  return held.queue;
}
