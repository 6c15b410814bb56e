import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { internal, TrivisorError } from '../core/errors.ts';
import type { Logger } from './logger.ts';
import type { ProcessRunner } from './runner.ts';

/**
 * Starts commands from a small process of its own instead of from the daemon. A spawn from Node
 * is a fork of the whole daemon (libuv), which copies its page tables on the event loop's thread:
 * the longer the more memory the daemon holds, and the daemon holds more the more guests it has
 * (decision 0097: 19 ms a spawn at 2,000 ct guests under load, 28 ms → 164 ms for a Node process
 * of 100 → 450 MiB). The helper is a few MiB of perl, so its fork costs about the same at any N.
 */
export interface Launcher {
  /**
   * Runs `argv` with an environment of `PATH=path` alone, stdin from /dev/null, stdout and stderr
   * appended to `logFile` (made 0600 if missing), in a session of its own; resolves its exit code
   * (128 + the signal when one ended it, 127 when it could not be run). Past `timeoutMs` it is
   * SIGKILLed.
   */
  run(
    argv: readonly string[],
    options: { path: string; logFile: string; timeoutMs: number },
  ): Promise<number>;
  /**
   * Runs `argv` to its end as the daemon's own spawn would (its environment exactly `env`, its cwd,
   * stdin fed `input`), its stdout and stderr captured through files in the launcher's directory;
   * resolves its exit code and signal (0 when none) and both outputs. Past `timeoutMs` (or when
   * `signal` aborts) it is SIGKILLed. Rejects when it cannot be run (`cannot run …`), when the
   * signal aborted it, or when the helper ends first.
   */
  capture(
    argv: readonly string[],
    options: {
      env: Record<string, string | undefined>;
      cwd?: string;
      input?: string | Buffer;
      timeoutMs?: number;
      signal?: AbortSignal;
    },
  ): Promise<{ code: number; signal: number; stdout: Buffer; stderr: Buffer }>;
  /** Ends the helper (what it started runs on); requests in flight are rejected. */
  close(): void;
}

export interface LauncherOptions {
  /**
   * Where `capture` keeps a command's stdin, stdout and stderr while it runs: emptied and made 0700
   * at the first capture (the daemon gives one under its state directory); a new directory under
   * the system's temporary one, removed at close, when not given.
   */
  dir?: string;
  /**
   * How long after a SIGKILL sent for a timeout or an abort the helper may take to answer before it
   * is taken for stuck: it is killed (its requests fail) and the next request starts a new one
   * (30 s by default: a helper that answers late under load costs every request it has in flight).
   */
  killGraceMs?: number;
}

/**
 * The helper. Requests on stdin, each a header line and `count` items, each `length\n` and its
 * bytes:
 * - `R id count`: the log file, PATH, then argv (Launcher.run: setsid, output appended to the log).
 * - `C id count`: a directory, the cwd ('' for the helper's), stdin's bytes, the number of
 *   environment items, the items (`NAME=value`), then argv (Launcher.capture). The child writes its
 *   stdin to `dir/id.in` (unlinked once open), its stdout and stderr to `dir/id.out` and `dir/id.err`
 *   (O_EXCL, 0600); at its end the helper reads both, unlinks them and answers with their bytes.
 * - `K id`: SIGKILL to request id's process.
 * Answers on stdout: `E id code` when an R ended (128 + the signal that ended it), `O id code signal
 * outlen errlen\n` then the bytes of stdout and of stderr when a C ended, `F id why` when a request
 * could not start (no fork), `N id why` from a C's child that could not run its command (before
 * that C's `O`: the answer for it, once its files are gone). SIGCHLD wakes the
 * select() through a pipe of its own. No module is loaded (BEGIN { @INC = () }): x86_64 syscalls by
 * number (setsid 112, exit_group 231), open(2) flags by value, EINTR as 4. It ends when the daemon
 * closes its stdin (the daemon is gone); what it started runs on.
 */
