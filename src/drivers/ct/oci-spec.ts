import { configValue } from '../../core/config-keys.ts';
import type { GuestSpec } from '../../core/types.ts';
import type { HardLimits } from '../../host/rlimits.ts';

/** The subset of the OCI runtime spec (1.0.2) that Trivisor writes. */
export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: { bounding: string[]; effective: string[]; permitted: string[] };
    rlimits: Array<{ type: string; hard: number; soft: number }>;
    noNewPrivileges: boolean;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: Array<{ destination: string; type: string; source: string; options?: string[] }>;
  annotations: Record<string, string>;
  linux: {
    uidMappings?: Array<{ containerID: number; hostID: number; size: number }>;
    gidMappings?: Array<{ containerID: number; hostID: number; size: number }>;
    namespaces: Array<{ type: string }>;
    cgroupsPath: string;
    resources: {
      devices: Array<{ allow: boolean; access: string }>;
      memory?: { limit: number; swap: number };
      cpu?: { quota: number; period: number };
      pids?: { limit: number };
    };
    seccomp: {
      defaultAction: string;
      architectures: string[];
      syscalls: Array<{ names: string[]; action: string; errnoRet: number }>;
    };
    maskedPaths: string[];
    readonlyPaths: string[];
  };
}

/** Everything buildOciSpec needs besides the guest spec: all host facts are passed in, so it stays pure. */
export interface OciSpecOptions {
  /** Absolute path of the mounted root file system. */
  rootfsPath: string;
  /** argv of the guest's init. */
  init: string[];
  /** Host id that root maps to; undefined for a privileged guest (no user namespace). */
  idmapBase: number | undefined;
  cgroupsPath: string;
  /** The host's hard rlimits: the spec never asks for more. */
  hostHardLimits: HardLimits;
  /** Signal that asks init to power off, kept as an annotation for stop(). */
  stopSignal: string;
  /**
   * The guest shares its daemon's memory cgroup instead of having one (decision 0093), kept as an
   * annotation: a memory limit set while it runs waits for its next start.
   */
  sharedMemoryCgroup?: boolean;
}

/** Annotation holding the signal that asks the guest's init to power off. */
export const STOP_SIGNAL_ANNOTATION = 'org.trivisor.stop-signal';

/** Annotation `shared` when the guest was started without a memory cgroup of its own (decision 0093). */
export const MEMORY_CGROUP_ANNOTATION = 'org.trivisor.memory-cgroup';

/** Ids mapped into a user-namespaced guest. */
export const ID_MAP_SIZE = 65536;

/** CFS period for limits.cpu, in microseconds. */
export const CPU_PERIOD_US = 100_000;

/**
 * containerd/Docker's default capability set. `runc spec` grants only
 * AUDIT_WRITE, KILL and NET_BIND_SERVICE, which leaves root of a system
 * container unable to chown, setuid or read files it does not own; these are
 * the capabilities a distribution's init and package manager expect, and
 * none of them reaches outside the guest's namespaces.
 */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/**
 * Syscalls refused with EPERM. Everything else is allowed: a deny-list keeps
 * distribution userlands working while closing the calls that reach the
 * shared kernel's global state. reboot stays allowed: in a pid namespace it
 * only ends the guest, and busybox's poweroff needs it.
 */
export const DENIED_SYSCALLS: readonly string[] = [
  'acct',
  'add_key',
  'bpf',
  'clock_adjtime',
  'clock_settime',
  'create_module',
  'delete_module',
  'finit_module',
  'fsconfig',
  'fsmount',
  'fsopen',
  'fspick',
  'get_kernel_syms',
  'init_module',
  'ioperm',
  'iopl',
  'kexec_file_load',
  'kexec_load',
  'keyctl',
  'lookup_dcookie',
  'mount',
  'mount_setattr',
  'move_mount',
  'nfsservctl',
  'open_by_handle_at',
  'open_tree',
  'perf_event_open',
  'pivot_root',
  'query_module',
  'quotactl',
  'request_key',
  'settimeofday',
  'stime',
  'swapoff',
  'swapon',
  'syslog',
  'umount',
  'umount2',
  'uselib',
  'userfaultfd',
  'ustat',
  'vm86',
  'vm86old',
  '_sysctl',
];

const EPERM = 1;

