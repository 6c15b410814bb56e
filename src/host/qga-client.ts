import { randomInt } from 'node:crypto';
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { internal, TrivisorError, unavailable } from '../core/errors.ts';

/** Options of a QGA client. */
export interface QgaClientOptions {
  /** How long one request may wait for its answer before the client resynchronises; default 15 s. */
  requestTimeoutMs?: number;
  /** Name of the guest in error messages. */
  guestName?: string;
  /**
   * Bytes per guest-file-read/write; default QGA_FILE_CHUNK_BYTES. Lines that
   * stall on long messages (UML's serial line past its 4 KiB tty buffer) need ~2 KiB.
   */
  fileChunkBytes?: number;
}

/** What a finished guest-exec produced. */
export interface QgaExecResult {
  /** Exit code, or 128+n when killed by signal n. */
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
  /** The agent keeps at most 16 MiB of each stream: true when it dropped some. */
  truncated: boolean;
}

/** Options of one guest-exec. */
export interface QgaExecOptions {
  /** The complete environment of the command (the agent passes nothing else). */
  env?: Record<string, string>;
  /** Written to the command's stdin, which is then closed. */
  input?: Buffer | string;
  /** Called with the guest pid once the command started (to signal it). */
  onStart?: (pid: number) => void;
  signal?: AbortSignal;
}

/** Status of a guest-exec'd process. */
export interface QgaExecStatus {
  exited: boolean;
  exitCode?: number;
  signal?: number;
  stdout: Buffer;
  stderr: Buffer;
  truncated: boolean;
}

/**
 * A client of the QEMU guest agent (qemu-ga) over any byte stream: QEMU's
 * virtio-serial chardev socket, a UML serial line, or qemu-ga's own unix
 * socket. Requests go one at a time; a request that times out makes the
 * next one resynchronise first (guest-sync-delimited), since a late answer
 * would otherwise be taken for the next request's.
 */
export interface QgaClient {
  /** Discards stale bytes on the line and checks the agent answers (guest-sync-delimited with a random id). */
  sync(options?: { timeoutMs?: number }): Promise<void>;
  /** Resynchronises until the agent answers or `timeoutMs` passes (e.g. while the guest boots). */
  waitReady(options: { timeoutMs: number; signal?: AbortSignal }): Promise<void>;
  ping(): Promise<void>;
  /** Runs a command to completion (guest-exec with captured output, then guest-exec-status polls). */
  exec(argv: readonly string[], options?: QgaExecOptions): Promise<QgaExecResult>;
  /** Starts a command with captured output; returns its guest pid. */
  execStart(argv: readonly string[], options?: Omit<QgaExecOptions, 'onStart' | 'signal'>): Promise<number>;
  execStatus(pid: number): Promise<QgaExecStatus>;
  readFile(path: string): Promise<Buffer>;
  /** Creates or truncates `path` in the guest and writes `data`. */
  writeFile(path: string, data: Buffer | string): Promise<void>;
  /** Asks the guest to power off (or halt, reboot); the agent does not answer it. */
  shutdown(mode?: 'powerdown' | 'halt' | 'reboot'): Promise<void>;
  /** guest-get-osinfo: kernel release, os id, version… as the agent reports them. */
  osInfo(): Promise<Record<string, unknown>>;
  /** Any agent command; rejects with the agent's error description. */
  command<T = unknown>(
    name: string,
    args?: Record<string, unknown>,
    options?: { timeoutMs?: number },
  ): Promise<T>;
  /** Ends the stream; pending requests fail. */
  close(): void;
}

const SENTINEL = 0xff;
const NEWLINE = 0x0a;
/** Bytes per guest-file-read/write request: well under the agent's message limits. */
export const QGA_FILE_CHUNK_BYTES = 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 15_000;

