import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { syncResponse } from '../api/envelopes.ts';
import {
  type AddForwardBody,
  AddForwardBodySchema,
  type CreateNetworkBody,
  CreateNetworkBodySchema,
  ErrorEnvelopeSchema,
  NameParamsSchema,
  type NetworkAclRuleBody,
  NetworkAclRuleSchema,
  NetworkSchema,
  type PatchGuestBody,
  PatchGuestBodySchema,
  RecursionQuerySchema,
  SyncEnvelope,
} from '../api/schemas.ts';
import { invalidArgument, notSupported } from '../core/errors.ts';
import type { NetworkService } from '../services/network-service.ts';
import { onGuestOwner } from './owner-routes.ts';
import { allProjectsOf, configChange, projectOf, type RouteContext } from './route-context.ts';

type NameParams = { name: string };

/** `/1.0/networks...`: managed networks (synchronous: building a bridge takes well under a second). */

/** What `attach` and `detach` answer. */
const NicChangeSchema = Type.Object({
  guest: Type.String(),
  nic: Type.String(),
  applied: Type.Union([Type.Literal('live'), Type.Literal('next-start'), Type.Literal('none')], {
    description: 'live: the running guest has (or lost) the NIC now; none: the guest does not run',
  }),
  message: Type.String(),
});

