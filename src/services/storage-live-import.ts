import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition, invalidArgument, notSupported, TrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import { DEFAULT_PROJECT, projectOfRecord } from '../core/projects.ts';
import type { GuestSpec, Model, Operation } from '../core/types.ts';
import type { LiveImport } from '../drivers/guest-storage.ts';
import { ArchiveDamaged, type ArchiveMember, digestOf, listArchive } from '../storage/backup-archive.ts';
import { byteProgress } from '../storage/byte-progress.ts';
import { records } from '../store/records.ts';
import { assertArchiveGuestFits, createArchiveGuest, importingClaim } from './archive-guest.ts';
import { corrupted, type OpenedArchive, openArchive } from './archive-reader.ts';
import { diskFull, type StorageContext, type StorageView } from './storage-context.ts';

/**
 * Live restore of a vm guest (docs/decisions/0063-vm-live-restore.md): the guest starts at once
 * on an overlay whose backing is the archive's disk, read in place, while QEMU copies the
 * blocks behind it; the archive's checksum is computed alongside the copy.
 */

/** The payload of an uncompressed export (decision 0063): a plain tar whose disk QEMU reads in place. */
export const PLAIN_ROOTFS = 'rootfs.tar';
/** Name of the vm disk inside the payload (vm-storage.ts's ARCHIVE_DISK). */
const ARCHIVE_DISK = 'disk.qcow2';
/** Archives a live restore reads stay here, named after the guest, until its copy ends. */
const LIVE_PREFIX = 'live-';

/**
 * The copy's speed limit in bytes per second: none unless TRIVISOR_LIVE_RESTORE_BYTES_PER_SECOND
 * sets one, which tests and benchmarks use to see a copy in progress on a small disk.
 */
const speedLimit = (): number | undefined => {
  const v = Number(process.env.TRIVISOR_LIVE_RESTORE_BYTES_PER_SECOND ?? '');
  return Number.isFinite(v) && v > 0 ? Math.round(v) : undefined;
};

/** Where the archive's disk is, after every check that can be made before the guest starts. */
async function planLiveImport(
  ctx: StorageContext,
  archive: OpenedArchive,
): Promise<{ live: LiveImport; disk: ArchiveMember }> {
  const { manifest } = archive;
  const model = manifest.guest.model;
  const live = ctx.deps.storage[model as Model]?.live;
  if (!live) {
    throw notSupported(
      `A live restore is for vm guests: this archive holds a ${model} guest, whose files no engine reads in place from an archive (import it without --live)`,
    );
  }
  if (manifest.incremental) {
    throw failedPrecondition(
      'The archive is a link of an incremental chain, which is restored link by link: import it without --live',
    );
  }
  if (manifest.snapshots.length > 0) {
    throw failedPrecondition(
      'The archive carries snapshots, which a live restore does not bring: import it without --live, or export without --with-snapshots',
    );
  }
  const payload = archive.members.get(PLAIN_ROOTFS);
  if (!payload || !manifest.files[PLAIN_ROOTFS]) {
    throw failedPrecondition(
      "The archive's disk is compressed (rootfs.tar.zst), and QEMU cannot read it in place: export the guest with --uncompressed for a live restore, or import this archive without --live",
    );
  }
  const inner = await listArchive(archive.path, {
    offsetBytes: payload.offset,
    sizeBytes: payload.size,
  }).catch((e: unknown) => {
    if (e instanceof ArchiveDamaged) {
      throw invalidArgument(
        `The backup archive is corrupted or truncated (${PLAIN_ROOTFS}: ${e.message}): make the export again`,
      );
    }
    throw e;
  });
  const disk = inner.find((m) => m.name === ARCHIVE_DISK && m.type === 'file');
  if (!disk) {
    throw invalidArgument(`The archive's ${PLAIN_ROOTFS} holds no ${ARCHIVE_DISK}: make the export again`);
  }
  if (inner.some((m) => m.name !== ARCHIVE_DISK)) {
    // The firmware's variables (vm.firmware=uefi) are not carried by a live restore yet.
    throw notSupported(
      'The archive holds the UEFI variables of a vm.firmware=uefi guest, which a live restore does not carry yet: import it without --live',
    );
  }
  return { live, disk };
}

