// Benchmark (issue 14 §6, decision 0051): the self-managing cluster's policies (src/autonomic/:
// the power manager and the rebalancer, as `autonomicPolicy()` with its defaults) against
// in-repo reimplementations of VMware DPM (45–81%, 5/40-minute windows), Beloglazov & Buyya's
// LR-MMT (safety 1.2) and Incus's rebalancer rule, all on the same simulator and traces of
// ../shared/traces (read from there, never copied):
// - PlanetLab, all 10 days, one day at a time: hosts of 2 × 2660 MIPS, CloudSim's VM sizes;
// - Bitbrains Rnd, July and August 2013, one month at a time: hosts of cpu=32,memory=512GiB
//   (the trace's largest VM is configured with 511 GiB: a smaller host could not hold it by limits);
// - at scale: the 10 PlanetLab days side by side as one cluster (thousands of members), Trivisor only.
// Every run starts from the same cluster: members of the host size, as many as first-fit
// decreasing on the guests' configured limits needs, all on.
// Metrics: host-hours (members on or booting), SLATAH (the share of active host intervals at
// 100% of CPU or memory), migrations.
// Usage: node bench/autonomic.ts [traces-dir=../shared/traces] [parts=planetlab,frontier,bitbrains,scale]
//   (a part left out is not run: `… ../shared/traces bitbrains` replays only the Bitbrains months)
//   quick mode (TRIVISOR_BENCH_QUICK=1): synthetic clusters instead of the traces.
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { dpmBaseline, incusBaseline, lrMmtBaseline } from '../src/autonomic/baselines.ts';
import { autonomicPolicy, type ClusterPolicy } from '../src/autonomic/controller.ts';
import { type Scenario, type SimResult, simulate } from '../src/autonomic/simulator.ts';
import { syntheticScenario } from '../src/autonomic/synthetic.ts';
import { scenarioFromInventory, type TraceScenario } from '../src/autonomic/trace-scenario.ts';
import type { HostSize } from '../src/planner/inventory.ts';
import { readInventory } from '../src/planner/inventory-readers.ts';
import { QUICK, writeResult } from './lib.ts';

const traces = path.resolve(process.argv[2] ?? path.join(import.meta.dirname, '../../shared/traces'));
const PARTS = new Set((process.argv[3] ?? 'planetlab,frontier,bitbrains,scale').split(','));
for (const p of PARTS) {
  if (!['planetlab', 'frontier', 'bitbrains', 'scale'].includes(p)) {
    throw new Error(`Unknown part ${p}: use planetlab, frontier, bitbrains or scale, comma-separated`);
  }
}
const GIB = 1024 ** 3;
const round = (v: number, digits = 4) => Math.round(v * 10 ** digits) / 10 ** digits;

/** The figures of one policy on one scenario. */
interface Figures {
  hostHours: number;
  slatah: number;
  overloadedHostIntervals: number;
  activeHostIntervals: number;
  migrations: number;
  powerOffs: number;
  powerOns: number;
  abortedEvacuations: number;
  maxCyclesPerMemberPerDay: number;
  returnMoves: number;
  minMembersOn: number;
  maxMembersOn: number;
  seconds: number;
  /** Host-hours of each day (288 samples of 5 minutes), for the per-day tables. */
  hostHoursPerDay: number[];
}

const POLICIES = [
  'trivisor',
  'dpm',
  'lr-mmt',
  'incus',
  'trivisor-no-failure-room',
  'lr-mmt-failure-room',
  'trivisor-no-forecast',
] as const;

/**
 * Power-off from the last long window, not from a forecast of the coming one: the daemon's default
 * until decision 0051's amendment of 2026-12-07 made the forecast (its drop 10%) the default. Results
 * written before then have a `trivisor-forecast` row instead, the forecast beside the default.
 */
const NO_FORECAST = { powerOffForecast: false, burstEndsMinOn: false };
type PolicyName = (typeof POLICIES)[number];

function policies(ts: TraceScenario): Record<PolicyName, ClusterPolicy> {
  return {
    trivisor: autonomicPolicy(),
    dpm: dpmBaseline(),
    'lr-mmt': lrMmtBaseline(),
    incus: incusBaseline(ts.limits),
    // For reading the numbers only: what keeping room for a member's failure costs.
    'trivisor-no-failure-room': autonomicPolicy({ power: { keepFailureRoom: false } }),
    // A second LR-MMT row, beside the issue's own: the same policy keeping the room §3 asks of ours.
    'lr-mmt-failure-room': lrMmtBaseline({ keepFailureRoom: true }),
    // Trivisor as it was before the power-off forecast became its default.
    'trivisor-no-forecast': autonomicPolicy({ power: NO_FORECAST }),
  };
}

