import { kitKernelArgs } from '../../images/guest-kit.ts';
import { JAIL_CPUINFO_FD, JAIL_HOSTFS_DIR, JAIL_SECCOMP_FD, type UmlJail, umlJailArgv } from './uml-jail.ts';

/** What a UML kernel is booted with. */
export interface UmlBootOptions {
  /** Path of linux.uml. */
  kernelPath: string;
  /** Guest RAM (`mem=`), rounded down to KiB. */
  memoryBytes: number;
  /** The guest's writable disk: a UML copy-on-write file over `backingPath`, or a whole disk without it. */
  diskPath: string;
  /** The image's shared read-only base disk. */
  backingPath?: string;
  /** `uml_dir=`: where the kernel makes `<umid>/mconsole` and `<umid>/pid`. */
  umlDir: string;
  umid: string;
  hostname: string;
  /** The guest's NICs in order: a tap the host made for the guest's uid, the NIC's name and MAC. */
  nics?: ReadonlyArray<{ nic: string; tap: string; mac: string }>;
  /** The guest's config disk (injected files): read-only `ubd1r`, `/dev/ubdb` in the guest. */
  configDisk?: string;
}

/** The in-guest device of the agent's serial line (`ssl1`, UML's second serial line). */
export const PVM_AGENT_DEVICE = '/dev/ttyS1';

/**
 * The linux.uml argv for one guest. The console (con0) writes to the kernel's
 * stdout, which the driver points at console.log, and reads a FIFO the
 * launcher hands over as fd 5 (`trivisor console` writes what is typed there,
 * see uml-console.ts); every other console and serial line is `null`, because
 * UML's default for them is an xterm. ssl1 is the guest agent's line, on two
 * FIFOs the launcher hands over as fds 3 and 4. Each NIC is `ethN=tuntap,TAP,MAC`: the kernel opens the
 * host's tap itself (it belongs to the guest's uid), and the kit renames the
 * guest's ethN to the NIC's name. `hostfs=` roots every hostfs mount in an empty directory of
 * the jail; a guest that climbs out of it with `..` (hostfs does not stop it) finds the jail,
 * never the host (uml-jail.ts).
 */
export function umlArgv(options: UmlBootOptions): string[] {
  const kib = Math.floor(options.memoryBytes / 1024);
  return [
    options.kernelPath,
    `mem=${kib}K`,
    options.backingPath ? `ubd0=${options.diskPath},${options.backingPath}` : `ubd0=${options.diskPath}`,
    ...(options.configDisk ? [`ubd1r=${options.configDisk}`] : []),
    'root=/dev/ubda',
    `umid=${options.umid}`,
    `uml_dir=${options.umlDir}`,
    `hostfs=${JAIL_HOSTFS_DIR}`,
    'con=null',
    'con0=fd:5,fd:1',
    'ssl=null',
    // The agent's line: fd 3 in, fd 4 out, FIFOs the launcher opened read-write (see agent-line.ts).
    'ssl1=fd:3,fd:4',
    ...(options.nics ?? []).map((n, i) => `eth${i}=tuntap,${n.tap},${n.mac}`),
    ...kitKernelArgs({
      hostname: options.hostname,
      model: 'pvm',
      agent: PVM_AGENT_DEVICE,
      nics: (options.nics ?? []).map((n) => ({ name: n.nic, mac: n.mac })),
      ...(options.configDisk ? { configDevice: '/dev/ubdb' } : {}),
    }),
  ];
}

/**
 * The argv prefix that gives a UML kernel a private `/dev/net/tun` it may open as the guest's uid.
 * UML's tuntap transport opens `/dev/net/tun` itself, which may be root-only on the host (0600:
 * hardened hosts and containers, where Debian's udev rule does not run). Rather than change the
 * host device's mode, the launcher enters a mount namespace of its own, mounts a tmpfs over
 * `/dev/net` there and makes a tun node owned by the guest's uid. The namespace dies with the
 * guest; the host's `/dev/net/tun` stays as it is. Opening tun gives the uid nothing it may not
 * have: without CAP_NET_ADMIN it can only attach to a persistent tap that already belongs to it.
 * The node is made here rather than in the guest dir because a device node works only on a
 * file system mounted without nodev, which the state dir need not be; the jail (uml-jail.ts)
 * binds this node, and nothing else of this namespace, for the kernel. unshare and sh exec.
 */
