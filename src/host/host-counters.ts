import { existsSync, readFileSync } from 'node:fs';
import type { Guest } from '../core/types.ts';
import type { HostCounters } from '../services/metrics-sampler.ts';

/*
 * Cumulative counters of the host and of a guest's disk traffic, for the metric history
 * (services/metrics-sampler.ts). Synchronous reads of small kernel files, as cgroups-v1.ts
 * does: a thousand guests every ten seconds should not be a thousand thread-pool trips.
 */

const read = (path: string): string => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
};

/** USER_HZ: /proc/stat counts in it, and it is 100 on every Linux architecture Trivisor runs on. */
const CLOCK_TICKS = 100;
const SECTOR_BYTES = 512;

/** The host's CPU, memory, network and disk counters. */
export function readHostCounters(proc = '/proc', sys = '/sys'): HostCounters {
  // cpu  user nice system idle iowait irq softirq steal …: busy is all but idle and iowait.
  const cpu = read(`${proc}/stat`).split('\n')[0]?.trim().split(/\s+/).slice(1).map(Number) ?? [];
  const busyTicks = cpu.slice(0, 8).reduce((sum, v, i) => (i === 3 || i === 4 ? sum : sum + (v || 0)), 0);
  const mem = Object.fromEntries(
    read(`${proc}/meminfo`)
      .split('\n')
      .map((l) => /^(\w+):\s+(\d+)/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[1], Number(m[2]) * 1024]),
  ) as Record<string, number>;
  let rx = 0;
  let tx = 0;
  // Physical interfaces only: bridges, taps and veths carry the guests' traffic a second time.
  for (const line of read(`${proc}/net/dev`).split('\n').slice(2)) {
    const m = /^\s*([^:]+):\s*(.*)$/.exec(line);
    if (!m || !existsSync(`${sys}/class/net/${m[1]}/device`)) continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    rx += f[0] ?? 0;
    tx += f[8] ?? 0;
  }
  let sectorsRead = 0;
  let sectorsWritten = 0;
  // Whole disks only (a partition's traffic is its disk's too), not loop or ram devices.
  for (const line of read(`${proc}/diskstats`).split('\n')) {
    const f = line.trim().split(/\s+/);
    const name = f[2];
    if (!name || /^(loop|ram|zram|dm-|nbd)/.test(name) || !existsSync(`${sys}/block/${name}/device`))
      continue;
    sectorsRead += Number(f[5]) || 0;
    sectorsWritten += Number(f[9]) || 0;
  }
  return {
    cpuBusySeconds: busyTicks / CLOCK_TICKS,
    memoryUsedBytes: Math.max(0, (mem.MemTotal ?? 0) - (mem.MemAvailable ?? 0)),
    netRxBytes: rx,
    netTxBytes: tx,
    diskReadBytes: sectorsRead * SECTOR_BYTES,
    diskWriteBytes: sectorsWritten * SECTOR_BYTES,
  };
}

/**
 * A running guest's disk bytes: a `ct` guest's from its blkio cgroup (every process of the
 * container is in it), a `vm` or `pvm` guest's from its QEMU or UML process, which does all
 * of the guest's disk I/O (`/proc/PID/io`, its threads included).
 */
export function readGuestIo(
  guest: Pick<Guest, 'model' | 'state'>,
  proc = '/proc',
  cgroupRoot = '/sys/fs/cgroup',
): { readBytes: number; writeBytes: number } | undefined {
  const pid = guest.state.pid;
  if (!pid) return undefined;
  if (guest.model === 'ct') {
    const line = read(`${proc}/${pid}/cgroup`)
      .split('\n')
      .find((l) => /^\d+:([^:]*,)?blkio(,[^:]*)?:/.test(l));
    const path = line?.slice(line.indexOf(':', line.indexOf(':') + 1) + 1);
    // The root cgroup would be the whole host's traffic: not this guest's.
    if (!path || path === '/') return undefined;
    const text = read(`${cgroupRoot}/blkio${path}/blkio.throttle.io_service_bytes_recursive`);
    if (!text) return undefined;
    let readBytes = 0;
    let writeBytes = 0;
    for (const l of text.split('\n')) {
      const f = l.trim().split(/\s+/);
      if (f.length !== 3) continue;
      if (f[1] === 'Read') readBytes += Number(f[2]) || 0;
      if (f[1] === 'Write') writeBytes += Number(f[2]) || 0;
    }
    return { readBytes, writeBytes };
  }
  const io = read(`${proc}/${pid}/io`);
  const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(io)?.[1]);
  const readBytes = field('read_bytes');
  const writeBytes = field('write_bytes');
  return Number.isFinite(readBytes) && Number.isFinite(writeBytes) ? { readBytes, writeBytes } : undefined;
}

/** Cumulative I/O of a guest's host processes (ct, pvm), from `/proc/PID/io`. */
export interface ProcessIoCounters {
  /** Bytes its processes made the host read from storage. */
  readBytes: number;
  /** Bytes its processes dirtied for storage (counted when written to the page cache, not at writeback). */
  writtenBytes: number;
  /** read(2)-family calls: of files, but also of pipes, sockets and terminals. */
  readCalls: number;
  writeCalls: number;
}

/**
 * The I/O of every process in a guest's cgroup (`cgroupsPath` under the pids hierarchy, which
 * holds every task): a ct guest's container, a pvm guest's UML kernel and helpers. A process's
 * `/proc/PID/io` includes the children it has reaped, so the sum over the living ones keeps
 * what exited inside the guest too (not what a process reaped outside it did, a `trivisor exec`
 * session's: services/host-service.ts keeps the exported counter from going down). Not the blkio cgroup: since Linux 6.x its v1 counters stay at 0 unless a
 * throttle rule is set on the device (seen on this host's 6.18). Undefined when the cgroup is
 * gone or empty.
 */
export function readCgroupProcessIo(
  cgroupsPath: string,
  options: { cgroupRoot?: string; proc?: string } = {},
): ProcessIoCounters | undefined {
  const cgroupRoot = options.cgroupRoot ?? '/sys/fs/cgroup';
  const proc = options.proc ?? '/proc';
  const pids = read(`${cgroupRoot}/pids${cgroupsPath}/cgroup.procs`)
    .split('\n')
    .filter((l) => /^\d+$/.test(l.trim()));
  if (pids.length === 0) return undefined;
  const total: ProcessIoCounters = { readBytes: 0, writtenBytes: 0, readCalls: 0, writeCalls: 0 };
  for (const pid of pids) {
    const io = read(`${proc}/${pid.trim()}/io`);
    const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(io)?.[1] ?? 0);
    total.readBytes += field('read_bytes');
    // Not less cancelled_write_bytes (what a truncate took back before writeback): a counter must never go down.
    total.writtenBytes += field('write_bytes');
    total.readCalls += field('syscr');
    total.writeCalls += field('syscw');
  }
  return total;
}
