import { asTrivisorError, cancelled, failedPrecondition } from '../core/errors.ts';
import type { EvacuateMode, GuestSpec, GuestStatus, Operation } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import type { GuestMover } from '../services/guest-move.ts';
import { isHaRestartMark, listMoveMarks } from '../services/move-marks.ts';
import { succeeded } from '../services/operation-service.ts';
import type { GuestService, OperationContext, OperationService } from '../services/types.ts';
import type { KvStore } from '../store/kv.ts';
import { type EvacuationRecord, records, valuesOf } from '../store/records.ts';

/**
 * Evacuation and restore of a member (issue 13 part 3, decision 0041), level-triggered: what
 * to do follows from the records alone, so a daemon that died half way goes on where it was
 * when it starts again, and a pass that finds nothing to do does nothing.
 *
 * - A member marked evacuated moves its guests away one by one (each by the mover, to the member
 *   the scheduler picks: an evacuated member gets nothing; a running vm live under `auto` or
 *   `live-migrate`, any other cold), or stops those whose
 *   `cluster.evacuate` (or the evacuation's mode) says `stop`. Each guest so handled gets an
 *   evacuation record naming its origin before anything is done to it.
 * - A member restored starts again the guests it stopped, and drops the records of guests
 *   that never left; the member that holds a guest moved away from a restored, Online member
 *   moves it back.
 * A guest that cannot be moved away keeps its record with the reason, and is not tried again
 * until the next evacuation. A move back that fails is tried again after 15 s and 60 s (a
 * member just powered on or restarted may refuse the first for a moment), then kept with its
 * reason until the next `cluster restore`, which tries every one again.
 */
export interface EvacuationControllerDeps {
  store: KvStore;
  hostName: string;
  /** `pinned`: why a guest cannot leave (a port forward of this member's address points at it, decision 0075). */
  mover: Pick<GuestMover, 'move'> & Partial<Pick<GuestMover, 'pinned'>>;
  guests: Pick<GuestService, 'changeState' | 'placementFor'>;
  /** `cancel`: a move that did not end within `moveTimeoutMs` is asked to stop (its mover undoes it). */
  operations: Pick<OperationService, 'wait'> & Partial<Pick<OperationService, 'cancel'>>;
  /** The members and their status (`cluster list`): a guest goes back only to an Online member. */
  members: () => Promise<Array<{ name: string; status: string }>>;
  log: Logger;
  /** How often it looks (default 2 s); a pass runs at once after start. */
  intervalMs?: number;
  /**
   * How long one guest's move away may take, from its mark's start (default
   * `EVACUATION_MOVE_TIMEOUT_MS`): after it the guest counts as failed, with the reason, and the
   * evacuation goes on with the next.
   */
  moveTimeoutMs?: number;
  now?: () => number;
}

/**
 * How long an evacuation waits for one guest's move (its operation, then its mark): a live move of
 * a busy vm under TCG or a cold move of a big disk takes minutes, and one that never ends must not
 * keep the evacuation in progress until it is cancelled.
 */
export const EVACUATION_MOVE_TIMEOUT_MS = 15 * 60_000;

/** The reason an evacuation gives for a move that did not end in time. */
export const moveTimedOut = (target: string, timeoutMs: number, phase?: string) =>
  `its move to ${target} did not end within ${formatMinutes(timeoutMs)}${phase ? ` (left at ${phase})` : ''}`;

const formatMinutes = (ms: number) =>
  ms >= 60_000 ? `${Math.round(ms / 60_000)} min` : `${Math.max(1, Math.round(ms / 1000))} s`;

/** After a failed move back, how long until the next try; one more failure than there are delays is final. */
export const RESTORE_RETRY_DELAYS_MS = [15_000, 60_000] as const;

export interface EvacuationController {
  start(): void;
  stop(): Promise<void>;
  /** One look at the records, and what they ask done (tests call it directly). */
  pass(): Promise<void>;
}

const up = (status: GuestStatus | undefined) => status?.status === 'Running' || status?.status === 'Frozen';

/** The mode that applies to `spec`: its own key, else the evacuation's; auto when neither says. */
const modeOf = (spec: GuestSpec, mode: EvacuateMode | undefined): string =>
  spec.config['cluster.evacuate'] ?? mode ?? 'auto';

