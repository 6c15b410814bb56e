import { readFileSync } from 'node:fs';
import { access, readdir, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { GuestUsage } from '../core/types.ts';
import { readKernelFile } from './kernel-file.ts';

/** Where the host mounts its cgroup hierarchies. */
export const CGROUP_ROOT = '/sys/fs/cgroup';

/** v1 (with or without the hybrid `unified` mount) or pure v2. */
export type CgroupMode = 'v1' | 'hybrid' | 'v2';

/** Which cgroup layout the host uses. */
export async function cgroupMode(root = CGROUP_ROOT): Promise<CgroupMode> {
  if (await exists(join(root, 'cgroup.controllers'))) return 'v2';
  return (await exists(join(root, 'unified'))) ? 'hybrid' : 'v1';
}

/** Values at or above this mean "no limit" in cgroup v1 (PAGE_COUNTER_MAX rounded to pages). */
const V1_UNLIMITED = 2 ** 62;

/**
 * Reads a guest's usage straight from its cgroup v1 files (cheap: no runc).
 * `cgroupsPath` is the OCI cgroupsPath, e.g. `/trivisor-ab12cd34/web1`.
 * Missing files count as zero: the guest is not running.
 */
export async function readCgroupUsage(cgroupsPath: string, root = CGROUP_ROOT): Promise<GuestUsage> {
  // Synchronous on purpose: these are in-memory kernel files read in microseconds, and
  // `list` reads four per guest for a thousand guests; a thread-pool round trip each
  // made that take over a second.
  const memoryBytes = readNumberSync(join(root, 'memory', cgroupsPath, 'memory.usage_in_bytes'));
  const limit = readNumberSync(join(root, 'memory', cgroupsPath, 'memory.limit_in_bytes'));
  const cpuNs = readNumberSync(join(root, 'cpuacct', cgroupsPath, 'cpuacct.usage'));
  const processes = readNumberSync(join(root, 'pids', cgroupsPath, 'pids.current'));
  const usage: GuestUsage = {
    memoryBytes: memoryBytes ?? 0,
    cpuSeconds: (cpuNs ?? 0) / 1e9,
    processes: processes ?? 0,
  };
  if (limit !== undefined && limit < V1_UNLIMITED) usage.memoryLimitBytes = limit;
  return usage;
}

function readNumberSync(path: string): number | undefined {
  try {
    const n = Number(readFileSync(path, 'utf8').trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/** State of the v1 freezer for a cgroup; undefined when the cgroup does not exist. */
export async function readFreezerState(
  cgroupsPath: string,
  root = CGROUP_ROOT,
): Promise<'THAWED' | 'FREEZING' | 'FROZEN' | undefined> {
  try {
    const text = (await readKernelFile(join(root, 'freezer', cgroupsPath, 'freezer.state'))).trim();
    return text === 'FROZEN' || text === 'FREEZING' || text === 'THAWED' ? text : undefined;
  } catch {
    return undefined;
  }
}

/** Mounted hierarchies under the cgroup root (cpu, memory, systemd, unified…), as directories. */
export async function cgroupHierarchies(root = CGROUP_ROOT): Promise<string[]> {
  try {
    const entries = await readdir(root, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => join(root, e.name));
  } catch {
    return [];
  }
}

/** Hierarchies in which `cgroupsPath` exists. */
export async function cgroupDirs(cgroupsPath: string, root = CGROUP_ROOT): Promise<string[]> {
  const found: string[] = [];
  for (const hierarchy of await cgroupHierarchies(root)) {
    const dir = join(hierarchy, cgroupsPath);
    if (await exists(dir)) found.push(dir);
  }
  return found;
}

/**
 * Removes `cgroupsPath` from every hierarchy where it exists and has no
 * processes or children left (rmdir refuses otherwise, which is what we want:
 * a busy cgroup is never torn down under a running guest). Returns the
 * directories that could not be removed.
 */
export async function removeCgroup(cgroupsPath: string, root = CGROUP_ROOT): Promise<string[]> {
  const left: string[] = [];
  // rmdir alone (ENOENT: not in that hierarchy): one call per hierarchy, not a look first.
  for (const hierarchy of await cgroupHierarchies(root)) {
    const dir = join(hierarchy, cgroupsPath);
    try {
      await rmdir(dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') left.push(dir);
    }
  }
  return left;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
