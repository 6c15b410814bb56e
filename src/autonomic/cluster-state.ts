import { failedPrecondition, invalidArgument } from '../core/errors.ts';
import { percentileRank } from '../planner/consolidate.ts';

/**
 * What the self-managing cluster's policies see (issue 14 §2, §3; decision 0051): the clock, the
 * members with their power state, and each guest's measured demand over a recent window. The
 * policies are pure functions of this; the daemon (later) fills it from the metric history, the
 * simulator from the traces.
 */

/** The three ways of running a guest: vm moves live, ct and pvm move cold. */
export type GuestModel = 'vm' | 'pvm' | 'ct';

/** A guest as the policies see it. */
export interface GuestState {
  id: string;
  model: GuestModel;
  /** The member it runs on. */
  member: string;
  /**
   * Measured CPU demand, one sample per interval, oldest first, the last one now; in the unit
   * of the members' `cpuCapacity` (cores, or MIPS for PlanetLab). Every guest has as many.
   */
  cpu: ArrayLike<number>;
  /** Measured memory in use, bytes, aligned with `cpu`; absent when memory is not measured. */
  memoryBytes?: ArrayLike<number>;
  /**
   * Memory a move must copy, bytes, when `memoryBytes` is absent (the configured size): what a
   * live migration sends and a cold one archives.
   */
  moveBytes?: number;
  /** `migration.downtime_budget` in ms: the longest stop a cold move may cause; 0 = never cold-move. */
  downtimeBudgetMs?: number;
  /** `cluster.evacuate=stop`: an evacuation stops it where it is instead of moving it (decision 0055). */
  stopOnEvacuation?: boolean;
  /**
   * Why it must stay on its member, one line (a port forward of the member's address points at
   * it, decision 0075): no policy moves it, and a member holding it is not emptied.
   */
  pinned?: string;
  /** Its last move: the cooldown and the no-return rule read it. */
  lastMove?: { atMs: number; from: string; to: string };
}

/** on: runs guests; booting: powered on, ready at `readyAtMs`; off: powered off by the power manager. */
export type PowerState = 'on' | 'booting' | 'off';

/** A member as the policies see it. */
export interface MemberState {
  id: string;
  cpuCapacity: number;
  /** Absent: memory is not a constraint (CPU-only traces). */
  memoryBytes?: number;
  power: PowerState;
  /** When a booting member will take guests. */
  readyAtMs?: number;
  /** When it was last powered on; absent when it has been on since the start. */
  poweredOnAtMs?: number;
  /** When the power manager turned it off, each time (only the last day's matter). */
  powerOffsMs: readonly number[];
  /** How long it takes from power-on until it takes guests. */
  bootDelayMs: number;
  /** Migration bandwidth to or from it, bytes per second, assumed where no move measured a link. */
  bandwidthBytesPerSecond: number;
  /** The links from it that finished moves measured, by destination member (issue 14 §2). */
  links?: Readonly<Record<string, LinkBandwidth>>;
  /** false: the power manager never turns it off (the administrator's choice). */
  powerManaged?: boolean;
  /** It votes in the cluster's etcd (role etcd-voter): the power manager keeps a quorum of voters running. */
  etcdVoter?: boolean;
}

/** Everything a policy decides from. */
export interface ClusterState {
  nowMs: number;
  /** The spacing of the samples. */
  intervalMs: number;
  members: readonly MemberState[];
  guests: readonly GuestState[];
  /**
   * How many members vote in the cluster's etcd, running or not (some may not be in `members`:
   * Offline ones). Absent: no etcd (one host, or an external etcd), no voter rule.
   */
  etcdVoters?: number;
}

/** Why a guest moved. */
export type MoveReason = 'overload' | 'balance' | 'evacuation';

/**
 * One move with its explanation: what an event and `trivisor cluster moves` show. Loads are
 * fractions of the member (the larger of CPU and memory) at the policy's percentile over its window.
 */
