import { failedPrecondition, invalidArgument } from '../core/errors.ts';
import { anneal, BLOCK, blockMaxima, fillBlockMaxima, mulberry32 } from './anneal.ts';
import { eliminate } from './eliminate.ts';
import type { HostSize, Inventory, Workload } from './inventory.ts';

/** How to plan: the host, the sizing percentile, and the seed of the extra orderings tried. */
export interface PlanOptions {
  hostSize: HostSize;
  /** The plan may be over 100% in (100 − p)% of its host-intervals (each host alone, then shared by all). Default 99. */
  percentile?: number;
  /** Seed of the perturbed orderings tried after the sorted one (same input and seed, same plan). */
  seed?: number;
  /** How many perturbed orderings to try beside the sorted one. Default 4. */
  restarts?: number;
}

/** One planned host and the inventory ids of the workloads it runs. */
export interface PlannedHost {
  name: string;
  workloads: string[];
}

/** A consolidation plan. */
export interface Plan {
  hostSize: HostSize;
  method: string;
  percentile?: number;
  hosts: PlannedHost[];
  /** ⌈peak of the summed load / host capacity⌉, the larger over CPU and memory. */
  lowerBound: number;
}

/**
 * Each workload's load as fractions of the host, dimension-major (CPU then memory, each
 * `samples` long): packing works on these, so that one test covers CPU and memory together.
 */
interface Normalized {
  w: Workload;
  dims: number;
  load: Float64Array;
  /** The load's maximum over each block of BLOCK intervals, per dimension (made when first needed). */
  max?: Float64Array;
}

const EPS = 1e-9;
/** The local search's weight of one interval over 100%, against its excess (a fraction of the host). */
const OVER_WEIGHT = 0.02;
/** At most this many local-search passes per host count tried. */
const MAX_PASSES = 12;
/**
 * The annealing after the local search: steps × (dimensions × samples) is about this much work,
 * at most ANNEAL_MAX_STEPS steps (PlanetLab's 288 samples: 1M steps; a Bitbrains month's 2 × 8,640: 35k).
 */
const ANNEAL_WORK = 6e8;
const ANNEAL_MAX_STEPS = 1_000_000;
/** A count whose local search ends over this many times its budget is not annealed (it never got there). */
const ANNEAL_REACH = 2;
/**
 * The bin elimination after the plan (eliminate.ts): host-series evaluations × (dimensions ×
 * samples) is at most this much work, about 2 s of CPU (PlanetLab's 288 samples: 1M evaluations;
 * 20110303 spends 39k, 0.2 s, as every host tried ends over twice its budget before any descent).
 */
const ELIMINATE_WORK = 3e8;
/** At most this many passes evening the settled plan's load out (Packer.evenOut). */
const MAX_EVEN_PASSES = 20;

/**
 * The dimensions the host constrains: CPU always, memory when both the host and the inventory have
 * it. All the workloads' loads are views of one buffer, so that `releaseLoads` gives it back at once.
 */
function normalize(inv: Inventory, size: HostSize): Normalized[] {
  const withMemory = size.memoryBytes !== undefined && inv.workloads.every((w) => w.memoryBytes);
  const T = inv.samples;
  const dims = withMemory ? 2 : 1;
  const buffer = new ArrayBuffer(inv.workloads.length * dims * T * Float64Array.BYTES_PER_ELEMENT);
  return inv.workloads.map((w, i) => {
    const load = new Float64Array(buffer, i * dims * T * Float64Array.BYTES_PER_ELEMENT, dims * T);
    for (let t = 0; t < T; t++) load[t] = (w.cpu[t] ?? 0) / size.cpu;
    if (withMemory) {
      const mem = w.memoryBytes as Float64Array;
      const cap = size.memoryBytes as number;
      for (let t = 0; t < T; t++) load[T + t] = (mem[t] ?? 0) / cap;
    }
    return { w, dims, load };
  });
}

/**
 * Frees the normalized copy now (a Bitbrains month: 71 MB) rather than when the GC comes round:
 * planning six percentiles in a row, or a month after another, otherwise piles the copies up
 * (the whole benchmark's peak RSS moved between 444 and 530 MiB with the GC's timing).
 */
function releaseLoads(norm: Normalized[]): void {
  const buffer = norm[0]?.load.buffer;
  if (buffer instanceof ArrayBuffer && !buffer.detached) buffer.transfer(0);
}

/** k-th smallest (0-based) of `a`, reordering it (Hoare's selection). */
function select(a: Float64Array, k: number): number {
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
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

/** Rank (0-based) of the p-th percentile in `n` sorted values (nearest rank). */
export const percentileRank = (n: number, p: number): number =>
  Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1));

