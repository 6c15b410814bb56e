import { randomBytes } from 'node:crypto';
import type { TrivisorError } from '../core/errors.ts';
import type { KvStore } from '../store/kv.ts';
import { type OperationClaim, records, valuesOf } from '../store/records.ts';

/** What the holder of a taken claim is doing, for the refusal's message. */
export interface ClaimHolder {
  member: string;
  action: string;
  /** Whole seconds since the holder took it. */
  ageSeconds: number;
}

/** A held claim: `release` deletes it (only if it is still this one). */
export interface HeldClaim {
  release(): Promise<void>;
}

/**
 * Operation claims (docs/decisions/0028): while a member changes an object (snapshots a guest,
 * makes a pool, attaches a volume) it holds a record `/trivisor/claims/KIND/NAME` made with a
 * create-if-absent transaction. A second change of the object, from this member or another,
 * finds the record and is refused with 409 naming what holds it; nothing in memory stands in
 * for it. The record names its holder (member and daemon incarnation): a daemon killed in the
 * middle of an action leaves its claims behind, and the next daemon of that member sweeps them
 * before it serves (later they are also attached to the member's lease, so that another member
 * may take over once the lease expires).
 */
export interface Claims {
  /**
   * Takes the claim of `kind`/`name` for `action`, or throws what `busy` makes of its holder
   * (a 409: Conflict or AlreadyExists) without changing anything.
   */
  acquire(
    kind: string,
    name: string,
    options: { action: string; busy: (holder: ClaimHolder) => TrivisorError },
  ): Promise<HeldClaim>;
  /** Runs `work` holding the claim, and releases it however the work ends. */
  holding<T>(
    kind: string,
    name: string,
    options: { action: string; busy: (holder: ClaimHolder) => TrivisorError },
    work: () => Promise<T>,
  ): Promise<T>;
  /** Removes this member's claims of earlier incarnations (a daemon killed mid-action); run at start. */
  sweep(): Promise<number>;
}

export function createClaims(deps: {
  store: KvStore;
  member: string;
  /** This daemon's identity among the member's daemons over time (default: random per process). */
  incarnation?: string;
  now?: () => Date;
}): Claims {
  const { store, member } = deps;
  const incarnation = deps.incarnation ?? randomBytes(8).toString('hex');
  const now = deps.now ?? (() => new Date());

  const holderOf = (claim: OperationClaim): ClaimHolder => ({
    member: claim.member,
    action: claim.action,
    ageSeconds: Math.max(0, Math.round((now().getTime() - Date.parse(claim.since)) / 1000)),
  });

  const claims: Claims = {
    async acquire(kind, name, options) {
      const ref = records.claim.at(kind, name);
      const claim: OperationClaim = {
        member,
        incarnation,
        action: options.action,
        since: now().toISOString(),
      };
      const r = await store.txn({
        compare: [ref.absent()],
        success: [ref.putOp(claim)],
        failure: [{ type: 'get', key: ref.key }],
      });
      if (!r.succeeded) {
        const got = r.results[0];
        const kv = got?.type === 'get' ? got.kvs[0] : undefined;
        // Released between the compare and the get: the caller may simply retry; say so as a conflict.
        let holder: ClaimHolder = { member: 'another member', action: 'another change', ageSeconds: 0 };
        if (kv) {
          try {
            holder = holderOf(records.claim.decode(kv));
          } catch {
            // A claim that does not decode still holds the object.
          }
        }
        throw options.busy(holder);
      }
      const revision = r.revision;
      return {
        async release() {
          // Only this claim: never one another holder made after it was swept.
          await store.txn({ compare: [ref.unchanged(revision)], success: [ref.deleteOp()] });
        },
      };
    },

    async holding(kind, name, options, work) {
      const held = await claims.acquire(kind, name, options);
      try {
        return await work();
      } finally {
        await held.release().catch(() => {});
      }
    },

    async sweep() {
      const list = await records.claim.list(store);
      let swept = 0;
      for (const item of list.items) {
        if (item.value.member !== member || item.value.incarnation === incarnation) continue;
        const ref = records.claim.ref(item.key);
        const r = await store.txn({ compare: [ref.unchanged(item.modRevision)], success: [ref.deleteOp()] });
        if (r.succeeded) swept++;
      }
      return swept;
    },
  };
  return claims;
}

/** The usual words for a held claim: "… (snapshot for 12 s on h1): wait for it". */
export function describeHolder(holder: ClaimHolder): string {
  return `${holder.action}, for ${holder.ageSeconds} s on ${holder.member}`;
}

/** Every claim held now (tests, diagnostics). */
export async function listClaims(store: KvStore): Promise<OperationClaim[]> {
  return valuesOf(await records.claim.list(store));
}