/** Host-hours of each day of a run, from the members on or booting at each sample. */
function perDay(powered: readonly number[], intervalMs: number): number[] {
  const perDaySamples = Math.round(86_400_000 / intervalMs);
  const out: number[] = [];
  powered.forEach((n, i) => {
    const d = Math.floor(i / perDaySamples);
    out[d] = (out[d] ?? 0) + (n * intervalMs) / 3_600_000;
  });
  return out.map((h) => round(h, 1));
}

function figures(r: SimResult, seconds: number, intervalMs: number): Figures {
  return {
    hostHours: round(r.hostHours, 1),
    slatah: round(r.slatah, 5),
    overloadedHostIntervals: r.overloadedHostIntervals,
    activeHostIntervals: r.activeHostIntervals,
    migrations: r.migrations,
    powerOffs: r.powerOffs,
    powerOns: r.powerOns,
    abortedEvacuations: r.abortedEvacuations,
    maxCyclesPerMemberPerDay: r.maxCyclesPerMemberPerDay,
    returnMoves: r.returnMoves,
    minMembersOn: r.minMembersOn,
    maxMembersOn: r.maxMembersOn,
    seconds: round(seconds, 2),
    hostHoursPerDay: perDay(r.membersPowered, intervalMs),
  };
}

function runAll(name: string, ts: TraceScenario) {
  const out = {} as Record<PolicyName, Figures>;
  for (const [p, policy] of Object.entries(policies(ts)) as Array<[PolicyName, ClusterPolicy]>) {
    const t0 = performance.now();
    const r = simulate(ts.scenario, policy);
    out[p] = figures(r, (performance.now() - t0) / 1000, ts.scenario.intervalMs);
    console.log(
      `${name} ${p}: ${out[p].hostHours} host-hours, SLATAH ${round(100 * out[p].slatah, 2)}%, ${out[p].migrations} migrations (${out[p].seconds} s)`,
    );
  }
  return {
    name,
    guests: ts.scenario.guests.length,
    members: ts.scenario.members.length,
    samples: ts.scenario.samples,
    policies: out,
  };
}

type Run = ReturnType<typeof runAll>;

/** Sums of several runs: host-hours and migrations add, SLATAH over all active intervals. */
function total(runs: Run[]): Record<PolicyName, Figures> {
  const out = {} as Record<PolicyName, Figures>;
  for (const p of POLICIES) {
    const xs = runs.map((r) => r.policies[p]);
    const sum = (k: Exclude<keyof Figures, 'hostHoursPerDay'>) => xs.reduce((a, x) => a + x[k], 0);
    out[p] = {
      hostHours: round(sum('hostHours'), 1),
      slatah: round(sum('overloadedHostIntervals') / Math.max(1, sum('activeHostIntervals')), 5),
      overloadedHostIntervals: sum('overloadedHostIntervals'),
      activeHostIntervals: sum('activeHostIntervals'),
      migrations: sum('migrations'),
      powerOffs: sum('powerOffs'),
      powerOns: sum('powerOns'),
      abortedEvacuations: sum('abortedEvacuations'),
      maxCyclesPerMemberPerDay: Math.max(...xs.map((x) => x.maxCyclesPerMemberPerDay)),
      returnMoves: sum('returnMoves'),
      minMembersOn: Math.min(...xs.map((x) => x.minMembersOn)),
      maxMembersOn: Math.max(...xs.map((x) => x.maxMembersOn)),
      seconds: round(sum('seconds'), 2),
      hostHoursPerDay: xs.flatMap((x) => x.hostHoursPerDay),
    };
  }
  return out;
}

/** The issue's goals, each met or not. */
function goals(t: Record<PolicyName, Figures>) {
  const us = t.trivisor;
  return {
    fewerHostHoursThanDpm: us.hostHours < t.dpm.hostHours,
    fewerHostHoursThanLrMmt: us.hostHours < t['lr-mmt'].hostHours,
    overloadNoWorseThanLrMmt: us.slatah <= t['lr-mmt'].slatah,
    atMostHalfLrMmtMigrations: us.migrations <= t['lr-mmt'].migrations / 2,
    hostHoursToDpm: round(us.hostHours / t.dpm.hostHours, 3),
    hostHoursToLrMmt: round(us.hostHours / t['lr-mmt'].hostHours, 3),
    migrationsToLrMmt: round(us.migrations / Math.max(1, t['lr-mmt'].migrations), 3),
    // Against the second LR-MMT row, which keeps the same room for one member's failure.
    fewerHostHoursThanLrMmtWithRoom: us.hostHours < t['lr-mmt-failure-room'].hostHours,
    overloadNoWorseThanLrMmtWithRoom: us.slatah <= t['lr-mmt-failure-room'].slatah,
    atMostHalfLrMmtWithRoomMigrations: us.migrations <= t['lr-mmt-failure-room'].migrations / 2,
    hostHoursToLrMmtWithRoom: round(us.hostHours / t['lr-mmt-failure-room'].hostHours, 3),
  };
}

