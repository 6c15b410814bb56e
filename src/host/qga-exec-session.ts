import { constants } from 'node:os';
import { PassThrough, Writable } from 'node:stream';
import { internal, invalidArgument, notSupported } from '../core/errors.ts';
import type { ExecOptions, ExecSession } from '../drivers/guest-driver.ts';
import type { QgaClient } from './qga-client.ts';

/** The guest kit's static busybox (src/images/guest-kit.ts): present in every vm and pvm guest. */
export const GUEST_BUSYBOX = '/.trivisor/busybox';

/** PATH of commands the agent runs. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Options of qgaExecSession on top of the driver's ExecOptions. */
export interface QgaExecSessionOptions extends ExecOptions {
  /** Busybox in the guest that changes directory and user for the command; default the kit's. */
  busyboxPath?: string;
}

/**
 * The argv the agent runs: the command itself, or wrapped by the guest's
 * busybox when it must start in another directory or as another user (the
 * agent can do neither). start-stop-daemon execs in place, so the pid the
 * agent reports stays the command's and signals reach it.
 */
export function qgaExecArgv(options: QgaExecSessionOptions): string[] {
  const bb = options.busyboxPath ?? GUEST_BUSYBOX;
  let argv = [...options.command];
  if (options.user !== undefined || options.group !== undefined) {
    const user = options.user ?? 0;
    const group = options.group ?? user;
    const [program, ...rest] = argv;
    argv = [
      bb,
      'start-stop-daemon',
      '-S',
      '-p',
      '/nonexistent',
      '-c',
      `${user}:${group}`,
      '-x',
      program ?? '',
      '--',
      ...rest,
    ];
  }
  if (options.cwd !== undefined && options.cwd !== '/') {
    argv = [
      bb,
      'sh',
      '-c',
      'cd -- "$1" || exit 126; shift; exec "$@"',
      'trivisor-exec',
      options.cwd,
      ...argv,
    ];
  }
  // Outermost: the command leads its own session and process group, so that a SIGKILL (a
  // cancelled operation, a client gone) reaches what it started too (killArgv). The agent's child
  // leads no group, so busybox setsid execs in place and the agent's pid stays the command's.
  // Only with the kit's busybox: a guest with its own agent may have no setsid.
  if (bb === GUEST_BUSYBOX) argv = [bb, 'setsid', ...argv];
  return argv;
}

/**
 * The guest command that sends signal `number` to an exec's command: SIGKILL
 * goes to its whole process group when qgaExecArgv made it a group leader
 * (its background children, reparented or not, would live on otherwise);
 * other signals to the command alone, which may handle them.
 */
export function killArgv(busyboxPath: string, number: number, pid: number): string[] {
  const grouped = busyboxPath === GUEST_BUSYBOX && number === constants.signals.SIGKILL;
  return [busyboxPath, 'kill', `-${number}`, grouped ? `-${pid}` : String(pid)];
}

/**
 * Adapts the guest agent to the driver's ExecSession. The agent cannot stream:
 * stdin is collected until it ends (or is destroyed) and passed whole as the
 * command's input, and stdout and stderr arrive when the command ends.
 * Signals are sent with the guest's own `kill`; a signal before the command
 * started cancels it. Agent failures end the session with exit code 255 and
 * the reason on stderr, like ssh.
 */
export function qgaExecSession(client: QgaClient, options: QgaExecSessionOptions): ExecSession {
  if (options.tty) {
    throw notSupported('`vm` and `pvm` guests have no terminal exec yet: run without -t.');
  }
  if (options.command.length === 0)
    throw invalidArgument('The command to run is empty: give at least a program.');
  const argv = qgaExecArgv(options);
  const env = { PATH: DEFAULT_PATH, HOME: (options.user ?? 0) === 0 ? '/root' : '/', ...options.env };
  const bb = options.busyboxPath ?? GUEST_BUSYBOX;
  return collectingExecSession({
    async run({ input, stdout, stderr, started }) {
      const r = await client.exec(argv, {
        env,
        ...(input.length > 0 ? { input } : {}),
        onStart: started,
      });
      stdout.write(r.stdout);
      stderr.write(
        r.truncated
          ? Buffer.concat([
              r.stderr,
              Buffer.from('trivisor: the guest agent kept only the first 16 MiB of output\n'),
            ])
          : r.stderr,
      );
      return r.exitCode;
    },
    kill(signal, pid) {
      client.exec(killArgv(bb, signal, pid), { env: { PATH: DEFAULT_PATH } }).catch(() => {});
    },
  });
}