export interface MoveRecord {
  atMs: number;
  guest: string;
  model: GuestModel;
  from: string;
  to: string;
  how: 'live' | 'cold';
  reason: MoveReason;
  /** Standard deviation of the members' loads before and after this move. */
  imbalanceBefore: number;
  imbalanceAfter: number;
  loadBefore: { from: number; to: number };
  loadAfter: { from: number; to: number };
  /** Predicted benefit, seconds (decision 0051: member-seconds of imbalance and overload removed). */
  benefitSeconds: number;
  /** Cost, seconds: the copy's slowdown plus the guest's downtime. */
  costSeconds: number;
  copySeconds: number;
  downtimeMs: number;
  /** The rules that narrowed the choice (cooldown, downtime budget, ceiling, no return). */
  constraints: string[];
  /** One line for a human. */
  summary: string;
}

/** How each model moves, and what it costs besides the copy. */
export interface MoveCosts {
  /** A live move's stop-and-copy pause (vm). */
  liveDowntimeMs: number;
  /** The guest's slowdown while its memory is copied live, as a fraction of the copy time. */
  liveSlowdown: number;
  /** Stop plus start of a cold move, per model, on top of the copy. */
  coldRestartMs: Record<'ct' | 'pvm', number>;
  /** migration.downtime_budget when a guest has none. */
  defaultDowntimeBudgetMs: number;
}

export const DEFAULT_MOVE_COSTS: MoveCosts = {
  // Measured on this project's hosts (docs/benchmarks.md): QEMU's live pause is a few hundred ms,
  // a ct restarts in about a second, a pvm boots in about 1.2 s to init plus its stop.
  liveDowntimeMs: 300,
  liveSlowdown: 0.1,
  coldRestartMs: { ct: 1000, pvm: 3000 },
  defaultDowntimeBudgetMs: 60_000,
};

/** What moving a guest would cost, or why it may not move at all. */
export type MovePrice =
  | {
      ok: true;
      how: 'live' | 'cold';
      /** The bandwidth the copy is priced at, said: "bandwidth 870 Mbit/s measured over 3 moves" or "assumed 1 Gbit/s". */
      bandwidth: string;
      copySeconds: number;
      downtimeMs: number;
      costSeconds: number;
    }
  | { ok: false; why: string };

/** Bytes a move of this guest copies: its latest measured memory, else its configured size. */
export function bytesToMove(g: GuestState): number {
  const m = g.memoryBytes;
  if (m && m.length > 0) return m[m.length - 1] as number;
  return g.moveBytes ?? 0;
}

/** A link's bandwidth as finished moves measured it: their moving average, and how many. */
export interface LinkBandwidth {
  bytesPerSecond: number;
  moves: number;
}

/** A bit rate for a human: "870 Mbit/s", "1 Gbit/s". */
export function bitRate(bytesPerSecond: number): string {
  const bits = bytesPerSecond * 8;
  if (bits >= 1e9) return `${Math.round(bits / 1e8) / 10} Gbit/s`;
  if (bits >= 1e6) return `${Math.round(bits / 1e6)} Mbit/s`;
  return `${Math.round(bits / 1e3)} kbit/s`;
}

/**
 * The bandwidth a move from `from` to `to` is priced at: the link's as moves measured it, else
 * the members' assumed one (the slower of the two), each said as such.
 */
export function linkBandwidth(from: MemberState, to: MemberState): { bytesPerSecond: number; said: string } {
  const measured = from.links?.[to.id];
  if (measured && measured.bytesPerSecond > 0 && measured.moves > 0) {
    return {
      bytesPerSecond: measured.bytesPerSecond,
      said: `bandwidth ${bitRate(measured.bytesPerSecond)} measured over ${measured.moves} move${measured.moves === 1 ? '' : 's'}`,
    };
  }
  const assumed = Math.min(from.bandwidthBytesPerSecond, to.bandwidthBytesPerSecond);
  return { bytesPerSecond: assumed, said: `assumed ${bitRate(assumed)}` };
}

