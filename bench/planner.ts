// Benchmark (issue 14 §4, decision 0047): the consolidation planner against first-fit decreasing
// in the same run, on the real traces of ../shared/traces (read from there, never copied):
// - PlanetLab 20110303, planned and replayed on the same day, hosts of 2 × 2660 MIPS;
// - Bitbrains Rnd, planned from July and replayed on August, hosts of cpu=32,memory=256GiB (the example).
// Baselines: FFD on each VM's own peak, FFD on each VM's own 95th percentile.
// Plan times are wall seconds (planSeconds) and this process's CPU seconds (planCpuSeconds): on a loaded
// machine the first says how much CPU it got, the second what the planner took.
// Usage: node bench/planner.ts [planetlab-day=20110303] [traces-dir=../shared/traces] [--slice N]
//   --slice N (npm run bench -- --quick): the first N VMs of each trace, copied into a temporary
//   directory removed at exit, so that a quick run shows the whole benchmark still runs in seconds.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  firstFitDecreasing,
  type Plan,
  percentileOf,
  planConsolidation,
} from '../src/planner/consolidate.ts';
import { loadTrend, scaleInventory } from '../src/planner/forecast.ts';
import { type HostSize, type Inventory, releaseInventory, sliceInventory } from '../src/planner/inventory.ts';
import { forEachLine, readInventory } from '../src/planner/inventory-readers.ts';
import { type PlanReport, planReport, replayReport } from '../src/planner/plan-report.ts';
import { type Replay, replayPlan } from '../src/planner/replay.ts';
import { writeResult } from './lib.ts';

const args = process.argv.slice(2);
const sliceAt = args.indexOf('--slice');
const slice = sliceAt >= 0 ? Number(args.splice(sliceAt, 2)[1]) : undefined;
if (slice !== undefined && !(Number.isInteger(slice) && slice > 0)) {
  console.error('bench/planner.ts: --slice takes a whole number of VMs above 0');
  process.exit(2);
}
const day = args[0] ?? '20110303';
const sharedTraces = path.resolve(args[1] ?? path.join(import.meta.dirname, '../../shared/traces'));
const TRACE_FILES = [
  path.join('planetlab', `${day}.csv.gz`),
  'bitbrains-rnd/2013-7.csv.gz',
  'bitbrains-rnd/2013-8.csv.gz',
];
// The traces live outside the repository: without them the benchmark fails in one line, never skips.
for (const f of TRACE_FILES) {
  if (!existsSync(path.join(sharedTraces, f))) {
    console.error(
      `bench/planner.ts: ${path.join(sharedTraces, f)} is missing: the planner benchmark needs the traces directory ${sharedTraces} (../shared/traces, see its README.md)`,
    );
    process.exit(1);
  }
}

/** The first `n` VMs of a trace (its rows of one VM are contiguous, PlanetLab's one row each), gzip'd into `to`. */
async function sliceTrace(from: string, to: string, n: number): Promise<void> {
  const kept: string[] = [];
  const ids = new Set<string>();
  const enough = new Error('enough');
  await forEachLine(from, (line, no) => {
    const id = line.slice(0, line.indexOf(','));
    if (no > 1 && !ids.has(id)) {
      if (ids.size === n) throw enough;
      ids.add(id);
    }
    kept.push(line);
  }).catch((e: unknown) => {
    if (e !== enough) throw e;
  });
  mkdirSync(path.dirname(to), { recursive: true });
  writeFileSync(to, gzipSync(`${kept.join('\n')}\n`));
}

let traces = sharedTraces;
if (slice !== undefined) {
  traces = mkdtempSync(path.join(os.tmpdir(), 'trivisor-planner-slice-'));
  const dir = traces;
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  for (const f of TRACE_FILES) await sliceTrace(path.join(sharedTraces, f), path.join(traces, f), slice);
}
const GIB = 1024 ** 3;
const MIB = 1024 ** 2;
/** RSS now and the process's peak so far, after each step: the peak only grows, so a step's own peak shows where it rises. */
const memorySteps: Array<{ step: string; rssMiB: number; arrayBuffersMiB: number; peakRssMiB: number }> = [];
const memoryStep = (step: string) => {
  memorySteps.push({
    step,
    rssMiB: Math.round(process.memoryUsage.rss() / MIB),
    arrayBuffersMiB: Math.round(process.memoryUsage().arrayBuffers / MIB),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  });
  console.log(JSON.stringify(memorySteps.at(-1)));
};
memoryStep(slice === undefined ? 'start' : 'start, the slices made');

