import type { ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import {
  CommandError,
  type ProcessRunner,
  type RunOptions,
  type RunResult,
  type SpawnOptions,
} from '../../src/host/runner.ts';

/** One command a fake runner was asked to run or spawn. */
export interface RecordedCall {
  kind: 'run' | 'spawn';
  argv: string[];
  options: RunOptions | SpawnOptions;
}

/** What a scripted command does: its result, and optionally a side effect (e.g. write a pid file). */
export interface ScriptedResult {
  code?: number;
  stdout?: string;
  stderr?: string;
  effect?: () => void | Promise<void>;
}

/** Decides the result of a command; undefined means success with no output. */
export type Responder = (argv: readonly string[]) => ScriptedResult | undefined;

/** A ProcessRunner that records argv and returns scripted results (youki's recording Syscall fake). */
export interface FakeRunner extends ProcessRunner {
  readonly calls: RecordedCall[];
  /** argv of every call, joined with spaces, for compact assertions. */
  commands(): string[];
  /** Adds a responder consulted before earlier ones. */
  respond(responder: Responder): void;
}

export function fakeRunner(initial?: Responder): FakeRunner {
  const calls: RecordedCall[] = [];
  const responders: Responder[] = initial ? [initial] : [];
  const resultOf = (argv: readonly string[]): ScriptedResult => {
    for (let i = responders.length - 1; i >= 0; i--) {
      const r = responders[i]?.(argv);
      if (r) return r;
    }
    return {};
  };
  return {
    calls,
    commands: () => calls.map((c) => c.argv.join(' ')),
    respond(responder) {
      responders.push(responder);
    },
    async run(argv, options = {}) {
      calls.push({ kind: 'run', argv: [...argv], options });
      const scripted = resultOf(argv);
      await scripted.effect?.();
      const result: RunResult = {
        code: scripted.code ?? 0,
        stdout: scripted.stdout ?? '',
        stderr: scripted.stderr ?? '',
      };
      if (result.code !== 0 && !options.allowFailure) throw new CommandError(argv, result);
      return result;
    },
    spawn(argv, options = {}) {
      calls.push({ kind: 'spawn', argv: [...argv], options });
      const scripted = resultOf(argv);
      const child = new EventEmitter() as EventEmitter & {
        stdin: PassThrough;
        stdout: PassThrough;
        stderr: PassThrough;
        pid: number;
        exitCode: number | null;
        kill(signal?: NodeJS.Signals): boolean;
        unref(): void;
      };
      child.stdin = new PassThrough();
      child.stdout = new PassThrough();
      child.stderr = new PassThrough();
      child.pid = 4_000_000;
      child.exitCode = null;
      child.kill = () => true;
      child.unref = () => {};
      setImmediate(async () => {
        await scripted.effect?.();
        if (scripted.stdout) child.stdout.write(scripted.stdout);
        if (scripted.stderr) child.stderr.write(scripted.stderr);
        child.stdout.end();
        child.stderr.end();
        child.exitCode = scripted.code ?? 0;
        child.emit('exit', child.exitCode, null);
        child.emit('close', child.exitCode, null);
      });
      return child as unknown as ChildProcess;
    },
  };
}
