import os from 'node:os';
import { readHostCounters } from '../host/host-counters.ts';
import type { MemberUsage } from '../store/records.ts';

/**
 * What a member measures of its host for its heartbeat (`cluster list`, and placement
 * later): CPUs busy over the time since the last sample (from /proc/stat), memory in use
 * (MemTotal − MemAvailable).
 */
export function createUsageMeter(
  read: () => { cpuBusySeconds: number; memoryUsedBytes: number } = () => readHostCounters(),
  now: () => number = () => performance.now(),
  /** The default pool's file system: total and available bytes (statfs of the state dir). */
  disk?: () => { totalBytes: number; availableBytes: number } | undefined,
): { sample(): MemberUsage } {
  let last = { at: now(), busy: read().cpuBusySeconds };
  let lastPercent = 0;
  return {
    sample() {
      const counters = read();
      const at = now();
      const cpus = os.availableParallelism();
      const elapsedSeconds = (at - last.at) / 1000;
      // Too short an interval says nothing new: keep the last figure.
      if (elapsedSeconds >= 0.5) {
        const busy = Math.max(0, counters.cpuBusySeconds - last.busy);
        lastPercent = Math.min(100, Math.round((busy / (elapsedSeconds * cpus)) * 1000) / 10);
        last = { at, busy: counters.cpuBusySeconds };
      }
      const total = os.totalmem();
      const space = (() => {
        try {
          return disk?.();
        } catch {
          return undefined;
        }
      })();
      return {
        ...(space && { diskTotalBytes: space.totalBytes, diskAvailableBytes: space.availableBytes }),
        cpus,
        cpuUsedPercent: lastPercent,
        memoryTotalBytes: total,
        memoryAvailableBytes: Math.max(0, total - counters.memoryUsedBytes),
        measuredAt: new Date().toISOString(),
      };
    },
  };
}