/** What an evacuation does with `spec`: stop it, or move it (live or cold: `liveMove`). */
export const evacuationAction = (spec: GuestSpec, mode: EvacuateMode | undefined): 'migrate' | 'stop' =>
  modeOf(spec, mode) === 'stop' ? 'stop' : 'migrate';

/**
 * Whether a guest that moves moves live: `live-migrate` asks it (a guest that cannot is refused by
 * the mover, with the reason, and keeps its record); `auto` moves a running vm live (QEMU's
 * migration, decision 0042) and any other guest cold, as Incus's auto does; `migrate` is cold.
 */
export const liveMove = (
  spec: GuestSpec,
  status: GuestStatus | undefined,
  mode: EvacuateMode | undefined,
) => {
  const m = modeOf(spec, mode);
  return m === 'live-migrate' || (m === 'auto' && spec.model === 'vm' && status?.status === 'Running');
};

export function createEvacuationController(deps: EvacuationControllerDeps): EvacuationController {
  const { store, hostName } = deps;
  const log = deps.log.child({ component: 'evacuation' });
  const now = deps.now ?? Date.now;
  const moveTimeoutMs = deps.moveTimeoutMs ?? EVACUATION_MOVE_TIMEOUT_MS;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  /** Undefined when the operation succeeded, else why it did not. */
  const finished = (op: Operation): Promise<string | undefined> =>
    succeeded(deps.operations, op).then(
      () => undefined,
      (e: unknown) => asTrivisorError(e).message,
    );
  const record = (name: string, value: EvacuationRecord) => records.evacuation.at(name).put(store, value);
  const failed = async (name: string, value: EvacuationRecord, error: string) => {
    log.warn({ guest: name, action: value.action, err: error }, 'evacuation step failed');
    await record(name, { ...value, error });
  };

  async function evacuate(mode: EvacuateMode | undefined, evacuations: Map<string, EvacuationRecord>) {
    const [specs, statuses] = await Promise.all([records.guest.list(store), records.guestStatus.list(store)]);
    const statusOf = new Map(statuses.items.map((s) => [records.guestStatus.nameOf(s.key), s.value]));
    for (const spec of valuesOf(specs)) {
      if (stopped) return;
      if (spec.location !== hostName || spec.deleting) continue;
      const done = evacuations.get(spec.name);
      if (done?.error !== undefined) continue;
      const action = evacuationAction(spec, mode);
      const value: EvacuationRecord = { origin: hostName, action, at: new Date().toISOString() };
      try {
        if (action === 'stop') {
          // One stopped before the evacuation stays stopped after the restore: it gets no record.
          if (!up(statusOf.get(spec.name))) continue;
          await record(spec.name, value);
          const error = await finished(await deps.guests.changeState(spec.name, { action: 'stop' }));
          if (error) await failed(spec.name, value, error);
          continue;
        }
        // Pinned here (a port forward of this member's address points at it): it stays, its
        // record saying why, as one the mover refused (decision 0075); no room is taken elsewhere.
        const pinned = await deps.mover.pinned?.(spec);
        if (pinned !== undefined) {
          await failed(spec.name, value, pinned);
          continue;
        }
        if (!deps.guests.placementFor) throw new Error('no scheduler: this daemon is not in a cluster');
        const { member } = await deps.guests.placementFor({ model: spec.model, config: spec.config });
        await record(spec.name, value);
        const live = liveMove(spec, statusOf.get(spec.name), mode);
        const op = await deps.mover.move(spec.name, { target: member, live, reason: 'evacuation' });
        // Bounded: a move that does not end in time is asked to stop, and the guest counts as failed.
        const ended = await deps.operations.wait(op.id, moveTimeoutMs);
        if (ended.status === 'Running' || ended.status === 'Pending') {
          try {
            deps.operations.cancel?.(op.id);
          } catch {
            // Past its cancellable steps: it ends by itself; the guest's record says why it was left.
          }
          await failed(spec.name, value, moveTimedOut(member, moveTimeoutMs));
          continue;
        }
        const error = await finished(ended);
        if (error) await failed(spec.name, value, error);
      } catch (e) {
        await failed(spec.name, value, asTrivisorError(e).message);
      }
    }
  }

  /**
   * The moves away from this member that an evacuation waits for and that have not ended within
   * `moveTimeoutMs` of their start (a mark a resume keeps failing to finish, a daemon that died
   * and left it): their guests count as failed, with the reason, so that the evacuation ends.
   */
  async function overdueMoves(evacuations: Map<string, EvacuationRecord>) {
    for (const mark of await listMoveMarks(store)) {
      if (isHaRestartMark(mark)) continue;
      const value = evacuations.get(mark.guest);
      if (mark.from !== hostName || value?.origin !== hostName || value.error !== undefined) continue;
      if (value.action !== 'migrate' || now() - Date.parse(mark.startedAt) <= moveTimeoutMs) continue;
      await failed(mark.guest, value, moveTimedOut(mark.to, moveTimeoutMs, mark.phase ?? 'started'));
      evacuations.set(mark.guest, { ...value, error: moveTimedOut(mark.to, moveTimeoutMs) });
    }
  }

  /** This member is not evacuated: what it stopped starts again; records of guests that stayed go. */
  async function restoreHere(evacuations: Map<string, EvacuationRecord>) {
    for (const [name, value] of evacuations) {
      if (stopped) return;
      if (value.origin !== hostName) continue;
      const [spec, status] = await Promise.all([
        records.guest.at(name).get(store),
        records.guestStatus.at(name).get(store),
      ]);
      if (spec && spec.value.location !== hostName) continue; // its holder brings it back
      if (spec && value.action === 'stop' && !up(status?.value) && !spec.value.deleting) {
        const error = await finished(await deps.guests.changeState(name, { action: 'start' }));
        if (error) {
          log.warn({ guest: name, err: error }, 'a guest stopped by an evacuation did not start again');
          continue;
        }
      }
      await store.delete(records.evacuation.key(name));
    }
  }

  /** Guests this member holds that came from a member restored since: back to it, when it is Online. */
  async function bringBack(evacuations: Map<string, EvacuationRecord>) {
    const online = new Set((await deps.members()).filter((m) => m.status === 'Online').map((m) => m.name));
    for (const [name, value] of evacuations) {
      if (stopped) return;
      if (value.origin === hostName || value.action !== 'migrate' || value.error !== undefined) continue;
      if (!online.has(value.origin)) continue;
      if (value.retry && now() < Date.parse(value.retry.at)) continue;
      const [spec, status] = await Promise.all([
        records.guest.at(name).get(store),
        records.guestStatus.at(name).get(store),
      ]);
      if (!spec || spec.value.location !== hostName || spec.value.deleting) continue;
      try {
        // Back as it left: live for a running vm unless its key says otherwise.
        const live = liveMove(spec.value, status?.value, undefined);
        const error = await finished(
          await deps.mover.move(name, { target: value.origin, live, reason: 'restore' }),
        );
        if (error) await failedBack(name, value, error);
        else await store.delete(records.evacuation.key(name));
      } catch (e) {
        await failedBack(name, value, asTrivisorError(e).message);
      }
    }
  }

  /** A move back failed: tried again after a delay, or final once the delays are spent. */
  async function failedBack(name: string, value: EvacuationRecord, error: string) {
    const { retry, ...rest } = value;
    const tries = (retry?.tries ?? 0) + 1;
    const delay = RESTORE_RETRY_DELAYS_MS[tries - 1];
    if (delay === undefined) {
      await failed(name, rest, error);
      return;
    }
    const at = new Date(now() + delay).toISOString();
    log.warn(
      { guest: name, origin: value.origin, err: error, tries, retryAt: at },
      'a move back failed: tried again',
    );
    await record(name, { ...rest, retry: { tries, at, error } });
  }

  async function pass(): Promise<void> {
    const [me, listed] = await Promise.all([
      records.member.at(hostName).get(store),
      records.evacuation.list(store),
    ]);
    if (!me) return;
    const evacuations = new Map(listed.items.map((r) => [records.evacuation.nameOf(r.key), r.value]));
    if (me.value.evacuated) {
      await overdueMoves(evacuations);
      await evacuate(me.value.evacuateMode, evacuations);
      return;
    }
    if (evacuations.size === 0) return;
    await restoreHere(evacuations);
    await bringBack(evacuations);
  }

  const tick = () => {
    if (stopped) return;
    running = pass()
      .catch((e: unknown) => log.error({ err: asTrivisorError(e).message }, 'evacuation pass failed'))
      .finally(() => {
        running = undefined;
        if (!stopped) timer = setTimeout(tick, deps.intervalMs ?? 2000);
        timer?.unref();
      });
  };

  return {
    start: tick,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
    pass,
  };
}

