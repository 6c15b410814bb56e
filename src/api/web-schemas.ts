import { type Static, Type } from '@sinclair/typebox';

/* Wire schemas of web UI sessions and login links (server/web-routes.ts) and of the metric history. */

export const SignInBodySchema = Type.Object(
  {
    token: Type.Optional(
      Type.String({ maxLength: 512, description: 'An API token (the daemon’s own or an issued one)' }),
    ),
    link: Type.Optional(
      Type.String({ maxLength: 128, description: 'The code of a login link (`trivisor admin web-link`)' }),
    ),
  },
  { additionalProperties: false },
);

export const SessionSchema = Type.Object({
  expiresAt: Type.String(),
  csrfToken: Type.String({ description: 'Send it as `X-Trivisor-CSRF` with every change' }),
  user: Type.Object({
    name: Type.String(),
    method: Type.String({ description: 'token, or login link (who made it)' }),
    role: Type.String(),
    projects: Type.Array(Type.String()),
  }),
});

export const WebLinkSchema = Type.Object({
  code: Type.String({ description: 'Good once, until it expires' }),
  path: Type.String({ description: 'Where the browser opens it: /login#code=CODE on the HTTPS listener' }),
  expiresInSeconds: Type.Integer(),
});

/** Metric names of the history, with their units. */
export const HISTORY_METRICS = [
  'cpu',
  'memoryBytes',
  'netRxBytesPerSecond',
  'netTxBytesPerSecond',
  'diskReadBytesPerSecond',
  'diskWriteBytesPerSecond',
] as const;
export type HistoryMetric = (typeof HISTORY_METRICS)[number];

export const HISTORY_RANGES = ['hour', 'day', 'week', 'month', 'year'] as const;
export type HistoryRange = (typeof HISTORY_RANGES)[number];

export const HistoryQuerySchema = Type.Object({
  range: Type.Optional(
    Type.Union(
      HISTORY_RANGES.map((r) => Type.Literal(r)),
      { default: 'hour', description: 'How far back: hour (10 s steps) … year (1 day steps)' },
    ),
  ),
});

/** The host history's query: also which member's (each member keeps its own, decision 0027). */
export const HostHistoryQuerySchema = Type.Composite([
  HistoryQuerySchema,
  Type.Object({
    target: Type.Optional(
      Type.String({
        maxLength: 63,
        description: 'On a cluster: the member whose history is shown, asked of it (default: the one asked)',
      }),
    ),
  }),
]);

const Points = Type.Array(Type.Union([Type.Number(), Type.Null()]), {
  description: 'One value per time in `times`; null where nothing ran (a stopped guest: a gap)',
});

export const HistorySchema = Type.Object({
  target: Type.String({ description: 'guest/NAME or host/NAME' }),
  range: Type.String(),
  stepSeconds: Type.Integer(),
  times: Type.Array(Type.Integer(), { description: 'Start of each step, Unix seconds, oldest first' }),
  metrics: Type.Record(Type.String(), Type.Object({ average: Points, maximum: Points }), {
    description:
      'cpu (CPUs busy: 1 = one whole CPU), memoryBytes, netRxBytesPerSecond, netTxBytesPerSecond, diskReadBytesPerSecond, diskWriteBytesPerSecond',
  }),
});

export type SignInBody = Static<typeof SignInBodySchema>;
export type SessionBody = Static<typeof SessionSchema>;
export type WebLink = Static<typeof WebLinkSchema>;
export type History = Static<typeof HistorySchema>;
