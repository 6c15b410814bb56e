import { readFileSync } from 'node:fs';
import { access, readdir, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { internal } from '../core/errors.ts';
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
    // A guest without a memory limit has no memory cgroup of its own (decision 0093): the
    // resident memory of its processes stands in for it.
    memoryBytes: memoryBytes ?? residentBytesOf(join(root, 'pids', cgroupsPath, 'cgroup.procs')),
    cpuSeconds: (cpuNs ?? 0) / 1e9,
    processes: processes ?? 0,
  };
  if (limit !== undefined && limit < V1_UNLIMITED) usage.memoryLimitBytes = limit;
  return usage;
}

/** x86_64's page size: /proc/PID/statm counts pages. */
const PAGE_BYTES = 4096;

/**
 * The resident memory (RSS) of the processes listed in a cgroup's `cgroup.procs`, bytes; 0 when
 * the file is missing. Unlike a memory cgroup's usage, it leaves out the page cache and the
 * kernel's memory, and counts a page shared by two processes twice.
 */
function residentBytesOf(procsFile: string): number {
  let text: string;
  try {
    text = readFileSync(procsFile, 'utf8');
  } catch {
    return 0;
  }
  let pages = 0;
  for (const pid of text.split('\n')) {
    if (!pid) continue;
    try {
      pages += Number(readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) || 0;
    } catch {
      // Gone meanwhile.
    }
  }
  return pages * PAGE_BYTES;
}

/**
 * The memory cgroup shared by the guests of `cgroupParent` that have no memory limit, with its
 * hierarchy's mount point (decision 0093); undefined where there is no v1 memory hierarchy.
 */
export async function sharedMemoryCgroup(
  cgroupParent: string,
  root = CGROUP_ROOT,
): Promise<{ mount: string; dir: string } | undefined> {
  const mount = join(root, 'memory');
  if (!(await exists(join(mount, 'memory.usage_in_bytes')))) return undefined;
  return { mount, dir: join(mount, cgroupParent) };
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

/** readFreezerState in one readFileSync (see isSameProcessSync): for loops over every guest. */
export function readFreezerStateSync(
  cgroupsPath: string,
  root = CGROUP_ROOT,
): 'THAWED' | 'FREEZING' | 'FROZEN' | undefined {
  try {
    const text = readFileSync(join(root, 'freezer', cgroupsPath, 'freezer.state'), 'utf8').trim();
    return text === 'FROZEN' || text === 'FREEZING' || text === 'THAWED' ? text : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Freezes (FROZEN) or thaws (THAWED) a cgroup in the v1 freezer hierarchy, as runc 1.1's
 * `pause`/`resume` do it (libcontainer's FreezerGroup.Set), without spawning runc: a thaw is one
 * write; a freeze writes FROZEN and reads the state back until the kernel says FROZEN, since a
 * cgroup whose processes fork meanwhile may stay FREEZING. Like runc, it writes FROZEN again up to
 * 1,000 times, thaws and waits 10 ms every 50th try, and thaws back when it gives up (a cgroup left
 * FREEZING holds its processes half-stopped). runc keeps no record of a pause (`runc state` reads
 * this file), so what it reports stays in step. A cgroup that does not exist throws ENOENT.
 */
export async function writeFreezerState(
  cgroupsPath: string,
  state: 'FROZEN' | 'THAWED',
  root = CGROUP_ROOT,
): Promise<void> {
  const file = join(root, 'freezer', cgroupsPath, 'freezer.state');
  if (state === 'THAWED') {
    await writeFile(file, 'THAWED');
    return;
  }
  try {
    for (let i = 0; i < 1000; i++) {
      if (i % 50 === 49) {
        await writeFile(file, 'THAWED');
        await sleep(10);
      }
      await writeFile(file, 'FROZEN');
      const now = (await readKernelFile(file)).trim();
      if (now === 'FROZEN') return;
      if (now !== 'FREEZING')
        throw internal(`The freezer of ${cgroupsPath} says ${now} after FROZEN was written`);
    }
  } catch (e) {
    await writeFile(file, 'THAWED').catch(() => {});
    throw e;
  }
  await writeFile(file, 'THAWED').catch(() => {});
  throw internal(
    `Cannot freeze ${cgroupsPath}: its processes stayed FREEZING (forking without end?); try again.`,
  );
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