/**
 * Where the host-hours go on one scenario (h5, decision 0051 amended), per day: the clairvoyant
 * floor (⌈the cluster's demand / a member⌉ at every sample, the larger of CPU and memory: what a
 * policy that knew the sample and moved at no cost would keep on), the floor plus one member for
 * the failure room, and Trivisor (its defaults) with the power-off forecast, and with one of its
 * limits lifted at a time: no failure room, no boot delay, no cycle limit, 5-minute windows and no
 * minimum on time. Each lifted limit is measured alone (they do not add up).
 */
function whereHoursGo(ts: TraceScenario) {
  const s = ts.scenario;
  const floor: number[] = [];
  for (let i = 0; i < s.samples; i++) {
    let cpu = 0;
    let mem = 0;
    for (const g of s.guests) {
      cpu += g.cpu[i] as number;
      mem += g.memoryBytes?.[i] ?? 0;
    }
    const m = s.members[0];
    const hosts = Math.max(cpu / (m?.cpuCapacity ?? 1), m?.memoryBytes ? mem / m.memoryBytes : 0);
    floor.push(Math.ceil(hosts - 1e-9));
  }
  const variants: Record<string, { scenario: Scenario; policy: ClusterPolicy }> = {
    'without the forecast': { scenario: s, policy: autonomicPolicy({ power: NO_FORECAST }) },
    'no failure room': { scenario: s, policy: autonomicPolicy({ power: { keepFailureRoom: false } }) },
    'no boot delay': {
      scenario: { ...s, members: s.members.map((m) => ({ ...m, bootDelayMs: 0 })) },
      policy: autonomicPolicy(),
    },
    'no cycle limit': { scenario: s, policy: autonomicPolicy({ power: { maxCyclesPerDay: 1_000_000 } }) },
    '5-minute windows, no minimum on time': {
      scenario: s,
      policy: autonomicPolicy({ power: { lowWindowMs: 300_000, highWindowMs: 300_000, minOnMs: 0 } }),
    },
  };
  const rows: Record<string, { hostHours: number; slatah: number; migrations: number; perDay: number[] }> = {
    floor: {
      hostHours: round(floor.reduce((a, b) => a + b, 0) * (s.intervalMs / 3_600_000), 1),
      slatah: 0,
      migrations: 0,
      perDay: perDay(floor, s.intervalMs),
    },
    'floor + failure room': {
      hostHours: round(floor.reduce((a, b) => a + b + 1, 0) * (s.intervalMs / 3_600_000), 1),
      slatah: 0,
      migrations: 0,
      perDay: perDay(
        floor.map((x) => x + 1),
        s.intervalMs,
      ),
    },
  };
  for (const [name, v] of Object.entries(variants)) {
    const r = simulate(v.scenario, v.policy);
    rows[name] = {
      hostHours: round(r.hostHours, 1),
      slatah: round(r.slatah, 5),
      migrations: r.migrations,
      perDay: perDay(r.membersPowered, s.intervalMs),
    };
    console.log(`  where: ${name}: ${rows[name].hostHours} host-hours, SLATAH ${round(100 * r.slatah, 2)}%`);
  }
  return rows;
}

const plSize: HostSize = { cpu: 2 * 2660 };
const bbSize: HostSize = { cpu: 32, memoryBytes: 512 * GIB };
const planetLab: Run[] = [];
const bitbrains: Run[] = [];
const bitbrainsWhere: Record<string, ReturnType<typeof whereHoursGo>> = {};
let scale: Record<string, unknown> | undefined;
const frontier: Array<{ ceiling: number; hostHours: number; slatah: number; migrations: number }> = [];
let source: string;

