/**
 * A seeded simulated annealing over an assignment of workloads to hosts (decision 0047): the
 * plan's overload, Σ over host-intervals of (excess over 100% + `overWeight` when over), is lowered
 * by moving one workload to another host or swapping two of different hosts. Each move changes two
 * hosts' series, so it is evaluated in O(dims × samples). The number of steps is given, never a
 * time: the same input and seed give the same assignment.
 */
export interface AnnealInput {
  /** Each workload's load as fractions of the host, dimension-major (`dims` × `samples`). */
  loads: Float64Array[];
  /** The host of each workload, 0 … count − 1 (not changed: the result is a new array). */
  assignment: Int32Array;
  count: number;
  dims: number;
  samples: number;
}

/** How long and how hot to search. */
export interface AnnealOptions {
  steps: number;
  seed: number;
  /** What one interval over 100% costs on top of its excess. Default 0.02. */
  overWeight?: number;
  /** Start and end temperature, in the cost's units (fractions of a host). Default 0.02 → 0.0002. */
  startTemperature?: number;
  endTemperature?: number;
}

/** What the search reached: the assignment, and its host-intervals over 100% before and after. */
export interface AnnealResult {
  assignment: Int32Array;
  overBefore: number;
  overAfter: number;
}

const EPS = 1e-9;
/** Intervals per block of the maxima that let costOf skip what cannot be over 100%. */
export const BLOCK = 8;

/** The maximum of each block of BLOCK intervals of a dimension-major series, into `out` (dims × nb). */
export function fillBlockMaxima(
  x: Float64Array,
  dims: number,
  T: number,
  nb: number,
  out: Float64Array,
): void {
  for (let d = 0; d < dims; d++) {
    for (let blk = 0; blk < nb; blk++) {
      let m = Number.NEGATIVE_INFINITY;
      const end = Math.min(T, (blk + 1) * BLOCK);
      for (let t = blk * BLOCK; t < end; t++) {
        const v = x[d * T + t] as number;
        if (v > m) m = v;
      }
      out[d * nb + blk] = m;
    }
  }
}

export function blockMaxima(x: Float64Array, dims: number, T: number, nb: number): Float64Array {
  const out = new Float64Array(dims * nb);
  fillBlockMaxima(x, dims, T, nb, out);
  return out;
}

/** mulberry32: a small deterministic generator, the same seed the same sequence. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Anneals the assignment. Half the steps are proposed where the overload is (a host over 100%,
 * one of its intervals over, a workload picked in proportion to its load there, sent to the least
 * loaded of four hosts drawn at random in that interval), half uniformly; half of each are swaps
 * with a workload of the target host. The result is never worse in intervals over 100% than the
 * assignment given: when the search ends worse, the assignment given is returned.
 */
