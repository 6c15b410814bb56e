import { failedPrecondition, invalidArgument } from '../core/errors.ts';
import type { HostSize, Inventory } from '../planner/inventory.ts';
import type { ConfiguredLimits } from './baselines.ts';
import type { GuestModel } from './cluster-state.ts';
import type { Scenario, SimGuest, SimMember } from './simulator.ts';

/**
 * A cluster to simulate from a trace inventory (src/planner's readers): one guest per workload,
 * replaying its measured CPU (and memory, where the trace has it), and as many members of
 * `hostSize` as first-fit decreasing on the guests' configured limits needs, all on, each
 * holding what that packing gives it. That is where every policy starts: a cluster filled by
 * limits, the way guests are placed before anything is measured.
 */

/**
 * CloudSim's PlanetLab VM types (PlanetLabConstants): RAM per MIPS size, what a live migration
 * of such a VM copies. The trace has no memory; the papers' VMs do.
 */
const PLANETLAB_RAM_MIB: Record<number, number> = { 2500: 870, 2000: 1740, 1000: 1740, 500: 613 };

export interface TraceScenarioOptions {
  hostSize: HostSize;
  /** The model every guest runs as (the traces are of VMs). */
  model?: GuestModel;
  bootDelayMs?: number;
  /** Migration bandwidth, bytes/s (1 Gbit/s, CloudSim's hosts', by default). */
  bandwidthBytesPerSecond?: number;
  /** Prefix of member and guest ids, to put several inventories side by side. */
  prefix?: string;
}

/** The scenario, and each guest's configured limits (what Incus weighs guests by). */
export interface TraceScenario {
  scenario: Scenario;
  limits: Map<string, ConfiguredLimits>;
}

export function scenarioFromInventory(inv: Inventory, options: TraceScenarioOptions): TraceScenario {
  const size = options.hostSize;
  const prefix = options.prefix ?? '';
  if (inv.workloads.length === 0) throw invalidArgument('The inventory has no workload to simulate');
  const limits = new Map<string, ConfiguredLimits>();
  const guests: SimGuest[] = [];
  for (const w of inv.workloads) {
    const memLimit = w.memoryCapacityBytes;
    if (w.cpuCapacity > size.cpu || (size.memoryBytes !== undefined && (memLimit ?? 0) > size.memoryBytes)) {
      throw failedPrecondition(
        `${w.file}:${w.line}: workload ${w.id}'s limits (cpu ${w.cpuCapacity}${memLimit ? `, memory ${Math.round(memLimit / 2 ** 30)} GiB` : ''}) do not fit in one host of cpu=${size.cpu}${size.memoryBytes ? `,memory=${Math.round(size.memoryBytes / 2 ** 30)}GiB` : ''}: the host is too small for a single workload`,
      );
    }
    const id = `${prefix}${w.id}`;
    const l: ConfiguredLimits = { cpu: w.cpuCapacity };
    if (memLimit !== undefined) l.memoryBytes = memLimit;
    limits.set(id, l);
    const g: SimGuest = { id, model: options.model ?? 'vm', member: '', cpu: w.cpu };
    if (w.memoryBytes && size.memoryBytes !== undefined) g.memoryBytes = w.memoryBytes;
    else g.moveBytes = (memLimit ?? (PLANETLAB_RAM_MIB[w.cpuCapacity] ?? 1024) * 2 ** 20) as number;
    guests.push(g);
  }
  // First-fit decreasing on the limits (CPU, then memory, then id, so the packing is reproducible).
  const order = [...guests].sort((a, b) => {
    const la = limits.get(a.id) as ConfiguredLimits;
    const lb = limits.get(b.id) as ConfiguredLimits;
    return lb.cpu - la.cpu || (lb.memoryBytes ?? 0) - (la.memoryBytes ?? 0) || (a.id < b.id ? -1 : 1);
  });
  const bins: Array<{ cpu: number; mem: number; id: string }> = [];
  for (const g of order) {
    const l = limits.get(g.id) as ConfiguredLimits;
    let bin = bins.find(
      (b) =>
        b.cpu + l.cpu <= size.cpu + 1e-9 &&
        (size.memoryBytes === undefined || b.mem + (l.memoryBytes ?? 0) <= size.memoryBytes),
    );
    if (!bin) {
      bin = { cpu: 0, mem: 0, id: `${prefix}m${String(bins.length + 1).padStart(4, '0')}` };
      bins.push(bin);
    }
    bin.cpu += l.cpu;
    bin.mem += l.memoryBytes ?? 0;
    g.member = bin.id;
  }
  const members: SimMember[] = bins.map((b) => {
    const m: SimMember = {
      id: b.id,
      cpuCapacity: size.cpu,
      bootDelayMs: options.bootDelayMs ?? 5 * 60_000,
      bandwidthBytesPerSecond: options.bandwidthBytesPerSecond ?? 125_000_000,
    };
    if (size.memoryBytes !== undefined) m.memoryBytes = size.memoryBytes;
    return m;
  });
  return {
    scenario: { intervalMs: inv.intervalSeconds * 1000, samples: inv.samples, members, guests },
    limits,
  };
}
