import { readFile, writeFile } from 'node:fs/promises';

/**
 * A kernel setting the daemon needs at least at some value to carry many guests (decisions
 * 0057–0059). The daemon only ever raises: a host whose administrator set more keeps it.
 */
export interface SysctlFloor {
  /** The sysctl's dotted name, e.g. `kernel.pid_max`. */
  key: string;
  /** The least value the daemon wants. */
  atLeast: number;
  /** Why, in one sentence: what runs out without it, at how many guests. */
  reason: string;
}

/** What the daemon did to one setting at start, as `trivisor info --host` shows it. */
export interface SysctlReport {
  key: string;
  /** The value found at start (null: the kernel has no such setting). */
  before: number | null;
  /** The value now. */
  value: number | null;
  atLeast: number;
  changed: boolean;
  reason: string;
  /** Why it could not be raised (a read-only /proc/sys in a container, an unknown key). */
  error?: string;
}

/**
 * The settings dense ct hosts need (decisions 0057–0059). Each one's reason says what ran out
 * and where it was measured.
 */
export const DENSITY_SYSCTLS: readonly SysctlFloor[] = [
  {
    key: 'kernel.pid_max',
    atLeast: 4_194_304,
    reason:
      'every guest holds pids (its init and processes, runc with its threads while it starts one): 32768 runs out below 10,000 guests (decision 0057)',
  },
  {
    key: 'kernel.threads-max',
    atLeast: 1_000_000,
    reason: 'threads are pids too; the default scales with memory and may sit below pid_max (decision 0057)',
  },
  {
    key: 'net.ipv4.neigh.default.gc_thresh2',
    atLeast: 16_384,
    reason:
      'the gateway holds an ARP entry for every guest that talks to it: above 512 the kernel evicts them every 5 s (decision 0068)',
  },
  {
    key: 'net.ipv4.neigh.default.gc_thresh3',
    atLeast: 32_768,
    reason:
      'the hard limit of ARP entries: at 1024 a network of more guests gets "neighbour table overflow" and guests lose the gateway (decision 0068)',
  },
  {
    key: 'net.core.netdev_max_backlog',
    atLeast: 16_384,
    reason:
      'a broadcast on a bridge of 1,000 guest ports queues 1,000 copies on one CPU at once, and the default queue of 1,000 drops the last ports flooded (a leaf bridge uplink first): guests on a leaf lost the gateway at 2,000 guests (decision 0068)',
  },
];

/** Where a sysctl lives under /proc/sys. */
export function sysctlPath(key: string): string {
  if (!/^[a-z0-9_.-]+$/i.test(key) || key.includes('..')) throw new Error(`Not a sysctl name: ${key}`);
  return `/proc/sys/${key.replaceAll('.', '/')}`;
}

/** File access, injected so that tests run without root and without touching the host. */
export interface SysctlFs {
  read(path: string): Promise<string>;
  write(path: string, text: string): Promise<void>;
}

const hostFs: SysctlFs = {
  read: (p) => readFile(p, 'utf8'),
  write: (p, text) => writeFile(p, text),
};

async function readNumber(fs: SysctlFs, key: string): Promise<number> {
  const text = (await fs.read(sysctlPath(key))).trim();
  const value = Number(text.split(/\s+/)[0]);
  if (!Number.isFinite(value)) throw new Error(`${key} reads ${JSON.stringify(text)}, not a number`);
  return value;
}

/**
 * Raises each setting below its floor to the floor and reports every one, changed or not. A
 * setting that cannot be read or written is reported with its error, never thrown: the daemon
 * runs on without it (a smaller host still works; it fails later, at the limit, and says so).
 */
export async function raiseSysctls(
  floors: readonly SysctlFloor[],
  options: { fs?: SysctlFs } = {},
): Promise<SysctlReport[]> {
  const fs = options.fs ?? hostFs;
  const reports: SysctlReport[] = [];
  for (const floor of floors) {
    const base = { key: floor.key, atLeast: floor.atLeast, reason: floor.reason };
    let before: number;
    try {
      before = await readNumber(fs, floor.key);
    } catch (e) {
      reports.push({ ...base, before: null, value: null, changed: false, error: (e as Error).message });
      continue;
    }
    if (before >= floor.atLeast) {
      reports.push({ ...base, before, value: before, changed: false });
      continue;
    }
    try {
      await fs.write(sysctlPath(floor.key), `${floor.atLeast}\n`);
      const value = await readNumber(fs, floor.key);
      reports.push({ ...base, before, value, changed: value !== before });
    } catch (e) {
      reports.push({ ...base, before, value: before, changed: false, error: (e as Error).message });
    }
  }
  return reports;
}
