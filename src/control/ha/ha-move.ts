import { conflict, failedPrecondition } from '../../core/errors.ts';
import type { Compare, KvStore, TxnOp } from '../../store/kv.ts';
import { readTogether } from '../../store/kv.ts';
import { records } from '../../store/records.ts';
import { decodeHaRecord, isHaGuest, type StoredHa, storedPart } from './ha-store.ts';
import { type HaMove, type HaWrite, haKeys, type Read, type Token } from './types.ts';

/**
 * A move of an HA guest as HA sees it (decisions 0044 and 0052, amended by issue 13): the mover
 * marks the guest's record `moving` (to the destination, under the destination's token) before
 * anything of the guest leaves its source, so that neither the source's LRM restarts it, nor the
 * destination's LRM stops what arrives, nor the CRM restarts it elsewhere if its source dies;
 * the switch-over's transaction gives the record to the destination (or, when the move is given
 * up, back to the source) in the same transaction that moves the guest's spec.
 *
 * Every write compares the record as read and the members' fencing tokens (the create revision of
 * their heartbeat keys), as the CRM's and the LRM's writes do: a move and a CRM decision about the
 * same guest race on the record's revision, and one of them loses cleanly.
 */

/** One move's two ends, each bound to the lease it held when the move began. */
export interface HaMoveTicket {
  guest: string;
  from: string;
  fromToken: Token;
  to: string;
  toToken: Token;
  /** Why it moves (`migration`, `evacuation`, `rebalancing`). */
  reason: string;
  /** The guest ran when the move began (decision 0108): HA starts it again if it gives it away. */
  wasRunning?: boolean;
}

/** The mark a move writes on the record. */
const markOf = (t: HaMoveTicket): HaMove => ({
  to: t.to,
  token: t.toToken,
  reason: t.reason,
  ...(t.wasRunning && { wasRunning: true }),
});

const recordIs = (guest: string, modRevision: number): Compare => ({
  key: haKeys.guest(guest),
  target: 'modRevision',
  op: '=',
  value: modRevision,
});
const holds = (member: string, token: Token): Compare => ({
  key: haKeys.heartbeat(member),
  target: 'createRevision',
  op: '=',
  value: token,
});

/**
 * Why guest `g` (its record) cannot begin a move from `from` to `to` now, or undefined. `alive`:
 * each member's token (its heartbeat key's create revision).
 */
export function haMoveRefusal(
  g: StoredHa,
  move: { from: string; to: string },
  alive: ReadonlyMap<string, Token>,
): string | undefined {
  const { from, to } = move;
  if (g.moving) return `Guest ${g.name} is being moved to ${g.moving.to} already`;
  if (g.owner !== from) {
    return `HA gave guest ${g.name} to member ${g.owner}: it is being restarted there; move it from there once it runs`;
  }
  if (alive.get(from) !== g.token) {
    return `Member ${from} does not hold the HA lease guest ${g.name} was given under: HA may be restarting it elsewhere; retry once its HA agent runs`;
  }
  if (alive.get(to) === undefined) {
    return `Member ${to} has no HA agent running (no HA heartbeat): HA guest ${g.name} cannot move there`;
  }
  return undefined;
}

/**
 * Why guest `guest`, made HA a moment ago (its spec says `ha.enabled=true`, the CRM has not
 * recorded it yet), cannot begin a move from `from` to `to` now, or undefined: both ends need
 * an HA agent, the source to record the guest under, the destination to be handed it.
 */
export function haUnrecordedMoveRefusal(
  guest: string,
  move: { from: string; to: string },
  alive: ReadonlyMap<string, Token>,
): string | undefined {
  if (alive.get(move.from) === undefined) {
    return `Member ${move.from} has no HA agent running (no HA heartbeat) to record guest ${guest} under, made HA a moment ago: it cannot move until that agent runs`;
  }
  if (alive.get(move.to) === undefined) {
    return `Member ${move.to} has no HA agent running (no HA heartbeat): HA guest ${guest} cannot move there`;
  }
  return undefined;
}

/**
 * The write that records a guest made HA a moment ago, whose record the CRM has not written yet,
 * as the CRM would (owned by its source under the source's token), and already marked moving
 * (decision 0075, amended): compared on the record's absence, so that the CRM's own creation of
 * it and this write race and one of them loses cleanly, and on both ends' tokens. `value`: the
 * record's other fields (its name, the revision it was decided at).
 */
