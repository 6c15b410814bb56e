import type { ChildProcess } from 'node:child_process';
import { internal } from '../core/errors.ts';
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
  /** Ends the helper (what it started runs on). */
  close(): void;
}

/**
 * The helper: requests on stdin, `R id count` then `count` items, each `length\n` and its bytes
 * (the log file, PATH, then argv); `K id` kills request id's process. Answers on stdout: `E id code`
 * when it ended, `F id why` when it could not start. SIGCHLD wakes the select() through a pipe of
 * its own. No module is loaded (BEGIN { @INC = () }): x86_64 syscalls by number (setsid 112,
 * exit_group 231). It ends when the daemon closes its stdin (the daemon is gone).
 */
const LAUNCHER_SCRIPT = `
BEGIN { @INC = () }
pipe(my $wake_r, my $wake_w) or die "pipe: $!\\n";
my $old = select($wake_w); $| = 1; select(STDOUT); $| = 1; select($old);
my %pid_of;
my %id_of;
$SIG{CHLD} = sub { syswrite($wake_w, 'x') };
my $in = '';
sub answer { syswrite(STDOUT, $_[0]) }
sub reap {
  for (;;) {
    my $pid = waitpid(-1, 1);
    last if $pid <= 0;
    my $id = delete $id_of{$pid};
    next unless defined $id;
    delete $pid_of{$id};
    my $code = ($? & 127) ? 128 + ($? & 127) : ($? >> 8);
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
sub parse {
  for (;;) {
    return unless $in =~ /\\A([RK]) (\\d+)(?: (\\d+))?\\n/;
    my ($op, $id, $count, $at) = ($1, $2, $3, $+[0]);
    if ($op eq 'K') {
      $in = substr($in, $at);
      kill 'KILL', $pid_of{$id} if defined $pid_of{$id};
      next;
    }
    my @items;
    for (1 .. $count) {
      return unless substr($in, $at) =~ /\\A(\\d+)\\n/;
      my $start = $at + length($1) + 1;
      return if length($in) < $start + $1;
      push @items, substr($in, $start, $1);
      $at = $start + $1;
    }
    $in = substr($in, $at);
    launch($id, @items);
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
    exit 0 if !$got;
    parse();
  }
}
`;

/** The launcher's helper, spawned through `runner` at its first use and again if it ends. */
export function createLauncher(runner: ProcessRunner, log?: Logger): Launcher {
  let helper: ChildProcess | undefined;
  let nextId = 1;
  const waiting = new Map<number, { resolve: (code: number) => void; reject: (e: Error) => void }>();

  const start = (): ChildProcess => {
    const child = runner.spawn(['/usr/bin/perl', '-e', LAUNCHER_SCRIPT], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: '/usr/bin:/bin' },
      envOnly: true,
    });
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => {
      out += chunk;
      const lines = out.split('\n');
      out = lines.pop() ?? '';
      for (const line of lines) {
        const m = /^([EF]) (\d+) (.*)$/.exec(line);
        const w = m && waiting.get(Number(m[2]));
        if (!m || !w) continue;
        waiting.delete(Number(m[2]));
        if (m[1] === 'E') w.resolve(Number(m[3]));
        else w.reject(internal(`The launcher could not start a command: ${m[3]}`));
      }
    });
    child.stderr?.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-2000);
    });
    const gone = () => {
      if (helper !== child) return;
      helper = undefined;
      const why = err.trim().split('\n').pop() || 'no output';
      if (waiting.size > 0) log?.warn({ why, waiting: waiting.size }, 'the launcher ended');
      for (const w of waiting.values())
        w.reject(internal(`The launcher ended before its command did: ${why}`));
      waiting.clear();
    };
    child.once('exit', gone);
    child.once('error', gone);
    child.stdin?.on('error', () => {});
    // Neither the helper nor its pipes keep the daemon alive.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr])
      (s as { unref?: () => void } | null)?.unref?.();
    return child;
  };

  return {
    run(argv, options) {
      if (argv.length === 0) return Promise.reject(internal('Nothing to launch'));
      helper ??= start();
      const child = helper;
      const id = nextId++;
      const items = [options.logFile, options.path, ...argv];
      const frame = `R ${id} ${items.length}\n${items.map((i) => `${Buffer.byteLength(i)}\n${i}`).join('')}`;
      return new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => child.stdin?.write(`K ${id}\n`), options.timeoutMs);
        waiting.set(id, {
          resolve: (code) => {
            clearTimeout(timer);
            resolve(code);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        });
        child.stdin?.write(frame);
      });
    },
    close() {
      helper?.stdin?.end();
      helper = undefined;
    },
  };
}
