import { invalidArgument } from '../core/errors.ts';
import {
  type ClusterState,
  checkClusterState,
  DEFAULT_MOVE_COSTS,
  type GuestState,
  LoadBook,
  type MemberState,
  type MoveCosts,
  type MoveReason,
  type MoveRecord,
  priceMove,
  round,
  stdDev,
} from './cluster-state.ts';

/**
 * The rebalancer (issue 14 §2, decision 0051), DRS-like: it balances the members' measured
 * demand, a percentile of their summed load over a recent window, never the guests' configured
 * limits. Each cycle it moves, one at a time, the guest whose move lowers the imbalance (the
 * standard deviation of the members' loads) or relieves an overloaded member the most for its
 * cost, while the benefit beats the cost; it stops below the target imbalance.
 */

/** The rebalancer's knobs (the cluster's `cluster.rebalance.*` keys, once wired). */
export interface RebalanceOptions {
  /** How often it runs. */
  intervalMs: number;
  /** The window of measured demand it balances. */
  windowMs: number;
  /** The percentile of each member's summed load over the window that counts as its load. */
  percentile: number;
  /** Below this standard deviation of the members' loads it moves nothing (but overloads). */
  targetImbalance: number;
  /** 1: only relieve overloaded members … 5: chase small gains with more moves per cycle. */
  aggressiveness: 1 | 2 | 3 | 4 | 5;
  /** A guest that moved does not move again for this long. */
  cooldownMs: number;
  /** No member is loaded above this by a move; a member above it is overloaded. */
  ceiling: number;
  costs: MoveCosts;
}

export const DEFAULT_REBALANCE: RebalanceOptions = {
  intervalMs: 5 * 60_000,
  windowMs: 60 * 60_000,
  percentile: 95,
  targetImbalance: 0.1,
  aggressiveness: 3,
  cooldownMs: 60 * 60_000,
  ceiling: 0.985,
  costs: DEFAULT_MOVE_COSTS,
};

/**
 * Per aggressiveness level: the share of members that may send a guest per cycle, the least
 * imbalance a balancing move must remove, and how many times its cost its benefit must be.
 */
const LEVELS = {
  1: { movesPerMember: 0.25, minGain: Number.POSITIVE_INFINITY, costFactor: 4 },
  2: { movesPerMember: 0.5, minGain: 0.02, costFactor: 2 },
  3: { movesPerMember: 1, minGain: 0.01, costFactor: 1 },
  4: { movesPerMember: 2, minGain: 0.005, costFactor: 0.5 },
  5: { movesPerMember: 4, minGain: 0.001, costFactor: 0.25 },
} as const;

/** How many of the least loaded members a cycle considers as destinations. */
const DESTINATIONS = 16;

/** A cycle's plan: the moves in order, each explained, and what narrowed the choice. */
export interface RebalancePlan {
  imbalanceBefore: number;
  imbalanceAfter: number;
  moves: MoveRecord[];
  notes: string[];
}

/** Checks the knobs: one line for the first wrong one. */
export function checkRebalanceOptions(o: RebalanceOptions): void {
  if (!(o.intervalMs > 0)) throw invalidArgument('The rebalance interval must be above 0');
  if (!(o.windowMs > 0)) throw invalidArgument('The rebalance window must be above 0');
  if (!(o.percentile > 0 && o.percentile <= 100)) {
    throw invalidArgument(`The rebalance percentile ${o.percentile} must be in (0, 100]`);
  }
  if (!(o.targetImbalance >= 0 && o.targetImbalance < 1)) {
    throw invalidArgument(`The target imbalance ${o.targetImbalance} must be in [0, 1)`);
  }
  if (![1, 2, 3, 4, 5].includes(o.aggressiveness)) {
    throw invalidArgument(`The aggressiveness ${o.aggressiveness} must be 1, 2, 3, 4 or 5`);
  }
  if (!(o.cooldownMs >= 0)) throw invalidArgument('The rebalance cooldown must be ≥ 0');
  if (!(o.ceiling > 0 && o.ceiling <= 1)) throw invalidArgument(`The ceiling ${o.ceiling} must be in (0, 1]`);
}

/** One cycle of the rebalancer over a state: checked first, then planned. */
export function planRebalance(state: ClusterState, options: Partial<RebalanceOptions> = {}): RebalancePlan {
  const o = { ...DEFAULT_REBALANCE, ...options };
  checkRebalanceOptions(o);
  checkClusterState(state);
  const book = new LoadBook(state, {
    windowSamples: Math.round(o.windowMs / state.intervalMs),
    percentile: o.percentile,
  });
  return rebalanceBook(book, state.nowMs, o, new Set());
}

