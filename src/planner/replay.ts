import { invalidArgument } from '../core/errors.ts';
import type { PlannedHost } from './consolidate.ts';
import { percentileOf } from './consolidate.ts';
import { type HostSize, type Inventory, sliceInventory } from './inventory.ts';

/** One host of a replayed plan. */
export interface ReplayedHost {
  name: string;
  intervalsOver100: number;
  /** The host's bottleneck load (the larger of CPU and memory, % of the host) at its 95th percentile. */
  p95LoadPercent: number;
  peakLoadPercent: number;
  meanLoadPercent: number;
  /** The bottleneck load of each interval, % of the host (for the picture). */
  loadPercent: Float64Array;
}

/** What replaying the traces on a plan shows. */
export interface Replay {
  samples: number;
  hostIntervals: number;
  hostIntervalsOver100: number;
  /** hostIntervalsOver100 / hostIntervals. */
  overloadFraction: number;
  /** Fraction of intervals in which at least one host is over 100%. */
  anyHostOverFraction: number;
  /** 100 − the hosts' 95th-percentile bottleneck load, averaged over hosts, in percentage points. */
  headroomPercent: number;
  hosts: ReplayedHost[];
}

/**
 * Replays an inventory's traces on a plan, interval by interval: each host's summed CPU and
 * memory against its size. The inventory may be another period of the same workloads (plan on
 * July, replay August); every planned workload must be in it.
 */
export function replayPlan(hosts: PlannedHost[], inv: Inventory, size: HostSize): Replay {
  const byId = new Map(inv.workloads.map((w) => [w.id, w]));
  const T = inv.samples;
  const memory = size.memoryBytes !== undefined;
  let over = 0;
  const anyOver = new Uint8Array(T);
  const replayed = hosts.map((h): ReplayedHost => {
    const cpu = new Float64Array(T);
    const mem = new Float64Array(T);
    for (const id of h.workloads) {
      const w = byId.get(id);
      if (!w) throw invalidArgument(`Workload ${id} of ${h.name} is not in the inventory replayed`);
      for (let t = 0; t < T; t++) cpu[t] = (cpu[t] as number) + (w.cpu[t] ?? 0);
      if (memory && w.memoryBytes) {
        for (let t = 0; t < T; t++) mem[t] = (mem[t] as number) + (w.memoryBytes[t] ?? 0);
      }
    }
    const load = new Float64Array(T);
    let n = 0;
    let sum = 0;
    let peak = 0;
    for (let t = 0; t < T; t++) {
      const c = (cpu[t] as number) / size.cpu;
      const m = memory ? (mem[t] as number) / (size.memoryBytes as number) : 0;
      const v = Math.max(c, m) * 100;
      load[t] = v;
      sum += v;
      if (v > peak) peak = v;
      if (v > 100 + 1e-7) {
        n++;
        anyOver[t] = 1;
      }
    }
    over += n;
    return {
      name: h.name,
      intervalsOver100: n,
      p95LoadPercent: percentileOf(load, 95),
      peakLoadPercent: peak,
      meanLoadPercent: T > 0 ? sum / T : 0,
      loadPercent: load,
    };
  });
  const hostIntervals = hosts.length * T;
  return {
    samples: T,
    hostIntervals,
    hostIntervalsOver100: over,
    overloadFraction: hostIntervals > 0 ? over / hostIntervals : 0,
    anyHostOverFraction: T > 0 ? anyOver.reduce((s, v) => s + v, 0) / T : 0,
    headroomPercent:
      replayed.length > 0 ? 100 - replayed.reduce((s, h) => s + h.p95LoadPercent, 0) / replayed.length : 100,
    hosts: replayed,
  };
}

/** A plan's headroom in each period of an inventory, a week when it spans two or more, else a day. */
export interface PeriodHeadroom {
  periodDays: number;
  headroomPercent: number[];
  minPercent: number;
  maxPercent: number;
}

/**
 * The plan's headroom period by period over the planning inventory: how much it moved from one
 * week (or day) to the next is what a prediction from that inventory can say about its own spread.
 * Undefined when the inventory is shorter than two days.
 */
export function headroomByPeriod(
  hosts: PlannedHost[],
  inv: Inventory,
  size: HostSize,
): PeriodHeadroom | undefined {
  const perDay = Math.round(86_400 / inv.intervalSeconds);
  const days = Math.floor(inv.samples / perDay);
  if (days < 2) return undefined;
  const periodDays = days >= 14 ? 7 : 1;
  const per = periodDays * perDay;
  const headroomPercent: number[] = [];
  for (let from = 0; from + per <= inv.samples; from += per) {
    headroomPercent.push(replayPlan(hosts, sliceInventory(inv, from, from + per), size).headroomPercent);
  }
  return {
    periodDays,
    headroomPercent,
    minPercent: Math.min(...headroomPercent),
    maxPercent: Math.max(...headroomPercent),
  };
}
