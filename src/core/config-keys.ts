import { Cron } from 'croner';
import { parseDurationMs } from './durations.ts';
import { invalidArgument } from './errors.ts';
import { injectedFiles, parseInjectedFile } from './guest-files.ts';
import { parseBytes } from './sizes.ts';
import { EVACUATE_MODES, type Model, type RestartPolicy } from './types.ts';

/** Host facts that bound what a guest may ask for. */
export interface HostCapacity {
  memoryBytes: number;
  cpus: number;
}

interface KeySpec {
  /** Throws InvalidArgument when `value` (of `key`) is malformed or out of bounds. */
  check(value: string, host: HostCapacity, key: string): void;
  /** Whether a running guest can take a change of this key without a restart (driver permitting). */
  live: boolean;
  /** Only settable when the guest is created (its on-disk state depends on it). */
  createOnly?: boolean;
  /** The models the key means something to (all when absent). */
  models?: Model[];
  help: string;
}

/**
 * A schedule key's value (`snapshots.schedule`, `backups.schedule`) as a cron (croner): five
 * fields, minute granularity, or one of the named ones. InvalidArgument in one line otherwise.
 */
export function cronSchedule(v: string, key: string): Cron {
  const named = ['@hourly', '@daily', '@weekly', '@monthly', '@yearly', '@annually'];
  if (!named.includes(v) && v.trim().split(/\s+/).length !== 5) {
    throw invalidArgument(
      `${key}=${JSON.stringify(v)} is not a schedule: give five cron fields (minute hour day month weekday, e.g. "0 3 * * *") or @hourly, @daily, @weekly, @monthly, @yearly`,
    );
  }
  try {
    return new Cron(v, { paused: true });
  } catch (e) {
    throw invalidArgument(`${key}=${JSON.stringify(v)} is not a schedule: ${(e as Error).message}`);
  }
}

/** How many shipped backups of a guest are kept when `backups.retention.count` is unset. */
export const DEFAULT_BACKUP_RETENTION_COUNT = 7;

/** How many scheduled backups make one chain (a full and the incrementals after it) when `backups.full_every` is unset. */
export const DEFAULT_BACKUP_FULL_EVERY = 7;

/** Default `migration.downtime_limit` (QEMU's own default downtime-limit). */
export const DEFAULT_MIGRATION_DOWNTIME_MS = 300;

/** `migration.downtime_limit` in ms: a whole number from 1 to 60000 (QEMU takes up to 2000 s; a minute is already no longer live). */
export function migrationDowntimeLimitMs(v: string | undefined): number {
  if (v === undefined) return DEFAULT_MIGRATION_DOWNTIME_MS;
  const n = /^[0-9]{1,6}$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < 1 || n > 60_000) {
    throw invalidArgument(
      `migration.downtime_limit=${JSON.stringify(v)} must be a whole number of milliseconds from 1 to 60000 (default ${DEFAULT_MIGRATION_DOWNTIME_MS})`,
    );
  }
  return n;
}

/**
 * `migration.stall_limit` in ms, set in whole seconds from 5 to 3600: how long a live move's copy
 * may move no byte before it is given up (decision 0042, amended: a stalled migration); undefined
 * when unset (the driver's default, 60 s).
 */
export function migrationStallLimitMs(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = /^[0-9]{1,4}$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < 5 || n > 3600) {
    throw invalidArgument(
      `migration.stall_limit=${JSON.stringify(v)} must be a whole number of seconds from 5 to 3600 (default 60)`,
    );
  }
  return n * 1000;
}

/** `migration.downtime_budget` in ms: 0 (never cold-moved) or a duration; undefined when unset. */
export function migrationDowntimeBudgetMs(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (v === '0') return 0;
  if (!/^\d{1,6}[smh]$/.test(v)) {
    throw invalidArgument(
      `migration.downtime_budget=${JSON.stringify(v)} must be 0 (never cold-moved) or a duration such as 30s, 2m or 1h`,
    );
  }
  return parseDurationMs(v, 'migration.downtime_budget');
}

/**
 * The rebalancer's cluster-wide settings (decision 0053), Incus's `cluster.rebalance.*` names:
 * `trivisor cluster set KEY=VALUE`. Unset keys take the defaults of decision 0051.
 */