/**
 * The rebalancer over a load book the caller may have changed already (the power manager's
 * evacuations); `closed` members neither send nor receive (being evacuated, or booting).
 */
export function rebalanceBook(
  book: LoadBook,
  nowMs: number,
  o: RebalanceOptions,
  closed: ReadonlySet<string>,
): RebalancePlan {
  const level = LEVELS[o.aggressiveness];
  const active = [...book.members.values()]
    .filter((m) => m.power === 'on' && !closed.has(m.id))
    .sort((a, b) => (a.id < b.id ? -1 : 1));
  const loads = new Map(active.map((m) => [m.id, book.load(m.id)]));
  const n = active.length;
  let sum = 0;
  let sumSq = 0;
  for (const l of loads.values()) {
    sum += l;
    sumSq += l * l;
  }
  const sd = (s: number, s2: number) => (n === 0 ? 0 : Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)));
  const imbalanceBefore = stdDev([...loads.values()]);
  const notes: string[] = [];
  const moves: MoveRecord[] = [];
  const maxMoves = Math.max(1, Math.ceil(n * level.movesPerMember));
  const horizonS = Math.max(o.cooldownMs, o.intervalMs) / 1000;
  const moved = new Set<string>();

  while (moves.length < maxMoves && n >= 2) {
    const imbalance = sd(sum, sumSq);
    const mean = sum / n;
    const overloaded = active.filter((m) => (loads.get(m.id) as number) > o.ceiling);
    if (imbalance <= o.targetImbalance && overloaded.length === 0) break;
    // Sources: the overloaded first, then (when balancing is allowed) the most loaded above the mean.
    const sources = active
      .filter((m) => {
        const l = loads.get(m.id) as number;
        return l > o.ceiling || (imbalance > o.targetImbalance && Number.isFinite(level.minGain) && l > mean);
      })
      .sort((a, b) => (loads.get(b.id) as number) - (loads.get(a.id) as number) || (a.id < b.id ? -1 : 1))
      .slice(0, 4);
    type Best = {
      g: GuestState;
      from: MemberState;
      to: MemberState;
      net: number;
      benefit: number;
      cost: number;
      price: Extract<ReturnType<typeof priceMove>, { ok: true }>;
      lsAfter: number;
      ldAfter: number;
      imbAfter: number;
      reason: MoveReason;
      constraints: string[];
    };
    let best: Best | undefined;
    // Destinations: the least loaded members (moving load from the most to the least loaded is
    // what lowers the spread), a bounded number so that a cycle stays cheap with thousands.
    const targets = [...active]
      .sort((a, b) => (loads.get(a.id) as number) - (loads.get(b.id) as number) || (a.id < b.id ? -1 : 1))
      .slice(0, DESTINATIONS);
    for (const from of sources) {
      const ls = loads.get(from.id) as number;
      const constraints: string[] = [];
      let inCooldown = 0;
      for (const id of book.guestsOn(from.id)) {
        const g = book.guests.get(id) as GuestState;
        if (moved.has(id)) continue;
        if (g.lastMove && nowMs - g.lastMove.atMs < o.cooldownMs) {
          inCooldown++;
          continue;
        }
        const lsAfter = book.load(from.id, { guest: id, sign: -1 });
        for (const to of targets) {
          if (to.id === from.id) continue;
          const ld = loads.get(to.id) as number;
          if (ld >= ls) continue;
          const price = priceMove(g, from, to, o.costs);
          if (!price.ok) {
            if (!constraints.includes(price.why)) constraints.push(price.why);
            break;
          }
          // Never back to the member it last left: no A→B→A, whatever the reason.
          if (g.lastMove?.from === to.id) {
            const why = `${id} is not sent back to ${to.id}, which it left last`;
            if (!constraints.includes(why)) constraints.push(why);
            continue;
          }
          const ldAfter = book.load(to.id, { guest: id, sign: 1 });
          if (ldAfter > o.ceiling) continue;
          // The pair must end less apart than it was: never trade one hot member for another.
          if (ldAfter >= ls) continue;
          const s2 = sum - ls - ld + lsAfter + ldAfter;
          const q2 = sumSq - ls * ls - ld * ld + lsAfter * lsAfter + ldAfter * ldAfter;
          const imbAfter = sd(s2, q2);
          const gain = imbalance - imbAfter;
          const relief =
            Math.max(0, ls - o.ceiling) +
            Math.max(0, ld - o.ceiling) -
            Math.max(0, lsAfter - o.ceiling) -
            Math.max(0, ldAfter - o.ceiling);
          if (!(relief > 0) && !(gain >= level.minGain)) continue;
          // Benefit: member-seconds of imbalance removed over the horizon, plus the overload
          // removed, which every guest of the member feels.
          const guestsHit = book.onMember.get(from.id)?.size ?? 1;
          const benefit = horizonS * (n * Math.max(0, gain) + guestsHit * Math.max(0, relief));
          const cost = price.costSeconds;
          const net = benefit - cost * level.costFactor;
          if (net <= 0) continue;
          if (
            !best ||
            net > best.net + 1e-9 ||
            (Math.abs(net - best.net) <= 1e-9 && `${id}>${to.id}` < `${best.g.id}>${best.to.id}`)
          ) {
            best = {
              g,
              from,
              to,
              net,
              benefit,
              cost,
              price,
              lsAfter,
              ldAfter,
              imbAfter,
              reason: relief > 0 ? 'overload' : 'balance',
              constraints,
            };
          }
        }
      }
      if (inCooldown > 0) constraints.push(`${inCooldown} guest(s) of ${from.id} in their cooldown`);
      for (const c of constraints) if (!notes.includes(c)) notes.push(c);
    }
    if (!best) break;
    const b = best;
    book.remove(b.g.id, b.from.id);
    book.place(b.g.id, b.to.id);
    moved.add(b.g.id);
    const ls = loads.get(b.from.id) as number;
    const ld = loads.get(b.to.id) as number;
    sum += b.lsAfter + b.ldAfter - ls - ld;
    sumSq += b.lsAfter ** 2 + b.ldAfter ** 2 - ls * ls - ld * ld;
    loads.set(b.from.id, b.lsAfter);
    loads.set(b.to.id, b.ldAfter);
    moves.push(
      moveRecord({
        atMs: nowMs,
        guest: b.g,
        from: b.from.id,
        to: b.to.id,
        reason: b.reason,
        price: b.price,
        imbalanceBefore: sd(
          sum - b.lsAfter - b.ldAfter + ls + ld,
          sumSq - b.lsAfter ** 2 - b.ldAfter ** 2 + ls * ls + ld * ld,
        ),
        imbalanceAfter: b.imbAfter,
        loadBefore: { from: ls, to: ld },
        loadAfter: { from: b.lsAfter, to: b.ldAfter },
        benefitSeconds: b.benefit,
        constraints: [`ceiling ${pct(o.ceiling)}`, `cooldown ${o.cooldownMs / 60_000} min`, ...b.constraints],
      }),
    );
  }
  return { imbalanceBefore, imbalanceAfter: sd(sum, sumSq), moves, notes };
}

