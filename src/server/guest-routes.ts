import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { guestUrl, operationUrl, syncResponse } from '../api/envelopes.ts';
import {
  AsyncEnvelopeSchema,
  type ConsoleBody,
  ConsoleBodySchema,
  type ConsoleKeysBody,
  ConsoleKeysBodySchema,
  type CreateGuestBody,
  CreateGuestBodySchema,
  ErrorEnvelopeSchema,
  type ExecBody,
  ExecBodySchema,
  GuestSchema,
  type GuestStateResponse,
  GuestStateResponseSchema,
  NameParamsSchema,
  type PatchGuestBody,
  PatchGuestBodySchema,
  RecursionQuerySchema,
  type StateChangeBody,
  StateChangeBodySchema,
  SyncEnvelope,
} from '../api/schemas.ts';
import { RECORD_OUTPUT_MAX_BYTES } from '../api/types.ts';
import { cancelled, failedPrecondition, invalidArgument, notSupported } from '../core/errors.ts';
import type { ExecRequest, OperationContext, StateChangeRequest } from '../services/types.ts';
import { bridgeConsole, bridgeDisplay } from './console-bridge.ts';
import { bridgeExec, collectCapped, failExecSocket, type PendingExec } from './exec-bridge.ts';
import { isForwarded } from './forward.ts';
import { assertTarget, targetQuery, withMembersOwnView } from './member-lists.ts';
import { allProjectsOf, configChange, projectOf, type RouteContext, sendAsync } from './route-context.ts';

type NameParams = { name: string };

/** How often a followed console log is polled for growth. */
const CONSOLE_POLL_MS = 250;