export interface RebalanceSettings {
  /** false: no cycle runs on its own (`cluster rebalance` still does). */
  enabled: boolean;
  intervalMs: number;
  /** The target imbalance: the standard deviation of the members' loads, as a fraction. */
  targetImbalance: number;
  aggressiveness: 1 | 2 | 3 | 4 | 5;
  cooldownMs: number;
  windowMs: number;
  percentile: number;
}

export const DEFAULT_REBALANCE_SETTINGS: RebalanceSettings = {
  enabled: true,
  intervalMs: 5 * 60_000,
  targetImbalance: 0.1,
  aggressiveness: 3,
  cooldownMs: 60 * 60_000,
  windowMs: 60 * 60_000,
  percentile: 95,
};

/** A duration of at least 10 s and at most a week; a bare whole number is minutes (Incus's interval). */
function rebalanceDurationMs(v: string, key: string): number {
  const ms = /^\d{1,6}$/.test(v)
    ? Number(v) * 60_000
    : /^\d{1,9}[smhdw]$/.test(v)
      ? parseDurationMs(v, key)
      : -1;
  if (!(ms >= 10_000 && ms <= 7 * 86_400_000)) {
    throw invalidArgument(
      `${key}=${JSON.stringify(v)} must be a duration from 10s to 1w, e.g. 30s, 5m or 1h (a bare number is minutes)`,
    );
  }
  return ms;
}

const CLUSTER_KEYS: Record<
  string,
  { help: string; apply(v: string, s: RebalanceSettings, key: string): void }
> = {
  'cluster.rebalance.enabled': {
    help: 'whether the rebalancer runs by itself every interval (default true: on in a cluster of 2 or more)',
    apply(v, s, key) {
      if (v !== 'true' && v !== 'false')
        throw invalidArgument(`${key} must be true or false, got ${JSON.stringify(v)}`);
      s.enabled = v === 'true';
    },
  },
  'cluster.rebalance.interval': {
    help: 'how often the rebalancer runs, e.g. 5m (default; a bare number is minutes)',
    apply(v, s, key) {
      s.intervalMs = rebalanceDurationMs(v, key);
    },
  },
  'cluster.rebalance.threshold': {
    help: "target imbalance: below this standard deviation of the members' loads, in percent, nothing moves but overloads (default 10)",
    apply(v, s, key) {
      const n = /^\d{1,2}(\.\d+)?$/.test(v) ? Number(v) : Number.NaN;
      if (!(n >= 0 && n < 100))
        throw invalidArgument(`${key}=${JSON.stringify(v)} must be a percentage from 0 to 99`);
      s.targetImbalance = n / 100;
    },
  },
  'cluster.rebalance.aggressiveness': {
    help: 'from 1 (only relieve overloaded members) to 5 (chase small gains, more moves per cycle); default 3',
    apply(v, s, key) {
      if (!/^[1-5]$/.test(v)) throw invalidArgument(`${key}=${JSON.stringify(v)} must be 1, 2, 3, 4 or 5`);
      s.aggressiveness = Number(v) as RebalanceSettings['aggressiveness'];
    },
  },
  'cluster.rebalance.cooldown': {
    help: 'how long a guest the rebalancer moved stays where it went, e.g. 1h (default)',
    apply(v, s, key) {
      s.cooldownMs = rebalanceDurationMs(v, key);
    },
  },
  'cluster.rebalance.window': {
    help: 'the window of measured demand balanced, e.g. 1h (default; up to 15m it is read in 10 s steps, longer in 5 min steps)',
    apply(v, s, key) {
      s.windowMs = rebalanceDurationMs(v, key);
      if (s.windowMs > 86_400_000) throw invalidArgument(`${key}=${JSON.stringify(v)} must be at most 1d`);
    },
  },
  'cluster.rebalance.percentile': {
    help: "the percentile of a member's summed load over the window that counts as its load (default 95)",
    apply(v, s, key) {
      const n = /^\d{1,3}(\.\d+)?$/.test(v) ? Number(v) : Number.NaN;
      if (!(n > 0 && n <= 100))
        throw invalidArgument(`${key}=${JSON.stringify(v)} must be a number above 0 and at most 100`);
      s.percentile = n;
    },
  },
};