/** The p-th percentile of a series (nearest rank), leaving it untouched. */
export function percentileOf(values: ArrayLike<number>, p: number): number {
  const copy = Float64Array.from(values as ArrayLike<number>);
  return copy.length === 0 ? 0 : select(copy, percentileRank(copy.length, p));
}

/**
 * percentileOf through one reused copy: sizing every workload copied each series afresh (a
 * Bitbrains month: 1,000 copies of 69 KB outside the heap, freed only when the GC came round).
 */
function percentileVia(scratch: Float64Array): (values: Float64Array, p: number) => number {
  return (values, p) => {
    if (values.length === 0) return 0;
    const copy = scratch.subarray(0, values.length);
    copy.set(values);
    return select(copy, percentileRank(copy.length, p));
  };
}

/**
 * The dimensions of each workload's series as fractions of the host, without copying them: a
 * function from (dimension, sample) to the fraction normalize() would hold there, the same division.
 */
function dimensionsOf(inv: Inventory, size: HostSize): Array<(w: Workload, t: number) => number> {
  const withMemory = size.memoryBytes !== undefined && inv.workloads.every((w) => w.memoryBytes);
  const cpu = (w: Workload, t: number) => (w.cpu[t] ?? 0) / size.cpu;
  const cap = size.memoryBytes as number;
  const mem = (w: Workload, t: number) => ((w.memoryBytes as Float64Array)[t] ?? 0) / cap;
  return withMemory ? [cpu, mem] : [cpu];
}

/**
 * ⌈peak of the summed load / host capacity⌉, over CPU and memory. Summed in boundOf's order, from
 * the inventory itself: a normalized copy of a Bitbrains month is 71 MB, for one number.
 */
export function lowerBound(inv: Inventory, size: HostSize): number {
  let bound = 0;
  for (const frac of dimensionsOf(inv, size)) {
    let peak = 0;
    for (let t = 0; t < inv.samples; t++) {
      let sum = 0;
      for (const w of inv.workloads) sum += frac(w, t);
      if (sum > peak) peak = sum;
    }
    bound = Math.max(bound, Math.ceil(peak - EPS));
  }
  return bound;
}

function boundOf(norm: Normalized[], T: number): number {
  const dims = norm[0]?.dims ?? 1;
  let bound = 0;
  for (let d = 0; d < dims; d++) {
    let peak = 0;
    for (let t = 0; t < T; t++) {
      let sum = 0;
      for (const n of norm) sum += n.load[d * T + t] as number;
      if (sum > peak) peak = sum;
    }
    bound = Math.max(bound, Math.ceil(peak - EPS));
  }
  return bound;
}

/** A host being filled: its summed load series and its workloads. */
interface Bin {
  sum: Float64Array;
  members: Normalized[];
  /** The sum's block maxima, kept by add and remove when present (the shared budget's search). */
  max?: Float64Array;
}

/**
 * The correlation-aware packer. A workload goes onto a host only if the host's summed series,
 * interval by interval, stays within 100% (CPU and memory alike) at the sizing percentile: two
 * workloads that peak together add up there, two that peak apart do not. Among the hosts it fits
 * on, it takes the one left with the least headroom at that percentile (best fit).
 */
class Packer {
  readonly T: number;
  readonly dims: number;
  /** Intervals a host may spend over 100% and still count as fitting at the percentile. */
  readonly allowed: number;
  readonly rank: number;
  /** Blocks of BLOCK intervals in a series (the last may be shorter). */
  readonly blocks: number;
  private readonly scratch: Float64Array;

  constructor(T: number, dims: number, p: number) {
    this.T = T;
    this.dims = dims;
    this.rank = percentileRank(T, p);
    this.allowed = T - 1 - this.rank;
    this.scratch = new Float64Array(T);
    this.blocks = Math.ceil(T / BLOCK);
  }

  fits(sum: Float64Array, load: Float64Array): boolean {
    const { T, dims } = this;
    let over = 0;
    for (let t = 0; t < T; t++) {
      for (let d = 0; d < dims; d++) {
        const i = d * T + t;
        if ((sum[i] as number) + (load[i] as number) > 1 + EPS) {
          if (++over > this.allowed) return false;
          break;
        }
      }
    }
    return true;
  }

