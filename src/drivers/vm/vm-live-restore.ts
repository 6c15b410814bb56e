import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArgument, TrivisorError } from '../../core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import { qemuImg } from '../../host/qemu-img.ts';
import type { DriverContext } from '../guest-driver.ts';
import type { LiveImportSource, LiveRestoreProgress } from '../guest-storage.ts';
import { type DiskLayer, vmGuestPaths } from './qemu-command.ts';
import { connectQmp } from './qmp-client.ts';

/**
 * Live restore of a vm guest (docs/decisions/0063-vm-live-restore.md): the guest's disk is a
 * fresh qcow2 overlay whose backing is the qcow2 stored uncompressed inside a backup archive,
 * read by QEMU in place (a `raw` node with `offset`/`size` over the archive file, the qcow2
 * format node on top). A `block-stream` job pulls every backing block into the overlay; when
 * it ends the overlay has no backing and the archive is no longer read.
 */

/** The guest's record of the archive its disk is backed by while a live restore copies it. */
const LIVE_RESTORE_FILE = 'live-restore.json';
/** The QMP job that copies the archive's blocks into the overlay. */
const STREAM_JOB = 'live-restore';
/** How often the job's progress is read. */
const POLL_MS = 500;

/** The archive window of a disk that is still being restored, as the daemon wrote it. */
export async function readLiveRestore(stateDir: string, name: string): Promise<LiveImportSource | undefined> {
  const text = await readFile(join(vmGuestPaths(stateDir, name).dir, LIVE_RESTORE_FILE), 'utf8').catch(
    () => undefined,
  );
  if (text === undefined) return undefined;
  const r = JSON.parse(text) as Partial<LiveImportSource>;
  if (
    typeof r.archivePath !== 'string' ||
    typeof r.offsetBytes !== 'number' ||
    typeof r.sizeBytes !== 'number'
  )
    return undefined;
  return { archivePath: r.archivePath, offsetBytes: r.offsetBytes, sizeBytes: r.sizeBytes };
}

/** The disk layer QEMU is given for the archive's qcow2 (the window of the archive file). */
export const liveRestoreLayer = (source: LiveImportSource): DiskLayer => ({
  path: source.archivePath,
  format: 'qcow2',
  window: { offsetBytes: source.offsetBytes, sizeBytes: source.sizeBytes },
});

/** qemu-img's name of the archive's qcow2: the same window, as a `json:` file name. */
const backingName = (source: LiveImportSource): string =>
  `json:${JSON.stringify({
    driver: 'qcow2',
    file: {
      driver: 'raw',
      offset: source.offsetBytes,
      size: source.sizeBytes,
      file: { driver: 'file', filename: source.archivePath },
    },
  })}`;

