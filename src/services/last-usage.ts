import type { Guest, GuestUsage } from '../core/types.ts';

/** The run a usage figure belongs to: a restart makes a new one (new pid, new start time). */
export interface GuestRun {
  pid: number | null;
  startedAt: string | null;
}

/**
 * The metric sampler's last sample of each running guest's usage (decision 0099): the guests list
 * answers from it instead of reading every guest's cgroups at every request, as Proxmox's pvestatd
 * cache serves its lists.
 */
export interface LastUsage {
  /** Takes a whole sample: a guest not in it (stopped, gone, not yet started) has none. */
  replace(guests: readonly Guest[]): void;
  /**
   * The guest's usage from the last sample, when it was read during the guest's current run and
   * is at most `maxAgeMs` old at `nowMs`; undefined otherwise (the caller reads it live).
   */
  of(name: string, run: GuestRun, nowMs: number): GuestUsage | undefined;
}

interface Entry {
  usage: GuestUsage;
  sampledAtMs: number;
  run: GuestRun;
}

/**
 * `maxAgeMs` (default 30 s, three sampler intervals): older samples are not served, so a sampler
 * that stopped or hangs makes the list read live again rather than show figures of long ago.
 */
export function createLastUsage(options: { maxAgeMs?: number } = {}): LastUsage {
  const maxAgeMs = options.maxAgeMs ?? 30_000;
  let entries = new Map<string, Entry>();
  return {
    replace(guests) {
      const next = new Map<string, Entry>();
      for (const g of guests) {
        const usage = g.state.usage;
        // Only figures that say when they were read can say how old they are.
        const sampledAtMs = usage?.sampledAt === undefined ? Number.NaN : Date.parse(usage.sampledAt);
        if (!usage || Number.isNaN(sampledAtMs)) continue;
        next.set(g.name, { usage, sampledAtMs, run: { pid: g.state.pid, startedAt: g.state.startedAt } });
      }
      entries = next;
    },
    of(name, run, nowMs) {
      const e = entries.get(name);
      if (!e || e.run.pid !== run.pid || e.run.startedAt !== run.startedAt) return undefined;
      if (nowMs - e.sampledAtMs > maxAgeMs) return undefined;
      return { ...e.usage };
    },
  };
}
