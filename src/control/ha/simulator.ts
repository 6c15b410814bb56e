import { asTrivisorError } from '../../core/errors.ts';
import type { Model } from '../../core/types.ts';
import { createPlacementIndex } from '../placement.ts';
import {
  byPriority,
  type Crm,
  type CrmDecision,
  type CrmView,
  createCrm,
  type HaPrebind,
  haCandidates,
} from './crm.ts';
import { createFakeStore, type FakeStore } from './fake-store.ts';
import {
  type HaMoveTicket,
  haGiveBackRefusal,
  haMoveBackWrite,
  haMoveBeginWrite,
  haMoveDoneWrite,
  haMoveEndRefusal,
  haMoveEndWrite,
  haMoveRecordWrite,
  haMoveRefusal,
  haUnrecordedMoveRefusal,
  sourceLostSinceSwitchOver,
} from './ha-move.ts';
import { createLrm, type Lrm, type LrmAction } from './lrm.ts';
import {
  type CrmLockValue,
  DEFAULT_TIMINGS,
  type HaGuestRecord,
  type HaMemberRecord,
  type HaTimings,
  type HeartbeatValue,
  haKeys,
} from './types.ts';

/**
 * A deterministic simulator of the HA state machines (decision 0044): one fake clock that moves in
 * ticks and that each member reads at its own rate (its monotonic clock), the fake store, members made of a host (up, down or frozen), the HA agent that
 * runs the LRM and pets the host's watchdog, the daemon that runs the CRM, the mover and the
 * evacuation, and a link to the store (up, down, or one-way: requests arrive, answers are lost).
 * Guests are modelled as the processes they are, not as records: the invariant checked after
 * every tick is about processes. Everything happens in one order (members by name), so a
 * scenario gives the same event log every time.
 */
export interface SimGuest {
  name: string;
  on: string;
  memoryGiB?: number;
  priority?: number;
  ha?: boolean;
  model?: Model;
  want?: 'started' | 'stopped';
  /**
   * false: made HA a moment before the cluster's start, and not recorded yet: it runs on `on`
   * (it ran there before it was made HA) until the elected CRM's bookkeeping records it there at
   * its next pass (ha-store.ts's `recordUpkeep`), or a move records it first (ha-move.ts).
   */
  recorded?: boolean;
}

export interface SimMember {
  name: string;
  memoryGiB?: number;
  cpus?: number;
  /** How fast its monotonic clock runs against the store's (default 1; 0.9 is 10 % slow). */
  clockRate?: number;
}

export interface SimOptions {
  members: Array<string | SimMember>;
  guests?: SimGuest[];
  timings?: Partial<HaTimings>;
  /** The clock's step (default 500 ms). */
  tickMs?: number;
  /** How long a move's transfer takes (default 2 s). */
  transferMs?: number;
  /** How long a host reset by its watchdog takes to come back (default 20 s). */
  rebootMs?: number;
  /** Events before this time are not logged (default 1 s: the cluster's start). */
  quietUntilMs?: number;
}

/** What a scenario can do to the world. */
export interface SimWorld {
  now(): number;
  /** The whole host dies: guests, agent and daemon. */
  kill(member: string): void;
  /** A dead host boots again: no guests run on it. */
  boot(member: string): void;
  killDaemon(member: string): void;
  startDaemon(member: string): void;
  /** The whole host freezes (a hypervisor pause): guests too. */
  pauseHost(member: string): void;
  resumeHost(member: string): void;
  /** Only the HA agent stops (SIGSTOP); guests and daemon go on. */
  pauseAgent(member: string): void;
  resumeAgent(member: string): void;
  /** The member's link to the store: `oneway` delivers its requests and loses the answers. */
  link(member: string, state: 'up' | 'down' | 'oneway'): void;
  /** etcd loses its quorum (every member at once), or gets it back. */
  storeDown(): void;
  storeUp(): void;
  /** A move (migration) of `guest` to `to`, asked of its owner. */
  move(guest: string, to: string): void;
  /**
   * A cold move of `guest` to `to`, asked of its owner (the mover's archive or shared-pool move,
   * decision 0079): the guest stops, the records are handed over (the HA record to `to`, wanted
   * stopped as the spec's desired state), the data goes over for `transferMs`, then it is wanted
   * started on `to`. Its journal (the move mark) is in the store: a source whose daemon stops half
   * way finishes or undoes the move when its daemon works again (decision 0089).
   */
  coldMove(guest: string, to: string): void;
  /** The member is marked evacuated: its daemon moves its guests away, one at a time. */
  evacuate(member: string): void;
  /**
   * The member's agent fences now (its clean stop, or an administrator's fence): it kills its HA
   * guests, then revokes its lease. Nobody else ever revokes a member's lease (decision 0044).
   */
  fence(member: string): void;
  /** The daemon's election lease runs out now (it may be revoked by anyone: writes compare the key). */
  dropElection(member: string): void;
  /**
   * Someone other than its holder revokes the member's lease: what decision 0044 forbids, kept
   * only for the test that shows why.
   */
  revokeFromOutside(member: string): void;
  /** The next `count` starts of `guest` on `member` fail. */
  failStarts(member: string, guest: string, count: number): void;
  /** The guest's process dies by itself. */
  crash(guest: string): void;
  /** An administrator's edit of the guest's record. */
  edit(guest: string, patch: Partial<HaGuestRecord>): void;
  remove(guest: string): void;
}

export interface Simulator {
  readonly world: SimWorld;
  readonly log: string[];
  /** Runs `what` at `atMs`: before the members act, or between the CRMs' reads and writes (`race`). */
  at(atMs: number, what: (w: SimWorld) => void, phase?: 'before' | 'race'): void;
  /** Runs until `untilMs`, checking the invariants after every tick; then logs where guests run. */
  run(untilMs: number): string[];
  /** Members where the guest's processes execute now. */
  runningOn(guest: string): string[];
  record(guest: string): HaGuestRecord | undefined;
  /** Guests whose cold move's journal is still there (running, or left unfinished). */
  coldMovesLeft(): string[];
  /**
   * Each lost member's guest given to another member, in order: where the elected CRM had marked
   * its restart to (`HaPrebind`, the loop's move mark of kind `ha`) when it gave it, and for how
   * long (ms on the simulator's clock); undefined when it was not marked there.
   */
  restarts(): Array<{ guest: string; to: string; markedForMs: number | undefined }>;
}

