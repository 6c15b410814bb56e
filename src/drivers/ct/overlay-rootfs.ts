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
const MOUNT_SCRIPT = `
BEGIN { @INC = () }
${USERNS_PERL}
my ($tree, $stage, $upper, $work, $target, $base, $size) = @ARGV;
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

/** The argv that mounts the guest's root (run as host root). */
export function overlayRootfsArgv(layers: OverlayRootfs): string[] {
  for (const p of [layers.tree, layers.staging, layers.upper, layers.work, layers.target]) {
    if (!p.startsWith('/') || /[,:\s\\]/.test(p)) {
      throw invalidArgument(
        `The path ${JSON.stringify(p)} cannot be an overlay layer: use an absolute one without , : \\ or spaces.`,
      );
    }
  }
  const { idmap } = layers;
  return [
    'env',
    '-i',
    '/usr/bin/perl',
    '-e',
    MOUNT_SCRIPT,
    '--',
    layers.tree,
    layers.staging,
    layers.upper,
    layers.work,
    layers.target,
    idmap ? String(idmap.base) : '-',
    idmap ? String(idmap.size) : '-',
  ];
}

/** Mounts the guest's root; the error names the step that failed (an old kernel refuses idmapped mounts). */
export async function mountOverlayRootfs(
  layers: OverlayRootfs,
  options: { runner: ProcessRunner },
): Promise<void> {
  const r = await options.runner.run(overlayRootfsArgv(layers), { allowFailure: true, timeoutMs: 30_000 });
  if (r.code === 0) return;
  const why = r.stderr.trim().split('\n').pop() || `exit ${r.code}`;
  if (/mount_setattr|open_tree/.test(why)) {
    throw failedPrecondition(
      `Cannot mount the root of the guest: ${why}; unprivileged ct guests need idmapped mounts (Linux 5.19 or later).`,
    );
  }
  throw internal(`Cannot mount the root of the guest: ${why}`);
}