const pct = (v: number) => `${Math.round(v * 100)}%`;

/** A move's record with its one-line summary. */
export function moveRecord(x: {
  atMs: number;
  guest: GuestState;
  from: string;
  to: string;
  reason: MoveReason;
  price: {
    how: 'live' | 'cold';
    copySeconds: number;
    downtimeMs: number;
    costSeconds: number;
    bandwidth?: string;
  };
  imbalanceBefore: number;
  imbalanceAfter: number;
  loadBefore: { from: number; to: number };
  loadAfter: { from: number; to: number };
  benefitSeconds: number;
  constraints: string[];
}): MoveRecord {
  const summary =
    `${x.reason}: ${x.guest.id} (${x.guest.model}) ${x.price.how} ${x.from} → ${x.to}; ` +
    `${x.from} ${pct(x.loadBefore.from)} → ${pct(x.loadAfter.from)}, ${x.to} ${pct(x.loadBefore.to)} → ${pct(x.loadAfter.to)}; ` +
    `imbalance ${round(x.imbalanceBefore, 3)} → ${round(x.imbalanceAfter, 3)}; ` +
    `benefit ${round(x.benefitSeconds, 1)} s against cost ${round(x.price.costSeconds, 2)} s ` +
    `(copy ${round(x.price.copySeconds, 2)} s${x.price.bandwidth ? ` at ${x.price.bandwidth}` : ''}, downtime ${Math.round(x.price.downtimeMs)} ms)`;
  return {
    atMs: x.atMs,
    guest: x.guest.id,
    model: x.guest.model,
    from: x.from,
    to: x.to,
    how: x.price.how,
    reason: x.reason,
    imbalanceBefore: round(x.imbalanceBefore, 4),
    imbalanceAfter: round(x.imbalanceAfter, 4),
    loadBefore: { from: round(x.loadBefore.from, 4), to: round(x.loadBefore.to, 4) },
    loadAfter: { from: round(x.loadAfter.from, 4), to: round(x.loadAfter.to, 4) },
    benefitSeconds: round(x.benefitSeconds, 2),
    costSeconds: round(x.price.costSeconds, 3),
    copySeconds: round(x.price.copySeconds, 3),
    downtimeMs: Math.round(x.price.downtimeMs),
    constraints: x.constraints,
    summary,
  };
}