  /** The host's bottleneck load at the percentile once `load` is added. */
  loadAt(sum: Float64Array, load: Float64Array | undefined): number {
    const { T, dims, scratch } = this;
    for (let t = 0; t < T; t++) {
      let m = 0;
      for (let d = 0; d < dims; d++) {
        const v = (sum[d * T + t] as number) + (load ? (load[d * T + t] as number) : 0);
        if (v > m) m = v;
      }
      scratch[t] = m;
    }
    return select(scratch, this.rank);
  }

  add(bin: Bin, n: Normalized): void {
    for (let i = 0; i < bin.sum.length; i++) bin.sum[i] = (bin.sum[i] as number) + (n.load[i] as number);
    bin.members.push(n);
    if (bin.max) fillBlockMaxima(bin.sum, this.dims, this.T, this.blocks, bin.max);
  }

  remove(bin: Bin, n: Normalized): void {
    for (let i = 0; i < bin.sum.length; i++) bin.sum[i] = (bin.sum[i] as number) - (n.load[i] as number);
    bin.members.splice(bin.members.indexOf(n), 1);
    if (bin.max) fillBlockMaxima(bin.sum, this.dims, this.T, this.blocks, bin.max);
  }

  /** A workload's block maxima, made once. */
  maxOf(n: Normalized): Float64Array {
    if (!n.max) n.max = blockMaxima(n.load, this.dims, this.T, this.blocks);
    return n.max;
  }

  /** Best fit among `bins` (skipping `except`); undefined when none has room. */
  bestBin(bins: Bin[], n: Normalized, except?: Bin): Bin | undefined {
    let best: Bin | undefined;
    let bestLoad = Number.POSITIVE_INFINITY;
    for (const b of bins) {
      if (b === except || !this.fits(b.sum, n.load)) continue;
      const headroom = 1 - this.loadAt(b.sum, n.load);
      if (headroom < bestLoad - EPS) {
        bestLoad = headroom;
        best = b;
      }
    }
    return best;
  }

  pack(order: Normalized[]): Bin[] {
    const bins: Bin[] = [];
    for (const n of order) {
      let bin = this.bestBin(bins, n);
      if (!bin) {
        bin = { sum: new Float64Array(this.dims * this.T), members: [] };
        bins.push(bin);
      }
      this.add(bin, n);
    }
    this.emptyHosts(bins);
    return bins;
  }

  /**
   * Packs onto exactly `count` hosts, each workload (largest first) onto the host left least
   * loaded at the percentile: spreading fills the hosts evenly, and the host whose peaks come at
   * other times is the one that grows least. Undefined when a workload fits on none.
   */
  packInto(order: Normalized[], count: number): Bin[] | undefined {
    const bins: Bin[] = Array.from({ length: count }, () => ({
      sum: new Float64Array(this.dims * this.T),
      members: [],
    }));
    // Each host's own load at the percentile, kept as its workloads change. It is also a bound:
    // with n added every interval's load is at least what it was (loads are never negative, and
    // rounding is monotone), so 2 × loadAt(sum + n) − base ≥ base, and a host whose base is
    // already no better than the best so far is skipped without a look: the same choice, sooner.
    const base = bins.map((b) => this.loadAt(b.sum, undefined));
    for (const n of order) {
      let best: Bin | undefined;
      let bestAt = -1;
      let bestLoad = Number.POSITIVE_INFINITY;
      for (let h = 0; h < count; h++) {
        const b = bins[h] as Bin;
        if ((base[h] as number) >= bestLoad - EPS) continue;
        if (!this.fits(b.sum, n.load)) continue;
        // The load it leaves plus the load it adds: of two equally full hosts, the one whose
        // peaks come at other times than this workload's grows less (45 PlanetLab hosts where
        // the load it leaves alone gives 46, and the load it adds alone 48).
        const load = 2 * this.loadAt(b.sum, n.load) - (base[h] as number);
        if (load < bestLoad - EPS) {
          bestLoad = load;
          best = b;
          bestAt = h;
        }
      }
      if (!best) {
        best = this.makeRoom(bins, n);
        if (!best) return undefined;
        this.add(best, n);
        // The ejection moved a workload between two other hosts too.
        for (let h = 0; h < count; h++) base[h] = this.loadAt((bins[h] as Bin).sum, undefined);
        continue;
      }
      this.add(best, n);
      base[bestAt] = this.loadAt(best.sum, undefined);
    }
    return bins;
  }