export function haMoveRecordWrite<T extends StoredHa>(value: T, t: HaMoveTicket): HaWrite {
  const { error: _error, ...rest } = value;
  return {
    compare: [
      { key: haKeys.guest(t.guest), target: 'createRevision', op: '=', value: 0 },
      holds(t.from, t.fromToken),
      holds(t.to, t.toToken),
    ],
    put: {
      key: haKeys.guest(t.guest),
      value: {
        ...rest,
        owner: t.from,
        token: t.fromToken,
        failures: 0,
        failedOn: [],
        moving: markOf(t),
      },
    },
  };
}

/** The write that marks the move: the record as read, both ends still under their tokens. */
export function haMoveBeginWrite<T extends StoredHa>(r: Read<T>, t: HaMoveTicket): HaWrite {
  return {
    compare: [recordIs(t.guest, r.modRevision), holds(t.from, t.fromToken), holds(t.to, t.toToken)],
    put: {
      key: haKeys.guest(t.guest),
      value: { ...r.value, moving: markOf(t) },
    },
  };
}

/**
 * Why the source cannot end the mark of move `t`, given up before its switch-over, now, or
 * undefined (decision 0089, amended). `sourceToken`: the token the source's own HA agent holds
 * live now (its member's view, not the store's: a member booted again sees its old heartbeat in
 * the store until that lease expires, and its agent takes a new one only then). A record that no
 * longer names the source moving to `t.to` under the move's destination token is final (HA ended
 * or finished the move meanwhile: it is no longer the mover's); a source whose agent is not live,
 * or whose token is not the heartbeat the store holds, is not (its agent takes a lease within
 * seconds; try again).
 */
export function haMoveEndRefusal(
  g: StoredHa | undefined,
  t: HaMoveTicket,
  how: { sourceToken: Token | undefined; alive: ReadonlyMap<string, Token> },
): { reason: string; final: boolean } | undefined {
  if (!g || g.owner !== t.from || g.moving?.to !== t.to || g.moving.token !== t.toToken) {
    return {
      reason: `HA ended guest ${t.guest}'s move to ${t.to} meanwhile (its record names ${g?.owner ?? 'nobody'}${g?.moving ? `, moving to ${g.moving.to}` : ''})`,
      final: true,
    };
  }
  if (how.sourceToken === undefined || how.alive.get(t.from) !== how.sourceToken) {
    return {
      reason: `Member ${t.from}'s HA agent holds no live lease now (it takes one within seconds): guest ${t.guest}'s move to ${t.to} cannot be ended yet`,
      final: false,
    };
  }
  return undefined;
}

/**
 * The write that gives a move up before its switch-over: the source keeps the guest, under the
 * token its agent holds now (`sourceToken`, decision 0089 amended), compared on the record as read
 * (a CRM decision about the guest meanwhile wins; the CRM's own writes compare it too) and on the
 * source's heartbeat at that token. Under the token the record names, only the mark goes (as
 * before). Under a new one (the source's member restarted, or its agent fenced, since the move
 * began) the source owns it again under that token, with a clean slate of failures and no error,
 * decided at `decidedAt`: what the CRM would write if it gave the lost guest to that member. The
 * destination's token is not compared: before the switch-over it was never asked to run the guest.
 */
export function haMoveEndWrite<T extends StoredHa>(
  r: Read<T>,
  t: HaMoveTicket,
  options: { sourceToken: Token; decidedAt?: number },
): HaWrite {
  const { moving: _moving, ...kept } = r.value;
  const { error: _error, ...rest } = kept;
  const renewed = options.sourceToken !== r.value.token;
  return {
    compare: [recordIs(t.guest, r.modRevision), holds(t.from, options.sourceToken)],
    put: {
      key: haKeys.guest(t.guest),
      value: renewed
        ? {
            ...rest,
            owner: t.from,
            token: options.sourceToken,
            failures: 0,
            failedOn: [],
            ...(options.decidedAt !== undefined && { decidedAt: options.decidedAt }),
          }
        : kept,
    },
  };
}

/**
 * The switch-over's write: the destination owns the guest under the token it had when the move
 * began (it must still hold it), with a clean slate of failures. `sourceToo`: the source must
 * also still hold its token (the mover runs on the source; a source fenced since gives up, and
 * the CRM decides).
 */
