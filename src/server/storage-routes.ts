import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { BackupDirectoryArchiveSchema, type BackupDirectoryArchiveWire } from '../api/backup-schemas.ts';
import { syncResponse } from '../api/envelopes.ts';
import { FOLLOW_CONTENT_TYPE } from '../api/follow-frames.ts';
import {
  AsyncEnvelopeSchema,
  ErrorEnvelopeSchema,
  RecursionQuerySchema,
  SyncEnvelope,
} from '../api/schemas.ts';
import { invalidArgument, notFound, notSupported } from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import { GuardedUpload, readArchiveHead, uploadFault } from '../services/archive-stream.ts';
import {
  type BackupDirectoryArchive,
  getBackupDirectoryArchive,
  importFromBackupDirectory,
  listBackupDirectory,
} from '../services/backup-directory.ts';
import type { BackupFollow } from '../services/storage-backups.ts';
import type { StorageService } from '../services/storage-service.ts';
import { sendFileBody, sendFollowedFile } from './file-response.ts';
import { receiveToFile } from './file-upload.ts';
import { assertTarget, targetQuery } from './member-lists.ts';
import { projectOf, type RouteContext, sendAsync } from './route-context.ts';

/** True when A and B are one type, not merely assignable to each other (an optional field more is not). */
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** Waits for a backup's export to end: its size, or its failure thrown. */
async function exportEnd(follow: BackupFollow): Promise<{ sizeBytes: number }> {
  for (;;) {
    const status = follow.status();
    if (status.state === 'done') return status;
    if (status.state === 'failed') throw status.error;
    await follow.changed(1000);
  }
}

/** Largest backup archive accepted by import. */
export const BACKUP_UPLOAD_LIMIT_BYTES = 64 * 1024 ** 3;

const SnapshotSchema = Type.Object({
  name: Type.String(),
  guest: Type.String(),
  createdAt: Type.String(),
  wasRunning: Type.Boolean(),
  expiresAt: Type.Optional(
    Type.String({ description: "When a scheduled snapshot is deleted (its guest's snapshots.expiry)" }),
  ),
});
const NameParams = Type.Object({ name: Type.String() });
const SnapshotParams = Type.Object({ name: Type.String(), snapshot: Type.String() });
const BackupParams = Type.Object({ name: Type.String(), backup: Type.String() });

type Name = { name: string };
type Snap = { name: string; snapshot: string };
type Backup = { name: string; backup: string };

/**
 * Snapshots, restore, backups and backup import (Incus's shapes): registered in
 * its own plugin scope because the import takes a raw streamed body.
 */