export function anneal(input: AnnealInput, options: AnnealOptions): AnnealResult {
  const { loads, count, dims, samples: T } = input;
  const L = dims * T;
  const N = loads.length;
  const at = Int32Array.from(input.assignment);
  const W = options.overWeight ?? 0.02;
  const sums = Array.from({ length: count }, () => new Float64Array(L));
  const members: number[][] = Array.from({ length: count }, () => []);
  const slot = new Int32Array(N);
  for (let i = 0; i < N; i++) {
    const h = at[i] as number;
    const s = sums[h] as Float64Array;
    const x = loads[i] as Float64Array;
    for (let k = 0; k < L; k++) s[k] = (s[k] as number) + (x[k] as number);
    slot[i] = (members[h] as number[]).push(i) - 1;
  }

  // Each host's and each workload's maximum over blocks of BLOCK intervals, dimension by
  // dimension: a block where the host's maximum plus the maximum of what it gains is within 100%
  // holds no interval over, so costOf skips it. Exact, not an estimate: v = (s ± x) ∓ y rounds to
  // at most s + x's rounding, at most the maxima's sum rounded (rounding is monotone), so a block
  // skipped has no interval the full loop would have counted, and the intervals counted are added
  // in the same order, to the bit.
  const nb = Math.ceil(T / BLOCK);
  const hostMax = Array.from({ length: count }, () => new Float64Array(dims * nb));
  const loadMax = loads.map((x) => blockMaxima(x, dims, T, nb));
  for (let h = 0; h < count; h++)
    fillBlockMaxima(sums[h] as Float64Array, dims, T, nb, hostMax[h] as Float64Array);

  // The cost of a host whose series is sum + sign × (x − y) (x, y optional), and its intervals over.
  // `gainMax`: the block maxima of what the host gains (x when sign is 1, y when −1), if anything.
  // With `early`: the cost summed so far is a lower bound of the host's whole cost (its terms are
  // positive and rounding is monotone), so the step's delta ((ca + cb) − cost a) − cost b taken
  // with it (and with `stepOther`, the other host's cost when known, else 0) is a lower bound of
  // the delta. Once that bound is positive the Metropolis draw is due anyway (the original draws
  // it for every delta > 0, last in the step), and when the draw already rejects at the bound it
  // rejects at the whole delta (exp falls as delta grows; a relative 1e-12 covers exp's last bit):
  // the step ends there, the same step as before, with the same numbers drawn. Most steps are
  // rejected (PlanetLab: 5,568 of 10⁶ taken), and most end at the first interval they push over:
  // host b (which gains) first, then host a, 56% of the intervals the full sums would visit.
  let lastOver = 0;
  let rejected = false;
  let drawn = -1;
  let stepOther = 0;
  let stepCostA = 0;
  let stepCostB = 0;
  let temperature = options.startTemperature ?? 0.02;
  const costOf = (
    h: number,
    x: Float64Array | undefined,
    y: Float64Array | undefined,
    sign: number,
    gainMax: Float64Array | undefined,
    early = false,
  ) => {
    const sum = sums[h] as Float64Array;
    const hm = hostMax[h] as Float64Array;
    let c = 0;
    let over = 0;
    for (let blk = 0; blk < nb; blk++) {
      let may = false;
      for (let d = 0; d < dims && !may; d++) {
        const k = d * nb + blk;
        if ((gainMax ? (hm[k] as number) + (gainMax[k] as number) : (hm[k] as number)) > 1 + EPS) may = true;
      }
      if (!may) continue;
      const end = Math.min(T, (blk + 1) * BLOCK);
      for (let t = blk * BLOCK; t < end; t++) {
        let m = 0;
        for (let d = 0; d < dims; d++) {
          const k = d * T + t;
          let v = sum[k] as number;
          if (x) v += sign * (x[k] as number);
          if (y) v -= sign * (y[k] as number);
          if (v > m) m = v;
        }
        if (m > 1 + EPS) {
          c += m - 1 + W;
          over++;
          if (early) {
            const bound = stepOther + c - stepCostA - stepCostB;
            if (bound > 0) {
              if (drawn < 0) drawn = rnd();
              if (drawn >= Math.exp(-bound / temperature) * (1 + 1e-12)) {
                rejected = true;
                return c;
              }
            }
          }
        }
      }
    }
    lastOver = over;
    return c;
  };
  const rnd = mulberry32(options.seed);
  const cost = new Float64Array(count);
  const overs = new Int32Array(count);
  for (let h = 0; h < count; h++) {
    cost[h] = costOf(h, undefined, undefined, 1, undefined);
    overs[h] = lastOver;
  }
  const overBefore = overs.reduce((s, v) => s + v, 0);
  if (count < 2 || N < 2) return { assignment: at, overBefore, overAfter: overBefore };

  const t0 = options.startTemperature ?? 0.02;
  const t1 = options.endTemperature ?? 0.0002;
  const cool = options.steps > 1 ? (t1 / t0) ** (1 / (options.steps - 1)) : 1;
  const otherHost = (a: number) => {
    const b = Math.floor(rnd() * (count - 1));
    return b >= a ? b + 1 : b;
  };

  for (let step = 0; step < options.steps; step++, temperature *= cool) {
    let i = -1;
    let a = -1;
    let b = -1;
    if (rnd() < 0.5) {
      // Where the overload is: a host over 100%, the first interval over from a random point.
      let h = Math.floor(rnd() * count);
      for (let k = 0; k < count && (overs[h] as number) === 0; k++) h = (h + 1) % count;
      if ((overs[h] as number) > 0 && (members[h] as number[]).length > 0) {
        const s = sums[h] as Float64Array;
        const start = Math.floor(rnd() * T);
        let hot = -1;
        for (let k = 0; k < T && hot < 0; k++) {
          const t = (start + k) % T;
          for (let d = 0; d < dims; d++) {
            if ((s[d * T + t] as number) > 1 + EPS) {
              hot = d * T + t;
              break;
            }
          }
        }
        if (hot >= 0) {
          const mine = members[h] as number[];
          let total = 0;
          for (const m of mine) total += (loads[m] as Float64Array)[hot] as number;
          let r = rnd() * total;
          i = mine[mine.length - 1] as number;
          for (const m of mine) {
            r -= (loads[m] as Float64Array)[hot] as number;
            if (r <= 0) {
              i = m;
              break;
            }
          }
          a = h;
          let least = Number.POSITIVE_INFINITY;
          for (let k = 0; k < 4; k++) {
            const c = otherHost(a);
            const v = (sums[c] as Float64Array)[hot] as number;
            if (v < least) {
              least = v;
              b = c;
            }
          }
        }
      }
    }
    if (i < 0) {
      i = Math.floor(rnd() * N);
      a = at[i] as number;
      b = otherHost(a);
    }
    const swap = rnd() < 0.5 && (members[b] as number[]).length > 0;
    const j = swap
      ? ((members[b] as number[])[Math.floor(rnd() * (members[b] as number[]).length)] as number)
      : -1;
    const xi = loads[i] as Float64Array;
    const xj = j >= 0 ? (loads[j] as Float64Array) : undefined;
    const sa = sums[a] as Float64Array;
    const sb = sums[b] as Float64Array;
    // Host a loses i (and gains j); host b gains i (and loses j).
    // A host that is nowhere over stays so when it only loses a workload (loads are never negative).
    stepOther = 0;
    stepCostA = cost[a] as number;
    stepCostB = cost[b] as number;
    rejected = false;
    drawn = -1;
    // Host b first, host a's cost bounded below by 0, then host a with b's: the delta's bound is
    // ((ca + cb) − cost a) − cost b with the part not yet summed left out either way.
    const cb = costOf(b, xi, xj, 1, loadMax[i], true);
    if (rejected) continue;
    const ob = lastOver;
    stepOther = cb;
    const ca =
      xj || (cost[a] as number) > 0 ? costOf(a, xi, xj, -1, j >= 0 ? loadMax[j] : undefined, true) : 0;
    if (rejected) continue;
    const oa = xj || (cost[a] as number) > 0 ? lastOver : 0;
    const delta = ca + cb - (cost[a] as number) - (cost[b] as number);
    if (delta > 0) {
      if (drawn < 0) drawn = rnd();
      if (drawn >= Math.exp(-delta / temperature)) continue;
    }
    for (let k = 0; k < L; k++) {
      const v = (xi[k] as number) - (xj ? (xj[k] as number) : 0);
      sa[k] = (sa[k] as number) - v;
      sb[k] = (sb[k] as number) + v;
    }
    fillBlockMaxima(sa, dims, T, nb, hostMax[a] as Float64Array);
    fillBlockMaxima(sb, dims, T, nb, hostMax[b] as Float64Array);
    moveOut(members, slot, a, i);
    at[i] = b;
    slot[i] = (members[b] as number[]).push(i) - 1;
    if (j >= 0) {
      moveOut(members, slot, b, j);
      at[j] = a;
      slot[j] = (members[a] as number[]).push(j) - 1;
    }
    cost[a] = ca;
    cost[b] = cb;
    overs[a] = oa;
    overs[b] = ob;
  }
  const overAfter = overs.reduce((s, v) => s + v, 0);
  return overAfter <= overBefore
    ? { assignment: at, overBefore, overAfter }
    : { assignment: Int32Array.from(input.assignment), overBefore, overAfter: overBefore };
}

/** Removes workload i from host h's member list in O(1) (the last member takes its slot). */
function moveOut(members: number[][], slot: Int32Array, h: number, i: number): void {
  const list = members[h] as number[];
  const last = list.pop() as number;
  if (last !== i) {
    const s = slot[i] as number;
    list[s] = last;
    slot[last] = s;
  }
}
