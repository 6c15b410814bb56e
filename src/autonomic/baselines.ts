import {
  type ClusterState,
  DEFAULT_MOVE_COSTS,
  type GuestState,
  type MemberState,
  type MoveReason,
  type MoveRecord,
  priceMove,
} from './cluster-state.ts';
import type { ClusterPolicy, PolicyDecision } from './controller.ts';
import { usable } from './power-manager.ts';
import { moveRecord } from './rebalancer.ts';

/**
 * The baselines of issue 14 §6, reimplemented from their published descriptions so that they
 * run on the same simulator, traces and clock as Trivisor's policy (decision 0051 says where
 * each departs from its original):
 * - VMware DPM: hosts kept between 45% and 81% (63 ± 18), demand as mean + 2σ over 5 minutes for
 *   power-on and hot hosts, over 40 minutes for power-off;
 * - Beloglazov & Buyya's LR-MMT: local regression over a host's last 10 samples predicts its
 *   utilization after the longest migration; × 1.2 ≥ 100% is overloaded; the guest with the least
 *   memory (minimum migration time) leaves first; power-aware best fit decreasing places them;
 *   then the least-utilized hosts are emptied when all their guests fit elsewhere;
 * - Incus's rebalancer: every interval, when the most and least busy members' load by configured
 *   limits differ by more than `cluster.rebalance.threshold` (20%), one VM (`batch` 1) moves from
 *   the first to the second, none again within `cluster.rebalance.cooldown` (6 h); no power
 *   management, containers never move.
 * Each reads only the state it is given: no baseline sees the future either.
 */

/** Configured limits of a guest, for Incus (it weighs guests by them, not by use). */
export interface ConfiguredLimits {
  cpu: number;
  memoryBytes?: number;
}

/** Reads a member's guests and their demand: a tiny book shared by the baselines. */
class View {
  readonly members = new Map<string, MemberState>();
  readonly guests = new Map<string, GuestState>();
  readonly on = new Map<string, Set<string>>();
  readonly withMemory: boolean;
  readonly state: ClusterState;
  constructor(state: ClusterState) {
    this.state = state;
    for (const m of state.members) {
      this.members.set(m.id, m);
      this.on.set(m.id, new Set());
    }
    for (const g of state.guests) {
      this.guests.set(g.id, g);
      this.on.get(g.member)?.add(g.id);
    }
    this.withMemory = state.guests.some((g) => g.memoryBytes) && state.members.every((m) => m.memoryBytes);
  }
  guestsOn(member: string): string[] {
    return [...(this.on.get(member) ?? [])].sort();
  }
  shift(id: string, from: string, to: string): void {
    this.on.get(from)?.delete(id);
    this.on.get(to)?.add(id);
  }
  powered(): MemberState[] {
    return this.state.members.filter((m) => m.power === 'on').sort((a, b) => (a.id < b.id ? -1 : 1));
  }
}

/** The last `k` samples of a series. */
function tail(s: ArrayLike<number>, k: number): number[] {
  const out: number[] = [];
  for (let i = Math.max(0, s.length - k); i < s.length; i++) out.push(s[i] as number);
  return out;
}

const meanPlus2Sd = (xs: number[]) => {
  if (xs.length === 0) return 0;
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length);
  return mean + 2 * sd;
};

const latest = (s: ArrayLike<number> | undefined) => (s && s.length > 0 ? (s[s.length - 1] as number) : 0);

function record(
  state: ClusterState,
  g: GuestState,
  from: MemberState,
  to: MemberState,
  reason: MoveReason,
  why: string,
): MoveRecord | undefined {
  const price = priceMove(g, from, to, DEFAULT_MOVE_COSTS);
  if (!price.ok) return undefined;
  return moveRecord({
    atMs: state.nowMs,
    guest: g,
    from: from.id,
    to: to.id,
    reason,
    price,
    imbalanceBefore: 0,
    imbalanceAfter: 0,
    loadBefore: { from: 0, to: 0 },
    loadAfter: { from: 0, to: 0 },
    benefitSeconds: 0,
    constraints: [why],
  });
}

const empty = (): PolicyDecision => ({ evacuations: [], moves: [], powerOn: [], notes: [] });

