import { type Static, Type } from '@sinclair/typebox';

/* Wire schemas of tokens, trusted certificates and the audit log (server/auth-routes.ts). */

const Role = Type.Union([Type.Literal('viewer'), Type.Literal('operator'), Type.Literal('admin')], {
  description: 'viewer: reads; operator: also changes guests, networks, volumes, images; admin: everything',
});
const Projects = Type.Array(Type.String({ maxLength: 63 }), {
  minItems: 1,
  maxItems: 100,
  description: 'Projects the role holds in; ["*"] for all of them and the host',
});

export const TokenSchema = Type.Object({
  name: Type.String(),
  description: Type.String(),
  role: Role,
  projects: Type.Array(Type.String()),
  createdAt: Type.String(),
  createdBy: Type.String(),
});

export const CreateTokenBodySchema = Type.Object(
  {
    name: Type.String({ maxLength: 63, description: 'A DNS label; `admin` names the daemon’s own token' }),
    role: Role,
    projects: Projects,
    description: Type.Optional(Type.String({ maxLength: 256 })),
  },
  { additionalProperties: false },
);

export const CreatedTokenSchema = Type.Object({
  token: TokenSchema,
  secret: Type.String({ description: 'The bearer secret: shown here once, stored nowhere' }),
});

export const CertificateSchema = Type.Object({
  fingerprint: Type.String({ description: 'SHA-256 of the DER certificate, hex' }),
  name: Type.String(),
  role: Role,
  projects: Type.Array(Type.String()),
  certificate: Type.String({ description: 'PEM' }),
  subject: Type.String(),
  notAfter: Type.String(),
  createdAt: Type.String(),
  createdBy: Type.String(),
});

export const TrustCertificateBodySchema = Type.Object(
  {
    certificate: Type.String({ maxLength: 16384, description: 'The client certificate, PEM' }),
    name: Type.Optional(Type.String({ maxLength: 63, description: 'Default: from its common name' })),
    role: Role,
    projects: Projects,
  },
  { additionalProperties: false },
);

export const AuditEntrySchema = Type.Object({
  id: Type.Integer(),
  time: Type.String(),
  host: Type.String(),
  actor: Type.Object({
    method: Type.String({ description: 'unix, token or certificate' }),
    name: Type.String(),
    fingerprint: Type.Optional(Type.String()),
  }),
  source: Type.String({ description: 'The client address; unix on the unix socket' }),
  request: Type.Object({
    method: Type.String(),
    route: Type.String(),
    path: Type.String(),
    project: Type.String({ description: '* for host-wide routes and ?all-projects' }),
    object: Type.Optional(Type.String()),
  }),
  result: Type.Object({ status: Type.Integer(), error: Type.Optional(Type.String()) }),
  operation: Type.Optional(Type.String()),
});

export const AuditQuerySchema = Type.Object({
  since: Type.Optional(
    Type.String({
      maxLength: 64,
      description: 'A duration back from now (2h, 30d) or a time (2026-12-04T10:00:00Z); default: all kept',
    }),
  ),
  project: Type.Optional(Type.String({ description: 'Only this project’s entries (admins of it may ask)' })),
  'all-projects': Type.Optional(Type.Boolean({ description: 'Every entry, whatever `project` says' })),
  limit: Type.Optional(
    Type.Integer({ minimum: 1, maximum: 10_000, description: 'The newest this many (default 1000)' }),
  ),
});

export type TokenInfo = Static<typeof TokenSchema>;
export type CreateTokenBody = Static<typeof CreateTokenBodySchema>;
export type CreatedToken = Static<typeof CreatedTokenSchema>;
export type CertificateInfo = Static<typeof CertificateSchema>;
export type TrustCertificateBody = Static<typeof TrustCertificateBodySchema>;
export type AuditEntryBody = Static<typeof AuditEntrySchema>;
