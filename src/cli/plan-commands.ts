import { writeFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import { invalidArgument } from '../core/errors.ts';
import { planConsolidation } from '../planner/consolidate.ts';
import { parseHostSize } from '../planner/inventory.ts';
import { readInventory } from '../planner/inventory-readers.ts';
import { loadSvg } from '../planner/load-svg.ts';
import { type Replay, replayPlan } from '../planner/replay.ts';
import { renderTable } from './output.ts';

interface ConsolidateOptions {
  hostSize: string;
  percentile: string;
  seed: string;
  replay?: string;
  svg?: string;
  format: 'table' | 'json';
}

const summary = (r: Replay) => ({
  samples: r.samples,
  hostIntervals: r.hostIntervals,
  hostIntervalsOver100: r.hostIntervalsOver100,
  overloadFraction: r.overloadFraction,
  anyHostOverFraction: r.anyHostOverFraction,
  headroomPercent: r.headroomPercent,
});

const pct = (v: number) => `${(v * 100).toFixed(2)}%`;

function numberOption(text: string, what: string): number {
  const v = Number(text);
  if (text.trim() === '' || !Number.isFinite(v))
    throw invalidArgument(`The ${what} ${JSON.stringify(text)} is not a number`);
  return v;
}

/**
 * plan consolidate: the consolidation planner (issue 14 §4, decision 0047). It reads a file and
 * computes in the CLI's own process: an administrator plans before any Trivisor host exists.
 */
export function addPlanCommands(program: Command): void {
  const plan = program
    .command('plan')
    .description('Plan a consolidation from measured load (computed here, no daemon needed)');
  plan
    .command('consolidate')
    .argument(
      '<inventory>',
      'a PlanetLab, Bitbrains or Trivisor CSV (.csv or .csv.gz), or a PlanetLab directory',
    )
    .description(
      'How many hosts of a size the inventory needs, which workload goes where, and a replay of its traces on the plan. ' +
        'Computed in this process from the file: no daemon is needed. Inventory layouts: docs/planner-inventory.md',
    )
    .requiredOption(
      '--host-size <size>',
      'the host: cpu=5320 (the inventory’s CPU unit) or cpu=32,memory=256GiB',
    )
    .option('--percentile <p>', 'a host fits when its summed load is ≤ 100% at this percentile', '99')
    .option('--seed <n>', 'seed of the extra orderings tried (same input and seed, same plan)', '1')
    .option(
      '--replay <inventory>',
      'replay the plan on another period of the same workloads (plan July, replay August)',
    )
    .option('--svg <file>', "write a picture of each host's load over time (SVG)")
    .addOption(
      new Option('-f, --format <format>', 'output format').choices(['table', 'json']).default('table'),
    )
    .action(async (file: string, opts: ConsolidateOptions) => {
      const hostSize = parseHostSize(opts.hostSize);
      const inv = await readInventory(file);
      const result = planConsolidation(inv, {
        hostSize,
        percentile: numberOption(opts.percentile, 'percentile'),
        seed: numberOption(opts.seed, 'seed'),
      });
      const predicted = replayPlan(result.hosts, inv, hostSize);
      const replay = opts.replay
        ? replayPlan(result.hosts, await readInventory(opts.replay), hostSize)
        : predicted;
      if (opts.svg) {
        const title = `${result.hosts.length} hosts of ${opts.hostSize}: load over time${opts.replay ? ` (${opts.replay})` : ''}`;
        await writeFile(opts.svg, loadSvg(replay.hosts, { title }));
      }
      if (opts.format === 'json') {
        const out = {
          hostSize,
          cpuUnit: inv.cpuUnit,
          method: result.method,
          hosts: result.hosts.map((h, i) => ({
            name: h.name,
            workloads: h.workloads,
            p95LoadPercent: replay.hosts[i]?.p95LoadPercent,
            intervalsOver100: replay.hosts[i]?.intervalsOver100,
          })),
          lowerBound: result.lowerBound,
          predicted: summary(predicted),
          replay: summary(replay),
        };
        process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
        return;
      }
      process.stdout.write(
        [
          `${inv.workloads.length} workloads (${inv.format}, ${inv.samples} samples of ${inv.intervalSeconds} s), hosts of ${opts.hostSize} (${inv.cpuUnit})`,
          `hosts needed: ${result.hosts.length} (lower bound ${result.lowerBound}), ${result.method}`,
          ...(hostSize.memoryBytes === undefined && inv.workloads.some((w) => w.memoryBytes)
            ? ['memory not checked: the host size has no memory= (give it to pack memory too)']
            : []),
          `predicted: headroom ${predicted.headroomPercent.toFixed(1)} points, ${pct(predicted.overloadFraction)} of host-intervals over 100%`,
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
