import { DEFAULT_BACKUP_RETENTION_COUNT } from '../core/config-keys.ts';
import { parseDurationMs } from '../core/durations.ts';
import { asTrivisorError } from '../core/errors.ts';
import type { GuestSpec } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { succeeded } from '../services/operation-service.ts';
import type { StorageService } from '../services/storage-service.ts';
import type { OperationService } from '../services/types.ts';
import { pruneShipped, shipBackup } from '../storage/shipped-backups.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { firesIn, minuteOf } from './minute-clock.ts';

/**
 * Scheduled backups shipped off the member (issue 13 part 5; decision 0046): each member backs
 * up its own guests whose `backups.schedule` fires in the current minute, running or not, with
 * the export's own code (every payload checksummed), copies the archive into the backup
 * directory (`<dir>/<guest>/<time>.tar`, shipped-backups.ts), removes its local copy, and prunes
 * the guest's shipped backups beyond `backups.retention.count` (default 7) or older than
 * `backups.retention.age`, the newest always kept. The directory is the host administrator's
 * (TRIVISOR_BACKUP_DIR, an NFS mount in production), not a guest key: a project user who may set
 * a guest's keys must not make root write or delete files where they choose.
 */
export interface BackupSchedulerDeps {
  store: KvStore;
  hostName: string;
  storage: Pick<StorageService, 'createBackup' | 'backupFile' | 'deleteBackup'>;
  operations: Pick<OperationService, 'wait'>;
  /** The backup directory. */
  directory: string;
  log: Logger;
}

export interface BackupScheduler {
  /** One pass at `at`: the guests whose schedule fires in its minute, backed up, shipped and pruned (run each minute: minute-clock.ts). */
  pass(at: Date): Promise<void>;
  /** Ends a pass under way early (the daemon stops). */
  stop(): void;
}

export function createBackupScheduler(deps: BackupSchedulerDeps): BackupScheduler {
  const { store, hostName, directory } = deps;
  const log = deps.log.child({ component: 'backup-scheduler' });
  /** The minute each guest was last backed up on schedule by this daemon: one backup a minute. */
  const lastRun = new Map<string, number>();
  let stopped = false;

  async function backUp(spec: GuestSpec, minute: Date): Promise<void> {
    const made = await succeeded(
      deps.operations,
      await deps.storage.createBackup(spec.name, { withSnapshots: false }),
    );
    const backup = String(made.metadata.backup ?? '');
    try {
      const archive = await deps.storage.backupFile(spec.name, backup);
      const shipped = await shipBackup(directory, spec.name, archive.path, minute);
      log.info(
        { guest: spec.name, path: shipped.path, sizeBytes: shipped.sizeBytes },
        'scheduled backup shipped',
      );
    } finally {
      await deps.storage.deleteBackup(spec.name, backup).catch(() => {});
    }
    const age = spec.config['backups.retention.age'];
    const removed = await pruneShipped(
      directory,
      spec.name,
      {
        count: Number(spec.config['backups.retention.count'] ?? DEFAULT_BACKUP_RETENTION_COUNT),
        ...(age !== undefined && { maxAgeMs: parseDurationMs(age, 'backups.retention.age') }),
      },
      minute,
    );
    if (removed.length > 0)
      log.info({ guest: spec.name, removed }, 'shipped backups past their retention removed');
  }

  async function pass(at: Date): Promise<void> {
    const minute = minuteOf(at);
    const [specs, statuses] = await Promise.all([records.guest.list(store), records.guestStatus.list(store)]);
    const provisioned = new Set(
      statuses.items.filter((s) => s.value.provisioned).map((s) => records.guestStatus.nameOf(s.key)),
    );
    for (const spec of valuesOf(specs)) {
      if (stopped) return;
      const schedule = spec.config['backups.schedule'];
      if (!schedule || spec.location !== hostName || spec.deleting || !provisioned.has(spec.name)) continue;
      if (lastRun.get(spec.name) === minute.getTime()) continue;
      if (!firesIn(schedule, minute, 'backups.schedule')) continue;
      lastRun.set(spec.name, minute.getTime());
      await backUp(spec, minute).catch((e: unknown) =>
        log.warn({ guest: spec.name, err: asTrivisorError(e).message }, 'scheduled backup failed'),
      );
    }
  }

  return {
    pass,
    stop() {
      stopped = true;
    },
  };
}
