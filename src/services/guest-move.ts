import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  beginHaMove,
  endHaMove,
  type HaMoveEnd,
  type HaMoveTicket,
  haDecidedSinceSwitchOver,
  haGiveBackPart,
  haLostSourcePart,
  haSwitchOverPart,
} from '../control/ha/ha-move.ts';
import { haKeys, type Token } from '../control/ha/types.ts';
import { migrationDowntimeLimitMs, migrationStallLimitMs } from '../core/config-keys.ts';
import {
  asTrivisorError,
  cancelled,
  conflict,
  failedPrecondition,
  invalidArgument,
  notFound,
  notSupported,
  TrivisorError,
} from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { GuestSpec, GuestStatus, Model, Operation, ProcessIdentity } from '../core/types.ts';
import type { ImageHandle } from '../drivers/guest-driver.ts';
import type { GuestStorage } from '../drivers/guest-storage.ts';
import type {
  IncomingEndpoints,
  LiveMigration,
  MigrationProgress,
  MigrationTls,
} from '../drivers/live-migration.ts';
import { failpoint } from '../host/failpoints.ts';
import { type Logger, silentLogger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { HostSubnet } from '../network/default-network.ts';
import { type ForwardPin, forwardPins, pinNote, pinRefusal } from '../network/forward-pins.ts';
import { digestOf } from '../storage/backup-archive.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import type { Compare, KvStore, TxnOp } from '../store/kv.ts';
import { ownedBy, records, valuesOf } from '../store/records.ts';
import { addressMembers } from './address-members.ts';
import { corrupted, feedPayload, type OpenedArchive, openArchive } from './archive-reader.ts';
import { whileMemberUp } from './member-watch.ts';
import {
  INCOMING_PREFIX,
  incomingMarkName,
  type MoveImportsSwept,
  SWEEP_EVERY_MS,
  stagedPartName,
  sweepMoveImports,
  workDirPrefix,
} from './move-imports.ts';
import {
  clearMoveMark,
  listMoveMarks,
  type MoveKind,
  type MoveMark,
  markMove,
  moveMarkOp,
  saveMoveMark,
} from './move-marks.ts';
import { succeeded } from './operation-service.ts';
import { newBackupName } from './storage-backups.ts';
import type { StorageService } from './storage-service.ts';
import type { GuestService, OperationService } from './types.ts';
import { convergedTo, provisionedAt, waitForGuest } from './wait-guest.ts';

/**
 * Moving a guest to another member, cold (issue 13 part 1; decision 0040). The member that holds
 * the guest runs the move as one operation:
 *
 * 1. the guest is stopped, if it runs, and written to a backup archive with its snapshots (the
 *    export's own code: every payload checksummed on the way);
 * 2. the records change owner in one transaction, compared against the spec as read and against
 *    this member's ownership: the spec names the destination (desired Stopped), the location key
 *    too, and the status is removed, so that the destination's controller makes the guest's
 *    files from its image as for a new guest;
 * 3. once the destination has made them, the archive is sent to it, and it applies the archive
 *    onto them (its checksums verified) before it answers;
 * 4. the guest is started there if it ran here, and only then are this member's files removed.
 *
 * An HA guest's record is marked `moving` before step 1 and given to the destination in step 2's
 * transaction (back to this member if the move is undone; see `ha-move.ts`).
 *
 * Until step 4 ends, this member's files are untouched. A failure after step 2 puts the records
 * back as they were (this member's ownership, the status as it was, the snapshots' records), asks
 * the destination to remove what it made, and starts the guest here again if it ran: the guest
 * is where it was, and no half-copy is left on the destination.
 *
 * The move's mark is its journal (decision 0079), updated in the hand-over's and the undoing's
 * transactions: a daemon that dies half way undoes the move when it starts again, or finishes it
 * once the destination has the whole guest (`resumeUnfinished`).
 */
export interface MoveRequest {
  /** The member to move to. */
  target: string;
  /** Keep the guest running through the move (vm: QEMU's live migration, decision 0042). */
  live?: boolean;
  /** Why it moves, as an HA guest's record says while it moves (default `migration`). */
  reason?: string;
}

/** How the member that moves a guest reaches the destination's member API. */
export interface MoveTransport {
  /** Sends the archive at `archivePath` to `member`, which applies it onto its copy of guest `guest`; resolves once it is applied. */
  send(member: string, guest: string, archivePath: string, signal: AbortSignal): Promise<void>;
  /** Asks `member` to remove its copy of guest `guest` (after a move was rolled back). */
  discard(member: string, guest: string): Promise<void>;
  /**
   * Asks `member` to get ready for guest `guest`'s live migration (its disk made, its QEMU
   * waiting); resolves with that QEMU's process and where it listens.
   */
  prepareLive(
    member: string,
    guest: string,
    signal: AbortSignal,
  ): Promise<{ process: ProcessIdentity; endpoints: IncomingEndpoints; tls: MigrationTls }>;
  /** Tells `member` that the migration is in and the records name it: the guest runs there. */
  finishLive(member: string, guest: string): Promise<void>;
}

export interface GuestMoverDeps {
  store: KvStore;
  operations: OperationService;
  /** This member's name. */
  hostName: string;
  guests: Pick<GuestService, 'changeState'>;
  storage: Pick<StorageService, 'createBackup' | 'backupFile' | 'deleteBackup'>;
  /** Removes this member's files of a guest (its driver's delete). */
  removeLocal: (spec: GuestSpec) => Promise<void>;
  /** The cluster's members and their status (`cluster list`). */
  members: () => Promise<Array<{ name: string; status: string }>>;
  transport: MoveTransport;
  /** Why `--live` cannot move this guest here (a probe's finding, or the model's limit); undefined: it can. */
  liveRefusal: (spec: GuestSpec) => Promise<string | undefined>;
  /** This member's live migration of a model (its driver's), the source's side of a live move. */
  migrationOf?: (model: Model) => LiveMigration | undefined;
  log: Logger;
  /** How long the destination may take to make the guest's files, and to start it (default 5 min). */
  convergeMs?: number;
  /** This member's interfaces' addresses: a port forward listening on one pins its target here (decision 0075). */
  hostSubnets?: () => Promise<HostSubnet[]>;
  /**
   * The fencing token this member's HA agent holds live now (its state file: `liveAgentToken`),
   * undefined while it holds none: the token a move's HA mark is ended under (decision 0089,
   * amended). Default: this member's heartbeat as the store holds it (no agent to ask).
   */
  haToken?: () => Token | undefined;
  /**
   * How long a resume waits for this member's HA agent to hold a live lease before it ends an HA
   * guest's mark (a member booted again takes a new one once its old lease expired; default 15 s).
   */
  haLeaseWaitMs?: number;
  /**
   * How often a move that waits on its destination (a cold move: its files made, the archive
   * received; a live one: its prepare and the migration) looks whether the destination is still a
   * member that runs, and how long it must be seen gone before the move is undone (defaults
   * `MEMBER_POLL_MS`, `MEMBER_GONE_AFTER_MS`).
   */
  memberWatch?: { everyMs?: number; goneAfterMs?: number };
  /** The clock a failed resume's next try is set on, and a lost member's absence measured on (default `Date.now`). */
  now?: () => number;
  /**
   * How long another member must be seen gone (not Online nor Evacuated) before the marks of its
   * moves whose records moved on without it are released (`releaseAbandoned`; default 15 min).
   */
  abandonedAfterMs?: number;
  /**
   * Asks this member's link to a guest on a shared pool to go when the guest runs elsewhere
   * (`PoolService.releaseShared`, which keeps it while a move of the guest from here is marked):
   * called once a mark of a move from here is removed, so that a move left to HA, or whose records
   * name another member, does not keep the link until the daemon's next start (decision 0042).
   */
  releaseShared?: (guest: string) => Promise<void>;
}

export interface GuestMover {
  move(name: string, request: MoveRequest): Promise<Operation>;
  /**
   * Why guest `spec` (this member's) cannot leave this member, in one line, or undefined: the port
   * forwards of this member's addresses that point at it (decision 0075). The evacuation shows it.
   */
  pinned(spec: GuestSpec): Promise<string | undefined>;
}

/** The mover as the daemon that runs it sees it: it also finishes the moves it left unfinished. */
export interface ResumingMover extends GuestMover {
  /**
   * Finishes or undoes, one after the other, each move this member's daemon left unfinished when
   * it died (their marks, decision 0079), each as an operation; answers how many it found. Run at
   * start, before anything else moves guests from here.
   */
  resumeUnfinished(): Promise<number>;
  /**
   * Runs `resumeUnfinished` every `everyMs` (default a minute): a move whose undoing failed while
   * this daemon lives, and one whose resume failed, are tried again (each failure doubles its
   * wait, up to 30 min) without waiting for the daemon's next start.
   */
  retryUnfinished(everyMs?: number): { stop(): void };
  /**
   * Releases the marks of moves whose source member has been gone for `abandonedAfterMs` and whose
   * records moved on without it (the guest deleted, given to another member, HA deciding about it,
   * changed on the destination): exactly the marks that source's own resume would only remove.
   * Answers the guests released. Run by `retryUnfinished`'s timer too.
   */
  releaseAbandoned(): Promise<string[]>;
  /**
   * Starts, as their destination, the HA guests whose cold move's source was lost to HA after the
   * hand-over, before it started them here (decision 0108): those whose destination has the whole
   * guest (a shared pool's from the hand-over on, an archive's once sent), that ran when the move
   * began, whose spec is as the hand-over wrote it (desired Stopped) and whose HA record is this
   * member's as the hand-over gave it. The source stopped them before the hand-over; nothing of
   * them runs there. Answers the guests started. Run by `retryUnfinished`'s timer, every few seconds.
   */
  startForLostSources(): Promise<string[]>;
}

const up = (status: GuestStatus | undefined) => status?.status === 'Running' || status?.status === 'Frozen';

/** How soon an unfinished move whose resume failed is tried again, at first and at most (doubling). */
const RETRY_FIRST_MS = 60_000;
const RETRY_MAX_MS = 30 * 60_000;
/** How often a resume waiting for this member's HA lease looks again. */
const HA_LEASE_POLL_MS = 250;
/** How long a move's source must be seen gone before a mark its records moved on from is released. */
const ABANDONED_AFTER_MS = 15 * 60_000;
/** How often a destination looks for HA guests moved here whose source was lost before starting them (decision 0108). */
const LOST_SOURCE_EVERY_MS = 5_000;
/** The kinds of mark that are a move's journal (absent: an archive move's, from before kinds). */
const JOURNALED: ReadonlySet<string | undefined> = new Set([undefined, 'archive', 'shared', 'live']);

/**
 * A move's journal as this mover keeps it: its mark (`move-marks.ts`), and, after a resume that
 * failed, when the next one is due (`at`, on this member's clock: only this member resumes its
 * moves) and the wait that set it, which the next failure doubles. It is in the store with the
 * mark, so a daemon that restarts keeps the backoff: a crash loop no longer tries every
 * unfinished move at each start (decision 0079, amended).
 */
export interface MoveJournal extends MoveMark {
  retry?: { at: string; delayMs: number };
}

export function createGuestMover(deps: GuestMoverDeps): ResumingMover {
  const { store, hostName } = deps;
  /** Guests whose move this daemon runs now: their marks are no unfinished moves. */
  const running = new Set<string>();
  /**
   * When an unfinished move whose last resume failed is tried again: kept in its journal
   * (`MoveJournal.retry`), and here too for a journal that could not be written.
   */
  const retries = new Map<string, { dueAt: number; delayMs: number }>();
  /** Moves given up before their hand-over whose HA mark could not be ended: their journal stays. */
  const haMarkLeft = new WeakSet<MoveMark>();
  const now = deps.now ?? Date.now;
  const abandonedAfterMs = deps.abandonedAfterMs ?? ABANDONED_AFTER_MS;
  /** When this member first saw each other member gone that a move mark names as its source. */
  const goneSince = new Map<string, number>();
  let resuming = false;
  const log = deps.log.child({ component: 'guest-move' });
  const convergeMs = deps.convergeMs ?? 5 * 60_000;
  const haLeaseWaitMs = deps.haLeaseWaitMs ?? 15_000;
  /**
   * While a move waits on its destination (`memberWatch`): aborted once the destination has been
   * seen gone for a while (a dead daemon's lease expired), so that the move is undone within
   * seconds instead of at `convergeMs`, or a migration to nowhere stopped.
   */
  const whileDestinationUp = (target: string) =>
    whileMemberUp(deps.members, target, 'the guest was being moved to it', deps.memberWatch);
  /**
   * Tells `target` to discard its copy of guest `name` after a move to it was undone. A member
   * that cannot be told now (its daemon dead or cut off) finds it in the store when it is back
   * (`keys.moveDiscard`): its receiver's sweep discards the copy then. A refusal because the guest
   * is that member's is no copy to discard.
   */
  const discardThere = async (target: string, name: string): Promise<void> => {
    try {
      await deps.transport.discard(target, name);
    } catch (e) {
      const err = asTrivisorError(e);
      if (err.code === 'Conflict') return;
      log.warn(
        { guest: name, member: target, err: err.message },
        'its copy there is left: it goes when the member is back',
      );
      await store
        .put(keys.moveDiscard(target, name), new Date().toISOString())
        .catch((e2: unknown) =>
          log.error(
            { guest: name, member: target, err: asTrivisorError(e2).message },
            'its copy there is left, and the store was not told either',
          ),
        );
    }
  };

  /** Waits for an operation of this member; throws its error, with its code, when it failed. */
  const finished = (op: Operation) => succeeded(deps.operations, op);

  /**
   * The guest runs on the destination now: this member's copy (files, and a live move's QEMU)
   * goes. One that cannot be removed is logged and left: nothing here uses it any more.
   */
  const dropLocalCopy = (spec: GuestSpec) =>
    deps
      .removeLocal({ ...spec, location: hostName })
      .catch((e: unknown) =>
        log.warn(
          { guest: spec.name, err: asTrivisorError(e).message },
          "the moved guest's old files are left",
        ),
      );

  /**
   * Removes the mark of move `mark` (its move has ended, whichever way), then asks again for the
   * release of this member's link to the guest: the release refused while the mark was there.
   */
  const unmark = async (mark: MoveMark) => {
    await clearMoveMark(store, mark.guest, mark);
    await deps
      .releaseShared?.(mark.guest)
      .catch((e: unknown) =>
        log.warn(
          { guest: mark.guest, err: asTrivisorError(e).message },
          "the link to the guest's files on a shared pool is left",
        ),
      );
  };

  /** The port forwards of this member's addresses that point at guest `spec` (decision 0075). */
  async function pinsOf(spec: GuestSpec): Promise<ForwardPin[]> {
    const networks = valuesOf(await records.network.list(store));
    // Most clusters have no forward: then the members and this host's interfaces are not read
    // (an evacuation asks this of every guest).
    if (!networks.some((n) => (n.forwards ?? []).length > 0)) return [];
    const memberOf = await addressMembers({ store, hostName, hostSubnets: deps.hostSubnets });
    return forwardPins({ ...spec, location: hostName }, networks, memberOf);
  }

  /** Refusals that need no work: one line each, nothing changed. */
  async function check(name: string, request: MoveRequest) {
    assertDnsLabel(name, 'guest name');
    assertDnsLabel(request.target, 'member name');
    const [spec, status, pool] = await Promise.all([
      records.guest.at(name).get(store),
      records.guestStatus.at(name).get(store),
      records.guestPool.at(name).get(store),
    ]);
    if (!spec) throw notFound(`Guest ${name} not found`);
    if (spec.value.location !== hostName) {
      throw conflict(`Guest ${name} is on member ${spec.value.location}: ask it to move the guest`);
    }
    if (request.target === hostName) throw invalidArgument(`Guest ${name} is on member ${hostName} already`);
    const member = (await deps.members()).find((m) => m.name === request.target);
    if (!member) throw notFound(`Member ${request.target} not found; see trivisor cluster list`);
    if (member.status !== 'Online') {
      throw failedPrecondition(
        `Cannot move guest ${name} to ${member.name}: ${member.name} is ${member.status}`,
      );
    }
    if (request.live) {
      const refusal = await deps.liveRefusal(spec.value);
      if (refusal !== undefined || !deps.migrationOf?.(spec.value.model)) {
        throw notSupported(refusal ?? `${spec.value.model} guests cannot move live from ${hostName}`);
      }
    }
    const disks = Object.values(spec.value.disks ?? {}).map((d) => `${d.pool}/${d.source}`);
    if (disks.length > 0) {
      throw failedPrecondition(
        `Guest ${name} has volumes attached (${disks.join(', ')}): volumes do not move with their guest yet; detach them first`,
      );
    }
    // A guest on a shared pool (decision 0049) is where it was: only its records change hands.
    const onShared =
      pool !== undefined && (await records.pool.at(pool.value.pool).get(store))?.value.shared === true;
    if (pool && pool.value.pool !== 'default' && !onShared) {
      throw failedPrecondition(
        `Guest ${name} is on storage pool ${pool.value.pool}: only guests on the default pool or a shared pool move yet`,
      );
    }
    if (spec.value.deleting) throw conflict(`Guest ${name} is being deleted`);
    const pins = await pinsOf(spec.value);
    if (pins.length > 0) {
      throw conflict(pinRefusal(name, { from: hostName, to: request.target }, pins));
    }
    if (!status?.value.provisioned || status.value.observedGeneration < spec.value.generation) {
      throw conflict(`Guest ${name} is busy with another change; wait for its operation to finish`);
    }
    if (request.live) {
      if (spec.value.desired !== 'Running' || status.value.status !== 'Running') {
        throw failedPrecondition(
          `Guest ${name} is ${status.value.status}: a live move needs it running; move it without --live`,
        );
      }
      migrationDowntimeLimitMs(spec.value.config['migration.downtime_limit']);
      migrationStallLimitMs(spec.value.config['migration.stall_limit']);
    }
    return { spec: spec.value, status: status.value, specRevision: spec.modRevision, onShared };
  }

  /** Writes the spec's desired state and waits for its owner's controller to reach it. */
  async function setDesired(name: string, desired: GuestSpec['desired'], signal: AbortSignal): Promise<void> {
    const now = await records.guest.at(name).get(store);
    if (!now) throw conflict(`Guest ${name} was deleted meanwhile`);
    const generation = now.value.generation + 1;
    const ref = records.guest.at(name);
    const r = await store.txn({
      compare: [ref.unchanged(now.modRevision)],
      success: [ref.putOp({ ...now.value, desired, generation })],
    });
    if (!r.succeeded) throw conflict(`Guest ${name} was changed at the same time; retry`);
    await waitForGuest(
      store,
      name,
      convergedTo(generation),
      AbortSignal.any([signal, AbortSignal.timeout(convergeMs)]),
    );
  }

  const mover: ResumingMover = {
    async pinned(spec) {
      const pins = await pinsOf(spec);
      return pins.length > 0 ? pinNote(spec.name, hostName, pins) : undefined;
    },

    async move(name, request) {
      const checked = await check(name, request);
      const reason = request.reason ?? 'migration';
      const kind: MoveKind = request.live ? 'live' : checked.onShared ? 'shared' : 'archive';
      // Every guest's move is marked while it runs (decision 0075): it cannot be made HA meanwhile,
      // nor moved twice. Compared against the spec as checked. The mark is also the move's
      // journal (decision 0079): each step that changes the records updates it in the same
      // transaction, and a daemon that dies half way finishes or undoes the move from it.
      const mark: MoveMark = {
        guest: name,
        from: hostName,
        to: request.target,
        reason,
        startedAt: new Date().toISOString(),
        kind,
        phase: 'started',
        wasRunning: up(checked.status),
        ...(kind === 'live' && checked.onShared && { sharedDisk: true }),
      };
      // Counted as running before its mark is written: the retry timer, listing the marks meanwhile,
      // must never take a move that runs for one left unfinished.
      if (running.has(name)) throw conflict(`Guest ${name} is being moved already`);
      running.add(name);
      let release: () => Promise<void>;
      try {
        release = await markMove(store, mark, [records.guest.at(name).unchanged(checked.specRevision)]);
      } catch (e) {
        running.delete(name);
        throw e;
      }
      let ha: HaMoveTicket | undefined;
      try {
        // An HA guest's record says it moves before anything of it leaves (refused, changing
        // nothing, while HA restarts it elsewhere); every path below ends or hands the mark over.
        // A cold move's stop is the mover's (decision 0108): the mark says the guest ran, so that
        // HA, giving it away from a source lost before the hand-over, starts it again.
        ha = await beginHaMove(store, {
          guest: name,
          from: hostName,
          to: request.target,
          reason,
          wasRunning: kind !== 'live' && mark.wasRunning === true,
        });
        if (ha) {
          mark.ha = ha;
          await saveMoveMark(store, mark);
        }
        const op =
          kind === 'live'
            ? await moveLive(name, request.target, checked, ha, mark)
            : kind === 'shared'
              ? await moveShared(name, request.target, checked, ha, mark)
              : await moveArchived(name, request.target, checked, ha, mark);
        void deps.operations
          .wait(op.id)
          .then(
            (ended) => settle(mark, ended),
            () => settle(mark, undefined),
          )
          .finally(() => running.delete(name));
        return op;
      } catch (e) {
        // The operation did not start. An HA mark that cannot be ended yet keeps the journal,
        // which ends it later (decision 0079, amended).
        if (!(await endMarkOrKeep(ha, mark))) await release();
        running.delete(name);
        throw e;
      }
    },

    async resumeUnfinished() {
      if (resuming) return 0;
      resuming = true;
      try {
        // A move this daemon runs is its operation's, not left unfinished; one whose last try
        // failed waits for its next (decision 0079).
        // Only a move's journal: a mark of another kind (an HA restart's binding, which its CRM
        // makes and removes) is nobody's to resume.
        const marks: MoveJournal[] = (await listMoveMarks(store)).filter(
          (m) => m.from === hostName && JOURNALED.has(m.kind),
        );
        // A move whose mark went meanwhile (finished, its member removed) has no retry to wait for.
        const marked = new Set(marks.map((m) => m.guest));
        for (const guest of retries.keys()) if (!marked.has(guest)) retries.delete(guest);
        const mine = marks.filter((m) => !running.has(m.guest) && retryOf(m).dueAt <= now());
        for (const mark of mine) {
          const spec = await records.guest.at(mark.guest).get(store);
          const op = deps.operations.start({
            project: spec ? projectOfRecord(spec.value) : 'default',
            description: `Finishing the move of guest ${mark.guest} to ${mark.to}, left unfinished when ${hostName}'s daemon stopped or could not undo it`,
            resources: { guests: [`/1.0/guests/${mark.guest}`] },
            run: () => resume(mark),
          });
          const ended = await deps.operations.wait(op.id).catch(() => undefined);
          if (ended?.status === 'Success') retries.delete(mark.guest);
          else {
            const last = retryOf(mark).delayMs;
            const delayMs = last === 0 ? RETRY_FIRST_MS : Math.min(2 * last, RETRY_MAX_MS);
            const dueAt = now() + delayMs;
            retries.set(mark.guest, { dueAt, delayMs });
            await saveRetry(mark, { at: new Date(dueAt).toISOString(), delayMs });
          }
        }
        return mine.length;
      } finally {
        resuming = false;
      }
    },

    retryUnfinished(everyMs = RETRY_FIRST_MS) {
      /** Runs `work` every `ms` (unref'd), a failure logged as `failed`. */
      const every = (ms: number, work: () => Promise<unknown>, failed: string) => {
        const timer = setInterval(() => {
          void work().catch((e: unknown) => log.warn({ err: asTrivisorError(e).message }, failed));
        }, ms);
        timer.unref();
        return timer;
      };
      const timers = [
        every(
          LOST_SOURCE_EVERY_MS,
          () => mover.startForLostSources(),
          "lost sources' moves here were not looked at",
        ),
        every(everyMs, () => mover.resumeUnfinished(), 'unfinished moves were not resumed'),
        every(everyMs, () => mover.releaseAbandoned(), "lost members' move marks were not looked at"),
      ];
      return { stop: () => timers.forEach(clearInterval) };
    },

    async startForLostSources() {
      const marks = (await listMoveMarks(store)).filter(
        (m) =>
          m.to === hostName &&
          m.from !== hostName &&
          m.ha !== undefined &&
          m.wasRunning === true &&
          ((m.kind === 'shared' && m.phase === 'handed-over') ||
            (m.kind === 'archive' && m.phase === 'sent')),
      );
      const started: string[] = [];
      for (const mark of marks) {
        const did = await startForLostSource(mark).catch((e: unknown) => {
          log.warn(
            { guest: mark.guest, err: asTrivisorError(e).message },
            "a lost source's move was not looked at",
          );
          return false;
        });
        if (!did) continue;
        log.warn(
          { guest: mark.guest, from: mark.from, phase: mark.phase },
          "an HA guest moved here is started: its move's source was lost before it started it (decision 0108)",
        );
        started.push(mark.guest);
      }
      return started;
    },

    async releaseAbandoned() {
      const marks = (await listMoveMarks(store)).filter((m) => m.from !== hostName && JOURNALED.has(m.kind));
      const sources = new Set(marks.map((m) => m.from));
      for (const member of goneSince.keys()) if (!sources.has(member)) goneSince.delete(member);
      if (marks.length === 0) return [];
      // A member is gone while its lease is (Offline), powered off (Standby) or removed; measured
      // on this member's clock from when it was first seen so, as the CRM's margin is.
      const status = new Map((await deps.members()).map((m) => [m.name, m.status]));
      const t = now();
      for (const member of sources) {
        const s = status.get(member);
        if (s === 'Online' || s === 'Evacuated') goneSince.delete(member);
        else if (!goneSince.has(member)) goneSince.set(member, t);
      }
      const released: string[] = [];
      for (const mark of marks) {
        const since = goneSince.get(mark.from);
        if (since === undefined || t - since < abandonedAfterMs) continue;
        const kv = await store.get(keys.guestMove(mark.guest));
        if (!kv) continue;
        const why = await movedOnWithout(mark);
        if (why === undefined) continue;
        // An archive's whole copy on the source, which its resume would have dropped: its
        // receiver's sweep discards it once the source is back (`sweepDiscards`).
        const copyLeft = (mark.kind ?? 'archive') === 'archive' && mark.phase === 'sent';
        const r = await store.txn({
          compare: [{ key: kv.key, target: 'modRevision', op: '=', value: kv.modRevision }],
          success: [
            { type: 'delete', key: kv.key },
            ...(copyLeft
              ? [
                  {
                    type: 'put' as const,
                    key: keys.moveDiscard(mark.from, mark.guest),
                    value: new Date(t).toISOString(),
                  },
                ]
              : []),
          ],
        });
        if (!r.succeeded) continue;
        log.warn(
          {
            guest: mark.guest,
            from: mark.from,
            to: mark.to,
            phase: mark.phase ?? 'started',
            goneMs: t - since,
            why,
          },
          "a lost member's move mark is released: the guest's records moved on without it",
        );
        released.push(mark.guest);
      }
      return released;
    },
  };
  return mover;

  /**
   * Why move `mark`'s records moved on without its source, so that its source's resume would
   * only remove the mark (and keep its own files): the guest deleted; its records naming neither
   * end the journal expects; HA deciding about it since the hand-over; its spec changed on the
   * destination before an archive came. Undefined where the resume would undo or finish the move
   * (the source's copy may be the only whole one, or it must start the guest, drop its own files):
   * that mark stays for its source, or for `cluster remove`.
   */
  async function movedOnWithout(mark: MoveMark): Promise<string | undefined> {
    const [spec, owner] = await Promise.all([
      records.guest.at(mark.guest).get(store),
      records.guestLocation.at(mark.guest).get(store),
    ]);
    if (!spec) return 'the guest was deleted';
    const holder = owner?.value ?? spec.value.location;
    const phase = mark.phase ?? 'started';
    if (phase === 'started' || phase === 'rolled-back') {
      return holder !== mark.from ? `its records name ${holder}` : undefined;
    }
    if (holder !== mark.to || !mark.before || mark.generation === undefined) {
      return `its records name ${holder}`;
    }
    if (mark.ha && (await haDecidedSinceSwitchOver(store, mark.ha))) {
      return 'HA decided about it since its hand-over';
    }
    const kind = mark.kind ?? 'archive';
    if (kind === 'archive' && phase === 'handed-over') {
      if (spec.value.generation !== mark.generation) return 'it was changed on the destination';
    }
    // The destination has the whole guest and its spec changed since the hand-over (started there
    // for a lost source, decision 0108, or changed by its administrator): the source's resume
    // would only drop its own link (its start-up sweep does too) or copy (the discard left for it
    // with the release does, `releaseAbandoned`).
    if ((kind === 'shared' || phase === 'sent') && spec.value.generation !== mark.generation) {
      return 'it runs on its destination, changed there since its hand-over';
    }
    return undefined;
  }

  /**
   * Starts guest `mark.guest`, moved here, if its source was lost to HA (its HA heartbeat gone, or
   * another lease's) and everything is as the hand-over left it: its spec (desired Stopped, the
   * hand-over's generation), its HA record (`haLostSourcePart`) and the journal, all compared in the
   * transaction that writes its desired Running. This member's agent then starts it. Answers
   * whether it did. The journal stays: the source's resume finds the guest changed here and only
   * drops its own copy (or link) and the journal.
   */
  async function startForLostSource(mark: MoveMark): Promise<boolean> {
    const ticket = mark.ha;
    if (!ticket || mark.generation === undefined) return false;
    const [kv, spec, owner] = await Promise.all([
      store.get(keys.guestMove(mark.guest)),
      records.guest.at(mark.guest).get(store),
      records.guestLocation.at(mark.guest).get(store),
    ]);
    if (!kv || !spec) return false;
    const holder = owner?.value ?? spec.value.location;
    if (holder !== hostName || spec.value.deleting || spec.value.desired !== 'Stopped') return false;
    if (spec.value.generation !== mark.generation) return false;
    const ha = await haLostSourcePart(store, ticket);
    if (!ha) return false;
    const ref = records.guest.at(mark.guest);
    const r = await store.txn({
      compare: [
        ref.unchanged(spec.modRevision),
        { key: kv.key, target: 'modRevision', op: '=', value: kv.modRevision },
        ...ha,
      ],
      success: [ref.putOp({ ...spec.value, desired: 'Running', generation: spec.value.generation + 1 })],
    });
    return r.succeeded;
  }

  /** When move `m`'s next resume is due, and the wait that set it: its journal's or this daemon's, the longer. */
  function retryOf(m: MoveJournal): { dueAt: number; delayMs: number } {
    // A journal's `at` is never further off than its wait when written: further, the clock was set
    // back since, and the move would wait as long as it went back; it is due now instead.
    const at = m.retry ? Date.parse(m.retry.at) : Number.NaN;
    const kept = m.retry && { dueAt: at - now() > m.retry.delayMs ? 0 : at, delayMs: m.retry.delayMs };
    const here = retries.get(m.guest);
    let later = { dueAt: 0, delayMs: 0 };
    for (const x of [kept, here]) {
      if (!x) continue;
      later = {
        dueAt: Number.isFinite(x.dueAt) ? Math.max(later.dueAt, x.dueAt) : later.dueAt,
        delayMs: Math.max(later.delayMs, x.delayMs),
      };
    }
    return later;
  }

  /**
   * Writes a failed resume's next try into its journal, compared on the journal as read again
   * (the resume may have changed its phase; another move's mark, or none, is left alone). One
   * that cannot be written is logged: this daemon's own wait still holds until it restarts.
   */
  async function saveRetry(of: MoveMark, retry: NonNullable<MoveJournal['retry']>): Promise<void> {
    const key = keys.guestMove(of.guest);
    try {
      const kv = await store.get(key);
      if (!kv) return;
      const current = JSON.parse(kv.value) as MoveJournal;
      if (current.startedAt !== of.startedAt || current.from !== of.from || current.to !== of.to) return;
      const journal: MoveJournal = { ...current, retry };
      await store.txn({
        compare: [{ key, target: 'modRevision', op: '=', value: kv.modRevision }],
        success: [moveMarkOp(journal)],
      });
    } catch (e) {
      log.warn(
        { guest: of.guest, err: asTrivisorError(e).message },
        "a failed resume's next try was not journaled: a restart tries it at once",
      );
    }
  }

  /**
   * Ends an HA guest's move mark after a move given up before its hand-over (`endMark`); answers
   * true when it could not and HA has not decided about the guest either (this member's agent held
   * no live lease within the wait): the move's journal then stays (`settle`), and the resume ends
   * the mark once the agent holds one, and only then starts the guest here again (decision 0079,
   * amended).
   */
  async function endMarkOrKeep(ha: HaMoveTicket | undefined, mark: MoveMark): Promise<boolean> {
    const end = await endMark(ha);
    const left = end !== undefined && !end.ended && !end.final;
    if (left) haMarkLeft.add(mark);
    return left;
  }

  /** A move given up before its hand-over whose HA mark could not be ended: the guest waits here for its journal. */
  function haMarkKept(
    name: string,
    target: string,
    err: TrivisorError,
    how: { wasRunning: boolean; live?: boolean },
  ): TrivisorError {
    const moved = how.live ? `${name} live` : name;
    const stays = how.live ? 'it stays running on' : 'it stays on';
    return new TrivisorError(
      err.code,
      `Cannot move guest ${moved} to ${target}: ${err.message}; ${stays} ${hostName}, but its HA record still says it moves (this member's HA agent holds no live lease): ${hostName} ends that from the move's journal within minutes${how.wasRunning ? ', and only then starts the guest again' : ''}`,
    );
  }

  /**
   * After a move's operation ended: its journal goes, unless the operation failed with the records
   * still the destination's (`handed-over`, `sent`): its undoing failed too (a store that did not
   * answer, records changed meanwhile), and the journal is what finishes or undoes it later, at
   * the next try of `resumeUnfinished` (its timer, or the daemon's next start).
   */
  async function settle(mark: MoveMark, ended: Operation | undefined): Promise<void> {
    if (ended?.status !== 'Success') {
      // Its reason, in the daemon's log too: the operation's error is gone once the operation is.
      log.warn(
        {
          guest: mark.guest,
          target: mark.to,
          kind: mark.kind,
          status: ended?.status ?? 'unknown',
          err: ended?.error ?? 'its operation could not be read',
        },
        'a move failed',
      );
    }
    const handed = mark.phase === 'handed-over' || mark.phase === 'sent';
    if (ended?.status !== 'Success' && !handed && haMarkLeft.has(mark)) {
      log.error(
        { guest: mark.guest, member: mark.to },
        "a failed move's HA mark could not be ended: its journal is kept, to end it and start the guest again",
      );
      return;
    }
    if (ended?.status !== 'Success' && handed) {
      log.error(
        { guest: mark.guest, member: mark.to, phase: mark.phase },
        'a failed move could not be undone: its journal is kept, to be finished or undone from it',
      );
      return;
    }
    await unmark(mark);
  }

  /**
   * Finishes or undoes a move this member's daemon left unfinished (decision 0079), from its
   * journal: whichever keeps the guest's data. Before the hand-over the records are this member's
   * and the destination has nothing of the guest (a live move's waiting QEMU aside): undone. After
   * it, a cold archive move whose destination has not applied the whole archive is undone (this
   * member's copy is whole, the destination's empty or half); once it has, and for the moves
   * whose destination has everything from the hand-over on (a shared pool, a live move's
   * switch-over), it is finished. This member's copy goes only once the destination has the whole
   * guest. The mark stays where a step could not be done, for the next try.
   */
  async function resume(mark: MoveMark): Promise<Record<string, unknown>> {
    const name = mark.guest;
    const target = mark.to;
    const kind = mark.kind ?? 'archive';
    const phase = mark.phase ?? 'started';
    const at = { guest: name, member: target, phase };
    const [spec, owner] = await Promise.all([
      records.guest.at(name).get(store),
      records.guestLocation.at(name).get(store),
    ]);
    const dropBackup = async () => {
      if (mark.backup) await deps.storage.deleteBackup(name, mark.backup).catch(() => {});
    };
    const done = async (outcome: string) => {
      await dropBackup();
      await unmark(mark);
      log.info({ ...at, outcome }, 'an unfinished move was resumed');
      return { outcome };
    };
    const discard = () => discardThere(target, name);
    const startHere = async () => {
      if (!mark.wasRunning || kind === 'live') return;
      const now = await records.guest.at(name).get(store);
      if (now && now.value.desired !== 'Running' && !now.value.deleting) {
        await setDesired(name, 'Running', AbortSignal.timeout(convergeMs));
      }
    };
    /**
     * A live move's source QEMU: what the migration added to it (its mirror job, the NBD node, the
     * credentials) goes, and the guest runs again; answers what was undone.
     */
    const recoverSource = async (): Promise<string[]> => {
      if (kind !== 'live' || !spec) return [];
      const migration = deps.migrationOf?.(spec.value.model);
      if (!migration) return [];
      return migration.recoverSource({ ...spec.value, location: hostName }).catch((e: unknown) => {
        log.error(
          { ...at, err: asTrivisorError(e).message },
          "the guest's QEMU here could not be brought back as before the move",
        );
        return [];
      });
    };
    // Deleted meanwhile: nothing is left to move (its delete removed what was its).
    if (!spec) return done('the guest was deleted');
    // The location key is what transactions compare (a guest recorded before them has its spec's).
    const holder = owner?.value ?? spec.value.location;

    if (phase === 'started' || phase === 'rolled-back') {
      if (holder !== hostName) {
        log.error(at, "the guest's records name another member now: its files here are kept");
        return done(`left to ${holder}`);
      }
      // A live move's destination QEMU goes before this member's resumes (decision 0061's order).
      if (kind === 'live' || phase === 'rolled-back') await discard();
      const undoneInQemu = await recoverSource();
      if (phase === 'started') {
        // The HA mark goes under the token this member's agent holds now, whether or not its
        // member restarted since the move began (decision 0089, amended): then HA lets it start here.
        const end = await endMark(mark.ha);
        if (end && !end.ended) {
          if (!end.final) throw notEndedYet(name, target, end.reason);
          // HA ended or finished the move meanwhile: the guest is where HA put it.
          const where = (await records.guestLocation.at(name).get(store))?.value ?? holder;
          if (where !== hostName) {
            log.error(
              { ...at, reason: end.reason },
              'HA gave the guest to another member: its files here are kept',
            );
            return done(`left to HA on ${where}`);
          }
        }
      }
      await startHere();
      const result = await done('undone: the guest stays here');
      return undoneInQemu.length > 0 ? { ...result, undoneInQemu } : result;
    }

    // handed-over or sent: the hand-over's transaction gave the records to the destination.
    const before = mark.before;
    if (holder !== target || !before || mark.generation === undefined) {
      log.error(at, "the guest's records changed since its hand-over: its files here are kept");
      return done(`left to ${holder}`);
    }
    const recordsOf = (b: NonNullable<MoveMark['before']>) => ({ ...b, before: b.spec });
    // HA decided about the guest since the hand-over (its record names another owner or lease than
    // the hand-over gave it): the move is no longer this member's to undo (decision 0089), and
    // nothing of it here is dropped.
    const leftToHa = async () => {
      if (!mark.ha || !(await haDecidedSinceSwitchOver(store, mark.ha))) return undefined;
      log.error(
        { ...at, backup: mark.backup },
        "HA decided about the guest since its hand-over: this member's copy and the archive are kept",
      );
      await unmark(mark);
      return { outcome: 'left to HA' };
    };
    /** Nobody changed the spec since the hand-over (the destination's copy has not run). */
    const untouched = spec.value.generation === mark.generation;
    if (kind === 'archive' && phase === 'handed-over') {
      if (!untouched) {
        // Changed on the destination (started, say) without the guest's data: neither copy is dropped.
        log.error(
          { ...at, backup: mark.backup },
          "the guest was changed on the destination before its archive arrived: this member's copy and the archive are kept",
        );
        await unmark(mark);
        return { outcome: 'kept both copies' };
      }
      const decided = await leftToHa();
      if (decided) return decided;
      // This member's copy is whole; the destination's empty or half: undone.
      const back = await rollBack(name, target, recordsOf(before), mark.wasRunning === true, mark.ha, mark);
      if (!back) throw notUndone(name, target);
      return done('undone: the guest stays here');
    }
    // The destination has the whole guest (the archive applied, a shared pool, a switch-over).
    try {
      if (kind === 'live') {
        await deps.transport
          .finishLive(target, name)
          .catch((e: unknown) =>
            log.warn({ ...at, err: asTrivisorError(e).message }, 'the destination was not told to run it'),
          );
        if (mark.sharedDisk) {
          await deps
            .migrationOf?.(before.spec.model)
            ?.releaseSource({ ...before.spec, location: hostName })
            .catch((e: unknown) =>
              log.error(
                { ...at, err: asTrivisorError(e).message },
                'the paused QEMU here could not be ended',
              ),
            );
        }
      } else if (untouched) {
        await waitForGuest(store, name, provisionedAt(mark.generation), AbortSignal.timeout(convergeMs));
        if (mark.wasRunning) await setDesired(name, 'Running', AbortSignal.timeout(convergeMs));
      }
    } catch (e) {
      // The destination cannot run it, and it has not run there: back here, as a move that fails.
      log.warn({ ...at, err: asTrivisorError(e).message }, 'the destination could not run the guest');
      const decided = await leftToHa();
      if (decided) return decided;
      const back = await rollBack(name, target, recordsOf(before), mark.wasRunning === true, mark.ha, mark);
      if (!back) throw notUndone(name, target);
      return done('undone: the guest stays here');
    }
    await dropLocalCopy(before.spec);
    return done(`finished: the guest is on ${target}`);
  }

  /** A resume that could not undo its move: the journal stays for the next try. */
  function notUndone(name: string, target: string): TrivisorError {
    return conflict(
      `Guest ${name}'s move to ${target} could not be undone; it is tried again within minutes, and at the daemon's next start`,
    );
  }

  /** A resume that could not end an HA guest's move mark yet (no live HA lease here): the journal stays. */
  function notEndedYet(name: string, target: string, reason: string): TrivisorError {
    return conflict(
      `Guest ${name}'s move to ${target} could not be undone yet: ${reason}; it is tried again within minutes, and at the daemon's next start`,
    );
  }

  /** A move that failed after its hand-over and whose undoing failed too: its journal is kept (`settle`). */
  function unsettled(name: string, target: string, err: TrivisorError): TrivisorError {
    return new TrivisorError(
      err.code,
      `Cannot move guest ${name} to ${target}: ${err.message}; it could not be undone either (its records name ${target}): it is finished or undone from its journal by ${hostName} within minutes`,
    );
  }

  /** The token this member's HA agent holds live now (`deps.haToken`), or its heartbeat's in the store. */
  async function haTokenNow(): Promise<Token | undefined> {
    if (deps.haToken) return deps.haToken();
    return (await store.get(haKeys.heartbeat(hostName)))?.createRevision;
  }

  /**
   * Ends an HA guest's move mark after a move given up before its switch-over, under the token
   * this member's agent holds now (decision 0089, amended: a source restarted since has a new one),
   * waiting up to `waitMs` for the agent to hold a live lease that the store's heartbeat holds.
   * One that cannot end it says why (`final`: HA ended or finished the move meanwhile) and leaves
   * it to the CRM.
   */
  async function endMark(
    ha: HaMoveTicket | undefined,
    waitMs = haLeaseWaitMs,
  ): Promise<HaMoveEnd | undefined> {
    if (!ha) return undefined;
    const deadline = Date.now() + waitMs;
    for (;;) {
      const end = await haTokenNow()
        .then((token) => endHaMove(store, ha, token))
        .catch(
          (e: unknown): HaMoveEnd => ({ ended: false, reason: asTrivisorError(e).message, final: false }),
        );
      if (end.ended) return end;
      if (end.final || Date.now() >= deadline) {
        // No live token from the agent within the wait while the store still holds the lease the
        // move began under (an agent too slow to write its state, say): that lease is still this
        // member's, and only the mark goes, the record keeping its token, as before the rule. A
        // member booted again never waits that long for its old lease to expire.
        const held = end.final
          ? undefined
          : await store.get(haKeys.heartbeat(hostName)).then(
              (kv) => kv?.createRevision,
              () => undefined,
            );
        if (held !== undefined && held === ha.fromToken) {
          const again = await endHaMove(store, ha, held).catch(() => undefined);
          if (again?.ended) return again;
        }
        log.warn({ guest: ha.guest, reason: end.reason }, "the HA record's move mark is left to the CRM");
        return end;
      }
      await new Promise((r) => setTimeout(r, HA_LEASE_POLL_MS));
    }
  }

  /** The member guest `name`'s records name now (its location key, else its spec's), or undefined once it is gone. */
  async function holderOf(name: string): Promise<string | undefined> {
    const [spec, owner] = await Promise.all([
      records.guest.at(name).get(store),
      records.guestLocation.at(name).get(store),
    ]);
    return spec ? (owner?.value ?? spec.value.location) : undefined;
  }

  /**
   * A cold move that failed: rolled back if the records named the destination already, else the
   * guest started again here (or, for an HA guest whose mark cannot go yet, left stopped with
   * its journal). Returns the error to throw.
   */
  async function coldMoveFailed(
    e: unknown,
    m: {
      name: string;
      target: string;
      flipped: { before: GuestSpec; status: GuestStatus; snapshots: SnapshotRecord[] } | undefined;
      wasRunning: boolean;
      ha: HaMoveTicket | undefined;
      mark: MoveMark;
    },
  ): Promise<TrivisorError> {
    const { name, target, flipped, wasRunning, ha, mark } = m;
    const err = asTrivisorError(e);
    if (flipped) {
      if (!(await rollBack(name, target, flipped, wasRunning, ha, mark))) return unsettled(name, target, err);
    } else if (await endMarkOrKeep(ha, mark)) {
      // The mark goes first: HA starts an HA guest only once its record no longer moves. One
      // that cannot go yet keeps the guest stopped, and the journal, whose resume ends it.
      return haMarkKept(name, target, err, { wasRunning });
    } else {
      // HA may have ended the move meanwhile and given the guest to another member (its source
      // was lost to HA: decision 0108): it runs there if it ran, and nothing of it starts here.
      const where = ha ? await holderOf(name).catch(() => hostName) : hostName;
      if (where !== hostName) {
        return new TrivisorError(
          err.code,
          `Cannot move guest ${name} to ${target}: ${err.message}; ${where === undefined ? 'it was deleted meanwhile' : `HA gave it to ${where} meanwhile`}`,
        );
      }
      if (wasRunning) {
        await deps.guests
          .changeState(name, { action: 'start' })
          .then(finished)
          .catch((e2: unknown) =>
            log.warn({ guest: name, err: asTrivisorError(e2).message }, 'not started again'),
          );
      }
    }
    return new TrivisorError(
      err.code,
      `Cannot move guest ${name} to ${target}: ${err.message}; it stays on ${hostName}`,
    );
  }

  /** The cold move through an archive (steps 1–4 above). */
  async function moveArchived(
    name: string,
    target: string,
    checked: { spec: GuestSpec; status: GuestStatus },
    ha: HaMoveTicket | undefined,
    mark: MoveMark,
  ): Promise<Operation> {
    const { spec, status } = checked;
    const wasRunning = up(status);
    return deps.operations.start({
      project: projectOfRecord(spec),
      description: `Moving guest ${name} to ${target}`,
      resources: { guests: [`/1.0/guests/${name}`] },
      async run(ctx) {
        let backup: string | undefined;
        /** Set once the records name the destination: from then on a failure is rolled back. */
        let flipped: { before: GuestSpec; status: GuestStatus; snapshots: SnapshotRecord[] } | undefined;
        let copied: { copiedBytes: number; copyMs: number } | undefined;
        let destination: ReturnType<typeof whileDestinationUp> | undefined;
        try {
          if (wasRunning) {
            ctx.progress(0, 'stopping the guest');
            await finished(await deps.guests.changeState(name, { action: 'stop' }));
          }
          ctx.progress(10, 'writing the guest and its snapshots to an archive');
          // Named here and journaled before it is written: a daemon that dies from here on removes
          // it when it starts again, whether or not its writing had finished (decision 0079).
          const named = newBackupName();
          mark.backup = named;
          await saveMoveMark(store, mark);
          await finished(await deps.storage.createBackup(name, { withSnapshots: true, name: named }));
          backup = named;
          const archive = await deps.storage.backupFile(name, backup);

          ctx.progress(40, `handing the guest over to ${target}`);
          const [now, nowStatus, snapshots] = await Promise.all([
            records.guest.at(name).get(store),
            records.guestStatus.at(name).get(store),
            records.snapshot.list(store, name),
          ]);
          if (!now || !nowStatus || now.value.deleting || up(nowStatus.value)) {
            throw conflict(`Guest ${name} was changed while it was being moved`);
          }
          const guard = ha ? await haSwitchOverPart(store, ha) : { compare: [], success: [] };
          const handed = handedOver(mark, now.value, nowStatus.value, valuesOf(snapshots));
          const flip = await handOver(
            store,
            now,
            hostName,
            target,
            [...guard.success, moveMarkOp(handed)],
            guard.compare,
          );
          const { generation } = flip;
          if (!flip.succeeded) throw conflict(`Guest ${name} was changed while it was being moved; retry`);
          Object.assign(mark, handed);
          flipped = { before: now.value, status: nowStatus.value, snapshots: valuesOf(snapshots) };

          ctx.progress(50, `${target} makes the guest's files`);
          destination = whileDestinationUp(target);
          await waitForGuest(
            store,
            name,
            provisionedAt(generation),
            AbortSignal.any([ctx.signal, AbortSignal.timeout(convergeMs), destination.signal]),
          );
          ctx.progress(60, `sending ${archive.sizeBytes} bytes to ${target}`);
          const sendStarted = Date.now();
          await deps.transport.send(
            target,
            name,
            archive.path,
            AbortSignal.any([ctx.signal, destination.signal]),
          );
          destination.stop();
          // What the copy measured, for the rebalancer's bandwidth of this pair (issue 14 §2).
          copied = { copiedBytes: archive.sizeBytes, copyMs: Date.now() - sendStarted };
          // The destination has the whole archive: from here on a daemon that dies finishes the move.
          mark.phase = 'sent';
          await saveMoveMark(store, mark);
          if (wasRunning) {
            ctx.progress(90, `starting the guest on ${target}`);
            await setDesired(name, 'Running', ctx.signal);
          }
        } catch (e) {
          // A destination seen gone is the cause, whatever the wait it cut short answered.
          const cause = destination ? destination.causeOf(e) : e;
          throw await coldMoveFailed(cause, { name, target, flipped, wasRunning, ha, mark });
        } finally {
          destination?.stop();
          if (backup) await deps.storage.deleteBackup(name, backup).catch(() => {});
        }
        await dropLocalCopy(spec);
        return { location: target, ...copied };
      },
    });
  }

  /**
   * A cold move of a guest on a shared pool (decision 0049): its files are already where the
   * destination sees them, so nothing is copied. The guest is stopped, the records change hands
   * (its snapshots' too: they are in its directory), the destination links the guest's directory
   * and starts it if it ran; this member then drops only its link. A failure after the hand-over
   * puts the records back as the archive move does.
   */
  async function moveShared(
    name: string,
    target: string,
    checked: { spec: GuestSpec; status: GuestStatus },
    ha: HaMoveTicket | undefined,
    mark: MoveMark,
  ): Promise<Operation> {
    const { spec, status } = checked;
    const wasRunning = up(status);
    return deps.operations.start({
      project: projectOfRecord(spec),
      description: `Moving guest ${name} to ${target}`,
      resources: { guests: [`/1.0/guests/${name}`] },
      async run(ctx) {
        let flipped: { before: GuestSpec; status: GuestStatus; snapshots: SnapshotRecord[] } | undefined;
        let destination: ReturnType<typeof whileDestinationUp> | undefined;
        try {
          if (wasRunning) {
            ctx.progress(0, 'stopping the guest');
            await finished(await deps.guests.changeState(name, { action: 'stop' }));
          }
          failpoint('move.shared.stopped', log, { guest: name });
          ctx.progress(30, `handing the guest over to ${target} (its files are on a shared pool)`);
          const [now, nowStatus, snapshots] = await Promise.all([
            records.guest.at(name).get(store),
            records.guestStatus.at(name).get(store),
            records.snapshot.list(store, name),
          ]);
          if (!now || !nowStatus || now.value.deleting || up(nowStatus.value)) {
            throw conflict(`Guest ${name} was changed while it was being moved`);
          }
          const theirs = valuesOf(snapshots).map((s) =>
            records.snapshot.at(name, s.name).putOp({ ...s, location: target }),
          );
          const guard = ha ? await haSwitchOverPart(store, ha) : { compare: [], success: [] };
          const handed = handedOver(mark, now.value, nowStatus.value, valuesOf(snapshots));
          const flip = await handOver(
            store,
            now,
            hostName,
            target,
            [...theirs, ...guard.success, moveMarkOp(handed)],
            guard.compare,
          );
          if (!flip.succeeded) throw conflict(`Guest ${name} was changed while it was being moved; retry`);
          Object.assign(mark, handed);
          flipped = { before: now.value, status: nowStatus.value, snapshots: valuesOf(snapshots) };
          failpoint('move.shared.handed-over', log, { guest: name });
          ctx.progress(50, `${target} takes the guest's files over`);
          destination = whileDestinationUp(target);
          await waitForGuest(
            store,
            name,
            provisionedAt(flip.generation),
            AbortSignal.any([ctx.signal, AbortSignal.timeout(convergeMs), destination.signal]),
          );
          destination.stop();
          if (wasRunning) {
            ctx.progress(80, `starting the guest on ${target}`);
            await setDesired(name, 'Running', ctx.signal);
          }
        } catch (e) {
          const cause = destination ? destination.causeOf(e) : e;
          throw await coldMoveFailed(cause, { name, target, flipped, wasRunning, ha, mark });
        } finally {
          destination?.stop();
        }
        // removeLocal of a guest on a shared pool drops this member's link only.
        await dropLocalCopy(spec);
        return { location: target, shared: true };
      },
    });
  }

  /**
   * A live move (decision 0042): the destination's QEMU waits, the disk and the RAM go over, and
   * at switch-over (the source paused, both disks equal) the records change owner in one
   * transaction; only then does the destination's guest run, and this member's copy go. Until
   * the transaction, a failure or a cancel leaves the guest running here, and the destination
   * removes what it made.
   */
  async function moveLive(
    name: string,
    target: string,
    checked: { spec: GuestSpec; status: GuestStatus; specRevision: number; onShared: boolean },
    ha: HaMoveTicket | undefined,
    mark: MoveMark,
  ): Promise<Operation> {
    const { spec, onShared } = checked;
    const migration = deps.migrationOf?.(spec.model);
    if (!migration) throw notSupported(`${spec.model} guests cannot move live from ${hostName}`);
    const downtimeLimitMs = migrationDowntimeLimitMs(spec.config['migration.downtime_limit']);
    const stallLimitMs = migrationStallLimitMs(spec.config['migration.stall_limit']);
    return deps.operations.start({
      project: projectOfRecord(spec),
      description: `Moving guest ${name} live to ${target}`,
      resources: { guests: [`/1.0/guests/${name}`] },
      mayCancel: true,
      async run(ctx) {
        const started = Date.now();
        const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
        const onProgress = (p: MigrationProgress) => {
          const disk = `disk ${mib(p.diskDoneBytes)} of ${mib(p.diskTotalBytes)}`;
          const ram = `RAM ${mib(p.ramTransferredBytes)} sent of ${mib(p.ramTotalBytes)}`;
          const percent =
            p.phase === 'mirroring the disk'
              ? 5 + Math.floor((45 * p.diskDoneBytes) / Math.max(1, p.diskTotalBytes))
              : p.phase === 'copying RAM'
                ? 50 + Math.min(40, Math.floor((40 * p.ramTransferredBytes) / Math.max(1, p.ramTotalBytes)))
                : 90;
          ctx.progress(percent, `${p.phase}: ${disk}, ${ram}`);
          ctx.setMetadata({
            diskMirroredBytes: p.diskDoneBytes,
            diskTotalBytes: p.diskTotalBytes,
            ramTransferredBytes: p.ramTransferredBytes,
            ramTotalBytes: p.ramTotalBytes,
          });
        };
        let asked = false;
        let prepareRefused = false;
        let migrated = false;
        let flippedAt: { generation: number; snapshots: SnapshotRecord[] } | undefined;
        // Until the migration has ended: a destination seen gone ends the move, the guest running on here.
        const destination = whileDestinationUp(target);
        destination.signal.addEventListener(
          'abort',
          () =>
            log.warn(
              { guest: name, member: target, err: asTrivisorError(destination.signal.reason).message },
              'the destination is gone: the live move is stopped and undone',
            ),
          { once: true },
        );
        const signal = AbortSignal.any([ctx.signal, destination.signal]);
        try {
          // Internal snapshots are not in the disk's mirror (it copies the active layer): they go
          // first, as a cold archive part, and the destination writes them into its new disk before
          // its QEMU opens it (decision 0088). Over a shared pool they are in the same file already.
          const sent = onShared ? [] : valuesOf(await records.snapshot.list(store, name));
          if (sent.length > 0) await sendSnapshots(name, target, sent, mark, { ...ctx, signal });
          ctx.progress(0, `${target} starts the guest's QEMU, waiting for the migration`);
          asked = true;
          const prepared = await deps.transport.prepareLive(target, name, signal).catch((e: unknown) => {
            // A destination that refused because it holds files of the guest already keeps them.
            prepareRefused = asTrivisorError(e).code === 'Conflict';
            throw e;
          });
          const result = await migration.migrateOut(spec, {
            to: prepared.endpoints,
            tls: prepared.tls,
            downtimeLimitMs,
            ...(stallLimitMs !== undefined && { stallLimitMs }),
            // Over a shared pool (decision 0061) the destination opens the same disk: only the RAM moves.
            ...(onShared && { sharedDisk: true }),
            signal,
            onProgress,
          });
          destination.stop();
          migrated = true;
          const pausedFrom = Date.now();
          if (ctx.signal.aborted) throw cancelled('The live move was cancelled');
          // The switch-over: the records change owner in one transaction, compared against the spec
          // as it was when the move was asked and against this member's ownership.
          ctx.progress(92, `handing the guest over to ${target}`);
          const [now, nowStatus, snapshotsNow] = await Promise.all([
            records.guest.at(name).get(store),
            records.guestStatus.at(name).get(store),
            records.snapshot.list(store, name).then(valuesOf),
          ]);
          if (!now || now.modRevision !== checked.specRevision || !nowStatus) {
            throw conflict(`Guest ${name} was changed while it was being moved; retry`);
          }
          // A snapshot taken or deleted here during the migration is not in the destination's disk.
          const names = (list: SnapshotRecord[]) =>
            list
              .map((x) => x.name)
              .sort()
              .join(', ');
          if (!onShared && names(snapshotsNow) !== names(sent)) {
            throw conflict(
              `Guest ${name}'s snapshots changed while it was being moved (${names(sent) || 'none'} sent, ${names(snapshotsNow) || 'none'} now); retry`,
            );
          }
          const generation = now.value.generation + 1;
          const specRef = records.guest.at(name);
          const guard = ha ? await haSwitchOverPart(store, ha) : { compare: [], success: [] };
          const handed = handedOver(mark, checked.spec, checked.status, snapshotsNow, generation);
          const flip = await store.txn({
            compare: [specRef.unchanged(now.modRevision), ownedBy(name, hostName), ...guard.compare],
            success: [
              ...guard.success,
              moveMarkOp(handed),
              specRef.putOp({ ...now.value, location: target, generation }),
              records.guestLocation.at(name).putOp(target),
              records.guestStatus.at(name).putOp({
                ...nowStatus.value,
                status: 'Running',
                process: prepared.process,
                observedGeneration: generation,
              }),
              // The snapshots are in the destination's disk (sent first, or the shared file).
              ...snapshotsNow.map((x) => records.snapshot.at(name, x.name).putOp({ ...x, location: target })),
            ],
          });
          if (!flip.succeeded) throw conflict(`Guest ${name} was changed while it was being moved; retry`);
          Object.assign(mark, handed);
          flippedAt = { generation, snapshots: snapshotsNow };
          ctx.progress(95, `the guest runs on ${target}`);
          await deps.transport.finishLive(target, name);
          // The guest's pause as this member saw it: QEMU's downtime, then the hand-over until it runs.
          const pausedMs = result.downtimeMs + (Date.now() - pausedFrom);
          // The guest's files stay on a shared pool: this member's paused QEMU goes by itself.
          if (onShared) {
            await migration
              .releaseSource({ ...spec, location: hostName })
              .catch((e2: unknown) =>
                log.error(
                  { guest: name, err: asTrivisorError(e2).message },
                  'the paused QEMU the guest left here could not be ended',
                ),
              );
          }
          await dropLocalCopy(spec);
          const measured = {
            location: target,
            live: true,
            downtimeMs: result.downtimeMs,
            pausedMs,
            totalMs: Date.now() - started,
            mirrorMs: result.mirrorMs,
            ramMs: result.ramMs,
            diskMirroredBytes: result.diskBytes,
            ramTransferredBytes: result.ramBytes,
            downtimeLimitMs,
            sharedDisk: onShared,
          };
          log.info({ guest: name, target, ...measured }, 'guest moved live');
          return measured;
        } catch (e) {
          const err = ctx.signal.aborted
            ? cancelled('the move was cancelled')
            : asTrivisorError(destination.causeOf(e));
          // Records that stay the destination's keep the guest there: this member's paused QEMU is
          // not resumed (it would run twice), and the journal finishes the move later.
          if (flippedAt && !(await unflip(name, target, checked, { ...flippedAt, ha, mark })))
            throw unsettled(name, target, err);
          const discard = async () => {
            if (!asked || prepareRefused) return;
            await discardThere(target, name);
          };
          // Over a shared disk the destination's QEMU goes first: it must never hold the disk
          // when the source takes it back (its lock would refuse the source's resume anyway).
          if (onShared) await discard();
          // migrateOut resumes the guest on its own failures; after it, a failed hand-over does here.
          if (migrated) {
            await migration
              .resumeSource({ ...spec, location: hostName })
              .catch((e2: unknown) =>
                log.error(
                  { guest: name, err: asTrivisorError(e2).message },
                  'the guest could not be resumed here',
                ),
              );
          }
          if (!onShared) await discard();
          // Last: until the destination's copy is gone its LRM must not take it for a stray.
          // An HA mark that cannot go yet keeps the journal, whose resume ends it (the guest runs here).
          if (!flippedAt && (await endMarkOrKeep(ha, mark)))
            throw haMarkKept(name, target, err, { wasRunning: false, live: true });
          throw new TrivisorError(
            err.code,
            `Cannot move guest ${name} live to ${target}: ${err.message}; it stays running on ${hostName}`,
          );
        } finally {
          destination.stop();
        }
      },
    });
  }

  /**
   * A live move's cold part (decision 0088): the guest's snapshots, read from its running disk's
   * internal snapshots (which no write of the guest changes), in an archive of their own with
   * their checksums, sent to the destination, which checks and keeps it until its prepare writes
   * them into the new disk. The archive is journaled before it is written and removed after.
   */
  async function sendSnapshots(
    name: string,
    target: string,
    snapshots: SnapshotRecord[],
    mark: MoveMark,
    ctx: { progress(percent: number, text: string): void; signal: AbortSignal },
  ): Promise<void> {
    ctx.progress(
      0,
      `writing the guest's snapshots (${snapshots.map((x) => x.name).join(', ')}) to an archive`,
    );
    const named = newBackupName();
    mark.backup = named;
    await saveMoveMark(store, mark);
    try {
      await finished(
        await deps.storage.createBackup(name, { withSnapshots: true, snapshotsOnly: true, name: named }),
      );
      const archive = await deps.storage.backupFile(name, named);
      ctx.progress(0, `sending ${archive.sizeBytes} bytes of snapshots to ${target}`);
      await deps.transport.send(target, name, archive.path, ctx.signal);
    } finally {
      await deps.storage.deleteBackup(name, named).catch(() => {});
    }
  }

  /** Gives a live-moved guest's records back to this member after a hand-over that failed. */
  async function unflip(
    name: string,
    target: string,
    checked: { spec: GuestSpec; status: GuestStatus },
    options: {
      generation: number;
      snapshots: SnapshotRecord[];
      ha: HaMoveTicket | undefined;
      mark: MoveMark;
    },
  ): Promise<boolean> {
    // A store that does not answer is a failure to give them back like a refused transaction.
    return giveBack(name, target, checked, options).catch((e: unknown) => {
      log.error(
        { guest: name, member: target, err: asTrivisorError(e).message },
        'a failed live move could not give the records back',
      );
      return false;
    });
  }

  async function giveBack(
    name: string,
    target: string,
    checked: { spec: GuestSpec; status: GuestStatus },
    options: {
      generation: number;
      snapshots: SnapshotRecord[];
      ha: HaMoveTicket | undefined;
      mark: MoveMark;
    },
  ): Promise<boolean> {
    const now = await records.guest.at(name).get(store);
    const specRef = records.guest.at(name);
    const back = options.generation + 1;
    const guard = options.ha
      ? await haGiveBackPart(store, options.ha).catch((e: unknown) => {
          log.error({ guest: name, err: asTrivisorError(e).message }, 'a failed live move is left to HA');
          return undefined;
        })
      : { compare: [], success: [] };
    if (!guard) return false;
    const r = await store.txn({
      compare: [specRef.unchanged(now?.modRevision ?? 0), ownedBy(name, target), ...guard.compare],
      success: [
        ...guard.success,
        moveMarkOp({ ...options.mark, phase: 'rolled-back' }),
        specRef.putOp({ ...checked.spec, location: hostName, generation: back }),
        records.guestLocation.at(name).putOp(hostName),
        records.guestStatus.at(name).putOp({ ...checked.status, observedGeneration: back }),
        ...options.snapshots.map((x) => records.snapshot.at(name, x.name).putOp(x)),
      ],
    });
    if (!r.succeeded) {
      log.error({ guest: name, member: target }, 'a failed live move could not give the records back');
      return false;
    }
    options.mark.phase = 'rolled-back';
    return true;
  }

  /** Puts the records back as they were before the hand-over, and the guest back in its state. */
  async function rollBack(
    name: string,
    target: string,
    before: { before: GuestSpec; status: GuestStatus; snapshots: SnapshotRecord[] },
    wasRunning: boolean,
    ha: HaMoveTicket | undefined,
    mark: MoveMark,
  ): Promise<boolean> {
    try {
      const now = await records.guest.at(name).get(store);
      if (!now) throw conflict(`Guest ${name} was deleted meanwhile`);
      // The destination was never asked to run the guest: its spec is as the hand-over wrote it
      // (desired Stopped), compared below. Its HA record then goes back whatever became of the
      // destination's lease, under the source's token now (decision 0089).
      const neverRanThere = now.value.desired === 'Stopped' && now.value.generation === mark.generation;
      const guard = ha ? await haGiveBackPart(store, ha, { neverRanThere }) : { compare: [], success: [] };
      const generation = now.value.generation + 1;
      const specRef = records.guest.at(name);
      const ops: TxnOp[] = [
        specRef.putOp({ ...before.before, location: hostName, desired: 'Stopped', generation }),
        records.guestLocation.at(name).putOp(hostName),
        records.guestStatus.at(name).putOp(before.status),
        ...before.snapshots.map((s) => records.snapshot.at(name, s.name).putOp(s)),
        ...guard.success,
        // The records are the source's again; a daemon that dies from here on removes the
        // destination's copy and starts the guest again when it starts.
        moveMarkOp({ ...mark, phase: 'rolled-back' }),
      ];
      const r = await store.txn({
        compare: [specRef.unchanged(now.modRevision), ownedBy(name, target), ...guard.compare],
        success: ops,
      });
      if (!r.succeeded) throw conflict(`Guest ${name} was changed while its move was being undone`);
      mark.phase = 'rolled-back';
      await discardThere(target, name);
      if (wasRunning) await setDesired(name, 'Running', AbortSignal.timeout(convergeMs));
      return true;
    } catch (e) {
      log.error({ guest: name, err: asTrivisorError(e).message }, 'a failed move could not be undone');
      return mark.phase === 'rolled-back';
    }
  }
}

/**
 * Gives guest `guest` (its spec as read, owned by member `from`) to member `to`, which makes its
 * files from its image as for a new guest (decision 0040): in one transaction, compared against
 * the spec as read and `from`'s ownership, the spec names `to` (desired Stopped, next
 * generation), so does the location key, and the status goes; `more` are further ops of the same
 * hand-over, `guard` further compares (an HA guest's record and its members' tokens). The cold
 * move and the recovery from backups (decision 0046) hand over this way.
 */
export async function handOver(
  store: KvStore,
  guest: { value: GuestSpec; modRevision: number },
  from: string,
  to: string,
  more: TxnOp[] = [],
  guard: Compare[] = [],
): Promise<{ succeeded: boolean; generation: number }> {
  const name = guest.value.name;
  const generation = guest.value.generation + 1;
  const ref = records.guest.at(name);
  const r = await store.txn({
    compare: [ref.unchanged(guest.modRevision), ownedBy(name, from), ...guard],
    success: [
      ref.putOp({ ...guest.value, location: to, desired: 'Stopped', generation }),
      records.guestLocation.at(name).putOp(to),
      records.guestStatus.at(name).deleteOp(),
      ...more,
    ],
  });
  return { succeeded: r.succeeded, generation };
}

/**
 * A move's journal as its hand-over writes it (in the same transaction): the records name the
 * destination at `generation` (default: the spec's next), and `before` is what an undoing puts back.
 */
function handedOver(
  mark: MoveMark,
  spec: GuestSpec,
  status: GuestStatus,
  snapshots: SnapshotRecord[],
  generation = spec.generation + 1,
): MoveMark {
  return { ...mark, phase: 'handed-over', generation, before: { spec, status, snapshots } };
}

/** Refuses an archive whose payload `rel` does not match the checksum its manifest gives. */
async function assertPayloadWhole(archive: OpenedArchive, rel: string): Promise<void> {
  const member = archive.members.get(rel);
  const want = archive.manifest.files[rel];
  if (!member || !want || (await digestOf(archive.path, member)).sha256 !== want.sha256) throw corrupted(rel);
}

/** The destination's side of a move: applies an archive onto the guest's new, empty files. */
export interface MoveReceiver {
  /** Applies the archive at `archivePath` (removed afterwards) onto this member's copy of guest `name`. */
  receive(name: string, archivePath: string, signal: AbortSignal): Promise<void>;
  /** Removes this member's copy of guest `name` after a move was undone; refused while the guest is this member's. */
  discard(name: string): Promise<void>;
  /**
   * Makes guest `name`'s disk here and starts its QEMU waiting for its live migration from the
   * member that holds it; resolves with that QEMU's process and where it listens.
   */
  prepareLive(
    name: string,
  ): Promise<{ process: ProcessIdentity; endpoints: IncomingEndpoints; tls: MigrationTls }>;
  /** The migration is in and the records name this member: the guest runs here. */
  finishLive(name: string): Promise<void>;
}

/** The receiver as the daemon that runs it sees it: it also sweeps what moves left in `imports/`. */
export interface SweepingReceiver extends MoveReceiver {
  /**
   * Removes the move files of `imports/` that no move owns any more (`sweepMoveImports`), never
   * those of a guest this receiver is receiving or preparing now; with `uploadDir` (at the
   * daemon's start only), the uploads a daemon dying left there too. First it discards the copies
   * that undone moves left here while this member did not answer (`keys.moveDiscard`), and those of
   * live moves that no move journals any more (`move-incoming-`).
   */
  sweep(options?: { uploadDir?: string }): Promise<MoveImportsSwept>;
  /** Runs `sweep` every `everyMs` (default 5 min) until stopped. */
  sweepEvery(everyMs?: number): { stop(): void };
}

export function createMoveReceiver(deps: {
  store: KvStore;
  hostName: string;
  storage: Partial<Record<Model, GuestStorage>>;
  runner: ProcessRunner;
  /** Where the FIFOs of a receive are made. */
  workDir: string;
  removeLocal: (spec: GuestSpec) => Promise<void>;
  /** This member's live migration of a model (its driver's), and the image of a guest. */
  live?: {
    migrationOf: (model: Model) => LiveMigration | undefined;
    image: (fingerprint: string) => Promise<ImageHandle>;
    /** This member's cluster address (the IP other members reach it at): where a migration comes in. */
    host: string;
    /** A member's cluster address (its IP): the only one a migration from it may come from. */
    addressOf: (member: string) => Promise<string | undefined>;
    /**
     * Guests on a shared pool (decision 0061): links the guest's directory here for the incoming
     * QEMU (false: the guest is not on a shared pool), and the image as the guest's disk names it.
     */
    shared?: {
      linkIncoming(spec: GuestSpec): Promise<boolean>;
      imageFor(spec: GuestSpec, image: ImageHandle): Promise<ImageHandle>;
    };
    /**
     * Whether this member has files of guest `name` (its `guests/NAME`): a copy that was here
     * before a prepare is never marked as the prepare's (`move-incoming-`), so never swept.
     */
    hasCopy?: (name: string) => Promise<boolean>;
  };
  /** Logs the sweep's removals (default: silent). */
  log?: Logger;
  /** How long a staged snapshots part may wait for its prepare before a sweep removes it (default 10 min). */
  stagedMaxAgeMs?: number;
}): SweepingReceiver {
  const { store, hostName } = deps;
  const sweepLog = (deps.log ?? silentLogger()).child({ component: 'move-imports' });
  /** Where a live move's snapshots wait for its prepare (decision 0088). */
  const stagedSnapshots = (name: string) => join(deps.workDir, stagedPartName(name));
  /** The file that says this member's copy of guest `name` is a live move's, not run here yet. */
  const incomingMark = (name: string) => join(deps.workDir, incomingMarkName(name));
  /** A snapshots-only archive of a live move, for guest `spec` that another member holds. */
  async function openSnapshotsPart(spec: GuestSpec, path: string): Promise<OpenedArchive> {
    const archive = await openArchive(path, { snapshotsOnly: true }).catch((e: unknown) => {
      // A whole archive for a guest not handed over here: the cold move's refusal.
      if (/lists a root file system/.test(asTrivisorError(e).message)) {
        throw failedPrecondition(`Guest ${spec.name} is not being moved to ${hostName}`);
      }
      throw e;
    });
    if (archive.manifest.guest.name !== spec.name || archive.manifest.guest.model !== spec.model) {
      throw invalidArgument(
        `The archive is of ${archive.manifest.guest.model} guest ${archive.manifest.guest.name}, not of guest ${spec.name}`,
      );
    }
    return archive;
  }
  /**
   * Writes the snapshots a live move sent ahead into guest `here`'s new disk (decision 0088),
   * each payload's checksum verified on the way. They must be the guest's snapshots as its
   * records list them now; a staged archive of a move that ended meanwhile is dropped unread.
   */
  async function fillSnapshots(here: GuestSpec): Promise<(() => Promise<void>) | undefined> {
    const staged = stagedSnapshots(here.name);
    const names = (list: Array<{ name: string }>) =>
      list
        .map((x) => x.name)
        .sort()
        .join(', ');
    const listed = names(valuesOf(await records.snapshot.list(store, here.name)));
    if (listed === '') return undefined;
    const have = await openSnapshotsPart(here, staged).catch(() => undefined);
    const sent = have && names(have.manifest.snapshots);
    if (!have || sent !== listed) {
      throw failedPrecondition(
        `Guest ${here.name} has snapshots (${listed}) that were not sent to ${hostName}${have ? ` (it has ${sent || 'none'})` : ''}: move it again`,
      );
    }
    const storage = deps.storage[here.model];
    if (!storage) throw notSupported(`${here.model} guests cannot be moved to ${hostName}`);
    const archive = have;
    return async () => {
      await mkdir(deps.workDir, { recursive: true, mode: 0o700 });
      const work = await mkdtemp(join(deps.workDir, workDirPrefix(here.name)));
      const signal = new AbortController().signal;
      try {
        for (const snap of archive.manifest.snapshots) {
          await feedPayload({
            archive,
            rel: `snapshots/${snap.name}.tar.zst`,
            work,
            runner: deps.runner,
            signal,
            consume: (path) => storage.importTar(here, path, { snapshot: snap.name, signal }),
          });
        }
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    };
  }
  const base: MoveReceiver = {
    async receive(name, archivePath, signal) {
      try {
        assertDnsLabel(name, 'guest name');
        const [spec, status] = await Promise.all([
          records.guest.at(name).get(store),
          records.guestStatus.at(name).get(store),
        ]);
        if (spec && spec.value.location !== hostName && deps.live?.migrationOf(spec.value.model)) {
          // A live move's snapshots, sent before its prepare (decision 0088): checked whole and
          // kept for it (the prepare removes them, used or not; so does a discard).
          const archive = await openSnapshotsPart(spec.value, archivePath);
          if (archive.manifest.snapshots.length === 0) {
            throw invalidArgument(`The archive of guest ${name}'s snapshots holds none`);
          }
          for (const snap of archive.manifest.snapshots) {
            await assertPayloadWhole(archive, `snapshots/${snap.name}.tar.zst`);
          }
          signal.throwIfAborted();
          await mkdir(deps.workDir, { recursive: true, mode: 0o700 });
          await rename(archivePath, stagedSnapshots(name));
          return;
        }
        if (!spec || spec.value.location !== hostName) {
          throw failedPrecondition(`Guest ${name} is not being moved to ${hostName}`);
        }
        if (!status?.value.provisioned || up(status.value)) {
          throw conflict(
            `Guest ${name} is not ready here for its files (${status?.value.status ?? 'not made yet'})`,
          );
        }
        const storage = deps.storage[spec.value.model];
        if (!storage) throw notSupported(`${spec.value.model} guests cannot be moved to ${hostName}`);
        const archive = await openArchive(archivePath);
        if (archive.manifest.guest.name !== name || archive.manifest.guest.model !== spec.value.model) {
          throw invalidArgument(
            `The archive is of ${archive.manifest.guest.model} guest ${archive.manifest.guest.name}, not of guest ${name}`,
          );
        }
        await mkdir(deps.workDir, { recursive: true, mode: 0o700 });
        const work = await mkdtemp(join(deps.workDir, workDirPrefix(name)));
        try {
          const feed = (rel: string, consume: (path: string) => Promise<unknown>) =>
            feedPayload({ archive, rel, work, runner: deps.runner, signal, consume });
          const link = archive.manifest.incremental;
          const importIncremental = storage.importIncremental?.bind(storage);
          if (link && importIncremental) {
            // A link of a shipped chain, applied in order by a recovery (decision 0062): an
            // incremental changes a disk in place, so its payload is checked whole first.
            if (link.kind === 'incremental') await assertPayloadWhole(archive, 'rootfs.tar.zst');
            await feed('rootfs.tar.zst', (path) => importIncremental(spec.value, path, { link, signal }));
          } else {
            await feed('rootfs.tar.zst', (path) => storage.importTar(spec.value, path, { signal }));
          }
          for (const snap of archive.manifest.snapshots) {
            await feed(`snapshots/${snap.name}.tar.zst`, (path) =>
              storage.importTar(spec.value, path, { snapshot: snap.name, signal }),
            );
            await records.snapshot
              .at(name, snap.name)
              .put(store, { ...snap, guest: name, location: hostName });
          }
        } finally {
          await rm(work, { recursive: true, force: true });
        }
        failpoint('move.receive.files-made', sweepLog, { guest: name });
      } finally {
        await rm(archivePath, { force: true });
      }
    },

    async prepareLive(name) {
      assertDnsLabel(name, 'guest name');
      const spec = await records.guest.at(name).get(store);
      if (!spec) throw notFound(`Guest ${name} not found`);
      if (spec.value.location === hostName) {
        throw conflict(`Guest ${name} is on ${hostName} already: there is nothing to migrate here`);
      }
      const migration = deps.live?.migrationOf(spec.value.model);
      if (!deps.live || !migration) {
        throw notSupported(`${spec.value.model} guests cannot move live to ${hostName}`);
      }
      const from = await deps.live.addressOf(spec.value.location);
      if (!from)
        throw failedPrecondition(`Member ${spec.value.location} has no address in the cluster's records`);
      const here = { ...spec.value, location: hostName };
      // What the prepare makes from here on is this move's: a copy its source cannot discard
      // (this daemon died meanwhile) is swept later. A copy that is here already is not marked
      // (the prepare refuses it, and it may be the only one of the guest's data).
      const marked = !(await deps.live.hasCopy?.(name));
      if (marked) {
        await mkdir(deps.workDir, { recursive: true, mode: 0o700 });
        await writeFile(incomingMark(name), `${JSON.stringify({ from: spec.value.location })}\n`, {
          mode: 0o600,
        });
      }
      const shared = deps.live.shared;
      const sharedDisk =
        (await shared?.linkIncoming(here).catch(async (e: unknown) => {
          if (marked) await rm(incomingMark(name), { force: true });
          throw e;
        })) === true;
      try {
        const image = await deps.live.image(spec.value.image);
        // A shared disk holds its snapshots already; a new disk here gets the ones sent ahead.
        const fill = sharedDisk ? undefined : await fillSnapshots(here);
        return await migration.prepareIncoming(
          here,
          shared && sharedDisk ? await shared.imageFor(here, image) : image,
          { host: deps.live.host, from, ...(sharedDisk && { sharedDisk: true }), ...(fill && { fill }) },
        );
      } catch (e) {
        // The source asks for no discard after a refused prepare: the link made for it goes here.
        if (sharedDisk) await deps.removeLocal(here).catch(() => {});
        // The prepare undid what it made (the driver's revert).
        if (marked) await rm(incomingMark(name), { force: true });
        throw e;
      } finally {
        await rm(stagedSnapshots(name), { force: true });
      }
    },

    async finishLive(name) {
      assertDnsLabel(name, 'guest name');
      const spec = await records.guest.at(name).get(store);
      if (!spec || spec.value.location !== hostName) {
        throw failedPrecondition(
          `Guest ${name} has not been handed over to ${hostName}: it does not run here`,
        );
      }
      const migration = deps.live?.migrationOf(spec.value.model);
      if (!migration) throw notSupported(`${spec.value.model} guests cannot move live to ${hostName}`);
      await migration.finishIncoming(spec.value);
      // The copy is the guest's, running here.
      await rm(incomingMark(name), { force: true });
    },

    async discard(name) {
      assertDnsLabel(name, 'guest name');
      const spec = await records.guest.at(name).get(store);
      if (!spec) return;
      if (spec.value.location === hostName) {
        throw conflict(`Guest ${name} is this member's: its files are not removed`);
      }
      await rm(stagedSnapshots(name), { force: true });
      await deps.live?.migrationOf(spec.value.model)?.dropIncoming({ ...spec.value, location: hostName });
      await deps.removeLocal({ ...spec.value, location: hostName });
      await rm(incomingMark(name), { force: true });
    },
  };
  /** Guests this receiver receives or prepares now (how many at once): the sweep leaves their files. */
  const busy = new Map<string, number>();
  /** Runs `work` with guest `name` counted busy, from before any of its files is made until all are gone. */
  async function holding<T>(name: string, work: () => Promise<T>): Promise<T> {
    busy.set(name, (busy.get(name) ?? 0) + 1);
    try {
      return await work();
    } finally {
      const n = (busy.get(name) ?? 1) - 1;
      if (n > 0) busy.set(name, n);
      else busy.delete(name);
    }
  }
  const sweepDeps = {
    store,
    hostName,
    dir: deps.workDir,
    busy: (guest: string) => busy.has(guest),
    log: sweepLog,
    ...(deps.stagedMaxAgeMs !== undefined && { maxAgeMs: deps.stagedMaxAgeMs }),
  };
  /**
   * What a sweep may do with this member's copy of guest `guest`: `kept` while this receiver works
   * on the guest or a move of it to this member is journaled in `marks` (the copy is that move's);
   * `gone` once the guest was deleted; `ours` once its records name this member; else `stray`
   * (another member's guest: the copy goes).
   */
  async function copyStanding(guest: string, marks: MoveMark[]): Promise<'kept' | 'gone' | 'ours' | 'stray'> {
    if (busy.has(guest) || marks.some((m) => m.guest === guest && m.to === hostName)) return 'kept';
    const [spec, owner] = await Promise.all([
      records.guest.at(guest).get(store),
      records.guestLocation.at(guest).get(store),
    ]);
    if (!spec) return 'gone';
    return (owner?.value ?? spec.value.location) === hostName ? 'ours' : 'stray';
  }
  /**
   * Discards the copies that moves undone left here while this member did not answer (the keys
   * `discardThere` left for it, `keys.moveDiscard`), unless a move of the guest to this member
   * runs again (its journal names this member) or the guest is this member's now (the key only
   * goes). Never throws: what cannot be read or removed is left for the next sweep.
   */
  async function sweepDiscards(): Promise<MoveImportsSwept['removed']> {
    const removed: MoveImportsSwept['removed'] = [];
    let left: Array<{ key: string; guest: string }>;
    let marks: MoveMark[];
    try {
      const prefix = keys.moveDiscards(hostName);
      left = (await store.list(prefix)).kvs.map((kv) => ({
        key: kv.key,
        guest: kv.key.slice(prefix.length),
      }));
      if (left.length === 0) return removed;
      marks = await listMoveMarks(store);
    } catch (e) {
      sweepLog.warn({ err: asTrivisorError(e).message }, 'the discards left for this member were not read');
      return removed;
    }
    for (const { key, guest } of left) {
      try {
        const standing = await copyStanding(guest, marks);
        if (standing === 'kept') continue;
        // Deleted since (its delete went everywhere), or this member's now: nothing to discard.
        if (standing === 'stray') {
          await holding(guest, () => base.discard(guest));
          removed.push({
            name: guest,
            why: `the move that made this copy was undone while ${hostName} was away`,
          });
        }
        await store.delete(key);
      } catch (e) {
        sweepLog.warn({ guest, err: asTrivisorError(e).message }, 'a copy a move left here is left');
      }
    }
    return removed;
  }
  /**
   * Discards the copies live moves left here (`move-incoming-` marks, see move-imports.ts) once
   * no move of their guest to this member is journaled and the records name another member: the
   * source gave up while this daemon was dead or out of reach, and its discard failed. The marks
   * are listed before the journal is read (a source journals before it asks for the prepare, which
   * marks the copy): a move begun since is in what is read. A copy whose guest runs here now (its
   * switch-over happened) only loses its mark; one whose guest was deleted is left and logged.
   * Never throws: what cannot be read or removed is left for the next sweep.
   */
  async function sweepIncoming(): Promise<MoveImportsSwept['removed']> {
    const removed: MoveImportsSwept['removed'] = [];
    const left = (await readdir(deps.workDir).catch(() => [] as string[])).filter((f) =>
      f.startsWith(INCOMING_PREFIX),
    );
    if (left.length === 0) return removed;
    let marks: MoveMark[];
    try {
      marks = await listMoveMarks(store);
    } catch (e) {
      sweepLog.warn(
        { err: asTrivisorError(e).message },
        "the move marks were not read: live moves' copies kept",
      );
      return removed;
    }
    for (const file of left) {
      const guest = file.slice(INCOMING_PREFIX.length);
      try {
        const standing = await copyStanding(guest, marks);
        if (standing === 'kept') continue;
        if (standing === 'gone') {
          sweepLog.warn({ guest }, "a live move's copy here of a guest deleted since is left");
          continue;
        }
        if (standing === 'ours') {
          await rm(join(deps.workDir, file), { force: true });
          removed.push({ name: file, why: `guest ${guest} is ${hostName}'s now` });
          continue;
        }
        await holding(guest, () => base.discard(guest));
        removed.push({
          name: file,
          why: `no move of guest ${guest} to ${hostName} is journaled: the copy its live move left here went`,
        });
      } catch (e) {
        sweepLog.warn({ guest, err: asTrivisorError(e).message }, "a live move's copy here is left");
      }
    }
    return removed;
  }
  const receiver: SweepingReceiver = {
    ...base,
    receive: (name, archivePath, signal) => holding(name, () => base.receive(name, archivePath, signal)),
    prepareLive: (name) => holding(name, () => base.prepareLive(name)),
    async sweep(options = {}) {
      const incoming = [...(await sweepDiscards()), ...(await sweepIncoming())];
      if (incoming.length > 0) sweepLog.info({ removed: incoming }, "moves' copies swept");
      const swept = await sweepMoveImports(sweepDeps, options);
      return { removed: [...incoming, ...swept.removed] };
    },
    sweepEvery(everyMs = SWEEP_EVERY_MS) {
      const timer = setInterval(() => void receiver.sweep(), everyMs);
      timer.unref();
      return { stop: () => clearInterval(timer) };
    },
  };
  return receiver;
}

/**
 * Why `--live` cannot move a guest here: found by a probe where one can tell (CRIU for ct, whose
 * answer is kept), said plainly where the model itself cannot (UML); undefined for a model whose
 * driver migrates live on this member (vm, decision 0042).
 */
export function liveMoveRefusal(
  runner: ProcessRunner,
  options: { migrates?: (model: Model) => boolean } = {},
): (spec: GuestSpec) => Promise<string | undefined> {
  let ct: Promise<string> | undefined;
  const stateless = 'move it with --stateless (stopped, moved, started again)';
  return async (spec) => {
    if (spec.model === 'pvm')
      return `pvm guests cannot move live: User-Mode Linux has no live migration; ${stateless}`;
    if (spec.model === 'vm') {
      return options.migrates?.('vm')
        ? undefined
        : `vm guests cannot move live: the vm driver of this member has no live migration; ${stateless}`;
    }
    ct ??= runner.run(['criu', 'check'], { allowFailure: true, timeoutMs: 30_000 }).then(
      (r) => {
        if (r.code === 0)
          return `CRIU's check passes here, but live migration of ct guests is not built yet; ${stateless}`;
        const said = `${r.stderr}\n${r.stdout}`.split('\n').find((l) => l.trim() !== '') ?? `exit ${r.code}`;
        return `ct guests cannot move live: \`criu check\` fails on this host (${said.trim()}); ${stateless}`;
      },
      (e: unknown) =>
        `ct guests cannot move live: CRIU is not installed on this host (${asTrivisorError(e).message}); ${stateless}`,
    );
    return ct;
  };
}
