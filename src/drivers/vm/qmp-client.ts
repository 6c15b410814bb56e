import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { cancelled, internal, TrivisorError, unavailable } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import { type FdSource, sendWithFds } from './qemu-fds.ts';

/** What QEMU says first on a QMP connection. */
export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/** An asynchronous event QEMU sends (SHUTDOWN, STOP, RESUME, BALLOON_CHANGE…). */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** A QMP connection in command mode (capabilities negotiated). */
export interface QmpClient {
  readonly greeting: QmpGreeting;
  /**
   * Runs a command; rejects with the QMP error class and description when QEMU refuses it, with
   * Unavailable when it does not answer within `timeoutMs`, and with Cancelled as soon as
   * `signal` aborts (QEMU may still run the command; its late answer is dropped).
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options?: QmpCallOptions): Promise<T>;
  /**
   * Runs a command with descriptors attached (SCM_RIGHTS), each opened by root from its
   * source: `getfd` and `add-fd` hand QEMU files and taps it could not open itself. Only on
   * a client connected with a runner (connectQmp's `runner`).
   */
  executeWithFds<T = unknown>(
    command: string,
    args: Record<string, unknown>,
    fds: readonly FdSource[],
    options?: { timeoutMs?: number },
  ): Promise<T>;
  /**
   * `getfd` with one end of a new connected socket pair named `fdname`; resolves with the
   * other end, paused, once QEMU took it (then e.g. `add_client` gives it to the VNC server;
   * the caller resumes the end when it listens).
   */
  getfdPair(fdname: string, options?: { timeoutMs?: number }): Promise<Socket>;
  /** Calls `listener` for every event; returns a function that stops listening. */
  onEvent(listener: (event: QmpEvent) => void): () => void;
  /** Resolves with the first event named `name` that arrives from now on. */
  waitForEvent(name: string, options?: { timeoutMs?: number }): Promise<QmpEvent>;
  /** Resolves when the connection is gone (QEMU quit or close() was called). */
  readonly closed: Promise<void>;
  close(): void;
}

/** How long one command may wait for QEMU's answer, and what ends the wait sooner. */
export interface QmpCallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Error QEMU returned for a command. */
export class QmpCommandError extends TrivisorError {
  readonly errorClass: string;
  constructor(command: string, errorClass: string, desc: string) {
    super('Internal', `QEMU refused ${command}: ${desc} (${errorClass})`);
    this.errorClass = errorClass;
  }
}

const DEFAULT_TIMEOUT_MS = 10_000;

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * Speaks QMP over `stream`: waits for the greeting, negotiates capabilities, then
 * matches replies to commands by id (QEMU answers in order, but ids make a reply
 * to a timed-out command harmless) and hands events to listeners.
 */