  /**
   * When `n` fits nowhere: finds a host where it would fit once one of its workloads moves to
   * another host that has room for that one (a one-step ejection), makes the move, returns the host.
   */
  makeRoom(bins: Bin[], n: Normalized): Bin | undefined {
    for (const b of bins) {
      for (const m of [...b.members].reverse()) {
        this.remove(b, m);
        if (this.fits(b.sum, n.load)) {
          const to = this.bestBin(bins, m, b);
          if (to) {
            this.add(to, m);
            return b;
          }
        }
        this.add(b, m);
      }
    }
    return undefined;
  }

  /**
   * Packs onto exactly `count` hosts sharing one overload budget: at most `budget` host-intervals
   * over 100% in the whole plan, wherever they fall (the per-host test above gives every host the
   * same small allowance, which the hosts that need none leave unused). Each workload, largest
   * first, goes where the host's summed series grows least in Σ load² (the one whose peaks come at
   * other times); then a local search moves a workload off an overloaded host, or swaps it with
   * one of another host, whenever that lowers the plan's overload. Passes are bounded by counts,
   * not time, so the same input gives the same plan. Undefined when the budget is not reached.
   */
  rebalance(order: Normalized[], count: number, opts: { budget: number; seed: number }): Bin[] | undefined {
    const { budget } = opts;
    const { T, dims } = this;
    const L = dims * T;
    const bins: Bin[] = Array.from({ length: count }, () => ({
      sum: new Float64Array(L),
      members: [],
      max: new Float64Array(dims * this.blocks),
    }));
    const at = new Map<Normalized, number>();
    for (const n of order) {
      let best = 0;
      let bestScore = Number.POSITIVE_INFINITY;
      for (let h = 0; h < count; h++) {
        const sum = (bins[h] as Bin).sum;
        let score = 0;
        for (let i = 0; i < L; i++) score += (sum[i] as number) * (n.load[i] as number);
        if (score < bestScore - EPS) {
          bestScore = score;
          best = h;
        }
      }
      this.add(bins[best] as Bin, n);
      at.set(n, best);
    }
    const pen = bins.map((b) => this.penalty(b, undefined, undefined));
    let over = this.overCount(bins);
    for (let pass = 0; over > budget && pass < MAX_PASSES; pass++) {
      const before = over;
      for (const n of order) {
        const a = at.get(n) as number;
        if ((pen[a] as number) <= 0) continue;
        const binA = bins[a] as Bin;
        const penA = this.penalty(binA, n, undefined);
        let to = -1;
        let gain = -EPS;
        let penTo = 0;
        for (let b = 0; b < count; b++) {
          if (b === a) continue;
          const pb = this.penalty(bins[b] as Bin, undefined, n, {
            pre: penA,
            less: pen[a] as number,
            less2: pen[b] as number,
            gain,
          });
          const d = penA + pb - (pen[a] as number) - (pen[b] as number);
          if (d < gain) {
            gain = d;
            to = b;
            penTo = pb;
          }
        }
        if (to >= 0) {
          this.remove(binA, n);
          this.add(bins[to] as Bin, n);
          pen[a] = penA;
          pen[to] = penTo;
          at.set(n, to);
          continue;
        }
        this.swapOff(n, { bins, at, pen });
      }
      over = this.overCount(bins);
      // Hopeless or stalled: a pass after the first removes 2-15% of the intervals over (PlanetLab
      // onto 43 and 44 hosts, Bitbrains July onto 11 and 12), so a count still 1.25× the budget is
      // not reached, and each pass costs as much (about 10 s on a Bitbrains month).
      if (over > 1.25 * budget || before - over < before * 0.05) break;
    }
    if (over > ANNEAL_REACH * budget) return undefined;
    // The passes above stop at the first local minimum, or as soon as the budget is met; annealing
    // goes on lowering the plan's overload from there (PlanetLab onto 44 hosts: 97 host-intervals
    // over → 79; see decision 0047), with a seeded number of steps, not a time.
    const index = new Map(order.map((n, k) => [n, k]));
    const assignment = Int32Array.from(order, (n) => at.get(n) as number);
    const steps = Math.min(ANNEAL_MAX_STEPS, Math.floor(ANNEAL_WORK / (dims * T)));
    const result = anneal(
      { loads: order.map((n) => n.load), assignment, count, dims, samples: T },
      { steps, seed: opts.seed },
    );
    if (result.overAfter > budget) return undefined;
    const out: Bin[] = Array.from({ length: count }, () => ({ sum: new Float64Array(L), members: [] }));
    for (const n of order) this.add(out[result.assignment[index.get(n) as number] as number] as Bin, n);
    return out;
  }

