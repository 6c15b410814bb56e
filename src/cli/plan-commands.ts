import { writeFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import type { HistoryRange } from '../api/web-schemas.ts';
import { invalidArgument } from '../core/errors.ts';
import { formatBytes } from '../core/sizes.ts';
import { type Advice, advise, GUEST_MODELS } from '../planner/advisor.ts';
import {
  adviseInventory,
  DEFAULT_MEASUREMENTS,
  located,
  type ProfileFields,
  parseProfile,
  readModelTable,
  readProfiles,
} from '../planner/advisor-input.ts';
import { type Inventory, parseHostSize, releaseInventory } from '../planner/inventory.ts';
import { type GuestHistory, inventoryFromHistory } from '../planner/inventory-history.ts';
import { readInventory } from '../planner/inventory-readers.ts';
import { planReport, replayReport } from '../planner/plan-report.ts';
import { clientOf } from './context.ts';
import { renderTable } from './output.ts';

interface ConsolidateOptions {
  hostSize: string;
  percentile: string;
  seed: string;
  forecastDays?: string;
  replay?: string;
  svg?: string;
  fromHistory?: HistoryRange;
  advise?: boolean;
  measurements: string;
  format: 'table' | 'json';
}

/**
 * The inventory of the guests the remote runs, each from its own metric history (decision 0027),
 * read through the API like any other command: the planning itself stays in this process.
 */
async function historyInventory(command: Command, range: HistoryRange | undefined): Promise<Inventory> {
  const client = clientOf(command);
  const guests = await client.listGuests();
  const histories: GuestHistory[] = [];
  for (const g of guests) {
    const h = await client.guestMetricsHistory(g.name, range ?? 'day');
    histories.push({ name: g.name, stepSeconds: h.stepSeconds, times: h.times, metrics: h.metrics });
  }
  return inventoryFromHistory(histories);
}

interface AdviseOptions {
  measurements: string;
  id?: string;
  os?: string;
  kernel?: string;
  isolation?: string;
  cpu?: string;
  syscalls?: string;
  forks?: string;
  io?: string;
  net?: string;
  memory?: string;
  cores?: string;
  format: 'table' | 'json';
}

/** The workload flags of plan advise, named as the profile file's fields. */
const PROFILE_FLAGS = [
  'id',
  'os',
  'kernel',
  'isolation',
  'cpu',
  'syscalls',
  'forks',
  'io',
  'net',
  'memory',
  'cores',
] as const;

const factor = (x: number) => `${x >= 10 ? x.toFixed(0) : x.toFixed(2)}×`;

function adviceJson(a: Advice) {
  return {
    id: a.id,
    model: a.model,
    reason: a.reason,
    estimates: a.estimates.map((e) => ({
      model: e.model,
      isolation: e.isolation,
      ...(e.excludedBecause === undefined ? {} : { excludedBecause: e.excludedBecause }),
      slowdown: e.slowdown,
      hostCores: e.hostCores,
      ...(e.guestCores === undefined ? {} : { guestCores: e.guestCores }),
      throughput: e.throughput,
      hostMemoryBytes: e.hostMemoryBytes,
      bootMs: e.bootMs,
      busySecondsPerSecond: e.busySecondsPerSecond,
    })),
  };
}

const pct = (v: number) => `${(v * 100).toFixed(2)}%`;

function numberOption(text: string, what: string): number {
  const v = Number(text);
  if (text.trim() === '' || !Number.isFinite(v))
    throw invalidArgument(`The ${what} ${JSON.stringify(text)} is not a number`);
  return v;
}

/**
 * plan consolidate: the consolidation planner (issue 14 §4, decision 0047). It reads a file, or
 * the running guests' metric history through the API (--from-history), and computes in the CLI's
 * own process: an administrator plans before any Trivisor host exists.
 */
export function addPlanCommands(program: Command): void {
  const plan = program
    .command('plan')
    .description('Plan a consolidation from measured load (computed here, no daemon needed)');
  addAdviseCommand(plan);
  plan
    .command('consolidate')
    .argument(
      '[inventory]',
      'a PlanetLab, Bitbrains or Trivisor CSV (.csv or .csv.gz), or a PlanetLab directory',
    )
    .description(
      'How many hosts of a size the inventory needs, which workload goes where, and a replay of its traces on the plan. ' +
        'Computed in this process from the file: no daemon is needed (with --from-history, the guests of the remote, each from its metric history). Inventory layouts: docs/planner-inventory.md',
    )
    .requiredOption(
      '--host-size <size>',
      'the host: cpu=5320 (the inventory’s CPU unit) or cpu=32,memory=256GiB',
    )
    .option('--percentile <p>', 'the plan may be over 100% in (100 − p)% of its host-intervals', '99')
    .option('--seed <n>', 'seed of the extra orderings tried (same input and seed, same plan)', '1')
    .option(
      '--forecast-days <n>',
      "plan for N days after the inventory: its load scaled by its own trend, never below what was measured (needs 7 whole days of samples; the API's forecastDays)",
    )
    .option(
      '--replay <inventory>',
      'replay the plan on another period of the same workloads (plan July, replay August)',
    )
    .option('--svg <file>', "write a picture of each host's load over time (SVG)")
    .option(
      '--advise',
      'also a model (ct, pvm, vm) per workload with its reason, from its measured profile (as plan advise INVENTORY)',
    )
    .option(
      '--measurements <file>',
      'with --advise: the three-model table bench/models.ts wrote on this host',
      DEFAULT_MEASUREMENTS,
    )
    .addOption(
      new Option(
        '--from-history <range>',
        "instead of a file, this remote's guests as their metric history shows them over the range",
      ).choices(['day', 'week', 'month', 'year']),
    )
    .addOption(
      new Option('-f, --format <format>', 'output format').choices(['table', 'json']).default('table'),
    )
    .action(async (file: string | undefined, opts: ConsolidateOptions, command: Command) => {
      const hostSize = parseHostSize(opts.hostSize);
      if ((file === undefined) === (opts.fromHistory === undefined)) {
        throw invalidArgument('Give either an inventory file or --from-history RANGE, not both or neither');
      }
      const forecastDays =
        opts.forecastDays === undefined ? undefined : numberOption(opts.forecastDays, 'forecast days');
      if (
        forecastDays !== undefined &&
        !(Number.isInteger(forecastDays) && forecastDays >= 1 && forecastDays <= 3660)
      )
        throw invalidArgument(`The forecast days (${forecastDays}) must be a whole number from 1 to 3660`);
      // Planned first, its inventory dropped (the report keeps no samples), then the other period
      // read and replayed by workload id: one month in memory at a time, not both.
      let measured: Inventory | undefined =
        file !== undefined ? await readInventory(file) : await historyInventory(command, opts.fromHistory);
      const memoryMeasured = measured.workloads.some((w) => w.memoryBytes);
      // A model per workload from its measured profile (decision 0054), before the series are dropped.
      // Asked for (--advise): the API's plans have no such field, and both answer the same JSON.
      const models = opts.advise
        ? await adviseInventory(measured, { measurementsFile: opts.measurements })
        : undefined;
      const planned = planReport(measured, {
        hostSize,
        hostSizeText: opts.hostSize,
        percentile: numberOption(opts.percentile, 'percentile'),
        seed: numberOption(opts.seed, 'seed'),
        ...(forecastDays !== undefined && { forecastDays }),
      });
      // Its series given back now, not when the GC comes round, before the other period is read.
      if (opts.replay) releaseInventory(measured);
      measured = undefined;
      const report = opts.replay
        ? replayReport(planned, { inventory: await readInventory(opts.replay), label: opts.replay })
        : planned;
      const inv = report.json.inventory;
      const { plan: result, predicted, spread, replay } = report;
      if (opts.svg) await writeFile(opts.svg, report.svg);
      if (opts.format === 'json') {
        process.stdout.write(
          `${JSON.stringify(models ? { ...report.json, models } : report.json, null, 2)}\n`,
        );
        return;
      }
      process.stdout.write(
        [
          `${inv.workloads} workloads (${inv.format}, ${inv.samples} samples of ${inv.intervalSeconds} s), hosts of ${opts.hostSize} (${report.json.cpuUnit})`,
          `hosts needed: ${result.hosts.length} (lower bound ${result.lowerBound}), ${result.method}`,
          ...(report.json.forecast
            ? [
                `planned for the ${report.json.forecast.aheadDays} days after the inventory: its trend (CPU ${(report.json.forecast.cpuWeeklyGrowth * 100).toFixed(1)}% a week over ${report.json.forecast.days} days) scales its load by ×${report.json.forecast.factor.toFixed(3)}${report.json.forecast.rawFactor < 1 ? ' (it falls: planned as measured)' : ''}`,
              ]
            : []),
          ...(hostSize.memoryBytes === undefined && memoryMeasured
            ? ['memory not checked: the host size has no memory= (give it to pack memory too)']
            : []),
          `predicted (the planning inventory${report.json.forecast ? ' as forecast' : ''} replayed): headroom ${predicted.headroomPercent.toFixed(1)} points${spread ? ` (its ${spread.periodDays === 7 ? 'weeks' : 'days'} ${spread.minPercent.toFixed(1)} to ${spread.maxPercent.toFixed(1)})` : ''}, ${pct(predicted.overloadFraction)} of host-intervals over 100%`,
          ...(models === undefined
            ? []
            : [
                models.unavailable === undefined
                  ? `models (this host's overheads, plan advise): ${GUEST_MODELS.map((m) => `${models.counts[m]} ${m}`).join(', ')}; each workload's with its reason in --format json`
                  : `no model per workload: ${models.unavailable}`,
              ]),
          ...(opts.replay
            ? [
                `replayed on ${opts.replay}: headroom ${replay.headroomPercent.toFixed(1)} points, ${pct(replay.overloadFraction)} of host-intervals over 100%`,
              ]
            : []),
          '',
        ].join('\n'),
      );
      process.stdout.write(
        renderTable(
          ['HOST', 'WORKLOADS', 'P95 LOAD', 'PEAK', 'OVER 100%', 'IDS'],
          result.hosts.map((h, i) => {
            const r = replay.hosts[i];
            const ids = h.workloads.slice(0, 4).join(',') + (h.workloads.length > 4 ? ',…' : '');
            return [
              h.name,
              String(h.workloads.length),
              `${r?.p95LoadPercent.toFixed(0)}%`,
              `${r?.peakLoadPercent.toFixed(0)}%`,
              String(r?.intervalsOver100),
              ids,
            ];
          }),
        ),
      );
    });
}

/**
 * plan advise: the model advisor (issue 14 §5, decision 0054). Like plan consolidate it computes
 * here, from this host's three-model table (bench/models.ts) and a workload given by flags or a file.
 */
function addAdviseCommand(plan: Command): void {
  plan
    .command('advise')
    .argument(
      '[profile]',
      'workloads in a JSON or CSV file (docs/advisor-profile.md) instead of the flags, or an inventory (plan consolidate’s input, with --os, --kernel, --isolation for all its workloads)',
    )
    .description(
      'Which model (ct, pvm or vm) suits a workload, with the reason and each model’s estimated overhead, ' +
        'from its measured profile and the overheads measured on this host by bench/models.ts. No daemon is needed',
    )
    .option(
      '--measurements <file>',
      'the three-model table bench/models.ts wrote on this host',
      DEFAULT_MEASUREMENTS,
    )
    .option('--id <name>', 'the workload’s name in the output (default: workload)')
    .option('--os <os>', 'the OS it needs: linux or other (any kernel that is not Linux)')
    .option(
      '--kernel <kernel>',
      'any (the host’s Linux kernel will do) or own (its own modules, version, sysctls)',
    )
    .option(
      '--isolation <level>',
      'shared-kernel-ok or own-kernel (must not share a kernel with other guests)',
    )
    .option('--cpu <cores>', 'CPU in use: cores (0.5) or percent of one core (50%)')
    .option('--syscalls <rate>', 'system calls per second (1500, 250k)')
    .option('--forks <rate>', 'processes started (fork+exec) per second')
    .option('--io <rate>', 'synchronous disk writes: 20MiB/s or 300iops')
    .option('--net <rate>', 'network traffic, received and sent: 20MiB/s')
    .option('--memory <size>', 'memory in use (2GiB)')
    .option('--cores <cpus>', 'the CPUs the guest will have (default: as many as the host)')
    .addOption(
      new Option('-f, --format <format>', 'output format').choices(['table', 'json']).default('table'),
    )
    .action(async (file: string | undefined, opts: AdviseOptions) => {
      const flags: ProfileFields = {};
      for (const key of PROFILE_FLAGS) {
        const v = opts[key];
        if (v !== undefined) flags[key] = v;
      }
      // An inventory (plan consolidate's input) says nothing of OS, kernel or isolation: those
      // flags may come with one, for all its workloads; readProfiles refuses them with profiles.
      const assumable = new Set(['os', 'kernel', 'isolation']);
      const other = Object.keys(flags).find((k) => !assumable.has(k));
      if (file !== undefined && other !== undefined)
        throw invalidArgument(
          `Give the workload either as a file or as flags, not both (--${other} with ${file})`,
        );
      // The profile first: a typo in it is reported even where nothing is measured yet.
      const profiles =
        file === undefined
          ? [located('The workload’s', () => parseProfile(flags, 'workload'), ' ')]
          : await readProfiles(file, flags);
      const table = await readModelTable(opts.measurements);
      const advice = profiles.map((p) => advise(p, table));
      const measured = { file: table.source, measuredAt: table.measuredAt ?? null };
      if (opts.format === 'json') {
        process.stdout.write(
          `${JSON.stringify({ measurements: measured, advice: advice.map(adviceJson) }, null, 2)}\n`,
        );
        return;
      }
      const from = `overheads measured on this host${table.measuredAt ? ` at ${table.measuredAt}` : ''} (${table.source})`;
      const [only] = advice;
      if (only !== undefined && advice.length === 1) {
        process.stdout.write(`${only.reason}\n\nestimates from the ${from}:\n`);
        process.stdout.write(
          renderTable(
            ['MODEL', 'SLOWDOWN', 'HOST CPU', 'HOST MEMORY', 'BOOT', 'ISOLATION', 'NOTE'],
            only.estimates.map((e) => [
              e.model,
              factor(e.slowdown),
              `${e.hostCores.toFixed(2)} cores`,
              formatBytes(Math.round(e.hostMemoryBytes)),
              `${(e.bootMs / 1000).toFixed(1)} s`,
              e.isolation,
              e.excludedBecause === undefined
                ? [
                    e.model === only.model ? 'recommended' : '',
                    e.throughput < 1
                      ? `saturated: ${Math.round(100 * e.throughput)}% of the rates on ${e.guestCores} core${e.guestCores === 1 ? '' : 's'}`
                      : '',
                  ]
                    .filter(Boolean)
                    .join('; ')
                : `cannot: ${e.excludedBecause}`,
            ]),
          ),
        );
        return;
      }
      process.stdout.write(`slowdown against native, from the ${from}:\n`);
      process.stdout.write(
        renderTable(
          ['ID', 'MODEL', 'CT', 'PVM', 'VM', 'REASON'],
          advice.map((a) => [
            a.id,
            a.model,
            ...a.estimates.map((e) => (e.excludedBecause === undefined ? factor(e.slowdown) : '–')),
            a.reason,
          ]),
        ),
      );
    });
}