/** Hashes payload `rel` of the archive, as the copy runs beside it; throws when it is not what the manifest says. */
async function verifyPayload(archive: OpenedArchive, rel: string, signal: AbortSignal): Promise<void> {
  const member = archive.members.get(rel);
  const want = archive.manifest.files[rel];
  if (!member || !want) throw corrupted(rel);
  // Hashed off the event loop (digestOf): the guest runs meanwhile.
  if ((await digestOf(archive.path, member, signal)).sha256 !== want.sha256) throw corrupted(rel);
}

/**
 * Copies the rest of the archive's disk into the running guest's disk, the payload's checksum
 * computed alongside: a mismatch stops the copy and fails, and the caller deletes the guest, so
 * that it never runs on a disk found corrupt.
 */
async function copyRest(
  live: LiveImport,
  spec: GuestSpec,
  options: {
    archive: OpenedArchive;
    signal: AbortSignal;
    progress: (percent: number | null, text: string) => void;
  },
): Promise<void> {
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal.addEventListener('abort', onAbort, { once: true });
  let bytes: ReturnType<typeof byteProgress> | undefined;
  let seen = 0;
  const speed = speedLimit();
  try {
    const copy = live.finishLiveImport(spec, {
      signal: stop.signal,
      ...(speed !== undefined && { speedBytesPerSecond: speed }),
      onProgress: (done, total) => {
        if (!bytes) {
          bytes = byteProgress(options.progress, { total });
          bytes.stage('running; copying its disk from the archive');
        }
        if (done > seen) bytes.add(done - seen);
        seen = Math.max(seen, done);
      },
    });
    const verified = verifyPayload(options.archive, PLAIN_ROOTFS, stop.signal).catch((e: unknown) => {
      stop.abort();
      throw e;
    });
    const [v, c] = await Promise.allSettled([verified, copy]);
    // The checksum's refusal names the cause: the copy stopped because of it.
    if (v.status === 'rejected' && !options.signal.aborted) throw v.reason;
    if (options.signal.aborted) throw new TrivisorError('Cancelled', 'The live restore was cancelled');
    if (c.status === 'rejected') throw c.reason;
  } finally {
    options.signal.removeEventListener('abort', onAbort);
  }
}

/**
 * `import --live`: checks what can be checked before anything is made (headers, manifest, the
 * disk's place in the archive), then an operation creates the guest on the archive's disk,
 * starts it, and ends when the copy has ended (or the guest was deleted for a corrupt disk).
 */
