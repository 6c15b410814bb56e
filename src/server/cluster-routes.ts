import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import {
  type BootstrapBody,
  BootstrapBodySchema,
  ClusterInfoSchema,
  ClusterMemberSchema,
  ClusterMoveSchema,
  type ClusterSettingsPatch,
  ClusterSettingsPatchSchema,
  ClusterSettingsSchema,
  type CreateJoinTokenBody,
  CreateJoinTokenBodySchema,
  EvacuateModeSchema,
  JoinAnswerSchema,
  type JoinBody,
  JoinBodySchema,
  type JoinRequestBody,
  JoinRequestBodySchema,
  JoinTokenSchema,
  RebalanceBodySchema,
  RebalanceResultSchema,
} from '../api/cluster-schemas.ts';
import { syncResponse } from '../api/envelopes.ts';
import { AsyncEnvelopeSchema, ErrorEnvelopeSchema, NameParamsSchema, SyncEnvelope } from '../api/schemas.ts';
import type { ClusterService } from '../cluster/membership.ts';
import type { RebalanceService } from '../control/rebalance-controller.ts';
import { describeCaller } from '../core/access.ts';
import { parseDurationMs } from '../core/durations.ts';
import { failedPrecondition } from '../core/errors.ts';
import type { EvacuateMode } from '../core/types.ts';
import { type RouteContext, sendAsync } from './route-context.ts';

