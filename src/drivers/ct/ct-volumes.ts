import { chown, stat } from 'node:fs/promises';
import { configValue } from '../../core/config-keys.ts';
import { failedPrecondition, internal } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import type { AttachedVolume, GuestVolumes } from '../guest-volumes.ts';
import { ID_RANGE_SIZE, readIdRangeOf } from './id-ranges.ts';
import type { OciSpec } from './oci-spec.ts';
import { USERNS_PERL } from './userns-perl.ts';

/**
 * Bind mounts of a privileged ct guest's filesystem volumes, for its OCI spec (runc makes
 * missing mount points). An unprivileged guest's come idmapped, from attachCtVolume.
 */
export function ctVolumeMounts(volumes: readonly AttachedVolume[]): OciSpec['mounts'] {
  return volumes
    .filter((v) => v.type === 'filesystem' && v.path !== undefined)
    .map((v) => ({
      destination: v.path as string,
      type: 'bind',
      source: v.hostPath,
      options: ['rbind', 'rw', 'nosuid', 'nodev'],
    }));
}

/**
 * Makes a volume's root directory the guest's root as the volume stores it (`rootId`: the
 * shared range's base for unprivileged guests, which see it through an idmapped mount, 0 for
 * a privileged one), so that root in the guest can write to it; what is inside keeps its owners.
 */
export async function prepareCtVolume(volume: AttachedVolume, rootId: number): Promise<void> {
  const s = await stat(volume.hostPath).catch(() => undefined);
  if (!s?.isDirectory()) {
    throw failedPrecondition(
      `Volume ${volume.volume} of pool ${volume.pool} is missing on disk (${volume.hostPath}): detach it`,
    );
  }
  if (s.uid !== rootId || s.gid !== rootId) await chown(volume.hostPath, rootId, rootId);
}

/**
 * Moves a clone of the volume's mount tree into the guest's mount namespace
 * (open_tree + setns + move_mount, through perl's syscall(): a bind mount
 * cannot cross mount namespaces, and Node has no setns). Everything perl needs
 * is loaded before setns and @INC is emptied, so that nothing of the guest's
 * file system is ever run as host root; after setns paths resolve inside the
 * guest's root, so its symlinks cannot reach the host. Missing directories on
 * the way are made and given to the guest's root.
 * The clone is made nosuid and nodev, and, with an idmap, idmapped
 * (mount_setattr): a volume stores its files in the shared range, and each
 * unprivileged guest, in a range of its own (decision 18), sees them as its own
 * ids, so guests share a volume as they did when they shared one range. Root
 * is mapped to itself as well, so that the daemon can still write there
 * (`file push`): an id the idmap does not map cannot create a file (EOVERFLOW).
 */
const ATTACH_SCRIPT = `
BEGIN { @INC = () }
${USERNS_PERL}
my ($pid, $src, $dst, $id, $map) = @ARGV;
open(my $ns, '<', "/proc/$pid/ns/mnt") or die "cannot open the mount namespace of $pid: $!\\n";
my $fd = syscall(428, -100, $src, 0x1 | 0x80000 | 0x8000);
die "open_tree $src: $!\\n" if $fd < 0;
my $userns = $map eq '-' ? undef : idmap_userns($map);
# nosuid and nodev as runc's bind mounts of volumes have them; the idmap when one is given.
my $attr = pack('QQQQ', 0x2 | 0x4 | (defined $userns ? 0x100000 : 0), 0, 0, defined $userns ? fileno($userns) : 0);
my $none = '';
syscall(442, $fd, $none, 0x1000 | 0x8000, $attr, 32) == 0 or die "mount_setattr of the volume: $!\\n";
syscall(308, fileno($ns), 0x20000) == 0 or die "setns: $!\\n";
chdir('/') or die "chdir: $!\\n";
my $p = '';
for my $part (split(/\\//, $dst)) {
  next if $part eq '';
  $p .= "/$part";
  next if -d $p;
  die "$p exists in the guest and is not a directory\\n" if -e $p || -l $p;
  mkdir($p, 0755) or die "mkdir $p: $!\\n";
  chown($id, $id, $p);
}
my $empty = '';
syscall(429, $fd, $empty, -100, $dst, 0x4) == 0 or die "move_mount onto $dst: $!\\n";
`;

