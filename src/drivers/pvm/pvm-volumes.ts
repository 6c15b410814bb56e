import { access, chmod, chown, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import type { AttachedVolume, GuestVolumes } from '../guest-volumes.ts';
import { pvmRuntimePath } from './pvm-runtime-paths.ts';
import { JAIL_DIR, jailVolumePath } from './uml-jail.ts';
import { createMconsoleClient } from './uml-mconsole.ts';

/** ubd0 is the root disk, ubd1 the config disk: volumes take ubd2 (/dev/ubdc) and up. */
export const FIRST_VOLUME_UBD = 2;
/** UML's ubd driver has 16 slots. */
export const UBD_SLOTS = 16;

/** The block volumes a pvm guest gets at boot (as many as UML has slots for), in order. */
export function bootVolumes(volumes: readonly AttachedVolume[]): AttachedVolume[] {
  return volumes.filter((v) => v.type === 'block').slice(0, UBD_SLOTS - FIRST_VOLUME_UBD);
}

/** `ubd2=FILE ubd3=FILE…` for a pvm guest's block volumes at boot, in order, by their paths in the jail. */
export function umlVolumeArgs(volumes: readonly AttachedVolume[]): string[] {
  return bootVolumes(volumes).map((v, i) => `ubd${FIRST_VOLUME_UBD + i}=${jailVolumePath(v.device)}`);
}

/**
 * Mounts a volume's file into the jail of a running UML kernel, at /.uml/volumes/DEVICE: a
 * clone of the file's mount (open_tree) moved into the kernel's mount namespace (setns,
 * move_mount), through perl's syscall() as ct-volumes.ts does for containers. A bind mount
 * cannot cross mount namespaces, and the jail has no path to the host's tree to bind from.
 * Everything perl needs is loaded before setns and @INC is emptied; the mount point is made
 * with O_NOFOLLOW|O_EXCL in the jail's volumes tmpfs, which only root can write to. A mount
 * left there by an attach that failed half-way is taken off first.
 */
const ATTACH_SCRIPT = `
BEGIN { @INC = () }
my ($pid, $src, $dst) = @ARGV;
open(my $ns, '<', "/proc/$pid/ns/mnt") or die "cannot open the mount namespace of $pid: $!\\n";
my $fd = syscall(428, -100, $src, 0x1 | 0x80000);
die "open_tree $src: $!\\n" if $fd < 0;
syscall(308, fileno($ns), 0x20000) == 0 or die "setns: $!\\n";
chdir('/') or die "chdir: $!\\n";
die "$dst is a link in the jail\\n" if -l $dst;
syscall(166, $dst, 2);
unless (-e $dst) { sysopen(my $f, $dst, 0x1 | 0x40 | 0x80 | 0x20000, 0600) or die "cannot make $dst: $!\\n"; close($f); }
my $empty = '';
syscall(429, $fd, $empty, -100, $dst, 0x4) == 0 or die "move_mount onto $dst: $!\\n";
`;

/** Takes a volume's mount out of the jail (lazily: UML has let go of the file already) and its mount point. */
const DETACH_SCRIPT = `
BEGIN { @INC = () }
my ($pid, $dst) = @ARGV;
open(my $ns, '<', "/proc/$pid/ns/mnt") or die "cannot open the mount namespace of $pid: $!\\n";
syscall(308, fileno($ns), 0x20000) == 0 or die "setns: $!\\n";
chdir('/') or die "chdir: $!\\n";
if (syscall(166, $dst, 2) != 0 && ($! + 0) != 22 && ($! + 0) != 2) { die "umount $dst: $!\\n"; }
unlink($dst) or ($! + 0) == 2 or die "cannot remove $dst: $!\\n";
`;

/** perl argv that runs a script with no environment influence (PERL5LIB, PERL5OPT). */
const perl = (script: string, args: string[]) => ['env', '-i', '/usr/bin/perl', '-e', script, '--', ...args];

/** The kernel runs as the guest's host uid: its volumes' files must be its own. */
export async function preparePvmVolumes(volumes: readonly AttachedVolume[], uid: number): Promise<void> {
  for (const v of volumes) {
    if (v.type !== 'block') continue;
    await chown(v.hostPath, uid, uid);
    await chmod(v.hostPath, 0o600);
  }
}

/**
 * Hot-plug of block volumes into running pvm guests through mconsole (`config ubdN=FILE`,
 * `remove ubdN`). The kernel opens FILE itself, inside its jail: the volume is mounted there
 * first (ATTACH_SCRIPT) and named by its jail path. A guest started before the jail existed
 * (its root has no /.uml) still sees the host's tree and is given the host path, as before.
 */
export function createPvmVolumes(options: {
  runner: ProcessRunner;
  stateDir: string;
  /** Where a kernel's root is looked at (`PROC/PID/root`); tests point it elsewhere. */
  procRoot?: string;
}): GuestVolumes {
  const { runner, stateDir } = options;
  const procRoot = options.procRoot ?? '/proc';
  const dirOf = (name: string) => join(stateDir, 'guests', name);
  const mconsoleOf = (name: string) =>
    createMconsoleClient(pvmRuntimePath(stateDir, name, 'mconsole'), { runner });
  const uidOf = async (name: string): Promise<number> => {
    const uid = Number((await readFile(join(dirOf(name), 'uid'), 'utf8')).trim());
    if (!Number.isInteger(uid) || uid <= 0) throw failedPrecondition(`Guest ${name} has no host uid`);
    return uid;
  };
  /** What each volume slot holds now (`config ubdN` answers the file, or nothing for a free one). */
  const slots = async (name: string): Promise<Map<number, string>> => {
    const m = mconsoleOf(name);
    const out = new Map<number, string>();
    for (let n = FIRST_VOLUME_UBD; n < UBD_SLOTS; n++) {
      const r = await m.request(`config ubd${n}`);
      out.set(n, r.ok ? r.text.trim() : '');
    }
    return out;
  };
  const letter = (n: number) => `/dev/ubd${String.fromCharCode(97 + n)}`;
  const jailed = (pid: number): Promise<boolean> =>
    access(`${procRoot}/${pid}/root${JAIL_DIR}`).then(
      () => true,
      () => false,
    );
  /** The path the kernel knows the volume by. */
  const pathIn = async (pid: number, volume: AttachedVolume): Promise<string> =>
    (await jailed(pid)) ? jailVolumePath(volume.device) : volume.hostPath;
  const slotOf = (held: Map<number, string>, path: string): number | undefined =>
    [...held.entries()].find(([, f]) => f.split(',')[0] === path)?.[0];
  const runScript = async (argv: string[], what: string): Promise<void> => {
    const r = await runner.run(argv, { allowFailure: true, timeoutMs: 15_000 });
    if (r.code !== 0)
      throw failedPrecondition(`${what}: ${r.stderr.trim().split('\n').pop() || `exit ${r.code}`}`);
  };
  const unmountFromJail = (spec: { name: string }, pid: number, volume: AttachedVolume) =>
    runScript(
      perl(DETACH_SCRIPT, [String(pid), jailVolumePath(volume.device)]),
      `Cannot take volume ${volume.volume} out of the UML jail of ${spec.name}`,
    );

  return {
    model: 'pvm',
    async attach(spec, volume, { pid }) {
      await preparePvmVolumes([volume], await uidOf(spec.name));
      const path = await pathIn(pid, volume);
      const held = await slots(spec.name);
      if (slotOf(held, path) !== undefined) return 'live';
      const free = [...held.entries()].find(([, f]) => f === '')?.[0];
      if (free === undefined) throw failedPrecondition(`Guest ${spec.name} has no free ubd slot`);
      if (path !== volume.hostPath) {
        await runScript(
          perl(ATTACH_SCRIPT, [String(pid), volume.hostPath, path]),
          `Cannot put volume ${volume.volume} into the UML jail of ${spec.name}`,
        );
      }
      const r = await mconsoleOf(spec.name).request(`config ubd${free}=${path}`);
      if (!r.ok) {
        if (path !== volume.hostPath) await unmountFromJail(spec, pid, volume).catch(() => {});
        throw failedPrecondition(
          `The UML kernel of ${spec.name} refused volume ${volume.volume} as ubd${free}: ${r.text || 'no reason given'}`,
        );
      }
      return 'live';
    },

    async detach(spec, volume, { pid }) {
      const path = await pathIn(pid, volume);
      const held = await slots(spec.name);
      const slot = slotOf(held, path);
      if (slot !== undefined) {
        const r = await mconsoleOf(spec.name).request(`remove ubd${slot}`);
        if (!r.ok) {
          throw failedPrecondition(
            `Guest ${spec.name} still uses volume ${volume.volume} (${letter(slot)}): unmount it in the guest and detach again (${r.text || 'busy'})`,
          );
        }
      }
      if (path !== volume.hostPath) await unmountFromJail(spec, pid, volume);
      await chown(volume.hostPath, 0, 0).catch(() => {});
      return 'live';
    },

    // UML reads a disk's size when the disk is added: a disk the guest does not hold open is
    // removed and added again in the same slot; one in use shows its new size at the next start.
    async resize(spec, volume, { pid }) {
      const path = await pathIn(pid, volume);
      const held = await slots(spec.name);
      const slot = slotOf(held, path);
      if (slot === undefined) return 'next-start';
      const m = mconsoleOf(spec.name);
      if (!(await m.request(`remove ubd${slot}`)).ok) return 'next-start';
      const r = await m.request(`config ubd${slot}=${path}`);
      if (!r.ok) {
        throw failedPrecondition(
          `The UML kernel of ${spec.name} did not take volume ${volume.volume} back as ubd${slot}: ${r.text || 'no reason given'}; restart the guest`,
        );
      }
      return 'live';
    },
  };
}
