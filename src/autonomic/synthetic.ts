import type { ConfiguredLimits } from './baselines.ts';
import type { GuestModel } from './cluster-state.ts';
import type { Scenario, SimGuest, SimMember } from './simulator.ts';

/**
 * Synthetic clusters for the unit tests and the benchmark's quick mode (which must not need the
 * traces, kept outside the repository): guests whose CPU follows a day curve with its own phase
 * and seeded noise, placed round-robin. Deterministic for the same options.
 */
export interface SyntheticOptions {
  members: number;
  guests: number;
  samples: number;
  seed: number;
  /** Cores of each member. */
  memberCpu?: number;
  /** Each guest's configured cores; its use stays within them. */
  guestCpu?: number;
  /** Mean use as a share of the guest's cores. */
  meanLoad?: number;
  intervalMs?: number;
  /** The model of guest i. */
  model?: (i: number) => GuestModel;
  /** The member guest i starts on (round-robin by default). */
  memberOf?: (i: number) => number;
  bootDelayMs?: number;
}

/** mulberry32. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function syntheticScenario(o: SyntheticOptions): {
  scenario: Scenario;
  limits: Map<string, ConfiguredLimits>;
} {
  const rnd = seeded(o.seed);
  const memberCpu = o.memberCpu ?? 16;
  const guestCpu = o.guestCpu ?? 2;
  const mean = o.meanLoad ?? 0.3;
  const intervalMs = o.intervalMs ?? 300_000;
  const perDay = Math.round(86_400_000 / intervalMs);
  const members: SimMember[] = Array.from({ length: o.members }, (_, i) => ({
    id: `m${i + 1}`,
    cpuCapacity: memberCpu,
    bootDelayMs: o.bootDelayMs ?? intervalMs,
    bandwidthBytesPerSecond: 125_000_000,
  }));
  const limits = new Map<string, ConfiguredLimits>();
  const guests: SimGuest[] = Array.from({ length: o.guests }, (_, i) => {
    const phase = rnd() * 2 * Math.PI;
    const amplitude = 0.5 + rnd() * 0.5;
    const cpu = new Float64Array(o.samples);
    for (let t = 0; t < o.samples; t++) {
      const day = 1 + amplitude * Math.sin((2 * Math.PI * t) / perDay + phase);
      const noise = 0.7 + 0.6 * rnd();
      cpu[t] = Math.min(guestCpu, guestCpu * mean * day * noise);
    }
    const id = `g${String(i + 1).padStart(3, '0')}`;
    limits.set(id, { cpu: guestCpu });
    return {
      id,
      model: o.model?.(i) ?? 'vm',
      member: `m${(o.memberOf?.(i) ?? i % o.members) + 1}`,
      cpu,
      moveBytes: 2 * 2 ** 30,
    };
  });
  return { scenario: { intervalMs, samples: o.samples, members, guests }, limits };
}
