import { lowerBound, type Plan, planConsolidation } from './consolidate.ts';
import { type LoadTrend, loadTrend, scaleInventory } from './forecast.ts';
import type { HostSize, Inventory } from './inventory.ts';
import { loadSvg } from './load-svg.ts';
import { headroomByPeriod, type PeriodHeadroom, type Replay, replayPlan } from './replay.ts';

/** How to plan and what to replay the plan on (the CLI's `plan consolidate` options as values). */
export interface PlanReportOptions {
  hostSize: HostSize;
  /** The host size as the user wrote it (`cpu=32,memory=256GiB`), for the picture's title. */
  hostSizeText: string;
  percentile: number;
  seed: number;
  /**
   * Plan for this many days after the inventory's period: its load scaled by its own trend over
   * them (`loadTrend`, decision 0047; never below what was measured). Needs a week of samples.
   */
  forecastDays?: number;
  /** Another period of the same workloads to replay the plan on (plan July, replay August). */
  replay?: { inventory: Inventory; label: string };
}

/** A replay's figures without its per-host series. */
export interface ReplaySummary {
  samples: number;
  hostIntervals: number;
  hostIntervalsOver100: number;
  overloadFraction: number;
  anyHostOverFraction: number;
  headroomPercent: number;
}

/**
 * What `trivisor plan consolidate --format json` prints and `POST /1.0/plans/consolidate`
 * answers (beside its SVG): one shape for both, so that a plan reads the same wherever it was made.
 */
export interface PlanReportJson {
  hostSize: HostSize;
  cpuUnit: Inventory['cpuUnit'];
  inventory: { format: Inventory['format']; workloads: number; samples: number; intervalSeconds: number };
  method: string;
  hosts: Array<{
    name: string;
    workloads: string[];
    p95LoadPercent: number;
    peakLoadPercent: number;
    intervalsOver100: number;
  }>;
  lowerBound: number;
  /**
   * The trend the plan was scaled by (`forecastDays`), and the lower bound of the inventory as
   * measured: what the forecast changed, without planning twice.
   */
  forecast?: LoadTrend & { aheadDays: number; measuredLowerBound: number };
  predicted: ReplaySummary & { basis: string; periodDays?: number; headroomPercentByPeriod?: number[] };
  replay: ReplaySummary;
}

/** A plan with its replays, as the CLI's table and JSON and the API's answer are made of. */
export interface PlanReport {
  plan: Plan;
  /**
   * The planning inventory replayed on the plan. The inventory itself is not kept: a report holds
   * only its plan and replays (per-host series), so that a month can be dropped before the next is
   * read (`replayReport`).
   */
  predicted: Replay;
  /** The `replay` option's inventory replayed on the plan, else the same as `predicted`. */
  replay: Replay;
  /** The plan's headroom week by week (day by day) of the planning inventory, when it spans two days. */
  spread: PeriodHeadroom | undefined;
  json: PlanReportJson;
  /** Each host's load over time: the replay's (the `replay` inventory's when given). */
  svg: string;
  /** The host size as the user wrote it, for the picture's title when the plan is replayed later. */
  hostSizeText: string;
}

const summary = (r: Replay): ReplaySummary => ({
  samples: r.samples,
  hostIntervals: r.hostIntervals,
  hostIntervalsOver100: r.hostIntervalsOver100,
  overloadFraction: r.overloadFraction,
  anyHostOverFraction: r.anyHostOverFraction,
  headroomPercent: r.headroomPercent,
});

/**
 * Plans an inventory and replays it: everything `plan consolidate` shows, in one call (pure, CPU-bound).
 * With `replay`, both periods are held at once; `replayReport` on a report made without it lets the
 * caller drop the planning inventory before reading the other period.
 */
export function planReport(measured: Inventory, options: PlanReportOptions): PlanReport {
  const { hostSize, forecastDays } = options;
  // With a forecast, the planning inventory is the measured one as its trend expects it later.
  const trend = forecastDays === undefined ? undefined : loadTrend(measured, { aheadDays: forecastDays });
  const inv = trend ? scaleInventory(measured, trend.factor) : measured;
  const plan = planConsolidation(inv, { hostSize, percentile: options.percentile, seed: options.seed });
  const predicted = replayPlan(plan.hosts, inv, hostSize);
  // What the prediction rests on: the planning period itself, and how far its weeks (or days) spread.
  const spread = headroomByPeriod(plan.hosts, inv, hostSize);
  const json: PlanReportJson = {
    hostSize,
    cpuUnit: inv.cpuUnit,
    inventory: {
      format: inv.format,
      workloads: inv.workloads.length,
      samples: inv.samples,
      intervalSeconds: inv.intervalSeconds,
    },
    method: plan.method,
    hosts: hostsJson(plan, predicted),
    lowerBound: plan.lowerBound,
    ...(trend &&
      forecastDays !== undefined && {
        forecast: { ...trend, aheadDays: forecastDays, measuredLowerBound: lowerBound(measured, hostSize) },
      }),
    predicted: {
      ...summary(predicted),
      basis: trend
        ? `the planning inventory scaled by its trend over the ${forecastDays} days after it (×${trend.factor.toFixed(3)}) and replayed on the plan`
        : 'the planning inventory replayed on the plan',
      ...(spread ? { periodDays: spread.periodDays, headroomPercentByPeriod: spread.headroomPercent } : {}),
    },
    replay: summary(predicted),
  };
  const report: PlanReport = {
    plan,
    predicted,
    replay: predicted,
    spread,
    json,
    svg: loadSvg(predicted.hosts, { title: svgTitle(plan, options.hostSizeText) }),
    hostSizeText: options.hostSizeText,
  };
  return options.replay ? replayReport(report, options.replay) : report;
}

/**
 * The report's plan replayed on another period of the same workloads (by workload id): its
 * `replay`, the JSON's hosts and replay, and the picture become that period's. It needs only the
 * plan, not the inventory it was made from (plan July, drop it, read August, replay).
 */
export function replayReport(
  report: PlanReport,
  replay: { inventory: Inventory; label: string },
): PlanReport {
  const { plan } = report;
  const replayed = replayPlan(plan.hosts, replay.inventory, plan.hostSize);
  return {
    ...report,
    replay: replayed,
    json: { ...report.json, hosts: hostsJson(plan, replayed), replay: summary(replayed) },
    svg: loadSvg(replayed.hosts, { title: `${svgTitle(plan, report.hostSizeText)} (${replay.label})` }),
  };
}

const svgTitle = (plan: Plan, hostSizeText: string) =>
  `${plan.hosts.length} hosts of ${hostSizeText}: load over time`;

const hostsJson = (plan: Plan, replay: Replay): PlanReportJson['hosts'] =>
  plan.hosts.map((h, i) => ({
    name: h.name,
    workloads: h.workloads,
    p95LoadPercent: replay.hosts[i]?.p95LoadPercent ?? 0,
    peakLoadPercent: replay.hosts[i]?.peakLoadPercent ?? 0,
    intervalsOver100: replay.hosts[i]?.intervalsOver100 ?? 0,
  }));
