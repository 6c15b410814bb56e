import { posix } from 'node:path';
import { internal } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';

/**
 * The jail of a pvm guest's UML processes (docs/decisions/0017-pvm-jail.md), made by bubblewrap
 * the way Firecracker's jailer confines its VMM: a mount namespace whose root is an empty tmpfs
 * (pivot_root; the host's tree is detached, not hidden) holding only what the kernel opens, a
 * private IPC namespace, the seccomp filter of uml-seccomp.ts, then setpriv to the guest's uid.
 * Host files keep their host paths inside (the COW header names its base disk by path, and UML
 * would rewrite a header whose path differs); what exists only in the jail lives under `/.uml`.
 */

/** Where the jail's own directories are; no host path is ever bound below it. */
export const JAIL_DIR = '/.uml';
/** UML's TMPDIR: a private tmpfs for guest RAM, sized to the guest (it never touches the host's /dev/shm). */
export const JAIL_MEMORY_DIR = `${JAIL_DIR}/memory`;
/** Block volumes, one file mount point per device (`/.uml/volumes/DEVICE`); hot-plug mounts here too. */
export const JAIL_VOLUMES_DIR = `${JAIL_DIR}/volumes`;
/** An empty read-only directory: UML's `hostfs=` root, so that a hostfs mount starts in nothing. */
export const JAIL_HOSTFS_DIR = `${JAIL_DIR}/empty`;
/** The fd the launcher opens the seccomp program on, and the one it opens /proc/cpuinfo on. */
export const JAIL_SECCOMP_FD = 6;
export const JAIL_CPUINFO_FD = 7;
/** Debian's paths; the probe checks them. */
export const BWRAP = '/usr/bin/bwrap';
export const SETPRIV = '/usr/bin/setpriv';

/** What one guest's UML processes get to see. */
export interface UmlJail {
  /** The guest's host uid (and gid). */
  uid: number;
  /** Binaries and the libraries they load, bound read-only at their own paths. */
  programFiles: readonly string[];
  /** The guest's own directories the kernel writes (its disk dir, its `uml_dir`). */
  writableDirs: readonly string[];
  /**
   * Files the kernel only reads: the base disk, the config disk. A `source` is bound at
   * `path` (the base disk named by a path with links in it is bound from its real file).
   */
  readOnlyFiles: ReadonlyArray<string | { path: string; source: string }>;
  /** Block volumes, bound at `/.uml/volumes/DEVICE`. */
  volumes: ReadonlyArray<{ device: string; hostPath: string }>;
  /** Size of the RAM tmpfs: the guest's RAM plus what UML maps beyond it. */
  memoryTmpfsBytes: number;
}

/** The jail path of a block volume: a device name is a DNS label, checked again here since it becomes a path. */
export function jailVolumePath(device: string): string {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(device)) {
    throw internal(`Volume device name ${JSON.stringify(device)} cannot name a file in the UML jail.`);
  }
  return `${JAIL_VOLUMES_DIR}/${device}`;
}

/**
 * `bwrap … -- setpriv … -- COMMAND`: run as root by the launcher, which has opened the seccomp
 * program on fd 6 and /proc/cpuinfo on fd 7 (UML reads the host's CPU features there; the
 * guest can ask the CPU itself anyway). bwrap execs, after one fork: its first process stays
 * as root without capabilities, outside the jail, waiting for the kernel (pvm-driver.ts records
 * the child). Only CAP_SETUID and CAP_SETGID reach setpriv, which drops them with root.
 */