/** The cluster-wide keys with a line of help each. */
export function clusterKeyHelp(): Record<string, string> {
  return Object.fromEntries(Object.entries(CLUSTER_KEYS).map(([k, s]) => [k, s.help]));
}

/** The rebalancer's settings from the cluster's keys; InvalidArgument in one line for an unknown key or a bad value. */
export function rebalanceSettings(config: Record<string, string>): RebalanceSettings {
  const s: RebalanceSettings = { ...DEFAULT_REBALANCE_SETTINGS };
  for (const [key, value] of Object.entries(config)) {
    const spec = CLUSTER_KEYS[key];
    if (!spec) {
      throw invalidArgument(
        `Unknown cluster key ${JSON.stringify(key)}: known are ${Object.keys(CLUSTER_KEYS).join(', ')}`,
      );
    }
    if (typeof value !== 'string') throw invalidArgument(`The value of ${key} must be a string`);
    spec.apply(value, s, key);
  }
  return s;
}

/** Highest `ha.priority`. */
export const HA_MAX_PRIORITY = 1000;

/** `ha.priority` as a number: a whole number from 0 to 1000, 0 when unset. */
function haPriorityOf(v: string | undefined): number {
  if (v === undefined) return 0;
  const n = /^[0-9]{1,4}$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n > HA_MAX_PRIORITY) {
    throw invalidArgument(
      `ha.priority=${JSON.stringify(v)} must be a whole number from 0 to ${HA_MAX_PRIORITY} (default 0; higher restarts first)`,
    );
  }
  return n;
}

/** Whether the guest is to be restarted elsewhere when its member dies (`ha.enabled`, default false). */
export function haEnabled(spec: { config: Record<string, string> }): boolean {
  return spec.config['ha.enabled'] === 'true';
}

/** The guest's HA restart order (`ha.priority`, default 0; higher first); 0 for a value that does not validate. */
export function haPriority(spec: { config: Record<string, string> }): number {
  try {
    return haPriorityOf(spec.config['ha.priority']);
  } catch {
    return 0;
  }
}

const bool: KeySpec['check'] = (v) => {
  if (v !== 'true' && v !== 'false')
    throw invalidArgument(`Expected true or false, got ${JSON.stringify(v)}`);
};

/**
 * The QEMU machine types a vm guest can have (`vm.machine`). Not microvm: under TCG
 * Debian's cloud kernel often hangs in its early boot there when the host is busy,
 * and it has no PCI for hot-plug (bench/vm-variants.ts, docs/benchmarks.md).
 */
export const VM_MACHINES = ['q35', 'pc'] as const;
export type VmMachine = (typeof VM_MACHINES)[number];

/** Firmware a vm guest that boots its own disk can have (`vm.firmware`). */
export const VM_FIRMWARES = ['bios', 'uefi'] as const;
export type VmFirmware = (typeof VM_FIRMWARES)[number];

const MIN_MEMORY_BYTES = 8 * 1024 * 1024;