interface QmpJob {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** The live-restore methods of the vm storage. */
export function createVmLiveRestore(ctx: DriverContext) {
  const { runner, stateDir } = ctx;
  const log = ctx.log.child({ storage: 'vm', action: 'live-restore' });
  const img = qemuImg(runner);
  const pathsOf = (spec: GuestSpec) => vmGuestPaths(stateDir, spec.name);
  const recordOf = (spec: GuestSpec) => join(pathsOf(spec).dir, LIVE_RESTORE_FILE);

  const liveQemu = async (spec: GuestSpec): Promise<ProcessIdentity | undefined> => {
    const boot = await readFile(pathsOf(spec).bootRecord, 'utf8')
      .then((t) => JSON.parse(t) as { identity?: ProcessIdentity })
      .catch(() => undefined);
    return boot?.identity && (await isSameProcess(boot.identity)) ? boot.identity : undefined;
  };

  const hasBacking = async (spec: GuestSpec): Promise<boolean> =>
    (await img.info(pathsOf(spec).disk, { forceShare: true })).backingFile !== undefined;

  /** Runs the stream job in the running QEMU (started, or found from before a daemon restart) to its end. */
  const streamInQemu = async (
    spec: GuestSpec,
    options: { signal?: AbortSignal; speedBytesPerSecond?: number; onProgress?: LiveRestoreProgress },
  ): Promise<void> => {
    const qmp = await connectQmp(pathsOf(spec).qmpSocket, { timeoutMs: 10_000 });
    try {
      const jobs = await qmp.execute<QmpJob[]>('query-jobs');
      if (!jobs.some((j) => j.id === STREAM_JOB)) {
        // Blocks already in the overlay are skipped: a stream started again after a restart resumes.
        await qmp.execute('block-stream', {
          'job-id': STREAM_JOB,
          device: 'root',
          'auto-dismiss': false,
          ...(options.speedBytesPerSecond !== undefined && { speed: options.speedBytesPerSecond }),
        });
      }
      for (;;) {
        const job = (await qmp.execute<QmpJob[]>('query-jobs')).find((j) => j.id === STREAM_JOB);
        if (!job) throw new Error('the copy job of the live restore vanished from QEMU');
        options.onProgress?.(job['current-progress'], job['total-progress']);
        if (job.status === 'concluded') {
          await qmp.execute('job-dismiss', { id: STREAM_JOB });
          if (job.error !== undefined) throw new Error(`QEMU's copy of the archive failed: ${job.error}`);
          return;
        }
        if (options.signal?.aborted) {
          // Cancelled: the job stops; the caller deletes the guest with its overlay.
          await qmp.execute('job-cancel', { id: STREAM_JOB }).catch(() => {});
          throw new TrivisorError('Cancelled', 'The live restore was cancelled');
        }
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    } finally {
      qmp.close();
    }
  };

  return {
    async prepareLiveImport(spec: GuestSpec, source: LiveImportSource): Promise<void> {
      const disk = pathsOf(spec).disk;
      if (await liveQemu(spec))
        throw invalidArgument(`Guest ${spec.name} is running: it cannot be restored live`);
      const name = backingName(source);
      const info = await img.info(name).catch(() => undefined);
      // A backing file inside the archive's disk would point anywhere on this host (another guest's disk…).
      if (info?.format !== 'qcow2' || info.backingFile !== undefined || info.snapshots.length > 0) {
        throw invalidArgument(
          'The archive does not hold a flat qcow2 disk of a vm guest: it is damaged, or make the export again.',
        );
      }
      const own = await img.info(disk);
      const was = await stat(disk);
      const tmp = join(pathsOf(spec).dir, `.tmp-live-disk-${process.pid}.qcow2`);
      try {
        await runner.run([
          ...['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', name, tmp],
          String(Math.max(own.virtualSizeBytes, info.virtualSizeBytes)),
        ]);
        await runner.run(['chown', `${was.uid}:${was.gid}`, tmp]);
        await runner.run(['chmod', (was.mode & 0o7777).toString(8), tmp]);
        // The record first: a disk backed by the archive is never without the daemon's note of it.
        await writeFile(recordOf(spec), `${JSON.stringify(source)}\n`, { mode: 0o600 });
        await rename(tmp, disk);
      } catch (e) {
        await rm(tmp, { force: true });
        await rm(recordOf(spec), { force: true });
        throw e;
      }
    },

    async finishLiveImport(
      spec: GuestSpec,
      options: { signal?: AbortSignal; speedBytesPerSecond?: number; onProgress?: LiveRestoreProgress } = {},
    ): Promise<void> {
      if (await hasBacking(spec)) {
        if (await liveQemu(spec)) {
          await streamInQemu(spec, options);
        } else {
          // Stopped meanwhile (or never started): qemu-img copies what is left, the guest not running.
          log.info({ guest: spec.name }, 'finishing a live restore with qemu-img: the guest does not run');
          await runner.run(['qemu-img', 'rebase', '-q', '-f', 'qcow2', '-b', '', pathsOf(spec).disk], {
            ...(options.signal && { signal: options.signal }),
          });
        }
        if (await hasBacking(spec))
          throw new Error(`Guest ${spec.name}'s disk still has a backing file after the copy`);
      }
      await rm(recordOf(spec), { force: true });
    },
  };
}
