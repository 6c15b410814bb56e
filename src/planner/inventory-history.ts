import { invalidArgument } from '../core/errors.ts';
import type { Inventory, Workload } from './inventory.ts';

/**
 * One guest's metric history as the daemon answers it (`GET /1.0/guests/{name}/metrics?range=`,
 * decision 0027), reduced to what planning reads. Declared here rather than imported from api/:
 * the planner sits below the API layer and takes plain data.
 */
export interface GuestHistory {
  name: string;
  /** The guest's CPU limit in cores, when it has one (the workload's capacity; else its peak). */
  cpuLimit?: number;
  memoryLimitBytes?: number;
  stepSeconds: number;
  /** Start of each step, Unix seconds, oldest first. */
  times: number[];
  metrics: Record<string, { average: Array<number | null> } | undefined>;
}

/**
 * An inventory from the metric history of running Trivisor guests: CPU as busy cores and memory
 * in bytes, each step's average. A step with no sample (null) is a step the guest was stopped
 * (decision 0027 samples running guests only), so it counts as using nothing, not as the value
 * before: Bitbrains' gaps are lost measurements, these are not. Guests read a moment apart may
 * see their rings shifted by a step: only the steps every guest has are kept.
 */
export function inventoryFromHistory(guests: GuestHistory[]): Inventory {
  if (guests.length === 0) throw invalidArgument('No guest has a metric history to plan from');
  const step = (guests[0] as GuestHistory).stepSeconds;
  for (const g of guests) {
    if (g.stepSeconds !== step) {
      throw invalidArgument(
        `Guest ${g.name}'s history has ${g.stepSeconds} s steps, others ${step} s: read every guest with the same range`,
      );
    }
  }
  let common = new Set((guests[0] as GuestHistory).times);
  for (const g of guests.slice(1)) common = new Set(g.times.filter((t) => common.has(t)));
  const times = [...common].sort((a, b) => a - b);
  if (times.length < 2) {
    throw invalidArgument(
      'The guests’ histories share fewer than 2 steps: read them again with the same range',
    );
  }
  const workloads = guests.map((g): Workload => {
    const cpu = seriesOf(g, 'cpu', times);
    const memoryBytes = seriesOf(g, 'memoryBytes', times);
    if (cpu.every((v) => v === 0) && memoryBytes.every((v) => v === 0)) {
      throw invalidArgument(
        `Guest ${g.name} has no sample in the range read: start it, choose a longer range, or leave it out`,
      );
    }
    const cpuCapacity = g.cpuLimit ?? Math.max(...cpu);
    return {
      id: g.name,
      cpuCapacity,
      ...(g.memoryLimitBytes === undefined ? {} : { memoryCapacityBytes: g.memoryLimitBytes }),
      cpu,
      memoryBytes,
      file: `guest/${g.name}`,
      line: 1,
    };
  });
  return { format: 'trivisor', cpuUnit: 'cores', intervalSeconds: step, samples: times.length, workloads };
}

function seriesOf(g: GuestHistory, metric: string, times: number[]): Float64Array {
  const points = g.metrics[metric]?.average;
  if (!points || points.length !== g.times.length) {
    throw invalidArgument(`Guest ${g.name}'s history has no ${metric} series as long as its times`);
  }
  const at = new Map(g.times.map((t, i) => [t, i]));
  return Float64Array.from(times, (t) => {
    const v = points[at.get(t) as number];
    if (v === null || v === undefined) return 0;
    if (!Number.isFinite(v) || v < 0) {
      throw invalidArgument(
        `Guest ${g.name}'s ${metric} at ${new Date(t * 1000).toISOString()} is ${v}: not a usage`,
      );
    }
    return v;
  });
}