const KEYS: Record<string, KeySpec> = {
  'limits.memory': {
    live: true,
    help: 'memory limit, e.g. 256MiB',
    check(v, host) {
      const bytes = parseBytes(v, 'limits.memory');
      if (bytes < MIN_MEMORY_BYTES)
        throw invalidArgument(`limits.memory=${v} is too small: give at least 8MiB`);
      if (bytes > host.memoryBytes) {
        throw invalidArgument(
          `limits.memory=${v} is more than the host's ${Math.floor(host.memoryBytes / 2 ** 20)}MiB`,
        );
      }
    },
  },
  'limits.cpu': {
    live: true,
    help: 'number of CPUs the guest may use, e.g. 2 or 0.5',
    check(v, host) {
      if (!/^\d+(\.\d+)?$/.test(v) || Number(v) <= 0) {
        throw invalidArgument(`limits.cpu=${JSON.stringify(v)} is not a positive number of CPUs`);
      }
      if (Number(v) > host.cpus)
        throw invalidArgument(`limits.cpu=${v} is more than the host's ${host.cpus} CPUs`);
    },
  },
  'limits.processes': {
    live: true,
    // A vm's processes belong to its own kernel: a host limit would only count QEMU's threads.
    models: ['ct', 'pvm'],
    help: 'maximum number of processes (ct, pvm), e.g. 500',
    check(v) {
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 4_194_304) {
        throw invalidArgument(
          `limits.processes=${JSON.stringify(v)} is not a whole number between 1 and 4194304`,
        );
      }
    },
  },
  'limits.disk': {
    live: false,
    help: 'root disk size, e.g. 2GiB',
    check(v) {
      parseBytes(v, 'limits.disk');
    },
  },
  'boot.autostart': { live: true, help: 'start the guest when the daemon starts', check: bool },
  'snapshots.schedule': {
    live: true,
    help: 'when to snapshot the guest: a cron expression (minute hour day month weekday) or @hourly, @daily, @weekly, @monthly, @yearly',
    check(v) {
      cronSchedule(v, 'snapshots.schedule');
    },
  },
  'snapshots.schedule.stopped': {
    live: true,
    help: 'whether a stopped guest is snapshotted on schedule too (default false)',
    check: bool,
  },
  'snapshots.expiry': {
    live: true,
    help: 'how long a scheduled snapshot is kept, e.g. 2h, 7d or 4w (kept for ever when unset)',
    check(v) {
      parseDurationMs(v, 'snapshots.expiry');
    },
  },
  'snapshots.pattern': {
    live: true,
    help: "names of scheduled snapshots: lowercase letters, digits and '-' with %d, the next free number (default snap%d)",
    check(v) {
      if (!/^[a-z0-9-]*%d[a-z0-9-]*$/.test(v) || v.length > 50) {
        throw invalidArgument(
          `snapshots.pattern=${JSON.stringify(v)} must hold %d once, with lowercase letters, digits and - around it (e.g. auto-%d)`,
        );
      }
    },
  },
  'backups.schedule': {
    live: true,
    help: "when to back the guest up to the daemon's backup directory (TRIVISOR_BACKUP_DIR: an NFS mount, off the member): a cron expression or @hourly, @daily, @weekly, @monthly, @yearly",
    check(v) {
      cronSchedule(v, 'backups.schedule');
    },
  },
  'backups.retention.count': {
    live: true,
    help: `how many scheduled backups of the guest are kept, newest first (default ${DEFAULT_BACKUP_RETENTION_COUNT})`,
    check(v) {
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 1000) {
        throw invalidArgument(
          `backups.retention.count=${JSON.stringify(v)} must be a whole number from 1 to 1000`,
        );
      }
    },
  },
  'backups.full_every': {
    live: true,
    help: `every how many scheduled backups one is full; the others are incremental, each after the one before (default ${DEFAULT_BACKUP_FULL_EVERY}; 1: all full)`,
    check(v) {
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 1000) {
        throw invalidArgument(
          `backups.full_every=${JSON.stringify(v)} must be a whole number from 1 to 1000`,
        );
      }
    },
  },
  'backups.retention.age': {
    live: true,
    help: 'how long a scheduled backup is kept, e.g. 7d or 4w (the newest is always kept; unset: by count only)',
    check(v) {
      parseDurationMs(v, 'backups.retention.age');
    },
  },
  'cluster.evacuate': {
    live: true,
    help: 'auto, live-migrate, migrate or stop: what an evacuation of its member does with the guest (auto moves a running vm live, any other cold)',
    check(v) {
      if (!(EVACUATE_MODES as readonly string[]).includes(v)) {
        throw invalidArgument(
          `cluster.evacuate=${JSON.stringify(v)} must be auto, live-migrate, migrate or stop`,
        );
      }
    },
  },
  'migration.downtime_limit': {
    live: true,
    models: ['vm'],
    help: 'longest pause a live move may give the guest at its switch-over, in milliseconds (QEMU downtime-limit, default 300)',
    check(v) {
      migrationDowntimeLimitMs(v);
    },
  },
  'migration.stall_limit': {
    live: true,
    models: ['vm'],
    help: 'how long a live move may copy nothing (its destination stopped answering) before it is given up, the guest running on, in seconds (5 to 3600, default 60)',
    check(v) {
      migrationStallLimitMs(v);
    },
  },
  // Read by the rebalancer (decision 0053): how long a cold move may stop the guest.
  'migration.downtime_budget': {
    live: true,
    models: ['ct', 'pvm'],
    help: 'longest stop a cold move by the rebalancer may give the guest, e.g. 30s or 2m; 0 never cold-moves it (default 60s)',
    check(v) {
      migrationDowntimeBudgetMs(v);
    },
  },
  // Read by the HA manager (decision 0044); where the guest's disk may be is the guest service's check (decision 0049).
  'ha.enabled': {
    live: true,
    help: 'restart the guest on another member when its member dies (needs its disk on a shared storage pool)',
    check: bool,
  },
  'ha.priority': {
    live: true,
    help: `order of HA restarts, a whole number from 0 to ${HA_MAX_PRIORITY} (default 0; higher restarts first)`,
    check(v) {
      haPriorityOf(v);
    },
  },
  'boot.restart_policy': {
    live: true,
    help: 'never, on-failure or always: what to do when the guest dies unasked',
    check(v) {
      if (!['never', 'on-failure', 'always'].includes(v)) {
        throw invalidArgument(`boot.restart_policy=${JSON.stringify(v)} must be never, on-failure or always`);
      }
    },
  },
  'vm.machine': {
    live: false,
    models: ['vm'],
    help: 'machine type of a vm guest: q35 (default) or pc',
    check(v) {
      if (v === 'microvm') {
        throw invalidArgument(
          'vm.machine=microvm is not offered: under TCG the guest kernel often hangs early in its boot on a busy host, and nothing hot-plugs on it; use q35 or pc',
        );
      }
      if (!(VM_MACHINES as readonly string[]).includes(v)) {
        throw invalidArgument(
          `vm.machine must be one of ${VM_MACHINES.join(', ')}, got ${JSON.stringify(v)}`,
        );
      }
    },
  },
  // Firmware, display and device models of vm guests that boot their own disk (docs/decisions/0023).
  'vm.firmware': {
    live: false,
    models: ['vm'],
    help: 'firmware of a vm guest that boots its own disk: bios (SeaBIOS, default) or uefi (OVMF)',
    check(v) {
      if (!(VM_FIRMWARES as readonly string[]).includes(v)) {
        throw invalidArgument(`vm.firmware must be bios or uefi, got ${JSON.stringify(v)}`);
      }
    },
  },
  'vm.secureboot': {
    live: false,
    models: ['vm'],
    help: "UEFI Secure Boot with the Microsoft keys Debian's ovmf ships (needs vm.firmware=uefi)",
    check: bool,
  },
  'vm.display': {
    live: false,
    models: ['vm'],
    help: 'a virtual GPU whose screen `console --type vga` shows (default: true for disk and ISO guests)',
    check: bool,
  },
  'vm.nic_model': {
    live: false,
    models: ['vm'],
    help: 'NIC device of a vm guest: virtio (default) or e1000, for OSes without virtio drivers',
    check(v) {
      if (v !== 'virtio' && v !== 'e1000') {
        throw invalidArgument(`vm.nic_model must be virtio or e1000, got ${JSON.stringify(v)}`);
      }
    },
  },
  'vm.disk_bus': {
    live: false,
    models: ['vm'],
    help: 'bus of the root disk of a vm guest: virtio (default) or sata, for OSes without virtio drivers',
    check(v) {
      if (v !== 'virtio' && v !== 'sata') {
        throw invalidArgument(`vm.disk_bus must be virtio or sata, got ${JSON.stringify(v)}`);
      }
    },
  },
  'security.privileged': {
    live: false,
    // The guest's files are owned by the id range its user namespace maps (or by real root).
    createOnly: true,
    help: 'run without a user namespace (root in the guest is root on the host)',
    check: bool,
  },
  'security.idmap.isolated': {
    // Applied at the next start, which moves the guest's files to its new range (decision 18).
    live: false,
    models: ['ct'],
    help: 'give the guest an id range of its own (default true); false shares one range among such guests',
    check: bool,
  },
};

