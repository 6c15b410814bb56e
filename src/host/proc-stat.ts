import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import type { ProcessIdentity } from '../core/types.ts';
import { readKernelFile } from './kernel-file.ts';

/** The fields of /proc/PID/stat that Trivisor reads. */
export interface ProcStat {
  pid: number;
  comm: string;
  /** One letter: R, S, D, Z (zombie), T, X… */
  state: string;
  ppid: number;
  /** Fields 5 and 6: the process group and the session it is in. */
  pgrp: number;
  session: number;
  /** Field 22: clock ticks after boot when the process started. */
  startTime: number;
}

/**
 * Parses one /proc/PID/stat line. comm (field 2) may hold spaces and
 * parentheses, so it ends at the *last* ')' of the line, not the first.
 */
export function parseProcStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`Malformed /proc stat line: ${text.slice(0, 80)}`);
  const pid = Number(text.slice(0, open).trim());
  const comm = text.slice(open + 1, close);
  // Fields after comm start at field 3 (state); field 22 is index 19 of the rest.
  const rest = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const state = rest[0] ?? '';
  const ppid = Number(rest[1]);
  const pgrp = Number(rest[2]);
  const session = Number(rest[3]);
  const startTime = Number(rest[19]);
  if (!Number.isInteger(pid) || !Number.isInteger(startTime) || state === '') {
    throw new Error(`Malformed /proc stat line: ${text.slice(0, 80)}`);
  }
  return { pid, comm, state, ppid, pgrp, session, startTime };
}

/** Reads /proc/PID/stat; undefined when the process does not exist. */
export async function readProcStat(pid: number, procRoot = '/proc'): Promise<ProcStat | undefined> {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    return parseProcStat(await readKernelFile(`${procRoot}/${pid}/stat`));
  } catch {
    return undefined;
  }
}

/** Identity of a live (non-zombie) process, or undefined when there is none with this pid. */
export async function readProcessIdentity(
  pid: number,
  procRoot = '/proc',
): Promise<ProcessIdentity | undefined> {
  const stat = await readProcStat(pid, procRoot);
  if (!stat || stat.state === 'Z' || stat.state === 'X') return undefined;
  return { pid: stat.pid, startTime: stat.startTime };
}

/** Whether two recorded identities name the same run of a process (pid and start time); none is none. */
export function sameIdentity(a: ProcessIdentity | undefined, b: ProcessIdentity | undefined): boolean {
  return a !== undefined && b !== undefined && a.pid === b.pid && a.startTime === b.startTime;
}

/** Whether `identity` still names the same live process (pid reuse gives a different start time). */
export async function isSameProcess(identity: ProcessIdentity, procRoot = '/proc'): Promise<boolean> {
  return sameIdentity(await readProcessIdentity(identity.pid, procRoot), identity);
}

/**
 * isSameProcess without the thread pool: one readFileSync of /proc/PID/stat, a few microseconds
 * (the native UTF-8 path, no 64 KiB buffer), where the asynchronous read is an open, two reads and
 * a close, each a round trip through libuv's pool. For loops over every running guest (the
 * liveness pass), whose cost grows with their number (decision 0097).
 */
export function isSameProcessSync(identity: ProcessIdentity, procRoot = '/proc'): boolean {
  if (!Number.isInteger(identity.pid) || identity.pid <= 0) return false;
  try {
    const stat = parseProcStat(readFileSync(`${procRoot}/${identity.pid}/stat`, 'utf8'));
    return stat.state !== 'Z' && stat.state !== 'X' && stat.startTime === identity.startTime;
  } catch {
    return false;
  }
}

/** Real uid and gid of a process from /proc/PID/status; undefined when it is gone. */
export async function readProcessOwner(
  pid: number,
  procRoot = '/proc',
): Promise<{ uid: number; gid: number } | undefined> {
  try {
    const text = await readKernelFile(`${procRoot}/${pid}/status`);
    const uid = /^Uid:\s+(\d+)/m.exec(text)?.[1];
    const gid = /^Gid:\s+(\d+)/m.exec(text)?.[1];
    if (uid === undefined || gid === undefined) return undefined;
    return { uid: Number(uid), gid: Number(gid) };
  } catch {
    return undefined;
  }
}

/** Direct children of a process (needs CONFIG_PROC_CHILDREN, which Debian kernels have). */
export async function readChildPids(pid: number, procRoot = '/proc'): Promise<number[]> {
  try {
    const text = await readKernelFile(`${procRoot}/${pid}/task/${pid}/children`);
    return text
      .trim()
      .split(/\s+/)
      .filter((s) => s !== '')
      .map(Number);
  } catch {
    return [];
  }
}

/**
 * A process and what it started: `root` itself, the processes of the process
 * group and of the session it leads (when it leads one), and every descendant
 * of these, live ones only. One scan of /proc; a process forked after the scan
 * is not in it, so whoever kills the tree scans again until it is empty.
 */
export async function readProcessTree(root: number, procRoot = '/proc'): Promise<number[]> {
  const names = await readdir(procRoot).catch(() => [] as string[]);
  const stats = (
    await Promise.all(names.filter((n) => /^\d+$/.test(n)).map((n) => readProcStat(Number(n), procRoot)))
  ).filter((s): s is ProcStat => s !== undefined && s.state !== 'Z' && s.state !== 'X');
  const found = new Set<number>();
  for (const s of stats) if (s.pid === root || s.pgrp === root || s.session === root) found.add(s.pid);
  if (found.size === 0) return [];
  for (let grew = true; grew; ) {
    grew = false;
    for (const s of stats) {
      if (!found.has(s.pid) && found.has(s.ppid)) {
        found.add(s.pid);
        grew = true;
      }
    }
  }
  return [...found];
}