export async function startLiveImport(
  view: StorageView,
  request: { archivePath: string; name?: string; storage?: string },
): Promise<Operation> {
  const { ctx } = view;
  const { store, operations, importsDir, claims, guestBusy, storageFor, finished, discard } = ctx;
  const project = view.scope ?? DEFAULT_PROJECT;
  const archive = await openArchive(request.archivePath);
  const { manifest } = archive;
  const { disk } = await planLiveImport(ctx, archive);
  const name = request.name ?? manifest.guest.name;
  assertDnsLabel(name, 'guest name');
  await assertArchiveGuestFits(ctx, project, name, manifest);
  const kept = join(importsDir, `${LIVE_PREFIX}${name}-${randomBytes(4).toString('hex')}.tar`);
  return operations.start({
    project,
    description: `Restoring guest ${name} live`,
    resources: { guests: [`/1.0/guests/${name}`] },
    mayCancel: true,
    async run(op) {
      // Issue 20's time to running against time to complete, from the operation's start (the
      // archive is in place by then: an upload is before it).
      const began = Date.now();
      let created: string | undefined;
      try {
        const spec = await claims.holding('guest', name, importingClaim(name), async () => {
          op.progress(0, 'creating the guest');
          await createArchiveGuest(
            ctx,
            {
              pool: request.storage,
              project,
              name,
              onMade: () => {
                created = name;
              },
            },
            manifest,
          );
          const { spec } = await view.load(name);
          // The upload becomes the daemon's own file for as long as the guest's disk reads it.
          await mkdir(importsDir, { recursive: true, mode: 0o700 });
          await rename(request.archivePath, kept);
          await storageFor(spec).live?.prepareLiveImport(spec, {
            archivePath: kept,
            offsetBytes: disk.offset,
            sizeBytes: disk.size,
          });
          // From here a restarted daemon finishes the copy instead of deleting the guest.
          await records.storagePending.at(name).put(store, { kind: 'live-import', archive: kept });
          return spec;
        });
        op.progress(0, 'starting the guest');
        await finished(await ctx.guests.changeState(name, { action: 'start' }));
        const runningAfterMs = Date.now() - began;
        op.setMetadata({ runningAfterMs });
        const live = storageFor(spec).live;
        if (!live) throw notSupported(`Guest ${name} has no live restore`);
        await claims.holding('guest', name, guestBusy(name), () =>
          copyRest(live, spec, {
            archive: { ...archive, path: kept },
            signal: op.signal,
            progress: op.progress,
          }),
        );
        await store.delete(keys.storagePending(name));
        await rm(kept, { force: true });
        return { name, runningAfterMs, completedAfterMs: Date.now() - began };
      } catch (e) {
        if (created) {
          await discard(created);
          await store.delete(keys.storagePending(created));
        }
        await rm(kept, { force: true });
        if (op.signal.aborted) throw new TrivisorError('Cancelled', 'The import was cancelled');
        throw diskFull(e, 'Cannot restore the backup live');
      } finally {
        await rm(request.archivePath, { force: true });
      }
    },
  });
}

/**
 * After a daemon restart: each guest whose live restore was under way has its copy finished (the
 * block job found in its QEMU, or started again: blocks already copied are kept), and its
 * archive then removed; archives of live restores no guest reads any more are removed.
 */
export async function resumeLiveImports(ctx: StorageContext): Promise<void> {
  const { store, operations, importsDir, storageFor, discard, claims, guestBusy } = ctx;
  const kept = new Set<string>();
  for (const kv of (await store.list(records.storagePending.prefix)).kvs) {
    const name = records.storagePending.nameOf(kv.key);
    // A marker this code cannot read is the generic sweep's to handle.
    const marker = (
      await records.storagePending
        .at(name)
        .get(store)
        .catch(() => undefined)
    )?.value;
    if (marker?.kind !== 'live-import' || marker.archive === undefined) continue;
    const archive = marker.archive;
    kept.add(archive);
    const spec = (await records.guest.at(name).get(store))?.value;
    if (!spec) {
      await store.delete(kv.key);
      continue;
    }
    await operations.start({
      project: projectOfRecord(spec),
      description: `Finishing the live restore of guest ${name}`,
      resources: { guests: [`/1.0/guests/${name}`] },
      mayCancel: true,
      async run(op) {
        const live = storageFor(spec).live;
        try {
          if (!live) throw notSupported(`Guest ${name} has no live restore`);
          // Checked again whole: the check of the run the daemon's end interrupted did not finish.
          const opened = await openArchive(archive);
          await claims.holding('guest', name, guestBusy(name), () =>
            copyRest(live, spec, { archive: opened, signal: op.signal, progress: op.progress }),
          );
          await store.delete(kv.key);
          await rm(archive, { force: true });
          return { name };
        } catch (e) {
          // The guest's disk cannot be completed: the guest goes, as a failed import's does.
          await discard(name);
          await store.delete(kv.key);
          await rm(archive, { force: true });
          throw e;
        }
      },
    });
  }
  for (const f of await readdir(importsDir).catch(() => [] as string[])) {
    const path = join(importsDir, f);
    if (f.startsWith(LIVE_PREFIX) && !kept.has(path)) await rm(path, { force: true });
  }
}