const seconds = (t0: number) => Math.round((performance.now() - t0) / 10) / 100;
/**
 * CPU seconds of this process since `c0` (user + system, all its threads): beside a wall time, what
 * the algorithm took rather than what a loaded machine gave it (decision 0047, amended 2026-12-07).
 */
const cpuSeconds = (c0: NodeJS.CpuUsage) => {
  const u = process.cpuUsage(c0);
  return Math.round((u.user + u.system) / 1e4) / 100;
};
const round = (v: number, digits = 4) => Math.round(v * 10 ** digits) / 10 ** digits;

function figures(plan: Plan, replay: Replay, extra: Record<string, unknown> = {}) {
  return {
    method: plan.method,
    hosts: plan.hosts.length,
    hostIntervalsOver100: replay.hostIntervalsOver100,
    overloadFraction: round(replay.overloadFraction, 5),
    anyHostOverFraction: round(replay.anyHostOverFraction, 4),
    headroomPercent: round(replay.headroomPercent, 2),
    ...extra,
  };
}

function baselines(inv: Inventory, size: HostSize, replayOn: Inventory) {
  const peak = firstFitDecreasing(inv, { hostSize: size, sizing: 'peak' });
  const p95 = firstFitDecreasing(inv, { hostSize: size, sizing: 95 });
  return {
    peak,
    p95,
    ffdPeak: figures(peak, replayPlan(peak.hosts, replayOn, size)),
    ffdP95: figures(p95, replayPlan(p95.hosts, replayOn, size)),
  };
}

// PlanetLab: CPU only, the day is planned and replayed.
const planetLabFile = path.join(traces, 'planetlab', `${day}.csv.gz`);
if (!existsSync(planetLabFile))
  throw new Error(`${planetLabFile} is missing: see ../shared/traces/README.md`);
const plSize: HostSize = { cpu: 2 * 2660 };
let t0 = performance.now();
const pl = await readInventory(planetLabFile);
const plRead = seconds(t0);
t0 = performance.now();
const plCpu0 = process.cpuUsage();
const plPlan = planConsolidation(pl, { hostSize: plSize, percentile: 99, seed: 1 });
const plPlanSeconds = seconds(t0);
const plPlanCpuSeconds = cpuSeconds(plCpu0);
const plReplay = replayPlan(plPlan.hosts, pl, plSize);
const plBase = baselines(pl, plSize, pl);
const planetLab = {
  file: planetLabFile,
  vms: pl.workloads.length,
  samples: pl.samples,
  hostSize: 'cpu=5320',
  lowerBound: plPlan.lowerBound,
  readSeconds: plRead,
  trivisor: figures(plPlan, plReplay, { planSeconds: plPlanSeconds, planCpuSeconds: plPlanCpuSeconds }),
  ffdPeak: plBase.ffdPeak,
  ffdP95: plBase.ffdP95,
  ratioToLowerBound: round(plPlan.hosts.length / plPlan.lowerBound, 3),
  ratioToFfdPeak: round(plPlan.hosts.length / plBase.peak.hosts.length, 3),
};
console.log(JSON.stringify(planetLab, null, 2));

// Bitbrains Rnd: planned from July, replayed on August. The planner's percentile is set from July
// alone: FFD-on-p95's own overload on July's last week when both are planned on its first three, so
// that both plans are held to the same overload on a period they were not made from.
// One month in memory at a time (issue 14 §4: ≤ 512 MiB): everything July is needed for is
// planned and measured first, July is dropped, then August is read and every plan replayed on it
// by workload id (`replayReport`, as `plan consolidate --replay` does).
const bbSize: HostSize = { cpu: 32, memoryBytes: 256 * GIB };
memoryStep('PlanetLab read, planned and replayed');
t0 = performance.now();
let july: Inventory | undefined = await readInventory(path.join(traces, 'bitbrains-rnd', '2013-7.csv.gz'));
const julyRead = seconds(t0);
const julySummary = { vms: july.workloads.length, samples: july.samples };
memoryStep('July read');
// Growth from July's own trend, carried over the 31 days of August, applied as the CLI and the API
// apply it: through planReport's forecastDays (src/planner/plan-report.ts), which scales July by the
// trend when it rises and plans on July as measured when it falls. The baselines are made on the
// same scaled inventory, so that every plan is made for the same load. The trend's own hold-out
// inside July: fitted on its first half (days 1-15), its factor for the rest against what the rest
// was (summed CPU, relative to the first half).
const forecastDays = 31;
const julyTrend = loadTrend(july, { aheadDays: forecastDays });
const report = (inv: Inventory, p: number): PlanReport =>
  planReport(inv, {
    hostSize: bbSize,
    hostSizeText: 'cpu=32,memory=256GiB',
    percentile: p,
    seed: 1,
    forecastDays,
  });
