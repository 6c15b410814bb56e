import { isTrivisorError } from '../../core/errors.ts';
import { keys } from '../../core/keys.ts';
import type { GuestSpec } from '../../core/types.ts';
import type { Logger } from '../../host/logger.ts';
import { isHaRestartMark, type MoveMark, moveMarkOp, noMoveOf } from '../../services/move-marks.ts';
import type { Compare, KvStore, TxnRequest } from '../../store/kv.ts';
import { records, type Stored, valuesOf } from '../../store/records.ts';
import { createInformer } from '../informer.ts';
import { createPlacementIndex } from '../placement.ts';
import { admission } from './admission.ts';
import { type CrmView, createCrm, type HaPrebind, type Placer } from './crm.ts';
import { liveAgentToken, readAgentState } from './ha-files.ts';
import { handOverOf, isHaGuest, readHaWorld, recordUpkeep, txnOf } from './ha-store.ts';
import { DEFAULT_TIMINGS, type HaMemberRecord, type HaTimings, haKeys } from './types.ts';

/**
 * The daemon's side of HA (decision 0052): the CRM of decision 0044, run every `crmEveryMs` on
 * the real store. Every daemon runs it; the elected one acts. Its election key is on a lease of
 * the daemon's own, so a daemon killed with -9 gives the election up a TTL later while its
 * member's agent keeps the member's lease, and the member's guests where they are. It acts only
 * while its member's agent is live (the agent's token is the one its writes are made under).
 */
export interface CrmLoopDeps {
  store: KvStore;
  stateDir: string;
  member: string;
  /** The members as placement needs them (memory, CPUs, evacuated). */
  members: () => Promise<HaMemberRecord[]>;
  log: Logger;
  timings?: HaTimings;
  /** Monotonic ms (default performance.now). */
  clock?: () => number;
  /** Told of each decision written and each note (losses, refusals), for the event stream. */
  onNote?: (note: string) => void;
}

export interface CrmLoop {
  stop(): Promise<void>;
}

const EMPTY: CrmView = { revision: 0, lock: undefined, heartbeats: [], members: [], guests: [] };

/**
 * The writes that make the HA restart marks (`kind: 'ha'`) what `prebinds` says: one per lost
 * guest waiting out the margin, to the member placement picks for it now, made only where the
 * guest has no mark (a move's is left alone), moved when the pick changes, and removed once the
 * guest is no longer waiting (handed over, its owner back, deleted). Each compares the election
 * (`stillElected`) and the mark as read, so a CRM that lost its election, or a mover that marked
 * the guest meanwhile, wins.
 */
export function haRestartMarkWrites(
  prebinds: readonly HaPrebind[],
  marks: ReadonlyArray<{ mark: MoveMark; modRevision: number }>,
  stillElected: Compare,
  now: Date,
): TxnRequest[] {
  const out: TxnRequest[] = [];
  const byGuest = new Map(marks.map((m) => [m.mark.guest, m]));
  const wanted = new Set<string>();
  const markOf = (p: HaPrebind): MoveMark => ({
    guest: p.guest,
    from: p.from,
    to: p.to,
    reason: `HA restart: ${p.from} was lost`,
    startedAt: now.toISOString(),
    kind: 'ha',
  });
  const unchanged = (guest: string, modRevision: number): Compare => ({
    key: keys.guestMove(guest),
    target: 'modRevision',
    op: '=',
    value: modRevision,
  });
  for (const p of prebinds) {
    wanted.add(p.guest);
    const have = byGuest.get(p.guest);
    if (!have) {
      out.push({ compare: [stillElected, noMoveOf(p.guest)], success: [moveMarkOp(markOf(p))] });
    } else if (isHaRestartMark(have.mark) && (have.mark.to !== p.to || have.mark.from !== p.from)) {
      out.push({
        compare: [stillElected, unchanged(p.guest, have.modRevision)],
        success: [moveMarkOp(markOf(p))],
      });
    }
  }
  for (const { mark, modRevision } of marks) {
    if (!isHaRestartMark(mark) || wanted.has(mark.guest)) continue;
    out.push({
      compare: [stillElected, unchanged(mark.guest, modRevision)],
      success: [{ type: 'delete', key: keys.guestMove(mark.guest) }],
    });
  }
  return out;
}