export function registerStorageRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };
  const asyncReply = { 202: AsyncEnvelopeSchema, ...errors };
  /** Storage of the request's project (another project's guest is a 404); the host's view without one. */
  const storage = (request?: FastifyRequest): StorageService => {
    const s = ctx.services.storage;
    if (!s) throw notSupported('This daemon has no storage service: snapshots and backups are unavailable');
    return request ? s.inProject(projectOf(request)) : s;
  };

  app.addContentTypeParser(
    ['application/octet-stream', 'application/zstd'],
    { bodyLimit: BACKUP_UPLOAD_LIMIT_BYTES },
    (_request, payload, done) => done(null, payload),
  );

  app.get<{ Params: Name; Querystring: { recursion?: number } }>(
    '/1.0/guests/:name/snapshots',
    {
      config: { access: 'read' },
      schema: {
        summary: "List a guest's snapshots",
        params: NameParams,
        querystring: RecursionQuerySchema,
        response: {
          200: SyncEnvelope(Type.Union([Type.Array(SnapshotSchema), Type.Array(Type.String())])),
          ...errors,
        },
      },
    },
    async (request) => {
      const list = await storage(request).listSnapshots(request.params.name);
      return syncResponse(
        (request.query.recursion ?? 0) === 0
          ? list.map((s) => `/1.0/guests/${request.params.name}/snapshots/${s.name}`)
          : list,
      );
    },
  );

  app.post<{ Params: Name; Body: { name: string } }>(
    '/1.0/guests/:name/snapshots',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Snapshot a guest (running guests are frozen while their state is copied)',
        params: NameParams,
        body: Type.Object({ name: Type.String() }, { additionalProperties: false }),
        response: asyncReply,
      },
    },
    async (request, reply) =>
      sendAsync(reply, await storage(request).createSnapshot(request.params.name, request.body.name)),
  );

  app.get<{ Params: Snap }>(
    '/1.0/guests/:name/snapshots/:snapshot',
    {
      config: { access: 'read' },
      schema: {
        summary: 'Show a snapshot',
        params: SnapshotParams,
        response: { 200: SyncEnvelope(SnapshotSchema), ...errors },
      },
    },
    async (request) =>
      syncResponse(await storage(request).getSnapshot(request.params.name, request.params.snapshot)),
  );

  app.delete<{ Params: Snap }>(
    '/1.0/guests/:name/snapshots/:snapshot',
    {
      config: { access: 'operate' },
      schema: { summary: 'Delete a snapshot', params: SnapshotParams, response: asyncReply },
    },
    async (request, reply) =>
      sendAsync(reply, await storage(request).deleteSnapshot(request.params.name, request.params.snapshot)),
  );

  app.put<{ Params: Name; Body: { restore: string } }>(
    '/1.0/guests/:name',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Restore a guest to a snapshot (Incus: PUT with {"restore": SNAPSHOT})',
        description: 'A running guest is stopped, rolled back, and started again.',
        params: NameParams,
        body: Type.Object({ restore: Type.String() }, { additionalProperties: false }),
        response: asyncReply,
      },
    },
    async (request, reply) =>
      sendAsync(reply, await storage(request).restoreSnapshot(request.params.name, request.body.restore)),
  );

  app.post<{
    Params: Name;
    Body: { name?: string; snapshots?: boolean; incremental?: boolean; uncompressed?: boolean };
  }>(
    '/1.0/guests/:name/backups',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Make a backup archive of a guest (download it from …/backups/BACKUP/export)',
        description:
          "The operation metadata names the backup (`backup`) once it is done; `name` (`backup-` and 16 hex digits, as Incus takes a name) picks it beforehand, so that the download can follow the archive while it is written (`export?follow=true`). `incremental`: the next link of the guest's backup chain, only what changed since its last one (the first is full); the metadata then has `incremental: {chain, sequence, kind}`. `uncompressed` (vm guests): the disk stored plain, which `import --live` reads in place (decision 0063).",
        params: NameParams,
        body: Type.Object(
          {
            name: Type.Optional(Type.String({ description: "The backup's name: backup- and 16 hex digits" })),
            snapshots: Type.Optional(Type.Boolean()),
            incremental: Type.Optional(Type.Boolean()),
            uncompressed: Type.Optional(Type.Boolean()),
          },
          { additionalProperties: false },
        ),
        response: asyncReply,
      },
    },
    async (request, reply) =>
      sendAsync(
        reply,
        await storage(request).createBackup(request.params.name, {
          ...(request.body?.name !== undefined && { name: request.body.name }),
          withSnapshots: request.body?.snapshots === true,
          incremental: request.body?.incremental === true,
          ...(request.body?.uncompressed === true && { uncompressed: true }),
        }),
      ),
  );

  app.get<{ Params: Backup; Querystring: { follow?: boolean } }>(
    '/1.0/guests/:name/backups/:backup/export',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Download a backup archive (tar + zstd)',
        description: `A backup still being written is sent once its export has ended (its failure is this request's error), or, with \`follow=true\`, while it is written: the body is then ${FOLLOW_CONTENT_TYPE} frames (src/api/follow-frames.ts), each bytes at an offset of the archive, ending with the archive's size or the export's failure.`,
        params: BackupParams,
        querystring: Type.Object({
          follow: Type.Optional(
            Type.Boolean({ description: 'Send the archive as it is written, in frames (issue 20 §1)' }),
          ),
        }),
        response: { 200: Type.Unsafe({ description: 'The archive bytes' }), ...errors },
      },
    },
    async (request, reply) => {
      const follow = await storage(request).followBackup(request.params.name, request.params.backup);
      if (request.query.follow === true) {
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': FOLLOW_CONTENT_TYPE });
        // The head is sent: the frames say the rest, a failed export included.
        await sendFollowedFile(follow, reply.raw).catch(() => reply.raw.destroy());
        return;
      }
      const end = await exportEnd(follow);
      const handle = await follow.open();
      if (!handle) throw notFound(`Guest ${request.params.name} has no backup ${request.params.backup}`);
      // Sent by hand through two reused buffers, not a stream's buffer per read (decision 0072).
      reply.hijack();
      try {
        reply.raw.writeHead(200, {
          'content-type': 'application/octet-stream',
          'content-length': String(end.sizeBytes),
        });
        await sendFileBody(handle, reply.raw, end.sizeBytes);
      } catch {
        // The head is sent: a body cut short is all the client can be told.
        reply.raw.destroy();
      } finally {
        await handle.close();
      }
    },
  );

  app.delete<{ Params: Backup }>(
    '/1.0/guests/:name/backups/:backup',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'Delete a backup archive',
        params: BackupParams,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await storage(request).deleteBackup(request.params.name, request.params.backup);
      return syncResponse({});
    },
  );

  const pools = () => {
    const p = ctx.services.pools;
    if (!p) throw notSupported('This daemon has no storage pools');
    return p;
  };
  const PoolSchema = Type.Object({
    name: Type.String(),
    driver: Type.Union([Type.Literal('dir'), Type.Literal('btrfs')]),
    description: Type.String(),
    config: Type.Record(Type.String(), Type.String()),
    createdAt: Type.String(),
    location: Type.Optional(Type.String({ description: 'The member whose disks hold it' })),
    path: Type.String(),
    status: Type.Union([
      Type.Literal('Created'),
      Type.Literal('Unavailable'),
      Type.Literal('Pending'),
      Type.Literal('Errored'),
    ]),
    error: Type.Optional(Type.String()),
    everyMember: Type.Optional(
      Type.Boolean({ description: 'Defined on every member of the cluster, each with its own instance' }),
    ),
    shared: Type.Optional(
      Type.Boolean({
        description:
          'One directory (source) every member sees at the same path: any member can run its guests (decision 0049)',
      }),
    ),
    marker: Type.Optional(
      Type.String({
        description: "A shared pool's id, also at its root: each member checks it reads it there",
      }),
    ),
    members: Type.Optional(
      Type.Array(
        Type.Object({
          name: Type.String(),
          status: Type.Union([Type.Literal('Created'), Type.Literal('Errored'), Type.Literal('Pending')]),
          error: Type.Optional(Type.String()),
        }),
        { description: "A pool on every member: each member's instance (usage is the answering member's)" },
      ),
    ),
    usage: Type.Union([Type.Object({ totalBytes: Type.Number(), usedBytes: Type.Number() }), Type.Null()]),
    guests: Type.Optional(
      Type.Array(
        Type.Object({
          name: Type.String(),
          usedBytes: Type.Union([Type.Number(), Type.Null()]),
          exclusiveBytes: Type.Union([Type.Number(), Type.Null()]),
          limitBytes: Type.Union([Type.Number(), Type.Null()]),
        }),
      ),
    ),
  });

  app.get<{ Querystring: { recursion?: number } }>(
    '/1.0/storage-pools',
    {
      config: { access: 'host-read' },
      schema: {
        summary: 'List storage pools',
        querystring: RecursionQuerySchema,
        response: {
          200: SyncEnvelope(Type.Union([Type.Array(PoolSchema), Type.Array(Type.String())])),
          ...errors,
        },
      },
    },
    async (request) => {
      const list = await pools().list();
      return syncResponse(
        (request.query.recursion ?? 0) === 0 ? list.map((p) => `/1.0/storage-pools/${p.name}`) : list,
      );
    },
  );

  app.post<{
    Body: { name: string; driver: string; description?: string; config?: Record<string, string> };
    Querystring: { target?: string };
  }>(
    '/1.0/storage-pools',
    {
      config: { access: 'host-admin' },
      schema: {
        summary:
          'Create a storage pool (dir, or btrfs on a loop file of config size or on a block device source); on a cluster on every member, or only on the one target= names; config shared=true (dir with a source, on a cluster): one directory every member sees',
        querystring: Type.Object(
          targetQuery(
            'On a cluster: make the pool on this member alone, the request passed on to it (default: on every member)',
          ),
        ),
        body: Type.Object(
          {
            name: Type.String(),
            driver: Type.String(),
            description: Type.Optional(Type.String()),
            config: Type.Optional(Type.Record(Type.String(), Type.String())),
          },
          { additionalProperties: false },
        ),
        response: { 200: SyncEnvelope(PoolSchema), ...errors },
      },
    },
    async (request) => {
      // Another member's pool was passed on before its body was read (decision 0034).
      await assertTarget(ctx, request.query.target);
      return syncResponse(
        await pools().create(
          request.body,
          request.query.target !== undefined ? { target: request.query.target } : {},
        ),
      );
    },
  );

  app.get<{ Params: Name; Querystring: { target?: string } }>(
    '/1.0/storage-pools/:name',
    {
      config: { access: 'host-read' },
      schema: {
        summary: 'Show a storage pool with its space',
        description:
          "A pool on every member of a cluster shows each member's state and the space of the answering member's instance: target= asks that member.",
        params: NameParams,
        querystring: Type.Object(
          targetQuery(
            "On a cluster, for a pool on every member or the default pool: the member whose instance is shown, asked of it (default: the one asked); another pool is its member's",
          ),
        ),
        response: { 200: SyncEnvelope(PoolSchema), ...errors },
      },
    },
    async (request) => {
      // Another member's instance was asked for there (decision 0038); an unknown member is a 404.
      await assertTarget(ctx, request.query.target);
      return syncResponse(await pools().get(request.params.name));
    },
  );

  app.delete<{ Params: Name }>(
    '/1.0/storage-pools/:name',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Delete a storage pool (refused while it holds guests or volumes)',
        params: NameParams,
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request) => {
      await pools().delete(request.params.name);
      return syncResponse({});
    },
  );

  app.post(
    '/1.0/admin/recover',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'Rebuild lost guest records from the guests directories (guests/NAME/guest.json)',
        description: 'Running guests are adopted as they run; nothing is started or stopped.',
        response: {
          200: SyncEnvelope(
            Type.Object({
              recovered: Type.Array(
                Type.Object({
                  name: Type.String(),
                  model: Type.String(),
                  status: Type.String(),
                  snapshots: Type.Array(Type.String()),
                  pool: Type.Optional(Type.String({ description: 'Storage pool, when not the default one' })),
                }),
              ),
              skipped: Type.Array(Type.Object({ name: Type.String(), reason: Type.String() })),
            }),
          ),
          ...errors,
        },
      },
    },
    // Recovery is the host's: it rebuilds every project's guests as their kept specs say.
    async () => syncResponse(await storage().recover()),
  );

  app.post<{ Body: { directory: string } }>(
    '/1.0/admin/recover/backups',
    {
      config: { access: 'host-admin' },
      schema: {
        summary:
          "Bring back a lost member's guests, and those the store does not know, from the backup directory",
        description:
          "Each from its latest chain in DIRECTORY/GUEST/ (scheduled backups, decisions 0046 and 0062): the full backup and its incrementals in order, every payload checked against its checksum first; a link missing or damaged is named and the links before it are used. A guest of an Offline member goes to the member the scheduler picks, with its keys and NICs, its disk from the backups, started if it was meant to run; one the store does not know is imported on this member. The operation's metadata lists what was recovered (the links applied, and any problems) and what was skipped, with why.",
        body: Type.Object({
          directory: Type.String({ minLength: 1, description: 'An absolute path on the member asked' }),
        }),
        response: asyncReply,
      },
    },
    async (request, reply) => {
      const recovery = ctx.services.backupRecovery;
      if (!recovery) throw notSupported('This daemon does not recover guests from backups');
      return sendAsync(reply, await recovery.recover(request.body.directory));
    },
  );

  app.post<{ Body: Readable; Querystring: { target?: string } }>(
    '/1.0/backups',
    {
      config: { access: 'operate' },
      bodyLimit: BACKUP_UPLOAD_LIMIT_BYTES,
      schema: {
        summary:
          'Import a guest from a backup archive (raw body; X-Trivisor-Name renames it, X-Trivisor-Pool puts it on a storage pool, X-Trivisor-Live: 1 restores a vm guest live)',
        querystring: Type.Object(
          targetQuery(
            'On a cluster: the member to import the guest onto, the upload passed on to it (default: the one asked)',
          ),
        ),
        headers: Type.Object({
          'x-trivisor-name': Type.Optional(Type.String()),
          'x-trivisor-pool': Type.Optional(Type.String()),
          'x-trivisor-live': Type.Optional(Type.String()),
        }),
        body: {
          content: {
            'application/octet-stream': { schema: Type.Unsafe({ description: 'The archive bytes' }) },
          },
        },
        response: asyncReply,
      },
    },
    async (request, reply) => {
      const stream = request.body;
      // On a cluster another member's import was passed on before its body was read (decision 0034).
      try {
        await assertTarget(ctx, request.query.target);
      } catch (e) {
        (stream as Readable | undefined)?.resume?.();
        throw e;
      }
      if (typeof (stream as { pipe?: unknown })?.pipe !== 'function') {
        throw invalidArgument(
          'Send the backup archive as the raw body (Content-Type: application/octet-stream)',
        );
      }
      const name = request.headers['x-trivisor-name'];
      const pool = request.headers['x-trivisor-pool'];
      if ((typeof name === 'string' && name !== '') || (typeof pool === 'string' && pool !== '')) {
        try {
          if (typeof name === 'string' && name !== '') assertDnsLabel(name, 'guest name');
          if (typeof pool === 'string' && pool !== '') assertDnsLabel(pool, 'pool name');
        } catch (e) {
          stream.resume();
          throw e;
        }
      }
      const live = request.headers['x-trivisor-live'] === '1';
      // An archive with an index is unpacked while it arrives; a live restore reads its file in place,
      // and an archive without one (older, or packed by hand) is read from a file as before.
      // A body that brings nothing for UPLOAD_IDLE_MS fails the upload (decision 0106, amended).
      let body: AsyncIterable<Buffer> = new GuardedUpload(stream);
      if (!live) {
        // The request's chunks are released once read: left to the GC, they cost it seconds per GiB (decision 0100).
        const head = await readArchiveHead(body, { release: true }).catch((e: unknown) => {
          reply.header('connection', 'close');
          throw uploadFault(e);
        });
        if (head.index) {
          try {
            return sendAsync(
              reply,
              await storage(request).importUpload({
                upload: head,
                ...(typeof name === 'string' && name !== '' && { name }),
                ...(typeof pool === 'string' && pool !== '' && { storage: pool }),
              }),
            );
          } catch (e) {
            // The rest of the upload is not read: the connection ends with the answer.
            reply.header('connection', 'close');
            throw e;
          }
        }
        body = head.all;
      }
      const path = join(
        ctx.uploadDir ?? tmpdir(),
        `trivisor-import-${randomBytes(8).toString('hex')}.tar.zst`,
      );
      try {
        const received = await receiveToFile(body, path, { mode: 0o600, release: true }).catch(
          (e: unknown) => {
            // An upload that failed (gone silent, broken off) is not read further: the answer ends the connection.
            reply.header('connection', 'close');
            throw e;
          },
        );
        if (received === 0) throw invalidArgument('The upload is empty: send the backup archive as the body');
        return sendAsync(
          reply,
          await storage(request).importBackup({
            archivePath: path,
            ...(typeof name === 'string' && name !== '' && { name }),
            ...(typeof pool === 'string' && pool !== '' && { storage: pool }),
            ...(live && { live: true }),
          }),
        );
      } catch (e) {
        await rm(path, { force: true });
        throw e;
      }
    },
  );

  // The service's records are the wire's, field for field: a change to one that the other lacks fails tsc.
  const sameShape: Same<BackupDirectoryArchive, BackupDirectoryArchiveWire> = true;
  void sameShape;
  /** Each member has its own backup directory: `target` names whose is read (decision 0077). */
  const BackupTargetQuery = targetQuery(
    'On a cluster: the member whose backup directory is read, asked of it (default: the one asked)',
  );
  /** The backup directory, or a one-line 501 on a daemon without one. */
  const backupDir = (): string => {
    if (!ctx.backupDir) throw notSupported('This daemon has no backup directory');
    return ctx.backupDir;
  };

  app.get<{ Querystring: { recursion?: number; guest?: string; target?: string } }>(
    '/1.0/backups',
    {
      // Names, sizes and times of the host's backup directory: read, as pools are; restoring from it is host-admin.
      config: { access: 'host-read' },
      schema: {
        summary: "List the archives in the daemon's backup directory (what import --from-backups takes)",
        description:
          "Every archive of TRIVISOR_BACKUP_DIR (default STATE/shipped-backups) an import accepts, by guest, oldest first: recursion=0 their URLs, recursion=1 their records (size, when taken, full or incremental with its chain, sequence and parent link, whether it can be restored). `guest=NAME` lists that guest's only. A directory that does not exist yet lists nothing (decision 0074). On a cluster `target=MEMBER` lists that member's directory, its URLs keeping the target (decision 0077).",
        querystring: Type.Object({
          ...RecursionQuerySchema.properties,
          guest: Type.Optional(Type.String({ description: "Only this guest's archives" })),
          ...BackupTargetQuery,
        }),
        response: {
          200: SyncEnvelope(
            Type.Union([Type.Array(BackupDirectoryArchiveSchema), Type.Array(Type.String())]),
          ),
          ...errors,
        },
      },
    },
    async (request) => {
      const { guest, target } = request.query;
      await assertTarget(ctx, target);
      if (guest !== undefined) assertDnsLabel(guest, 'guest name');
      const list = await listBackupDirectory(backupDir(), guest !== undefined ? { guest } : {});
      return syncResponse(
        (request.query.recursion ?? 0) === 0
          ? list.map(
              // Another member's archive is shown by that member: its URL keeps the target.
              (a) =>
                `/1.0/backups/${encodeURIComponent(a.guest)}/${encodeURIComponent(a.name)}${target !== undefined ? `?target=${encodeURIComponent(target)}` : ''}`,
            )
          : list,
      );
    },
  );

  app.get<{ Params: { guest: string; archive: string }; Querystring: { target?: string } }>(
    '/1.0/backups/:guest/:archive',
    {
      config: { access: 'host-read' },
      schema: {
        summary: "Show one archive of the daemon's backup directory (on a cluster, `target`'s)",
        params: Type.Object({ guest: Type.String(), archive: Type.String() }),
        querystring: Type.Object(BackupTargetQuery),
        response: { 200: SyncEnvelope(BackupDirectoryArchiveSchema), ...errors },
      },
    },
    async (request) => {
      await assertTarget(ctx, request.query.target);
      return syncResponse(
        await getBackupDirectoryArchive(backupDir(), `${request.params.guest}/${request.params.archive}`),
      );
    },
  );

  app.post<{
    Body: {
      source: { type: 'backup-directory'; archive: string };
      name?: string;
      pool?: string;
      live?: boolean;
    };
    Querystring: { target?: string };
  }>(
    '/1.0/backups/import',
    {
      // The backup directory is the host's, and holds every project's guests' backups.
      config: { access: 'host-admin' },
      schema: {
        summary: "Import a guest from an archive in the daemon's backup directory, without an upload",
        description:
          "`source.archive` names the archive relative to the backup directory (TRIVISOR_BACKUP_DIR, default STATE/shipped-backups) as GUEST/ARCHIVE: no `..`, not absolute, no symbolic link, a regular file inside the directory (else 400; missing: 404; nothing is made). An incremental link is imported with its chain's links before it, in order. `live: true` restores a vm guest live from an uncompressed archive read in place (decision 0063), through a hard link to it, so that retention removing it does not stop the copy (decision 0070). On a cluster `target=MEMBER` imports from that member's own directory, onto it (decision 0077).",
        querystring: Type.Object(
          targetQuery(
            'On a cluster: the member whose backup directory holds the archive; the guest is imported onto it (default: the one asked)',
          ),
        ),
        body: Type.Object(
          {
            source: Type.Object(
              {
                type: Type.Literal('backup-directory'),
                archive: Type.String({ minLength: 1, description: 'GUEST/ARCHIVE in the backup directory' }),
              },
              { additionalProperties: false },
            ),
            name: Type.Optional(
              Type.String({ description: "The new guest's name (default: the archive's)" }),
            ),
            pool: Type.Optional(Type.String({ description: 'The storage pool of the new guest' })),
            live: Type.Optional(Type.Boolean({ description: 'Restore a vm guest live' })),
          },
          { additionalProperties: false },
        ),
        response: asyncReply,
      },
    },
    async (request, reply) => {
      await assertTarget(ctx, request.query.target);
      const { name, pool, live, source } = request.body;
      if (name !== undefined) assertDnsLabel(name, 'guest name');
      if (pool !== undefined) assertDnsLabel(pool, 'pool name');
      const directory = backupDir();
      return sendAsync(
        reply,
        await importFromBackupDirectory(
          {
            directory,
            workDir: ctx.uploadDir ?? tmpdir(),
            storage: storage(request),
            operations: ctx.services.operations,
            project: projectOf(request),
          },
          {
            archive: source.archive,
            ...(name !== undefined && { name }),
            ...(pool !== undefined && { storage: pool }),
            ...(live === true && { live: true }),
          },
        ),
      );
    },
  );
}
