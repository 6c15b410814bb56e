import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULT_BACKUP_FULL_EVERY, DEFAULT_BACKUP_RETENTION_COUNT } from '../core/config-keys.ts';
import { parseDurationMs } from '../core/durations.ts';
import { asTrivisorError } from '../core/errors.ts';
import type { GuestSpec } from '../core/types.ts';
import type { BackupChainLink, PortableChainState } from '../drivers/guest-storage.ts';
import type { Logger } from '../host/logger.ts';
import { succeeded } from '../services/operation-service.ts';
import type { StorageService } from '../services/storage-service.ts';
import type { EventBus, OperationService } from '../services/types.ts';
import {
  chainStateFileOf,
  pruneChainStates,
  readChainState,
  shipChainState,
} from '../storage/chain-state-file.ts';
import {
  listShipped,
  nextShippedLink,
  pruneShipped,
  shipBackup,
  shippedName,
} from '../storage/shipped-backups.ts';
import { compareByteOrder } from '../store/key-order.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';
import { firesIn, minuteOf } from './minute-clock.ts';
import { scheduledGuests } from './watched-subset.ts';

/**
 * Scheduled backups shipped off the member (issue 13 part 5; decisions 0046 and 0062): each
 * member backs up its own guests whose `backups.schedule` fires in the current minute, running or
 * not, with the export's own code (every payload checksummed): a full backup that starts a chain,
 * then incrementals after it, a new full every `backups.full_every` backups (default 7) or as soon
 * as the shipped chain is not whole. It copies the archive into the backup directory
 * (`<dir>/<guest>/<time>-full-<chain>.tar`, `…-incr-<chain>-<n>.tar`: shipped-backups.ts), removes
 * its local copy, and prunes the guest's shipped chains whose every backup is beyond
 * `backups.retention.count` (default 7) or older than `backups.retention.age`, the chain of the
 * newest restorable backup always kept. A failed backup is recorded on the guest (a warning in
 * `list` and `info`, and a `guest-backup-failed` event) until the next one succeeds. The directory is the host administrator's
 * (TRIVISOR_BACKUP_DIR, an NFS mount in production), not a guest key: a project user who may set
 * a guest's keys must not make root write or delete files where they choose.
 */
export interface BackupSchedulerDeps {
  store: KvStore;
  hostName: string;
  storage: Pick<StorageService, 'createBackup' | 'backupFile' | 'deleteBackup'>;
  operations: Pick<OperationService, 'wait'>;
  events: Pick<EventBus, 'publish'>;
  /** The backup directory. */
  directory: string;
  log: Logger;
}

export interface BackupScheduler {
  /**
   * One pass at `at`: the guests whose schedule fires in its minute, backed up, shipped and pruned
   * (run each minute: minute-clock.ts). The first pass lists the guests and watches them on; the
   * others read only this member's guests with a schedule, from the watch, and the failures on
   * record (decision 0080).
   */
  pass(at: Date): Promise<void>;
  /** Ends a pass under way early and stops watching (the daemon stops). */
  stop(): void;
}

