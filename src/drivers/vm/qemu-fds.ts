import type { ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import { internal } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';

/**
 * Something the daemon opens as root and hands QEMU as a descriptor, so that
 * QEMU, running as the guest's unprivileged uid, never opens anything of the
 * state dir by path (docs/decisions/0019-qemu-unprivileged.md).
 */
export type FdSource =
  | {
      kind: 'file';
      path: string;
      /** read, read-write, append (created 0600 if missing) or truncate (created 0600). */
      access: 'read' | 'readwrite' | 'append' | 'truncate';
    }
  /** A unix socket bound by root (0600, so only root can connect) and listening. */
  | { kind: 'listen'; path: string }
  /** The persistent tap `name`, attached (TUNSETIFF with a virtio-net header) by root. */
  | { kind: 'tap'; name: string }
  /**
   * One end of a new connected socket pair, whose other end the daemon keeps (sender only):
   * a VNC client's connection handed to QEMU's display with `add_client`.
   */
  | { kind: 'pair' };

/** A file given to QEMU in an fd set (`/dev/fdset/N`): for options that take a file name. */
export type FileSource = Extract<FdSource, { kind: 'file' }>;

const ACCESS_CODE: Record<FileSource['access'], string> = {
  read: 'r',
  readwrite: 'rw',
  append: 'a',
  truncate: 'w',
};

/**
 * One launcher or sender directive per source: `file:N:MODE:PATH`, `listen:N:PATH`, `tap:N:NAME`,
 * `fd:N` (a descriptor the sender was started with: a socket pair's end).
 */
export function directiveOf(fd: number, source: FdSource): string {
  switch (source.kind) {
    case 'pair':
      return `fd:${fd}`;
    case 'file':
      return `file:${fd}:${ACCESS_CODE[source.access]}:${source.path}`;
    case 'listen':
      return `listen:${fd}:${source.path}`;
    case 'tap':
      return `tap:${fd}:${source.name}`;
  }
}

/** QemuOpts values double their commas. */
const optValue = (text: string): string => text.replaceAll(',', ',,');

/** The descriptors a QEMU command line refers to, numbered from 3 as the launcher places them. */
export interface QemuFds {
  /** A descriptor QEMU inherits at `fd`; its number. */
  fd(source: FdSource): number;
  /** A file in an fd set of its own, for options that take a file name: `/dev/fdset/N`. */
  fdset(source: FileSource): string;
  /** `-add-fd fd=…,set=…,opaque=PATH` for every fd set (the path only names it, for people and sweeps). */
  addFdArgs(): string[];
  /** What the launcher opens, in order. */
  readonly entries: ReadonlyArray<{ fd: number; source: FdSource }>;
}

/** A fresh table of descriptors for one QEMU command line. */
export function qemuFds(): QemuFds {
  const entries: Array<{ fd: number; source: FdSource }> = [];
  const sets: Array<{ fd: number; set: number; path: string }> = [];
  const fd = (source: FdSource): number => {
    const n = 3 + entries.length;
    entries.push({ fd: n, source });
    return n;
  };
  return {
    entries,
    fd,
    fdset(source) {
      const n = fd(source);
      const set = sets.length + 1;
      sets.push({ fd: n, set, path: source.path });
      return `/dev/fdset/${set}`;
    },
    addFdArgs() {
      return sets.flatMap((s) => ['-add-fd', `fd=${s.fd},set=${s.set},opaque=${optValue(s.path)}`]);
    },
  };
}

/**
 * perl (Debian's essential perl-base, as in ct-volumes.ts) with @INC emptied: no module is
 * ever loaded, so constants are numbers (x86_64). `open_source` opens one directive's source
 * as root; the launcher and the sender share it.
 */
const OPEN_SOURCE = `
BEGIN { @INC = () }
sub open_source {
  my ($kind, $rest) = split(/:/, $_[0], 2);
  if ($kind eq 'file') {
    my ($n, $mode, $path) = split(/:/, $rest, 3);
    # O_NOFOLLOW: the last component is never a link someone planted.
    my %flags = (r => 0, rw => 2, a => 1 | 0x40 | 0x400, w => 1 | 0x40 | 0x200);
    die "unknown access $mode\\n" unless defined $flags{$mode};
    sysopen(my $fh, $path, $flags{$mode} | 0x20000, 0600) or die "cannot open $path: $!\\n";
    return ($n, $fh);
  }
  if ($kind eq 'listen') {
    my ($n, $path) = split(/:/, $rest, 2);
    unlink($path);
    my $old = umask(077);
    socket(my $s, 1, 1, 0) or die "socket: $!\\n";
    bind($s, pack('S Z108', 1, $path)) or die "cannot bind $path: $!\\n";
    umask($old);
    listen($s, 16) or die "cannot listen on $path: $!\\n";
    return ($n, $s);
  }
  if ($kind eq 'fd') {
    # A descriptor this process was started with (Node made the pair: its stdio 'pipe' is one).
    open(my $h, '+<&=', $rest) or die "fd $rest: $!\\n";
    return ($rest, $h);
  }
  if ($kind eq 'tap') {
    my ($n, $name) = split(/:/, $rest, 2);
    sysopen(my $t, '/dev/net/tun', 2) or die "cannot open /dev/net/tun: $!\\n";
    # TUNSETIFF: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as QEMU asks when it opens a tap itself.
    my $ifr = pack('Z16 s x22', $name, 0x0002 | 0x1000 | 0x4000);
    ioctl($t, 0x400454ca, $ifr) or die "cannot attach to tap $name: $!\\n";
    return ($n, $t);
  }
  die "unknown directive $_[0]\\n";
}
`;

/**
 * Opens every source at its fd number (dup2), makes and joins the cgroups (`cgroup:DIR`: its
 * own pid, so that everything QEMU starts is born inside them), turns core dumps off (a
 * dump would hold guest RAM) and execs the rest of its arguments. Descriptors opened here
 * are inherited: $^F is raised so that perl does not mark them close-on-exec.
 */
const LAUNCH_SCRIPT = `${OPEN_SOURCE}
$^F = 1048576;
my @keep;
while (@ARGV) {
  my $d = shift @ARGV;
  last if $d eq '--';
  if ($d =~ /^cgroup:(.*)$/s) {
    my ($dir, $p) = ($1, '');
    for my $part (split(/\\//, $dir)) { next if $part eq ''; $p .= "/$part"; mkdir($p, 0755) unless -d $p; }
    open(my $c, '>', "$dir/cgroup.procs") or die "cannot open $dir/cgroup.procs: $!\\n";
    print $c "$$\\n";
    close($c) or die "cannot join cgroup $dir: $!\\n";
    next;
  }
  my ($n, $fh) = open_source($d);
  if (fileno($fh) == $n) { push @keep, $fh; next; }
  syscall(33, fileno($fh), $n) == $n or die "dup2 to $n: $!\\n";
  close($fh);
}
my $nocore = pack('QQ', 0, 0);
syscall(160, 4, $nocore) == 0 or die "setrlimit(RLIMIT_CORE): $!\\n";
exec { $ARGV[0] } @ARGV or die "cannot run $ARGV[0]: $!\\n";
`;

/**
 * Sends its first argument as one message on fd 3 (a QMP connection the daemon holds)
 * with the sources of the other arguments attached (SCM_RIGHTS), then whatever of the
 * message did not fit. Node has no sendmsg; perl's syscall() does, with the msghdr packed
 * by hand (x86_64 layout).
 */
const SEND_SCRIPT = `${OPEN_SOURCE}
my $line = shift @ARGV;
my (@fds, @keep);
for my $d (@ARGV) { my ($n, $fh) = open_source($d); push @keep, $fh; push @fds, fileno($fh); }
my $data = pack('i*', @fds);
my $cmsg = pack('Q i i', 16 + length($data), 1, 1) . $data;
$cmsg .= "\\0" x ((8 - length($cmsg) % 8) % 8);
my $iov = pack('p Q', $line, length($line));
my $hdr = pack('Q L x4 p Q p Q i x4', 0, 0, $iov, 1, $cmsg, length($cmsg), 0);
my $sent;
for my $try (1 .. 500) {
  # MSG_NOSIGNAL; the socket is non-blocking (Node's): wait a little while it is full.
  $sent = syscall(46, 3, $hdr, 0x4000);
  last if $sent >= 0 || ($! + 0) != 11;
  select(undef, undef, undef, 0.01);
}
die "sendmsg: $!\\n" if $sent < 0;
if ($sent < length $line) {
  open(my $s, '+<&=', 3) or die "fd 3: $!\\n";
  while ($sent < length $line) {
    my $w = syswrite($s, $line, length($line) - $sent, $sent);
    if (!defined $w) { die "write: $!\\n" if ($! + 0) != 11; select(undef, undef, undef, 0.01); next; }
    $sent += $w;
  }
}
`;

/** perl argv that runs a script with no environment influence (PERL5LIB, PERL5OPT). */
const perl = (script: string, args: readonly string[]): string[] => [
  'env',
  '-i',
  '/usr/bin/perl',
  '-e',
  script,
  '--',
  ...args,
];

/** Who QEMU runs as: the guest's own uid and gid, and supplementary groups (the kvm group at most). */
export interface QemuIdentity {
  uid: number;
  gid: number;
  groups: readonly number[];
}

/**
 * The argv that starts `command` (QEMU's) as `identity` with the descriptors of `fds`
 * opened by root: a perl launcher (sources, cgroups, no core dumps), then setpriv
 * (uid, gid, groups, no capabilities in any set, no_new_privs), then env -i.
 */
export function launcherArgv(options: {
  fds: QemuFds;
  /** Cgroup directories to make (if missing) and join. */
  cgroups?: readonly string[];
  identity: QemuIdentity;
  command: readonly string[];
}): string[] {
  const { identity } = options;
  return [
    ...perl(LAUNCH_SCRIPT, [
      ...options.fds.entries.map((e) => directiveOf(e.fd, e.source)),
      ...(options.cgroups ?? []).map((p) => `cgroup:${p}`),
      '--',
      'setpriv',
      `--reuid=${identity.uid}`,
      `--regid=${identity.gid}`,
      ...(identity.groups.length > 0 ? [`--groups=${identity.groups.join(',')}`] : ['--clear-groups']),
      '--inh-caps=-all',
      '--bounding-set=-all',
      '--no-new-privs',
      '--',
      'env',
      '-i',
      'PATH=/usr/sbin:/usr/bin:/sbin:/bin',
      ...options.command,
    ]),
  ];
}

/**
 * The argv of the sender of one QMP message with descriptors (the connection is its fd 3;
 * the socket pairs' ends its fds 4, 5… in order).
 */
export function senderArgv(line: string, sources: readonly FdSource[]): string[] {
  // Other numbers only name the directives: the sender attaches whatever fds it opened, in order.
  let pair = 4;
  return perl(SEND_SCRIPT, [
    line,
    ...sources.map((s, i) => directiveOf(s.kind === 'pair' ? pair++ : 100 + i, s)),
  ]);
}

/**
 * Sends `line` on `socket` with `sources` attached, through the perl sender. Node hands the
 * socket to the child as its fd 3 and pauses its own reading meanwhile: it is resumed at
 * once (the reply is read by the daemon as usual). Resolves with the daemon's ends of the
 * `pair` sources, in order: libuv makes a child's stdio 'pipe' as a unix socket pair, so
 * the sender gets one end as its fd and hands it on, and the other stays here, connected
 * to whoever holds the first once the sender exits.
 */
export function sendWithFds(
  runner: ProcessRunner,
  socket: Socket,
  line: string,
  sources: readonly FdSource[],
): Promise<Socket[]> {
  return new Promise<Socket[]>((resolve, reject) => {
    let child: ChildProcess;
    const pairs = sources.filter((s) => s.kind === 'pair').length;
    try {
      child = runner.spawn(senderArgv(line, sources), {
        stdio: ['ignore', 'ignore', 'pipe', socket, ...Array.from({ length: pairs }, () => 'pipe' as const)],
      });
    } catch (e) {
      reject(internal(`Cannot hand QEMU a descriptor: ${e instanceof Error ? e.message : String(e)}`));
      return;
    } finally {
      socket.resume();
    }
    const err: Buffer[] = [];
    child.stderr?.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => reject(internal(`Cannot hand QEMU a descriptor: ${e.message}`)));
    const ends = child.stdio.slice(4, 4 + pairs) as Socket[];
    // Not 'close': that waits for every stdio stream, and a pair's end stays open for QEMU.
    const stderrDone = new Promise<void>((done) => {
      if (!child.stderr) done();
      child.stderr?.once('close', () => done());
    });
    child.on('exit', (code) => {
      void stderrDone.then(() => {
        if (code === 0) resolve(ends);
        else {
          for (const end of ends) end.destroy();
          const why = Buffer.concat(err).toString('utf8').trim().split('\n').pop() || `exit ${code}`;
          reject(internal(`Cannot hand QEMU a descriptor: ${why}`));
        }
      });
    });
  });
}