const LAUNCHER_SCRIPT = `
BEGIN { @INC = () }
pipe(my $wake_r, my $wake_w) or die "pipe: $!\\n";
my $old = select($wake_w); $| = 1; select(STDOUT); $| = 1; select($old);
my %pid_of;
my %id_of;
my %dir_of;
$SIG{CHLD} = sub { syswrite($wake_w, 'x') };
my $in = '';
sub write_all {
  my ($fh, $s) = @_;
  my $at = 0;
  while ($at < length($s)) {
    my $n = syswrite($fh, $s, length($s) - $at, $at);
    if (!defined $n) { next if $! == 4; return 0 }
    $at += $n;
  }
  return 1;
}
sub answer { write_all(\\*STDOUT, $_[0]) or exit 1 }
sub oneline { my $s = join(' ', @_); $s =~ s/\\n/ /g; return $s }
sub slurp {
  my $data = '';
  sysopen(my $fh, $_[0], 0) or return '';
  unlink($_[0]);
  for (;;) {
    my $n = sysread($fh, $data, 1048576, length($data));
    next if !defined $n && $! == 4;
    last if !$n;
  }
  close($fh);
  return $data;
}
sub reap {
  for (;;) {
    my $pid = waitpid(-1, 1);
    last if $pid <= 0;
    my $status = $?;
    my $id = delete $id_of{$pid};
    next unless defined $id;
    delete $pid_of{$id};
    my $dir = delete $dir_of{$id};
    if (defined $dir) {
      my $out = slurp("$dir/$id.out");
      my $err = slurp("$dir/$id.err");
      answer(join(' ', 'O', $id, $status >> 8, $status & 127, length($out), length($err)) . "\\n" . $out . $err);
      next;
    }
    my $code = ($status & 127) ? 128 + ($status & 127) : ($status >> 8);
    answer("E $id $code\\n");
  }
}
sub launch {
  my ($id, $log, $path, @argv) = @_;
  my $pid = fork();
  if (!defined $pid) { answer("F $id fork: $!\\n"); return; }
  if ($pid == 0) {
    $SIG{CHLD} = 'DEFAULT';
    syscall(112);
    open(STDIN, '<', '/dev/null');
    sysopen(my $fh, $log, 0x441, 0600) or do { syswrite(STDERR, "$log: $!\\n"); syscall(231, 126) };
    open(STDOUT, '>&', $fh) or syscall(231, 126);
    open(STDERR, '>&', $fh) or syscall(231, 126);
    %ENV = (PATH => $path);
    exec { $argv[0] } @argv;
    syswrite(STDERR, "cannot run $argv[0]: $!\\n");
    syscall(231, 127);
  }
  $pid_of{$id} = $pid;
  $id_of{$pid} = $id;
}
sub capture {
  my ($id, $dir, $cwd, $input, $count, @rest) = @_;
  my @env = splice(@rest, 0, $count);
  my @argv = @rest;
  my $pid = fork();
  if (!defined $pid) { answer("F $id fork: $!\\n"); return; }
  if ($pid == 0) {
    $SIG{CHLD} = 'DEFAULT';
    # A copy of the answer pipe, closed at exec (perl marks descriptors above 2 close-on-exec).
    open(my $ans, '>&', \\*STDOUT) or syscall(231, 126);
    my $fail = sub { write_all($ans, 'N ' . $id . ' ' . oneline(@_) . "\\n"); syscall(231, 127) };
    if (length($input)) {
      sysopen(my $fh, "$dir/$id.in", 0xC2, 0600) or $fail->("$dir/$id.in: $!");
      unlink("$dir/$id.in");
      write_all($fh, $input) or $fail->("$dir/$id.in: $!");
      sysseek($fh, 0, 0);
      open(STDIN, '<&', $fh) or $fail->("stdin: $!");
    } else {
      open(STDIN, '<', '/dev/null') or $fail->("/dev/null: $!");
    }
    sysopen(my $out, "$dir/$id.out", 0xC1, 0600) or $fail->("$dir/$id.out: $!");
    sysopen(my $err, "$dir/$id.err", 0xC1, 0600) or $fail->("$dir/$id.err: $!");
    open(STDOUT, '>&', $out) or $fail->("stdout: $!");
    open(STDERR, '>&', $err) or $fail->("stderr: $!");
    if (length($cwd)) { chdir($cwd) or $fail->("cannot run $argv[0]: $cwd: $!") }
    %ENV = map { /\\A([^=]*)=(.*)\\z/s ? ($1, $2) : () } @env;
    exec { $argv[0] } @argv;
    $fail->("cannot run $argv[0]: $!");
  }
  $pid_of{$id} = $pid;
  $id_of{$pid} = $id;
  $dir_of{$id} = $dir;
}
sub parse {
  for (;;) {
    return unless $in =~ /\\A([RCK]) (\\d+)(?: (\\d+))?\\n/;
    my ($op, $id, $count, $at) = ($1, $2, $3, $+[0]);
    if ($op eq 'K') {
      substr($in, 0, $at, '');
      kill 'KILL', $pid_of{$id} if defined $pid_of{$id};
      next;
    }
    my @items;
    for (1 .. $count) {
      pos($in) = $at;
      return unless $in =~ /\\G(\\d+)\\n/g;
      my $start = $at + length($1) + 1;
      return if length($in) < $start + $1;
      push @items, substr($in, $start, $1);
      $at = $start + $1;
    }
    substr($in, 0, $at, '');
    if ($op eq 'R') { launch($id, @items) } else { capture($id, @items) }
  }
}
for (;;) {
  my $bits = '';
  vec($bits, fileno(STDIN), 1) = 1;
  vec($bits, fileno($wake_r), 1) = 1;
  my $n = select(my $ready = $bits, undef, undef, undef);
  reap();
  next if $n <= 0;
  if (vec($ready, fileno($wake_r), 1)) { sysread($wake_r, my $drain, 4096); }
  if (vec($ready, fileno(STDIN), 1)) {
    my $got = sysread(STDIN, $in, 65536, length($in));
    next if !defined($got) && $! == 4;
    exit 0 if !$got;
    parse();
  }
}
`;

