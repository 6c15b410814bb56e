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

export const ClusterMemberSchema = Type.Object({
  name: Type.String(),
  address: Type.String(),
  status: Type.Union([Type.Literal('Online'), Type.Literal('Offline'), Type.Literal('Evacuated')]),
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
