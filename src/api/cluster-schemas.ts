import { type Static, Type } from '@sinclair/typebox';
import { EVACUATE_MODES } from '../core/types.ts';

/** What an evacuation does with a guest that does not say (`cluster.evacuate`; decision 0041). */
export const EvacuateModeSchema = Type.Union(EVACUATE_MODES.map((m) => Type.Literal(m)));

/* Wire schemas of cluster membership (server/cluster-routes.ts, decision 0032). */

const Address = Type.String({
  maxLength: 64,
  description: 'IP[:PORT] other members reach this host at (port 8444 by default)',
});

export const ClusterInfoSchema = Type.Object({
  enabled: Type.Boolean({ description: 'Whether this daemon is a cluster member' }),
  host: Type.Optional(Type.String({ description: "This host's name: the `location` of what it holds" })),
  member: Type.Optional(Type.String()),
  address: Type.Optional(Type.String()),
  caFingerprint: Type.Optional(Type.String({ description: 'SHA-256 of the cluster CA certificate, hex' })),
  etcd: Type.Optional(Type.Object({ managed: Type.Boolean(), endpoints: Type.Array(Type.String()) })),
});

/**
 * A member's power as power management keeps it (decision 0055): absent means on. `evacuating`
 * while its guests leave it before a power-off; `off` is Standby in `cluster list`.
 */
export const MemberPowerSchema = Type.Object({
  state: Type.Union([
    Type.Literal('on'),
    Type.Literal('evacuating'),
    Type.Literal('powering-off'),
    Type.Literal('off'),
    Type.Literal('powering-on'),
  ]),
  since: Type.String(),
  /** Why it is in this state: the power manager's explanation. */
  reason: Type.String(),
  /** When it was powered off (the last 24 h: no more than cluster.power.max_cycles). */
  powerOffs: Type.Array(Type.String()),
  poweredOnAt: Type.Optional(Type.String()),
  /** When a power-off was last aborted (a failed migration): it is not tried again for a low window. */
  abortedAt: Type.Optional(Type.String()),
  error: Type.Optional(Type.String()),
  /** Its capacity when it went off: what a power-on brings back. */
  capacity: Type.Optional(Type.Object({ cpus: Type.Number(), memoryBytes: Type.Number() })),
  /**
   * Its daemon as its heartbeat showed it when it was powered off: it is back once a heartbeat
   * shows another boot id (or, from a daemon that reports none, another daemon life).
   */
  offBoot: Type.Optional(Type.Object({ bootId: Type.Optional(Type.String()), incarnation: Type.String() })),
});
export type MemberPower = Static<typeof MemberPowerSchema>;

export const ClusterMemberSchema = Type.Object({
  name: Type.String(),
  address: Type.String(),
  status: Type.Union([
    Type.Literal('Online'),
    Type.Literal('Offline'),
    Type.Literal('Evacuated'),
    Type.Literal('Standby'),
  ]),
  roles: Type.Array(Type.String(), { description: 'etcd-voter: runs one of the etcd members; etcd-client' }),
  guests: Type.Integer({ description: 'Guests this member owns' }),
  version: Type.String(),
  cpu: Type.Union([
    Type.Object({
      cpus: Type.Integer(),
      used: Type.Number({ description: 'CPUs busy, measured' }),
      free: Type.Number(),
    }),
    Type.Null(),
  ]),
  memory: Type.Union([
    Type.Object({ totalBytes: Type.Number(), usedBytes: Type.Number(), freeBytes: Type.Number() }),
    Type.Null(),
  ]),
  disk: Type.Optional(
    Type.Union([Type.Object({ totalBytes: Type.Number(), freeBytes: Type.Number() }), Type.Null()], {
      description: "The default pool's file system, as measured",
    }),
  ),
  measuredAt: Type.Optional(Type.String({ description: 'When cpu, memory and disk were measured' })),
  joinedAt: Type.String(),
  ha: Type.Optional(
    Type.Object(
      {
        live: Type.Boolean({ description: "Whether the member's HA agent holds its HA lease" }),
        guests: Type.Integer({ description: 'HA guests it holds' }),
        warning: Type.Optional(
          Type.String({
            description:
              'Admission control: why the other members could not restart all of them if it were lost',
          }),
        ),
      },
      { description: 'High availability (decision 0052)' },
    ),
  ),
  power: Type.Optional(
    Type.Composite([MemberPowerSchema], { description: 'Power management (decision 0055); absent: on' }),
  ),
});

export const BootstrapBodySchema = Type.Object(
  {
    address: Address,
    etcd: Type.Optional(
      Type.Object(
        {
          endpoints: Type.Array(Type.String({ maxLength: 256 }), { minItems: 1, maxItems: 16 }),
          ca: Type.Optional(Type.String({ maxLength: 16384, description: "PEM: the etcd's CA" })),
          cert: Type.Optional(
            Type.String({ maxLength: 16384, description: 'PEM: a client certificate it accepts' }),
          ),
          key: Type.Optional(Type.String({ maxLength: 16384, description: "PEM: that certificate's key" })),
        },
        { additionalProperties: false, description: 'An existing etcd instead of one the members run' },
      ),
    ),
  },
  { additionalProperties: false },
);
export type BootstrapBody = Static<typeof BootstrapBodySchema>;

export const CreateJoinTokenBodySchema = Type.Object(
  {
    name: Type.String({ maxLength: 63, description: 'The new member’s name (a DNS label)' }),
    expiry: Type.Optional(
      Type.String({ maxLength: 16, description: 'How long the token lasts: 90s, 3h, 1d (default 3h)' }),
    ),
  },
  { additionalProperties: false },
);
export type CreateJoinTokenBody = Static<typeof CreateJoinTokenBodySchema>;