const PREFIX_KEYS: Record<string, KeySpec> = {
  'user.': { live: true, help: 'free-form user metadata', check() {} },
  'environment.': { live: true, help: 'environment variable for exec', check() {} },
  // Written into the guest at every start, before its init runs (docs/decisions/0009).
  'files.': {
    live: false,
    help: 'a file written into the guest at every start: files./PATH=mode=0644,uid=0,gid=0,content=BASE64',
    check(v, _host, key) {
      parseInjectedFile(key, v);
    },
  },
};

function specOf(key: string): KeySpec | undefined {
  const exact = KEYS[key];
  if (exact) return exact;
  for (const [prefix, spec] of Object.entries(PREFIX_KEYS)) {
    if (key.startsWith(prefix) && key.length > prefix.length) return spec;
  }
  return undefined;
}

/**
 * Throws InvalidArgument for unknown keys, bad values, or keys of another model
 * than `model`; returns the config unchanged otherwise.
 */
export function validateConfig(
  config: Record<string, string>,
  host: HostCapacity,
  model?: Model,
): Record<string, string> {
  for (const [key, value] of Object.entries(config)) {
    const spec = specOf(key);
    if (!spec) throw invalidArgument(`Unknown configuration key ${JSON.stringify(key)}`);
    if (typeof value !== 'string') throw invalidArgument(`The value of ${key} must be a string`);
    if (model && spec.models && !spec.models.includes(model)) {
      throw invalidArgument(`${key} only applies to ${spec.models.join(' and ')} guests, not ${model}`);
    }
    spec.check(value, host, key);
  }
  injectedFiles(config);
  return config;
}