/** `/1.0/cluster…`: membership (decision 0032). */
export function registerClusterRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const cluster = (): ClusterService => {
    if (!ctx.services.cluster) throw failedPrecondition('This daemon cannot form or join a cluster');
    return ctx.services.cluster;
  };
  const rebalance = (): RebalanceService => {
    if (!ctx.services.rebalance)
      throw failedPrecondition('This daemon is not a cluster member: there is nothing to rebalance');
    return ctx.services.rebalance;
  };

  // The rebalancer (decision 0053): cluster-wide keys, the moves it made, a cycle on demand.
  app.get(
    '/1.0/cluster/config',
    {
      config: { access: 'host-read' },
      schema: {
        summary: 'The cluster-wide settings (cluster.rebalance.*)',
        response: { 200: SyncEnvelope(ClusterSettingsSchema), ...errors },
      },
    },
    async () => syncResponse({ config: await rebalance().settings() }),
  );

  app.patch<{ Body: ClusterSettingsPatch }>(
    '/1.0/cluster/config',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Set or unset cluster-wide settings (cluster.rebalance.*)',
        description: 'Every key is checked first: one bad key or value changes nothing (400).',
        body: ClusterSettingsPatchSchema,
        response: { 200: SyncEnvelope(ClusterSettingsSchema), ...errors },
      },
    },
    async (request) => syncResponse({ config: await rebalance().updateSettings(request.body.config) }),
  );

  app.get(
    '/1.0/cluster/moves',
    {
      config: { access: 'host-read' },
      schema: {
        summary: "The rebalancer's recent moves, newest first, each explained",
        description:
          'Imbalance before and after, the predicted benefit, the cost and the constraints that applied; the last 100 are kept.',
        response: { 200: SyncEnvelope(Type.Array(ClusterMoveSchema)), ...errors },
      },
    },
    async () => syncResponse(await rebalance().moves()),
  );

  app.post<{ Body: { dryRun?: boolean } }>(
    '/1.0/cluster/rebalance',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Run one rebalancing cycle now, or plan one (dryRun)',
        description:
          'Answers once the planned moves are made, one at a time (a dry run moves nothing). 409 while another cycle runs.',
        body: RebalanceBodySchema,
        response: { 200: SyncEnvelope(RebalanceResultSchema), ...errors },
      },
    },
    async (request) => syncResponse(await rebalance().run({ dryRun: request.body?.dryRun === true })),
  );

  // Members fetch the image trees they lack from each other (decision 0034): a tar of the tree,
  // with the digest the copy must have. Admins only: a tree holds setuid files as they are.
  app.get<{ Params: { fingerprint: string } }>(
    '/1.0/cluster/image-trees/:fingerprint',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: "An image's tree as a tar, for a member that lacks it",
        params: Type.Object({ fingerprint: Type.String({ pattern: '^[0-9a-f]{64}$' }) }),
        response: {
          200: Type.Unsafe({
            description: 'A tar of the tree (X-Trivisor-Tree-Digest: what it must hash to)',
          }),
          '4xx': ErrorEnvelopeSchema,
          '5xx': ErrorEnvelopeSchema,
        },
      },
    },
    async (request, reply) => {
      const tree = await ctx.services.images.exportTree(request.params.fingerprint);
      // A tar that fails half-way cuts the answer short: the receiver refuses what it got.
      tree.done.catch((e: unknown) => tree.stream.destroy(e as Error));
      return reply
        .header('x-trivisor-tree-digest', tree.treeDigest)
        .header('x-trivisor-image-metadata', Buffer.from(JSON.stringify(tree.metadata)).toString('base64url'))
        .type('application/x-tar')
        .send(tree.stream);
    },
  );

  // A disk image's stored qcow2, for a member that lacks it (decision 0034): its bytes as they
  // are, with the sha256 the copy must have (the image record holds it too).
  app.get<{ Params: { fingerprint: string } }>(
    '/1.0/cluster/image-disks/:fingerprint',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: "A disk image's stored qcow2, for a member that lacks it",
        params: Type.Object({ fingerprint: Type.String({ pattern: '^[0-9a-f]{64}$' }) }),
        response: {
          200: Type.Unsafe({
            description: 'The qcow2 (X-Trivisor-Disk-Digest: the sha256 its bytes must have)',
          }),
          '4xx': ErrorEnvelopeSchema,
          '5xx': ErrorEnvelopeSchema,
        },
      },
    },
    async (request, reply) => {
      const disk = await ctx.services.images.exportDisk(request.params.fingerprint);
      return reply
        .header('x-trivisor-disk-digest', disk.diskDigest)
        .header('x-trivisor-image-metadata', Buffer.from(JSON.stringify(disk.metadata)).toString('base64url'))
        .header('content-length', String(disk.sizeBytes))
        .type('application/octet-stream')
        .send(disk.stream);
    },
  );

  app.get(
    '/1.0/cluster',
    {
      config: { access: 'host-read' },
      schema: {
        summary: 'Whether this daemon is a cluster member, and which',
        response: { 200: SyncEnvelope(ClusterInfoSchema), ...errors },
      },
    },
    async () => syncResponse(await cluster().info()),
  );

  app.post<{ Body: BootstrapBody }>(
    '/1.0/cluster/bootstrap',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Make this single host the first member of a new cluster',
        description:
          'Makes the cluster CA and this member’s certificate, starts an etcd member (or uses `etcd`), and answers; the daemon then restarts on etcd with every record of its store moved there. Guests keep running.',
        body: BootstrapBodySchema,
        response: { 200: SyncEnvelope(ClusterInfoSchema), ...errors },
      },
    },
    async (request) => {
      const { address, etcd } = request.body;
      return syncResponse(await cluster().bootstrap({ address, ...(etcd !== undefined && { etcd }) }));
    },
  );

  app.post<{ Body: CreateJoinTokenBody }>(
    '/1.0/cluster/tokens',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'A single-use join token for a new member',
        description: 'The answer holds the token, once: only a hash of its secret is stored.',
        body: CreateJoinTokenBodySchema,
        response: { 200: SyncEnvelope(JoinTokenSchema), ...errors },
      },
    },
    async (request) => {
      const { name, expiry } = request.body;
      const made = await cluster().createJoinToken(name, {
        ...(expiry !== undefined && { ttlMs: parseDurationMs(expiry, 'token expiry') }),
        createdBy: request.caller ? describeCaller(request.caller) : 'nobody',
      });
      return syncResponse(made);
    },
  );

  app.post<{ Body: JoinBody }>(
    '/1.0/cluster/join',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Join this host to the cluster a join token names',
        description:
          'The host must hold no guests, custom volumes or networks. It gets a member certificate from the cluster, an etcd member when the cluster has fewer than three, and answers; the daemon then restarts on the cluster’s store.',
        body: JoinBodySchema,
        response: { 200: SyncEnvelope(ClusterInfoSchema), ...errors },
      },
    },
    async (request) => syncResponse(await cluster().join(request.body)),
  );

  app.get(
    '/1.0/cluster/members',
    {
      config: { access: 'host-read' },
      schema: {
        summary: 'The members, with their status, roles, guests and measured usage',
        response: { 200: SyncEnvelope(Type.Array(ClusterMemberSchema)), ...errors },
      },
    },
    async () => {
      const members = await cluster().list();
      // HA as the CRM sees it, with admission control's warning (decision 0052).
      const ha = await ctx.services.haSummary?.(members);
      return syncResponse(members.map((m) => ({ ...m, ...(ha?.has(m.name) && { ha: ha.get(m.name) }) })));
    },
  );

  app.post<{ Body: JoinRequestBody }>(
    '/1.0/cluster/members',
    {
      // The joining host has no credentials yet: the token's secret is what it proves itself with.
      config: { access: 'public' },
      schema: {
        summary: 'A joining host asks to become a member (what trivisor cluster join sends a member)',
        body: JoinRequestBodySchema,
        response: { 200: SyncEnvelope(JoinAnswerSchema), ...errors },
      },
    },
    async (request) => syncResponse(await cluster().acceptJoin(request.body)),
  );

  app.get<{ Params: { name: string } }>(
    '/1.0/cluster/members/:name',
    {
      config: { access: 'host-read' },
      schema: {
        summary: 'One member',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(ClusterMemberSchema), ...errors },
      },
    },
    async (request) => syncResponse(await cluster().get(request.params.name)),
  );

  // Evacuate or restore a member (Incus's shape, decision 0041): recorded here, carried out by the
  // members' evacuation controllers; the operation follows their progress in the records.
  app.post<{ Params: { name: string }; Body: { action: 'evacuate' | 'restore'; mode?: EvacuateMode } }>(
    '/1.0/cluster/members/:name/state',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Evacuate a member (its guests move away or stop; it gets no new ones) or restore it',
        params: NameParamsSchema,
        body: Type.Object(
          {
            action: Type.Union([Type.Literal('evacuate'), Type.Literal('restore')]),
            mode: Type.Optional(EvacuateModeSchema),
          },
          { additionalProperties: false },
        ),
        response: { 202: AsyncEnvelopeSchema, ...errors },
      },
    },
    async (request, reply) =>
      sendAsync(reply, await cluster().changeMemberState(request.params.name, request.body)),
  );

  app.delete<{ Params: { name: string }; Querystring: { force?: boolean } }>(
    '/1.0/cluster/members/:name',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Remove a member (refused while it holds guests, unless force)',
        params: NameParamsSchema,
        querystring: Type.Object({ force: Type.Optional(Type.Boolean()) }),
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await cluster().remove(request.params.name, { force: request.query.force === true });
      return syncResponse({});
    },
  );
}