/** VMware DPM with DRS's hot-host relief, its 45–81% band and 5/40-minute windows. */
export function dpmBaseline(
  options: { low?: number; high?: number; target?: number; shortMs?: number; longMs?: number } = {},
): ClusterPolicy {
  const low = options.low ?? 0.45;
  const high = options.high ?? 0.81;
  const target = options.target ?? 0.63;
  const shortMs = options.shortMs ?? 5 * 60_000;
  const longMs = options.longMs ?? 40 * 60_000;
  return {
    name: 'dpm',
    intervalMs: 5 * 60_000,
    historyMs: longMs,
    decide(state) {
      const d = empty();
      const v = new View(state);
      const k = (ms: number) => Math.max(1, Math.round(ms / state.intervalMs));
      const demand = (g: GuestState, ms: number) => ({
        cpu: meanPlus2Sd(tail(g.cpu, k(ms))),
        mem: g.memoryBytes ? meanPlus2Sd(tail(g.memoryBytes, k(ms))) : 0,
      });
      const d5 = new Map([...v.guests.values()].map((g) => [g.id, demand(g, shortMs)]));
      const d40 = new Map([...v.guests.values()].map((g) => [g.id, demand(g, longMs)]));
      const load = (
        m: MemberState,
        per: Map<string, { cpu: number; mem: number }>,
        plus?: string,
        minus?: string,
      ) => {
        let c = 0;
        let b = 0;
        for (const id of v.guestsOn(m.id)) {
          if (id === minus) continue;
          const x = per.get(id) as { cpu: number; mem: number };
          c += x.cpu;
          b += x.mem;
        }
        if (plus) {
          const x = per.get(plus) as { cpu: number; mem: number };
          c += x.cpu;
          b += x.mem;
        }
        return Math.max(c / m.cpuCapacity, v.withMemory && m.memoryBytes ? b / m.memoryBytes : 0);
      };
      const on = v.powered();
      // Hot hosts: move guests off (largest short-window demand first) to the least loaded host
      // that stays within the target; power a standby host on when none can take them.
      let needPower = false;
      for (const m of on) {
        let guard = 0;
        while (load(m, d5) > high && guard++ < 50) {
          let done = false;
          const ids = v.guestsOn(m.id).sort((a, b) => (d5.get(b)?.cpu ?? 0) - (d5.get(a)?.cpu ?? 0));
          for (const id of ids) {
            const dest = on
              .filter((x) => x.id !== m.id && load(x, d5, id) <= target)
              .sort((a, b) => load(a, d5) - load(b, d5) || (a.id < b.id ? -1 : 1))[0];
            if (!dest) continue;
            const rec = record(
              state,
              v.guests.get(id) as GuestState,
              m,
              dest,
              'overload',
              'DPM: host above 81%',
            );
            if (!rec) continue;
            d.moves.push(rec);
            v.shift(id, m.id, dest.id);
            done = true;
            break;
          }
          if (!done) {
            needPower = true;
            break;
          }
        }
      }
      const booting = state.members.some((m) => m.power === 'booting');
      if (needPower && !booting) {
        const standby = state.members
          .filter((m) => m.power === 'off')
          .sort((a, b) => (a.id < b.id ? -1 : 1))[0];
        if (standby) {
          d.powerOn.push({
            member: standby.id,
            readyAtMs: state.nowMs + standby.bootDelayMs,
            reason: 'DPM: a host above 81% and no room within the target',
          });
        }
      }
      if (needPower || booting) return d;
      // Power-off: hosts below 45% over 40 minutes whose guests fit on the others within 81%.
      const received = new Set<string>();
      const gone = new Set<string>();
      const cold = on
        .filter((m) => load(m, d40) < low)
        .sort((a, b) => load(a, d40) - load(b, d40) || (a.id < b.id ? -1 : 1));
      for (const m of cold) {
        if (received.has(m.id)) continue;
        const rest = on.filter((x) => x.id !== m.id && !gone.has(x.id));
        const planned: Array<{ id: string; to: MemberState }> = [];
        let ok = true;
        for (const id of v.guestsOn(m.id).sort((a, b) => (d40.get(b)?.cpu ?? 0) - (d40.get(a)?.cpu ?? 0))) {
          const dest = rest
            .filter((x) => load(x, d40, id) <= high)
            .sort((a, b) => load(a, d40) - load(b, d40) || (a.id < b.id ? -1 : 1))[0];
          if (!dest) {
            ok = false;
            break;
          }
          v.shift(id, m.id, dest.id);
          planned.push({ id, to: dest });
        }
        if (!ok) {
          for (const p of planned.reverse()) v.shift(p.id, p.to.id, m.id);
          continue;
        }
        const moves = planned
          .map((p) =>
            record(state, v.guests.get(p.id) as GuestState, m, p.to, 'evacuation', 'DPM: host below 45%'),
          )
          .filter((x): x is MoveRecord => x !== undefined);
        if (moves.length !== planned.length) {
          for (const p of planned.reverse()) v.shift(p.id, p.to.id, m.id);
          continue;
        }
        for (const p of planned) received.add(p.to.id);
        gone.add(m.id);
        d.evacuations.push({ member: m.id, moves, reason: 'DPM: below 45% over 40 min' });
      }
      return d;
    },
  };
}