/** `/1.0/guests...`: list, create, show, configure, delete, state, exec, console (log and attached). */
export function registerGuestRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { services } = ctx;
  /** The guests of the request's project: another project's guest is a 404. */
  const guestsOf = (request: FastifyRequest) => services.guests.inProject(projectOf(request));
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const asyncReply = { 202: AsyncEnvelopeSchema, ...errors };

  type ConnectedSocket = Awaited<ReturnType<PendingExec['connected']>>;
  /**
   * Starts an operation whose work runs over one WebSocket (exec, console): its
   * metadata carries `websocket`, the URL with a secret to connect to within
   * the connect timeout; `run` gets the socket once the client is there.
   */
  const startSocketOperation = (spec: {
    project: string;
    description: string;
    resources: Record<string, string[]>;
    metadata: Record<string, unknown>;
    run(socket: ConnectedSocket, opCtx: OperationContext): Promise<Record<string, unknown>>;
    /** Called when no client connected in time (or the operation was cancelled first). */
    onNoConnection?(): void;
  }) => {
    const secret = randomBytes(24).toString('hex');
    let handOver!: (pending: PendingExec) => void;
    const pendingReady = new Promise<PendingExec>((resolve) => {
      handOver = resolve;
    });
    let websocket = '';
    const op = services.operations.start({
      project: spec.project,
      description: spec.description,
      resources: spec.resources,
      mayCancel: true,
      async run(opCtx) {
        const pending = await pendingReady;
        opCtx.setMetadata({ ...spec.metadata, websocket });
        let socket: ConnectedSocket;
        try {
          socket = await pending.connected(ctx.execConnectTimeoutMs, opCtx.signal);
        } catch (e) {
          spec.onNoConnection?.();
          throw e;
        }
        return spec.run(socket, opCtx);
      },
    });
    websocket = `${operationUrl(op.id)}/websocket?secret=${secret}`;
    handOver(ctx.execs.register(op.id, secret));
    return { ...op, metadata: { ...op.metadata, ...spec.metadata, websocket } };
  };

  app.get<{ Querystring: { recursion?: number; target?: string } }>(
    '/1.0/guests',
    {
      config: { access: 'read' },
      schema: {
        summary: 'List guests',
        description:
          "recursion=0: URLs; 1: guests; 2: guests with usage, from the metric sampler's last sample (state.usage.sampledAt says when it was read; a guest not sampled in its current run yet is read live). On a cluster the list covers every member; target=MEMBER narrows it to that member's guests.",
        querystring: Type.Object({
          ...RecursionQuerySchema.properties,
          ...targetQuery(
            "On a cluster: only this member's guests (their `location`; default: every member's)",
          ),
        }),
        response: {
          200: SyncEnvelope(Type.Union([Type.Array(GuestSchema), Type.Array(Type.String())])),
          ...errors,
        },
      },
    },
    async (request) => {
      const recursion = request.query.recursion ?? 0;
      const { target } = request.query;
      await assertTarget(ctx, target);
      const options = { allProjects: allProjectsOf(request), ...(target !== undefined && { target }) };
      // URLs only: the names, with no guest record decoded (the index's keys, where it answers).
      if (recursion === 0)
        return syncResponse((await guestsOf(request).names(options)).map((name) => guestUrl(name)));
      const listed = await guestsOf(request).list({ ...options, withUsage: recursion >= 2 });
      // Live usage is its member's to say (decision 0034).
      const guests =
        recursion >= 2
          ? await withMembersOwnView(ctx, request, listed, (member) => {
              const query = new URLSearchParams(request.query as Record<string, string>);
              query.set('target', member);
              return `/1.0/guests?${query}`;
            })
          : listed;
      return syncResponse(guests);
    },
  );

  app.post<{ Body: CreateGuestBody; Querystring: { target?: string } }>(
    '/1.0/guests',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Create (and with start: true, launch) a guest',
        description:
          "On a cluster the scheduler places the guest on the member with the most free measured memory that can hold it; target=MEMBER places it there (Incus's ?target=).",
        querystring: Type.Object({
          target: Type.Optional(
            Type.String({
              maxLength: 63,
              description: 'On a cluster: the member to place the guest on (default: the scheduler picks it)',
            }),
          ),
        }),
        body: CreateGuestBodySchema,
        response: asyncReply,
      },
    },
    async (request, reply) => {
      const body = request.body;
      if (body.source?.type === 'copy') {
        if (!services.storage) {
          throw notSupported('This daemon cannot copy guests: it has no storage service');
        }
        const [source = '', snapshot, ...rest] = body.source.source.split('/');
        if (rest.length > 0) throw invalidArgument('A copy source is GUEST or GUEST/SNAPSHOT');
        // A copy is made where its source's files are: on the source's member (decision 0034).
        const place = await services.owner?.placeOf(source, { project: projectOf(request) });
        if (place && !place.here && ctx.forward && !isForwarded(request)) {
          await ctx.forward.replay(request, reply, place.member);
          return reply;
        }
        const op = await services.storage.inProject(projectOf(request)).copyGuest({
          name: body.name,
          source,
          ...(snapshot !== undefined && { snapshot }),
          ...(body.start !== undefined && { start: body.start }),
          ...(body.storage !== undefined && { storage: body.storage }),
        });
        return sendAsync(reply, op);
      }
      // Incus's source type none: no image, a blank disk (vm guests installed from an ISO).
      const none = body.source?.type === 'none';
      if (none && body.image !== undefined) {
        throw invalidArgument('Give either "image" or "source": {"type": "none"} (a blank disk), not both');
      }
      const image = none
        ? ''
        : (body.image ??
          (body.source?.type === 'image' ? (body.source.alias ?? body.source.fingerprint) : undefined));
      if (image === undefined) {
        throw invalidArgument(
          'Say which image to use: give "image" (or Incus\'s "source": {"type": "image", "alias": ...})',
        );
      }
      const create = {
        name: body.name,
        project: projectOf(request),
        image,
        ...(body.model !== undefined && { model: body.model }),
        ...(body.config !== undefined && { config: body.config }),
        ...(body.start !== undefined && { start: body.start }),
        ...(body.devices !== undefined && { devices: body.devices }),
        ...(request.query.target !== undefined && { target: request.query.target }),
      };
      if (body.storage !== undefined && body.storage !== 'default') {
        if (!services.pools) throw notSupported('This daemon has no storage pools: leave out "storage"');
        // A guest on a pool runs on the pool's member (decision 0034): made there.
        const place = await services.owner?.placeOfStorage(body.storage, undefined, request.query.target);
        // A pool every member has (decision 0038): the scheduler picks the member, which makes it.
        const guests = guestsOf(request);
        if (place?.here && place.anyMember && ctx.forward && !isForwarded(request) && guests.placementFor) {
          const where = await guests.placementFor(create);
          if (where.member !== ctx.forward.here) {
            const query = new URLSearchParams(request.query as Record<string, string>);
            query.set('target', where.member);
            await ctx.forward.replay(request, reply, where.member, `/1.0/guests?${query}`);
            return reply;
          }
        }
        if (place && !place.here) {
          const target = request.query.target;
          if (target !== undefined && target !== place.member) {
            throw failedPrecondition(
              `Storage pool ${body.storage} is on member ${place.member}: a guest on it runs there; leave out the target or name ${place.member}`,
            );
          }
          if (ctx.forward && !isForwarded(request)) {
            await ctx.forward.replay(request, reply, place.member);
            return reply;
          }
        }
        return sendAsync(reply, await services.pools.createGuest(body.storage, create));
      }
      const op = await guestsOf(request).create(create);
      return sendAsync(reply, op);
    },
  );

  app.get<{ Params: NameParams }>(
    '/1.0/guests/:name',
    {
      config: { access: 'read' },
      schema: {
        summary: 'Show a guest, with live usage',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(GuestSchema), ...errors },
      },
    },
    async (request) => syncResponse(await guestsOf(request).get(request.params.name, { withUsage: true })),
  );

  app.patch<{ Params: NameParams; Body: PatchGuestBody }>(
    '/1.0/guests/:name',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Set and unset config keys',
        description:
          'Keys in `config` are set; keys with a null value and keys in `unset` are removed. Live keys apply at once; `pendingRestart` lists the keys that wait for a restart.',
        params: NameParamsSchema,
        body: PatchGuestBodySchema,
        response: {
          200: SyncEnvelope(Type.Object({ guest: GuestSchema, pendingRestart: Type.Array(Type.String()) })),
          ...errors,
        },
      },
    },
    async (request) => {
      return syncResponse(
        await guestsOf(request).updateConfig(request.params.name, configChange(request.body)),
      );
    },
  );

  app.delete<{ Params: NameParams; Querystring: { force?: boolean } }>(
    '/1.0/guests/:name',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Delete a guest (force: stop it first when running)',
        params: NameParamsSchema,
        querystring: Type.Object({ force: Type.Optional(Type.Boolean()) }),
        response: asyncReply,
      },
    },
    async (request, reply) => {
      const op = await guestsOf(request).delete(request.params.name, { force: request.query.force === true });
      return sendAsync(reply, op);
    },
  );

  app.get<{ Params: NameParams }>(
    '/1.0/guests/:name/state',
    {
      config: { access: 'read' },
      schema: {
        summary: 'Status and live state of a guest',
        params: NameParamsSchema,
        response: { 200: SyncEnvelope(GuestStateResponseSchema), ...errors },
      },
    },
    async (request) => {
      const g = await guestsOf(request).get(request.params.name, { withUsage: true });
      const state: GuestStateResponse = { status: g.status, ...g.state };
      if (g.error !== undefined) state.error = g.error;
      return syncResponse(state);
    },
  );

  app.put<{ Params: NameParams; Body: StateChangeBody }>(
    '/1.0/guests/:name/state',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Start, stop, restart, freeze or unfreeze a guest',
        params: NameParamsSchema,
        body: StateChangeBodySchema,
        response: asyncReply,
      },
    },
    async (request, reply) => {
      const body = request.body;
      const change: StateChangeRequest = { action: body.action };
      if (body.timeout !== undefined) change.timeout = body.timeout;
      if (body.force !== undefined) change.force = body.force;
      return sendAsync(reply, await guestsOf(request).changeState(request.params.name, change));
    },
  );

  app.post<{ Params: NameParams; Body: ExecBody }>(
    '/1.0/guests/:name/exec',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Run a command in a running guest',
        description:
          'wait-for-websocket: the operation metadata has `websocket`, the URL to connect to within 30 s (protocol in docs/api.md). record-output: stdin is closed and the operation ends with metadata {return, stdout, stderr}. Otherwise the output is discarded and metadata.return is the exit code.',
        params: NameParamsSchema,
        body: ExecBodySchema,
        response: asyncReply,
      },
    },
    async (request, reply) => {
      const name = request.params.name;
      const body = request.body;
      const guests = guestsOf(request);
      const guest = await guests.get(name);
      if (guest.status !== 'Running') {
        throw failedPrecondition(`Guest ${name} is ${guest.status.toLowerCase()}: start it first`);
      }
      const exec: ExecRequest = { command: body.command, interactive: body.interactive === true };
      if (body.environment) exec.environment = body.environment;
      if (body.cwd !== undefined) exec.cwd = body.cwd;
      if (body.width !== undefined) exec.width = body.width;
      if (body.height !== undefined) exec.height = body.height;
      if (body.user !== undefined) exec.user = body.user;
      if (body.group !== undefined) exec.group = body.group;
      const description = `Executing command in guest ${name}`;
      const resources = { guests: [guestUrl(name)] };

      if (body['wait-for-websocket']) {
        const op = startSocketOperation({
          project: guest.project,
          description,
          resources,
          metadata: { command: body.command },
          async run(socket, opCtx) {
            let session: Awaited<ReturnType<typeof guests.exec>>;
            try {
              session = await guests.exec(name, exec);
            } catch (e) {
              failExecSocket(socket, e);
              throw e;
            }
            const code = await bridgeExec(socket, session, { signal: opCtx.signal });
            if (opCtx.signal.aborted) throw cancelled('The command was killed: its operation was cancelled');
            return { return: code };
          },
        });
        return sendAsync(reply, op);
      }

      // Without a websocket stdin is closed at once; output is recorded or dropped.
      const session = await guests.exec(name, exec);
      session.stdin.on('error', () => {});
      session.stdin.end();
      const record = body['record-output'] === true;
      const op = services.operations.start({
        project: guest.project,
        description,
        resources,
        mayCancel: true,
        async run(opCtx) {
          const kill = () => session.signal('SIGKILL');
          opCtx.signal.addEventListener('abort', kill, { once: true });
          const [stdout, stderr, code] = await Promise.all([
            collectCapped(session.stdout, record ? RECORD_OUTPUT_MAX_BYTES : 0),
            collectCapped(session.stderr, record ? RECORD_OUTPUT_MAX_BYTES : 0),
            session.exit,
          ]);
          opCtx.signal.removeEventListener('abort', kill);
          if (opCtx.signal.aborted) throw cancelled('The command was killed: its operation was cancelled');
          return record ? { return: code, stdout, stderr } : { return: code };
        },
      });
      return sendAsync(reply, op);
    },
  );

  app.get<{ Params: NameParams; Querystring: { type?: string } }>(
    '/1.0/guests/:name/console',
    {
      config: { access: 'operate' },
      schema: {
        summary: "The guest's console log (text/plain)",
        params: NameParamsSchema,
        querystring: Type.Object({ type: Type.Optional(Type.Literal('log')) }),
        produces: ['text/plain'],
        response: { 200: Type.String(), ...errors },
      },
    },
    async (request, reply) => {
      const path = await guestsOf(request).consoleLogPath(request.params.name);
      reply.type('text/plain; charset=utf-8');
      const exists = await stat(path).then(
        (s) => s.isFile(),
        () => false,
      );
      return exists ? reply.send(createReadStream(path)) : '';
    },
  );

  app.post<{ Params: NameParams; Body: ConsoleBody }>(
    '/1.0/guests/:name/console',
    {
      config: { access: 'operate' },
      schema: {
        summary: "Attach to a guest's console: input and output over a WebSocket (vm and pvm)",
        description:
          "The operation's metadata has `websocket`, the URL to connect to within 30 s; binary frames carry console bytes both ways (docs/api.md). The operation runs while attached and ends when the client closes the WebSocket, the operation is cancelled or the guest stops. ct guests answer NotSupported: their console takes no input. One attachment per guest at a time (Conflict).",
        params: NameParamsSchema,
        body: ConsoleBodySchema,
        response: asyncReply,
      },
    },
    async (request, reply) => {
      const name = request.params.name;
      const vga = request.body?.type === 'vga';
      // Attached before the operation exists, so that a guest that cannot be attached is this request's error.
      const stream = vga
        ? await guestsOf(request).attachDisplay(name)
        : await guestsOf(request).attachConsole(name);
      stream.on('error', () => {});
      const op = startSocketOperation({
        project: projectOf(request),
        description: vga
          ? `Attached to the display of guest ${name}`
          : `Attached to the console of guest ${name}`,
        resources: { guests: [guestUrl(name)] },
        metadata: vga ? { type: 'vga', protocol: 'rfb' } : {},
        async run(socket, opCtx) {
          const bridge = vga ? bridgeDisplay : bridgeConsole;
          return { ended: await bridge(socket, stream, { signal: opCtx.signal }) };
        },
        onNoConnection: () => stream.destroy(),
      });
      return sendAsync(reply, op);
    },
  );

  app.get<{ Params: NameParams }>(
    '/1.0/guests/:name/console/screenshot',
    {
      config: { access: 'operate' },
      schema: {
        summary: "A running vm guest's screen as a PNG image (QEMU's screendump)",
        params: NameParamsSchema,
        produces: ['image/png'],
        response: { 200: Type.Unsafe({ type: 'string', format: 'binary' }), ...errors },
      },
    },
    async (request, reply) => {
      const png = await guestsOf(request).screenshot(request.params.name);
      return reply.type('image/png').send(png);
    },
  );

  app.post<{ Params: NameParams; Body: ConsoleKeysBody }>(
    '/1.0/guests/:name/console/keys',
    {
      config: { access: 'operate' },
      schema: {
        summary: "Press keys on a running vm guest's keyboard: combinations, then text typed key by key",
        params: NameParamsSchema,
        body: ConsoleKeysBodySchema,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await guestsOf(request).sendKeys(request.params.name, {
        ...(request.body.keys !== undefined && { combos: request.body.keys }),
        ...(request.body.text !== undefined && { text: request.body.text }),
      });
      return syncResponse({});
    },
  );

  app.get<{ Params: NameParams }>(
    '/1.0/guests/:name/console/follow',
    {
      config: { access: 'operate' },
      websocket: true,
      schema: {
        summary: 'Console log as it grows (WebSocket, binary frames of log bytes; output only)',
        params: NameParamsSchema,
        response: errors,
      },
      preValidation: async (request) => {
        await guestsOf(request).consoleLogPath((request.params as NameParams).name);
      },
    },
    async (socket, request) => {
      socket.on('message', () => {});
      const path = await guestsOf(request).consoleLogPath(request.params.name);
      let offset = 0;
      let closed = false;
      socket.on('close', () => {
        closed = true;
      });
      const buffer = Buffer.alloc(64 * 1024);
      while (!closed) {
        const handle = await open(path, 'r').catch(() => null);
        if (handle) {
          try {
            const size = (await handle.stat()).size;
            if (size < offset) offset = 0; // the log was truncated or replaced: start again
            while (!closed && offset < size && socket.bufferedAmount < 1024 * 1024) {
              const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
              if (bytesRead === 0) break;
              offset += bytesRead;
              socket.send(Buffer.from(buffer.subarray(0, bytesRead)), { binary: true });
            }
          } finally {
            await handle.close();
          }
        }
        await new Promise((r) => setTimeout(r, CONSOLE_POLL_MS));
      }
    },
  );
}
