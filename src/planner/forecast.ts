import { invalidArgument } from '../core/errors.ts';
import type { Inventory } from './inventory.ts';

/**
 * The trend of an inventory's summed load, from the inventory alone (decision 0047): a straight
 * line fitted by least squares to the summed load of each day, CPU and memory apart, and what it
 * says about a later period. It is what a plan for a later month can know of growth without that month.
 */
export interface LoadTrend {
  days: number;
  /** The line's change over a week, as a fraction of the period's mean (0.05: +5% a week). */
  cpuWeeklyGrowth: number;
  memoryWeeklyGrowth?: number;
  /**
   * The line's value at the middle of the `aheadDays` that follow the inventory, divided by the
   * period's mean: the larger over CPU and memory, never below 1 (a falling trend is not a reason
   * to plan for less than was measured).
   */
  factor: number;
  /** The same before the floor at 1. */
  rawFactor: number;
}

/** The mean of each whole day of a series summed over workloads. */
function dailyMeans(inv: Inventory, pick: (w: Inventory['workloads'][number]) => Float64Array | undefined) {
  const perDay = Math.round(86_400 / inv.intervalSeconds);
  const days = Math.floor(inv.samples / perDay);
  const means = new Float64Array(days);
  for (const w of inv.workloads) {
    const s = pick(w);
    if (!s) continue;
    for (let d = 0; d < days; d++) {
      let sum = 0;
      for (let t = d * perDay; t < (d + 1) * perDay; t++) sum += s[t] as number;
      means[d] = (means[d] as number) + sum / perDay;
    }
  }
  return means;
}

/** Least squares: the line's value at day x, relative to the mean, and its slope (per day, relative). */
function fit(y: Float64Array): { mean: number; slope: number } {
  const n = y.length;
  const mx = (n - 1) / 2;
  const my = y.reduce((s, v) => s + v, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let x = 0; x < n; x++) {
    sxy += (x - mx) * ((y[x] as number) - my);
    sxx += (x - mx) ** 2;
  }
  return { mean: my, slope: my > 0 && sxx > 0 ? sxy / sxx / my : 0 };
}

/**
 * The trend of `inv` and its factor for the `aheadDays` days that follow it (for example 31:
 * July's trend carried over August). Needs at least a week of whole days.
 */
export function loadTrend(inv: Inventory, options: { aheadDays: number }): LoadTrend {
  const cpu = dailyMeans(inv, (w) => w.cpu);
  const days = cpu.length;
  if (days < 7) {
    throw invalidArgument(`A trend needs at least 7 whole days of samples; the inventory has ${days}`);
  }
  if (!(options.aheadDays > 0))
    throw invalidArgument(`The days ahead (${options.aheadDays}) must be positive`);
  // From the period's middle to the middle of the days ahead.
  const distance = (days - 1) / 2 + 0.5 + options.aheadDays / 2;
  const c = fit(cpu);
  let rawFactor = 1 + c.slope * distance;
  const withMemory = inv.workloads.every((w) => w.memoryBytes);
  let memoryWeeklyGrowth: number | undefined;
  if (withMemory) {
    const m = fit(dailyMeans(inv, (w) => w.memoryBytes));
    memoryWeeklyGrowth = 7 * m.slope;
    rawFactor = Math.max(rawFactor, 1 + m.slope * distance);
  }
  const trend: LoadTrend = {
    days,
    cpuWeeklyGrowth: 7 * c.slope,
    factor: Math.max(1, rawFactor),
    rawFactor,
  };
  if (memoryWeeklyGrowth !== undefined) trend.memoryWeeklyGrowth = memoryWeeklyGrowth;
  return trend;
}

/** Every workload's load multiplied by `factor` (CPU and memory): the inventory as the trend expects it. */
export function scaleInventory(inv: Inventory, factor: number): Inventory {
  if (!(factor > 0 && Number.isFinite(factor)))
    throw invalidArgument(`The factor ${factor} must be positive`);
  if (factor === 1) return inv;
  return {
    ...inv,
    workloads: inv.workloads.map((w) => {
      const { memoryBytes, ...rest } = w;
      const cpu = w.cpu.map((v) => v * factor);
      return memoryBytes
        ? { ...rest, cpu, memoryBytes: memoryBytes.map((v) => v * factor) }
        : { ...rest, cpu };
    }),
  };
}
