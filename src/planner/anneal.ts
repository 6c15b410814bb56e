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

  // The cost of a host whose series is sum + sign × (x − y) (x, y optional), and its intervals over.
  let lastOver = 0;
  const costOf = (
    sum: Float64Array,
    x: Float64Array | undefined,
    y: Float64Array | undefined,
    sign: number,
  ) => {
    let c = 0;
    let over = 0;
    for (let t = 0; t < T; t++) {
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
      }
    }
    lastOver = over;
    return c;
  };
  const cost = new Float64Array(count);
  const overs = new Int32Array(count);
  for (let h = 0; h < count; h++) {
    cost[h] = costOf(sums[h] as Float64Array, undefined, undefined, 1);
    overs[h] = lastOver;
  }
  const overBefore = overs.reduce((s, v) => s + v, 0);
  if (count < 2 || N < 2) return { assignment: at, overBefore, overAfter: overBefore };

  const rnd = mulberry32(options.seed);
  const t0 = options.startTemperature ?? 0.02;
  const t1 = options.endTemperature ?? 0.0002;
  const cool = options.steps > 1 ? (t1 / t0) ** (1 / (options.steps - 1)) : 1;
  let temperature = t0;
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
    const ca = xj || (cost[a] as number) > 0 ? costOf(sa, xi, xj, -1) : 0;
    const oa = xj || (cost[a] as number) > 0 ? lastOver : 0;
    const cb = costOf(sb, xi, xj, 1);
    const ob = lastOver;
    const delta = ca + cb - (cost[a] as number) - (cost[b] as number);
    if (delta > 0 && rnd() >= Math.exp(-delta / temperature)) continue;
    for (let k = 0; k < L; k++) {
      const v = (xi[k] as number) - (xj ? (xj[k] as number) : 0);
      sa[k] = (sa[k] as number) - v;
      sb[k] = (sb[k] as number) + v;
    }
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