/**
 * SPECpower of the HP ProLiant ML110 G5 (watts at 0, 10 … 100% load), the model CloudSim's
 * PlanetLab experiments use; PABFD picks the host whose power rises least.
 */
const G5_WATTS = [93.7, 97, 101, 105, 110, 116, 121, 125, 129, 133, 135];
function watts(u: number): number {
  const x = Math.max(0, Math.min(1, u)) * 10;
  const i = Math.min(9, Math.floor(x));
  return (G5_WATTS[i] as number) + ((G5_WATTS[i + 1] as number) - (G5_WATTS[i] as number)) * (x - i);
}

/**
 * Local regression (loess with tricube weights, the newest sample weighing most) over `y`,
 * evaluated `ahead` samples past the last.
 */
export function loessPredict(y: number[], ahead: number): number {
  const n = y.length;
  let sw = 0;
  let sx = 0;
  let sy = 0;
  let sxx = 0;
  let sxy = 0;
  for (let i = 0; i < n; i++) {
    const dist = (n - 1 - i) / n;
    const w = (1 - dist ** 3) ** 3;
    const yi = y[i] as number;
    sw += w;
    sx += w * i;
    sy += w * yi;
    sxx += w * i * i;
    sxy += w * i * yi;
  }
  const den = sw * sxx - sx * sx;
  const b = den === 0 ? 0 : (sw * sxy - sx * sy) / den;
  const a = (sy - b * sx) / sw;
  return a + b * (n - 1 + ahead);
}

/**
 * Beloglazov & Buyya's LR-MMT with safety parameter 1.2 (CCPE 2012). `keepFailureRoom` is a
 * second baseline, not the paper's: the same policy made to keep room for one member's failure as
 * issue 14 §3 asks of ours (the cluster's demand now within what is on or booting less the
 * largest member): it powers members on until it fits and empties none that would break it.
 */
