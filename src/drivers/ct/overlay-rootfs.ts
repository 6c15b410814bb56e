import { failedPrecondition, internal, invalidArgument } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import { USERNS_PERL } from './userns-perl.ts';

/** Where and how a ct guest's root is mounted. */
export interface OverlayRootfs {
  /** The image's tree (real ids), the overlay's read-only lower layer. */
  tree: string;
  /** An empty directory, reachable by root only, where the idmapped tree is attached for a moment. */
  staging: string;
  upper: string;
  work: string;
  /** The mount point: the guest's root. */
  target: string;
  /** The guest's id range: the tree is seen through it (absent for a privileged guest). */
  idmap?: { base: number; size: number };
}

/**
 * Mounts a guest's overlay root with the image's tree as its lower layer, seen
 * through an idmapped mount of the guest's range (docs/decisions/0018): one
 * copy of the tree serves every guest, whatever its range, and its real-root
 * files are the guest's root's and no one else's. Steps (x86_64 syscalls):
 * a user namespace mapping 0 to the range's base (userns-perl.ts), open_tree(OPEN_TREE_CLONE) of the tree,
 * mount_setattr(MOUNT_ATTR_IDMAP | RDONLY | NODEV | NOSUID, that namespace),
 * move_mount onto the staging dir, mount(2) of the overlay (nodev) on the
 * target, and umount2(MNT_DETACH) of the staging mount: overlayfs holds its
 * own private clone of every layer, so after the mount only the overlay shows.
 * The same perl route as the volume helper
 * (decision 11): no native module in the daemon, nothing of the guest run.
 */
const MOUNT_STEPS = `
my $nsfd;
$nsfd = idmap_userns("0 $base $size") if $base ne '-';
my $lower = $tree;
if (defined $nsfd) {
  my $fd = syscall(428, -100, $tree, 0x1 | 0x80000);
  die "open_tree $tree: $!\\n" if $fd < 0;
  my $attr = pack('QQQQ', 0x100000 | 0x1 | 0x2 | 0x4, 0, 0, fileno($nsfd));
  my $empty = '';
  syscall(442, $fd, $empty, 0x1000, $attr, 32) == 0 or die "idmapping the image tree (mount_setattr): $!\\n";
  syscall(429, $fd, $empty, -100, $stage, 0x4) == 0 or die "move_mount onto $stage: $!\\n";
  $lower = $stage;
}
my $type = 'overlay';
my $data = "lowerdir=$lower,upperdir=$upper,workdir=$work";
my $ok = syscall(165, $type, $target, $type, 0x4, $data) == 0;
my $err = "$!";
syscall(166, $stage, 2) if defined $nsfd;
die "mount overlay on $target: $err\\n" unless $ok;
`;

const MOUNT_SCRIPT = `
BEGIN { @INC = () }
${USERNS_PERL}
my ($tree, $stage, $upper, $work, $target, $base, $size) = @ARGV;
${MOUNT_STEPS}
`;

/** Exit status of the private-root helper when it could not mount the root (runc never ran). */
export const ROOT_MOUNT_FAILED_EXIT = 86;

/**
 * The same mount, made in a mount namespace of its own (docs/decisions/0064), after which the
 * helper execs the rest of its arguments (`runc create` or `runc run --detach`): unshare(CLONE_NEWNS),
 * every mount made private (MS_REC | MS_PRIVATE, so that nothing propagates back to the host), the
 * root mounted there, then exec. runc's init clones its mount namespace from this one, so the
 * guest's copy holds its root; this namespace goes with runc when it returns. The host's mount
 * table never holds a guest's root, and a start copies the host's mounts plus one, not one per
 * running guest. A failed mount exits ROOT_MOUNT_FAILED_EXIT with the step on stderr.
 */
const PRIVATE_ROOT_SCRIPT = `
BEGIN { @INC = () }
${USERNS_PERL}
my ($tree, $stage, $upper, $work, $target, $base, $size, $memmnt, $memcg, @then) = @ARGV;
eval {
  syscall(272, 0x20000) == 0 or die "unshare(CLONE_NEWNS): $!\\n";
  my $none = 'none';
  my $root = '/';
  syscall(165, $none, $root, 0, 0x4000 | 0x40000, 0) == 0 or die "making the mount namespace private: $!\\n";
  ${MOUNT_STEPS}
  # The hierarchy mounted more than once (a root whose mounts are locked together): it cannot be
  # hidden from runc, so the guest keeps a memory cgroup of its own, as before decision 0093.
  my $memory_mounts = 0;
  if ($memcg ne '-') {
    open(my $mi, '<', '/proc/self/mountinfo') or die "reading mountinfo: $!\\n";
    $memory_mounts = grep { / - cgroup \\S+ (?:\\S*,)?memory(?:,|$)/ } <$mi>;
    close($mi);
  }
  if ($memcg ne '-' && $memory_mounts == 1) {
    mkdir($memcg) or ($! + 0) == 17 or die "making the shared memory cgroup $memcg: $!\\n";
    open(my $procs, '>>', "$memcg/cgroup.procs") or die "joining $memcg: $!\\n";
    print $procs "$$\\n";
    close($procs) or die "joining $memcg: $!\\n";
    syscall(166, $memmnt, 2) == 0 or die "hiding $memmnt from runc: $!\\n";
  }
  1;
} or do { print STDERR $@; exit ${ROOT_MOUNT_FAILED_EXIT}; };
exec { $then[0] } @then;
print STDERR "cannot run $then[0]: $!\\n";
exit ${ROOT_MOUNT_FAILED_EXIT};
`;