  /** The first swap of `n` (on an overloaded host) with a workload of another host that lowers the penalty, made. */
  private swapOff(n: Normalized, s: { bins: Bin[]; at: Map<Normalized, number>; pen: number[] }): void {
    const { T, dims } = this;
    const a = s.at.get(n) as number;
    const binA = s.bins[a] as Bin;
    const sa = binA.sum;
    // Only the intervals where host a is over can make a swap worth it: a cheap bound first.
    const hot: number[] = [];
    for (let t = 0; t < T; t++) if (this.excessAt(sa, t, undefined, undefined) > 0) hot.push(t);
    // Host a without n at those intervals, as excessAt computes it ((sum − n) + m), taken once for every m.
    const rest = new Float64Array(hot.length * dims);
    for (let k = 0; k < hot.length; k++) {
      for (let d = 0; d < dims; d++) {
        const i = d * T + (hot[k] as number);
        rest[k * dims + d] = (sa[i] as number) - (n.load[i] as number);
      }
    }
    const hots = new Map<number, number[]>();
    const hotOf = (h: number): number[] => {
      let list = hots.get(h);
      if (!list) {
        const sum = (s.bins[h] as Bin).sum;
        list = [];
        for (let t = 0; t < T; t++) if (this.excessAt(sum, t, undefined, undefined) > 0) list.push(t);
        hots.set(h, list);
      }
      return list;
    };
    let best: Normalized | undefined;
    let gain = -EPS;
    let newA = 0;
    let newB = 0;
    for (const [m, b] of s.at) {
      if (b === a) continue;
      const base = (s.pen[a] as number) + (s.pen[b] as number);
      const ml = m.load;
      let bound = 0;
      for (let k = 0; k < hot.length; k++) {
        const t = hot[k] as number;
        let v = 0;
        for (let d = 0; d < dims; d++) {
          const x = (rest[k * dims + d] as number) + (ml[d * T + t] as number);
          if (x > v) v = x;
        }
        if (v > 1 + EPS) {
          bound += v - 1 + OVER_WEIGHT;
          // The bound only grows: once it is past the test below, the intervals left cannot undo it.
          if (bound - base >= gain) break;
        }
      }
      if (bound - base >= gain) continue;
      // The same bound on host b's own intervals over, where it would lose m and gain n.
      if ((s.pen[b] as number) > 0) {
        const sb = (s.bins[b] as Bin).sum;
        for (const t of hotOf(b)) {
          let v = 0;
          for (let d = 0; d < dims; d++) {
            const i = d * T + t;
            const x = (sb[i] as number) - (ml[i] as number) + (n.load[i] as number);
            if (x > v) v = x;
          }
          if (v > 1 + EPS) {
            bound += v - 1 + OVER_WEIGHT;
            if (bound - base >= gain) break;
          }
        }
        if (bound - base >= gain) continue;
      }
      const pa = this.penalty(binA, n, m, { pre: 0, less: base, less2: 0, gain });
      if (pa - base >= gain) continue;
      const pb = this.penalty(s.bins[b] as Bin, m, n, {
        pre: pa,
        less: base,
        less2: 0,
        gain,
      });
      if (pa + pb - base < gain) {
        gain = pa + pb - base;
        best = m;
        newA = pa;
        newB = pb;
        // The first swap that helps, not the best: plans as good on both traces, a third of the time
        // (one pass over Bitbrains July on 12 hosts: 4.5 s against 13 s for the best swap).
        break;
      }
    }
    if (!best) return;
    const b = s.at.get(best) as number;
    const binB = s.bins[b] as Bin;
    this.remove(binA, n);
    this.remove(binB, best);
    this.add(binA, best);
    this.add(binB, n);
    s.pen[a] = newA;
    s.pen[b] = newB;
    s.at.set(n, b);
    s.at.set(best, a);
  }

  /** How far interval t of `sum` − `minus` + `plus` is over 100% in its fullest dimension (0 when within). */
  private excessAt(
    sum: Float64Array,
    t: number,
    minus: Float64Array | undefined,
    plus: Float64Array | undefined,
  ): number {
    let m = 0;
    for (let d = 0; d < this.dims; d++) {
      const i = d * this.T + t;
      const v = (sum[i] as number) - (minus ? (minus[i] as number) : 0) + (plus ? (plus[i] as number) : 0);
      if (v > m) m = v;
    }
    return m > 1 + EPS ? m - 1 : 0;
  }