export function haMoveDoneWrite<T extends StoredHa>(
  r: Read<T>,
  t: HaMoveTicket,
  options: { sourceToo: boolean; decidedAt?: number },
): HaWrite {
  const { moving: _moving, error: _error, ...rest } = r.value;
  return {
    compare: [
      recordIs(t.guest, r.modRevision),
      holds(t.to, t.toToken),
      ...(options.sourceToo ? [holds(t.from, t.fromToken)] : []),
    ],
    put: {
      key: haKeys.guest(t.guest),
      value: {
        ...rest,
        owner: t.to,
        token: t.toToken,
        failures: 0,
        failedOn: [],
        ...(options.decidedAt !== undefined && { decidedAt: options.decidedAt }),
      },
    },
  };
}

/**
 * How a give-back is judged: `neverRanThere`, the destination was never asked to run the guest
 * (the spec's desired state has been Stopped since the hand-over, compared in the same
 * transaction), so nothing of it can run there whatever became of the destination's lease.
 */
export interface GiveBack {
  neverRanThere: boolean;
}

/** Whether HA decided about the guest since its move's switch-over: its record names another owner or token. */
const decidedSince = (g: StoredHa | undefined, t: HaMoveTicket): boolean =>
  !g || g.owner !== t.to || g.token !== t.toToken || Boolean(g.moving);

/**
 * Whether the destination of move `t`, switched over, may start its guest for its source (decision
 * 0108): the source's HA heartbeat (`sourceToken`, as the store holds it) is gone or another
 * lease's than the move began under, and the record is as the switch-over gave it.
 */
export const sourceLostSinceSwitchOver = (
  g: StoredHa | undefined,
  t: HaMoveTicket,
  sourceToken: Token | undefined,
): boolean => sourceToken !== t.fromToken && !decidedSince(g, t);

/**
 * Why guest `g`'s record (given to `t.to` by its move's switch-over) cannot go back to its source
 * now, or undefined (decision 0089). `how.alive`: each member's token. A record that names another
 * owner or token than the switch-over gave it (`final`: HA decided about the guest since; the move
 * is no longer the mover's to undo), a destination that lost the lease it was given the guest
 * under while it may have run the guest (the CRM recovers the guest, after its margin), or a
 * source without an HA lease now (its agent takes one within seconds) refuse it.
 */
export function haGiveBackRefusal(
  g: StoredHa | undefined,
  t: HaMoveTicket,
  how: GiveBack & { alive: ReadonlyMap<string, Token> },
): { reason: string; final: boolean } | undefined {
  const { alive } = how;
  if (decidedSince(g, t)) {
    return { reason: `HA gave guest ${t.guest} to ${g?.owner ?? 'nobody'} meanwhile`, final: true };
  }
  if (!how.neverRanThere && alive.get(t.to) !== t.toToken) {
    return {
      reason: `Member ${t.to} lost the HA lease guest ${t.guest} was given under: HA recovers it`,
      final: false,
    };
  }
  if (alive.get(t.from) === undefined) {
    return {
      reason: `Member ${t.from} has no HA lease now (its HA agent takes one within seconds): guest ${t.guest} cannot be given back yet`,
      final: false,
    };
  }
  return undefined;
}

/**
 * The write that gives a switched-over guest back to its source (a move undone after its
 * switch-over), under the token the source holds now (`sourceToken`), which is the ticket's
 * unless the source's lease was renewed since (its member restarted, its agent fenced: decision
 * 0089). It is the switch-over made backwards: compared on the record as read (a CRM decision
 * about the guest meanwhile wins, and the CRM's own writes compare it too), on the source's token
 * now, and, unless the destination was never asked to run the guest, on the destination still
 * holding the lease it was given the guest under (nobody is recovering it). The source owns it
 * with a clean slate of failures, decided at `decidedAt`.
 */
export function haMoveBackWrite<T extends StoredHa>(
  r: Read<T>,
  t: HaMoveTicket,
  options: GiveBack & { sourceToken: Token; decidedAt?: number },
): HaWrite {
  const { moving: _moving, error: _error, ...rest } = r.value;
  return {
    compare: [
      recordIs(t.guest, r.modRevision),
      ...(options.neverRanThere ? [] : [holds(t.to, t.toToken)]),
      holds(t.from, options.sourceToken),
    ],
    put: {
      key: haKeys.guest(t.guest),
      value: {
        ...rest,
        owner: t.from,
        token: options.sourceToken,
        failures: 0,
        failedOn: [],
        ...(options.decidedAt !== undefined && { decidedAt: options.decidedAt }),
      },
    },
  };
}

