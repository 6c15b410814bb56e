import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import {
  AuditEntrySchema,
  AuditQuerySchema,
  CertificateSchema,
  CreatedTokenSchema,
  type CreateTokenBody,
  CreateTokenBodySchema,
  TokenSchema,
  type TrustCertificateBody,
  TrustCertificateBodySchema,
} from '../api/auth-schemas.ts';
import { syncResponse } from '../api/envelopes.ts';
import { ErrorEnvelopeSchema, NameParamsSchema, SyncEnvelope } from '../api/schemas.ts';
import { describeCaller } from '../core/access.ts';
import { parseSince } from '../core/durations.ts';
import { unavailable } from '../core/errors.ts';
import { assertProjectName } from '../core/projects.ts';
import type { AuditLog } from '../services/audit-log.ts';
import type { AuthService } from '../services/auth-service.ts';
import { allProjectsOf, type RouteContext } from './route-context.ts';

type AuditQuery = { since?: string; project?: string; limit?: number; 'all-projects'?: boolean };

/**
 * `?project=P` reads one project's entries (its admins may); without it, or with
 * `?all-projects=true` (which wins: clients add their project to every request), every
 * entry, host-wide ones included (the host's admins).
 */
const auditProjectOf = (request: FastifyRequest): string | undefined => {
  const query = request.query as AuditQuery | undefined;
  if (allProjectsOf(request)) return undefined;
  const project = query?.project;
  return typeof project === 'string' && project !== '' ? project : undefined;
};

/** `/1.0/auth/tokens`, `/1.0/auth/certificates` and `/1.0/audit`: the host admin's (audit: a project's admin too). */
export function registerAuthRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const auth = (): AuthService => {
    if (!ctx.services.auth) throw unavailable('This daemon keeps no tokens or certificates');
    return ctx.services.auth;
  };
  const audit = (): AuditLog => {
    if (!ctx.services.audit) throw unavailable('This daemon keeps no audit log');
    return ctx.services.audit;
  };
  const who = (request: FastifyRequest) => (request.caller ? describeCaller(request.caller) : 'nobody');

  app.get(
    '/1.0/auth/tokens',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'List API tokens (never their secrets)',
        response: { 200: SyncEnvelope(Type.Array(TokenSchema)), ...errors },
      },
    },
    async () => syncResponse(await auth().listTokens()),
  );

  app.post<{ Body: CreateTokenBody }>(
    '/1.0/auth/tokens',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Create an API token bound to projects with a role',
        description:
          'The answer holds the secret, once: only its SHA-256 is stored. Send it as `Authorization: Bearer <secret>`.',
        body: CreateTokenBodySchema,
        response: { 200: SyncEnvelope(CreatedTokenSchema), ...errors },
      },
    },
    async (request) => {
      const { name, role, projects, description } = request.body;
      const created = await auth().createToken(
        { name, role, projects, ...(description !== undefined && { description }) },
        who(request),
      );
      return syncResponse(created);
    },
  );

  app.delete<{ Params: { name: string } }>(
    '/1.0/auth/tokens/:name',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Revoke an API token (at once: its next request is refused)',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await auth().revokeToken(request.params.name);
      return syncResponse({});
    },
  );

  app.get(
    '/1.0/auth/certificates',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'List trusted client certificates',
        response: { 200: SyncEnvelope(Type.Array(CertificateSchema)), ...errors },
      },
    },
    async () => syncResponse(await auth().listCertificates()),
  );

  app.post<{ Body: TrustCertificateBody }>(
    '/1.0/auth/certificates',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Trust a client certificate: it authenticates over TLS as a token does',
        body: TrustCertificateBodySchema,
        response: { 200: SyncEnvelope(CertificateSchema), ...errors },
      },
    },
    async (request) => {
      const { certificate, name, role, projects } = request.body;
      const info = await auth().trustCertificate(
        { certificate, role, projects, ...(name !== undefined && { name }) },
        who(request),
      );
      return syncResponse(info);
    },
  );

  app.delete<{ Params: { fingerprint: string } }>(
    '/1.0/auth/certificates/:fingerprint',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Stop trusting a client certificate (by fingerprint or its first 8 or more hex digits)',
        params: Type.Object({ fingerprint: Type.String({ maxLength: 95 }) }),
        response: { 200: SyncEnvelope(CertificateSchema), ...errors },
      },
    },
    async (request) => syncResponse(await auth().untrustCertificate(request.params.fingerprint)),
  );

  app.get<{ Querystring: AuditQuery }>(
    '/1.0/audit',
    {
      config: {
        access: (request) => {
          const project = auditProjectOf(request);
          return project === undefined ? 'host-admin' : { class: 'admin', project };
        },
      },
      schema: {
        summary: 'The audit log: every request that changed something, or tried to',
        description:
          'Who (token, certificate or unix socket), from where, what (method, route, object, project), the result and the operation. Oldest first; the newest `limit` entries since `since`.',
        querystring: AuditQuerySchema,
        response: { 200: SyncEnvelope(Type.Array(AuditEntrySchema)), ...errors },
      },
    },
    async (request) => {
      const project = auditProjectOf(request);
      if (project !== undefined) assertProjectName(project);
      const { since, limit } = request.query;
      const entries = audit().query({
        ...(since !== undefined && { since: parseSince(since) }),
        ...(project !== undefined && { project }),
        ...(limit !== undefined && { limit }),
      });
      return syncResponse(entries);
    },
  );
}
