import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { cgroupParentOf } from '../src/drivers/ct/ct-driver.ts';
import { type ApiResponse, type Daemon, sleep } from '../test/system/harness.ts';

export const RESULTS_DIR = path.resolve(import.meta.dirname, 'results');

/** Percentile of a sample (nearest rank). */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}

/** Runs an async API action that returns an operation and waits for it; throws on failure. */
export async function runOperation(
  d: Daemon,
  method: string,
  urlPath: string,
  body?: unknown,
): Promise<void> {
  const r = await d.api(method, urlPath, body);
  if (r.status !== 202) throw new Error(`${method} ${urlPath}: ${r.status} ${r.text}`);
  const done: ApiResponse = await d.api('GET', `${r.body.operation}/wait?timeout=600`);
  const op = done.body.metadata as { status: string; error: string | null };
  if (op.status !== 'Success') throw new Error(`${method} ${urlPath}: ${op.status} ${op.error}`);
}

/** Runs `fn` over items with at most `limit` in flight. */
export async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const item = items[next++] as T;
        await fn(item);
      }
    }),
  );
}

/** Host memory in use (MemTotal − MemAvailable), bytes. */
export function hostUsedBytes(): number {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  return (kb('MemTotal') - kb('MemAvailable')) * 1024;
}

/** Resident memory of a process, bytes (0 if gone). */
export function rssBytes(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/** Lets the kernel settle (reclaim, RCU) before a memory reading. */
export async function settle(): Promise<void> {
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  await sleep(1500);
}

export function writeResult(name: string, result: Record<string, unknown>): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${name}.json`);
  writeFileSync(file, `${JSON.stringify({ ...result, measuredAt: new Date().toISOString() }, null, 2)}\n`);
  return file;
}

export const ms = (ns: bigint | number): number => Number(ns) / 1e6;

/**
 * Proportional set size of a process, bytes (0 if gone): shared pages (the busybox
 * binary every guest maps) are divided among their users, so sums over guests add up.
 */
export function pssBytes(pid: number): number {
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    return Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/** PSS of every process in the guest's pids cgroup (ct, pvm and vm guests each run in one). */
export function guestPss(stateDir: string, guest: string): number {
  const procs = readFileSync(`/sys/fs/cgroup/pids${cgroupParentOf(stateDir)}/${guest}/cgroup.procs`, 'utf8');
  return procs
    .split('\n')
    .filter(Boolean)
    .reduce((sum, pid) => sum + pssBytes(Number(pid)), 0);
}

/** The busybox image's base disk (the one disk-*.ext4 the run made). */
export function baseDiskOf(daemon: Daemon): string {
  const images = path.join(daemon.stateDir, 'images');
  const found = execFileSync('find', [images, '-name', 'disk*.ext4'], { encoding: 'utf8' })
    .trim()
    .split('\n')[0];
  if (!found) throw new Error('no base disk found');
  return found;
}