export function privateTunArgv(uid: number): string[] {
  return [
    'unshare',
    '--mount',
    // A slave of the state dir's shared mount (ensureSharedMount): pools and overlays the host
    // unmounts go here too, instead of staying pinned while the guest runs; nothing goes back.
    '--propagation',
    'slave',
    '--',
    '/bin/sh',
    '-c',
    // $0 is the uid; the rest is the command to exec.
    // Without /dev/net the host has no tun at all: the guest boots, its NICs report why they are down.
    'if [ -d /dev/net ]; then mount -t tmpfs -o size=16k,mode=0755,nosuid,noexec trivisor-tun /dev/net && ' +
      'mknod -m 0600 /dev/net/tun c 10 200 && chown "$0:$0" /dev/net/tun || exit 112; fi; exec "$@"',
    String(uid),
  ];
}

/** util-linux's setarch (Debian's path; the probe checks it). */
export const SETARCH = '/usr/bin/setarch';

/**
 * The argv prefix that starts the UML kernel without the host's address-space randomization
 * (personality ADDR_NO_RANDOMIZE; decision 0081). UML's physical memory starts at its own text
 * and runs past its brk: the kernel adds the gap between its bss and the brk the host chose to
 * `mem=`, as reserved memory, and pays a struct page (64 bytes) for each 4 KiB of it. The host
 * places the brk of this non-PIE binary anywhere in 1 GiB, so a 128 MiB guest lost up to 16 MiB
 * of its memory (and the host the pages those struct pages fill) by the luck of its boot; without
 * randomization the brk follows the bss and every boot of a guest gets the same, whole memory.
 * It comes last, right before the kernel: an exec that changes capabilities clears the flag (the
 * kernel's PER_CLEAR_ON_SETID), so set before bwrap or setpriv it would not reach the kernel.
 * ASLR inside the guest is the guest kernel's, and stays.
 */
export function fixedLayoutArgv(): string[] {
  return [SETARCH, 'x86_64', '--addr-no-randomize', '--'];
}

/** What the launcher of a jailed UML kernel opens, joins and runs. */
export interface UmlLauncherOptions {
  /** The agent's line (fds 3 and 4) and the console's input (fd 5): FIFOs, opened read-write. */
  agentIn: string;
  agentOut: string;
  consoleIn: string;
  /** The seccomp program, opened on fd 6 for bwrap. */
  seccompPath: string;
  /** `cgroup.procs` files the launcher writes its pid into before exec, one per hierarchy. */
  cgroupProcs: readonly string[];
  /** The jail (its uid also owns the private tun node); its program files must hold SETARCH. */
  jail: UmlJail;
  /** The kernel's argv (umlArgv plus volumes). */
  kernel: readonly string[];
}

/**
 * The launcher of a guest's UML kernel: a shell that opens the FIFOs, the seccomp program and
 * /proc/cpuinfo on the fds the jail and the kernel expect and joins the guest's cgroups (so that
 * every UML helper is born inside them), then execs into the private tun's mount namespace
 * (privateTunArgv), the jail (umlJailArgv: bwrap, setpriv) and, through setarch
 * (fixedLayoutArgv), the kernel. Every step execs: the launcher's pid ends as bwrap's, whose
 * only child becomes the kernel.
 */
export function umlLauncherArgv(options: UmlLauncherOptions): string[] {
  return [
    '/bin/sh',
    '-c',
    // $0 is no positional parameter: `shift 3` drops $1 to $3, leaving the cgroups' procs files.
    `ulimit -c 0; exec 3<>"$0" 4<>"$1" 5<>"$2" ${JAIL_SECCOMP_FD}<"$3" ${JAIL_CPUINFO_FD}</proc/cpuinfo || exit 111; shift 3; ` +
      'while [ "$1" != -- ]; do echo $$ > "$1" || exit 111; shift; done; shift; exec "$@"',
    options.agentIn,
    options.agentOut,
    options.consoleIn,
    options.seccompPath,
    ...options.cgroupProcs,
    '--',
    ...privateTunArgv(options.jail.uid),
    ...umlJailArgv(options.jail, [...fixedLayoutArgv(), ...options.kernel]),
  ];
}