export function umlJailArgv(jail: UmlJail, command: readonly string[]): string[] {
  const readOnly = jail.readOnlyFiles.map((f) => (typeof f === 'string' ? { path: f, source: f } : f));
  const absolute = [...jail.programFiles, ...jail.writableDirs, ...readOnly.map((f) => f.path)];
  for (const path of absolute) {
    if (!posix.isAbsolute(path) || posix.normalize(path) !== path || path.includes(',')) {
      throw internal(`The UML jail cannot bind ${JSON.stringify(path)}: paths must be absolute and normal.`);
    }
    if (path === JAIL_DIR || path.startsWith(`${JAIL_DIR}/`) || path === '/dev' || path.startsWith('/dev/')) {
      throw internal(`The UML jail cannot bind ${path}: that place is the jail's own.`);
    }
    // A bind below a bound directory would create its mount point on the host's file system.
    for (const dir of jail.writableDirs) {
      if (path !== dir && path.startsWith(`${dir}/`)) {
        throw internal(`The UML jail cannot bind ${path} inside the bound directory ${dir}.`);
      }
    }
  }

  // Every directory on the way to a bound path, parents first: 0711, so that the kernel can walk
  // to its files but list nothing (bwrap would make them 0700, which the guest's uid cannot pass).
  const dirs: string[] = [];
  const seen = new Set<string>(['/']);
  const addParents = (path: string) => {
    const parent = posix.dirname(path);
    if (seen.has(parent)) return;
    addParents(parent);
    seen.add(parent);
    dirs.push(parent);
  };
  for (const path of [...absolute, `${JAIL_DIR}/x`, '/dev/net/tun', '/proc/cpuinfo']) addParents(path);

  return [
    BWRAP,
    '--unshare-ipc',
    '--cap-drop',
    'ALL',
    '--cap-add',
    'CAP_SETUID',
    '--cap-add',
    'CAP_SETGID',
    '--clearenv',
    '--setenv',
    'PATH',
    '/usr/bin:/bin',
    '--setenv',
    'TMPDIR',
    JAIL_MEMORY_DIR,
    ...dirs.flatMap((d) => ['--perms', '0711', '--dir', d]),
    ...jail.programFiles.flatMap((f) => ['--ro-bind', f, f]),
    '--dev-bind',
    '/dev/null',
    '/dev/null',
    '--dev-bind',
    '/dev/urandom',
    '/dev/urandom',
    // The launcher's private tun node (privateTunArgv), owned by the guest's uid; none without one.
    '--dev-bind-try',
    '/dev/net/tun',
    '/dev/net/tun',
    '--perms',
    '0444',
    '--ro-bind-data',
    String(JAIL_CPUINFO_FD),
    '/proc/cpuinfo',
    '--perms',
    '0711',
    '--dir',
    JAIL_HOSTFS_DIR,
    '--perms',
    '01777',
    '--size',
    String(jail.memoryTmpfsBytes),
    '--tmpfs',
    JAIL_MEMORY_DIR,
    '--perms',
    '0711',
    '--size',
    String(64 * 1024),
    '--tmpfs',
    JAIL_VOLUMES_DIR,
    ...jail.writableDirs.flatMap((d) => ['--bind', d, d]),
    ...readOnly.flatMap((f) => ['--ro-bind', f.source, f.path]),
    ...jail.volumes.flatMap((v) => ['--bind', v.hostPath, jailVolumePath(v.device)]),
    // Nothing new may appear in the jail's root; hot-plugged volumes go to their own tmpfs.
    '--remount-ro',
    '/',
    '--seccomp',
    String(JAIL_SECCOMP_FD),
    // Not the run dir: that is the guest uid's 0700, and bwrap (root without CAP_DAC_OVERRIDE
    // by then) could not enter it. UML names its files by absolute paths.
    '--chdir',
    '/',
    '--',
    SETPRIV,
    `--reuid=${jail.uid}`,
    `--regid=${jail.uid}`,
    '--clear-groups',
    '--inh-caps=-all',
    '--no-new-privs',
    '--',
    ...command,
  ];
}

/**
 * The files `binaries` need to run: themselves and what `ldd` says they load (at the paths the
 * dynamic loader looks them up by). The binaries are the administrator's (the UML kernel path,
 * setpriv), so running ldd on them runs nothing a guest chose.
 */
export async function programFilesOf(binaries: readonly string[], runner: ProcessRunner): Promise<string[]> {
  const files = new Set<string>();
  for (const binary of binaries) {
    files.add(binary);
    const r = await runner.run(['ldd', binary], { allowFailure: true, timeoutMs: 10_000 });
    if (r.code !== 0) {
      if (/not a dynamic executable/.test(`${r.stdout}${r.stderr}`)) continue;
      throw internal(
        `Cannot list the libraries of ${binary}: ${(r.stderr || r.stdout).trim().split('\n')[0]}`,
      );
    }
    for (const line of r.stdout.split('\n')) {
      const m = /=>\s+(\/\S+)\s+\(/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
      if (m?.[1]) files.add(posix.normalize(m[1]));
      else if (/=>\s+not found/.test(line)) {
        throw internal(`${binary} needs a library that is missing: ${line.trim()}`);
      }
    }
  }
  return [...files];
}
