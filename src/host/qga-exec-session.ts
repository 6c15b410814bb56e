import { constants } from 'node:os';
import { PassThrough, Writable } from 'node:stream';
import { internal, invalidArgument, notSupported } from '../core/errors.ts';
import type { ExecOptions, ExecSession } from '../drivers/guest-driver.ts';
import type { QgaClient } from './qga-client.ts';

/** The guest kit's static busybox (src/images/guest-kit.ts): present in every vm and pvm guest. */
export const GUEST_BUSYBOX = '/.trivisor/busybox';

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

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
  return argv;
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

  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const input: Buffer[] = [];
  let state: 'collecting' | 'running' | 'done' = 'collecting';
  let pid: number | undefined;
  let cancelledBy: number | undefined;
  // A signal that came while the agent was starting the command, before its pid was known.
  let early: number | undefined;
  let settle: (code: number) => void = () => {};
  const exit = new Promise<number>((resolve) => {
    settle = resolve;
  });

  const finish = (code: number, out: Buffer, err: Buffer): void => {
    state = 'done';
    stdout.end(out);
    stderr.end(err);
    settle(code);
  };

  const kill = (number: number): void => {
    client.exec([bb, 'kill', `-${number}`, String(pid)], { env: { PATH: DEFAULT_PATH } }).catch(() => {});
  };

  const start = (): void => {
    if (state !== 'collecting') return;
    state = 'running';
    if (cancelledBy !== undefined) {
      finish(128 + cancelledBy, Buffer.alloc(0), Buffer.alloc(0));
      return;
    }
    client
      .exec(argv, {
        env,
        ...(input.length > 0 ? { input: Buffer.concat(input) } : {}),
        onStart: (p) => {
          pid = p;
          if (early !== undefined) kill(early);
        },
      })
      .then(
        (r) =>
          finish(
            r.exitCode,
            r.stdout,
            r.truncated
              ? Buffer.concat([
                  r.stderr,
                  Buffer.from('trivisor: the guest agent kept only the first 16 MiB of output\n'),
                ])
              : r.stderr,
          ),
        (e: unknown) =>
          finish(255, Buffer.alloc(0), Buffer.from(`${e instanceof Error ? e.message : String(e)}\n`)),
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
      else kill(number);
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