function layerArgs(layers: OverlayRootfs): string[] {
  for (const p of [layers.tree, layers.staging, layers.upper, layers.work, layers.target]) {
    if (!p.startsWith('/') || /[,:\s\\]/.test(p)) {
      throw invalidArgument(
        `The path ${JSON.stringify(p)} cannot be an overlay layer: use an absolute one without , : \\ or spaces.`,
      );
    }
  }
  const { idmap } = layers;
  return [
    layers.tree,
    layers.staging,
    layers.upper,
    layers.work,
    layers.target,
    idmap ? String(idmap.base) : '-',
    idmap ? String(idmap.size) : '-',
  ];
}

/**
 * The argv that mounts the guest's root in the caller's mount namespace (run as host root). The
 * daemon no longer does this (privateRootArgv); the benchmarks' raw runc baselines do.
 */
export function overlayRootfsArgv(layers: OverlayRootfs): string[] {
  return ['env', '-i', '/usr/bin/perl', '-e', MOUNT_SCRIPT, '--', ...layerArgs(layers)];
}

/**
 * A memory cgroup that guests without a memory limit share instead of one each
 * (docs/decisions/0093): `mount` is the v1 memory hierarchy's mount point, `dir` the shared
 * cgroup's directory in it.
 */
export interface SharedMemoryCgroup {
  mount: string;
  dir: string;
}

/**
 * The argv that mounts the guest's root in a mount namespace made for this one start and then
 * runs `then` there (runc create or run --detach, which must find the root at `layers.target`).
 * It is perl itself, with no `env -i` before it: the caller spawns it with an environment of PATH
 * alone (the runner's `envOnly`; runc is looked up in it and inherits it), so that nothing of the
 * daemon's environment (PERL5OPT, PERL5LIB…) reaches perl or runc, and the start execs once less.
 *
 * With `sharedMemory`, the helper also joins that memory cgroup and unmounts the memory hierarchy
 * in its own namespace before runc runs: runc makes a guest's cgroup only in the hierarchies it
 * finds mounted, so the guest gets no memory cgroup of its own and its processes (runc's init,
 * then the guest's) are charged to the shared one (decision 0093).
 */
export function privateRootArgv(
  layers: OverlayRootfs,
  then: string[],
  options: { sharedMemory?: SharedMemoryCgroup | undefined } = {},
): string[] {
  if (then.length === 0) throw internal('Nothing to run in the mount namespace of the guest root');
  const memory = options.sharedMemory;
  if (memory) {
    for (const p of [memory.mount, memory.dir]) {
      if (!p.startsWith('/') || /\s/.test(p)) throw internal(`Not a cgroup path: ${JSON.stringify(p)}`);
    }
  }
  return [
    '/usr/bin/perl',
    '-e',
    PRIVATE_ROOT_SCRIPT,
    '--',
    ...layerArgs(layers),
    memory ? memory.mount : '-',
    memory ? memory.dir : '-',
    ...then,
  ];
}

/** The whole environment the private-root helper is spawned with (see privateRootArgv). */
export function privateRootEnv(path: string): Record<string, string> {
  return { PATH: path };
}

/** The error for a root mount that failed with `why` (the helper's last line of stderr). */
export function rootMountError(why: string): Error {
  if (/mount_setattr|open_tree/.test(why)) {
    return failedPrecondition(
      `Cannot mount the root of the guest: ${why}; unprivileged ct guests need idmapped mounts (Linux 5.19 or later).`,
    );
  }
  return internal(`Cannot mount the root of the guest: ${why}`);
}

/** Mounts the guest's root; the error names the step that failed (an old kernel refuses idmapped mounts). */
export async function mountOverlayRootfs(
  layers: OverlayRootfs,
  options: { runner: ProcessRunner },
): Promise<void> {
  const r = await options.runner.run(overlayRootfsArgv(layers), { allowFailure: true, timeoutMs: 30_000 });
  if (r.code === 0) return;
  throw rootMountError(r.stderr.trim().split('\n').pop() || `exit ${r.code}`);
}