// July's first half of whole days, and the rest (a --slice's month may be a sample short of 30 days).
const perDay = Math.round(86_400 / july.intervalSeconds);
const half = Math.floor(july.samples / 2 / perDay) * perDay;
const summedCpu = (inv: Inventory) => {
  let s = 0;
  for (const w of inv.workloads) for (const v of w.cpu) s += v;
  return s / inv.samples;
};
const firstHalfTrend = loadTrend(sliceInventory(july, 0, half), {
  aheadDays: (july.samples - half) / perDay,
});
const trendHoldOut = {
  fittedOnDays: half / perDay,
  cpuWeeklyGrowth: round(firstHalfTrend.cpuWeeklyGrowth, 4),
  forecastFactor: round(firstHalfTrend.rawFactor, 3),
  actualCpuRatio: round(
    summedCpu(sliceInventory(july, half, july.samples)) / summedCpu(sliceInventory(july, 0, half)),
    3,
  ),
};
/**
 * The summed load of a month week by week (the last, shorter part too when a day or more): mean and
 * 95th percentile of the summed CPU in cores, mean summed memory in GiB. What a month itself says
 * about growth; August's is printed beside July's for the report only, never used in a choice.
 */
function weeklyLoad(inv: Inventory) {
  const per = 7 * Math.round(86_400 / inv.intervalSeconds);
  const sum = new Float64Array(inv.samples);
  for (const w of inv.workloads) {
    for (let t = 0; t < inv.samples; t++) sum[t] = (sum[t] as number) + (w.cpu[t] as number);
  }
  const weeks: Array<{ week: number; cpuMeanCores: number; cpuP95Cores: number; memoryMeanGiB: number }> = [];
  for (let from = 0, k = 1; inv.samples - from >= per / 7; from += per, k++) {
    const to = Math.min(inv.samples, from + per);
    const part = sum.subarray(from, to);
    let mem = 0;
    for (const w of inv.workloads) for (let t = from; t < to; t++) mem += w.memoryBytes?.[t] ?? 0;
    weeks.push({
      week: k,
      cpuMeanCores: round(part.reduce((s, v) => s + v, 0) / part.length, 1),
      cpuP95Cores: round(percentileOf(part, 95), 1),
      memoryMeanGiB: round(mem / part.length / GIB, 1),
    });
  }
  return weeks;
}
const julyWeeks = weeklyLoad(july);
// The sizing percentile is chosen on July alone (below: out of sample, on July's last week; the
// in-sample rule, each plan's own overload on July as forecast against FFD-on-p95's on July, is
// reported beside it). Every percentile tried is kept with its August replay too:
// hosts against overload, a curve to read the baselines' points against; the choice itself never
// looks at August. planSeconds is planReport's whole call (the scaling, the plan, its replay on
// July and the picture), not the packing alone; the August replay comes after, timed apart.
const PERCENTILES = [100, 99.9, 99.8, 99.5, 99, 98];
const reports: Array<{
  percentile: number;
  report: PlanReport;
  planSeconds: number;
  planCpuSeconds: number;
}> = [];
for (const p of PERCENTILES) {
  t0 = performance.now();
  const c0 = process.cpuUsage();
  const r = report(july, p);
  reports.push({ percentile: p, report: r, planSeconds: seconds(t0), planCpuSeconds: cpuSeconds(c0) });
  const last = reports.at(-1);
  console.log(
    JSON.stringify({
      percentile: p,
      hosts: r.plan.hosts.length,
      planSeconds: last?.planSeconds,
      planCpuSeconds: last?.planCpuSeconds,
    }),
  );
}
memoryStep(`July planned at ${PERCENTILES.length} percentiles`);
// The baselines, on the inventory the plans were made for (the trend's factor is the same for every
// percentile: July as measured when the trend falls).
let plannedJuly: Inventory | undefined = scaleInventory(july, julyTrend.factor);
const bbBase = {
  peak: firstFitDecreasing(plannedJuly, { hostSize: bbSize, sizing: 'peak' }),
  p95: firstFitDecreasing(plannedJuly, { hostSize: bbSize, sizing: 95 }),
};
const ffdP95July = replayPlan(bbBase.p95.hosts, plannedJuly, bbSize);
const ffdPeakJuly = replayPlan(bbBase.peak.hosts, plannedJuly, bbSize);
// In-sample, for the report: the fewest hosts among the plans whose own overload on July is no
// more than FFD-on-p95's on July (each judged on the month it was made from).
let inSample: (typeof reports)[number] | undefined;
for (const r of reports) {
  if (
    r.report.predicted.overloadFraction <= ffdP95July.overloadFraction &&
    (!inSample || r.report.plan.hosts.length < inSample.report.plan.hosts.length)
  ) {
    inSample = r;
  }
}
// The choice, out of sample but on July alone (decision 0086, amended): every percentile and
// FFD-on-p95 planned on July's first three weeks and replayed on its last week; the percentile is
// the fewest-hosts one whose overload on that week is no more than FFD-on-p95's there (then the
// highest percentile). Both plans meet a period they were not made from, as on August.
const cut = july.samples - 7 * 288;
const firstWeeks = sliceInventory(july, 0, cut);
const lastWeek = sliceInventory(july, cut, july.samples);
const ffdP95HoldOut = replayPlan(
  firstFitDecreasing(firstWeeks, { hostSize: bbSize, sizing: 95 }).hosts,
  lastWeek,
  bbSize,
);
const holdOutTried = PERCENTILES.map((p) => {
  const c0 = process.cpuUsage();
  const plan = planConsolidation(firstWeeks, { hostSize: bbSize, percentile: p, seed: 1 });
  const planCpuSeconds = cpuSeconds(c0);
  const r = replayPlan(plan.hosts, lastWeek, bbSize);
  const row = {
    percentile: p,
    hosts: plan.hosts.length,
    lastWeekOverloadFraction: round(r.overloadFraction, 5),
    planCpuSeconds,
  };
  console.log(JSON.stringify({ holdOut: row }));
  return { ...row, within: r.overloadFraction <= ffdP95HoldOut.overloadFraction };
});
const holdOutChoice = holdOutTried
  .filter((t) => t.within)
  .sort((a, b) => a.hosts - b.hosts || b.percentile - a.percentile)[0];
