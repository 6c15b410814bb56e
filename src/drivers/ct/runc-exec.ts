import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { readChildPids, readProcessTree } from '../../host/proc-stat.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import type { ExecSession } from '../guest-driver.ts';

/** Quotes one word for /bin/sh. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Exit code of a finished child, 128+n when signal n killed it (the shell's convention). */
function exitCodeOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (constants.signals[signal] ?? 0) : 0);
}

function exitOf(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    child.once('error', () => resolve(127));
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) =>
      resolve(exitCodeOf(code, signal)),
    );
  });
}

/** How long runc may take to name the command (write its pid file) or to end after it. */
const RUNC_GRACE_MS = 10_000;

/** The host pid that runc wrote to `pidFile`, undefined while it has written none. */
async function readPidFile(pidFile: string): Promise<number | undefined> {
  const text = await readFile(pidFile, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 1 ? pid : undefined;
}

/**
 * Kills the command that `runc exec` started, and what it started, from the
 * host. A SIGKILL to `runc exec` itself ends runc only: it forwards the
 * signals it can catch, and with runc gone the command runs on in the guest.
 * runc writes the command's host pid to `pidFile` (`runc exec --pid-file`).
 * Its tree (readProcessTree: descendants, and the group and session it leads,
 * which holds what a shell put in the background even once reparented to the
 * guest's init) is stopped first, scan after scan until a scan finds nothing
 * new, so nothing forks away between a scan and the kill; then all of it gets
 * SIGKILL. The pid is read while runc runs: runc waits for the command, so the
 * pid is the command's and not a reused one. runc then ends by itself; one
 * that does not (or never named its command) is killed as before.
 */
async function killGuestCommand(child: ChildProcess, pidFile: string, exited: () => boolean): Promise<void> {
  let pid: number | undefined;
  for (const deadline = Date.now() + RUNC_GRACE_MS; !exited() && Date.now() < deadline; await sleep(50)) {
    pid = await readPidFile(pidFile);
    if (pid !== undefined) break;
  }
  if (pid !== undefined) {
    const stopped = new Set<number>();
    for (let round = 0; round < 50; round++) {
      const fresh = (await readProcessTree(pid)).filter((p) => !stopped.has(p));
      if (fresh.length === 0) break;
      for (const p of fresh) {
        stopped.add(p);
        signalPid(p, 'SIGSTOP');
      }
    }
    for (const p of stopped) signalPid(p, 'SIGKILL');
  }
  for (const deadline = Date.now() + RUNC_GRACE_MS; !exited() && Date.now() < deadline; ) await sleep(50);
  if (!exited()) child.kill('SIGKILL');
}

function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

/**
 * What a session's signal() does with SIGKILL (a cancelled operation, a
 * client that went away): kill the command in the guest, once.
 */
function guestKiller(child: ChildProcess, pidFile: string, exit: Promise<number>): () => void {
  let exited = false;
  void exit.then(() => {
    exited = true;
  });
  let killing = false;
  return () => {
    if (killing) return;
    killing = true;
    killGuestCommand(child, pidFile, () => exited).catch(() => {
      if (!exited) child.kill('SIGKILL');
    });
  };
}

/**
 * Runs `runc exec` (argv without -t, with `--pid-file pidFile`) with plain
 * pipes: stdout and stderr stay apart.
 */
export function pipeExecSession(
  runner: ProcessRunner,
  argv: readonly string[],
  pidFile: string,
): ExecSession {
  const child = runner.spawn(argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  if (!child.stdin || !child.stdout || !child.stderr) throw new Error('exec child has no pipes');
  child.stdin.on('error', () => {});
  const exit = exitOf(child);
  const kill = guestKiller(child, pidFile, exit);
  return {
    stdin: child.stdin,
    stdout: child.stdout,
    stderr: child.stderr,
    resize() {},
    signal(signal) {
      if (signal === 'SIGKILL') return kill();
      // runc exec forwards the signals it can catch to the process in the guest.
      child.kill(signal);
    },
    exit,
  };
}

/**
 * Runs `runc exec -t` (argv including -t) on a pseudo-terminal. runc's
 * foreground tty mode wants its own stdin to be a terminal: it puts it in raw
 * mode, copies between it and the guest's pty, and copies its size to the
 * guest's pty on SIGWINCH. Node cannot make a pty (nor receive one over a
 * console socket), so util-linux `script` makes it; resizing the pty that runc
 * holds as stdin makes the kernel send runc that SIGWINCH. argv holds
 * `--pid-file options.pidFile`, for SIGKILL (see pipeExecSession).
 */

export function ttyExecSession(
  runner: ProcessRunner,
  argv: readonly string[],
  options: { columns: number; rows: number; pidFile: string },
): ExecSession {
  const size = `stty cols ${Math.floor(options.columns)} rows ${Math.floor(options.rows)} 2>/dev/null`;
  const command = `${size}; exec ${argv.map(shellQuote).join(' ')}`;
  const child = runner.spawn(['script', '--quiet', '--return', '--command', command, '/dev/null'], {
    env: { SHELL: '/bin/sh' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  if (!child.stdin || !child.stdout || !child.stderr) throw new Error('exec child has no pipes');
  child.stdin.on('error', () => {});
  child.stderr.resume();
  const exit = exitOf(child);
  const kill = guestKiller(child, options.pidFile, exit);
  /** The runc process: script's child, which holds the pty's slave side as fd 0. */
  const runcPid = async (): Promise<number | undefined> =>
    child.pid ? (await readChildPids(child.pid))[0] : undefined;
  // Input is held until runc has put its terminal in raw mode: before that, the pty's line
  // discipline would echo it and turn control characters into something else. runc is raw
  // once the command's first output arrives; a command that waits for input before it says
  // anything gets it after 500 ms. (Polling the terminal's mode instead raced with runc
  // copying the window size to the guest's terminal.)
  const childStdin = child.stdin;
  let release = (): void => {};
  const ready = new Promise<void>((resolve) => {
    release = resolve;
  });
  child.stdout.once('data', () => release());
  setTimeout(() => release(), 500).unref();
  const whenRaw = () => ready;
  const stdin = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      void whenRaw().then(() => childStdin.write(chunk, () => callback()));
    },
    final(callback) {
      // End of input is not forwarded: on a terminal it can only be a typed Ctrl-D, which reaches
      // runc as its own EOF if it comes before runc's terminal is raw, and runc then closes the
      // guest's console. A person at a terminal types Ctrl-D as data; piped input with -t gets no EOF.
      callback();
    },
  });
  return {
    stdin,
    stdout: child.stdout,
    stderr: null,
    resize(columns, rows) {
      void runcPid()
        .then(async (pid) => {
          if (pid === undefined) return;
          await runner.run(
            [
              'stty',
              '-F',
              `/proc/${pid}/fd/0`,
              'cols',
              String(Math.floor(columns)),
              'rows',
              String(Math.floor(rows)),
            ],
            { allowFailure: true },
          );
        })
        .catch(() => {});
    },
    signal(signal) {
      if (signal === 'SIGKILL') return kill();
      void runcPid().then((pid) => {
        try {
          if (pid !== undefined) process.kill(pid, signal);
          else child.kill(signal);
        } catch {
          // Already gone.
        }
      });
    },
    exit,
  };
}