interface Pending {
  kind: 'sync' | 'command';
  name: string;
  syncId?: number;
  sawSentinel: boolean;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/** An error the agent answered with ({"error": {"class", "desc"}}). */
export class QgaError extends TrivisorError {
  readonly errorClass: string;
  constructor(command: string, errorClass: string, desc: string) {
    super('Internal', `The guest agent refused ${command}: ${desc}`);
    this.errorClass = errorClass;
  }
}

function base64(data: Buffer | string): string {
  return (typeof data === 'string' ? Buffer.from(data, 'utf8') : data).toString('base64');
}

function fromBase64(value: unknown): Buffer {
  return typeof value === 'string' ? Buffer.from(value, 'base64') : Buffer.alloc(0);
}

export function createQgaClient(stream: Duplex, options: QgaClientOptions = {}): QgaClient {
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  const chunkBytes = options.fileChunkBytes ?? QGA_FILE_CHUNK_BYTES;
  const who = options.guestName ? `of guest ${options.guestName}` : 'of the guest';
  let buffer: Buffer = Buffer.alloc(0);
  let pending: Pending | null = null;
  let closed: Error | null = null;
  let synced = false;
  // Requests run one after another: the protocol has no request ids.
  let queue: Promise<unknown> = Promise.resolve();

  const onData = (chunk: Buffer): void => {
    buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
    for (;;) {
      if (pending?.kind === 'sync' && !pending.sawSentinel) {
        const at = buffer.indexOf(SENTINEL);
        if (at < 0) {
          buffer = Buffer.alloc(0);
          return;
        }
        buffer = buffer.subarray(at + 1);
        pending.sawSentinel = true;
      }
      const end = buffer.indexOf(NEWLINE);
      if (end < 0) return;
      const line = buffer.subarray(0, end);
      buffer = buffer.subarray(end + 1);
      handleLine(line);
    }
  };

  const handleLine = (line: Buffer): void => {
    if (!pending) return; // stale: nobody asked
    // A line that echoes our own sentinel (a serial line in echo mode) carries the answer after it.
    const lastSentinel = line.lastIndexOf(SENTINEL);
    const text = (lastSentinel >= 0 ? line.subarray(lastSentinel + 1) : line).toString('utf8').trim();
    if (text === '') return;
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return; // garbage on the line (a console echo, a half message from an earlier client)
    }
    if (typeof message !== 'object' || message === null) return;
    const p = pending;
    if (p.kind === 'sync') {
      if (message.return === p.syncId) {
        pending = null;
        p.resolve(undefined);
      }
      return;
    }
    if ('return' in message) {
      pending = null;
      p.resolve(message.return);
    } else if ('error' in message) {
      pending = null;
      const error = (message.error ?? {}) as { class?: string; desc?: string };
      p.reject(new QgaError(p.name, error.class ?? 'GenericError', error.desc ?? 'unknown error'));
    }
  };

  const onEnd = (): void => {
    closed ??= unavailable(`The connection to the guest agent ${who} closed: check that the guest runs.`);
    const p = pending;
    pending = null;
    p?.reject(closed);
  };
  const onError = (e: Error): void => {
    closed ??= unavailable(
      `The connection to the guest agent ${who} failed (${e.message}): check the guest.`,
    );
    onEnd();
  };
  stream.on('data', onData);
  stream.on('end', onEnd);
  stream.on('close', onEnd);
  stream.on('error', onError);

