import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CGROUP_ROOT, removeCgroup } from '../../host/cgroups-v1.ts';

/** The v1 hierarchies a UML guest's cgroup lives in: limits (memory, cpu, pids) and accounting (cpuacct). */
export const UML_CGROUP_CONTROLLERS = ['memory', 'cpu', 'cpuacct', 'pids'] as const;

/** Host limits of a UML guest's process tree. */
export interface UmlCgroupLimits {
  /** memory.limit_in_bytes: guest RAM plus the kernel's own host overhead. */
  memoryBytes?: number;
  /** CPUs as a CFS quota (0.5 = half a core). */
  cpus?: number;
  /** pids.max: host processes (UML needs one per guest address space plus a few helpers). */
  pids?: number;
}

/** `cgroup.procs` files a launcher writes its pid into before exec'ing linux.uml, one per hierarchy. */
export async function makeUmlCgroup(cgroupsPath: string, root = CGROUP_ROOT): Promise<string[]> {
  const procs: string[] = [];
  for (const controller of UML_CGROUP_CONTROLLERS) {
    const dir = join(root, controller, cgroupsPath);
    await mkdir(dir, { recursive: true });
    procs.push(join(dir, 'cgroup.procs'));
  }
  return procs;
}

/** Writes the limits (unset ones become unlimited, so that a live update can lift them). */
export async function setUmlCgroupLimits(
  cgroupsPath: string,
  limits: UmlCgroupLimits,
  root = CGROUP_ROOT,
): Promise<void> {
  const at = (controller: string, file: string) => join(root, controller, cgroupsPath, file);
  await writeFile(at('memory', 'memory.limit_in_bytes'), String(limits.memoryBytes ?? -1));
  await writeFile(at('cpu', 'cpu.cfs_period_us'), '100000');
  const quota = limits.cpus === undefined ? -1 : Math.max(1000, Math.round(limits.cpus * 100_000));
  await writeFile(at('cpu', 'cpu.cfs_quota_us'), String(quota));
  await writeFile(at('pids', 'pids.max'), limits.pids === undefined ? 'max' : String(limits.pids));
}

/** Pids in the guest's cgroup (the pids hierarchy sees every task). */
export async function umlCgroupPids(cgroupsPath: string, root = CGROUP_ROOT): Promise<number[]> {
  try {
    const text = await readFile(join(root, 'pids', cgroupsPath, 'cgroup.procs'), 'utf8');
    return text
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map(Number);
  } catch {
    return [];
  }
}

/**
 * SIGKILLs everything in the guest's cgroup until it is empty, then removes
 * the cgroup. UML's helpers (I/O threads, one host process per guest address
 * space) outlive a killed main process, so the cgroup, not the pid, is what
 * says that a guest is gone. Returns false when something survived `timeoutMs`.
 */
export async function killUmlCgroup(
  cgroupsPath: string,
  timeoutMs: number,
  root = CGROUP_ROOT,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = await umlCgroupPids(cgroupsPath, root);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    if (Date.now() >= deadline) return false;
    await sleep(20);
  }
  // A dying task may still be counted for a moment: rmdir refuses until it is not.
  for (;;) {
    const left = await removeCgroup(cgroupsPath, root);
    if (left.length === 0) return true;
    if (Date.now() >= deadline) return false;
    await sleep(20);
  }
}