/**
 * The guests that came from `member` and could not go back to it are tried again (a `cluster
 * restore` asked again): their records lose the reason. Those of guests that never left it go
 * at its own next pass, as after any restore.
 */
export async function retryFailedReturns(store: KvStore, member: string): Promise<void> {
  const listed = await records.evacuation.list(store);
  for (const r of listed.items) {
    if (r.value.origin !== member || r.value.error === undefined) continue;
    const { error: _, retry: __, ...rest } = r.value;
    const ref = records.evacuation.at(records.evacuation.nameOf(r.key));
    // Changed meanwhile (moved back, deleted): that is newer than this request.
    await store.txn({ compare: [ref.unchanged(r.modRevision)], success: [ref.putOp(rest)] });
  }
}

/**
 * How far the evacuation or restore of `member` is, from the records: the guests still to
 * leave it (or to come back to it), and those that could not, with the reason. A guest whose
 * move away from `member` has not ended (its move mark is there: the records name the
 * destination once it is handed over, but the source may still be sending its archive or
 * removing its copy) has not left yet: a member powered off then would leave the move to its
 * next start, and the guest's next move refused meanwhile.
 */
export async function evacuationProgress(
  store: KvStore,
  member: string,
  action: 'evacuate' | 'restore',
): Promise<{ left: string[]; failed: Array<{ guest: string; error: string }> }> {
  const [me, specs, statuses, listed, marks] = await Promise.all([
    records.member.at(member).get(store),
    records.guest.list(store),
    records.guestStatus.list(store),
    records.evacuation.list(store),
    action === 'evacuate' ? listMoveMarks(store) : [],
  ]);
  const evacuations = new Map(listed.items.map((r) => [records.evacuation.nameOf(r.key), r.value]));
  const statusOf = new Map(statuses.items.map((s) => [records.guestStatus.nameOf(s.key), s.value]));
  const failed = [...evacuations]
    .filter(([, r]) => r.origin === member && r.error !== undefined)
    .map(([guest, r]) => ({ guest, error: r.error as string }));
  const erred = new Set(failed.map((f) => f.guest));
  if (action === 'evacuate') {
    const left = valuesOf(specs)
      .filter((s) => s.location === member && !s.deleting && !erred.has(s.name))
      .filter((s) =>
        evacuationAction(s, me?.value.evacuateMode) === 'stop' ? up(statusOf.get(s.name)) : true,
      )
      .map((s) => s.name);
    const listed = new Set(left);
    // A move the evacuation gave up on (it did not end in time) is no longer waited for.
    const leaving = marks
      .filter((m) => m.from === member && !isHaRestartMark(m) && !listed.has(m.guest) && !erred.has(m.guest))
      .map((m) => m.guest);
    return { left: [...left, ...leaving], failed };
  }
  const left = [...evacuations].filter(([g, r]) => r.origin === member && !erred.has(g)).map(([g]) => g);
  return { left, failed };
}

/**
 * The work of the operation that answers an evacuation or restore request: follows `progress`
 * (the records, read every second) until no guest is left to go, then fails in one line naming
 * the guests that could not, if any. Cancelling only stops following.
 */
export async function followEvacuation(
  progress: () => Promise<{ left: string[]; failed: Array<{ guest: string; error: string }> }>,
  member: string,
  action: 'evacuate' | 'restore',
  ctx: Pick<OperationContext, 'progress' | 'signal'>,
): Promise<undefined> {
  for (;;) {
    const { left, failed } = await progress();
    if (left.length === 0) {
      if (failed.length === 0) return undefined;
      throw failedPrecondition(
        `${failed.length} guest${failed.length === 1 ? '' : 's'} could not ${action === 'evacuate' ? 'leave' : 'come back to'} ${member}: ${failed
          .slice(0, 3)
          .map((f) => `${f.guest} (${f.error})`)
          .join('; ')}${failed.length > 3 ? '; …' : ''}`,
      );
    }
    ctx.progress(
      null,
      `${left.length} guest${left.length === 1 ? '' : 's'} to go: ${left.slice(0, 5).join(', ')}`,
    );
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (ctx.signal.aborted) throw cancelled(`The ${action} of member ${member} is no longer followed`);
  }
}