export const JoinTokenSchema = Type.Object({
  name: Type.String(),
  token: Type.String({ description: 'The token, once: only a hash of its secret is stored' }),
  expiresAt: Type.String(),
});

export const JoinBodySchema = Type.Object(
  { token: Type.String({ maxLength: 4096 }), address: Address },
  { additionalProperties: false },
);
export type JoinBody = Static<typeof JoinBodySchema>;

export const JoinRequestBodySchema = Type.Object(
  {
    name: Type.String({ maxLength: 63 }),
    secret: Type.String({ maxLength: 128 }),
    address: Address,
    csr: Type.String({ maxLength: 8192, description: 'PEM certificate signing request for the member key' }),
    version: Type.String({ maxLength: 64 }),
    nonce: Type.String({ maxLength: 64, description: 'What the joining host answers at its address' }),
  },
  { additionalProperties: false },
);
export type JoinRequestBody = Static<typeof JoinRequestBodySchema>;

export const JoinAnswerSchema = Type.Object({
  acceptedBy: Type.Object({ name: Type.String(), address: Type.String() }),
  certificate: Type.String(),
  caCert: Type.String(),
  member: Type.Object({}, { additionalProperties: true }),
  etcd: Type.Object({
    endpoints: Type.Array(Type.String()),
    voter: Type.Boolean(),
    tls: Type.Optional(
      Type.Object({
        ca: Type.String(),
        cert: Type.Optional(Type.String()),
        key: Type.Optional(Type.String()),
      }),
    ),
  }),
});

/* The rebalancer (decision 0053): cluster-wide settings, the moves it made, a cycle on demand. */

const MoveModel = Type.Union([Type.Literal('ct'), Type.Literal('pvm'), Type.Literal('vm')]);

/** A rebalancing move with its explanation (src/autonomic's MoveRecord). */
export const MoveRecordSchema = Type.Object({
  atMs: Type.Number({ description: 'When it was planned, ms since the epoch' }),
  guest: Type.String(),
  model: MoveModel,
  from: Type.String(),
  to: Type.String(),
  how: Type.Union([Type.Literal('live'), Type.Literal('cold')]),
  reason: Type.Union([Type.Literal('overload'), Type.Literal('balance'), Type.Literal('evacuation')]),
  imbalanceBefore: Type.Number({ description: "Standard deviation of the members' loads before the move" }),
  imbalanceAfter: Type.Number(),
  loadBefore: Type.Object({ from: Type.Number(), to: Type.Number() }),
  loadAfter: Type.Object({ from: Type.Number(), to: Type.Number() }),
  benefitSeconds: Type.Number({
    description: 'Predicted benefit (member-seconds of imbalance and overload removed)',
  }),
  costSeconds: Type.Number({ description: "The copy's slowdown plus the guest's downtime, seconds" }),
  copySeconds: Type.Number(),
  downtimeMs: Type.Number(),
  constraints: Type.Array(Type.String(), { description: 'The rules that narrowed the choice' }),
  summary: Type.String(),
});

/** A move the rebalancer made or tried: what `cluster moves` lists. */
export const ClusterMoveSchema = Type.Composite([
  MoveRecordSchema,
  Type.Object({
    result: Type.Union([Type.Literal('moved'), Type.Literal('failed')]),
    error: Type.Optional(Type.String()),
    finishedAt: Type.String(),
  }),
]);
export type ClusterMove = Static<typeof ClusterMoveSchema>;

export const ClusterSettingsSchema = Type.Object({
  config: Type.Record(Type.String(), Type.String(), {
    description: 'The keys set (unset keys have their defaults)',
  }),
});

export const ClusterSettingsPatchSchema = Type.Object(
  {
    config: Type.Record(
      Type.String({ maxLength: 100 }),
      // Null first: with the API's type coercion a string branch tried first would take null as "".
      Type.Union([Type.Null(), Type.String({ maxLength: 100 })]),
      {
        description: 'Keys to set; null unsets one',
      },
    ),
  },
  { additionalProperties: false },
);
export type ClusterSettingsPatch = Static<typeof ClusterSettingsPatchSchema>;

export const RebalanceBodySchema = Type.Object(
  { dryRun: Type.Optional(Type.Boolean({ description: 'Plan only: nothing moves' })) },
  { additionalProperties: false },
);

export const RebalanceResultSchema = Type.Object({
  dryRun: Type.Boolean(),
  imbalanceBefore: Type.Number(),
  imbalanceAfter: Type.Number({ description: 'As planned' }),
  planned: Type.Array(MoveRecordSchema),
  notes: Type.Array(Type.String(), { description: 'What was held back, and why' }),
  moved: Type.Array(ClusterMoveSchema, { description: 'The moves carried out (none on a dry run)' }),
  power: Type.Optional(
    Type.Object(
      {
        powerOn: Type.Array(Type.Object({ member: Type.String(), reason: Type.String() })),
        powerOff: Type.Array(
          Type.Object({
            member: Type.String(),
            reason: Type.String(),
            moves: Type.Array(MoveRecordSchema, { description: 'As planned; the evacuation places them' }),
          }),
        ),
      },
      {
        description:
          'Power management (decision 0055, cluster.power.enabled): members to power on, members to empty and power off',
      },
    ),
  ),
});
export type RebalanceResult = Static<typeof RebalanceResultSchema>;
