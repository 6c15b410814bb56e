import { randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { invalidArgument, isTrivisorError } from '../../core/errors.ts';
import { createQgaClient, type QgaClient } from '../../host/qga-client.ts';
import {
  collectingExecSession,
  DEFAULT_PATH,
  GUEST_BUSYBOX,
  killArgv,
  qgaExecArgv,
  qgaExecSession,
} from '../../host/qga-exec-session.ts';
import type { ExecOptions, ExecSession } from '../guest-driver.ts';
import { openAgentLine } from './agent-line.ts';
import { pacedLine } from './paced-line.ts';

/** A live conversation with the qemu-ga of one pvm guest, over its serial line ssl1. */
export interface AgentConnection {
  readonly client: QgaClient;
  /** Runs a command through the agent; `configEnv` is the guest's `environment.*` config. */
  exec(options: ExecOptions, configEnv: Record<string, string>): ExecSession;
  /** Sends `signal` (`SIGUSR2`, `SIGRTMIN+3`…) to the guest's pid 1 and returns once the agent started `kill`. */
  signalInit(signal: string, timeoutMs: number): Promise<void>;
  onClose(listener: () => void): void;
  close(): void;
}

/** glibc's SIGRTMIN (the kernel's is 32; glibc keeps two for threads): what systemd's SIGRTMIN+n means. */
const GLIBC_SIGRTMIN = 34;

/** busybox kill's option for a signal name: `-USR2`, or a number for real-time ones (`SIGRTMIN+3` is `-37`). */
export function killSignalArg(signal: string): string {
  const name = signal.trim().replace(/^SIG/, '');
  const rt = /^RTMIN(?:\+(\d+))?$/.exec(name);
  if (rt) return `-${GLIBC_SIGRTMIN + Number(rt[1] ?? 0)}`;
  const number = constants.signals[`SIG${name}` as NodeJS.Signals];
  return number === undefined ? '-TERM' : `-${number}`;
}

/** Bytes per guest-file-read/write of `file push|pull`: each message stays under 2 KiB. */
const FILE_CHUNK_BYTES = 1024;
/** Largest piece per guest-file-read/write: its base64 in JSON stays well under the guest tty's 4 KiB. */
const CHUNK_BYTES = 2048;
/** The kit's private tmpfs in the guest (guest-kit-init-script.ts). */
const KIT_RUN_DIR = '/.trivisor/run';
/** How often a running command's output files are read. */
const POLL_MIN_MS = 10;
const POLL_MAX_MS = 200;

async function writeGuestFile(client: QgaClient, path: string, data: Buffer): Promise<void> {
  const handle = await client.command<number>('guest-file-open', { path, mode: 'w' });
  try {
    for (let at = 0; at < data.length; at += CHUNK_BYTES) {
      const chunk = data.subarray(at, at + CHUNK_BYTES);
      await client.command('guest-file-write', { handle, 'buf-b64': chunk.toString('base64') });
    }
  } finally {
    await client.command('guest-file-close', { handle }).catch(() => {});
  }
}

/**
 * Follows a growing file in the guest: each call returns what was added since
 * the last. The file is reopened each time because the agent reads with stdio,
 * whose end-of-file indicator sticks once reached.
 */
function guestFileFollower(client: QgaClient, path: string) {
  let offset = 0;
  return async (): Promise<Buffer> => {
    // Missing until the command's shell made it: nothing to read yet.
    const handle = await client
      .command<number>('guest-file-open', { path, mode: 'r' })
      .catch(() => undefined);
    if (handle === undefined) return Buffer.alloc(0);
    const chunks: Buffer[] = [];
    try {
      if (offset > 0) await client.command('guest-file-seek', { handle, offset, whence: 'set' });
      for (;;) {
        const r = await client.command<{ count: number; 'buf-b64': string; eof: boolean }>(
          'guest-file-read',
          {
            handle,
            count: CHUNK_BYTES,
          },
        );
        if (r.count > 0) chunks.push(Buffer.from(r['buf-b64'], 'base64'));
        offset += r.count;
        if (r.eof || r.count < CHUNK_BYTES) break;
      }
    } finally {
      await client.command('guest-file-close', { handle }).catch(() => {});
    }
    return Buffer.concat(chunks);
  };
}

/**
 * An exec session for a guest agent behind a UML serial line, where no
 * single message may be large: one larger than the guest tty's 4 KiB buffer
 * throttles UML's line driver (6.1), which then stops reading for good, and
 * large answers stall too. So stdin goes in small guest-file-write requests
 * to a file on the kit's private tmpfs, the command's stdout and stderr go to
 * files there, and those are read back in small pieces while it runs (which
 * streams output, unlike guest-exec's capture). Every request is answered
 * before the next is sent: the agent's own pace is the flow control.
 */
function smallMessageExecSession(client: QgaClient, options: ExecOptions): ExecSession {
  if (options.tty) return qgaExecSession(client, options);
  if (options.command.length === 0)
    throw invalidArgument('The command to run is empty: give at least a program.');
  const env = { PATH: DEFAULT_PATH, HOME: (options.user ?? 0) === 0 ? '/root' : '/', ...options.env };

  return collectingExecSession({
    async run({ input, stdout, stderr, started }) {
      const base = `${KIT_RUN_DIR}/exec-${randomBytes(8).toString('hex')}`;
      const files = { in: `${base}.in`, out: `${base}.out`, err: `${base}.err` };
      if (input.length > 0) await writeGuestFile(client, files.in, input);
      const argv = [
        GUEST_BUSYBOX,
        'sh',
        '-c',
        // Redirections first (as root: the files are the kit's), then the user and directory wrappers.
        // $0 is the input file or empty (then stdin is /dev/null), $1 and $2 the output files.
        'exec >"$1" 2>"$2" || exit 127; if [ -n "$0" ]; then exec <"$0" || exit 127; rm -f "$0"; else exec </dev/null; fi; shift 2; exec "$@"',
        input.length > 0 ? files.in : '',
        files.out,
        files.err,
        ...qgaExecArgv(options),
      ];
      const [path, ...arg] = argv;
      const { pid } = await client.command<{ pid: number }>('guest-exec', {
        path,
        arg,
        env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      });
      started(pid);
      const readOut = guestFileFollower(client, files.out);
      const readErr = guestFileFollower(client, files.err);
      try {
        let delayMs = POLL_MIN_MS;
        for (;;) {
          const status = await client.command<Record<string, unknown>>('guest-exec-status', { pid });
          // Read after the status: once it says exited, the files hold everything.
          const o = await readOut();
          const e = await readErr();
          if (o.length > 0) stdout.write(o);
          if (e.length > 0) stderr.write(e);
          if (status.exited === true) {
            if (typeof status.signal === 'number') return 128 + status.signal;
            return typeof status.exitcode === 'number' ? status.exitcode : 0;
          }
          if (o.length > 0 || e.length > 0) delayMs = POLL_MIN_MS;
          await sleep(delayMs);
          delayMs = Math.min(POLL_MAX_MS, delayMs * 2);
        }
      } finally {
        client
          .command('guest-exec', { path: GUEST_BUSYBOX, arg: ['rm', '-f', files.in, files.out, files.err] })
          .catch(() => {});
      }
    },
    kill(signal, pid) {
      const [path, ...arg] = killArgv(GUEST_BUSYBOX, signal, pid);
      client.command('guest-exec', { path, arg }).catch(() => {});
    },
    // An agent that stopped answering leaves the line in an unknown state: start afresh next time.
    onError(e) {
      if (isTrivisorError(e) && e.code === 'Unavailable') client.close();
    },
  });
}

/** The host ends of a guest's agent line (see agent-line.ts). */
export interface AgentLinePaths {
  /** FIFO the kernel reads as ssl1's input. */
  toGuest: string;
  /** FIFO the kernel writes ssl1's output to. */
  fromGuest: string;
}

/**
 * Opens the guest's agent line and waits until qemu-ga answers a sync
 * (it starts while the guest boots), within `timeoutMs`.
 */
export async function connectAgent(
  paths: AgentLinePaths,
  options: { timeoutMs: number; guestName?: string },
): Promise<AgentConnection> {
  const deadline = Date.now() + options.timeoutMs;
  // Paced as a second line of defence: no message the driver sends should exceed the guest's tty buffer.
  const socket = pacedLine(openAgentLine(paths.toGuest, paths.fromGuest), { chunkBytes: 1024, gapMs: 2 });
  const client = createQgaClient(socket, {
    ...(options.guestName ? { guestName: options.guestName } : {}),
    // guest-file-read/write of file push|pull: 1 KiB is ~1.4 KiB of base64, under the 2 KiB a message may have.
    fileChunkBytes: FILE_CHUNK_BYTES,
  });
  try {
    await client.waitReady({ timeoutMs: Math.max(1000, deadline - Date.now()) });
  } catch (e) {
    client.close();
    throw e;
  }
  return {
    client,
    exec(execOptions, configEnv) {
      return smallMessageExecSession(client, { ...execOptions, env: { ...configEnv, ...execOptions.env } });
    },
    async signalInit(signal, timeoutMs) {
      // Only started, not awaited: init's shutdown may take the agent down before it could report.
      await client.command(
        'guest-exec',
        { path: GUEST_BUSYBOX, arg: ['kill', killSignalArg(signal), '1'] },
        { timeoutMs },
      );
    },
    onClose(listener) {
      socket.once('close', listener);
    },
    close() {
      client.close();
    },
  };
}