/** A broken invariant: a guest ran twice, or a member started one it must not. */
export class InvariantError extends Error {}

interface MemberState {
  name: string;
  memoryTotalBytes: number;
  cpus: number;
  clockRate: number;
  host: 'up' | 'down' | 'paused';
  bootAt?: number;
  agent: 'up' | 'paused';
  daemon: 'up' | 'down';
  link: 'up' | 'down' | 'oneway';
  lrm: Lrm;
  crm: Crm;
  lease: number | undefined;
  /** The daemon's own lease, which the CRM's election key is on: it goes when the daemon dies. */
  crmLease: number | undefined;
  watchdog: number | undefined;
  /** The token of the last lease granted to it, and when its last confirmed renewal was sent. */
  confirmedToken: number | undefined;
  confirmedSentAt: number;
  failStarts: Map<string, number>;
  /** Its daemon just started: it settles moves it no longer runs. */
  settleMoves: boolean;
}

interface MoveState {
  guest: string;
  from: string;
  to: string;
  fromToken: number;
  toToken: number;
  phase: 'transfer' | 'switched';
  until: number;
}

/** A cold move's journal (decision 0079's move mark): it outlives the source's daemon. */
interface ColdMove {
  ticket: HaMoveTicket;
  phase: 'started' | 'handed-over' | 'sent';
  wasRunning: boolean;
  /** When the step under way (the archive's writing, its sending) ends. */
  until: number;
  /** Its operation runs in the source's daemon; false: left unfinished, to be resumed. */
  running: boolean;
}

const GIB = 1024 ** 3;
const EVACUATION_EVERY_MS = 2000;
/** How often a daemon tries its unfinished moves again (the real daemon: every minute and more). */
const RESUME_EVERY_MS = 10_000;
const secs = (ms: number) => (ms / 1000).toFixed(1);

