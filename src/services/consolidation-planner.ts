import { Worker } from 'node:worker_threads';
import {
  type ErrorCode,
  internal,
  invalidArgument,
  isErrorCode,
  isTrivisorError,
  TrivisorError,
  unavailable,
} from '../core/errors.ts';
import { advise, type GuestModel } from '../planner/advisor.ts';
import {
  DEFAULT_MEASUREMENTS,
  type InventoryModels,
  readModelTable,
  readProfiles,
} from '../planner/advisor-input.ts';
import type { GuestHistory } from '../planner/inventory-history.ts';
import type { PlanReportJson } from '../planner/plan-report.ts';

/**
 * How to plan: the host size as the CLI's --host-size takes it, the sizing percentile, the seed,
 * and the days ahead to forecast (the CLI's --forecast-days), as `planReport` takes them.
 */
export interface PlanSettings {
  hostSize: string;
  percentile: number;
  seed: number;
  forecastDays?: number;
  /** Also a model (ct, pvm, vm) per workload with its reason, as the CLI's --advise (decision 0054). */
  advise?: boolean;
}

/** One plan asked of the worker: an inventory file, or the metric histories of guests. */
export type PlanJob = (
  | (PlanSettings & { kind: 'file'; file: string })
  | (PlanSettings & { kind: 'history'; histories: GuestHistory[] })
) & {
  /** With `advise`: the three-model table the advice rests on. */
  measurementsFile: string;
};

/** A plan as the API answers it: `plan consolidate --format json`'s object and the picture. */
export type ConsolidationPlan = PlanReportJson & { svg: string; models?: InventoryModels };

/** The worker's one message. */
export type PlanReply =
  | { ok: true; plan: ConsolidationPlan }
  | { ok: false; code: ErrorCode | 'Internal'; message: string };

/**
 * The consolidation planner run by the daemon (`POST /1.0/plans/consolidate`, decision 0065):
 * the same code as `trivisor plan consolidate`, in a worker thread, so that seconds of planning
 * never hold the event loop that serves every other request.
 */
export interface ConsolidationPlanner {
  /** Plans the inventory in `file` (any layout inventory-readers.ts reads); `shownAs` names it in errors. */
  planFile(file: string, options: PlanSettings & { shownAs: string }): Promise<ConsolidationPlan>;
  /** Plans guests from their metric history (decision 0027). */
  planHistories(histories: GuestHistory[], options: PlanSettings): Promise<ConsolidationPlan>;
  /**
   * The model advisor (decision 0054) on a profile file (docs/advisor-profile.md), from this host's
   * three-model table: quick arithmetic, computed here rather than in a worker.
   */
  adviseFile(file: string, options: { shownAs: string }): Promise<WorkloadAdvice>;
}

/** Each workload's recommended model and its reason, and when the table behind them was measured. */
export interface WorkloadAdvice {
  measuredAt: string | null;
  advice: Array<{ id: string; model: GuestModel; reason: string }>;
}

/** Options of `createConsolidationPlanner`. */
export interface ConsolidationPlannerOptions {
  /** Plans computed at once; one more is refused (Unavailable) rather than queued. Default 1. */
  concurrency?: number;
  /** The worker's heap limit: an inventory that needs more is refused. Default 1536 MiB. */
  maxHeapMiB?: number;
  /** A plan taking longer is stopped and refused. Default 300 s. */
  timeoutMs?: number;
  /** The three-model table the advice rests on. Default bench/results/models.json, as the CLI's. */
  measurementsFile?: string;
}

const WORKER = new URL('./consolidation-worker.ts', import.meta.url);

export function createConsolidationPlanner(options: ConsolidationPlannerOptions = {}): ConsolidationPlanner {
  const concurrency = options.concurrency ?? 1;
  const maxHeapMiB = options.maxHeapMiB ?? 1536;
  const timeoutMs = options.timeoutMs ?? 300_000;
  const measurementsFile = options.measurementsFile ?? DEFAULT_MEASUREMENTS;
  let running = 0;

  async function run(job: PlanJob, hide?: { path: string; shownAs: string }): Promise<ConsolidationPlan> {
    if (running >= concurrency) {
      throw unavailable(
        `The daemon is computing ${running === 1 ? 'another plan' : `${running} other plans`} already: try again when it is done, or plan with trivisor plan consolidate FILE`,
      );
    }
    running++;
    try {
      const reply = await new Promise<PlanReply>((resolve, reject) => {
        const worker = new Worker(WORKER, {
          workerData: job,
          resourceLimits: { maxOldGenerationSizeMb: maxHeapMiB },
          stdout: false,
          stderr: false,
        });
        let answered = false;
        const timer = setTimeout(() => {
          answered = true;
          void worker.terminate();
          reject(
            invalidArgument(
              `Planning took longer than ${Math.round(timeoutMs / 1000)} s in the daemon and was stopped: plan this inventory with trivisor plan consolidate FILE`,
            ),
          );
        }, timeoutMs);
        worker.once('message', (m: PlanReply) => {
          answered = true;
          clearTimeout(timer);
          resolve(m);
        });
        worker.once('error', (e: Error & { code?: string }) => {
          if (answered) return;
          answered = true;
          clearTimeout(timer);
          reject(
            e.code === 'ERR_WORKER_OUT_OF_MEMORY'
              ? invalidArgument(
                  `The inventory needs more than the ${maxHeapMiB} MiB the daemon plans in: plan it with trivisor plan consolidate FILE`,
                )
              : internal(`The planner's worker failed: ${e.message}`, e),
          );
        });
        worker.once('exit', (exitCode) => {
          if (answered) return;
          answered = true;
          clearTimeout(timer);
          reject(internal(`The planner's worker exited (code ${exitCode}) without an answer`));
        });
      });
      if (reply.ok) return reply.plan;
      // The temporary file's path is the daemon's business: errors name the upload as the client knows it.
      const message = hide ? reply.message.split(hide.path).join(hide.shownAs) : reply.message;
      if (reply.code === 'Internal' || !isErrorCode(reply.code)) throw internal(message);
      throw new TrivisorError(reply.code, message);
    } finally {
      running--;
    }
  }

  return {
    planFile: (file, o) => {
      const { shownAs, ...settings } = o;
      return run({ kind: 'file', file, ...settings, measurementsFile }, { path: file, shownAs });
    },
    planHistories: (histories, o) => run({ kind: 'history', histories, ...o, measurementsFile }),
    async adviseFile(file, o) {
      try {
        const profiles = await readProfiles(file);
        const table = await readModelTable(measurementsFile);
        return {
          measuredAt: table.measuredAt ?? null,
          advice: profiles.map((p) => {
            const a = advise(p, table);
            return { id: a.id, model: a.model, reason: a.reason };
          }),
        };
      } catch (e) {
        // The temporary path is the daemon's business, as for plans.
        if (isTrivisorError(e)) throw new TrivisorError(e.code, e.message.split(file).join(o.shownAs));
        throw e;
      }
    },
  };
}