if (QUICK) {
  // The traces live outside the repository: quick mode shows that every policy still runs.
  source = 'synthetic (quick mode)';
  for (const seed of [1, 2]) {
    const ts = syntheticScenario({ members: 12, guests: 60, samples: 144, seed, meanLoad: 0.3 });
    planetLab.push(runAll(`synthetic-${seed}`, ts));
  }
  const ts = syntheticScenario({ members: 6, guests: 30, samples: 288, seed: 3, meanLoad: 0.4 });
  bitbrains.push(runAll('synthetic-month', ts));
  bitbrainsWhere['synthetic-month'] = whereHoursGo(ts);
} else {
  source = traces;
  const plDir = path.join(traces, 'planetlab');
  if (!existsSync(plDir)) throw new Error(`${plDir} is missing: see ../shared/traces/README.md`);
  const days = readdirSync(plDir)
    .filter((n) => n.endsWith('.csv.gz'))
    .sort();
  const all: TraceScenario[] = [];
  const perDay: TraceScenario[] = [];
  for (const file of PARTS.has('planetlab') || PARTS.has('frontier') || PARTS.has('scale') ? days : []) {
    const day = file.replace('.csv.gz', '');
    const inv = await readInventory(path.join(plDir, file));
    const ts = scenarioFromInventory(inv, { hostSize: plSize });
    if (PARTS.has('planetlab')) planetLab.push(runAll(`planetlab ${day}`, ts));
    perDay.push(ts);
    all.push(scenarioFromInventory(inv, { hostSize: plSize, prefix: `${day}-` }));
  }
  // Trivisor's one knob against overload, the ceiling, over the same days: its host-hours against
  // SLATAH, a curve to read the baselines' points against.
  for (const ceiling of PARTS.has('frontier') ? [0.95, 0.97, 0.985, 1] : []) {
    const policy = autonomicPolicy({ power: { ceiling }, rebalance: { ceiling } });
    const rs = perDay.map((ts) => simulate(ts.scenario, policy));
    const overloaded = rs.reduce((a, r) => a + r.overloadedHostIntervals, 0);
    const active = rs.reduce((a, r) => a + r.activeHostIntervals, 0);
    frontier.push({
      ceiling,
      hostHours: round(
        rs.reduce((a, r) => a + r.hostHours, 0),
        1,
      ),
      slatah: round(overloaded / Math.max(1, active), 5),
      migrations: rs.reduce((a, r) => a + r.migrations, 0),
    });
    console.log(`frontier ${JSON.stringify(frontier.at(-1))}`);
  }
  const bbDir = path.join(traces, 'bitbrains-rnd');
  for (const file of readdirSync(bbDir)
    .filter((n) => n.endsWith('.csv.gz') && PARTS.has('bitbrains'))
    .sort()) {
    const inv = await readInventory(path.join(bbDir, file));
    const name = `bitbrains ${file.replace('.csv.gz', '')}`;
    const ts = scenarioFromInventory(inv, { hostSize: bbSize });
    bitbrains.push(runAll(name, ts));
    bitbrainsWhere[name] = whereHoursGo(ts);
  }
  // At scale: the ten days side by side, one cluster; the same policy, unchanged.
  if (PARTS.has('scale')) {
    const samples = Math.min(...all.map((t) => t.scenario.samples));
    const big: Scenario = {
      intervalMs: all[0]?.scenario.intervalMs ?? 300_000,
      samples,
      members: all.flatMap((t) => t.scenario.members),
      guests: all.flatMap((t) => t.scenario.guests),
    };
    const t0 = performance.now();
    const r = simulate(big, autonomicPolicy());
    const seconds = (performance.now() - t0) / 1000;
    scale = {
      members: big.members.length,
      guests: big.guests.length,
      samples,
      ...figures(r, seconds, big.intervalMs),
      decideSecondsPerCycle: round(r.decideMs / 1000 / samples, 4),
    };
    console.log(`scale: ${JSON.stringify(scale)}`);
  }
}

const plTotal = total(planetLab);
const bbTotal = total(bitbrains);
const result = {
  source,
  hostSizes: { planetLab: 'cpu=5320 (MIPS)', bitbrains: 'cpu=32,memory=512GiB' },
  planetLab: { runs: planetLab, total: plTotal, goals: goals(plTotal), frontier },
  bitbrains: { runs: bitbrains, total: bbTotal, goals: goals(bbTotal), whereHoursGo: bitbrainsWhere },
  perRunGoals: [...planetLab, ...bitbrains].map((r) => ({ name: r.name, ...goals(r.policies) })),
  ...(scale ? { scale } : {}),
  peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
};
console.log(
  JSON.stringify({ planetLab: result.planetLab.goals, bitbrains: result.bitbrains.goals }, null, 2),
);
// A partial run writes a result of its own, never in place of the whole one.
const whole = PARTS.size === 4;
console.log(`wrote ${writeResult(whole ? 'autonomic' : `autonomic-${[...PARTS].sort().join('-')}`, result)}`);
