/**
 * Bin elimination (issue 14 §4, decision 0086): after a plan is made, empty its most easily placed
 * host by spreading that host's workloads over the others, scored on the hosts' summed series and
 * checked against the one overload budget the plan shares ((100 − p)% of its host-intervals, for
 * the hosts left). A workload goes where it adds the fewest host-intervals over 100%; when none
 * takes it within the budget, one workload of a host is moved to a third host to make room (a
 * swap-ejection). When that fails too, every workload left is placed where it costs least and a
 * descent over moves and swaps lowers the plan's intervals over; the host is gone when the budget
 * is met. Repeated while it succeeds. The work is bounded by a count of host-series evaluations,
 * never a time, so the same input gives the same plan. Typed arrays, per-host sums kept as the
 * workloads move, nothing allocated per evaluation.
 */
export interface EliminateInput {
  /** Each workload's load as fractions of the host, dimension-major (`dims` × `samples`). */
  loads: Float64Array[];
  /** The host of each workload, 0 … count − 1 (not changed: the result is a new array). */
  assignment: Int32Array;
  count: number;
  dims: number;
  samples: number;
}

export interface EliminateOptions {
  /** The shared budget: floor(overFraction × hosts × samples) host-intervals over 100%. */
  overFraction: number;
  /** At most this many host-series evaluations (each a pass over one host's intervals). */
  work: number;
  /** How many hosts to try as the one emptied, lightest first, per host removed. Default 3. */
  tries?: number;
  /**
   * Once every workload is placed, no descent when the plan is over this many times its budget:
   * the descent rarely closes such a gap (PlanetLab onto 43 hosts: 369 → 185 against 123). Default 2.
   */
  reach?: number;
}

/** One attempt to empty a host: what the best search reached. */
export interface EliminationAttempt {
  /** Hosts after the host is emptied. */
  count: number;
  budget: number;
  /** Workloads of the emptied host placed within the budget before the first that did not fit. */
  placed: number;
  of: number;
  /** Host-intervals over 100% after the descent (met when ≤ budget). */
  over: number;
}

export interface EliminateResult {
  /** The hosts' numbers are 0 … count − 1 after the hosts removed. */
  assignment: Int32Array;
  count: number;
  /** Host-intervals over 100% of the result. */
  over: number;
  attempts: EliminationAttempt[];
  evaluations: number;
}

const EPS = 1e-9;
/** The descent's weight of a host's excess (fractions of a host) against one interval over. */
const EXCESS_WEIGHT = 0.05;