const best = reports.find((r) => r.percentile === holdOutChoice?.percentile) ?? inSample;
if (!best) throw new Error("no plan within FFD-on-p95's overload, on July's last week or on July");
const percentile = best.percentile;
const percentileChoice = {
  by: holdOutChoice ? 'hold-out' : 'in-sample',
  inSamplePercentile: inSample?.percentile ?? null,
  ffdP95HoldOut: {
    hosts: ffdP95HoldOut.hosts.length,
    lastWeekOverloadFraction: round(ffdP95HoldOut.overloadFraction, 5),
  },
  tried: holdOutTried,
};
// What July alone says about the spread of the prediction: the plan's headroom week by week (the
// report's), and a hold-out (the same method planned on July's first three weeks, replayed on its
// last week), the calibration one could make without August.
const holdOutPlan = planConsolidation(firstWeeks, { hostSize: bbSize, percentile, seed: 1 });
const holdOut = {
  hosts: holdOutPlan.hosts.length,
  predictedHeadroomPercent: round(replayPlan(holdOutPlan.hosts, firstWeeks, bbSize).headroomPercent, 2),
  replayedHeadroomPercent: round(replayPlan(holdOutPlan.hosts, lastWeek, bbSize).headroomPercent, 2),
};
memoryStep('July baselines and hold-outs');
// July is not needed any more: the reports and plans keep workload ids and per-host series only.
// Its series are given back now (releaseInventory), not when the GC comes round.
if (plannedJuly !== july) releaseInventory(plannedJuly);
releaseInventory(july);
july = undefined;
plannedJuly = undefined;
t0 = performance.now();
const august = await readInventory(path.join(traces, 'bitbrains-rnd', '2013-8.csv.gz'));
const augustRead = seconds(t0);
memoryStep('July dropped, August read');
t0 = performance.now();
const tried = reports.map((r) => {
  const replayed = replayReport(r.report, { inventory: august, label: 'August' });
  return {
    percentile: r.percentile,
    hosts: r.report.plan.hosts.length,
    julyOverloadFraction: round(r.report.predicted.overloadFraction, 5),
    augustOverloadFraction: round(replayed.replay.overloadFraction, 5),
    planSeconds: r.planSeconds,
    planCpuSeconds: r.planCpuSeconds,
    replayed,
  };
});
const ffdPeakAugust = replayPlan(bbBase.peak.hosts, august, bbSize);
const ffdP95August = replayPlan(bbBase.p95.hosts, august, bbSize);
const augustReplaySeconds = seconds(t0);
const augustWeeks = weeklyLoad(august);
memoryStep('August replayed');
for (const t of tried) {
  const { replayed: _, ...figures } = t;
  console.log(JSON.stringify(figures));
}
// The same curve read the other way, at equal replayed overload (the "at equal overload"):
// the fewest hosts among the plans tried whose August overload is no more than FFD-on-p95's. Read
// from the August replay, so it is a point of the curve, not a plan the planner could choose from
// July alone; the choice above stays July's.
const fp95August = ffdP95August.overloadFraction;
const atEqualAugust = tried
  .filter((t) => t.augustOverloadFraction <= fp95August)
  .sort((a, b) => a.hosts - b.hosts || a.augustOverloadFraction - b.augustOverloadFraction)[0];
