import { chown, stat } from 'node:fs/promises';
import { configValue } from '../../core/config-keys.ts';
import { failedPrecondition, internal } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import type { AttachedVolume, GuestVolumes } from '../guest-volumes.ts';
import { readIdRangeOf } from './id-ranges.ts';
import type { OciSpec } from './oci-spec.ts';

/** Bind mounts of a ct guest's filesystem volumes, for its OCI spec (runc makes missing mount points). */
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
 * Makes a volume's root directory the guest's root (`rootId`: the mapped host
 * uid of an unprivileged guest, 0 for a privileged one), so that root in the
 * guest can write to it; what is inside keeps its owners.
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
 */
const ATTACH_SCRIPT = `
BEGIN { @INC = () }
my ($pid, $src, $dst, $id) = @ARGV;
open(my $ns, '<', "/proc/$pid/ns/mnt") or die "cannot open the mount namespace of $pid: $!\\n";
my $fd = syscall(428, -100, $src, 0x1 | 0x80000 | 0x8000);
die "open_tree $src: $!\\n" if $fd < 0;
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

/** Hot attach and detach of filesystem volumes to running ct guests. */
export function createCtVolumes(options: { runner: ProcessRunner }): GuestVolumes {
  const { runner } = options;
  return {
    model: 'ct',
    async attach(spec, volume, { pid }) {
      if (volume.path === undefined) throw internal(`Volume ${volume.volume} has no mount path`);
      // Each unprivileged guest has a range of its own (decision 18): its running init's map says which.
      const rootId = configValue.privileged(spec.config) ? 0 : (await readIdRangeOf(pid)).base;
      await prepareCtVolume(volume, rootId);
      const r = await runner.run(
        perl(ATTACH_SCRIPT, [String(pid), volume.hostPath, volume.path, String(rootId)]),
        { allowFailure: true, timeoutMs: 15_000 },
      );
      if (r.code !== 0) {
        const why = r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`;
        throw failedPrecondition(
          `Cannot mount volume ${volume.volume} at ${volume.path} in ${spec.name}: ${why}`,
        );
      }
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
