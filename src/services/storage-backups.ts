import { randomBytes } from 'node:crypto';
import { type FileHandle, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  alreadyExists,
  asTrivisorError,
  invalidArgument,
  notFound,
  notSupported,
  TrivisorError,
} from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { GuestSpec } from '../core/types.ts';
import type { GuestStorage, PortableChainState } from '../drivers/guest-storage.ts';
import { ArchiveWriter, listArchive } from '../storage/backup-archive.ts';
import { byteProgress } from '../storage/byte-progress.ts';
import { chainStateFileOf, writeChainState } from '../storage/chain-state-file.ts';
import { readThroughFifo } from '../storage/fifo-stream.ts';
import type { BackupManifest } from '../storage/storage-records.ts';
import { ZstdFrameEnd } from '../storage/zstd-frames.ts';
import { INDEX_MEMBER, indexOf } from './archive-stream.ts';
import { BLANK_IMAGE } from './image-service.ts';
import { diskFull, type StorageView } from './storage-context.ts';
import { PLAIN_ROOTFS } from './storage-live-import.ts';
import type { StorageService } from './storage-service.ts';

const BACKUP_NAME = /^backup-[0-9a-f]{16}$/;

/** A new backup's name: random, so that a caller may pick it before the backup is made. */
export const newBackupName = (): string => `backup-${randomBytes(8).toString('hex')}`;