/** The price of moving `g` between two members (the measured link, else the slower member's assumed bandwidth). */
export function priceMove(g: GuestState, from: MemberState, to: MemberState, costs: MoveCosts): MovePrice {
  if (g.pinned !== undefined) return { ok: false, why: g.pinned };
  const link = linkBandwidth(from, to);
  const copySeconds = bytesToMove(g) / link.bytesPerSecond;
  const bandwidth = link.said;
  if (g.model === 'vm') {
    return {
      ok: true,
      how: 'live',
      bandwidth,
      copySeconds,
      downtimeMs: costs.liveDowntimeMs,
      costSeconds: copySeconds * costs.liveSlowdown + costs.liveDowntimeMs / 1000,
    };
  }
  const budget = g.downtimeBudgetMs ?? costs.defaultDowntimeBudgetMs;
  if (budget === 0) return { ok: false, why: `${g.id}: migration.downtime_budget is 0 (never cold-moved)` };
  const downtimeMs = copySeconds * 1000 + costs.coldRestartMs[g.model];
  if (downtimeMs > budget) {
    return {
      ok: false,
      why: `${g.id}: a cold move stops it ${Math.round(downtimeMs)} ms, over its downtime budget of ${budget} ms`,
    };
  }
  return { ok: true, how: 'cold', bandwidth, copySeconds, downtimeMs, costSeconds: downtimeMs / 1000 };
}

/**
 * Checks a state before any policy reads it: every user-caused problem is one line, nothing is
 * decided. Samples must be finite and ≥ 0, every guest as many (a missing one is NaN or a
 * shorter series), every guest on a known, powered-on member, and no guest larger at its peak
 * than the largest member (no member could ever hold it).
 */
export function checkClusterState(state: ClusterState): void {
  if (!Number.isFinite(state.nowMs)) throw invalidArgument(`The clock ${state.nowMs} is not a time in ms`);
  if (!(state.intervalMs > 0)) {
    throw invalidArgument(`The sample interval ${state.intervalMs} ms must be above 0`);
  }
  const members = new Map<string, MemberState>();
  let largestCpu = 0;
  let largestMemory = 0;
  for (const m of state.members) {
    if (members.has(m.id)) throw invalidArgument(`Member ${m.id} appears twice`);
    if (!(m.cpuCapacity > 0) || !Number.isFinite(m.cpuCapacity)) {
      throw invalidArgument(`Member ${m.id}'s CPU capacity ${m.cpuCapacity} must be a positive number`);
    }
    if (m.memoryBytes !== undefined && !(m.memoryBytes > 0)) {
      throw invalidArgument(`Member ${m.id}'s memory ${m.memoryBytes} must be above 0`);
    }
    if (!(m.bandwidthBytesPerSecond > 0)) {
      throw invalidArgument(`Member ${m.id}'s migration bandwidth must be above 0`);
    }
    if (!(m.bootDelayMs >= 0)) throw invalidArgument(`Member ${m.id}'s boot delay must be ≥ 0 ms`);
    members.set(m.id, m);
    largestCpu = Math.max(largestCpu, m.cpuCapacity);
    largestMemory = Math.max(largestMemory, m.memoryBytes ?? Number.POSITIVE_INFINITY);
  }
  let samples: number | undefined;
  let first = '';
  const ids = new Set<string>();
  for (const g of state.guests) {
    if (ids.has(g.id)) throw invalidArgument(`Guest ${g.id} appears twice`);
    ids.add(g.id);
    const m = members.get(g.member);
    if (!m) throw invalidArgument(`Guest ${g.id} is on ${g.member}, which is not a member`);
    if (m.power !== 'on') throw invalidArgument(`Guest ${g.id} is on ${g.member}, which is ${m.power}`);
    if (g.cpu.length === 0) throw invalidArgument(`Guest ${g.id} has no CPU sample`);
    if (samples === undefined) {
      samples = g.cpu.length;
      first = g.id;
    } else if (g.cpu.length !== samples) {
      throw invalidArgument(
        `Guest ${g.id} has ${g.cpu.length} CPU samples where ${first} has ${samples}: samples are missing`,
      );
    }
    checkSeries(g.id, 'CPU', g.cpu);
    let peakCpu = 0;
    for (let i = 0; i < g.cpu.length; i++) peakCpu = Math.max(peakCpu, g.cpu[i] as number);
    if (peakCpu > largestCpu) {
      throw failedPrecondition(
        `Guest ${g.id} uses ${round(peakCpu)} CPU at its peak, more than the largest member's ${largestCpu}: no member can hold it`,
      );
    }
    if (g.memoryBytes) {
      if (g.memoryBytes.length !== g.cpu.length) {
        throw invalidArgument(
          `Guest ${g.id} has ${g.memoryBytes.length} memory samples and ${g.cpu.length} CPU samples: samples are missing`,
        );
      }
      checkSeries(g.id, 'memory', g.memoryBytes);
      let peak = 0;
      for (let i = 0; i < g.memoryBytes.length; i++) peak = Math.max(peak, g.memoryBytes[i] as number);
      if (peak > largestMemory) {
        throw failedPrecondition(
          `Guest ${g.id} uses ${round(peak / 2 ** 30)} GiB of memory at its peak, more than the largest member's ${round(largestMemory / 2 ** 30)} GiB: no member can hold it`,
        );
      }
    }
    if (g.downtimeBudgetMs !== undefined && !(g.downtimeBudgetMs >= 0)) {
      throw invalidArgument(`Guest ${g.id}'s migration.downtime_budget ${g.downtimeBudgetMs} must be ≥ 0 ms`);
    }
  }
}