  /** Sends `payload` and waits for the answer the parser hands over, or times out. */
  const exchange = (payload: Buffer, p: Omit<Pending, 'resolve' | 'reject'>, timeoutMs: number) =>
    new Promise<unknown>((resolve, reject) => {
      if (closed) {
        reject(closed);
        return;
      }
      const timer = setTimeout(() => {
        if (pending === entry) pending = null;
        synced = false;
        reject(unavailable(`The guest agent ${who} did not answer within ${timeoutMs} ms: is the guest up?`));
      }, timeoutMs);
      const entry: Pending = {
        ...p,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      pending = entry;
      stream.write(payload, (err) => {
        if (err && pending === entry) {
          pending = null;
          entry.reject(unavailable(`Cannot write to the guest agent ${who}: ${err.message}.`));
        }
      });
    });

  const doSync = async (timeoutMs: number): Promise<void> => {
    const id = randomInt(1, 2 ** 31 - 1);
    buffer = Buffer.alloc(0);
    // The leading 0xFF makes the agent drop any half-read request of an earlier client.
    const request = JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } });
    await exchange(
      Buffer.concat([Buffer.from([SENTINEL]), Buffer.from(`${request}\n`)]),
      { kind: 'sync', name: 'guest-sync-delimited', syncId: id, sawSentinel: false },
      timeoutMs,
    );
    synced = true;
  };

  const serial = <T>(work: () => Promise<T>): Promise<T> => {
    const result = queue.then(work, work);
    queue = result.catch(() => {});
    return result;
  };

  const command = <T>(name: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}) =>
    serial(async () => {
      const timeoutMs = opts.timeoutMs ?? requestTimeoutMs;
      if (!synced) await doSync(timeoutMs);
      const request = JSON.stringify(args ? { execute: name, arguments: args } : { execute: name });
      return (await exchange(
        Buffer.from(`${request}\n`),
        { kind: 'command', name, sawSentinel: false },
        timeoutMs,
      )) as T;
    });

  const execStart = async (
    argv: readonly string[],
    opts: Omit<QgaExecOptions, 'onStart' | 'signal'> = {},
  ): Promise<number> => {
    const [path, ...arg] = argv;
    if (!path) throw internal('guest-exec needs a program: the argv is empty.');
    const args: Record<string, unknown> = { path, arg, 'capture-output': true };
    if (opts.env) args.env = Object.entries(opts.env).map(([k, v]) => `${k}=${v}`);
    if (opts.input !== undefined) args['input-data'] = base64(opts.input);
    const started = await command<{ pid: number }>('guest-exec', args);
    return started.pid;
  };

  const execStatus = async (pid: number): Promise<QgaExecStatus> => {
    const s = await command<Record<string, unknown>>('guest-exec-status', { pid });
    const status: QgaExecStatus = {
      exited: s.exited === true,
      stdout: fromBase64(s['out-data']),
      stderr: fromBase64(s['err-data']),
      truncated: s['out-truncated'] === true || s['err-truncated'] === true,
    };
    if (typeof s.exitcode === 'number') status.exitCode = s.exitcode;
    if (typeof s.signal === 'number') status.signal = s.signal;
    return status;
  };

  const client: QgaClient = {
    sync(opts = {}) {
      return serial(() => doSync(opts.timeoutMs ?? requestTimeoutMs));
    },

    async waitReady({ timeoutMs, signal }) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        signal?.throwIfAborted();
        const left = deadline - Date.now();
        try {
          await client.sync({ timeoutMs: Math.max(100, Math.min(1000, left)) });
          return;
        } catch (e) {
          if (closed) throw closed;
          if (Date.now() >= deadline) throw e;
        }
        await sleep(100);
      }
    },

    async ping() {
      await command('guest-ping');
    },

    async exec(argv, opts = {}) {
      const { onStart, signal, ...startOptions } = opts;
      const pid = await execStart(argv, startOptions);
      onStart?.(pid);
      let delayMs = 10;
      for (;;) {
        const status = await execStatus(pid);
        if (status.exited) {
          const exitCode = status.signal !== undefined ? 128 + status.signal : (status.exitCode ?? 0);
          return { exitCode, stdout: status.stdout, stderr: status.stderr, truncated: status.truncated };
        }
        signal?.throwIfAborted();
        await sleep(delayMs);
        delayMs = Math.min(200, delayMs * 2);
      }
    },

    execStart,
    execStatus,

    async readFile(path) {
      const handle = await command<number>('guest-file-open', { path, mode: 'r' });
      const chunks: Buffer[] = [];
      try {
        for (;;) {
          const r = await command<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', {
            handle,
            count: chunkBytes,
          });
          if (r.count > 0) chunks.push(fromBase64(r['buf-b64']));
          if (r.eof || r.count === 0) break;
        }
      } finally {
        await command('guest-file-close', { handle }).catch(() => {});
      }
      return Buffer.concat(chunks);
    },

    async writeFile(path, data) {
      const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
      const handle = await command<number>('guest-file-open', { path, mode: 'w' });
      try {
        for (let at = 0; at < bytes.length; ) {
          const chunk = bytes.subarray(at, at + chunkBytes);
          const r = await command<{ count: number }>('guest-file-write', {
            handle,
            'buf-b64': base64(chunk),
          });
          if (r.count <= 0)
            throw internal(`The guest agent wrote nothing to ${path}: is the guest's disk full?`);
          at += r.count;
        }
        await command('guest-file-flush', { handle });
      } finally {
        await command('guest-file-close', { handle }).catch(() => {});
      }
    },

    shutdown(mode = 'powerdown') {
      return serial(async () => {
        if (!synced) await doSync(requestTimeoutMs);
        if (closed) throw closed;
        const request = JSON.stringify({ execute: 'guest-shutdown', arguments: { mode } });
        await new Promise<void>((resolve, reject) =>
          stream.write(`${request}\n`, (err) => (err ? reject(err) : resolve())),
        );
        // No answer comes; whatever arrives later must not pass for the next request's.
        synced = false;
      });
    },

    osInfo() {
      return command<Record<string, unknown>>('guest-get-osinfo');
    },

    command,

    close() {
      stream.off('data', onData);
      onEnd();
      stream.destroy();
    },
  };
  return client;
}

/** Connects to a unix socket on which a guest agent answers (QEMU chardev or qemu-ga's unix-listen). */
export function connectQga(
  socketPath: string,
  options: QgaClientOptions & {
    connectTimeoutMs?: number;
    /** Called when the socket closes, whether or not it ever connected. */
    onClose?: () => void;
  } = {},
) {
  const timeoutMs = options.connectTimeoutMs ?? 5000;
  return new Promise<QgaClient>((resolve, reject) => {
    const socket = connect(socketPath);
    if (options.onClose) socket.once('close', options.onClose);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unavailable(`Cannot connect to the guest agent socket ${socketPath} within ${timeoutMs} ms.`));
    }, timeoutMs);
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(unavailable(`Cannot connect to the guest agent socket ${socketPath}: ${e.message}.`));
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(createQgaClient(socket, options));
    });
  });
}
