import type { FastifyInstance } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import { ErrorEnvelopeSchema, NameParamsSchema, SyncEnvelope } from '../api/schemas.ts';
import {
  type History,
  HistoryQuerySchema,
  type HistoryRange,
  HistorySchema,
  HostHistoryQuerySchema,
} from '../api/web-schemas.ts';
import { notFound, unavailable } from '../core/errors.ts';
import type { MetricsHistory } from '../services/metrics-history.ts';
import { guestSeries, hostSeries } from '../services/metrics-sampler.ts';
import { isForwarded } from './forward.ts';
import { projectOf, type RouteContext } from './route-context.ts';

/** `/1.0/guests/{name}/metrics` and `/1.0/metrics/history`: the metric history (decision 0027). */
export function registerMetricsHistoryRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const history = (): MetricsHistory => {
    if (!ctx.services.metricsHistory) throw unavailable('This daemon keeps no metric history');
    return ctx.services.metricsHistory;
  };

  app.get<{ Params: { name: string }; Querystring: { range?: HistoryRange } }>(
    '/1.0/guests/:name/metrics',
    {
      config: { access: 'read' },
      schema: {
        summary: "A guest's CPU, memory, network and disk history (average and maximum per step)",
        description:
          'Sampled every 10 s while the guest runs; steps while it was stopped are null (gaps). hour: 10 s steps, day: 5 min, week: 30 min, month: 2 h, year: 1 day.',
        params: NameParamsSchema,
        querystring: HistoryQuerySchema,
        response: { 200: SyncEnvelope(HistorySchema), ...errors },
      },
    },
    async (request) => {
      const { name } = request.params;
      const range = request.query.range ?? 'hour';
      // Another project's guest is not found, as everywhere (decision 0021).
      await ctx.services.guests.inProject(projectOf(request)).get(name);
      const points = history().query(guestSeries(name), range, Date.now());
      return syncResponse({ target: `guest/${name}`, range, ...points });
    },
  );

  app.get<{ Querystring: { range?: HistoryRange; target?: string } }>(
    '/1.0/metrics/history',
    {
      config: { access: 'host-read' },
      schema: {
        summary: "This host's CPU, memory, network and disk history (average and maximum per step)",
        description:
          "cpu counts busy CPUs; network is the physical interfaces, disk the whole disks. Ranges as for guests. With ?target=MEMBER, that member's history, asked of it (each member keeps its own).",
        querystring: HostHistoryQuerySchema,
        response: { 200: SyncEnvelope(HistorySchema), ...errors },
      },
    },
    async (request) => {
      const range = request.query.range ?? 'hour';
      const host = (await ctx.services.host.info()).name;
      const target = request.query.target;
      if (target !== undefined && target !== host) {
        // The samples stay in each member's own database (decision 0027): another's is asked of it.
        if (!ctx.forward || isForwarded(request))
          throw notFound(`No cluster member is named ${target}: this host's history is ${host}'s`);
        return syncResponse(
          await ctx.forward.get<History>(request, target, `/1.0/metrics/history?range=${range}`),
        );
      }
      const points = history().query(hostSeries(host), range, Date.now());
      return syncResponse({ target: `host/${host}`, range, ...points });
    },
  );
}