const chosen = tried.find((t) => t.percentile === percentile);
if (!chosen) throw new Error('the chosen percentile was not replayed');
const { plan: bbPlan, predicted: bbPredicted, spread: weeks } = best.report;
const bbReplay = chosen.replayed.replay;
const trend = best.report.json.forecast;
if (!trend) throw new Error('planReport answered without the forecast it was asked for');
const bitbrains = {
  vms: julySummary.vms,
  samplesJuly: julySummary.samples,
  samplesAugust: august.samples,
  hostSize: 'cpu=32,memory=256GiB',
  lowerBoundJuly: bbPlan.lowerBound,
  readSeconds: round(julyRead + augustRead, 2),
  augustReplaySeconds,
  percentile,
  percentileChoice,
  percentilesTried: tried.map(({ replayed: _, ...t }) => t),
  trivisor: figures(bbPlan, bbReplay, {
    planSeconds: best.planSeconds,
    planCpuSeconds: best.planCpuSeconds,
    predictedHeadroomPercent: round(bbPredicted.headroomPercent, 2),
    predictedOverloadFraction: round(bbPredicted.overloadFraction, 5),
    predictedHeadroomWeeksPercent: weeks?.headroomPercent.map((v) => round(v, 2)),
    predictedHeadroomRangePercent: weeks
      ? [round(weeks.minPercent, 2), round(weeks.maxPercent, 2)]
      : undefined,
  }),
  trend: {
    cpuWeeklyGrowth: round(trend.cpuWeeklyGrowth, 4),
    memoryWeeklyGrowth: round(trend.memoryWeeklyGrowth ?? 0, 4),
    rawFactor: round(trend.rawFactor, 3),
    factor: round(trend.factor, 3),
  },
  trendHoldOut,
  holdOut,
  julyWeeks,
  augustWeeksForReportOnly: augustWeeks,
  ffdPeak: {
    ...figures(bbBase.peak, ffdPeakAugust),
    predictedOverloadFraction: round(ffdPeakJuly.overloadFraction, 5),
  },
  ffdP95: {
    ...figures(bbBase.p95, ffdP95August),
    predictedHeadroomPercent: round(ffdP95July.headroomPercent, 2),
    predictedOverloadFraction: round(ffdP95July.overloadFraction, 5),
  },
  fewerHostsThanFfdP95: round(1 - bbPlan.hosts.length / bbBase.p95.hosts.length, 3),
  headroomGapPoints: round(Math.abs(bbPredicted.headroomPercent - bbReplay.headroomPercent), 2),
  atFfdP95AugustOverload: atEqualAugust
    ? {
        percentile: atEqualAugust.percentile,
        hosts: atEqualAugust.hosts,
        julyOverloadFraction: atEqualAugust.julyOverloadFraction,
        augustOverloadFraction: atEqualAugust.augustOverloadFraction,
        fewerHostsThanFfdP95: round(1 - atEqualAugust.hosts / bbBase.p95.hosts.length, 3),
      }
    : null,
};
console.log(JSON.stringify(bitbrains, null, 2));
memoryStep('end');

const result = {
  ...(slice === undefined ? {} : { sliceVms: slice }),
  planetLab,
  bitbrains,
  targets: {
    planetLabRatioToLowerBound: 1.05,
    planetLabRatioToFfdPeak: 0.6,
    planetLabOverloadFraction: 0.01,
    bitbrainsFewerHostsThanFfdP95: 0.08,
    bitbrainsHeadroomGapPoints: 5,
    planetLabPlanSeconds: 10,
    bitbrainsPlanSeconds: 30,
    peakRssMiB: 512,
  },
  memorySteps,
  peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
};
console.log(`wrote ${writeResult('planner', result)}`);
