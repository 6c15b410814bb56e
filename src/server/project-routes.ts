import { type TSchema, Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifySchema } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import {
  type CreateProjectBody,
  CreateProjectBodySchema,
  ErrorEnvelopeSchema,
  NameParamsSchema,
  type PatchProjectBody,
  PatchProjectBodySchema,
  ProjectSchema,
  RecursionQuerySchema,
  SyncEnvelope,
} from '../api/schemas.ts';
import { invalidArgument } from '../core/errors.ts';
import type { RouteContext } from './route-context.ts';

type NameParams = { name: string };

const ProjectQuery = {
  project: Type.Optional(
    Type.String({ description: 'Project to act in (default: default); another project’s objects are 404' }),
  ),
};
const ListQuery = {
  'all-projects': Type.Optional(
    Type.Boolean({ description: 'List the objects of every project, each with its `project`' }),
  ),
};

/** The routes that list project-owned objects: they take `?all-projects=true` too. */
const LIST_ROUTES = new Set([
  '/1.0/guests',
  '/1.0/networks',
  '/1.0/images',
  '/1.0/operations',
  '/1.0/events',
  '/1.0/storage-pools/:pool/volumes',
  '/1.0/storage-pools/:pool/volumes/custom',
]);

export function isListRoute(method: string | string[], url: string): boolean {
  return (method === 'GET' || (Array.isArray(method) && method.includes('GET'))) && LIST_ROUTES.has(url);
}

/**
 * True for a route that lists or acts on project-owned objects: everything under /1.0/
 * except the project routes themselves (a project is not in a project) and `GET /1.0`.
 */
export function isProjectRoute(url: string | undefined): boolean {
  if (url === undefined) return false;
  return url.startsWith('/1.0/') && url !== '/1.0/projects' && !url.startsWith('/1.0/projects/');
}

/** `schema` with `project` (and for lists `all-projects`) added to its query string. */
export function withProjectQuery(
  schema: FastifySchema | undefined,
  options: { list: boolean },
): FastifySchema {
  const extra = { ...ProjectQuery, ...(options.list ? ListQuery : {}) };
  const qs = schema?.querystring as (TSchema & { properties?: Record<string, TSchema> }) | undefined;
  const querystring = qs?.properties
    ? { ...qs, properties: { ...qs.properties, ...extra } }
    : qs === undefined
      ? Type.Object(extra)
      : qs;
  return { ...schema, querystring };
}

/** `/1.0/projects...`: create, list, show (with usage against limits), set limits, delete. */
export function registerProjectRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { projects } = ctx.services;
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const url = (name: string) => `/1.0/projects/${name}`;

  app.get<{ Querystring: { recursion?: number } }>(
    '/1.0/projects',
    {
      config: { access: 'host-read' },
      schema: {
        summary: 'List projects',
        description: 'recursion=0: URLs; 1 or 2: projects with their usage.',
        querystring: RecursionQuerySchema,
        response: {
          200: SyncEnvelope(Type.Union([Type.Array(ProjectSchema), Type.Array(Type.String())])),
          ...errors,
        },
      },
    },
    async (request) =>
      // Without recursion only the names: no usage is summed, no guest read.
      syncResponse(
        (request.query.recursion ?? 0) === 0 ? (await projects.names()).map(url) : await projects.list(),
      ),
  );

  app.post<{ Body: CreateProjectBody }>(
    '/1.0/projects',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Create a project',
        body: CreateProjectBodySchema,
        response: { 200: SyncEnvelope(ProjectSchema), ...errors },
      },
    },
    async (request, reply) => {
      const b = request.body;
      const created = await projects.create({
        name: b.name,
        ...(b.description !== undefined && { description: b.description }),
        ...(b.config !== undefined && { config: b.config }),
      });
      reply.header('location', url(created.name));
      return syncResponse(created);
    },
  );

  app.get<{ Params: NameParams }>(
    '/1.0/projects/:name',
    {
      config: { access: (request) => ({ class: 'read', project: (request.params as NameParams).name }) },
      schema: {
        summary: 'Show a project, with its usage against its limits',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(ProjectSchema), ...errors },
      },
    },
    async (request) => syncResponse(await projects.get(request.params.name)),
  );

  app.patch<{ Params: NameParams; Body: PatchProjectBody }>(
    '/1.0/projects/:name',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Set and unset project config keys (limits), or change its description',
        description:
          'Keys in `config` are set; keys with a null value and keys in `unset` are removed. A limit below what the project already uses is refused (409).',
        params: NameParamsSchema,
        body: PatchProjectBodySchema,
        response: { 200: SyncEnvelope(ProjectSchema), ...errors },
      },
    },
    async (request) => {
      const b = request.body;
      const set: Record<string, string> = {};
      const unset = [...(b.unset ?? [])];
      for (const [key, value] of Object.entries(b.config ?? {})) {
        if (value === null) unset.push(key);
        else set[key] = value;
      }
      if (Object.keys(set).length === 0 && unset.length === 0 && b.description === undefined) {
        throw invalidArgument('Nothing to change: give "config", "unset" or "description"');
      }
      return syncResponse(
        await projects.update(request.params.name, {
          set,
          unset,
          ...(b.description !== undefined && { description: b.description }),
        }),
      );
    },
  );

  app.delete<{ Params: NameParams }>(
    '/1.0/projects/:name',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Delete an empty project (default cannot be deleted)',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await projects.delete(request.params.name);
      return syncResponse({});
    },
  );
}
