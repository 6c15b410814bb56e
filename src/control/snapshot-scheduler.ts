import { parseDurationMs } from '../core/durations.ts';
import { asTrivisorError } from '../core/errors.ts';
import type { GuestSpec, Operation } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { succeeded } from '../services/operation-service.ts';
import type { StorageService } from '../services/storage-service.ts';
import type { OperationService } from '../services/types.ts';
import { compareByteOrder } from '../store/key-order.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { firesIn, minuteOf } from './minute-clock.ts';
import { scheduledGuests, watchSubset } from './watched-subset.ts';

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
  /**
   * One pass at `now`: the schedules that fire in its minute, and the expired snapshots (run each
   * minute: minute-clock.ts). The first pass lists the guests and snapshots and watches them on;
   * the others read only this member's guests with a schedule and the snapshots with an expiry,
   * from the watch (decision 0080).
   */
  pass(now: Date): Promise<void>;
  /** Ends a pass under way early and stops watching (the daemon stops). */
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
  const scheduled = scheduledGuests(store, { hostName, key: 'snapshots.schedule', log });
  /** The snapshots that expire (any guest's: one taken by hand may have an expiry too). */
  const expiring = watchSubset({
    store,
    prefix: records.snapshot.prefix,
    pick: (kv) => {
      const s = records.snapshot.decode(kv);
      return s.expiresAt === undefined ? undefined : { guest: s.guest, name: s.name, expiresAt: s.expiresAt };
    },
    log,
  });

  const ended = (op: Operation) => succeeded(deps.operations, op);

  async function snapshotOnSchedule(spec: GuestSpec, minute: Date): Promise<void> {
    const schedule = spec.config['snapshots.schedule'];
    if (!schedule || lastRun.get(spec.name) === minute.getTime()) return;
    if (!firesIn(schedule, minute)) return;
    // Read only for a schedule that fires: one status, not every guest's.
    const status = (await records.guestStatus.at(spec.name).get(store))?.value.status;
    const up = status === 'Running' || status === 'Frozen';
    if (!up && spec.config['snapshots.schedule.stopped'] !== 'true') return;
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

  /** Whether a guest is this member's and not being deleted (read for an expired snapshot only). */
  const ours = async (guest: string) => {
    const spec = (await records.guest.at(guest).get(store))?.value;
    return spec !== undefined && spec.location === hostName && !spec.deleting;
  };

  async function pass(at: Date): Promise<void> {
    const minute = minuteOf(at);
    await Promise.all([scheduled.ready(), expiring.ready()]);
    // In key order, as a list gave them.
    const expired = [...expiring.picked()]
      .filter(([, s]) => Date.parse(s.expiresAt) <= at.getTime())
      .sort(([a], [b]) => compareByteOrder(a, b))
      .map(([, s]) => s);
    for (const snap of expired) {
      if (stopped) return;
      if (!(await ours(snap.guest))) continue;
      await ended(await deps.storage.deleteSnapshot(snap.guest, snap.name))
        .then(() => log.info({ guest: snap.guest, snapshot: snap.name }, 'expired snapshot deleted'))
        .catch((e: unknown) =>
          log.warn(
            { guest: snap.guest, snapshot: snap.name, err: asTrivisorError(e).message },
            'cannot delete an expired snapshot',
          ),
        );
    }
    const mine = [...scheduled.picked()]
      .sort(([a], [b]) => compareByteOrder(a, b))
      .map(([, s]) => s)
      .filter((s) => !s.deleting);
    for (const spec of mine) {
      if (stopped) return;
      await snapshotOnSchedule(spec, minute).catch((e: unknown) =>
        log.warn({ guest: spec.name, err: asTrivisorError(e).message }, 'scheduled snapshot failed'),
      );
    }
  }

  return {
    pass,
    stop() {
      stopped = true;
      scheduled.stop();
      expiring.stop();
    },
  };
}