  /**
   * The local search's measure of a host: its excess over 100% summed over the intervals, plus a
   * little for each interval over (so that, of two equal excesses, fewer intervals over is better).
   * With `stop`: the caller only takes the result when ((pre + it) − less) − less2 < gain, and the
   * sum only grows (positive terms, monotone rounding), so it ends as soon as that can no longer
   * hold and returns the part summed, for which the caller's test fails just as for the whole.
   */
  private penalty(
    bin: Bin,
    minusN: Normalized | undefined,
    plusN: Normalized | undefined,
    stop?: { pre: number; less: number; less2: number; gain: number },
  ): number {
    const { T, dims, blocks } = this;
    const sum = bin.sum;
    const minus = minusN?.load;
    const plus = plusN?.load;
    // A block where the host's maximum plus the maximum of what it gains is within 100% has no
    // interval over: (s − minus) + plus rounds to at most s + plus's rounding, at most the maxima's
    // sum rounded. Skipped blocks add nothing, the others are summed in the same order: the same bits.
    const hm = bin.max;
    const pm = plusN ? this.maxOf(plusN) : undefined;
    let p = 0;
    for (let blk = 0; blk < blocks; blk++) {
      if (hm) {
        let may = false;
        for (let d = 0; d < dims && !may; d++) {
          const k = d * blocks + blk;
          if ((pm ? (hm[k] as number) + (pm[k] as number) : (hm[k] as number)) > 1 + EPS) may = true;
        }
        if (!may) continue;
      }
      const end = Math.min(T, (blk + 1) * BLOCK);
      for (let t = blk * BLOCK; t < end; t++) {
        // excessAt, inline: the same operations in the same order.
        let m = 0;
        for (let d = 0; d < dims; d++) {
          const i = d * T + t;
          const v =
            (sum[i] as number) - (minus ? (minus[i] as number) : 0) + (plus ? (plus[i] as number) : 0);
          if (v > m) m = v;
        }
        if (m > 1 + EPS) {
          p += m - 1 + OVER_WEIGHT;
          if (stop && stop.pre + p - stop.less - stop.less2 >= stop.gain) return p;
        }
      }
    }
    return p;
  }

  private overCount(bins: Bin[]): number {
    let n = 0;
    for (const b of bins)
      for (let t = 0; t < this.T; t++) if (this.excessAt(b.sum, t, undefined, undefined) > 0) n++;
    return n;
  }

  /** Intervals in which `sum` (+ `sign` × `load`, when given) is over 100% in any dimension. */
  private intervalsOver(sum: Float64Array, load?: Float64Array, sign = 0): number {
    const { T, dims } = this;
    let n = 0;
    for (let t = 0; t < T; t++) {
      for (let d = 0; d < dims; d++) {
        const i = d * T + t;
        if ((sum[i] as number) + (load ? sign * (load[i] as number) : 0) > 1 + EPS) {
          n++;
          break;
        }
      }
    }
    return n;
  }

  /**
   * Evens the hosts' load out once their count is settled: each workload moves to the host where
   * the plan's Σ load² (over hosts, dimensions and intervals) falls most, provided the two hosts it
   * changes are not over 100% in more intervals between them than before. The packings above fill
   * hosts to their percentile (best fit leaves the last hosts light), which holds on the planning
   * period only: a later period that is heavier overloads the full hosts first (decision 0047).
   * Passes bounded by a count, never by time; ties keep the first host in plan order.
   */
  evenOut(bins: Bin[]): void {
    const over = bins.map((b) => this.intervalsOver(b.sum));
    for (let pass = 0; pass < MAX_EVEN_PASSES; pass++) {
      let moved = 0;
      for (let a = 0; a < bins.length; a++) {
        const from = bins[a] as Bin;
        for (const n of [...from.members]) {
          const A = from.sum;
          const w = n.load;
          let to = -1;
          let best = EPS;
          let overA = 0;
          let overB = 0;
          let leftA = -1;
          for (let b = 0; b < bins.length; b++) {
            if (b === a) continue;
            const B = (bins[b] as Bin).sum;
            // Σ load² after − before, on the two hosts: 2 Σ w (B − A + w).
            let delta = 0;
            for (let i = 0; i < w.length; i++)
              delta += (w[i] as number) * ((B[i] as number) - (A[i] as number) + (w[i] as number));
            const gain = -2 * delta;
            if (gain <= best) continue;
            if (leftA < 0) leftA = this.intervalsOver(A, w, -1);
            const landed = this.intervalsOver(B, w, 1);
            if (leftA + landed > (over[a] as number) + (over[b] as number)) continue;
            to = b;
            best = gain;
            overA = leftA;
            overB = landed;
          }
          if (to < 0) continue;
          this.remove(from, n);
          this.add(bins[to] as Bin, n);
          over[a] = overA;
          over[to] = overB;
          moved++;
        }
      }
      if (moved === 0) break;
    }
  }