export function startCrmLoop(deps: CrmLoopDeps): CrmLoop {
  const { store, log } = deps;
  const timings = deps.timings ?? DEFAULT_TIMINGS;
  const clock = deps.clock ?? (() => performance.now());
  const placer: Placer = (c) => createPlacementIndex(c);
  const crm = createCrm(deps.member, timings, placer);
  let lastAdmission: string | undefined;
  /** The election the restart marks were last read under, and whether some may be left to remove. */
  let marksElection: number | undefined;
  let haMarksLeft = true;
  let lease: number | undefined;
  let stopped = false;
  // The specs of HA guests, watched: the bookkeeping finds a guest made HA without listing every spec.
  const haSpecs = new Map<string, Stored<GuestSpec>>();
  const specs = createInformer<Stored<GuestSpec>>({
    store,
    prefix: records.guest.prefix,
    decode: (kv) => ({
      key: kv.key,
      value: records.guest.decode(kv),
      modRevision: kv.modRevision,
      createRevision: kv.createRevision,
    }),
    handlers: {
      onAdd: (_k, s) =>
        void (isHaGuest(s.value) ? haSpecs.set(s.value.name, s) : haSpecs.delete(s.value.name)),
      onUpdate: (_k, s) =>
        void (isHaGuest(s.value) ? haSpecs.set(s.value.name, s) : haSpecs.delete(s.value.name)),
      onDelete: (_k, s) => void haSpecs.delete(s.value.name),
    },
    log,
  });
  specs.start().catch((e: unknown) => log.warn({ err: String(e) }, 'HA: cannot list the guests yet'));
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const note = (n: string) => {
    log.warn({ ha: n }, `HA: ${deps.member} ${n}`);
    deps.onNote?.(`${deps.member} ${n}`);
  };

  const giveUpElection = async () => {
    const held = lease;
    lease = undefined;
    if (held !== undefined) await store.revokeLease(held).catch(() => {});
  };

  const pass = async () => {
    const token = liveAgentToken(readAgentState(deps.stateDir));
    if (token === undefined) {
      // A member whose agent is not live (fenced, stopped) must not decide for the others.
      crm.step(clock(), undefined, EMPTY);
      await giveUpElection();
      return;
    }
    if (lease !== undefined) {
      try {
        await store.keepAlive(lease);
      } catch (e) {
        if (isTrivisorError(e) && e.code === 'NotFound') lease = undefined;
        else throw e;
      }
    }
    const world = await readHaWorld(store);
    const view: CrmView = {
      revision: world.revision,
      lock: world.lock,
      heartbeats: world.heartbeats,
      members: await deps.members(),
      guests: world.guests,
    };
    const { decisions, notes, prebinds = [] } = crm.step(clock(), token, view);
    for (const n of notes) note(n);
    for (const d of decisions) {
      if (d.write.put?.lease === 'own' && lease === undefined) {
        lease = (await store.grantLease(Math.ceil(timings.leaseTtlMs / 1000))).id;
      }
      // A guest given away takes its snapshots' records along (they name its member too).
      const given = handOverOf(d.write, world);
      const also = given
        ? valuesOf(await records.snapshot.list(store, given.guest)).map((s) =>
            records.snapshot.at(given.guest, s.name).putOp({ ...s, location: given.to }),
          )
        : [];
      const r = await store.txn(txnOf(d.write, world, lease, also));
      note(r.succeeded ? d.says : d.ifRefused);
    }
    // The bookkeeping between specs and records, by the elected CRM only (every write compares it).
    if (world.lock?.value.member === deps.member && world.lock.value.token === token) {
      // The HA guests without a record yet come from the watched specs; those recorded were just read.
      const specs = new Map([...haSpecs, ...world.specs]);
      for (const txn of recordUpkeep({ ...world, specs }, world.lock)) await store.txn(txn);
      // HA restarts on their way are marked to their member before their hand-over (issue 13 §4):
      // the marks of guests handed over by this pass go now, their location naming the member.
      // The marks are read while there is something to mark or to remove, and once per election
      // (a CRM elected before may have left some): not at every quiet pass (decision 0080).
      if (marksElection !== world.lock.createRevision) {
        marksElection = world.lock.createRevision;
        haMarksLeft = true;
      }
      if (prebinds.length > 0 || haMarksLeft) {
        const marks = (await store.list(keys.guestMovePrefix)).kvs.map((kv) => ({
          mark: JSON.parse(kv.value) as MoveMark,
          modRevision: kv.modRevision,
        }));
        const stillElected: Compare = {
          key: haKeys.crm,
          target: 'createRevision',
          op: '=',
          value: world.lock.createRevision,
        };
        let left = false;
        for (const txn of haRestartMarkWrites(prebinds, marks, stillElected, new Date()))
          left = !(await store.txn(txn)).succeeded || left;
        // Looked at again next pass while it marks, or while a write of it was refused.
        haMarksLeft = left || prebinds.length > 0;
      }
      // Admission control (issue 13 §4): told when the answer changes, as a warning (a `logging`
      // event); `cluster list` shows the standing answer.
      const alive = new Map(world.heartbeats.map((h) => [h.value.member, h.createRevision]));
      const verdict = admission(
        view.members,
        alive,
        view.guests.map((g) => g.value),
        placer,
      );
      const said = verdict.ok ? 'ok' : verdict.reason;
      if (said !== lastAdmission) {
        if (!verdict.ok) note(`admission: ${verdict.reason}`);
        else if (lastAdmission !== undefined)
          note("admission: every member's HA guests can be restarted elsewhere again");
        lastAdmission = said;
      }
    }
  };

  const loop = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = pass()
        .catch((e: unknown) => log.warn({ err: String(e) }, 'HA: a CRM pass failed; trying again'))
        .finally(loop);
    }, timings.crmEveryMs);
    timer.unref();
  };
  loop();

  return {
    async stop() {
      stopped = true;
      specs.stop();
      clearTimeout(timer);
      await running;
      // Revoked, the election key goes with the lease: another daemon's CRM takes over at once.
      await giveUpElection();
    },
  };
}
