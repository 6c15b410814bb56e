import { type Static, Type } from '@sinclair/typebox';

/* Wire schemas of the consolidation planner's route (server/plan-routes.ts, decision 0065). */

export const PLAN_HISTORY_RANGES = ['day', 'week', 'month', 'year'] as const;
export type PlanHistoryRange = (typeof PLAN_HISTORY_RANGES)[number];

export const PlanQuerySchema = Type.Object(
  {
    hostSize: Type.String({
      minLength: 1,
      maxLength: 100,
      description:
        "The host: cpu=5320 (in the inventory's CPU unit: MIPS for PlanetLab, cores otherwise) or cpu=32,memory=256GiB",
    }),
    percentile: Type.Number({
      minimum: 0,
      maximum: 100,
      default: 99,
      description: 'The plan may be over 100% in (100 − p)% of its host-intervals (0 < p ≤ 100)',
    }),
    seed: Type.Integer({
      default: 1,
      description: 'Seed of the extra orderings tried (same input and seed, same plan)',
    }),
    forecastDays: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 3660,
        description:
          "Plan for this many days after the inventory's period: its load scaled by its own trend (a line through each day's summed load, never below what was measured; needs 7 whole days of samples)",
      }),
    ),
    advise: Type.Optional(
      Type.Boolean({
        description:
          "Also a model (ct, pvm, vm) per workload with its reason, from its measured profile and this daemon's three-model table (the CLI's plan consolidate --advise); the plan is the same either way",
      }),
    ),
    fromHistory: Type.Optional(
      Type.Union(
        PLAN_HISTORY_RANGES.map((r) => Type.Literal(r)),
        {
          description:
            "Instead of an uploaded inventory: the project's guests as their metric history shows them over this range (send no body)",
        },
      ),
    ),
  },
  { additionalProperties: false },
);
export type PlanQuery = Static<typeof PlanQuerySchema>;

const ReplaySummaryProperties = {
  samples: Type.Integer(),
  hostIntervals: Type.Integer(),
  hostIntervalsOver100: Type.Integer(),
  overloadFraction: Type.Number({ description: 'hostIntervalsOver100 / hostIntervals' }),
  anyHostOverFraction: Type.Number({ description: 'Fraction of intervals with at least one host over 100%' }),
  headroomPercent: Type.Number({
    description: "100 − the hosts' 95th-percentile load, averaged over hosts, in percentage points",
  }),
};

/** `trivisor plan consolidate --format json`'s object, and the picture of each host's load. */
export const ConsolidationPlanSchema = Type.Object({
  hostSize: Type.Object({ cpu: Type.Number(), memoryBytes: Type.Optional(Type.Number()) }),
  cpuUnit: Type.Union([Type.Literal('MIPS'), Type.Literal('cores')]),
  inventory: Type.Object({
    format: Type.Union([Type.Literal('planetlab'), Type.Literal('bitbrains'), Type.Literal('trivisor')]),
    workloads: Type.Integer(),
    samples: Type.Integer(),
    intervalSeconds: Type.Number(),
  }),
  method: Type.String(),
  hosts: Type.Array(
    Type.Object({
      name: Type.String(),
      workloads: Type.Array(Type.String(), { description: "The inventory's own ids" }),
      p95LoadPercent: Type.Number(),
      peakLoadPercent: Type.Number(),
      intervalsOver100: Type.Integer(),
    }),
  ),
  lowerBound: Type.Integer({ description: '⌈peak of the summed load / host capacity⌉, CPU or memory' }),
  forecast: Type.Optional(
    Type.Object(
      {
        aheadDays: Type.Integer(),
        days: Type.Integer({ description: 'Whole days of the inventory the trend was fitted on' }),
        cpuWeeklyGrowth: Type.Number({ description: 'The CPU line’s change a week, a fraction of its mean' }),
        memoryWeeklyGrowth: Type.Optional(Type.Number()),
        factor: Type.Number({ description: 'What the load was scaled by (at least 1)' }),
        rawFactor: Type.Number({ description: 'The trend’s factor before the floor at 1' }),
        measuredLowerBound: Type.Integer({
          description: 'The lower bound of the inventory as measured, before the forecast scaled it',
        }),
      },
      { description: 'The trend the plan was scaled by (forecastDays)' },
    ),
  ),
  predicted: Type.Object({
    ...ReplaySummaryProperties,
    basis: Type.String(),
    periodDays: Type.Optional(Type.Integer()),
    headroomPercentByPeriod: Type.Optional(Type.Array(Type.Number())),
  }),
  replay: Type.Object(ReplaySummaryProperties),
  models: Type.Optional(
    Type.Object(
      {
        measurements: Type.Optional(
          Type.Object({
            file: Type.String({ description: 'The three-model table the advice comes from' }),
            measuredAt: Type.Union([Type.String(), Type.Null()]),
          }),
        ),
        advice: Type.Array(
          Type.Object({
            id: Type.String({ description: "The inventory's workload id" }),
            model: Type.Union([Type.Literal('ct'), Type.Literal('pvm'), Type.Literal('vm')]),
            reason: Type.String(),
          }),
        ),
        counts: Type.Object({ ct: Type.Integer(), pvm: Type.Integer(), vm: Type.Integer() }),
        unavailable: Type.Optional(
          Type.String({
            description:
              'Why no workload was advised (no measurements on this host, an inventory in MIPS); the plan is made either way',
          }),
        ),
      },
      { description: 'With ?advise=true: the recommended model per workload (decision 0054)' },
    ),
  ),
  svg: Type.String({ description: "Each planned host's load over time (image/svg+xml, no script)" }),
});
export type ConsolidationPlanWire = Static<typeof ConsolidationPlanSchema>;

/** `POST /1.0/plans/advise`'s answer: `trivisor plan advise --format json`'s advice, without the estimates. */
export const AdviceAnswerSchema = Type.Object({
  measuredAt: Type.Union([Type.String(), Type.Null()], {
    description: "When this daemon's three-model table was measured (bench/models.ts)",
  }),
  advice: Type.Array(
    Type.Object({
      id: Type.String({ description: "The profile's workload id (the inventory's, to join a plan)" }),
      model: Type.Union([Type.Literal('ct'), Type.Literal('pvm'), Type.Literal('vm')]),
      reason: Type.String(),
    }),
  ),
});
export type AdviceAnswer = Static<typeof AdviceAnswerSchema>;