/** Empties hosts of a plan while the shared budget allows (see the file's comment). */
export function eliminate(input: EliminateInput, options: EliminateOptions): EliminateResult {
  const { loads, dims, samples: T } = input;
  const L = dims * T;
  const N = loads.length;
  let count = input.count;
  let at: Int32Array = Int32Array.from(input.assignment);
  let evaluations = 0;
  const attempts: EliminationAttempt[] = [];
  const total = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    const x = loads[i] as Float64Array;
    let s = 0;
    for (let k = 0; k < L; k++) s += x[k] as number;
    total[i] = s;
  }
  // Scratch for one state: sums (count × L), intervals over and excess per host.
  let sums = new Float64Array(count * L);
  const over = new Int32Array(count);
  const excess = new Float64Array(count);
  let lastExcess = 0;

  // Intervals over 100% of host h's sum + sign × (x − y) (x, y optional); its excess in lastExcess.
  const overOf = (
    h: number,
    x: Float64Array | undefined,
    y: Float64Array | undefined,
    sign: number,
  ): number => {
    evaluations++;
    const base = h * L;
    let n = 0;
    let e = 0;
    for (let t = 0; t < T; t++) {
      let m = 0;
      for (let d = 0; d < dims; d++) {
        const k = d * T + t;
        let v = sums[base + k] as number;
        if (x) v += sign * (x[k] as number);
        if (y) v -= sign * (y[k] as number);
        if (v > m) m = v;
      }
      if (m > 1 + EPS) {
        n++;
        e += m - 1;
      }
    }
    lastExcess = e;
    return n;
  };
  const addTo = (h: number, x: Float64Array, sign: number) => {
    const base = h * L;
    for (let k = 0; k < L; k++) sums[base + k] = (sums[base + k] as number) + sign * (x[k] as number);
  };
  const load = (assign: Int32Array, c: number) => {
    sums = new Float64Array(c * L);
    for (let i = 0; i < N; i++)
      if ((assign[i] as number) >= 0) addTo(assign[i] as number, loads[i] as Float64Array, 1);
    for (let h = 0; h < c; h++) {
      over[h] = overOf(h, undefined, undefined, 1);
      excess[h] = lastExcess;
    }
  };
  const cost = (n: number, e: number) => n + EXCESS_WEIGHT * e;
  /** Host h's intervals over and excess become n and e; returns the change of the plan's intervals over. */
  const setHost = (h: number, n: number, e: number): number => {
    const change = n - (over[h] as number);
    over[h] = n;
    excess[h] = e;
    return change;
  };
  /** The intervals over 100% of hosts 0 … c − 1. */
  const overTotal = (c: number): number => {
    let n = 0;
    for (let h = 0; h < c; h++) n += over[h] as number;
    return n;
  };

  for (;;) {
    if (count < 2 || evaluations >= options.work) break;
    const c = count - 1;
    const budget = Math.floor(options.overFraction * c * T + EPS);
    // Hosts by their summed load, lightest first: the easiest to spread.
    load(at, count);
    const hostLoad = new Float64Array(count);
    for (let i = 0; i < N; i++)
      hostLoad[at[i] as number] = (hostLoad[at[i] as number] as number) + (total[i] as number);
    const victims = Array.from({ length: count }, (_, h) => h).sort(
      (a, b) => (hostLoad[a] as number) - (hostLoad[b] as number) || a - b,
    );
    let done: Int32Array | undefined;
    for (const v of victims.slice(0, options.tries ?? 3)) {
      if (evaluations >= options.work) break;
      const next = new Int32Array(N);
      const pool: number[] = [];
      for (let i = 0; i < N; i++) {
        const h = at[i] as number;
        if (h === v) {
          next[i] = -1;
          pool.push(i);
        } else next[i] = h < v ? h : h - 1;
      }
      pool.sort((a, b) => (total[b] as number) - (total[a] as number) || a - b);
      load(next, c);
      let sumOver = overTotal(c);
      const members = (h: number) => {
        const list: number[] = [];
        for (let i = 0; i < N; i++) if (next[i] === h) list.push(i);
        return list;
      };
      let placed = 0;
      let within = true;
      for (const i of pool) {
        const xi = loads[i] as Float64Array;
        // The host that takes it for the fewest new intervals over (then the least new excess).
        let to = -1;
        let best = Number.POSITIVE_INFINITY;
        let toOver = 0;
        let toExcess = 0;
        for (let h = 0; h < c; h++) {
          const n = overOf(h, xi, undefined, 1);
          const d = cost(n - (over[h] as number), lastExcess - (excess[h] as number));
          if (d < best - EPS) {
            best = d;
            to = h;
            toOver = n;
            toExcess = lastExcess;
          }
        }
        const added = toOver - (over[to] as number);
        if (within && sumOver + added > budget) {
          // A swap-ejection: i onto host h in place of m, m onto host g.
          let ej: [number, number, number, number, number, number, number] | undefined;
          let ejBest = Number.POSITIVE_INFINITY;
          for (let h = 0; h < c && evaluations < options.work; h++) {
            for (const m of members(h)) {
              const xm = loads[m] as Float64Array;
              const nh = overOf(h, xi, xm, 1);
              const eh = lastExcess;
              const dh = nh - (over[h] as number);
              if (sumOver + dh > budget) continue;
              for (let g = 0; g < c; g++) {
                if (g === h) continue;
                const ng = overOf(g, xm, undefined, 1);
                const d = dh + ng - (over[g] as number);
                if (sumOver + d > budget) continue;
                const sc = cost(d, eh - (excess[h] as number) + lastExcess - (excess[g] as number));
                if (sc < ejBest - EPS) {
                  ejBest = sc;
                  ej = [h, m, g, nh, eh, ng, lastExcess];
                }
              }
            }
          }
          if (ej) {
            const [h, m, g, nh, eh, ng, eg] = ej;
            const xm = loads[m] as Float64Array;
            addTo(h, xm, -1);
            addTo(h, xi, 1);
            addTo(g, xm, 1);
            sumOver += setHost(h, nh, eh) + setHost(g, ng, eg);
            next[i] = h;
            next[m] = g;
            placed++;
            continue;
          }
          within = false;
        }
        addTo(to, xi, 1);
        sumOver += setHost(to, toOver, toExcess);
        next[i] = to;
        if (within) placed++;
      }
      if (sumOver > budget && sumOver <= (options.reach ?? 2) * budget) sumOver = descend(next, c, budget);
      attempts.push({ count: c, budget, placed, of: pool.length, over: sumOver });
      if (sumOver <= budget) {
        done = next;
        break;
      }
    }
    if (!done) break;
    at = done;
    count--;
  }
  load(at, count);
  return { assignment: at, count, over: overTotal(count), attempts, evaluations };

  /**
   * First-improving moves (best target) and swaps of the workloads of hosts over 100%, on
   * intervals over + EXCESS_WEIGHT × excess, while a pass improves, the budget is not met and
   * work remains. Returns the intervals over.
   */
  function descend(assign: Int32Array, c: number, budget: number): number {
    let sumOver = overTotal(c);
    let improved = true;
    while (improved && sumOver > budget && evaluations < options.work) {
      improved = false;
      for (let i = 0; i < N && sumOver > budget && evaluations < options.work; i++) {
        const a = assign[i] as number;
        if ((over[a] as number) === 0) continue;
        const xi = loads[i] as Float64Array;
        const na = overOf(a, xi, undefined, -1);
        const ea = lastExcess;
        const before = cost(over[a] as number, excess[a] as number);
        let to = -1;
        let gain = -EPS;
        let nb = 0;
        let eb = 0;
        for (let b = 0; b < c; b++) {
          if (b === a) continue;
          const n = overOf(b, xi, undefined, 1);
          const d =
            cost(na, ea) + cost(n, lastExcess) - before - cost(over[b] as number, excess[b] as number);
          if (d < gain) {
            gain = d;
            to = b;
            nb = n;
            eb = lastExcess;
          }
        }
        if (to >= 0) {
          addTo(a, xi, -1);
          addTo(to, xi, 1);
          sumOver += setHost(a, na, ea) + setHost(to, nb, eb);
          assign[i] = to;
          improved = true;
          continue;
        }
        // The first swap with a workload of another host that lowers the two hosts' cost.
        for (let j = 0; j < N; j++) {
          const b = assign[j] as number;
          if (b === a) continue;
          const xj = loads[j] as Float64Array;
          const was = before + cost(over[b] as number, excess[b] as number);
          const n1 = overOf(a, xi, xj, -1);
          const e1 = lastExcess;
          if (cost(n1, e1) - was >= -EPS) continue;
          const n2 = overOf(b, xi, xj, 1);
          const e2 = lastExcess;
          if (cost(n1, e1) + cost(n2, e2) - was >= -EPS) continue;
          addTo(a, xi, -1);
          addTo(a, xj, 1);
          addTo(b, xj, -1);
          addTo(b, xi, 1);
          sumOver += setHost(a, n1, e1) + setHost(b, n2, e2);
          assign[i] = b;
          assign[j] = a;
          improved = true;
          break;
        }
      }
    }
    return sumOver;
  }
}