export function createBackupScheduler(deps: BackupSchedulerDeps): BackupScheduler {
  const { store, hostName, directory } = deps;
  const log = deps.log.child({ component: 'backup-scheduler' });
  /** The minute each guest was last backed up on schedule by this daemon: one backup a minute. */
  const lastRun = new Map<string, number>();
  let stopped = false;
  const scheduled = scheduledGuests(store, { hostName, key: 'backups.schedule', log });

  /** A backup of the guest made here: its name and the link of its chain it is (none for a whole archive). */
  async function make(
    spec: GuestSpec,
    newChain: boolean,
    continueChain?: PortableChainState,
  ): Promise<{ backup: string; link?: BackupChainLink }> {
    const op = await deps.storage
      .createBackup(spec.name, {
        withSnapshots: false,
        incremental: true,
        ...(newChain && { newChain }),
        ...(!newChain && continueChain && { continueChain }),
      })
      .catch((e: unknown) => {
        // A model whose storage cannot tell what changed: whole archives, as before decision 0062.
        if (asTrivisorError(e).code !== 'NotSupported') throw e;
        return deps.storage.createBackup(spec.name, { withSnapshots: false });
      });
    const { metadata } = await succeeded(deps.operations, op);
    const link = metadata.incremental as BackupChainLink | undefined;
    return { backup: String(metadata.backup ?? ''), ...(link && { link }) };
  }

  async function backUp(spec: GuestSpec, minute: Date): Promise<void> {
    const fullEvery = Number(spec.config['backups.full_every'] ?? DEFAULT_BACKUP_FULL_EVERY);
    const shipped = await listShipped(directory, spec.name);
    const plan = nextShippedLink(shipped, fullEvery);
    // The chain's state after the newest link, shipped beside it: the guest takes it over where its
    // own chain is elsewhere (it moved, it was recovered) and its model can prove the next link.
    const last = plan.newChain
      ? undefined
      : shipped.find((b) => b.link?.chain === plan.after.chain && b.link.sequence === plan.after.sequence);
    const carried =
      last &&
      (await readChainState(chainStateFileOf(last.path), {
        guest: spec.name,
        model: spec.model,
        chain: last.link?.chain ?? '',
        sequence: last.link?.sequence ?? -1,
      }));
    let made = await make(spec, plan.newChain, carried);
    try {
      const { link } = made;
      if (!plan.newChain && link?.kind === 'incremental') {
        const follows = link.chain === plan.after.chain && link.sequence === plan.after.sequence + 1;
        if (!follows) {
          // The guest's chain moved on past what was shipped (an earlier link made but not shipped,
          // an export by hand): this link builds on one the directory lacks, and would be a chain
          // no recovery can restore. A new chain instead, at once.
          log.info(
            { guest: spec.name, made: link, shipped: plan.after },
            'the guest backup chain does not follow the shipped one: a new full backup instead',
          );
          await deps.storage.deleteBackup(spec.name, made.backup).catch(() => {});
          made = await make(spec, true);
        }
      }
      const archive = await deps.storage.backupFile(spec.name, made.backup);
      // The chain state after the link (where the model has one) goes first, beside where the link
      // will be: a state that fails to ship only means a full backup if the guest moves before its
      // next link.
      const state = chainStateFileOf(archive.path);
      const target = join(directory, spec.name, shippedName(minute, made.link));
      if (made.link && (await stat(state).catch(() => undefined))) {
        await shipChainState(target, state).catch((e: unknown) =>
          log.warn({ guest: spec.name, err: asTrivisorError(e).message }, 'backup chain state not shipped'),
        );
      }
      const sent = await shipBackup(directory, spec.name, archive.path, minute, made.link);
      log.info({ guest: spec.name, path: sent.path, sizeBytes: sent.sizeBytes }, 'scheduled backup shipped');
      await pruneChainStates(sent.path).catch(() => {});
    } finally {
      await deps.storage.deleteBackup(spec.name, made.backup).catch(() => {});
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

  const publish = (action: string, spec: GuestSpec, metadata: Record<string, unknown>) =>
    deps.events.publish({
      type: 'lifecycle',
      project: spec.project ?? 'default',
      action,
      source: `/1.0/guests/${spec.name}`,
      metadata: { name: spec.name, model: spec.model, ...metadata },
    });

  /** Records the failure on the guest (a warning until the next success) and says so in an event. */
  async function failed(spec: GuestSpec, minute: Date, e: unknown): Promise<void> {
    const error = asTrivisorError(e).message;
    log.warn({ guest: spec.name, err: error }, 'scheduled backup failed');
    const at = minute.toISOString().replace('.000Z', 'Z');
    await records.backupFailure
      .at(spec.name)
      .put(store, { at, member: hostName, error })
      .catch((err: unknown) =>
        log.warn({ guest: spec.name, err: asTrivisorError(err).message }, 'backup failure not recorded'),
      );
    publish('guest-backup-failed', spec, { at, error });
  }

  async function succeededNow(spec: GuestSpec, hadFailed: boolean): Promise<void> {
    if (!hadFailed) return;
    await store.delete(records.backupFailure.at(spec.name).key);
    publish('guest-backup-recovered', spec, {});
  }

  async function pass(at: Date): Promise<void> {
    const minute = minuteOf(at);
    // The failures on record are few (guests whose last scheduled backup failed): listed each pass.
    const [failures] = await Promise.all([records.backupFailure.list(store), scheduled.ready()]);
    const failing = new Set(failures.items.map((f) => records.backupFailure.nameOf(f.key)));
    const mine = new Map(
      [...scheduled.picked()]
        .sort(([a], [b]) => compareByteOrder(a, b))
        .map(([, s]): [string, GuestSpec] => [s.name, s]),
    );
    // A failure outlives neither its guest nor its schedule.
    for (const name of failing) {
      if (mine.has(name)) continue;
      const spec = (await records.guest.at(name).get(store))?.value;
      if (spec && (spec.location !== hostName || spec.config['backups.schedule'])) continue;
      await store.delete(records.backupFailure.at(name).key).catch(() => {});
    }
    for (const spec of mine.values()) {
      if (stopped) return;
      const schedule = spec.config['backups.schedule'];
      if (!schedule || spec.location !== hostName || spec.deleting) continue;
      if (lastRun.get(spec.name) === minute.getTime()) continue;
      if (!firesIn(schedule, minute, 'backups.schedule')) continue;
      // Read only for a schedule that fires: one status, not every guest's.
      if (!(await records.guestStatus.at(spec.name).get(store))?.value.provisioned) continue;
      lastRun.set(spec.name, minute.getTime());
      await backUp(spec, minute).then(
        () => succeededNow(spec, failing.has(spec.name)),
        (e: unknown) => failed(spec, minute, e),
      );
    }
  }

  return {
    pass,
    stop() {
      stopped = true;
      scheduled.stop();
    },
  };
}