export function lrMmtBaseline(
  options: { safety?: number; length?: number; fallback?: number; keepFailureRoom?: boolean } = {},
): ClusterPolicy {
  const safety = options.safety ?? 1.2;
  const length = options.length ?? 10;
  const fallback = options.fallback ?? 0.7;
  const keepFailureRoom = options.keepFailureRoom ?? false;
  return {
    name: keepFailureRoom ? 'lr-mmt-failure-room' : 'lr-mmt',
    intervalMs: 5 * 60_000,
    historyMs: length * 5 * 60_000,
    decide(state) {
      const d = empty();
      const v = new View(state);
      const hist = Math.min(length, state.guests[0]?.cpu.length ?? 0);
      const history = (m: MemberState, plus?: string, minus?: string): number[] => {
        const h = new Array<number>(hist).fill(0);
        const ids = v.guestsOn(m.id).filter((id) => id !== minus);
        if (plus) ids.push(plus);
        for (const id of ids) {
          const g = v.guests.get(id) as GuestState;
          const off = g.cpu.length - hist;
          for (let t = 0; t < hist; t++) h[t] = (h[t] as number) + (g.cpu[off + t] as number) / m.cpuCapacity;
        }
        return h;
      };
      const memOk = (m: MemberState, plus: string) => {
        if (!v.withMemory || !m.memoryBytes) return true;
        let b = latest(v.guests.get(plus)?.memoryBytes);
        for (const id of v.guestsOn(m.id)) b += latest(v.guests.get(id)?.memoryBytes);
        return b <= m.memoryBytes;
      };
      // The longest migration of the host's guests, in intervals, is how far ahead LR predicts.
      const ahead = (m: MemberState) => {
        let s = 0;
        for (const id of v.guestsOn(m.id)) {
          const g = v.guests.get(id) as GuestState;
          const p = priceMove(g, m, m, DEFAULT_MOVE_COSTS);
          if (p.ok) s = Math.max(s, p.copySeconds);
        }
        return Math.ceil((s * 1000) / state.intervalMs);
      };
      const overloaded = (m: MemberState, plus?: string, minus?: string) => {
        const h = history(m, plus, minus);
        if (hist < length) return (h[h.length - 1] ?? 0) > fallback;
        return safety * loessPredict(h, ahead(m)) >= 1;
      };
      const utilNow = (m: MemberState, plus?: string) => {
        let c = plus ? latest(v.guests.get(plus)?.cpu) : 0;
        for (const id of v.guestsOn(m.id)) c += latest(v.guests.get(id)?.cpu);
        return c / m.cpuCapacity;
      };
      const on = v.powered();
      const excluded = new Set<string>();
      // PABFD: the host not overloaded after the allocation whose power rises least.
      const find = (id: string, skip: Set<string>): MemberState | undefined => {
        let best: MemberState | undefined;
        let bestRise = Number.POSITIVE_INFINITY;
        for (const m of on) {
          if (skip.has(m.id)) continue;
          const after = utilNow(m, id);
          if (after > 1 || !memOk(m, id)) continue;
          if (overloaded(m, id)) continue;
          const rise = watts(after) - watts(utilNow(m));
          if (rise < bestRise) {
            bestRise = rise;
            best = m;
          }
        }
        return best;
      };
      // Overloaded hosts: minimum-migration-time guests leave until the host is predicted fine.
      const leaving: Array<{ id: string; from: MemberState }> = [];
      for (const m of on) {
        if (!overloaded(m)) continue;
        excluded.add(m.id);
        let guard = 0;
        while (overloaded(m) && guard++ < 100) {
          const ids = v.guestsOn(m.id);
          if (ids.length === 0) break;
          const id = ids.sort((a, b) => bytes(v, a) - bytes(v, b) || (a < b ? -1 : 1))[0] as string;
          v.on.get(m.id)?.delete(id);
          leaving.push({ id, from: m });
        }
      }
      leaving.sort(
        (a, b) => latest(v.guests.get(b.id)?.cpu) - latest(v.guests.get(a.id)?.cpu) || (a.id < b.id ? -1 : 1),
      );
      let needPower = false;
      for (const { id, from } of leaving) {
        const to = find(id, excluded);
        if (!to) {
          v.on.get(from.id)?.add(id);
          needPower = true;
          continue;
        }
        v.on.get(to.id)?.add(id);
        const rec = record(
          state,
          v.guests.get(id) as GuestState,
          from,
          to,
          'overload',
          'LR-MMT: predicted overload',
        );
        if (rec) d.moves.push(rec);
        else {
          v.on.get(to.id)?.delete(id);
          v.on.get(from.id)?.add(id);
        }
      }
      if (needPower && !state.members.some((m) => m.power === 'booting')) {
        // CloudSim switches a sleeping host on at once; here it boots like everyone else's.
        const standby = state.members
          .filter((m) => m.power === 'off')
          .sort((a, b) => (a.id < b.id ? -1 : 1))[0];
        if (standby) {
          d.powerOn.push({
            member: standby.id,
            readyAtMs: state.nowMs + standby.bootDelayMs,
            reason: 'LR-MMT: no host can take a guest of an overloaded one',
          });
        }
      }
      // The failure-room variant: the demand now must fit in what is on or booting less the largest.
      let demandCpu = 0;
      let demandMem = 0;
      for (const g of state.guests) {
        demandCpu += latest(g.cpu);
        demandMem += latest(g.memoryBytes);
      }
      const roomFor = (members: MemberState[]) => {
        const { cpu, mem } = usable(members, true);
        return demandCpu <= cpu && (!v.withMemory || demandMem <= mem);
      };
      if (keepFailureRoom) {
        const coming = state.members.filter((m) => m.power !== 'off');
        for (const p of d.powerOn) coming.push(v.members.get(p.member) as MemberState);
        const standby = state.members
          .filter((m) => m.power === 'off' && !d.powerOn.some((p) => p.member === m.id))
          .sort((a, b) => (a.id < b.id ? -1 : 1));
        while (!roomFor(coming) && standby.length > 0) {
          const m = standby.shift() as MemberState;
          coming.push(m);
          d.powerOn.push({
            member: m.id,
            readyAtMs: state.nowMs + m.bootDelayMs,
            reason: "LR-MMT (failure room): the demand now exceeds what is on less one member's failure",
          });
        }
      }
      // Under-utilized hosts, least utilized first, emptied when every guest fits elsewhere.
      const targets = new Set<string>(excluded);
      for (const rec of d.moves) targets.add(rec.to);
      const gone = new Set<string>();
      const byUtil = on
        .filter((m) => !targets.has(m.id))
        .sort((a, b) => utilNow(a) - utilNow(b) || (a.id < b.id ? -1 : 1));
      for (const m of byUtil) {
        if (targets.has(m.id)) continue;
        if (keepFailureRoom) {
          const left = state.members.filter((x) => x.power !== 'off' && x.id !== m.id && !gone.has(x.id));
          if (!roomFor(left)) continue;
        }
        const ids = v
          .guestsOn(m.id)
          .sort((a, b) => latest(v.guests.get(b)?.cpu) - latest(v.guests.get(a)?.cpu) || (a < b ? -1 : 1));
        const skip = new Set([...gone, m.id]);
        const planned: Array<{ id: string; to: MemberState }> = [];
        let ok = true;
        for (const id of ids) {
          const to = find(id, skip);
          if (!to) {
            ok = false;
            break;
          }
          v.shift(id, m.id, to.id);
          planned.push({ id, to });
        }
        const moves = ok
          ? planned.map((p) =>
              record(
                state,
                v.guests.get(p.id) as GuestState,
                m,
                p.to,
                'evacuation',
                'LR-MMT: under-utilized host',
              ),
            )
          : [];
        if (!ok || moves.some((x) => x === undefined)) {
          for (const p of planned.reverse()) v.shift(p.id, p.to.id, m.id);
          continue;
        }
        gone.add(m.id);
        for (const p of planned) targets.add(p.to.id);
        d.evacuations.push({ member: m.id, moves: moves as MoveRecord[], reason: 'LR-MMT: under-utilized' });
      }
      return d;
    },
  };
}

