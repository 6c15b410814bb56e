import type { ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import { Writable } from 'node:stream';
import { readChildPids } from '../../host/proc-stat.ts';
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

/** Runs `runc exec` (argv without -t) with plain pipes: stdout and stderr stay apart. */
export function pipeExecSession(runner: ProcessRunner, argv: readonly string[]): ExecSession {
  const child = runner.spawn(argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  if (!child.stdin || !child.stdout || !child.stderr) throw new Error('exec child has no pipes');
  child.stdin.on('error', () => {});
  return {
    stdin: child.stdin,
    stdout: child.stdout,
    stderr: child.stderr,
    resize() {},
    signal(signal) {
      // runc exec forwards the signals it gets to the process in the guest.
      child.kill(signal);
    },
    exit: exitOf(child),
  };
}

/**
 * Runs `runc exec -t` (argv including -t) on a pseudo-terminal. runc's
 * foreground tty mode wants its own stdin to be a terminal: it puts it in raw
 * mode, copies between it and the guest's pty, and copies its size to the
 * guest's pty on SIGWINCH. Node cannot make a pty (nor receive one over a
 * console socket), so util-linux `script` makes it; resizing the pty that runc
 * holds as stdin makes the kernel send runc that SIGWINCH.
 */

export function ttyExecSession(
  runner: ProcessRunner,
  argv: readonly string[],
  options: { columns: number; rows: number },
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
      void runcPid().then((pid) => {
        try {
          if (pid !== undefined) process.kill(pid, signal);
          else child.kill(signal);
        } catch {
          // Already gone.
        }
      });
    },
    exit: exitOf(child),
  };
}