/** Backups written on the daemon's side (export): make, find for download, delete. */
export function backupMethods(
  view: StorageView,
): Pick<StorageService, 'createBackup' | 'backupFile' | 'followBackup' | 'deleteBackup'> {
  const { deps, runner, backupsDir, storageFor, assertProvisioned, exclusive } = view.ctx;
  const { scope, load } = view;
  return {
    async createBackup(guest, options) {
      const { spec, status } = await load(guest);
      const storage = storageFor(spec);
      assertProvisioned(spec, status);
      const exportIncremental = storage.exportIncremental?.bind(storage);
      if (options.snapshotsOnly && (!options.withSnapshots || options.incremental || options.uncompressed)) {
        throw invalidArgument(
          'An archive of the snapshots alone is made with --with-snapshots and nothing else',
        );
      }
      if (options.uncompressed && (spec.model !== 'vm' || options.incremental || options.withSnapshots)) {
        // Only a vm disk is read in place by a live restore (decision 0063); compression saves the rest.
        throw invalidArgument(
          'An uncompressed export is for the live restore of a vm guest: it is made of a vm guest alone, without --incremental or --with-snapshots',
        );
      }
      if (options.incremental) {
        if (!exportIncremental) {
          throw notSupported(
            `Incremental backups are not supported for ${spec.model} guests: their storage cannot tell what changed since a backup`,
          );
        }
        if (options.withSnapshots) {
          throw invalidArgument('An incremental backup carries no snapshots: leave out --with-snapshots');
        }
      } else if (options.continueChain) {
        throw invalidArgument('A chain is continued only by an incremental backup');
      }
      const backup = options.name ?? newBackupName();
      if (!BACKUP_NAME.test(backup)) throw invalidArgument(`${JSON.stringify(backup)} is not a backup name`);
      const dir = join(backupsDir, guest);
      if ((await taken(dir, backup)) || exporting.has(join(dir, `${backup}.tar`))) {
        throw alreadyExists(`Guest ${guest} has a backup ${backup} already`);
      }
      const partial = join(dir, `.tmp-${backup}.tar`);
      const archive = join(dir, `${backup}.tar`);
      // A download may follow the archive from now on (issue 20 §1).
      const follow = newExport(partial, archive);
      return exclusive(
        guest,
        `Backing up guest ${guest}`,
        async (ctx) => {
          const work = join(dir, `.tmp-${backup}`);
          // Each payload goes from the driver's tar through a FIFO into the archive, hashed on the
          // way: written once, read never (decision 35). The manifest, which holds the checksums, comes
          // last; what it says of the guest also comes first, as index.json, for an import that reads
          // the archive as it is uploaded.
          let writer: ArchiveWriter | undefined;
          // Everything the export awaits is in here, so that whatever fails it, its followers are
          // told (follow.failed): a failure before the archive was begun (the image's record gone,
          // the snapshots unreadable) left a followed download waiting for ever (issue 20).
          try {
            // A guest made with --empty has no image: its archive names none ('').
            const image = spec.image === '' ? BLANK_IMAGE.record : await deps.images.get(spec.image);
            const snapshots = options.withSnapshots ? await view.self().listSnapshots(guest) : [];
            await mkdir(work, { recursive: true, mode: 0o700 });
            writer = await ArchiveWriter.create(partial);
            const into = writer;
            const about = {
              format: 'trivisor-backup/1' as const,
              guest: { name: spec.name, model: spec.model, config: spec.config, createdAt: spec.createdAt },
              image: {
                fingerprint: image.fingerprint,
                alias: spec.imageAlias,
                description: image.description,
              },
              snapshots,
            };
            const index = indexOf(about, options.incremental === true);
            await into.addBuffer(INDEX_MEMBER, Buffer.from(`${JSON.stringify(index, null, 2)}\n`));
            const files: BackupManifest['files'] = {};
            const progress = byteProgress((percent, text) => ctx.progress(percent, text));
            const payload = async (rel: string, produce: (path: string) => Promise<unknown>) => {
              const fifo = join(work, rel.replaceAll('/', '-'));
              await runner.run(['mkfifo', '-m', '0600', fifo]);
              files[rel] = await readThroughFifo(fifo, produce, (chunks) =>
                into.addStream(rel, rel.endsWith('.zst') ? zstdFramesOf(chunks) : chunks, (n) => {
                  progress.add(n);
                  follow.wrote(n);
                }),
              );
            };
            let link: BackupManifest['incremental'];
            if (options.incremental && options.continueChain && !options.newChain) {
              await continueChain(spec, storage, options.continueChain);
            }
            // A live move's cold part (decision 0088) carries the snapshots alone: its disk is mirrored.
            if (!options.snapshotsOnly) {
              progress.stage('root file system');
              await payload(options.uncompressed ? PLAIN_ROOTFS : 'rootfs.tar.zst', async (path) => {
                if (options.incremental && exportIncremental) {
                  link = await exportIncremental(spec, path, {
                    signal: ctx.signal,
                    ...(options.newChain && { newChain: true }),
                  });
                } else {
                  await storage.exportTar(spec, path, {
                    signal: ctx.signal,
                    ...(options.uncompressed && { uncompressed: true }),
                  });
                }
              });
            }
            if (snapshots.length > 0) await into.addDirectory('snapshots');
            for (const snap of snapshots) {
              progress.stage(`snapshot ${snap.name}`);
              await payload(`snapshots/${snap.name}.tar.zst`, (path) =>
                storage.exportTar(spec, path, { snapshot: snap.name, signal: ctx.signal }),
              );
            }
            ctx.signal.throwIfAborted();
            const manifest: BackupManifest = {
              ...about,
              createdAt: new Date().toISOString(),
              ...(link && { incremental: link }),
              files,
            };
            await into.addBuffer('manifest.json', Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`));
            const sizeBytes = await into.finish();
            await rename(partial, archive);
            if (link) await leaveChainState(spec, storage, { link, archive });
            follow.done(sizeBytes);
            return { backup, sizeBytes, ...(link && { incremental: link }) };
          } catch (e) {
            await writer?.abandon();
            await rm(partial, { force: true });
            const error = ctx.signal.aborted
              ? new TrivisorError('Cancelled', `The backup of guest ${guest} was cancelled`)
              : diskFull(e, `Cannot back up guest ${guest}`);
            follow.failed(error);
            throw error;
          } finally {
            await rm(work, { recursive: true, force: true });
          }
        },
        { project: projectOfRecord(spec), mayCancel: true },
      ).catch((e: unknown) => {
        follow.failed(asTrivisorError(e));
        throw e;
      });
    },

    async followBackup(guest, backup) {
      assertDnsLabel(guest, 'guest name');
      if (scope !== undefined) await load(guest);
      if (!BACKUP_NAME.test(backup)) throw invalidArgument(`${JSON.stringify(backup)} is not a backup name`);
      const archive = join(backupsDir, guest, `${backup}.tar`);
      const running = exporting.get(archive);
      if (running) return running.view();
      const st = await stat(archive).catch(() => undefined);
      if (!st) throw notFound(`Guest ${guest} has no backup ${backup}`);
      return finishedFollow(archive, st.size);
    },

    async backupFile(guest, backup) {
      assertDnsLabel(guest, 'guest name');
      // Backups are kept by guest name: one is only reachable through a guest of the project.
      if (scope !== undefined) await load(guest);
      if (!BACKUP_NAME.test(backup)) throw invalidArgument(`${JSON.stringify(backup)} is not a backup name`);
      const path = join(backupsDir, guest, `${backup}.tar`);
      const st = await stat(path).catch(() => undefined);
      if (!st) throw notFound(`Guest ${guest} has no backup ${backup}`);
      return { path, sizeBytes: st.size };
    },

    async deleteBackup(guest, backup) {
      const { path } = await view.self().backupFile(guest, backup);
      await rm(path, { force: true });
      await rm(chainStateFileOf(path), { force: true });
    },
  };

  /**
   * Makes the guest's chain the one `state` follows, unless it is there already (decision 0062,
   * amended): the guest moved or was recovered since that link was made. The driver takes it only
   * where it can prove the next link correct; otherwise the backup is a full one, as before.
   */
  async function continueChain(spec: GuestSpec, storage: GuestStorage, state: PortableChainState) {
    const own = await storage.chainState?.(spec);
    if (own?.chain === state.chain && own.sequence === state.sequence) return;
    const taken = await Promise.resolve(storage.continueChain?.(spec, state)).then(
      (t) => t ?? false,
      (e: unknown) => {
        // Not taken over: the export goes on from the guest's own chain, or makes a full.
        deps.log?.warn({ guest: spec.name, err: asTrivisorError(e).message }, 'backup chain not taken over');
        return false;
      },
    );
    deps.log?.info(
      { guest: spec.name, chain: state.chain, sequence: state.sequence, taken },
      taken
        ? 'the guest continues the backup chain shipped from its last member'
        : 'the guest cannot continue the shipped backup chain here: a full backup',
    );
  }

  /**
   * Writes the guest's chain state after `link` beside its archive, for the scheduler to ship. A
   * state that cannot be written only costs a full backup after a move: the backup stands.
   */
  async function leaveChainState(
    spec: GuestSpec,
    storage: GuestStorage,
    made: { link: NonNullable<BackupManifest['incremental']>; archive: string },
  ) {
    try {
      const state = await storage.chainState?.(spec);
      if (state?.chain !== made.link.chain || state.sequence !== made.link.sequence) return;
      await writeChainState(chainStateFileOf(made.archive), { guest: spec.name, model: spec.model }, state);
    } catch (e) {
      deps.log?.warn(
        { guest: spec.name, err: asTrivisorError(e).message },
        'the backup chain state was not written beside the archive',
      );
    }
  }
}

/** Whether backup `backup` exists in `dir`, finished or being written. */
async function taken(dir: string, backup: string): Promise<boolean> {
  for (const name of [`${backup}.tar`, `.tmp-${backup}.tar`, `.tmp-${backup}`]) {
    if (await stat(join(dir, name)).catch(() => undefined)) return true;
  }
  return false;
}

/** The zstd frames of a payload, without the zeros tar pads them with when it writes to a FIFO. */
async function* zstdFramesOf(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const frames = new ZstdFrameEnd();
  for await (const chunk of chunks) {
    const kept = frames.take(chunk);
    if (kept.length > 0) yield kept;
  }
  frames.end();
}

/**
 * A backup archive as a download that follows it sees it (issue 20 §1): the file to read, where
 * the export stands, and a wait for more.
 */
export interface BackupFollow {
  /** Opens the archive (the file being written, or the finished one); undefined before it exists. */
  open(): Promise<FileHandle | undefined>;
  /** Still written; complete at `sizeBytes`; or failed, with the export's error. */
  status():
    | { state: 'running' }
    | { state: 'done'; sizeBytes: number }
    | { state: 'failed'; error: TrivisorError };
  /** Resolves once more has been written or the state changed, or after `timeoutMs`. */
  changed(timeoutMs: number): Promise<void>;
  /**
   * Offsets of the finished archive's tar headers: a member whose size is known only at its end
   * has its header written over a placeholder then, so a follower sends these blocks again.
   */
  headerOffsets(): Promise<number[]>;
}

/** Exports being written, by the path of their finished archive. */
const exporting = new Map<string, ExportEntry>();

/** A failed export is remembered this long, so that a download arriving late learns why. */
const FAILED_KEPT_MS = 60_000;

/** Bytes written between two wake-ups of a waiting follower: the archive writes 4 MiB batches. */
const WAKE_BYTES = 4 << 20;

interface ExportEntry {
  view(): BackupFollow;
  wrote(bytes: number): void;
  done(sizeBytes: number): void;
  failed(error: TrivisorError): void;
}

const headerOffsetsOf = async (path: string): Promise<number[]> =>
  (await listArchive(path)).map((m) => m.offset - 512);

function finishedFollow(archive: string, sizeBytes: number): BackupFollow {
  return {
    open: () => open(archive, 'r'),
    status: () => ({ state: 'done', sizeBytes }),
    changed: async () => {},
    headerOffsets: () => headerOffsetsOf(archive),
  };
}

function newExport(partial: string, archive: string): ExportEntry {
  let state: ReturnType<BackupFollow['status']> = { state: 'running' };
  let waiters: Array<() => void> = [];
  let unseen = 0;
  const wake = () => {
    const woken = waiters;
    waiters = [];
    unseen = 0;
    for (const w of woken) w();
  };
  const entry: ExportEntry = {
    view: () => ({
      async open() {
        // Renamed when done: the finished file is tried second, so a rename in between is no miss.
        for (const path of [partial, archive]) {
          try {
            return await open(path, 'r');
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          }
        }
        return undefined;
      },
      status: () => state,
      changed: (timeoutMs) =>
        state.state !== 'running'
          ? Promise.resolve()
          : new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, timeoutMs);
              waiters.push(() => {
                clearTimeout(timer);
                resolve();
              });
            }),
      headerOffsets: () => headerOffsetsOf(archive),
    }),
    wrote(bytes) {
      unseen += bytes;
      if (unseen >= WAKE_BYTES) wake();
    },
    done(sizeBytes) {
      if (state.state !== 'running') return;
      state = { state: 'done', sizeBytes };
      exporting.delete(archive);
      wake();
    },
    failed(error) {
      if (state.state !== 'running') return;
      state = { state: 'failed', error };
      wake();
      setTimeout(() => {
        if (exporting.get(archive) === entry) exporting.delete(archive);
      }, FAILED_KEPT_MS).unref();
    },
  };
  exporting.set(archive, entry);
  return entry;
}