const bytes = (v: View, id: string) => {
  const g = v.guests.get(id) as GuestState;
  return g.memoryBytes && g.memoryBytes.length > 0 ? latest(g.memoryBytes) : (g.moveBytes ?? 0);
};

/**
 * Incus's rebalancer: load by configured limits (the larger of the CPU and memory shares), one
 * VM a run from the busiest to the least busy member when they differ by more than the threshold.
 */
export function incusBaseline(
  limits: ReadonlyMap<string, ConfiguredLimits>,
  options: { intervalMs?: number; threshold?: number; batch?: number; cooldownMs?: number } = {},
): ClusterPolicy {
  const threshold = options.threshold ?? 0.2;
  const batch = options.batch ?? 1;
  const cooldownMs = options.cooldownMs ?? 6 * 3_600_000;
  return {
    name: 'incus',
    intervalMs: options.intervalMs ?? 5 * 60_000,
    historyMs: 5 * 60_000,
    decide(state) {
      const d = empty();
      const v = new View(state);
      const load = (m: MemberState) => {
        let c = 0;
        let b = 0;
        for (const id of v.guestsOn(m.id)) {
          const l = limits.get(id);
          c += l?.cpu ?? 0;
          b += l?.memoryBytes ?? 0;
        }
        return Math.max(c / m.cpuCapacity, m.memoryBytes ? b / m.memoryBytes : 0);
      };
      const on = v.powered();
      for (let n = 0; n < batch && on.length >= 2; n++) {
        const sorted = [...on].sort((a, b) => load(b) - load(a) || (a.id < b.id ? -1 : 1));
        const busy = sorted[0] as MemberState;
        const idle = sorted[sorted.length - 1] as MemberState;
        const gap = load(busy) - load(idle);
        if (gap <= threshold) break;
        // The VM whose move narrows the gap most without turning it around.
        let best: { id: string; gap: number } | undefined;
        for (const id of v.guestsOn(busy.id)) {
          const g = v.guests.get(id) as GuestState;
          if (g.model !== 'vm') continue;
          if (g.lastMove && state.nowMs - g.lastMove.atMs < cooldownMs) continue;
          v.shift(id, busy.id, idle.id);
          const after = Math.abs(load(busy) - load(idle));
          v.shift(id, idle.id, busy.id);
          if (after < gap && (!best || after < best.gap)) best = { id, gap: after };
        }
        if (!best) break;
        const rec = record(
          state,
          v.guests.get(best.id) as GuestState,
          busy,
          idle,
          'balance',
          'Incus: load gap above 20%',
        );
        if (!rec) break;
        v.shift(best.id, busy.id, idle.id);
        d.moves.push(rec);
      }
      return d;
    },
  };
}