export function registerNetworkRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  /** The networks of the request's project: another project's network is a 404. */
  const networks = (request: FastifyRequest): NetworkService => {
    const n = ctx.services.networks;
    if (!n) throw notSupported('Networking is not set up on this daemon');
    return n.inProject(projectOf(request));
  };
  const url = (name: string) => `/1.0/networks/${name}`;

  app.get<{ Querystring: { recursion?: number } }>(
    '/1.0/networks',
    {
      config: { access: 'read' },
      schema: {
        summary: 'List managed networks',
        description: 'recursion=0: URLs; 1 or 2: networks.',
        querystring: RecursionQuerySchema,
        response: {
          200: SyncEnvelope(Type.Union([Type.Array(NetworkSchema), Type.Array(Type.String())])),
          ...errors,
        },
      },
    },
    async (request) => {
      const list = await networks(request).list({ allProjects: allProjectsOf(request) });
      return syncResponse((request.query.recursion ?? 0) === 0 ? list.map((n) => url(n.name)) : list);
    },
  );

  app.post<{ Body: CreateNetworkBody }>(
    '/1.0/networks',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Create a network (bridge, DHCP/DNS, optional NAT)',
        body: CreateNetworkBodySchema,
        response: { 200: SyncEnvelope(NetworkSchema), ...errors },
      },
    },
    async (request, reply) => {
      const b = request.body;
      const created = await networks(request).create({
        name: b.name,
        ...(b.description !== undefined && { description: b.description }),
        ...(b.config !== undefined && { config: b.config }),
      });
      reply.header('location', url(created.name));
      return syncResponse(created);
    },
  );

  app.get<{ Params: NameParams }>(
    '/1.0/networks/:name',
    {
      config: { access: 'read' },
      schema: {
        summary: 'Show a network',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(NetworkSchema), ...errors },
      },
    },
    async (request) => syncResponse(await networks(request).get(request.params.name)),
  );

  app.patch<{ Params: NameParams; Body: PatchGuestBody }>(
    '/1.0/networks/:name',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Set and unset network config keys',
        description: 'Keys in `config` are set; keys with a null value and keys in `unset` are removed.',
        params: NameParamsSchema,
        body: PatchGuestBodySchema,
        response: { 200: SyncEnvelope(NetworkSchema), ...errors },
      },
    },
    async (request) => {
      return syncResponse(await networks(request).update(request.params.name, configChange(request.body)));
    },
  );

  app.post<{ Params: NameParams; Body: AddForwardBody }>(
    '/1.0/networks/:name/forwards',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Forward a host address and port to a guest (DNAT)',
        params: NameParamsSchema,
        body: AddForwardBodySchema,
        response: { 200: SyncEnvelope(NetworkSchema), ...errors },
      },
    },
    async (request) => {
      const b = request.body;
      return syncResponse(
        await networks(request).addForward(request.params.name, {
          listenAddress: b.listenAddress,
          listenPort: b.listenPort,
          target: b.target,
          targetPort: b.targetPort,
          ...(b.protocol !== undefined && { protocol: b.protocol }),
        }),
      );
    },
  );

  app.delete<{ Params: NameParams & { listen: string }; Querystring: { protocol?: 'tcp' | 'udp' } }>(
    '/1.0/networks/:name/forwards/:listen',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Remove a port forward (`listen` is ADDRESS:PORT)',
        params: Type.Object({ name: Type.String(), listen: Type.String() }),
        querystring: Type.Object({
          protocol: Type.Optional(Type.Union([Type.Literal('tcp'), Type.Literal('udp')])),
        }),
        response: { 200: SyncEnvelope(NetworkSchema), ...errors },
      },
    },
    async (request) => {
      const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(request.params.listen);
      if (!m) throw invalidArgument(`${JSON.stringify(request.params.listen)} is not ADDRESS:PORT`);
      return syncResponse(
        await networks(request).removeForward(request.params.name, {
          listenAddress: m[1] as string,
          listenPort: Number(m[2]),
          ...(request.query.protocol !== undefined && { protocol: request.query.protocol }),
        }),
      );
    },
  );

  app.post<{ Params: NameParams; Body: NetworkAclRuleBody }>(
    '/1.0/networks/:name/acls',
    {
      config: { access: 'operate' },
      schema: {
        summary: "Append an ACL rule to a network's rules",
        description:
          'Rules apply to every guest port of the network, in order; the first match decides; what no rule matches is allowed. Stateless.',
        params: NameParamsSchema,
        body: NetworkAclRuleSchema,
        response: { 200: SyncEnvelope(NetworkSchema), ...errors },
      },
    },
    async (request) => syncResponse(await networks(request).addAcl(request.params.name, request.body)),
  );

  app.delete<{ Params: NameParams & { index: number } }>(
    '/1.0/networks/:name/acls/:index',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Remove an ACL rule by its index (0-based, as listed)',
        params: Type.Object({ name: Type.String(), index: Type.Integer({ minimum: 0 }) }),
        response: { 200: SyncEnvelope(NetworkSchema), ...errors },
      },
    },
    async (request) =>
      syncResponse(await networks(request).removeAcl(request.params.name, request.params.index)),
  );

  app.post<{
    Params: NameParams;
    Body: {
      guest: string;
      nic?: string;
      hwaddr?: string;
      'ipv4.address'?: string;
      'limits.ingress'?: string;
      'limits.egress'?: string;
    };
  }>(
    '/1.0/networks/:name/attach',
    {
      config: { access: 'operate' },
      schema: {
        summary:
          'Give a guest a NIC on this network (hot-plugged into a running guest; nothing changes when that fails)',
        params: NameParamsSchema,
        body: Type.Object(
          {
            guest: Type.String(),
            nic: Type.Optional(Type.String({ description: 'Device name; default the first free ethN' })),
            hwaddr: Type.Optional(Type.String()),
            'ipv4.address': Type.Optional(Type.String()),
            'limits.ingress': Type.Optional(
              Type.String({ description: 'Bandwidth to the guest, e.g. 10Mbit' }),
            ),
            'limits.egress': Type.Optional(
              Type.String({ description: 'Bandwidth from the guest, e.g. 10Mbit' }),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: SyncEnvelope(NicChangeSchema), ...errors },
      },
    },
    async (request) => {
      const { guest, nic, ...device } = request.body;
      const options: Parameters<NetworkService['attach']>[2] = { device };
      if (nic !== undefined) options.nic = nic;
      // The live plug needs the guest's host: on its owner (decision 0028).
      return syncResponse(
        await onGuestOwner(ctx, request, guest, () =>
          networks(request).attach(request.params.name, guest, options),
        ),
      );
    },
  );

  app.post<{ Params: NameParams; Body: { guest: string; nic?: string } }>(
    '/1.0/networks/:name/detach',
    {
      config: { access: 'operate' },
      schema: {
        summary: "Remove a guest's NIC on this network (hot-unplugged from a running guest first)",
        params: NameParamsSchema,
        body: Type.Object(
          { guest: Type.String(), nic: Type.Optional(Type.String()) },
          { additionalProperties: false },
        ),
        response: { 200: SyncEnvelope(NicChangeSchema), ...errors },
      },
    },
    async (request) => {
      const { guest, nic } = request.body;
      return syncResponse(
        await onGuestOwner(ctx, request, guest, () =>
          networks(request).detach(request.params.name, guest, nic === undefined ? {} : { nic }),
        ),
      );
    },
  );

  app.delete<{ Params: NameParams }>(
    '/1.0/networks/:name',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Delete a network (refused while a NIC uses it)',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await networks(request).delete(request.params.name);
      return syncResponse({});
    },
  );
}