type Waiter = {
  helper: ChildProcess;
  resolve: (answer: Answer) => void;
  reject: (e: Error) => void;
  /** A capture's file names, removed if the helper ends before it answers. */
  files?: string[];
  /** Why a capture's command could not be run (`N`), its answer once its `O` came. */
  notRun?: Error;
};
type Answer =
  | { kind: 'E'; code: number }
  | { kind: 'O'; code: number; signal: number; stdout: Buffer; stderr: Buffer };

/** One item of a request: its length in bytes, a newline, its bytes. */
const item = (value: string | Buffer): Buffer[] => {
  const bytes = typeof value === 'string' ? Buffer.from(value) : value;
  return [Buffer.from(`${bytes.length}\n`), bytes];
};

/** The launcher's helper, spawned through `runner` at its first use and again if it ends. */
export function createLauncher(runner: ProcessRunner, log?: Logger, options: LauncherOptions = {}): Launcher {
  let helper: ChildProcess | undefined;
  let nextId = 1;
  const waiting = new Map<number, Waiter>();
  const killGraceMs = options.killGraceMs ?? 30_000;
  let dir: string | undefined;
  let ownDir = false;
  /** The capture directory, made at the first capture. */
  const captureDir = (): string => {
    if (dir) return dir;
    if (options.dir) {
      rmSync(options.dir, { recursive: true, force: true });
      mkdirSync(options.dir, { recursive: true, mode: 0o700 });
      chmodSync(options.dir, 0o700);
      dir = options.dir;
    } else {
      dir = mkdtempSync(join(tmpdir(), 'trivisor-launcher-'));
      ownDir = true;
    }
    return dir;
  };
  /** Requests in flight of each helper: they keep the process alive (a lone helper does not). */
  const inFlight = new Map<ChildProcess, number>();
  const holdOpen = (child: ChildProcess, delta: number) => {
    const mine = (inFlight.get(child) ?? 0) + delta;
    const stdout = child.stdout as { ref?: () => void; unref?: () => void } | null;
    if (mine > 0) inFlight.set(child, mine);
    else inFlight.delete(child);
    if (mine > 0 && mine === delta) stdout?.ref?.();
    else if (mine <= 0) stdout?.unref?.();
  };

  const start = (): ChildProcess => {
    const child = runner.spawn(['/usr/bin/perl', '-e', LAUNCHER_SCRIPT], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: '/usr/bin:/bin' },
      envOnly: true,
    });
    let err = '';
    // The answers: lines, and after an `O` line the bytes of both outputs.
    let pending: Buffer = Buffer.alloc(0);
    let body:
      | { id: number; code: number; signal: number; outLength: number; need: number; chunks: Buffer[] }
      | undefined;
    const settle = (id: number, answer: Answer | Error) => {
      const w = waiting.get(id);
      if (!w || w.helper !== child) return;
      waiting.delete(id);
      holdOpen(child, -1);
      if (answer instanceof Error) w.reject(answer);
      else if (w.notRun) w.reject(w.notRun);
      else w.resolve(answer);
    };
    child.stdout?.on('data', (chunk: Buffer) => {
      pending = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
      for (;;) {
        if (body) {
          if (pending.length < body.need) {
            body.chunks.push(pending);
            body.need -= pending.length;
            pending = Buffer.alloc(0);
            break;
          }
          body.chunks.push(pending.subarray(0, body.need));
          pending = pending.subarray(body.need);
          const both = Buffer.concat(body.chunks);
          const { id, code, signal, outLength } = body;
          body = undefined;
          settle(id, {
            kind: 'O',
            code,
            signal,
            stdout: both.subarray(0, outLength),
            stderr: both.subarray(outLength),
          });
          continue;
        }
        const nl = pending.indexOf(10);
        if (nl < 0) break;
        const line = pending.subarray(0, nl).toString('utf8');
        pending = pending.subarray(nl + 1);
        const o = /^O (\d+) (\d+) (\d+) (\d+) (\d+)$/.exec(line);
        if (o) {
          const [id, code, signal, outLength, errLength] = o.slice(1).map(Number) as [
            number,
            number,
            number,
            number,
            number,
          ];
          body = { id, code, signal, outLength, need: outLength + errLength, chunks: [] };
          continue;
        }
        const m = /^([EFN]) (\d+) (.*)$/.exec(line);
        if (!m) continue;
        const id = Number(m[2]);
        if (m[1] === 'E') settle(id, { kind: 'E', code: Number(m[3]) });
        else if (m[1] === 'F') settle(id, internal(`The launcher could not start a command: ${m[3]}`));
        else {
          // A capture's `cannot run`, as the daemon's spawn would say it: given at its `O`.
          const w = waiting.get(id);
          if (w && w.helper === child) w.notRun = new TrivisorError('Internal', m[3] ?? '');
        }
      }
    });
    child.stderr?.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-2000);
    });
    const gone = () => {
      if (helper === child) helper = undefined;
      const why = err.trim().split('\n').pop() || 'no output';
      const mine = [...waiting].filter(([, w]) => w.helper === child);
      if (mine.length > 0) log?.warn({ why, waiting: mine.length }, 'the launcher ended');
      for (const [id, w] of mine) {
        waiting.delete(id);
        holdOpen(child, -1);
        for (const f of w.files ?? []) rmSync(f, { force: true });
        w.reject(internal(`The launcher ended before its command did: ${why}`));
      }
    };
    // 'close': after its last answer was read, not only after it exited.
    child.once('close', gone);
    child.once('error', gone);
    child.stdin?.on('error', () => {});
    // Neither the helper nor its pipes keep the daemon alive (its requests in flight do).
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr])
      (s as { unref?: () => void } | null)?.unref?.();
    return child;
  };

  /** Sends a request and waits for its answer; a SIGKILL at `timeoutMs` or when `signal` aborts. */
  const request = (
    frame: Buffer[],
    id: number,
    limits: { timeoutMs?: number; signal?: AbortSignal; files?: string[]; onAbort?: () => Error },
  ): Promise<Answer> => {
    helper ??= start();
    const child = helper;
    return new Promise<Answer>((resolve, reject) => {
      let grace: NodeJS.Timeout | undefined;
      const kill = () => {
        child.stdin?.write(`K ${id}\n`);
        // A helper that does not answer a kill is stuck: it goes, and its requests fail.
        grace ??= setTimeout(() => {
          log?.warn({ id }, 'the launcher did not answer a kill; ending it');
          child.kill('SIGKILL');
        }, killGraceMs);
      };
      const timer = limits.timeoutMs !== undefined ? setTimeout(kill, limits.timeoutMs) : undefined;
      let aborted: Error | undefined;
      const onAbort = () => {
        aborted = limits.onAbort?.() ?? new Error('aborted');
        kill();
      };
      limits.signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => {
        clearTimeout(timer);
        clearTimeout(grace);
        limits.signal?.removeEventListener('abort', onAbort);
      };
      waiting.set(id, {
        helper: child,
        ...(limits.files && { files: limits.files }),
        resolve: (answer) => {
          done();
          if (aborted) reject(aborted);
          else resolve(answer);
        },
        reject: (e) => {
          done();
          reject(aborted ?? e);
        },
      });
      holdOpen(child, 1);
      child.stdin?.write(Buffer.concat(frame));
    });
  };

  return {
    async run(argv, options) {
      if (argv.length === 0) throw internal('Nothing to launch');
      const id = nextId++;
      const items = [options.logFile, options.path, ...argv];
      const answer = await request([Buffer.from(`R ${id} ${items.length}\n`), ...items.flatMap(item)], id, {
        timeoutMs: options.timeoutMs,
      });
      return answer.code;
    },
    async capture(argv, options) {
      if (argv.length === 0) throw internal('Nothing to run');
      const where = captureDir();
      const id = nextId++;
      const env = Object.entries(options.env).flatMap(([k, v]) =>
        v === undefined || k.includes('=') ? [] : [`${k}=${v}`],
      );
      const items: Array<string | Buffer> = [
        where,
        options.cwd ?? '',
        options.input ?? '',
        String(env.length),
        ...env,
        ...argv,
      ];
      const cmd = argv[0];
      const abortError = () =>
        new TrivisorError('Internal', `cannot run ${cmd}: The operation was aborted`, {
          cause: options.signal?.reason,
        });
      if (options.signal?.aborted) throw abortError();
      const answer = await request([Buffer.from(`C ${id} ${items.length}\n`), ...items.flatMap(item)], id, {
        ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }),
        ...(options.signal && { signal: options.signal }),
        files: ['in', 'out', 'err'].map((x) => join(where, `${id}.${x}`)),
        onAbort: abortError,
      });
      if (answer.kind !== 'O') throw internal(`The launcher answered request ${id} out of turn`);
      return { code: answer.code, signal: answer.signal, stdout: answer.stdout, stderr: answer.stderr };
    },
    close() {
      helper?.stdin?.end();
      helper = undefined;
      if (ownDir && dir) rmSync(dir, { recursive: true, force: true });
      if (ownDir) dir = undefined;
    },
  };
}
