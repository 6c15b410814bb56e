// Benchmark (issue 12, section 7): placement decisions per second against 10,000 simulated
// members, the scheduler's own code (src/control/placement.ts) over synthetic member states.
// Baseline in the same run: a naive scheduler that scans and sorts every member for each
// decision (what a first version would do), on the same members and requests. Target ≥ 20,000/s.
// Usage: node bench/placement.ts [members=10000] [decisions=200000]
import { loadavg, release } from 'node:os';
import {
  createPlacementIndex,
  NEAR_MEMBERS,
  nearBytes,
  type PlacementCandidate,
  type PlacementRequest,
} from '../src/control/placement.ts';
import { writeResult } from './lib.ts';

const memberCount = Number(process.argv[2] ?? 10_000);
const decisions = Number(process.argv[3] ?? 200_000);
const GIB = 1024 ** 3;
const loadAtStart = loadavg();

let seed = 7;
const rnd = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
};
const members: PlacementCandidate[] = Array.from({ length: memberCount }, (_, i) => ({
  name: `m${String(i).padStart(5, '0')}`,
  // One member in 50 is down, one in 100 evacuated: the scheduler must pass them by.
  status: i % 50 === 7 ? 'Offline' : i % 100 === 3 ? 'Evacuated' : 'Online',
  cpus: [8, 16, 32, 64][i % 4] as number,
  cpuFree: rnd() * 8,
  memoryTotalBytes: 256 * GIB,
  // Enough free memory that the run never exhausts the cluster (each guest 64-576 MiB).
  memoryFreeBytes: (64 + rnd() * 192) * GIB,
}));
const models = ['ct', 'pvm', 'vm'] as const;
const requests: PlacementRequest[] = Array.from({ length: 4096 }, (_, i) => ({
  model: models[i % 3] as PlacementRequest['model'],
  memoryBytes: Math.round((64 + rnd() * 512) * 1024 ** 2),
  cpus: 1 + (i % 4),
}));

/**
 * The baseline: a full scan and sort of all members per decision, then the members within
 * nearBytes of the first (NEAR_MEMBERS at most), the first of them with the fewest guests.
 */
function naive(state: PlacementCandidate[], r: PlacementRequest): string {
  const fit = state
    .filter((c) => c.status === 'Online' && c.cpus >= r.cpus && c.memoryFreeBytes >= r.memoryBytes)
    .sort(
      (a, b) => b.memoryFreeBytes - a.memoryFreeBytes || b.cpuFree - a.cpuFree || (a.name < b.name ? -1 : 1),
    );
  const top = fit[0];
  const near = top
    ? fit.filter((c) => c.memoryFreeBytes >= top.memoryFreeBytes - nearBytes(top)).slice(0, NEAR_MEMBERS)
    : [];
  const fewest = Math.min(...near.map((c) => c.guests ?? 0));
  const c = near.find((m) => (m.guests ?? 0) === fewest);
  if (!c) throw new Error('no member');
  c.memoryFreeBytes -= r.memoryBytes;
  c.cpuFree = Math.max(0, c.cpuFree - r.cpus);
  c.guests = (c.guests ?? 0) + 1;
  return c.name;
}

const timeIt = (n: number, f: (i: number) => string): { perSecond: number; last: string } => {
  let last = '';
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) last = f(i);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return { perSecond: n / s, last };
};

// The two must agree on every decision (on a short prefix, where the naive one is affordable).
const check = Math.min(2_000, decisions);
const a = createPlacementIndex(members);
const shadow = members.map((m) => ({ ...m }));
for (let i = 0; i < check; i++) {
  const r = requests[i % requests.length] as PlacementRequest;
  const got = a.place(r).member;
  const want = naive(shadow, r);
  if (got !== want) throw new Error(`decision ${i}: scheduler chose ${got}, a full sort ${want}`);
}

const index = createPlacementIndex(members);
const fast = timeIt(decisions, (i) => index.place(requests[i % requests.length] as PlacementRequest).member);
const baselineState = members.map((m) => ({ ...m }));
const baselineDecisions = Math.min(decisions, 500);
const slow = timeIt(baselineDecisions, (i) =>
  naive(baselineState, requests[i % requests.length] as PlacementRequest),
);

const result = {
  members: memberCount,
  decisions,
  agreedOnFirst: check,
  scheduler: { decisionsPerSecond: Math.round(fast.perSecond) },
  baselineFullSort: { decisions: baselineDecisions, decisionsPerSecond: Math.round(slow.perSecond) },
  ratio: fast.perSecond / slow.perSecond,
  target: 20_000,
  kernel: release(),
  loadAverage: { start: loadAtStart, end: loadavg() },
};
console.log(JSON.stringify(result, null, 2));
console.log(`wrote ${writeResult('placement', result)}`);
if (fast.perSecond < 20_000) process.exitCode = 1;