/** runc spec's default mounts (the cgroup mount is read-only, so a guest cannot change its limits). */
const DEFAULT_MOUNTS: OciSpec['mounts'] = [
  { destination: '/proc', type: 'proc', source: 'proc' },
  {
    destination: '/dev',
    type: 'tmpfs',
    source: 'tmpfs',
    options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
  },
  {
    destination: '/dev/pts',
    type: 'devpts',
    source: 'devpts',
    options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
  },
  {
    destination: '/dev/shm',
    type: 'tmpfs',
    source: 'shm',
    options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'],
  },
  { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
  { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
  {
    destination: '/sys/fs/cgroup',
    type: 'cgroup',
    source: 'cgroup',
    options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'],
  },
];

/** runc spec's defaults: kernel interfaces a guest must neither read nor write. */
export const MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/sys/firmware',
  '/proc/scsi',
];

export const READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

/** rlimits a guest starts with, before clamping to the host's hard limits. */
const WANTED_RLIMITS: ReadonlyArray<{ type: string; soft: number; hard: number }> = [
  { type: 'RLIMIT_NOFILE', soft: 1024, hard: 1_048_576 },
];

/** Default environment of the guest's init and of exec sessions. */
export const DEFAULT_ENV: Readonly<Record<string, string>> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  TERM: 'xterm',
  container: 'trivisor',
};

/** Clamps wanted rlimits so neither soft nor hard exceeds the host's hard limit. */
export function clampRlimits(
  wanted: ReadonlyArray<{ type: string; soft: number; hard: number }>,
  host: HardLimits,
): Array<{ type: string; soft: number; hard: number }> {
  return wanted.map(({ type, soft, hard }) => {
    const cap = host[type] ?? Number.POSITIVE_INFINITY;
    const h = Math.min(hard, cap);
    return { type, soft: Math.min(soft, h), hard: h };
  });
}

/** The cgroup resources the guest's limits.* keys ask for (also what `runc update` applies). */
export function ociResources(config: Record<string, string>): OciSpec['linux']['resources'] {
  const resources: OciSpec['linux']['resources'] = { devices: [{ allow: false, access: 'rwm' }] };
  const memory = configValue.memoryBytes(config);
  // swap = memory+swap in cgroup v1 (memsw): equal to the limit means no swap at all.
  if (memory !== undefined) resources.memory = { limit: memory, swap: memory };
  const cpus = configValue.cpus(config);
  if (cpus !== undefined)
    resources.cpu = { quota: Math.max(1000, Math.round(cpus * CPU_PERIOD_US)), period: CPU_PERIOD_US };
  const processes = configValue.processes(config);
  if (processes !== undefined) resources.pids = { limit: processes };
  return resources;
}

/** Generates the OCI runtime spec of a ct guest. Pure: same inputs, same spec. */
export function buildOciSpec(spec: GuestSpec, options: OciSpecOptions): OciSpec {
  const caps = [...DEFAULT_CAPABILITIES];
  const nics = Object.entries(spec.devices ?? {})
    .filter(([, d]) => d.type === 'nic')
    .map(([name]) => name);
  // A guest with NICs configures them itself (DHCP): only in its own network namespace.
  if (nics.length > 0) caps.push('CAP_NET_ADMIN');
  const namespaces = ['pid', 'network', 'ipc', 'uts', 'mount'].map((type) => ({ type }));
  const env: Record<string, string> = { ...DEFAULT_ENV, ...configValue.environment(spec.config) };
  // Tells the image's boot scripts which interfaces to run DHCP on.
  if (nics.length > 0) env.TRIVISOR_NICS = nics.join(' ');
  const oci: OciSpec = {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: [...options.init],
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      cwd: '/',
      capabilities: { bounding: caps, effective: [...caps], permitted: [...caps] },
      rlimits: clampRlimits(WANTED_RLIMITS, options.hostHardLimits),
      noNewPrivileges: true,
    },
    root: { path: options.rootfsPath, readonly: false },
    hostname: spec.name,
    mounts: DEFAULT_MOUNTS.map((m) => ({ ...m, ...(m.options ? { options: [...m.options] } : {}) })),
    annotations: {
      'org.trivisor.guest': spec.name,
      'org.trivisor.project': spec.project,
      [STOP_SIGNAL_ANNOTATION]: options.stopSignal,
      ...(options.sharedMemoryCgroup && { [MEMORY_CGROUP_ANNOTATION]: 'shared' }),
    },
    linux: {
      namespaces,
      cgroupsPath: options.cgroupsPath,
      resources: ociResources(spec.config),
      seccomp: {
        defaultAction: 'SCMP_ACT_ALLOW',
        architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
        syscalls: [{ names: [...DENIED_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM }],
      },
      maskedPaths: [...MASKED_PATHS],
      readonlyPaths: [...READONLY_PATHS],
    },
  };
  if (options.idmapBase !== undefined) {
    namespaces.push({ type: 'user' });
    const map = [{ containerID: 0, hostID: options.idmapBase, size: ID_MAP_SIZE }];
    oci.linux.uidMappings = map;
    oci.linux.gidMappings = map.map((m) => ({ ...m }));
  }
  return oci;
}
