import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { cancelled, TrivisorError } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';

/** How a streamed command ended when it did not succeed. */
export interface StreamedFailure {
  code: number;
  /** Last lines of the command's combined output. */
  tail: string;
}

/** Options of runStreamed. */
export interface StreamedOptions {
  /** Called for every line on stdout or stderr. */
  onLine?: (line: string) => void;
  /** Fed to the command's stdin (then closed); stdin is empty otherwise. */
  input?: Readable;
  signal?: AbortSignal;
  env?: Record<string, string>;
  /** Turns a non-zero exit into the error to throw. */
  onFailure: (failure: StreamedFailure) => Error;
}

/**
 * Runs a long command through the runner, handing its output over line by line.
 * It runs in its own process group so cancelling kills its children as well
 * (debootstrap's dpkg, tar's decompressor).
 */
export async function runStreamed(
  runner: ProcessRunner,
  argv: readonly string[],
  options: StreamedOptions,
): Promise<void> {
  const { signal } = options;
  signal?.throwIfAborted();
  const child = runner.spawn(argv, {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
    ...(options.env ? { env: options.env } : {}),
  });
  const tail: string[] = [];
  const feed = (stream: Readable | null): void => {
    if (!stream) return;
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) emit(line);
    });
    stream.on('end', () => {
      if (partial !== '') emit(partial);
    });
  };
  const emit = (line: string): void => {
    tail.push(line);
    if (tail.length > 5) tail.shift();
    options.onLine?.(line);
  };
  feed(child.stdout);
  feed(child.stderr);

  const kill = (): void => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  signal?.addEventListener('abort', kill, { once: true });
  const closed = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, sig) => resolve({ code, sig }));
  });
  const stdin = child.stdin;
  const fed = stdin
    ? options.input
      ? // The command may exit before reading everything (a corrupt archive): its exit status tells why.
        pipeline(options.input, stdin).catch(() => {})
      : Promise.resolve(stdin.end())
    : Promise.resolve();
  try {
    const [{ code, sig }] = await Promise.all([closed, fed]);
    if (signal?.aborted) throw cancelled(`${argv[0]} was cancelled.`);
    if (code !== 0) {
      throw options.onFailure({
        code: code ?? 128,
        tail: [...tail, sig ? `killed by ${sig}` : ''].join('\n').trim(),
      });
    }
  } catch (e) {
    kill();
    if (signal?.aborted && !(e instanceof TrivisorError && e.code === 'Cancelled')) {
      throw cancelled(`${argv[0]} was cancelled.`);
    }
    throw e;
  } finally {
    signal?.removeEventListener('abort', kill);
  }
}
