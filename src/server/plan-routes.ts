import { createWriteStream } from 'node:fs';
import { mkdtemp, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Readable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import {
  AdviceAnswerSchema,
  ConsolidationPlanSchema,
  type PlanHistoryRange,
  type PlanQuery,
  PlanQuerySchema,
} from '../api/plan-schemas.ts';
import { ErrorEnvelopeSchema, SyncEnvelope } from '../api/schemas.ts';
import type { History } from '../api/web-schemas.ts';
import { invalidArgument, unavailable } from '../core/errors.ts';
import { parseHostSize } from '../planner/inventory.ts';
import type { GuestHistory } from '../planner/inventory-history.ts';
import type { ConsolidationPlanner } from '../services/consolidation-planner.ts';
import { guestSeries } from '../services/metrics-sampler.ts';
import { projectOf, type RouteContext } from './route-context.ts';

/** Largest inventory accepted by upload (gzip'd or not): a PlanetLab day is ~1 MB, a gzip'd Bitbrains month 50 MB. */
export const PLAN_UPLOAD_LIMIT_BYTES = 64 * 1024 ** 2;
const PLAN_UPLOAD_TYPES = ['text/csv', 'application/gzip', 'application/octet-stream'];

/** Largest workload profile file accepted (docs/advisor-profile.md: a line or an object a workload). */
export const PROFILES_LIMIT_BYTES = 1024 ** 2;

const tooLarge = (limitBytes: number) =>
  Object.assign(
    new Error(
      limitBytes === PLAN_UPLOAD_LIMIT_BYTES
        ? 'The inventory is larger than 64 MiB: gzip it, or plan it with trivisor plan consolidate FILE'
        : `The workload profiles are larger than ${limitBytes / 1024 ** 2} MiB: advise them with trivisor plan advise FILE`,
    ),
    { statusCode: 413 },
  );

/**
 * `POST /1.0/plans/consolidate`: the consolidation planner of `trivisor plan consolidate`
 * (issue 14 §4, decision 0065) on an uploaded inventory or on the project's guests' metric
 * history. Registered in its own plugin scope for its raw body parser; nothing is kept.
 */
export function registerPlanRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const planner = (): ConsolidationPlanner => {
    if (!ctx.services.consolidation) throw unavailable('This daemon does not plan consolidations');
    return ctx.services.consolidation;
  };

  app.addContentTypeParser(
    PLAN_UPLOAD_TYPES,
    { bodyLimit: PLAN_UPLOAD_LIMIT_BYTES },
    (_request, payload, done) => done(null, payload),
  );

  app.post<{ Querystring: PlanQuery }>(
    '/1.0/plans/consolidate',
    {
      config: { access: 'read' },
      bodyLimit: PLAN_UPLOAD_LIMIT_BYTES,
      schema: {
        summary:
          'Plan a consolidation: how many hosts of a size an inventory needs, and which workload goes where',
        description:
          "The body is the inventory, as `trivisor plan consolidate FILE` reads it (docs/planner-inventory.md): our CSV, PlanetLab rows or Bitbrains rows, as text/csv, or gzip'd (application/gzip), up to 64 MiB (413 beyond). Or no body and ?fromHistory=RANGE: the project's guests from their metric history. The answer is the CLI's --format json object with the SVG of each host's load (and with ?advise=true, as the CLI's --advise, a model per workload with its reason); the plan is computed in a worker thread, one at a time (503 while another runs), and nothing is kept.",
        querystring: PlanQuerySchema,
        body: {
          content: {
            'text/csv': { schema: Type.Unsafe({ description: 'The inventory' }) },
            'application/gzip': { schema: Type.Unsafe({ description: "The inventory, gzip'd" }) },
            'application/octet-stream': {
              schema: Type.Unsafe({
                description: "The inventory, plain or gzip'd (told by its first bytes)",
              }),
            },
          },
        },
        response: { 200: SyncEnvelope(ConsolidationPlanSchema), ...errors },
      },
    },
    async (request) => {
      const { hostSize, percentile, seed, fromHistory, forecastDays, advise } = request.query;
      const upload = isStream(request.body) ? request.body : undefined;
      try {
        // A bad host size is refused before a byte of the upload is spooled.
        parseHostSize(hostSize);
        if (fromHistory !== undefined && upload)
          throw invalidArgument('Send either an inventory as the body or ?fromHistory=RANGE, not both');
        if (fromHistory === undefined && !upload) {
          throw invalidArgument(
            "Send the inventory as the body (Content-Type: text/csv, or application/gzip when it is gzip'd), or ?fromHistory=RANGE with no body",
          );
        }
      } catch (e) {
        upload?.resume();
        throw e;
      }
      const settings = {
        hostSize,
        percentile,
        seed,
        ...(forecastDays !== undefined && { forecastDays }),
        ...(advise === true && { advise }),
      };
      if (fromHistory !== undefined) {
        return syncResponse(await planner().planHistories(await histories(request, fromHistory), settings));
      }
      const dir = await mkdtemp(join(ctx.uploadDir ?? tmpdir(), 'trivisor-plan-'));
      try {
        const file = await spool(upload as Readable, dir, {
          declaredBytes: Number(request.headers['content-length'] ?? 0),
        });
        return syncResponse(await planner().planFile(file, { ...settings, shownAs: basename(file) }));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );

  app.post(
    '/1.0/plans/advise',
    {
      config: { access: 'read' },
      bodyLimit: PROFILES_LIMIT_BYTES,
      schema: {
        summary: 'Recommend ct, pvm or vm for each workload of a profile file, with the reason',
        description:
          "The body is a workload profile file as `trivisor plan advise FILE` reads it (docs/advisor-profile.md): JSON or CSV, as text/csv or application/octet-stream, up to 1 MiB. The advice comes from this daemon's three-model table (bench/results/models.json, measured by bench/models.ts): each workload's id, model and one-line reason, as the CLI's --format json has them.",
        body: {
          content: {
            'text/csv': { schema: Type.Unsafe({ description: 'The profiles (CSV or JSON)' }) },
            'application/octet-stream': {
              schema: Type.Unsafe({ description: 'The profiles (CSV or JSON)' }),
            },
          },
        },
        response: { 200: SyncEnvelope(AdviceAnswerSchema), ...errors },
      },
    },
    async (request) => {
      if (!isStream(request.body))
        throw invalidArgument(
          'Send the workload profiles (docs/advisor-profile.md) as the body, Content-Type: text/csv or application/octet-stream',
        );
      const dir = await mkdtemp(join(ctx.uploadDir ?? tmpdir(), 'trivisor-advise-'));
      try {
        const file = await spool(request.body, dir, {
          declaredBytes: Number(request.headers['content-length'] ?? 0),
          limitBytes: PROFILES_LIMIT_BYTES,
          name: 'profiles',
        });
        return syncResponse(await planner().adviseFile(file, { shownAs: 'profiles' }));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );

  /** Each guest of the request's project with its history, asked of the member that keeps it. */
  async function histories(request: FastifyRequest, range: PlanHistoryRange): Promise<GuestHistory[]> {
    const project = projectOf(request);
    const guests = await ctx.services.guests.inProject(project).list();
    const out: GuestHistory[] = [];
    for (const g of guests) {
      const location = (g as { location?: string }).location;
      let h: Pick<History, 'stepSeconds' | 'times' | 'metrics'>;
      if (ctx.forward && location !== undefined && location !== ctx.forward.here) {
        h = await ctx.forward.get<History>(
          request,
          location,
          `/1.0/guests/${encodeURIComponent(g.name)}/metrics?range=${range}&project=${encodeURIComponent(project)}`,
        );
      } else {
        if (!ctx.services.metricsHistory) throw unavailable('This daemon keeps no metric history');
        h = ctx.services.metricsHistory.query(guestSeries(g.name), range, Date.now());
      }
      out.push({ name: g.name, stepSeconds: h.stepSeconds, times: h.times, metrics: h.metrics });
    }
    return out;
  }
}

function isStream(body: unknown): body is Readable {
  return typeof body === 'object' && body !== null && typeof (body as Readable).pipe === 'function';
}

/**
 * Writes the upload to `dir` (never more than the limit), named as the readers tell gzip from
 * text: by the name's .gz, here from the first two bytes (1f 8b). Over the limit, the rest is
 * left unread rather than the request destroyed, so that the client still gets its 413.
 */
async function spool(
  upload: Readable,
  dir: string,
  options: { declaredBytes: number; limitBytes?: number; name?: string },
): Promise<string> {
  const limitBytes = options.limitBytes ?? PLAN_UPLOAD_LIMIT_BYTES;
  if (options.declaredBytes > limitBytes) {
    upload.pause();
    throw tooLarge(limitBytes);
  }
  const file = join(dir, options.name ?? 'inventory.csv');
  const out = createWriteStream(file, { mode: 0o600 });
  let received = 0;
  const head: number[] = [];
  await new Promise<void>((resolve, reject) => {
    let failed = false;
    const fail = (e: unknown) => {
      if (failed) return;
      failed = true;
      upload.off('data', onData);
      upload.pause();
      out.destroy();
      reject(e);
    };
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received > limitBytes) return fail(tooLarge(limitBytes));
      for (let i = 0; head.length < 2 && i < chunk.length; i++) head.push(chunk[i] as number);
      if (!out.write(chunk)) {
        upload.pause();
        out.once('drain', () => upload.resume());
      }
    };
    upload.on('data', onData);
    upload.once('end', () => out.end());
    upload.once('error', fail);
    out.once('error', fail);
    out.once('finish', () => {
      if (!failed) resolve();
    });
  });
  if (received === 0) throw invalidArgument('The inventory is empty: send the CSV as the request body');
  if (head[0] !== 0x1f || head[1] !== 0x8b) return file;
  await rename(file, `${file}.gz`);
  return `${file}.gz`;
}
