import {
  type ClusterState,
  checkClusterState,
  type GuestState,
  LoadBook,
  type MoveRecord,
} from './cluster-state.ts';
import {
  checkPowerOptions,
  DEFAULT_POWER,
  type Evacuation,
  type PowerOn,
  type PowerOptions,
  planPower,
} from './power-manager.ts';
import {
  checkRebalanceOptions,
  DEFAULT_REBALANCE,
  type RebalanceOptions,
  rebalanceBook,
} from './rebalancer.ts';

/**
 * What a cluster policy decides in one cycle: evacuations (moves, then the member off), plain
 * moves, members to power on. The simulator runs ours and the baselines through this one shape;
 * the daemon's controller (later) turns it into operations and events.
 */
export interface PolicyDecision {
  evacuations: Evacuation[];
  moves: MoveRecord[];
  powerOn: PowerOn[];
  notes: string[];
}

/** A policy the simulator can run: ours, or a baseline. */
export interface ClusterPolicy {
  name: string;
  /** How often it decides. */
  intervalMs: number;
  /** How much history it reads. */
  historyMs: number;
  decide(state: ClusterState): PolicyDecision;
}

/** The self-managing cluster's knobs: the power manager's and the rebalancer's. */
export interface AutonomicOptions {
  rebalance?: Partial<RebalanceOptions>;
  power?: Partial<PowerOptions>;
  /** false: the rebalancer alone (a cluster without power management). */
  powerManagement?: boolean;
}

/**
 * Trivisor's policy: each cycle the power manager first (members on, evacuations), then the
 * rebalancer over the cluster as the evacuations leave it, with the members being emptied or
 * still booting closed to it. Pure: the same state gives the same decision.
 */
export function autonomicPolicy(options: AutonomicOptions = {}): ClusterPolicy {
  const rebalance: RebalanceOptions = { ...DEFAULT_REBALANCE, ...options.rebalance };
  const power: PowerOptions = { ...DEFAULT_POWER, ...options.power };
  const powerManagement = options.powerManagement ?? true;
  checkRebalanceOptions(rebalance);
  checkPowerOptions(power);
  return {
    name: 'trivisor',
    intervalMs: rebalance.intervalMs,
    historyMs: Math.max(rebalance.windowMs, power.lowWindowMs, power.highWindowMs),
    decide(state) {
      checkClusterState(state);
      const notes: string[] = [];
      let evacuations: Evacuation[] = [];
      let powerOn: PowerOn[] = [];
      let after: ClusterState = state;
      if (powerManagement) {
        const { plan } = planPower(state, power);
        evacuations = plan.evacuations;
        powerOn = plan.powerOn;
        notes.push(...plan.notes);
        const to = new Map<string, MoveRecord>();
        for (const e of evacuations) for (const m of e.moves) to.set(m.guest, m);
        if (to.size > 0) {
          after = {
            ...state,
            guests: state.guests.map((g): GuestState => {
              const m = to.get(g.id);
              return m ? { ...g, member: m.to, lastMove: { atMs: state.nowMs, from: m.from, to: m.to } } : g;
            }),
          };
        }
      }
      const closed = new Set(evacuations.map((e) => e.member));
      const book = new LoadBook(after, {
        windowSamples: Math.max(1, Math.round(rebalance.windowMs / state.intervalMs)),
        percentile: rebalance.percentile,
      });
      const r = rebalanceBook(book, state.nowMs, rebalance, closed);
      notes.push(...r.notes);
      return { evacuations, moves: r.moves, powerOn, notes };
    },
  };
}
