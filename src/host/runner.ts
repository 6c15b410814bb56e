import { type ChildProcess, spawn } from 'node:child_process';
import type { Stream } from 'node:stream';
import { TrivisorError } from '../core/errors.ts';

/** Result of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string | Buffer;
  cwd?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Return a non-zero exit as a result instead of throwing. */
  allowFailure?: boolean;
  signal?: AbortSignal;
}

export interface SpawnOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** The child's environment is `env` alone (nothing of the daemon's), not `env` added to the daemon's. */
  envOnly?: boolean;
  /** stdio of the child: pipes by default; a number or a socket is an open descriptor to hand over. */
  stdio?: Array<'pipe' | 'ignore' | 'inherit' | number | Stream>;
  detached?: boolean;
}

/**
 * Every command Trivisor runs on the host goes through this, so that drivers can
 * be unit-tested against a recording fake and system-tested for real.
 */
export interface ProcessRunner {
  /** Runs argv to completion; throws Internal with the command's stderr on failure unless allowFailure. */
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
  /** Starts argv and hands back the live child (exec sessions, streams). */
  spawn(argv: readonly string[], options?: SpawnOptions): ChildProcess;
}

/** Error thrown when a command fails: carries the argv and exit code. */
export class CommandError extends TrivisorError {
  readonly argv: readonly string[];
  readonly exitCode: number;
  readonly stderr: string;
  constructor(argv: readonly string[], result: RunResult) {
    const detail = (result.stderr || result.stdout).trim().split('\n').slice(-3).join(' ').slice(0, 500);
    super('Internal', `${argv[0]} failed (exit ${result.code}): ${detail || 'no output'}`);
    this.argv = argv;
    this.exitCode = result.code;
    this.stderr = result.stderr;
  }
}

/** The real runner: child_process.spawn without a shell. */
export function hostRunner(): ProcessRunner {
  return {
    run(argv, options = {}) {
      return new Promise((resolve, reject) => {
        const [cmd, ...args] = argv;
        if (!cmd) return reject(new TypeError('empty argv'));
        const child = spawn(cmd, args, {
          cwd: options.cwd,
          env: options.env ? { ...process.env, ...options.env } : process.env,
          stdio: ['pipe', 'pipe', 'pipe'],
          signal: options.signal,
          timeout: options.timeoutMs,
          killSignal: 'SIGKILL',
        });
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        child.stdout.on('data', (d: Buffer) => out.push(d));
        child.stderr.on('data', (d: Buffer) => err.push(d));
        child.on('error', (e) =>
          reject(new TrivisorError('Internal', `cannot run ${cmd}: ${e.message}`, { cause: e })),
        );
        child.on('close', (code, sig) => {
          const result: RunResult = {
            code: code ?? (sig ? 128 : 1),
            stdout: Buffer.concat(out).toString('utf8'),
            stderr: Buffer.concat(err).toString('utf8') + (sig ? `\nkilled by ${sig}` : ''),
          };
          if (result.code !== 0 && !options.allowFailure) reject(new CommandError(argv, result));
          else resolve(result);
        });
        child.stdin.on('error', () => {});
        child.stdin.end(options.input ?? '');
      });
    },
    spawn(argv, options = {}) {
      const [cmd, ...args] = argv;
      if (!cmd) throw new TypeError('empty argv');
      return spawn(cmd, args, {
        cwd: options.cwd,
        env: options.env ? { ...(options.envOnly ? {} : process.env), ...options.env } : process.env,
        stdio: options.stdio ?? ['pipe', 'pipe', 'pipe'],
        detached: options.detached ?? false,
      });
    },
  };
}

/**
 * How a spawned child ended: its exit code (128 when a signal ended it, 127 when it could not
 * start) and what it wrote on stderr (when its stderr is a pipe). Call it right after spawning,
 * before the child can write.
 */
export function childEnded(child: ChildProcess): Promise<{ code: number; stderr: string }> {
  const stderr: Buffer[] = [];
  child.stderr?.on('data', (d: Buffer) => stderr.push(d));
  return new Promise((resolve) => {
    child.on('error', (e) => resolve({ code: 127, stderr: e.message }));
    child.on('close', (code, sig) =>
      resolve({ code: code ?? (sig ? 128 : 1), stderr: Buffer.concat(stderr).toString('utf8') }),
    );
  });
}