/** Whether every changed key can be applied to a running guest. */
export function isLiveKey(key: string): boolean {
  return specOf(key)?.live ?? false;
}

/** Known keys with a line of help each, for `config` completion and docs. */
export function configKeyHelp(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, s] of Object.entries(KEYS)) out[k] = s.help;
  for (const [k, s] of Object.entries(PREFIX_KEYS)) out[`${k}*`] = s.help;
  return out;
}

/** Typed reads of config values (already validated). */
/** Memory of a vm guest without limits.memory (QEMU's -m). */
export const DEFAULT_VM_MEMORY_BYTES = 256 * 1024 * 1024;
/** Memory of a pvm guest without limits.memory (UML's mem=). */
export const PVM_DEFAULT_MEMORY_BYTES = 128 * 1024 * 1024;

export const configValue = {
  memoryBytes: (c: Record<string, string>): number | undefined =>
    c['limits.memory'] ? parseBytes(c['limits.memory']) : undefined,
  cpus: (c: Record<string, string>): number | undefined =>
    c['limits.cpu'] ? Number(c['limits.cpu']) : undefined,
  processes: (c: Record<string, string>): number | undefined =>
    c['limits.processes'] ? Number(c['limits.processes']) : undefined,
  privileged: (c: Record<string, string>): boolean => c['security.privileged'] === 'true',
  /** Own id range per unprivileged ct guest unless set to false (Incus's default is false; ours is true). */
  idmapIsolated: (c: Record<string, string>): boolean => c['security.idmap.isolated'] !== 'false',
  vmMachine: (c: Record<string, string>): VmMachine | undefined => c['vm.machine'] as VmMachine | undefined,
  vmFirmware: (c: Record<string, string>): VmFirmware =>
    (c['vm.firmware'] as VmFirmware | undefined) ?? 'bios',
  vmSecureBoot: (c: Record<string, string>): boolean => c['vm.secureboot'] === 'true',
  /** Undefined when not set: the driver's default depends on how the guest boots. */
  vmDisplay: (c: Record<string, string>): boolean | undefined =>
    c['vm.display'] === undefined ? undefined : c['vm.display'] === 'true',
  vmNicModel: (c: Record<string, string>): 'virtio' | 'e1000' =>
    c['vm.nic_model'] === 'e1000' ? 'e1000' : 'virtio',
  vmDiskBus: (c: Record<string, string>): 'virtio' | 'sata' =>
    c['vm.disk_bus'] === 'sata' ? 'sata' : 'virtio',
  autostart: (c: Record<string, string>): boolean => c['boot.autostart'] === 'true',
  restartPolicy: (c: Record<string, string>): RestartPolicy =>
    (c['boot.restart_policy'] as RestartPolicy | undefined) ?? 'never',
  environment: (c: Record<string, string>): Record<string, string> =>
    Object.fromEntries(
      Object.entries(c)
        .filter(([k]) => k.startsWith('environment.'))
        .map(([k, v]) => [k.slice('environment.'.length), v]),
    ),
};

/** Keys of `after` that differ from `before` but may only be set at creation. */
export function createOnlyChanges(before: Record<string, string>, after: Record<string, string>): string[] {
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  return [...keys].filter((k) => before[k] !== after[k] && specOf(k)?.createOnly === true);
}