export function createSimulator(options: SimOptions): Simulator {
  const timings: HaTimings = { ...DEFAULT_TIMINGS, ...options.timings };
  const tickMs = options.tickMs ?? 500;
  const transferMs = options.transferMs ?? 2000;
  const rebootMs = options.rebootMs ?? 20_000;
  const quietUntil = options.quietUntilMs ?? 1000;
  const store: FakeStore = createFakeStore();
  const log: string[] = [];
  let now = 0;
  const placer = (c: Parameters<typeof createPlacementIndex>[0]) => createPlacementIndex(c);

  const members = new Map<string, MemberState>();
  const fresh = (m: SimMember): MemberState => ({
    name: m.name,
    memoryTotalBytes: (m.memoryGiB ?? 8) * GIB,
    cpus: m.cpus ?? 4,
    clockRate: m.clockRate ?? 1,
    host: 'up',
    agent: 'up',
    daemon: 'up',
    link: 'up',
    lrm: createLrm(m.name, timings),
    crm: createCrm(m.name, timings, placer),
    failStarts: new Map(),
    settleMoves: false,
    lease: undefined,
    crmLease: undefined,
    watchdog: undefined,
    confirmedToken: undefined,
    confirmedSentAt: Number.NEGATIVE_INFINITY,
  });
  for (const spec of options.members) {
    const m = typeof spec === 'string' ? { name: spec } : spec;
    members.set(m.name, fresh(m));
    store.put(haKeys.member(m.name), {
      name: m.name,
      memoryTotalBytes: (m.memoryGiB ?? 8) * GIB,
      cpus: m.cpus ?? 4,
      evacuated: false,
    } satisfies HaMemberRecord);
  }
  const ordered = () => [...members.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  const member = (name: string) => {
    const m = members.get(name);
    if (!m) throw new Error(`no member ${name}`);
    return m;
  };

  /** Where each guest's processes are: running, or arriving by a move (not executing). */
  const procs = new Map<string, Map<string, 'running' | 'incoming'>>();
  const moves = new Map<string, MoveState>();
  const coldMoves = new Map<string, ColdMove>();
  /** Guests made HA whose record nobody wrote yet: their specs, as the CRM and the mover read them. */
  const unrecorded = new Map<string, SimGuest>();
  const scheduled: Array<{ at: number; phase: 'before' | 'race'; what: (w: SimWorld) => void }> = [];

  const say = (text: string) => {
    if (now >= quietUntil) log.push(`${secs(now)} ${text}`);
  };
  const procsOn = (m: string) =>
    [...procs]
      .filter(([, where]) => where.has(m))
      .map(([g]) => g)
      .sort();
  const setProc = (g: string, m: string, state: 'running' | 'incoming' | undefined) => {
    const where = procs.get(g) ?? new Map<string, 'running' | 'incoming'>();
    if (state) where.set(m, state);
    else where.delete(m);
    if (where.size === 0) procs.delete(g);
    else procs.set(g, where);
  };
  /** What the agent of `m` sees running (a guest arriving by a move is not running yet). */
  const runningHere = (m: string) => new Set(procsOn(m).filter((g) => procs.get(g)?.get(m) === 'running'));
  const killAll = (m: string) => {
    const killed = procsOn(m);
    for (const g of killed) setProc(g, m, undefined);
    return killed;
  };

  /**
   * One request of `m` to the store: undefined when no answer came back. A one-way link
   * delivers the request (it takes effect) and loses the answer.
   */
  const call = <T>(m: MemberState, request: () => T): T | undefined => {
    if (!store.up() || m.link === 'down' || m.host !== 'up') return undefined;
    const answer = request();
    return m.link === 'oneway' ? undefined : answer;
  };
  const guests = () => store.list<HaGuestRecord>(haKeys.guestPrefix);
  const guestRecord = (g: string) => store.get<HaGuestRecord>(haKeys.guest(g));
  const tokenOf = (m: string) => store.get<HeartbeatValue>(haKeys.heartbeat(m))?.createRevision;
  /** The member's own monotonic clock: the simulator's, at the member's rate. */
  const local = (m: MemberState) => Math.round(now * m.clockRate);
  const agentWorks = (m: MemberState) => m.host === 'up' && m.agent === 'up';
  const daemonWorks = (m: MemberState) => agentWorks(m) && m.daemon === 'up' && m.lrm.live(local(m));

  // ----- the LRM's actions, carried out -----
  function act(m: MemberState, a: LrmAction) {
    switch (a.kind) {
      case 'grant': {
        const sentAt = local(m);
        // The heartbeat is put with the lease's id, which a one-way link never brings back: the
        // lease is granted and left to expire, with nothing on it.
        if (m.link === 'oneway') call(m, () => store.grant(now, timings.leaseTtlMs));
        const r =
          m.link === 'oneway'
            ? undefined
            : call(m, () =>
                store.register(now, timings.leaseTtlMs, haKeys.heartbeat(m.name), { member: m.name }),
              );
        if (!r) return lrmAnswer(m, { kind: 'failed' });
        m.lease = r.lease;
        m.confirmedToken = r.createRevision;
        m.confirmedSentAt = sentAt;
        say(`${m.name} lease granted (token ${r.createRevision})`);
        return lrmAnswer(m, { kind: 'granted', token: r.createRevision, sentAt });
      }
      case 'renew': {
        const sentAt = local(m);
        const lease = m.lease;
        const ok = lease === undefined ? false : call(m, () => store.keepAlive(now, lease));
        if (ok === undefined) return lrmAnswer(m, { kind: 'failed' });
        if (ok) m.confirmedSentAt = sentAt;
        return lrmAnswer(m, ok ? { kind: 'renewed', sentAt } : { kind: 'gone' });
      }
      case 'fence': {
        for (const g of a.guests) setProc(g, m.name, undefined);
        say(
          `${m.name} fenced: ${a.guests.length > 0 ? `killed ${a.guests.join(', ')}` : 'no HA guest ran here'}`,
        );
        return;
      }
      case 'revoke': {
        const lease = m.lease;
        const answered = lease === undefined || call(m, () => store.revoke(lease)) !== undefined;
        if (!answered) return;
        m.lease = undefined;
        return lrmAnswer(m, { kind: 'revoked' });
      }
      case 'start':
        return start(m, a.guest);
      case 'stop':
        setProc(a.guest, m.name, undefined);
        say(`${m.name} stops ${a.guest}: ${a.why}`);
        return;
      case 'pet':
        m.watchdog = a.untilMs;
        return;
      case 'disarm':
        m.watchdog = undefined;
        return;
      case 'write': {
        const ok = call(m, () => store.txn(a.write));
        const value = a.write.put?.value as HaGuestRecord | undefined;
        if (ok && value)
          say(
            value.failures === 0
              ? `${m.name} clears the failed starts of ${a.guest}`
              : `${m.name} records ${value.failures} failed start(s) of ${a.guest}`,
          );
        return;
      }
    }
  }
  function lrmAnswer(m: MemberState, answer: Parameters<Lrm['leaseAnswer']>[1]) {
    for (const a of m.lrm.leaseAnswer(local(m), answer)) act(m, a);
  }

  function start(m: MemberState, g: string) {
    // The invariant's second half: only a member live on its own clock, holding the token the
    // guest's record names, starts it. Live is counted from the renewals this simulator
    // confirmed to it, not taken from the LRM.
    const r = guestRecord(g);
    const token = m.lrm.token(local(m));
    if (
      token === undefined ||
      m.confirmedToken !== token ||
      local(m) - m.confirmedSentAt >= timings.fenceAfterMs
    )
      throw new InvariantError(
        `${secs(now)}: ${m.name} started ${g} without a live lease\n${log.join('\n')}`,
      );
    if (!r || r.value.owner !== m.name || (r.value.ha && r.value.token !== token))
      throw new InvariantError(
        `${secs(now)}: ${m.name} started ${g}, which it does not own\n${log.join('\n')}`,
      );
    // A copy frozen on a host whose watchdog already ran out is reset before it can run again.
    const elsewhere = [...(procs.get(g) ?? [])]
      .filter(([other, state]) => other !== m.name && state === 'running' && !condemned(member(other)))
      .map(([other]) => other);
    if (elsewhere.length > 0)
      throw new InvariantError(
        `${secs(now)}: ${m.name} started ${g} while it runs on ${elsewhere.join(', ')}\n${log.join('\n')}`,
      );
    const failing = m.failStarts.get(g) ?? 0;
    if (m.daemon !== 'up' || failing > 0) {
      if (failing > 0) m.failStarts.set(g, failing - 1);
      const why = m.daemon !== 'up' ? 'the daemon is down' : 'the driver failed';
      say(`${m.name} cannot start ${g}: ${why}`);
      m.lrm.started(local(m), g, false);
      return;
    }
    setProc(g, m.name, 'running');
    say(`${m.name} starts ${g}`);
    m.lrm.started(local(m), g, true);
  }

  // ----- moves -----
  function beginMove(g: string, to: string, reason: string, cold = false): boolean {
    const r = guestRecord(g);
    const spec = unrecorded.get(g);
    if (!r && !spec) return false;
    const from = member(r ? r.value.owner : (spec as SimGuest).on);
    const dest = member(to);
    const destToken = tokenOf(to);
    const token = from.lrm.token(local(from));
    if (
      !daemonWorks(from) ||
      token === undefined ||
      destToken === undefined ||
      r?.value.moving ||
      coldMoves.has(g)
    ) {
      say(`${from.name} cannot move ${g} to ${to} now`);
      return false;
    }
    if (to === from.name) {
      say(`${from.name} cannot move ${g} to ${to}: it is there already`);
      return false;
    }
    // The real mover's refusal (ha-move.ts), on the tokens as the store holds them.
    const alive = new Map(
      store.list<HeartbeatValue>(haKeys.heartbeatPrefix).map((h) => [h.value.member, h.createRevision]),
    );
    const refusal = r
      ? haMoveRefusal(r.value, { from: from.name, to }, alive)
      : haUnrecordedMoveRefusal(g, { from: from.name, to }, alive);
    if (refusal !== undefined) {
      say(`${from.name} cannot move ${g} to ${to}: ${refusal}`);
      return false;
    }
    // The real mover's write (ha-move.ts): the record as read, both ends under their tokens; a
    // guest made HA that nobody recorded yet is recorded by it, already moving.
    // A cold move stops a running guest through its desired state (the real mover's `stop`, a
    // write of its own there, made here with the mark), and its mark says it ran (decision 0108).
    const wasRunning = cold && procs.get(g)?.get(from.name) === 'running';
    const ticket = {
      guest: g,
      from: from.name,
      fromToken: token,
      to,
      toToken: destToken,
      reason,
      ...(wasRunning && { wasRunning }),
    };
    const begin = r
      ? haMoveBeginWrite(r, ticket)
      : haMoveRecordWrite(recordOf(spec as SimGuest, token), ticket);
    const ok = call(from, () => store.txn(wasRunning ? wanting(begin, 'stopped') : begin));
    if (!ok) {
      say(`${from.name} cannot move ${g} to ${to}: the store refused`);
      return false;
    }
    if (!r) {
      unrecorded.delete(g);
      say(`${from.name} records ${g} (made HA a moment ago) as moving`);
    }
    if (cold) {
      if (wasRunning) setProc(g, from.name, undefined);
      coldMoves.set(g, { ticket, phase: 'started', wasRunning, until: now + transferMs, running: true });
      say(`${from.name} stops ${g} and moves it cold to ${to} (${reason})`);
      return true;
    }
    if (procs.get(g)?.get(from.name) === 'running') setProc(g, dest.name, 'incoming');
    moves.set(g, {
      guest: g,
      from: from.name,
      to,
      fromToken: token,
      toToken: destToken,
      phase: 'transfer',
      until: now + transferMs,
    });
    say(`${from.name} moves ${g} to ${to} (${reason})`);
    return true;
  }
  /** The source gives up a move; the record says so when the source can write it. */
  function abortMove(mv: MoveState, why: string) {
    moves.delete(mv.guest);
    if (procs.get(mv.guest)?.get(mv.to) === 'incoming') setProc(mv.guest, mv.to, undefined);
    say(`move of ${mv.guest} to ${mv.to} aborted: ${why}`);
    const from = member(mv.from);
    if (daemonWorks(from)) clearMove(from, mv.guest);
  }
  /**
   * The source ends a move's mark before its switch-over (guest-move.ts's `endMark`, ha-move.ts's
   * `endHaMove`): under the token its own agent holds now, never one the store still shows for a
   * lease it lost (decision 0089, amended). `want`: the guest's desired state written with it (a
   * cold move's source wants the guest started again if it ran). Answers what came of it.
   */
  function clearMove(
    from: MemberState,
    g: string,
    options: { ticket?: HaMoveTicket; want?: HaGuestRecord['want']; quiet?: boolean } = {},
  ): 'ended' | { reason: string; final: boolean } {
    const r = guestRecord(g);
    const moving = r?.value.moving;
    const ticket =
      options.ticket ??
      (moving && {
        guest: g,
        from: from.name,
        fromToken: r.value.token,
        to: moving.to,
        toToken: moving.token,
        reason: moving.reason,
      });
    if (!ticket) return { reason: `HA ended the move of ${g}`, final: true };
    const sourceToken = from.lrm.token(local(from));
    const alive = new Map(
      store.list<HeartbeatValue>(haKeys.heartbeatPrefix).map((h) => [h.value.member, h.createRevision]),
    );
    const refusal = haMoveEndRefusal(r?.value, ticket, { sourceToken, alive });
    if (refusal !== undefined || !r || sourceToken === undefined) {
      return refusal ?? { reason: 'no HA lease', final: false };
    }
    const end = haMoveEndWrite(r, ticket, { sourceToken, decidedAt: store.revision() });
    const ok = call(from, () => store.txn(options.want ? wanting(end, options.want) : end));
    if (!ok) return { reason: 'the store refused', final: false };
    if (!options.quiet) {
      const renewed = sourceToken !== r.value.token ? ` (token ${sourceToken})` : '';
      say(`${from.name} keeps ${g}: its move is over${renewed}`);
    }
    return 'ended';
  }
  function stepMoves() {
    for (const mv of [...moves.values()].sort((a, b) => (a.guest < b.guest ? -1 : 1))) {
      const from = member(mv.from);
      const to = member(mv.to);
      if (mv.phase === 'transfer') {
        if (!daemonWorks(from)) abortMove(mv, `${from.name} stopped sending`);
        else if (!daemonWorks(to)) abortMove(mv, `${to.name} stopped receiving`);
        // Each end is bound to the lease it had when the move began: one fenced since (a new
        // token) gives the move up, whatever it holds of it.
        else if (from.lrm.token(local(from)) !== mv.fromToken) abortMove(mv, `${from.name} was fenced`);
        else if (to.lrm.token(local(to)) !== mv.toToken) abortMove(mv, `${to.name} was fenced`);
        else if (from.link !== 'up' || to.link !== 'up') abortMove(mv, 'the link between them broke');
        else if (now >= mv.until) {
          if (procs.get(mv.guest)?.get(from.name) === 'running') {
            setProc(mv.guest, from.name, undefined);
            setProc(mv.guest, to.name, 'running');
          }
          mv.phase = 'switched';
          say(`${mv.guest} switched over from ${from.name} to ${to.name}`);
        }
        continue;
      }
      const r = guestRecord(mv.guest);
      if (!r || r.value.moving?.to !== to.name) {
        moves.delete(mv.guest);
        continue;
      }
      if (!daemonWorks(to)) continue;
      // The switch-over's record write (ha-move.ts), here made by the destination once it runs
      // the guest, compared on its own token only: the source may be gone by then.
      const ticket = {
        guest: mv.guest,
        from: mv.from,
        fromToken: mv.fromToken,
        to: to.name,
        toToken: r.value.moving.token,
        reason: r.value.moving.reason,
      };
      const ok = call(to, () => store.txn(haMoveDoneWrite(r, ticket, { sourceToo: false })));
      if (ok) {
        moves.delete(mv.guest);
        say(`${to.name} owns ${mv.guest}: the move is done`);
      }
    }
  }

  // ----- cold moves (the mover's archive and shared-pool moves) and their journals -----
  /** The record written with the guest's desired state (the spec's, which HA reads as `want`). */
  const wanting = (w: ReturnType<typeof haMoveDoneWrite>, want: HaGuestRecord['want']) =>
    w.put ? { ...w, put: { ...w.put, value: { ...(w.put.value as HaGuestRecord), want } } } : w;
  function stepColdMoves() {
    for (const [g, mv] of [...coldMoves].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const from = member(mv.ticket.from);
      if (!mv.running) continue;
      if (!daemonWorks(from)) {
        mv.running = false;
        say(
          `the move of ${g} to ${mv.ticket.to} is left unfinished (${mv.phase}): ${from.name}'s daemon stopped`,
        );
        continue;
      }
      if (now < mv.until) continue;
      if (mv.phase === 'started') {
        // The hand-over's transaction (ha-move.ts's switch-over part): the record, still marked
        // with this move, goes to the destination, compared on both ends' tokens; the spec's
        // desired state is Stopped until the data is there.
        const r = guestRecord(g);
        const marked = r?.value.owner === from.name && r.value.moving?.to === mv.ticket.to;
        const ok =
          r && marked
            ? call(from, () =>
                store.txn(
                  wanting(
                    haMoveDoneWrite(r, mv.ticket, { sourceToo: true, decidedAt: store.revision() }),
                    'stopped',
                  ),
                ),
              )
            : false;
        if (!ok) {
          say(
            `${from.name} cannot hand ${g} over to ${mv.ticket.to}: ${marked ? 'the store refused' : 'HA ended its move'}`,
          );
          if (daemonWorks(from)) undoColdMove(from, g, mv);
          else mv.running = false;
          continue;
        }
        mv.phase = 'handed-over';
        mv.until = now + transferMs;
        say(`${from.name} hands ${g} over to ${mv.ticket.to}`);
        continue;
      }
      if (mv.phase === 'handed-over') {
        if (!daemonWorks(member(mv.ticket.to))) {
          // The send fails (the real mover's `whileDestinationUp`): the move is undone.
          say(`${from.name} cannot send ${g} to ${mv.ticket.to}: its daemon stopped receiving`);
          giveBackColdMove(from, g, mv);
          continue;
        }
        // The destination applied the whole archive; the guest is started there at the next step.
        mv.phase = 'sent';
        say(`${from.name} sent ${g} to ${mv.ticket.to}`);
        continue;
      }
      finishColdMove(from, g, mv);
    }
  }
  /** The data is on the destination: the guest is wanted started there if it ran. */
  function finishColdMove(from: MemberState, g: string, mv: ColdMove) {
    const r = guestRecord(g);
    if (mv.wasRunning && r && r.value.want !== 'started') {
      const ok = call(from, () =>
        store.txn({
          compare: [{ key: haKeys.guest(g), target: 'modRevision', op: '=', value: r.modRevision }],
          put: { key: haKeys.guest(g), value: { ...r.value, want: 'started' } },
        }),
      );
      if (!ok) return;
    }
    coldMoves.delete(g);
    say(`${g} moved to ${mv.ticket.to}: the move is done`);
  }
  /**
   * The source undoes a cold move not handed over (guest-move.ts's `coldMoveFailed`, and its
   * `resume` of the journal): the mark ends under the token the source's agent holds now (decision
   * 0089, amended), the guest wanted started again if it ran. A mark HA ended meanwhile leaves the
   * guest where HA put it: on another member, started there if it ran (decision 0108); still the
   * source's (its move's destination was lost), wanted started here again. One that cannot end yet
   * keeps its journal, for the source's next resume.
   */
  function undoColdMove(m: MemberState, g: string, mv: ColdMove, resumed = false) {
    const to = mv.ticket.to;
    const end = clearMove(m, g, {
      ticket: mv.ticket,
      quiet: true,
      ...(mv.wasRunning && { want: 'started' as const }),
    });
    if (end !== 'ended' && !end.final) {
      mv.running = false;
      say(`${m.name} cannot undo the move of ${g} to ${to} yet: ${end.reason}`);
      return;
    }
    coldMoves.delete(g);
    const r = guestRecord(g);
    if (end === 'ended') {
      const how = resumed ? ', not handed over' : '';
      say(
        `${m.name} undoes the move of ${g} to ${to}${how}: ${g} is its own again (token ${r?.value.token})`,
      );
      return;
    }
    if (!r || r.value.owner !== m.name || r.value.moving) {
      say(`${m.name} leaves ${g} to HA: ${end.reason}`);
      return;
    }
    say(`${m.name} keeps ${g}: ${end.reason}`);
    if (!mv.wasRunning || r.value.want === 'started') return;
    const ok = call(m, () =>
      store.txn({
        compare: [{ key: haKeys.guest(g), target: 'modRevision', op: '=', value: r.modRevision }],
        put: { key: haKeys.guest(g), value: { ...r.value, want: 'started' } },
      }),
    );
    if (ok) say(`${m.name} starts ${g} again: it is still its own`);
  }
  /**
   * A source's daemon working again takes up the moves it left unfinished, from their journals
   * (guest-move.ts's `resume`): one not handed over yet is undone, its mark ended under the token
   * the source's agent holds now (the source keeps the guest; decision 0089, amended); one handed
   * over whose data never arrived is undone too, its record given back under that token (decision
   * 0089); one whose data arrived is finished.
   */
  function resumeColdMoves(m: MemberState) {
    for (const [g, mv] of [...coldMoves].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (mv.running || mv.ticket.from !== m.name) continue;
      const to = mv.ticket.to;
      if (mv.phase === 'sent') {
        mv.running = true;
        finishColdMove(m, g, mv);
        continue;
      }
      if (mv.phase === 'started') {
        undoColdMove(m, g, mv, true);
        continue;
      }
      giveBackColdMove(m, g, mv);
    }
  }
  /**
   * The source undoes a cold move handed over whose data never arrived (guest-move.ts's
   * `rollBack`, from its journal or when the send fails): the record goes back under the token its
   * agent holds now (decision 0089), wanted started if it ran. A record HA decided about since is
   * left to HA; one that cannot go back yet keeps the journal, for the source's next resume.
   */
  function giveBackColdMove(m: MemberState, g: string, mv: ColdMove) {
    const to = mv.ticket.to;
    const r = guestRecord(g);
    const alive = new Map(
      store.list<HeartbeatValue>(haKeys.heartbeatPrefix).map((h) => [h.value.member, h.createRevision]),
    );
    // The destination was never asked to run it while its record wants it stopped (the spec's
    // desired state since the hand-over). A guest that is not HA has no HA guard in the real mover
    // (no ticket): it goes back whatever the destination's lease, its copy there discarded first.
    const notHa = r !== undefined && !r.value.ha;
    const how = { neverRanThere: r?.value.want === 'stopped' || notHa };
    const refusal = haGiveBackRefusal(r?.value, mv.ticket, { ...how, alive });
    if (refusal?.final) {
      coldMoves.delete(g);
      say(`${m.name} leaves ${g} to HA: ${refusal.reason}`);
      return;
    }
    const sourceToken = alive.get(m.name);
    if (refusal || !r || sourceToken === undefined) {
      mv.running = false;
      say(`${m.name} cannot undo the move of ${g} to ${to} yet: ${refusal?.reason ?? 'no HA lease'}`);
      return;
    }
    const back = haMoveBackWrite(r, mv.ticket, { ...how, sourceToken, decidedAt: store.revision() });
    const ok = call(m, () => store.txn(wanting(back, mv.wasRunning ? 'started' : r.value.want)));
    // The real roll-back discards the destination's copy before it starts the guest here.
    if (ok && notHa) setProc(g, to, undefined);
    if (!ok) {
      mv.running = false;
      say(`${m.name} cannot undo the move of ${g} to ${to} yet: the store refused`);
      return;
    }
    coldMoves.delete(g);
    say(`${m.name} undoes the move of ${g} to ${to}: ${g} is its own again (token ${sourceToken})`);
  }

  // ----- the daemon's other duties -----
  /**
   * The destination of cold moves whose source was lost to HA once the destination had the whole
   * guest, before the source started it there (guest-move.ts's `startForLostSources`, decision
   * 0108): it wants the guest started, compared on the record as the hand-over left it.
   */
  function startForLostSources(m: MemberState) {
    const mine = m.lrm.token(local(m));
    for (const [g, mv] of [...coldMoves].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (mv.ticket.to !== m.name || mv.phase !== 'sent' || !mv.wasRunning) continue;
      const beat = store.get<HeartbeatValue>(haKeys.heartbeat(mv.ticket.from));
      const r = guestRecord(g);
      // The real mover's check (ha-move.ts), on the heartbeat as the store holds it.
      if (!r || !sourceLostSinceSwitchOver(r.value, mv.ticket, beat?.createRevision)) continue;
      if (r.value.want === 'started' || mine !== mv.ticket.toToken) continue;
      const ok = call(m, () =>
        store.txn({
          compare: [
            { key: haKeys.guest(g), target: 'modRevision', op: '=', value: r.modRevision },
            { key: haKeys.heartbeat(m.name), target: 'createRevision', op: '=', value: mv.ticket.toToken },
          ],
          put: { key: haKeys.guest(g), value: { ...r.value, want: 'started' } },
        }),
      );
      if (ok) say(`${m.name} starts ${g}, moved here: its source ${mv.ticket.from} was lost before it did`);
    }
  }
  function daemonDuties(m: MemberState) {
    if (!daemonWorks(m)) return;
    startForLostSources(m);
    if (m.settleMoves) {
      m.settleMoves = false;
      resumeColdMoves(m);
      for (const r of guests())
        if (
          r.value.owner === m.name &&
          r.value.moving &&
          !moves.has(r.value.name) &&
          !coldMoves.has(r.value.name)
        )
          clearMove(m, r.value.name);
    } else if (now % RESUME_EVERY_MS === 0) resumeColdMoves(m);
    // The evacuation controller looks every 2 s (decision 0041).
    if (now % EVACUATION_EVERY_MS !== 0) return;
    const me = store.get<HaMemberRecord>(haKeys.member(m.name));
    if (!me?.value.evacuated || [...moves.values()].some((mv) => mv.from === m.name)) return;
    const mine = guests()
      .map((r) => r.value)
      .filter((g) => g.owner === m.name && !g.moving && g.error === undefined)
      .sort(byPriority);
    const next = mine[0];
    if (!next) return;
    const alive = new Map(
      store.list<HeartbeatValue>(haKeys.heartbeatPrefix).map((h) => [h.value.member, h.createRevision]),
    );
    const candidates = haCandidates(
      store.list<HaMemberRecord>(haKeys.memberPrefix).map((r) => r.value),
      alive,
      guests().map((r) => r.value),
    );
    try {
      const p = placer(candidates).place({
        model: next.model,
        memoryBytes: next.memoryBytes,
        cpus: next.cpus,
      });
      beginMove(next.name, p.member, 'evacuation');
    } catch (e) {
      say(`${m.name} cannot evacuate ${next.name}: ${asTrivisorError(e).message}`);
    }
  }

  // ----- one tick -----
  function crmView(m: MemberState): CrmView | undefined {
    return call(m, () => ({
      revision: store.revision(),
      lock: store.get<CrmLockValue>(haKeys.crm),
      heartbeats: store.list<HeartbeatValue>(haKeys.heartbeatPrefix),
      members: store.list<HaMemberRecord>(haKeys.memberPrefix).map((r) => r.value),
      guests: guests(),
    }));
  }

  function tick() {
    for (const s of scheduled.filter((s) => s.at === now && s.phase === 'before')) s.what(world);
    for (const key of store.expire(now))
      if (key.startsWith(haKeys.heartbeatPrefix))
        say(`store: the lease of ${key.slice(haKeys.heartbeatPrefix.length)} expired`);

    for (const m of ordered()) {
      if (m.host === 'down' && m.bootAt !== undefined && now >= m.bootAt) bootMember(m);
      if (m.host !== 'up') continue;
      if (watchdogFires(m)) continue;
      if (m.agent !== 'up') continue;
      for (const a of m.lrm.tick(local(m), runningHere(m.name))) act(m, a);
      if (!m.lrm.live(local(m))) continue;
      const view = call(m, () => guests());
      // As the agent does: a guest made HA that is not recorded yet is left running.
      const awaiting = new Set(unrecorded.keys());
      if (view)
        for (const a of m.lrm.manage(local(m), { guests: view, running: runningHere(m.name), awaiting }))
          act(m, a);
    }

    stepMoves();
    stepColdMoves();
    for (const m of ordered()) daemonDuties(m);

    const planned: Array<{ m: MemberState; d: CrmDecision }> = [];
    /** The elected CRM's restart marks of this pass (the loop writes them after its decisions). */
    let prebound: HaPrebind[] | undefined;
    if (now % timings.crmEveryMs === 0) {
      for (const m of ordered()) {
        const crmLease = m.crmLease;
        // A daemon whose member is fenced gives its election up at once, not a TTL later.
        if (crmLease !== undefined && m.host === 'up' && m.daemon === 'up' && !daemonWorks(m)) {
          m.crmLease = undefined;
          call(m, () => store.revoke(crmLease));
        }
        if (
          crmLease !== undefined &&
          daemonWorks(m) &&
          call(m, () => store.keepAlive(now, crmLease)) === false
        )
          m.crmLease = undefined;
        const token = daemonWorks(m) ? m.lrm.token(local(m)) : undefined;
        const view = token === undefined ? undefined : crmView(m);
        if (!view) {
          m.crm.step(local(m), undefined, emptyView);
          continue;
        }
        const { decisions, notes, prebinds = [] } = m.crm.step(local(m), token, view);
        for (const n of notes) say(`${m.name} ${n}`);
        for (const d of decisions) planned.push({ m, d });
        if (view.lock?.value.member === m.name && view.lock.value.token === token) {
          for (const d of bookkeeping(view)) planned.push({ m, d });
          prebound = prebinds;
        }
      }
    }
    for (const s of scheduled.filter((s) => s.at === now && s.phase === 'race')) s.what(world);
    for (const { m, d } of planned) {
      let lease = m.crmLease;
      if (d.write.put?.lease === 'own' && lease === undefined) {
        lease = call(m, () => store.grant(now, timings.leaseTtlMs));
        if (lease === undefined) continue;
      }
      const onLease = lease;
      const ok = call(m, () => store.txn(d.write, onLease));
      if (ok && d.write.put?.lease === 'own') m.crmLease = onLease;
      if (ok && d.write.put) unrecorded.delete((d.write.put.value as { name?: string }).name ?? '');
      if (ok) say(`${m.name} ${d.says}`);
      else if (ok === false) say(`${m.name} ${d.ifRefused}`);
      // A lost member's guest given away (its write compares that the lost token is gone).
      const given = d.write.put?.key.startsWith(haKeys.guestPrefix)
        ? (d.write.put.value as HaGuestRecord)
        : undefined;
      const fromLost = d.write.compare.some((c) => c.op === '!=' && c.key.startsWith(haKeys.heartbeatPrefix));
      if (ok && given && fromLost) {
        const mark = restartMarks.get(given.name);
        restartLog.push({
          guest: given.name,
          to: given.owner,
          markedForMs: mark?.to === given.owner ? now - mark.since : undefined,
        });
      }
    }
    if (prebound) {
      // The marks as the loop leaves them: made or moved for the waiting guests, gone for the rest.
      const wanted = new Map(prebound.map((p) => [p.guest, p.to]));
      for (const guest of restartMarks.keys()) if (!wanted.has(guest)) restartMarks.delete(guest);
      for (const [guest, to] of wanted)
        if (restartMarks.get(guest)?.to !== to) restartMarks.set(guest, { to, since: now });
    }
    check();
  }
  /**
   * The elected CRM's bookkeeping (ha-store.ts's `recordUpkeep`), for guests made HA: a record on
   * the member the spec names, under that member's token as read, compared on the election, the
   * record's absence and that token.
   */
  function bookkeeping(view: CrmView): CrmDecision[] {
    const lock = view.lock;
    if (!lock) return [];
    const out: CrmDecision[] = [];
    for (const g of [...unrecorded.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const token = view.heartbeats.find((h) => h.value.member === g.on)?.createRevision;
      if (token === undefined || view.guests.some((r) => r.value.name === g.name)) continue;
      out.push({
        write: {
          compare: [
            { key: haKeys.crm, target: 'createRevision', op: '=', value: lock.createRevision },
            { key: haKeys.guest(g.name), target: 'createRevision', op: '=', value: 0 },
            { key: haKeys.heartbeat(g.on), target: 'createRevision', op: '=', value: token },
          ],
          put: { key: haKeys.guest(g.name), value: recordOf(g, token) },
        },
        says: `crm: records ${g.name} on ${g.on} (token ${token})`,
        ifRefused: `crm: ${g.name} was recorded meanwhile`,
      });
    }
    return out;
  }
  const emptyView: CrmView = { revision: 0, lock: undefined, heartbeats: [], members: [], guests: [] };
  /** The HA restart marks (guest → where, since when), as the elected CRM's loop writes them. */
  const restartMarks = new Map<string, { to: string; since: number }>();
  const restartLog: Array<{ guest: string; to: string; markedForMs: number | undefined }> = [];

  function downMember(m: MemberState, bootAt?: number) {
    m.host = 'down';
    m.watchdog = undefined;
    m.lease = undefined;
    m.crmLease = undefined;
    if (bootAt === undefined) delete m.bootAt;
    else m.bootAt = bootAt;
  }
  function bootMember(m: MemberState) {
    const spec = { name: m.name, memoryGiB: m.memoryTotalBytes / GIB, cpus: m.cpus, clockRate: m.clockRate };
    const link = m.link;
    Object.assign(m, fresh(spec), { link, settleMoves: true });
    delete m.bootAt;
    say(`${m.name} boots`);
  }

  /** Resets the host if its watchdog ran out (checked at every look, and the moment a host thaws). */
  function watchdogFires(m: MemberState): boolean {
    if (m.host !== 'up' || m.watchdog === undefined || local(m) < m.watchdog) return false;
    const killed = killAll(m.name);
    say(`${m.name} watchdog reset the host${killed.length ? ` (killed ${killed.join(', ')})` : ''}`);
    downMember(m, now + rebootMs);
    return true;
  }

  /** A frozen host whose watchdog ran out: it is reset the moment it thaws, before anything runs. */
  const condemned = (m: MemberState) =>
    m.host === 'paused' && m.watchdog !== undefined && m.watchdog <= local(m);

  function check() {
    for (const [g, where] of procs) {
      const executing = [...where]
        .filter(([m, s]) => s === 'running' && member(m).host === 'up')
        .map(([m]) => m);
      if (executing.length > 1)
        throw new InvariantError(`${secs(now)}: ${g} runs on ${executing.join(' and ')}\n${log.join('\n')}`);
      // A frozen copy counts unless its host's watchdog ran out: that host is reset as it thaws.
      const revivable = [...where]
        .filter(([m, s]) => s === 'running' && member(m).host === 'paused' && !condemned(member(m)))
        .map(([m]) => `${m} (frozen)`);
      if (executing.length + revivable.length > 1)
        throw new InvariantError(
          `${secs(now)}: ${g} can run on ${[...executing, ...revivable].join(' and ')}\n${log.join('\n')}`,
        );
    }
  }

  const world: SimWorld = {
    now: () => now,
    kill(name) {
      const m = member(name);
      killAll(name);
      downMember(m);
      say(`world: ${name} dies`);
    },
    boot(name) {
      const m = member(name);
      if (m.host !== 'down') return;
      bootMember(m);
    },
    killDaemon(name) {
      member(name).daemon = 'down';
      member(name).crmLease = undefined;
      say(`world: the daemon of ${name} is killed`);
    },
    startDaemon(name) {
      const m = member(name);
      m.daemon = 'up';
      m.settleMoves = true;
      say(`world: the daemon of ${name} starts`);
    },
    pauseHost(name) {
      member(name).host = 'paused';
      say(`world: ${name} freezes`);
    },
    resumeHost(name) {
      const m = member(name);
      if (m.host !== 'paused') return;
      m.host = 'up';
      say(`world: ${name} thaws`);
      // The kernel's watchdog timer is overdue: it fires before user space runs again.
      watchdogFires(m);
    },
    pauseAgent(name) {
      member(name).agent = 'paused';
      say(`world: the HA agent of ${name} stops`);
    },
    resumeAgent(name) {
      member(name).agent = 'up';
      say(`world: the HA agent of ${name} continues`);
    },
    link(name, state) {
      member(name).link = state;
      say(`world: the link of ${name} is ${state}`);
    },
    storeDown() {
      store.setUp(false, now);
      say('world: the store lost its quorum');
    },
    storeUp() {
      store.setUp(true, now);
      say('world: the store is back');
    },
    move(g, to) {
      beginMove(g, to, 'migration');
    },
    coldMove(g, to) {
      beginMove(g, to, 'migration', true);
    },
    evacuate(name) {
      const r = store.get<HaMemberRecord>(haKeys.member(name));
      if (r) store.put(haKeys.member(name), { ...r.value, evacuated: true });
      say(`world: ${name} is evacuated`);
    },
    fence(name) {
      const m = member(name);
      say(`world: the HA agent of ${name} is asked to fence`);
      if (agentWorks(m)) for (const a of m.lrm.fenceNow(runningHere(name))) act(m, a);
    },
    revokeFromOutside(name) {
      const lease = member(name).lease;
      if (lease !== undefined) store.revoke(lease);
      say(`world: the lease of ${name} is revoked by someone else`);
    },
    dropElection(name) {
      const lease = member(name).crmLease;
      if (lease !== undefined) store.revoke(lease);
      say(`world: the election lease of ${name} runs out`);
    },
    failStarts(name, g, count) {
      member(name).failStarts.set(g, count);
    },
    crash(g) {
      const where = [...(procs.get(g) ?? [])].filter(([, s]) => s === 'running').map(([m]) => m);
      for (const m of where) setProc(g, m, undefined);
      say(`world: ${g} crashes`);
    },
    edit(g, patch) {
      const r = guestRecord(g);
      if (r) store.put(haKeys.guest(g), { ...r.value, ...patch });
      say(`world: ${g} is edited (${Object.keys(patch).join(', ')})`);
    },
    remove(g) {
      store.delete(haKeys.guest(g));
      say(`world: ${g} is deleted`);
    },
  };

  // The cluster's start: leases first, then the guests on their members' tokens.
  let started = false;
  function begin() {
    started = true;
    for (const m of ordered()) for (const a of m.lrm.tick(local(m), new Set())) act(m, a);
    for (const g of options.guests ?? []) {
      if (g.recorded === false) {
        unrecorded.set(g.name, g);
        if ((g.want ?? 'started') === 'started') setProc(g.name, g.on, 'running');
      } else store.put(haKeys.guest(g.name), recordOf(g, tokenOf(g.on) ?? 0));
    }
  }
  function recordOf(g: SimGuest, token: number): HaGuestRecord {
    return {
      name: g.name,
      model: g.model ?? 'ct',
      memoryBytes: (g.memoryGiB ?? 1) * GIB,
      cpus: 1,
      ha: g.ha ?? true,
      priority: g.priority ?? 0,
      want: g.want ?? 'started',
      owner: g.on,
      token,
      decidedAt: store.revision(),
      failures: 0,
      failedOn: [],
    };
  }

  function where(): string {
    const byMember = ordered().map((m) => {
      const state = m.host !== 'up' ? ` ${m.host}` : '';
      return `${m.name}${state}[${procsOn(m.name)
        .map((g) => (procs.get(g)?.get(m.name) === 'incoming' ? `${g}(incoming)` : g))
        .join(' ')}]`;
    });
    const errors = guests()
      .filter((r) => r.value.error !== undefined)
      .map((r) => ` ${r.value.name}: error`);
    return `world: ${byMember.join(' ')}${errors.join('')}`;
  }

  return {
    world,
    log,
    restarts: () => [...restartLog],
    at(atMs, what, phase = 'before') {
      if (atMs % tickMs !== 0) throw new Error(`${atMs} ms is not on a tick of ${tickMs} ms`);
      scheduled.push({ at: atMs, phase, what });
    },
    run(untilMs) {
      if (!started) begin();
      for (; now <= untilMs; now += tickMs) {
        if (now === quietUntil) log.push(`${secs(now)} ${where()}`);
        tick();
      }
      log.push(`${secs(untilMs)} ${where()}`);
      return log;
    },
    runningOn(g) {
      return [...(procs.get(g) ?? [])]
        .filter(([m, s]) => s === 'running' && member(m).host === 'up')
        .map(([m]) => m)
        .sort();
    },
    record: (g) => guestRecord(g)?.value,
    coldMovesLeft: () => [...coldMoves.keys()].sort(),
  };
}
