import { parseDurationMs } from '../core/durations.ts';
import { asTrivisorError } from '../core/errors.ts';
import type { GuestSpec, Operation } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { succeeded } from '../services/operation-service.ts';
import type { StorageService } from '../services/storage-service.ts';
import type { OperationService } from '../services/types.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { firesIn, minuteOf } from './minute-clock.ts';

/**
 * Scheduled snapshots with expiry (issue 13 part 5, Incus's keys; decision 0043): each member
 * snapshots its own guests whose `snapshots.schedule` fires in the current minute (running ones;
 * stopped ones too with `snapshots.schedule.stopped=true`), names the snapshot by
 * `snapshots.pattern` (`snap%d` by default: the next free number), and gives it `expiresAt` from
 * `snapshots.expiry`; every pass also deletes its guests' snapshots whose time has come (a
 * snapshot taken by hand has no expiry and is never deleted). Runs missed while the daemon was
 * down are not made up; expired snapshots are deleted at the first pass after they expire.
 */
export interface SnapshotSchedulerDeps {
  store: KvStore;
  hostName: string;
  storage: Pick<StorageService, 'createSnapshot' | 'deleteSnapshot'>;
  operations: Pick<OperationService, 'wait'>;
  log: Logger;
}

export interface SnapshotScheduler {
  /** One pass at `now`: the schedules that fire in its minute, and the expired snapshots (run each minute: minute-clock.ts). */
  pass(now: Date): Promise<void>;
  /** Ends a pass under way early (the daemon stops). */
  stop(): void;
}

/** The pattern with the lowest number no snapshot of the guest has. */
export function nextSnapshotName(pattern: string, taken: ReadonlySet<string>): string {
  for (let n = 0; ; n++) {
    const name = pattern.replace('%d', String(n));
    if (!taken.has(name)) return name;
  }
}

export function createSnapshotScheduler(deps: SnapshotSchedulerDeps): SnapshotScheduler {
  const { store, hostName } = deps;
  const log = deps.log.child({ component: 'snapshot-scheduler' });
  /** The minute each guest was last snapshotted on schedule by this daemon: one snapshot a minute. */
  const lastRun = new Map<string, number>();
  let stopped = false;

  const ended = (op: Operation) => succeeded(deps.operations, op);

  async function snapshotOnSchedule(spec: GuestSpec, minute: Date, up: boolean): Promise<void> {
    const schedule = spec.config['snapshots.schedule'];
    if (!schedule || lastRun.get(spec.name) === minute.getTime()) return;
    if (!up && spec.config['snapshots.schedule.stopped'] !== 'true') return;
    if (!firesIn(schedule, minute)) return;
    lastRun.set(spec.name, minute.getTime());
    const taken = new Set(valuesOf(await records.snapshot.list(store, spec.name)).map((s) => s.name));
    const name = nextSnapshotName(spec.config['snapshots.pattern'] ?? 'snap%d', taken);
    const expiry = spec.config['snapshots.expiry'];
    const expiresAt = expiry
      ? new Date(minute.getTime() + parseDurationMs(expiry, 'snapshots.expiry')).toISOString()
      : undefined;
    await ended(
      await deps.storage.createSnapshot(spec.name, name, { ...(expiresAt !== undefined && { expiresAt }) }),
    );
    log.info({ guest: spec.name, snapshot: name, expiresAt }, 'scheduled snapshot taken');
  }

  async function pass(at: Date): Promise<void> {
    const minute = minuteOf(at);
    const [specs, statuses, snapshots] = await Promise.all([
      records.guest.list(store),
      records.guestStatus.list(store),
      records.snapshot.list(store),
    ]);
    const statusOf = new Map(statuses.items.map((s) => [records.guestStatus.nameOf(s.key), s.value.status]));
    const mine = valuesOf(specs).filter((s) => s.location === hostName && !s.deleting);
    const ours = new Set(mine.map((s) => s.name));
    for (const snap of valuesOf(snapshots)) {
      if (stopped) return;
      if (!ours.has(snap.guest) || snap.expiresAt === undefined || Date.parse(snap.expiresAt) > at.getTime())
        continue;
      await ended(await deps.storage.deleteSnapshot(snap.guest, snap.name))
        .then(() => log.info({ guest: snap.guest, snapshot: snap.name }, 'expired snapshot deleted'))
        .catch((e: unknown) =>
          log.warn(
            { guest: snap.guest, snapshot: snap.name, err: asTrivisorError(e).message },
            'cannot delete an expired snapshot',
          ),
        );
    }
    for (const spec of mine) {
      if (stopped) return;
      const status = statusOf.get(spec.name);
      await snapshotOnSchedule(spec, minute, status === 'Running' || status === 'Frozen').catch(
        (e: unknown) =>
          log.warn({ guest: spec.name, err: asTrivisorError(e).message }, 'scheduled snapshot failed'),
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
