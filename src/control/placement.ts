import { failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import type { Model } from '../core/types.ts';

/**
 * Placement (issue 12 part 5): which member a new guest goes to. The rule is Incus's and
 * vSphere's initial placement reduced to what the members measure: the member with the most
 * free measured memory that can hold the guest's limits. The next members whose free memory
 * is within a sixteenth of its memory of that (`nearBytes`; up to NEAR_MEMBERS in all) are as
 * good as it: measurements
 * taken a few seconds apart differ by that much, and a ct guest without limits.memory
 * reserves nothing. Among them the one with the fewest guests wins (Incus's own rule), then
 * the most free memory, the most free CPU and the name, so that the same states always give
 * the same answer. The bound keeps a decision cheap when thousands of members are equally
 * free (a cluster filled evenly is). An Offline or Evacuated
 * member gets nothing. Every answer says why, in words an administrator reads in `trivisor
 * info` and in the guest's created event.
 *
 * Pure logic over member states: the guest service feeds it `cluster list`'s measurements;
 * bench/placement.ts feeds it 10,000 synthetic members.
 */

/** A member as the scheduler sees it (from its heartbeat). */
export interface PlacementCandidate {
  name: string;
  status: 'Online' | 'Offline' | 'Evacuated' | 'Standby';
  cpus: number;
  /** Idle CPUs, measured (cpus × idle share). */
  cpuFree: number;
  memoryTotalBytes: number;
  memoryFreeBytes: number;
  /** Models this member can run (a member without QEMU or UML runs fewer); all when absent. */
  models?: readonly Model[];
  /** When its measurement was taken (ISO); guests placed or started since are not in it. */
  measuredAt?: string;
  /** Free space of its default pool, where the guest's disk goes; unknown when absent. */
  diskFreeBytes?: number;
  /** Guests it holds (every state); 0 when absent. */
  guests?: number;
}

/** A guest as reservations count it: where it is, what it holds, when it was made and started. */
export interface PlacedGuest {
  location: string;
  memoryBytes: number;
  cpus: number;
  /** limits.disk: the space its disk may take on its pool (0 when unbounded). */
  diskBytes?: number;
  createdAt: string;
  /** Absent while it has not run since it was made. */
  startedAt?: string;
  running: boolean;
}

/**
 * Takes off each member's measured free capacity what its measurement cannot hold yet: the
 * guests made, or started, after it was taken (a heartbeat comes every 10 s; a burst of
 * creates between two would all see the same free memory and pile onto one member). A guest
 * that has run since the measurement is in it, as what it really uses.
 */
export function withReservations(
  candidates: readonly PlacementCandidate[],
  guests: Iterable<PlacedGuest>,
): PlacementCandidate[] {
  const out = candidates.map((c) => ({ ...c }));
  const byName = new Map(out.map((c) => [c.name, c]));
  for (const g of guests) {
    const c = byName.get(g.location);
    if (!c) continue;
    c.guests = (c.guests ?? 0) + 1;
    if (!c.measuredAt) continue;
    const unmeasured =
      g.createdAt > c.measuredAt || (g.running && g.startedAt !== undefined && g.startedAt > c.measuredAt);
    if (!unmeasured) continue;
    c.memoryFreeBytes = Math.max(0, c.memoryFreeBytes - g.memoryBytes);
    c.cpuFree = Math.max(0, c.cpuFree - g.cpus);
    if (c.diskFreeBytes !== undefined) c.diskFreeBytes = Math.max(0, c.diskFreeBytes - (g.diskBytes ?? 0));
  }
  return out;
}

/** What the guest needs. */
export interface PlacementRequest {
  model: Model;
  /** limits.memory in bytes (the model's default when the guest sets none). */
  memoryBytes: number;
  /** limits.cpu (vCPUs); a member with fewer CPUs cannot hold the guest. */
  cpus: number;
  /** limits.disk: space on the member's default pool its disk may take (none asked when absent). */
  diskBytes?: number;
  /** `--target MEMBER`: only this member, if it can take the guest. */
  target?: string;
}

export interface Placement {
  member: string;
  /** One line: where and why. */
  reason: string;
}

const GIB = 1024 ** 3;
/**
 * Free memory this close to the most free member's counts as the same (see the top): a
 * sixteenth of that member's memory (1.5 GiB of 24), at least 512 MiB.
 */
export function nearBytes(most: PlacementCandidate): number {
  return Math.max(512 * 1024 ** 2, most.memoryTotalBytes / 16);
}
/** How many members, the most free first, a decision compares by guest count. */
export const NEAR_MEMBERS = 16;
const gib = (bytes: number) => (bytes / GIB).toFixed(1);

/** Why a member cannot take the guest, or undefined when it can. */
function refusal(c: PlacementCandidate, r: PlacementRequest): string | undefined {
  if (c.status !== 'Online') return `${c.name} is ${c.status}`;
  if (c.models && !c.models.includes(r.model)) return `${c.name} cannot run ${r.model} guests`;
  if (c.cpus < r.cpus) return `${c.name} has ${c.cpus} CPUs, the guest asks for ${r.cpus}`;
  if (c.memoryFreeBytes < r.memoryBytes)
    return `${c.name} has ${gib(c.memoryFreeBytes)} GiB of memory free, the guest needs ${gib(r.memoryBytes)}`;
  if (r.diskBytes !== undefined && c.diskFreeBytes !== undefined && c.diskFreeBytes < r.diskBytes)
    return `${c.name} has ${gib(c.diskFreeBytes)} GiB free on its storage pool, the guest's disk may take ${gib(r.diskBytes)}`;
  return undefined;
}

/** Orders members best first: most free memory, then most free CPU, then by name. */
function better(a: PlacementCandidate, b: PlacementCandidate): number {
  return (
    b.memoryFreeBytes - a.memoryFreeBytes ||
    b.cpuFree - a.cpuFree ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );
}

/** Counts a guest placed on `c` (its free resources only shrink). */
function count(c: PlacementCandidate, r: PlacementRequest): void {
  c.memoryFreeBytes -= r.memoryBytes;
  c.cpuFree = Math.max(0, c.cpuFree - r.cpus);
  if (c.diskFreeBytes !== undefined) c.diskFreeBytes = Math.max(0, c.diskFreeBytes - (r.diskBytes ?? 0));
  c.guests = (c.guests ?? 0) + 1;
}

/**
 * A scheduler over a fixed set of member states that keeps what it placed: each placement
 * takes the guest's memory and CPUs off its member, so a burst of creates spreads instead of
 * piling on the member that was freest before the burst. Online members are kept in a binary
 * heap, best on top: a decision takes members off the top while they are near (`nearBytes`)
 * the first that fits, up to NEAR_MEMBERS that fit (and past members too small for the guest's
 * CPUs or model), chooses among them, and puts them back: O(k log n).
 */
export function createPlacementIndex(candidates: readonly PlacementCandidate[]) {
  const all = candidates.map((c) => ({ ...c }));
  const byName = new Map(all.map((c) => [c.name, c]));
  const heap = all.filter((c) => c.status === 'Online').sort(better);
  const top = (i: number) => heap[i] as PlacementCandidate;

  const siftDown = (from: number) => {
    let i = from;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let best = i;
      if (l < heap.length && better(top(l), top(best)) < 0) best = l;
      if (r < heap.length && better(top(r), top(best)) < 0) best = r;
      if (best === i) return;
      [heap[i], heap[best]] = [top(best), top(i)];
      i = best;
    }
  };
  const siftUp = (from: number) => {
    let i = from;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (better(top(i), top(parent)) >= 0) return;
      [heap[i], heap[parent]] = [top(parent), top(i)];
      i = parent;
    }
  };
  const pop = (): PlacementCandidate | undefined => {
    const first = heap[0];
    const last = heap.pop();
    if (first && last && heap.length > 0) {
      heap[0] = last;
      siftDown(0);
    }
    return first;
  };
  const push = (c: PlacementCandidate) => {
    heap.push(c);
    siftUp(heap.length - 1);
  };
  /** Counts the guest on `c`, the member at heap index `at` (its free resources only shrink). */
  const take = (c: PlacementCandidate, at: number, r: PlacementRequest) => {
    count(c, r);
    siftDown(at);
  };
  /** Up to three reasons why no member takes the guest (the slow path of a refusal). */
  const refusals = (r: PlacementRequest) => {
    const why = all.flatMap((c) => refusal(c, r) ?? []);
    return `${why.slice(0, 3).join('; ')}${why.length > 3 ? '; …' : ''}`;
  };

  return {
    /** Chooses the member for a guest and counts the guest on it; throws, in one line, when none can take it. */
    place(r: PlacementRequest): Placement {
      if (r.target !== undefined) {
        const c = byName.get(r.target);
        if (!c) throw notFound(`Member ${r.target} not found; see trivisor cluster list`);
        const why = refusal(c, r);
        if (why !== undefined) throw failedPrecondition(`Cannot place the guest on ${r.target}: ${why}`);
        const reason = `asked for (--target ${c.name}): ${gib(c.memoryFreeBytes)} GiB of ${gib(c.memoryTotalBytes)} free`;
        take(c, heap.indexOf(c), r);
        return { member: c.name, reason };
      }
      if (all.length === 0) throw failedPrecondition('No member to place the guest on');
      // The top has the most free memory: when it lacks the memory, every member does. Members
      // come off the heap best first, so among as many guests the first taken off wins.
      const taken: PlacementCandidate[] = [];
      let first: PlacementCandidate | undefined;
      let chosen: PlacementCandidate | undefined;
      let fitting = 0;
      for (
        let c = heap[0];
        c !== undefined &&
        c.memoryFreeBytes >= r.memoryBytes &&
        fitting < NEAR_MEMBERS &&
        (first === undefined || c.memoryFreeBytes >= first.memoryFreeBytes - nearBytes(first));
        c = heap[0]
      ) {
        taken.push(pop() as PlacementCandidate);
        if (refusal(c, r) !== undefined) continue;
        first ??= c;
        fitting++;
        if (!chosen || (c.guests ?? 0) < (chosen.guests ?? 0)) chosen = c;
      }
      let placement: Placement | undefined;
      if (chosen) {
        const free = `${gib(chosen.memoryFreeBytes)} GiB of ${gib(chosen.memoryTotalBytes)}`;
        placement = {
          member: chosen.name,
          reason:
            chosen === first
              ? `most free memory: ${free}`
              : `most free memory: ${free} (within ${gib(nearBytes(first as PlacementCandidate))} GiB of the most), fewest guests: ${chosen.guests ?? 0}`,
        };
        count(chosen, r);
      }
      for (const c of taken) push(c);
      if (placement) return placement;
      throw failedPrecondition(
        `No member can take a ${r.model} guest with ${gib(r.memoryBytes)} GiB and ${r.cpus} CPUs: ${refusals(r)}`,
      );
    },
  };
}

/** One decision over the members as they are now. */
export function placeGuest(candidates: readonly PlacementCandidate[], request: PlacementRequest): Placement {
  return createPlacementIndex(candidates).place(request);
}

/** `--target` checked before anything else reads it: a member name is a DNS label. */
export function assertTargetName(target: string): void {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(target)) {
    throw invalidArgument(
      `Invalid target ${JSON.stringify(target)}: give a member name (see trivisor cluster list)`,
    );
  }
}