  /**
   * Tries to empty each host, the least loaded first, by moving all its workloads onto the others
   * (undone when one does not fit): the greedy pass opens hosts early that end up nearly empty.
   */
  emptyHosts(bins: Bin[]): void {
    const mean = (b: Bin) => b.sum.reduce((s, v) => s + v, 0);
    const order = [...bins].sort((a, b) => mean(a) - mean(b));
    for (const victim of order) {
      const moved: Array<[Normalized, Bin]> = [];
      const leaving = [...victim.members].sort((a, b) => sizeKey(b) - sizeKey(a));
      let ok = true;
      for (const n of leaving) {
        const to = this.bestBin(
          bins.filter((b) => b !== victim),
          n,
        );
        if (!to) {
          ok = false;
          break;
        }
        this.add(to, n);
        moved.push([n, to]);
      }
      if (ok) {
        bins.splice(bins.indexOf(victim), 1);
      } else {
        for (const [n, to] of moved) this.remove(to, n);
      }
    }
  }
}

/** The sort key of a workload: the sum over dimensions of its own load at the percentile. */
const sizes = new WeakMap<Normalized, number>();
const sizeKey = (n: Normalized): number => sizes.get(n) ?? 0;

const byName = (a: { w: Workload }, b: { w: Workload }) => (a.w.id < b.w.id ? -1 : a.w.id > b.w.id ? 1 : 0);

function hostsOf(bins: Array<{ members: Array<{ w: Workload }> }>): PlannedHost[] {
  const width = String(bins.length).length;
  return bins.map((b, i) => ({
    name: `host${String(i + 1).padStart(width, '0')}`,
    workloads: b.members.map((n) => n.w.id),
  }));
}

function checkInventory(inv: Inventory, size: HostSize): void {
  if (inv.workloads.length === 0) throw invalidArgument('The inventory has no workload to plan');
  if (size.memoryBytes !== undefined && inv.workloads.some((w) => !w.memoryBytes)) {
    throw invalidArgument(
      `The inventory (${inv.format}) measures CPU only: give the host size as cpu=… without memory`,
    );
  }
}

/** Plans the consolidation of an inventory onto hosts of one size (see Packer). */
export function planConsolidation(inv: Inventory, options: PlanOptions): Plan {
  const size = options.hostSize;
  checkInventory(inv, size);
  const p = options.percentile ?? 99;
  if (!(p > 0 && p <= 100)) throw invalidArgument(`The percentile ${p} must be in (0, 100]`);
  const norm = normalize(inv, size);
  try {
    const dims = norm[0]?.dims ?? 1;
    const packer = new Packer(inv.samples, dims, p);
    const empty = new Float64Array(dims * inv.samples);
    const percentile = percentileVia(new Float64Array(inv.samples));
    for (const n of norm) {
      if (!packer.fits(empty, n.load)) {
        const cpu = percentileOf(n.w.cpu, p);
        const mem = n.w.memoryBytes ? percentileOf(n.w.memoryBytes, p) : 0;
        const what =
          cpu > size.cpu
            ? `cpu ${round(cpu)} ${inv.cpuUnit} at its ${p}th percentile, more than a whole host (cpu=${size.cpu})`
            : `${round(mem / 1024 ** 3)} GiB of memory at its ${p}th percentile, more than a whole host (${round((size.memoryBytes ?? 0) / 1024 ** 3)} GiB)`;
        throw failedPrecondition(
          `${n.w.file}:${n.w.line}: ${n.w.id} needs ${what}: give a larger --host-size`,
        );
      }
      let s = 0;
      for (let d = 0; d < dims; d++)
        s += percentile(n.load.subarray(d * inv.samples, (d + 1) * inv.samples), p);
      sizes.set(n, s);
    }
    const sorted = [...norm].sort((a, b) => sizeKey(b) - sizeKey(a) || byName(a, b));
    let best = packer.pack(sorted);
    const rnd = mulberry32(options.seed ?? 1);
    for (let r = 0; r < (options.restarts ?? 4); r++) {
      // Sizes jittered by ±15%: a different but still roughly decreasing order.
      const jitter = new Map(norm.map((n) => [n, sizeKey(n) * (0.85 + 0.3 * rnd())]));
      const order = [...norm].sort(
        (a, b) => (jitter.get(b) as number) - (jitter.get(a) as number) || byName(a, b),
      );
      const bins = packer.pack(order);
      if (bins.length < best.length) best = bins;
    }
    const bound = boundOf(norm, inv.samples);
    for (let count = Math.max(1, bound); count < best.length; count++) {
      const bins = packer.packInto(sorted, count);
      if (bins) {
        best = bins.filter((b) => b.members.length > 0);
        break;
      }
    }
    // One overload budget shared by the whole plan: (100 − p)% of its host-intervals.
    let method = `correlation-aware best fit at the ${p}th percentile`;
    // Below the lower bound too: at a percentile under 100 the peak of the sum may be the budget's.
    for (let count = best.length - 1; count >= 1; count--) {
      const budget = Math.floor(((100 - p) / 100) * count * inv.samples + EPS);
      const bins = packer.rebalance(sorted, count, { budget, seed: (options.seed ?? 1) + count });
      if (!bins) break;
      best = bins.filter((b) => b.members.length > 0);
      method = `correlation-aware packing with a shared overload budget of ${round(100 - p)}% of host-intervals`;
    }
    // Bin elimination: empty the most easily placed host into the others, within the same shared
    // budget, while it succeeds (PlanetLab 20110303 onto 43: never, see decision 0086).
    const index = new Map(norm.map((n, k) => [n, k]));
    const assignment = new Int32Array(norm.length);
    best.forEach((b, h) => {
      for (const n of b.members) assignment[index.get(n) as number] = h;
    });
    const fewer = eliminate(
      { loads: norm.map((n) => n.load), assignment, count: best.length, dims, samples: inv.samples },
      { overFraction: (100 - p) / 100, work: Math.floor(ELIMINATE_WORK / (dims * inv.samples)) },
    );
    if (fewer.count < best.length) {
      const bins: Bin[] = Array.from({ length: fewer.count }, () => ({
        sum: new Float64Array(dims * inv.samples),
        members: [],
      }));
      for (const n of sorted) packer.add(bins[fewer.assignment[index.get(n) as number] as number] as Bin, n);
      best = bins;
      method = `correlation-aware packing with a shared overload budget of ${round(100 - p)}% of host-intervals`;
    }
    packer.evenOut(best);
    return {
      hostSize: size,
      method,
      percentile: p,
      hosts: hostsOf(best),
      lowerBound: bound,
    };
  } finally {
    releaseLoads(norm);
  }
}

