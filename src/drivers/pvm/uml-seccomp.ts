/**
 * The seccomp filter of a pvm guest's UML processes (docs/decisions/0017-pvm-jail.md): a
 * classic BPF program that bwrap loads (`--seccomp FD`) right before it execs into the kernel.
 *
 * UML 6.1 runs guest processes as host processes under ptrace (SKAS, PTRACE_SYSEMU): a guest's
 * system calls stop at the ptrace entry hook, which runs before seccomp, and are emulated by the
 * UML kernel; they never reach this filter. What the filter sees are the host calls of the UML
 * kernel itself, its helpers and the stubs it maps into guest address spaces (mmap, munmap,
 * mprotect). So it is a deny-list of what the kernel never needs and what a compromised kernel
 * would reach for first, not an allow-list that a new UML code path could trip over.
 */

/** x86_64 system calls denied with EPERM (numbers from arch/x86/entry/syscalls/syscall_64.tbl). */
export const UML_DENIED_SYSCALLS: Readonly<Record<string, number>> = {
  syslog: 103,
  uselib: 134,
  vhangup: 153,
  pivot_root: 155,
  _sysctl: 156,
  adjtimex: 159,
  chroot: 161,
  acct: 163,
  settimeofday: 164,
  mount: 165,
  umount2: 166,
  swapon: 167,
  swapoff: 168,
  reboot: 169,
  sethostname: 170,
  setdomainname: 171,
  iopl: 172,
  ioperm: 173,
  create_module: 174,
  init_module: 175,
  delete_module: 176,
  get_kernel_syms: 177,
  query_module: 178,
  quotactl: 179,
  nfsservctl: 180,
  lookup_dcookie: 212,
  clock_settime: 227,
  kexec_load: 246,
  add_key: 248,
  request_key: 249,
  keyctl: 250,
  unshare: 272,
  perf_event_open: 298,
  fanotify_init: 300,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  clock_adjtime: 305,
  setns: 308,
  finit_module: 313,
  kexec_file_load: 320,
  bpf: 321,
  userfaultfd: 323,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  mount_setattr: 442,
  quotactl_fd: 443,
  statmount: 457,
  listmount: 458,
  open_tree_attr: 467,
};

/** Answered with ENOSYS, so that the C library falls back to clone(2), whose flags the filter can see. */
const SYS_CLONE3 = 435;
const SYS_CLONE = 56;
const SYS_SOCKET = 41;
/** CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: a new namespace is never UML's. */
export const CLONE_NAMESPACE_FLAGS = 0x7e020000;
const AF_UNIX = 1;

export const AUDIT_ARCH_X86_64 = 0xc000003e;
/** x32 system calls are x86_64 ones with this bit: numbered apart, so refused as a whole. */
const X32_SYSCALL_BIT = 0x40000000;

export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const EPERM = 1;
export const ENOSYS = 38;

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_JGE_K = 0x35;
const BPF_JSET_K = 0x45;
const BPF_RET_K = 0x06;

/** Offsets in struct seccomp_data: nr, arch, then args[] after the instruction pointer. */
const NR = 0;
const ARCH = 4;
const ARG0_LOW = 16;

/** One classic BPF instruction (struct sock_filter). */
export interface BpfInstruction {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

const stmt = (code: number, k: number): BpfInstruction => ({ code, jt: 0, jf: 0, k });

/**
 * The filter as instructions: a foreign architecture or an x32 call is ENOSYS; a denied call,
 * clone with a namespace flag, or a socket of another family than AF_UNIX is EPERM (the kernel's
 * NICs are taps opened through /dev/net/tun and its mconsole is a unix socket: it never needs an
 * IP or netlink socket of the host's); clone3 is ENOSYS; the rest is allowed.
 */
export function umlSeccompInstructions(): BpfInstruction[] {
  const denied = Object.values(UML_DENIED_SYSCALLS);
  const program: BpfInstruction[] = [];
  const fixups: Array<{ at: number; field: 'jt' | 'jf'; target: string }> = [];
  const jump = (code: number, k: number, onTrue: string | 0, onFalse: string | 0) => {
    const at = program.length;
    program.push({ code, jt: 0, jf: 0, k });
    if (onTrue !== 0) fixups.push({ at, field: 'jt', target: onTrue });
    if (onFalse !== 0) fixups.push({ at, field: 'jf', target: onFalse });
  };

  program.push(stmt(BPF_LD_W_ABS, ARCH));
  jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, 'nosys');
  program.push(stmt(BPF_LD_W_ABS, NR));
  jump(BPF_JGE_K, X32_SYSCALL_BIT, 'nosys', 0);
  for (const nr of denied) jump(BPF_JEQ_K, nr, 'eperm', 0);
  jump(BPF_JEQ_K, SYS_CLONE3, 'nosys', 0);
  jump(BPF_JEQ_K, SYS_CLONE, 'clone', 0);
  jump(BPF_JEQ_K, SYS_SOCKET, 'socket', 0);
  program.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
  const labels: Record<string, number> = {};
  labels.clone = program.length;
  program.push(stmt(BPF_LD_W_ABS, ARG0_LOW));
  jump(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, 'eperm', 'allow');
  labels.socket = program.length;
  program.push(stmt(BPF_LD_W_ABS, ARG0_LOW));
  jump(BPF_JEQ_K, AF_UNIX, 'allow', 'eperm');
  // Classic BPF jumps only forward: the argument checks end on returns of their own.
  labels.allow = program.length;
  program.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
  labels.eperm = program.length;
  program.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM));
  labels.nosys = program.length;
  program.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS));

  for (const { at, field, target } of fixups) {
    const to = labels[target];
    const instruction = program[at];
    if (to === undefined || instruction === undefined) throw new Error(`Unknown BPF label ${target}`);
    const offset = to - at - 1;
    // Classic BPF jumps only forward, at most 255 instructions.
    if (offset < 0 || offset > 255) throw new Error(`BPF jump to ${target} out of range (${offset})`);
    instruction[field] = offset;
  }
  return program;
}

/** The filter as bwrap reads it from `--seccomp FD`: struct sock_filter[], little-endian, 8 bytes each. */
export function umlSeccompProgram(): Buffer {
  const program = umlSeccompInstructions();
  const out = Buffer.alloc(program.length * 8);
  program.forEach((p, i) => {
    out.writeUInt16LE(p.code, i * 8);
    out.writeUInt8(p.jt, i * 8 + 2);
    out.writeUInt8(p.jf, i * 8 + 3);
    out.writeUInt32LE(p.k >>> 0, i * 8 + 4);
  });
  return out;
}
