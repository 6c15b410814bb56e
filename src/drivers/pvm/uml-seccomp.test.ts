import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  AUDIT_ARCH_X86_64,
  CLONE_NAMESPACE_FLAGS,
  ENOSYS,
  EPERM,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  UML_DENIED_SYSCALLS,
  umlSeccompProgram,
} from './uml-seccomp.ts';

/** Runs a classic BPF program (the few opcodes a seccomp filter uses) over one struct seccomp_data. */
function runFilter(program: Buffer, data: { nr: number; arch?: number; arg0?: number }): number {
  const mem = Buffer.alloc(64);
  mem.writeInt32LE(data.nr, 0);
  mem.writeUInt32LE(data.arch ?? AUDIT_ARCH_X86_64, 4);
  mem.writeBigUInt64LE(BigInt(data.arg0 ?? 0), 16);
  let a = 0;
  for (let pc = 0; pc < program.length / 8; ) {
    const code = program.readUInt16LE(pc * 8);
    const jt = program.readUInt8(pc * 8 + 2);
    const jf = program.readUInt8(pc * 8 + 3);
    const k = program.readUInt32LE(pc * 8 + 4);
    switch (code) {
      case 0x20: // ld [k]
        a = mem.readUInt32LE(k);
        pc++;
        break;
      case 0x15: // jeq #k
        pc += 1 + (a === k ? jt : jf);
        break;
      case 0x35: // jge #k
        pc += 1 + (a >= k ? jt : jf);
        break;
      case 0x45: // jset #k
        pc += 1 + ((a & k) >>> 0 !== 0 ? jt : jf);
        break;
      case 0x06: // ret #k
        return k;
      default:
        throw new Error(`opcode ${code.toString(16)} at ${pc}`);
    }
  }
  throw new Error('the program ran off its end');
}

const program = umlSeccompProgram();
const EPERM_RET = SECCOMP_RET_ERRNO | EPERM;

test('every listed host syscall is denied with EPERM; what UML uses is allowed', () => {
  for (const [name, nr] of Object.entries(UML_DENIED_SYSCALLS)) {
    assert.equal(runFilter(program, { nr }), EPERM_RET, name);
  }
  // read, write, openat, mmap, mprotect, ptrace, wait4, execve, ioctl (TUNSETIFF), kill, rt_sigreturn
  for (const nr of [0, 1, 257, 9, 10, 101, 61, 59, 16, 62, 15])
    assert.equal(runFilter(program, { nr }), SECCOMP_RET_ALLOW, `syscall ${nr}`);
});

test('the names cover what the issue asks to deny', () => {
  for (const name of [
    'mount',
    'umount2',
    'pivot_root',
    'kexec_load',
    'kexec_file_load',
    'init_module',
    'finit_module',
    'delete_module',
    'bpf',
    'keyctl',
    'add_key',
    'request_key',
    'swapon',
    'swapoff',
    'reboot',
    'unshare',
    'setns',
    'open_by_handle_at',
    'perf_event_open',
    'userfaultfd',
  ])
    assert.ok(name in UML_DENIED_SYSCALLS, name);
});

test('clone with a namespace flag is denied, a plain clone (UML helpers, guest processes) is not', () => {
  const CLONE_VM = 0x100;
  const SIGCHLD = 17;
  assert.equal(runFilter(program, { nr: 56, arg0: CLONE_VM | SIGCHLD }), SECCOMP_RET_ALLOW);
  for (const bit of [0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000]) {
    assert.ok((CLONE_NAMESPACE_FLAGS & bit) !== 0);
    assert.equal(runFilter(program, { nr: 56, arg0: bit | SIGCHLD }), EPERM_RET, bit.toString(16));
  }
  // clone3 hides its flags behind a pointer: ENOSYS sends the C library back to clone.
  assert.equal(runFilter(program, { nr: 435 }), SECCOMP_RET_ERRNO | ENOSYS);
});

test('only unix sockets may be made: no IP, netlink or packet socket of the host', () => {
  assert.equal(runFilter(program, { nr: 41, arg0: 1 }), SECCOMP_RET_ALLOW);
  for (const family of [2, 10, 16, 17]) assert.equal(runFilter(program, { nr: 41, arg0: family }), EPERM_RET);
});

test('another architecture or an x32 call is ENOSYS: the numbers would mean other calls', () => {
  const i386 = 0x40000003;
  assert.equal(runFilter(program, { nr: 21, arch: i386 }), SECCOMP_RET_ERRNO | ENOSYS);
  assert.equal(runFilter(program, { nr: 0x40000000 + 165 }), SECCOMP_RET_ERRNO | ENOSYS);
  assert.equal(runFilter(program, { nr: 0x40000000 }), SECCOMP_RET_ERRNO | ENOSYS);
});

test('the program is whole sock_filter records, short enough for the kernel (4096)', () => {
  assert.equal(program.length % 8, 0);
  assert.ok(program.length / 8 < 4096);
});