/** What a collecting session's `run` gets. */
export interface CollectedCommand {
  /** Everything written to the session's stdin. */
  input: Buffer;
  /** Where the command's output goes; the session ends both when `run` settles. */
  stdout: Writable;
  stderr: Writable;
  /** To call once the command's pid is known: a signal that came before is sent then. */
  started(pid: number): void;
}

/**
 * The ExecSession shell of agents that cannot stream input: stdin is collected
 * until it ends (or is destroyed), then `run` starts the command with it whole.
 * A signal before the start cancels the command (exit 128+n); one before its
 * pid is known is sent once `started` gives it. A failed `run` ends the
 * session with exit code 255 and the reason on stderr, like ssh.
 */
export function collectingExecSession(handlers: {
  run(command: CollectedCommand): Promise<number>;
  kill(signal: number, pid: number): void;
  /** Called with the error of a failed `run` before the session ends. */
  onError?(e: unknown): void;
}): ExecSession {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const input: Buffer[] = [];
  let state: 'collecting' | 'running' | 'done' = 'collecting';
  let pid: number | undefined;
  let cancelledBy: number | undefined;
  // A signal that came while the command was starting, before its pid was known.
  let early: number | undefined;
  let settle: (code: number) => void = () => {};
  const exit = new Promise<number>((resolve) => {
    settle = resolve;
  });

  const finish = (code: number, message?: string): void => {
    state = 'done';
    stdout.end();
    stderr.end(message);
    settle(code);
  };

  const start = (): void => {
    if (state !== 'collecting') return;
    state = 'running';
    if (cancelledBy !== undefined) {
      finish(128 + cancelledBy);
      return;
    }
    handlers
      .run({
        input: Buffer.concat(input),
        stdout,
        stderr,
        started: (p) => {
          pid = p;
          if (early !== undefined) handlers.kill(early, p);
        },
      })
      .then(
        (code) => finish(code),
        (e: unknown) => {
          handlers.onError?.(e);
          finish(255, `${e instanceof Error ? e.message : String(e)}\n`);
        },
      );
  };

  const stdin = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      input.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
      callback();
    },
    final(callback) {
      start();
      callback();
    },
  });
  // A destroyed stdin is an ended one, as for a pipe whose writer went away.
  stdin.on('close', start);
  stdin.on('error', () => {});

  return {
    stdin,
    stdout,
    stderr,
    resize() {
      // No terminal: nothing to resize.
    },
    signal(signal) {
      const number = constants.signals[signal];
      if (number === undefined) return;
      if (state === 'collecting') {
        cancelledBy = number;
        start();
        return;
      }
      if (state !== 'running') return;
      if (pid === undefined) early = number;
      else handlers.kill(number, pid);
    },
    exit,
  };
}

/** Options of qgaPushFile. */
export interface QgaPushFileOptions {
  /** Permission bits of the file; default 0o644 (the agent itself creates files world-writable). */
  mode?: number;
  uid?: number;
  gid?: number;
  busyboxPath?: string;
}

/**
 * Writes a file into the guest through the agent and then sets its mode and
 * owner with the guest's busybox, since guest-file-open creates files 0666.
 */
export async function qgaPushFile(
  client: QgaClient,
  path: string,
  data: Buffer | string,
  options: QgaPushFileOptions = {},
): Promise<void> {
  const bb = options.busyboxPath ?? GUEST_BUSYBOX;
  await client.writeFile(path, data);
  const mode = (options.mode ?? 0o644).toString(8).padStart(4, '0');
  const owner = options.uid !== undefined ? `${options.uid}:${options.gid ?? options.uid}` : undefined;
  // $0 is the busybox itself: the image may have no chmod or chown of its own.
  const script = owner ? '"$0" chmod "$1" "$3" && "$0" chown "$2" "$3"' : '"$0" chmod "$1" "$3"';
  const r = await client.exec([bb, 'sh', '-c', script, bb, mode, owner ?? '', path], {
    env: { PATH: DEFAULT_PATH },
  });
  if (r.exitCode !== 0) {
    throw internal(`Cannot set the mode or owner of ${path} in the guest: ${r.stderr.toString().trim()}.`);
  }
}
