import type { HaMoveTicket } from '../control/ha/ha-move.ts';
import { conflict } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus } from '../core/types.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import type { Compare, KvStore, TxnOp } from '../store/kv.ts';

/**
 * The mark of a move of a guest, and its journal (issue 13 §1 and §4, decisions 0075 and 0079):
 * written by the mover before anything of the guest changes, updated in the same transactions
 * as the records it changes (the hand-over, the undoing), and removed when the move has ended.
 * It is not on a lease: a daemon that dies half way leaves it, and finishes or undoes the move
 * from it when it starts again (`GuestMover.resumeUnfinished`). What must not change while a
 * guest moves compares its absence: making the guest HA (its HA record would be made without the
 * move's `moving` mark), and a second move of the same guest.
 */
export interface MoveMark {
  guest: string;
  from: string;
  to: string;
  reason: string;
  startedAt: string;
  /**
   * How it moves: through an archive, over a shared pool (only the records), or live (QEMU); `ha`:
   * not a move but an HA restart on its way (the elected CRM's, while it waits out the margin
   * after the guest's member was lost), so that the networks take the guest's frames from the
   * member it restarts on before it runs there. No journal: nobody resumes it, the CRM removes it.
   */
  kind?: MoveKind;
  /** How far it got (absent: `started`). */
  phase?: MovePhase;
  /** Whether the guest ran when the move began (it runs again where the move ends). */
  wasRunning?: boolean;
  /** The archive's backup name on the source, once it is written. */
  backup?: string;
  /** The spec's generation the hand-over wrote. */
  generation?: number;
  /** The records as the hand-over found them: what an undoing puts back. */
  before?: { spec: GuestSpec; status: GuestStatus; snapshots: SnapshotRecord[] };
  /** An HA guest's move ticket. */
  ha?: HaMoveTicket;
  /** A live move over a shared pool (only the RAM moved). */
  sharedDisk?: boolean;
}

export type MoveKind = 'archive' | 'shared' | 'live' | 'ha';

/** Whether `mark` is an HA restart's binding (`kind: 'ha'`), not a move's journal. */
export const isHaRestartMark = (mark: MoveMark): boolean => mark.kind === 'ha';

/**
 * - `started`: the records are the source's; the guest may be stopped, the archive written, a
 *   live move's destination QEMU waiting.
 * - `handed-over`: the records name the destination (the hand-over's transaction wrote it).
 * - `sent`: the destination has applied the whole archive (a cold archive move).
 * - `rolled-back`: the records are the source's again (the undoing's transaction wrote it); the
 *   destination's copy and the guest's restart here may be left to do.
 */
export type MovePhase = 'started' | 'handed-over' | 'sent' | 'rolled-back';

/** The guest's move mark, if a move of it runs or was left unfinished. */
export async function moveMarkOf(store: KvStore, guest: string): Promise<MoveMark | undefined> {
  const kv = await store.get(keys.guestMove(guest));
  return kv ? (JSON.parse(kv.value) as MoveMark) : undefined;
}

/** Every move mark, of every member (each member finishes its own). */
export async function listMoveMarks(store: KvStore): Promise<MoveMark[]> {
  const listed = await store.list(keys.guestMovePrefix);
  return listed.kvs.map((kv) => JSON.parse(kv.value) as MoveMark);
}

/**
 * The deletes of the marks of moves that member `member` ran, as ops of a transaction: when it is
 * removed from the cluster nobody is left to finish them (decision 0079), and a mark left would
 * refuse every later move of the guest and making it HA.
 */
export async function marksOfMemberDeleteOps(store: KvStore, member: string): Promise<TxnOp[]> {
  const listed = await store.list(keys.guestMovePrefix);
  return listed.kvs
    .filter((kv) => (JSON.parse(kv.value) as MoveMark).from === member)
    .map((kv) => ({ type: 'delete' as const, key: kv.key }));
}

/**
 * The deletes of the discards moves left for member `member` (`keys.moveDiscard`), as ops of a
 * transaction: a member removed from the cluster has nothing to discard any more.
 */
export async function discardsForMemberDeleteOps(store: KvStore, member: string): Promise<TxnOp[]> {
  const listed = await store.list(keys.moveDiscards(member));
  return listed.kvs.map((kv) => ({ type: 'delete' as const, key: kv.key }));
}

/** The delete of guest `guest`'s mark as an op: a new guest of a deleted one's name starts unmarked. */
export const staleMoveMarkDeleteOp = (guest: string): TxnOp => ({
  type: 'delete',
  key: keys.guestMove(guest),
});

/** A compare that holds while no move of `guest` runs. */
export const noMoveOf = (guest: string): Compare => ({
  key: keys.guestMove(guest),
  target: 'createRevision',
  op: '=',
  value: 0,
});

/** The write of `mark` as an op of a transaction (the hand-over's, the undoing's). */
export const moveMarkOp = (mark: MoveMark): TxnOp => ({
  type: 'put',
  key: keys.guestMove(mark.guest),
  value: JSON.stringify(mark),
});

/** Writes `mark` as it is now (a step done). */
export async function saveMoveMark(store: KvStore, mark: MoveMark): Promise<void> {
  await store.put(keys.guestMove(mark.guest), JSON.stringify(mark));
}

/**
 * Removes guest `guest`'s mark: its move has ended; with `of`, only while the mark is still that
 * move's (same source, destination and start). Never throws (a mark left is finished at the next start).
 */
export async function clearMoveMark(store: KvStore, guest: string, of?: MoveMark): Promise<void> {
  const key = keys.guestMove(guest);
  if (!of) {
    await store.delete(key).catch(() => {});
    return;
  }
  // Only the mark of move `of`: a clean-up that runs late (the source's, after its hand-over) must
  // not end the mark of the guest's next move, which another member may have begun since. The
  // same move's mark may change phase meanwhile: read again then.
  try {
    for (let tries = 0; tries < 5; tries++) {
      const kv = await store.get(key);
      if (!kv) return;
      const now = JSON.parse(kv.value) as MoveMark;
      if (now.startedAt !== of.startedAt || now.from !== of.from || now.to !== of.to) return;
      const r = await store.txn({
        compare: [{ key, target: 'modRevision', op: '=', value: kv.modRevision }],
        success: [{ type: 'delete', key }],
      });
      if (r.succeeded) return;
    }
  } catch {
    // Never throws: a mark left is finished at the next start.
  }
}

/**
 * Marks the move, compared against `guard` (the guest's spec as the mover checked it) and against
 * another move's mark; Conflict in one line when either changed. Answers the release, which
 * removes the mark and never throws.
 */
export async function markMove(
  store: KvStore,
  mark: MoveMark,
  guard: Compare[],
): Promise<() => Promise<void>> {
  const release = () => clearMoveMark(store, mark.guest, mark);
  const r = await store.txn({ compare: [noMoveOf(mark.guest), ...guard], success: [moveMarkOp(mark)] });
  if (!r.succeeded) {
    const other = await moveMarkOf(store, mark.guest);
    throw conflict(
      other && isHaRestartMark(other)
        ? `Guest ${mark.guest} is being restarted on ${other.to} by HA (${other.from} was lost); retry once it runs there`
        : other
          ? `Guest ${mark.guest} is being moved to ${other.to} already`
          : `Guest ${mark.guest} was changed at the same time; retry`,
    );
  }
  return release;
}