function checkSeries(id: string, what: string, series: ArrayLike<number>): void {
  for (let i = 0; i < series.length; i++) {
    const v = series[i];
    if (v === undefined || Number.isNaN(v)) {
      throw invalidArgument(`Guest ${id}'s ${what} sample ${i} is missing`);
    }
    if (!Number.isFinite(v)) throw invalidArgument(`Guest ${id}'s ${what} sample ${i} is ${v}, not a number`);
    if (v < 0) throw invalidArgument(`Guest ${id}'s ${what} sample ${i} is negative (${v})`);
  }
}

export const round = (v: number, digits = 2): number => Math.round(v * 10 ** digits) / 10 ** digits;

/**
 * Members' summed demand over the last `window` samples, and their load at a percentile: the
 * working set every policy of this folder shares. A load is the larger of CPU and memory as a
 * fraction of the member, at each sample; the percentile is taken over that series, so that
 * guests that peak at different times add up as they really do (decision 0047's correlation
 * awareness, applied to the recent window).
 */
export class LoadBook {
  readonly window: number;
  readonly percentile: number;
  readonly members = new Map<string, MemberState>();
  readonly guests = new Map<string, GuestState>();
  readonly onMember = new Map<string, Set<string>>();
  private readonly cpuSum = new Map<string, Float64Array>();
  private readonly memSum = new Map<string, Float64Array>();
  private readonly scratch: Float64Array;
  private readonly withMemory: boolean;

  constructor(state: ClusterState, options: { windowSamples: number; percentile: number }) {
    const length = state.guests[0]?.cpu.length ?? 1;
    this.window = Math.max(1, Math.min(options.windowSamples, length));
    this.percentile = options.percentile;
    this.scratch = new Float64Array(this.window);
    this.withMemory = state.guests.some((g) => g.memoryBytes !== undefined);
    for (const m of state.members) {
      this.members.set(m.id, m);
      this.onMember.set(m.id, new Set());
      this.cpuSum.set(m.id, new Float64Array(this.window));
      this.memSum.set(m.id, new Float64Array(this.window));
    }
    for (const g of state.guests) {
      this.guests.set(g.id, g);
      this.place(g.id, g.member);
    }
  }

