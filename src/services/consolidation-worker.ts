// The consolidation planner's worker thread (decision 0065): reads the inventory and plans it off
// the daemon's event loop, answers once with the plan or a typed error, and exits.
import { parentPort, workerData } from 'node:worker_threads';
import { isTrivisorError } from '../core/errors.ts';
import { adviseInventory } from '../planner/advisor-input.ts';
import { parseHostSize } from '../planner/inventory.ts';
import { inventoryFromHistory } from '../planner/inventory-history.ts';
import { readInventory } from '../planner/inventory-readers.ts';
import { planReport } from '../planner/plan-report.ts';
import type { PlanJob, PlanReply } from './consolidation-planner.ts';

const job = workerData as PlanJob;
let reply: PlanReply;
try {
  const inv = job.kind === 'file' ? await readInventory(job.file) : inventoryFromHistory(job.histories);
  // Asked for (advise): a model per workload from its measured profile, as plan consolidate --advise.
  const models = job.advise
    ? await adviseInventory(inv, { measurementsFile: job.measurementsFile })
    : undefined;
  const report = planReport(inv, {
    hostSize: parseHostSize(job.hostSize),
    hostSizeText: job.hostSize,
    percentile: job.percentile,
    seed: job.seed,
    ...(job.forecastDays !== undefined && { forecastDays: job.forecastDays }),
  });
  reply = { ok: true, plan: { ...report.json, ...(models && { models }), svg: report.svg } };
} catch (e) {
  reply = isTrivisorError(e)
    ? { ok: false, code: e.code, message: e.message }
    : { ok: false, code: 'Internal', message: e instanceof Error ? (e.stack ?? e.message) : String(e) };
}
parentPort?.postMessage(reply);
