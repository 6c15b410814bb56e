import { conflict } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { Compare, KvStore } from '../store/kv.ts';

/**
 * The mark of a running move of a guest (issue 13 §4, decision 0075): written by the mover before
 * anything of the guest changes, on a lease the mover keeps alive while its operation runs, and
 * revoked when it ends; a daemon that dies half way loses its lease and the mark with it. What
 * must not change while a guest moves compares its absence: making the guest HA (its HA record
 * would be made without the move's `moving` mark), and a second move of the same guest.
 */
export interface MoveMark {
  guest: string;
  from: string;
  to: string;
  reason: string;
  startedAt: string;
}

/** The mark's TTL: a dead mover's mark is gone this long after its last renewal. */
const TTL_SECONDS = 30;

/** The guest's move mark, if a move of it runs. */
export async function moveMarkOf(store: KvStore, guest: string): Promise<MoveMark | undefined> {
  const kv = await store.get(keys.guestMove(guest));
  return kv ? (JSON.parse(kv.value) as MoveMark) : undefined;
}

/** A compare that holds while no move of `guest` runs. */
export const noMoveOf = (guest: string): Compare => ({
  key: keys.guestMove(guest),
  target: 'createRevision',
  op: '=',
  value: 0,
});

/**
 * Marks the move, compared against `guard` (the guest's spec as the mover checked it) and against
 * another move's mark; Conflict in one line when either changed. Answers the release, which
 * revokes the lease (the mark goes with it) and never throws.
 */
export async function markMove(
  store: KvStore,
  mark: MoveMark,
  guard: Compare[],
): Promise<() => Promise<void>> {
  const lease = await store.grantLease(TTL_SECONDS);
  const release = async () => {
    clearInterval(timer);
    await store.revokeLease(lease.id).catch(() => {});
  };
  const timer = setInterval(() => void store.keepAlive(lease.id).catch(() => {}), (TTL_SECONDS * 1000) / 3);
  timer.unref();
  const r = await store
    .txn({
      compare: [noMoveOf(mark.guest), ...guard],
      success: [
        { type: 'put', key: keys.guestMove(mark.guest), value: JSON.stringify(mark), lease: lease.id },
      ],
    })
    .catch(async (e: unknown) => {
      await release();
      throw e;
    });
  if (!r.succeeded) {
    await release();
    const other = await moveMarkOf(store, mark.guest);
    throw conflict(
      other
        ? `Guest ${mark.guest} is being moved to ${other.to} already`
        : `Guest ${mark.guest} was changed at the same time; retry`,
    );
  }
  return release;
}