  /** Adds guest `id`'s window to `member`'s sums. */
  place(id: string, member: string): void {
    const g = this.guests.get(id) as GuestState;
    this.add(g, member, 1);
    this.onMember.get(member)?.add(id);
  }

  /** Takes guest `id`'s window off `member`'s sums. */
  remove(id: string, member: string): void {
    const g = this.guests.get(id) as GuestState;
    this.add(g, member, -1);
    this.onMember.get(member)?.delete(id);
  }

  private add(g: GuestState, member: string, sign: number): void {
    const cpu = this.cpuSum.get(member) as Float64Array;
    const mem = this.memSum.get(member) as Float64Array;
    const off = g.cpu.length - this.window;
    for (let t = 0; t < this.window; t++) {
      cpu[t] = (cpu[t] as number) + sign * (g.cpu[off + t] as number);
      if (g.memoryBytes) mem[t] = (mem[t] as number) + sign * (g.memoryBytes[off + t] as number);
    }
  }

  /** Member's load at the percentile, optionally with one guest added (+) or taken off (−). */
  load(member: string, change?: { guest: string; sign: 1 | -1 }): number {
    const m = this.members.get(member) as MemberState;
    const cpu = this.cpuSum.get(member) as Float64Array;
    const mem = this.memSum.get(member) as Float64Array;
    const g = change ? (this.guests.get(change.guest) as GuestState) : undefined;
    const off = g ? g.cpu.length - this.window : 0;
    const memCap = this.withMemory ? m.memoryBytes : undefined;
    for (let t = 0; t < this.window; t++) {
      let c = cpu[t] as number;
      let b = mem[t] as number;
      if (g && change) {
        c += change.sign * (g.cpu[off + t] as number);
        if (g.memoryBytes) b += change.sign * (g.memoryBytes[off + t] as number);
      }
      const l = c / m.cpuCapacity;
      this.scratch[t] = memCap ? Math.max(l, b / memCap) : l;
    }
    return select(this.scratch, percentileRank(this.window, this.percentile));
  }

  /** A guest's own load on a member, at the percentile (for ordering). */
  guestLoad(id: string, member: string): number {
    const g = this.guests.get(id) as GuestState;
    const m = this.members.get(member) as MemberState;
    const off = g.cpu.length - this.window;
    for (let t = 0; t < this.window; t++) {
      const l = (g.cpu[off + t] as number) / m.cpuCapacity;
      this.scratch[t] =
        g.memoryBytes && m.memoryBytes ? Math.max(l, (g.memoryBytes[off + t] as number) / m.memoryBytes) : l;
    }
    return select(this.scratch, percentileRank(this.window, this.percentile));
  }

  /** Guests on a member, in id order (decisions must not depend on insertion order). */
  guestsOn(member: string): string[] {
    return [...(this.onMember.get(member) ?? [])].sort();
  }
}

/** The k-th smallest of `a` (0-based), reordering `a` (Hoare's selection). */
export function select(a: Float64Array, k: number): number {
  let lo = 0;
  let hi = a.length - 1;
  while (hi > lo) {
    const pivot = a[(lo + hi) >> 1] as number;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while ((a[i] as number) < pivot) i++;
      while ((a[j] as number) > pivot) j--;
      if (i <= j) {
        const x = a[i] as number;
        a[i] = a[j] as number;
        a[j] = x;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else break;
  }
  return a[k] as number;
}

/** Population standard deviation: the imbalance DRS balances. */
export function stdDev(values: readonly number[]): number {
  if (values.length === 0) return 0;
  let mean = 0;
  for (const v of values) mean += v;
  mean /= values.length;
  let s = 0;
  for (const v of values) s += (v - mean) ** 2;
  return Math.sqrt(s / values.length);
}

/** How many of a member's power-offs fall in the last 24 h. */
export const cyclesToday = (m: MemberState, nowMs: number): number =>
  m.powerOffsMs.filter((t) => t > nowMs - 86_400_000).length;