const round = (v: number) => Math.round(v * 100) / 100;

/**
 * The baseline: first-fit decreasing on one number per workload and dimension, each workload's
 * own peak (`'peak'`) or its own percentile, as if every workload peaked at the same time.
 */
export function firstFitDecreasing(
  inv: Inventory,
  options: { hostSize: HostSize; sizing: 'peak' | number },
): Plan {
  const size = options.hostSize;
  checkInventory(inv, size);
  // Each workload's percentile in each dimension: the fractions normalize() would hold, made one
  // workload at a time in one reused scratch rather than as a copy of the whole inventory.
  const fractions = dimensionsOf(inv, size);
  const dims = fractions.length;
  const T = inv.samples;
  const p = options.sizing === 'peak' ? 100 : options.sizing;
  const scratch = new Float64Array(T);
  const rank = percentileRank(T, p);
  const items = inv.workloads.map((w) => {
    const need: number[] = [];
    for (const frac of fractions) {
      for (let t = 0; t < T; t++) scratch[t] = frac(w, t);
      need.push(T === 0 ? 0 : select(scratch, rank));
    }
    return { n: { w }, need, key: need.reduce((s, v) => s + v, 0) };
  });
  items.sort((a, b) => b.key - a.key || byName(a.n, b.n));
  const bins: Array<{ used: number[]; members: Array<{ w: Workload }> }> = [];
  for (const it of items) {
    if (it.need.some((v) => v > 1 + EPS)) {
      throw failedPrecondition(
        `${it.n.w.file}:${it.n.w.line}: ${it.n.w.id} is larger than a whole host: give a larger --host-size`,
      );
    }
    let bin = bins.find((b) => b.used.every((u, d) => u + (it.need[d] as number) <= 1 + EPS));
    if (!bin) {
      bin = { used: new Array<number>(dims).fill(0), members: [] };
      bins.push(bin);
    }
    for (let d = 0; d < dims; d++) bin.used[d] = (bin.used[d] as number) + (it.need[d] as number);
    bin.members.push(it.n);
  }
  return {
    hostSize: size,
    method:
      options.sizing === 'peak'
        ? 'first-fit decreasing on peaks'
        : `first-fit decreasing on ${p}th percentiles`,
    hosts: hostsOf(bins),
    lowerBound: lowerBound(inv, size),
  };
}