/** An HA write as the compares and ops of a store transaction (the record as stored). */
export function haTxnPart(write: HaWrite): { compare: Compare[]; success: TxnOp[] } {
  const success: TxnOp[] = [];
  if (write.put) {
    success.push({
      type: 'put',
      key: write.put.key,
      value: JSON.stringify(storedPart(write.put.value as StoredHa)),
    });
  }
  return { compare: [...write.compare], success };
}

async function readMove(store: KvStore, guest: string) {
  const spec = records.guest.at(guest);
  const r = await readTogether(store, [
    { key: haKeys.guest(guest) },
    { key: haKeys.heartbeatPrefix, prefix: true },
    { key: spec.key },
  ]);
  const [recordKvs = [], beatKvs = [], specKvs = []] = r.kvs;
  const kv = recordKvs[0];
  const specKv = specKvs[0];
  const alive = new Map<string, Token>();
  for (const b of beatKvs) alive.set(b.key.slice(haKeys.heartbeatPrefix.length), b.createRevision);
  return {
    record: kv ? decodeHaRecord(kv) : undefined,
    alive,
    revision: r.revision,
    /** The guest's spec, whether it is HA, and the revision a write compares it at. */
    spec: specKv && { ha: isHaGuest(records.guest.decode(specKv)), modRevision: specKv.modRevision },
  };
}

/**
 * Marks guest `guest`'s move from `from` to `to` on its HA record. A guest made HA a moment ago,
 * whose record the CRM has not written yet, is recorded here, already marked, in one transaction
 * (decision 0075, amended): otherwise it would move unmarked and the CRM would record it half way,
 * owned by its source. Answers undefined for a guest that is not HA (nothing to guard); refuses,
 * with a one-line Conflict or FailedPrecondition that changed nothing, a guest HA is restarting
 * elsewhere (its record names another owner, or its source lost the token it was given under),
 * one moving already, or an end without an HA agent.
 */
export async function beginHaMove(
  store: KvStore,
  move: { guest: string; from: string; to: string; reason: string; wasRunning?: boolean },
): Promise<HaMoveTicket | undefined> {
  for (let attempt = 1; ; attempt++) {
    const { record, alive, revision, spec } = await readMove(store, move.guest);
    if (!record) {
      if (!spec?.ha) return undefined;
      const refusal = haUnrecordedMoveRefusal(move.guest, move, alive);
      if (refusal !== undefined) throw failedPrecondition(refusal);
      const ticket: HaMoveTicket = {
        ...move,
        fromToken: alive.get(move.from) as Token,
        toToken: alive.get(move.to) as Token,
      };
      const write = haMoveRecordWrite(
        {
          name: move.guest,
          owner: move.from,
          token: ticket.fromToken,
          decidedAt: revision,
          failures: 0,
          failedOn: [],
        },
        ticket,
      );
      const part = haTxnPart(write);
      const r = await store.txn({
        compare: [...part.compare, records.guest.at(move.guest).unchanged(spec.modRevision)],
        success: part.success,
      });
      if (r.succeeded) return ticket;
      // The CRM recorded it at the same moment (or the spec changed): once more, from what is now.
      if (attempt < 2) continue;
      throw conflict(
        `Guest ${move.guest}'s HA record or a member's HA lease changed at the same time (HA decided about it); retry`,
      );
    }
    const refusal = haMoveRefusal(record.value, move, alive);
    if (refusal !== undefined) {
      throw alive.get(move.to) === undefined && !record.value.moving && record.value.owner === move.from
        ? failedPrecondition(refusal)
        : conflict(refusal);
    }
    const ticket: HaMoveTicket = {
      ...move,
      fromToken: record.value.token,
      toToken: alive.get(move.to) as Token,
    };
    const r = await store.txn(haTxnPart(haMoveBeginWrite(record, ticket)));
    if (!r.succeeded) {
      throw conflict(
        `Guest ${move.guest}'s HA record or a member's HA lease changed at the same time (HA decided about it); retry`,
      );
    }
    return ticket;
  }
}

