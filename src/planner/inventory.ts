import { invalidArgument } from '../core/errors.ts';
import { parseBytes } from '../core/sizes.ts';

/**
 * One measured server to consolidate: its capacity and its use over time, on the inventory's
 * common time grid (sample i of every workload is the same interval). CPU is in the unit the
 * inventory speaks (MIPS for PlanetLab, cores for Bitbrains and our CSV), memory in bytes.
 */
export interface Workload {
  /** The inventory's own id, so that anyone can replay a plan on their own. */
  id: string;
  cpuCapacity: number;
  memoryCapacityBytes?: number;
  cpu: Float64Array;
  /** Absent when the inventory measures CPU only (PlanetLab). */
  memoryBytes?: Float64Array;
  /**
   * Mean disk and network rates over the rows read, where the inventory measures them (Bitbrains):
   * for the model advisor, not for packing. Means, not series: four numbers a workload.
   */
  io?: WorkloadIo;
  /** Where the workload was first read, for errors that must name a file and a line. */
  file: string;
  line: number;
}

/** A workload's mean disk and network rates, in bytes a second. */
export interface WorkloadIo {
  diskReadBytesPerSecond: number;
  diskWriteBytesPerSecond: number;
  /** Received and sent together. */
  networkBytesPerSecond: number;
}

/** A whole inventory read from one file or directory. */
export interface Inventory {
  format: 'planetlab' | 'bitbrains' | 'trivisor';
  /** What the CPU numbers count: the host size's `cpu=` must be in the same unit. */
  cpuUnit: 'MIPS' | 'cores';
  intervalSeconds: number;
  /** Samples per workload (every workload has exactly this many). */
  samples: number;
  workloads: Workload[];
}

/** The host every workload is packed onto: CPU in the inventory's unit, memory in bytes. */
export interface HostSize {
  cpu: number;
  /** Absent: memory is not a constraint (CPU-only inventories such as PlanetLab). */
  memoryBytes?: number;
}

/** Parses `cpu=5320`, `cpu=32,memory=256GiB` (the CLI's --host-size). */
export function parseHostSize(text: string): HostSize {
  let cpu: number | undefined;
  let memoryBytes: number | undefined;
  for (const part of text.split(',')) {
    const [key, value, ...more] = part.split('=').map((s) => s.trim());
    if (value === undefined || value === '' || more.length > 0) {
      throw invalidArgument(
        `The host size ${JSON.stringify(text)} is not key=value pairs: write e.g. cpu=5320 or cpu=32,memory=256GiB`,
      );
    }
    if (key === 'cpu') {
      cpu = Number(value);
      if (!Number.isFinite(cpu) || cpu <= 0) {
        throw invalidArgument(`The host's cpu ${JSON.stringify(value)} must be a positive number`);
      }
    } else if (key === 'memory') {
      memoryBytes = parseBytes(value, "host's memory");
    } else {
      throw invalidArgument(`The host size has an unknown key ${JSON.stringify(key)}: use cpu and memory`);
    }
  }
  if (cpu === undefined) throw invalidArgument(`The host size ${JSON.stringify(text)} needs cpu=…`);
  return memoryBytes === undefined ? { cpu } : { cpu, memoryBytes };
}

/** `5320` or `32,memory=256GiB` back as the CLI would take it. */
export function formatHostSize(size: HostSize): string {
  const gib = size.memoryBytes === undefined ? undefined : size.memoryBytes / 1024 ** 3;
  return gib === undefined ? `cpu=${size.cpu}` : `cpu=${size.cpu},memory=${gib}GiB`;
}

/** Samples `from` (inclusive) to `to` (exclusive) of every workload: one period of an inventory (views, no copy). */
export function sliceInventory(inv: Inventory, from: number, to: number): Inventory {
  if (!(from >= 0 && to <= inv.samples && from < to)) {
    throw invalidArgument(`Samples ${from} to ${to} are not within the inventory's ${inv.samples}`);
  }
  return {
    ...inv,
    samples: to - from,
    workloads: inv.workloads.map((w) => {
      const { memoryBytes, ...rest } = w;
      const cpu = w.cpu.subarray(from, to);
      return memoryBytes ? { ...rest, cpu, memoryBytes: memoryBytes.subarray(from, to) } : { ...rest, cpu };
    }),
  };
}

/**
 * Gives the memory of an inventory's series back now rather than when the GC comes round (a
 * Bitbrains month: 71 MB), for a caller done with one period before it reads the next (plan July,
 * then read August). The inventory, and every slice of it, reads as empty afterwards.
 */
export function releaseInventory(inv: Inventory): void {
  const buffers = new Set<ArrayBuffer>();
  for (const w of inv.workloads) {
    for (const s of [w.cpu, w.memoryBytes]) if (s && s.buffer instanceof ArrayBuffer) buffers.add(s.buffer);
  }
  for (const b of buffers) if (!b.detached) b.transfer(0);
}