/** Unmounts (lazily) what is mounted at the path in the guest's mount namespace; exit 3 when nothing was. */
const DETACH_SCRIPT = `
BEGIN { @INC = () }
my ($pid, $dst) = @ARGV;
open(my $ns, '<', "/proc/$pid/ns/mnt") or die "cannot open the mount namespace of $pid: $!\\n";
syscall(308, fileno($ns), 0x20000) == 0 or die "setns: $!\\n";
chdir('/') or die "chdir: $!\\n";
if (syscall(166, $dst, 2) != 0) { exit 3 if ($! + 0) == 22 || ($! + 0) == 2; die "umount $dst: $!\\n"; }
`;

/** perl argv that runs a script with no environment influence (PERL5LIB, PERL5OPT). */
const perl = (script: string, args: string[]) => ['env', '-i', '/usr/bin/perl', '-e', script, '--', ...args];

/** How a running guest gets a volume: its root's host id, and the map from the volume's ids to its own. */
export interface CtVolumeTarget {
  /** The guest init's pid: its mount namespace receives the volume. */
  pid: number;
  /** Host id of the guest's root: owner of mount-point directories made on the way. */
  rootId: number;
  /** Volume ids [inner, inner + count) are seen as host ids [outer, outer + count); none for a privileged guest. */
  idmap?: { inner: number; outer: number; count: number };
}

/** argv of the attach helper (exported for the driver's unit tests). */
export function attachCtVolumeArgv(volume: AttachedVolume, target: CtVolumeTarget): string[] {
  const { idmap } = target;
  return perl(ATTACH_SCRIPT, [
    String(target.pid),
    volume.hostPath,
    volume.path ?? '',
    String(target.rootId),
    idmap ? `${idmap.inner} ${idmap.outer} ${idmap.count},0 0 1` : '-',
  ]);
}

/** Mounts a filesystem volume at its path in a running (or created, not yet started) guest. */
export async function attachCtVolume(
  runner: ProcessRunner,
  volume: AttachedVolume,
  target: CtVolumeTarget & { guest: string },
): Promise<void> {
  if (volume.path === undefined) throw internal(`Volume ${volume.volume} has no mount path`);
  const r = await runner.run(attachCtVolumeArgv(volume, target), { allowFailure: true, timeoutMs: 15_000 });
  if (r.code !== 0) {
    const why = r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`;
    throw failedPrecondition(
      `Cannot mount volume ${volume.volume} at ${volume.path} in ${target.guest}: ${why}`,
    );
  }
}

/**
 * Where an unprivileged guest in range `guestBase` gets its volumes from: they store the ids
 * of the shared range (`idmapBase`), so that every guest that shares a volume sees the same
 * owners. No idmap when the guest is on the shared range itself.
 */
export function ctVolumeIdmap(
  idmapBase: number,
  guestBase: number,
): { inner: number; outer: number; count: number } | undefined {
  return guestBase === idmapBase ? undefined : { inner: idmapBase, outer: guestBase, count: ID_RANGE_SIZE };
}

/** Hot attach and detach of filesystem volumes to running ct guests. */
export function createCtVolumes(options: {
  runner: ProcessRunner;
  /** Base of the shared range: the ids volumes store (main.ts's IDMAP_BASE). */
  idmapBase: number;
}): GuestVolumes {
  const { runner, idmapBase } = options;
  return {
    model: 'ct',
    async attach(spec, volume, { pid }) {
      if (volume.path === undefined) throw internal(`Volume ${volume.volume} has no mount path`);
      const privileged = configValue.privileged(spec.config);
      // Each unprivileged guest has a range of its own (decision 18): its running init's map says which.
      const guestBase = privileged ? 0 : (await readIdRangeOf(pid)).base;
      await prepareCtVolume(volume, privileged ? 0 : idmapBase);
      const idmap = privileged ? undefined : ctVolumeIdmap(idmapBase, guestBase);
      await attachCtVolume(runner, volume, {
        pid,
        rootId: guestBase,
        guest: spec.name,
        ...(idmap && { idmap }),
      });
      return 'live';
    },
    async detach(spec, volume, { pid }) {
      if (volume.path === undefined) return 'live';
      const r = await runner.run(perl(DETACH_SCRIPT, [String(pid), volume.path]), {
        allowFailure: true,
        timeoutMs: 15_000,
      });
      if (r.code !== 0 && r.code !== 3) {
        const why = r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`;
        throw failedPrecondition(`Cannot unmount volume ${volume.volume} from ${spec.name}: ${why}`);
      }
      return 'live';
    },
    // A bind mount shows the volume's own space: a btrfs qgroup limit applies at once.
    async resize() {
      return 'live';
    },
  };
}