export function createQmpClient(
  stream: Duplex,
  options: {
    timeoutMs?: number;
    /** Writes one line on the stream with descriptors attached; absent: executeWithFds refuses. */
    sendWithFds?: (line: string, fds: readonly FdSource[]) => Promise<Socket[]>;
  } = {},
): Promise<QmpClient> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  // Lines go out one after another: a line sent with descriptors is written by another process,
  // which must not interleave with bytes Node still buffers.
  let writing: Promise<void> = Promise.resolve();
  const pending = new Map<string, Pending>();
  const listeners = new Set<(event: QmpEvent) => void>();
  let nextId = 1;
  let buffer = '';
  let gone: Error | undefined;
  let onGreeting: ((g: QmpGreeting) => void) | undefined;
  let onGreetingError: ((e: Error) => void) | undefined;

  let markClosed: () => void = () => {};
  const closed = new Promise<void>((resolve) => {
    markClosed = resolve;
  });

  const fail = (e: Error): void => {
    if (gone) return;
    gone = e;
    for (const [id, p] of pending) {
      clearTimeout(p.timer);
      pending.delete(id);
      p.reject(unavailable(`QMP connection closed before QEMU answered ${p.command}: ${e.message}`));
    }
    onGreetingError?.(e);
    markClosed();
  };

  const handle = (message: Record<string, unknown>): void => {
    if ('QMP' in message) {
      onGreeting?.(message.QMP as QmpGreeting);
      return;
    }
    if (typeof message.event === 'string') {
      const event: QmpEvent = {
        event: message.event,
        data: (message.data as Record<string, unknown> | undefined) ?? {},
        timestamp: (message.timestamp as QmpEvent['timestamp'] | undefined) ?? {
          seconds: 0,
          microseconds: 0,
        },
      };
      for (const l of [...listeners]) l(event);
      return;
    }
    const id = typeof message.id === 'string' ? message.id : undefined;
    const p = id ? pending.get(id) : undefined;
    if (!id || !p) return;
    pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in message) {
      const err = message.error as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, err.class ?? 'GenericError', err.desc ?? 'no description'));
    } else {
      p.resolve(message.return);
    }
  };

  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffer += chunk;
    for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line === '') continue;
      try {
        handle(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // A malformed line cannot be matched to anything: skip it.
      }
    }
  });
  stream.on('error', (e) => fail(e));
  stream.on('close', () => fail(new Error('socket closed')));

  /** `onEnds` gets the daemon's ends of the line's socket pairs, once it is sent. */
  const send = <T>(
    command: string,
    args: Record<string, unknown> | undefined,
    how: { ms: number; fds?: readonly FdSource[]; onEnds?: (ends: Socket[]) => void; signal?: AbortSignal },
  ): Promise<T> => {
    const { ms, fds, onEnds, signal } = how;
    if (gone) return Promise.reject(unavailable(`QMP connection is closed: cannot run ${command}.`));
    if (signal?.aborted) return Promise.reject(cancelled(`${command} was not sent: the wait was cancelled`));
    const { sendWithFds } = options;
    if (fds && !sendWithFds) {
      return Promise.reject(internal(`QMP client cannot pass descriptors: cannot run ${command}.`));
    }
    const id = `t${nextId++}`;
    return new Promise<T>((resolveCall, rejectCall) => {
      const onAbort = () => {
        if (!pending.delete(id)) return;
        clearTimeout(timer);
        rejectCall(cancelled(`The wait for QEMU's answer to ${command} was cancelled`));
      };
      const resolve = (v: T) => {
        signal?.removeEventListener('abort', onAbort);
        resolveCall(v);
      };
      const reject = (e: Error) => {
        signal?.removeEventListener('abort', onAbort);
        rejectCall(e);
      };
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(unavailable(`QEMU did not answer ${command} within ${ms}ms.`));
      }, ms);
      pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      signal?.addEventListener('abort', onAbort, { once: true });
      const line = `${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`;
      const write = (): Promise<void> =>
        fds && sendWithFds
          ? sendWithFds(line, fds).then((ends) => onEnds?.(ends))
          : new Promise<void>((done, failed) => stream.write(line, (e) => (e ? failed(e) : done())));
      writing = writing.then(write).catch((e: unknown) => {
        // The line never reached QEMU: no answer will come.
        if (!pending.delete(id)) return;
        clearTimeout(timer);
        reject(e instanceof Error ? e : internal(String(e)));
      });
    });
  };

  return new Promise<QmpClient>((resolve, reject) => {
    const timer = setTimeout(() => {
      stream.destroy();
      reject(unavailable(`QEMU sent no QMP greeting within ${timeoutMs}ms.`));
    }, timeoutMs);
    onGreetingError = (e) => {
      clearTimeout(timer);
      reject(unavailable(`QMP connection closed before the greeting: ${e.message}`));
    };
    onGreeting = (greeting) => {
      clearTimeout(timer);
      onGreeting = undefined;
      onGreetingError = undefined;
      const client: QmpClient = {
        greeting,
        closed,
        execute: (command, args, opts) =>
          send(command, args, {
            ms: opts?.timeoutMs ?? timeoutMs,
            ...(opts?.signal && { signal: opts.signal }),
          }),
        executeWithFds: (command, args, fds, opts) =>
          send(command, args, { ms: opts?.timeoutMs ?? timeoutMs, fds }),
        async getfdPair(fdname, opts) {
          // QEMU may answer before the sender has exited and handed the ends over: wait for both.
          let handOver: (ends: Socket[]) => void = () => {};
          const ends = new Promise<Socket[]>((resolve) => {
            // Paused before anything can arrive (QEMU writes only once the end is put to use): a
            // child's stdio socket flows from the start, and what came before a listener would be lost.
            handOver = (all) => {
              for (const end of all) end.pause();
              resolve(all);
            };
          });
          try {
            await send(
              'getfd',
              { fdname },
              { ms: opts?.timeoutMs ?? timeoutMs, fds: [{ kind: 'pair' }], onEnds: handOver },
            );
          } catch (e) {
            void ends.then((all) => {
              for (const end of all) end.destroy();
            });
            throw e;
          }
          const end = (await ends)[0];
          if (!end) throw internal('The descriptor sender made no socket pair.');
          return end;
        },
        onEvent(listener) {
          listeners.add(listener);
          return () => listeners.delete(listener);
        },
        waitForEvent(name, opts = {}) {
          return new Promise<QmpEvent>((res, rej) => {
            const ms = opts.timeoutMs ?? timeoutMs;
            const t = setTimeout(() => {
              off();
              rej(unavailable(`QEMU sent no ${name} event within ${ms}ms.`));
            }, ms);
            const off = client.onEvent((e) => {
              if (e.event !== name) return;
              clearTimeout(t);
              off();
              res(e);
            });
          });
        },
        close() {
          stream.destroy();
        },
      };
      send('qmp_capabilities', undefined, { ms: timeoutMs }).then(
        () => resolve(client),
        (e: unknown) => {
          stream.destroy();
          reject(e instanceof Error ? e : internal(String(e)));
        },
      );
    };
  });
}

/**
 * Connects to a QMP unix socket and negotiates capabilities. With `runner`, the client
 * can also pass descriptors (executeWithFds) through the perl sender of qemu-fds.ts.
 */
export function connectQmp(
  socketPath: string,
  options: { timeoutMs?: number; runner?: ProcessRunner } = {},
): Promise<QmpClient> {
  return new Promise<QmpClient>((resolve, reject) => {
    const socket = connect(socketPath);
    socket.once('error', (e) =>
      reject(unavailable(`Cannot connect to QMP socket ${socketPath}: ${e.message}`)),
    );
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      const { runner } = options;
      createQmpClient(socket, {
        ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }),
        ...(runner && { sendWithFds: (line, fds) => sendWithFds(runner, socket, line, fds) }),
      }).then(resolve, reject);
    });
  });
}

/** Connects, runs one command, disconnects. */
export async function qmpOnce<T = unknown>(
  socketPath: string,
  command: string,
  options: { args?: Record<string, unknown>; timeoutMs?: number } = {},
): Promise<T> {
  const client = await connectQmp(socketPath, options.timeoutMs ? { timeoutMs: options.timeoutMs } : {});
  try {
    return await client.execute<T>(command, options.args);
  } finally {
    client.close();
  }
}