/**
 * The compares and ops the switch-over's transaction adds for an HA guest: the record, still
 * marked with this move, goes to the destination. Refuses (Conflict) when HA ended the move
 * meanwhile (its destination or source was lost): the switch-over must not happen then.
 */
export async function haSwitchOverPart(
  store: KvStore,
  t: HaMoveTicket,
): Promise<{ compare: Compare[]; success: TxnOp[] }> {
  const { record, revision } = await readMove(store, t.guest);
  if (!record || record.value.owner !== t.from || record.value.moving?.to !== t.to) {
    throw conflict(`HA ended guest ${t.guest}'s move to ${t.to} meanwhile (a member's HA lease was lost)`);
  }
  return haTxnPart(haMoveDoneWrite(record, t, { sourceToo: true, decidedAt: revision }));
}

/**
 * The compares and ops that give an HA guest's record back to its source, for the transaction
 * that undoes a switch-over, under the source's token now (`haMoveBackWrite`); `how` defaults to
 * a destination that may have run the guest (a live move's). Refuses
 * (Conflict, `haGiveBackRefusal`'s reason) when HA gave the guest elsewhere meanwhile, its
 * destination lost its lease, or the source holds none.
 */
export async function haGiveBackPart(
  store: KvStore,
  t: HaMoveTicket,
  how: GiveBack = { neverRanThere: false },
): Promise<{ compare: Compare[]; success: TxnOp[] }> {
  const { record, alive, revision } = await readMove(store, t.guest);
  const refusal = haGiveBackRefusal(record?.value, t, { ...how, alive });
  if (refusal !== undefined || !record)
    throw conflict(refusal?.reason ?? `Guest ${t.guest} has no HA record`);
  return haTxnPart(
    haMoveBackWrite(record, t, { ...how, sourceToken: alive.get(t.from) as Token, decidedAt: revision }),
  );
}

/**
 * The compares under which the destination of move `t`, switched over, starts its guest because
 * its source was lost since (`sourceLostSinceSwitchOver`): the record as read, and the destination
 * still under the lease it was given the guest under. Undefined when it may not.
 */
export async function haLostSourcePart(store: KvStore, t: HaMoveTicket): Promise<Compare[] | undefined> {
  const { record, alive } = await readMove(store, t.guest);
  if (!record || !sourceLostSinceSwitchOver(record.value, t, alive.get(t.from))) return undefined;
  return [recordIs(t.guest, record.modRevision), holds(t.to, t.toToken)];
}

/**
 * Whether HA decided about guest `t.guest` since its move's switch-over (its record names another
 * owner or token than the switch-over gave it): the move is then no longer the mover's to undo.
 */
export async function haDecidedSinceSwitchOver(store: KvStore, t: HaMoveTicket): Promise<boolean> {
  const { record } = await readMove(store, t.guest);
  return decidedSince(record?.value, t);
}

/** How an attempt to end a move's mark before its switch-over went (`endHaMove`). */
export type HaMoveEnd =
  | { ended: true }
  | {
      ended: false;
      reason: string /** HA decided about the guest meanwhile: nothing to retry. */;
      final: boolean;
    };

/**
 * Ends the mark of a move given up before its switch-over (the source keeps the guest), under
 * the token the source's agent holds live now (`sourceToken`; `haMoveEndWrite`). One that cannot
 * says why: HA ended or finished the move meanwhile (`final`), the source's agent holds no live
 * lease matching the store's heartbeat yet, or the record changed between the read and the write
 * (a CRM decision: read again, it says which).
 */
export async function endHaMove(
  store: KvStore,
  t: HaMoveTicket,
  sourceToken: Token | undefined,
): Promise<HaMoveEnd> {
  const { record, alive, revision } = await readMove(store, t.guest);
  const refusal = haMoveEndRefusal(record?.value, t, { sourceToken, alive });
  if (refusal !== undefined || !record || sourceToken === undefined) {
    return { ended: false, ...(refusal ?? { reason: `Guest ${t.guest} has no HA record`, final: true }) };
  }
  const r = await store.txn(haTxnPart(haMoveEndWrite(record, t, { sourceToken, decidedAt: revision })));
  if (r.succeeded) return { ended: true };
  return {
    ended: false,
    reason: `Guest ${t.guest}'s HA record or member ${t.from}'s HA lease changed at the same time`,
    final: false,
  };
}
