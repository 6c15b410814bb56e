import { invalidArgument } from '../core/errors.ts';
import type { ClusterState, GuestModel, GuestState, MemberState, PowerState } from './cluster-state.ts';
import type { ClusterPolicy } from './controller.ts';
import { concludeEvacuation } from './power-manager.ts';
import { seeded } from './synthetic.ts';

/**
 * The simulator (issue 14 §6, decision 0051): members that hold no real guests, guests that
 * replay a trace, a fake clock stepping one sample at a time. At each step the load of the
 * sample is measured on the placement as it stands (overload, host time), then the policy is
 * given the history up to and including that sample and its decision is carried out: moves
 * (each may fail, from a seeded generator), evacuations (a failure aborts it, the member stays
 * on), power-ons (ready after the member's boot delay). A policy never sees the future.
 */

/** A simulated guest: its whole trace, and the member it starts on. */
export interface SimGuest {
  id: string;
  model: GuestModel;
  member: string;
  cpu: Float64Array;
  memoryBytes?: Float64Array;
  moveBytes?: number;
  downtimeBudgetMs?: number;
}

/** A simulated member. */
export interface SimMember {
  id: string;
  cpuCapacity: number;
  memoryBytes?: number;
  bootDelayMs: number;
  bandwidthBytesPerSecond: number;
  /** Powered on at the start (default). */
  on?: boolean;
}

/** A cluster to replay. */
export interface Scenario {
  intervalMs: number;
  samples: number;
  members: SimMember[];
  guests: SimGuest[];
}

export interface SimOptions {
  /** Seeds the generator of migration failures. */
  seed?: number;
  /** The chance that one migration fails. */
  migrationFailureRate?: number;
  /** Keep every decision as a line of the log (for determinism checks and debugging). */
  keepLog?: boolean;
  /** Replay only the first `samples` samples. */
  samples?: number;
}

/** What a run measured. */
export interface SimResult {
  policy: string;
  samples: number;
  /** Hours members were on or booting. */
  hostHours: number;
  /** Of the intervals members were on, the share whose demand reached 100% of CPU or memory. */
  slatah: number;
  overloadedHostIntervals: number;
  activeHostIntervals: number;
  migrations: number;
  liveMigrations: number;
  coldMigrations: number;
  failedMigrations: number;
  abortedEvacuations: number;
  powerOns: number;
  powerOffs: number;
  /** The most power-offs of one member within any 24 h. */
  maxCyclesPerMemberPerDay: number;
  /** Moves that sent a guest back to the member it had just left. */
  returnMoves: number;
  /** Guest downtime caused by moves, seconds. */
  downtimeSeconds: number;
  /** Members on, first and last sample. */
  membersOnAtStart: number;
  membersOnAtEnd: number;
  minMembersOn: number;
  maxMembersOn: number;
  /** Where each guest is at the end. */
  placement: Record<string, string>;
  /** Members on at each sample. */
  membersOn: number[];
  /** Members on or booting at each sample: what host-hours count, sample by sample. */
  membersPowered: number[];
  /** Wall time of the policy's decisions, ms. */
  decideMs: number;
  log: string[];
}

interface LiveMember {
  spec: SimMember;
  power: PowerState;
  readyAtMs?: number;
  poweredOnAtMs?: number;
  powerOffsMs: number[];
}

interface LiveGuest {
  spec: SimGuest;
  member: string;
  lastMove?: { atMs: number; from: string; to: string };
}

/** Replays `scenario` under `policy`. */
export function simulate(scenario: Scenario, policy: ClusterPolicy, options: SimOptions = {}): SimResult {
  const samples = Math.min(options.samples ?? scenario.samples, scenario.samples);
  const step = scenario.intervalMs;
  if (!(step > 0)) throw invalidArgument('The scenario interval must be above 0');
  const every = Math.max(1, Math.round(policy.intervalMs / step));
  const history = Math.max(1, Math.round(policy.historyMs / step));
  const rnd = seeded(options.seed ?? 1);
  const failureRate = options.migrationFailureRate ?? 0;
  const members = new Map<string, LiveMember>();
  for (const m of scenario.members) {
    if (members.has(m.id)) throw invalidArgument(`Member ${m.id} appears twice in the scenario`);
    members.set(m.id, { spec: m, power: m.on === false ? 'off' : 'on', powerOffsMs: [] });
  }
  const guests: LiveGuest[] = scenario.guests.map((g) => {
    if (g.cpu.length < samples) {
      throw invalidArgument(`Guest ${g.id} has ${g.cpu.length} samples where the scenario has ${samples}`);
    }
    const m = members.get(g.member);
    if (!m) throw invalidArgument(`Guest ${g.id} starts on ${g.member}, which is not a member`);
    if (m.power !== 'on') throw invalidArgument(`Guest ${g.id} starts on ${g.member}, which is off`);
    return { spec: g, member: g.member };
  });
  const byId = new Map(guests.map((g) => [g.spec.id, g]));
  const memberList = [...members.values()];
  const r: SimResult = {
    policy: policy.name,
    samples,
    hostHours: 0,
    slatah: 0,
    overloadedHostIntervals: 0,
    activeHostIntervals: 0,
    migrations: 0,
    liveMigrations: 0,
    coldMigrations: 0,
    failedMigrations: 0,
    abortedEvacuations: 0,
    powerOns: 0,
    powerOffs: 0,
    maxCyclesPerMemberPerDay: 0,
    returnMoves: 0,
    downtimeSeconds: 0,
    membersOnAtStart: memberList.filter((m) => m.power === 'on').length,
    membersOnAtEnd: 0,
    minMembersOn: Number.POSITIVE_INFINITY,
    maxMembersOn: 0,
    placement: {},
    membersOn: [],
    membersPowered: [],
    decideMs: 0,
    log: [],
  };
  const log = (line: string) => {
    if (options.keepLog) r.log.push(line);
  };
  const cpuNow = new Map<string, number>();
  const memNow = new Map<string, number>();

  const move = (
    id: string,
    from: string,
    to: string,
    nowMs: number,
    how: 'live' | 'cold',
    downtimeMs: number,
  ) => {
    const g = byId.get(id);
    const target = members.get(to);
    if (!g || g.member !== from || !target || target.power !== 'on') {
      return `the move of ${id} ${from} → ${to} does not fit the cluster as it is`;
    }
    if (failureRate > 0 && rnd() < failureRate) {
      r.failedMigrations++;
      return 'simulated migration failure';
    }
    if (g.lastMove?.from === to) r.returnMoves++;
    g.member = to;
    g.lastMove = { atMs: nowMs, from, to };
    r.migrations++;
    if (how === 'live') r.liveMigrations++;
    else r.coldMigrations++;
    r.downtimeSeconds += downtimeMs / 1000;
    return undefined;
  };

  for (let i = 0; i < samples; i++) {
    const nowMs = i * step;
    for (const m of memberList) {
      if (m.power === 'booting' && (m.readyAtMs as number) <= nowMs) {
        m.power = 'on';
        log(`${nowMs} ${m.spec.id} ready`);
      }
    }
    // Measure this sample on the placement as it stands.
    cpuNow.clear();
    memNow.clear();
    for (const g of guests) {
      cpuNow.set(g.member, (cpuNow.get(g.member) ?? 0) + (g.spec.cpu[i] as number));
      if (g.spec.memoryBytes)
        memNow.set(g.member, (memNow.get(g.member) ?? 0) + (g.spec.memoryBytes[i] as number));
    }
    let on = 0;
    let powered = 0;
    for (const m of memberList) {
      if (m.power === 'off') continue;
      powered++;
      r.hostHours += step / 3_600_000;
      if (m.power !== 'on') continue;
      on++;
      r.activeHostIntervals++;
      const c = (cpuNow.get(m.spec.id) ?? 0) / m.spec.cpuCapacity;
      const b = m.spec.memoryBytes ? (memNow.get(m.spec.id) ?? 0) / m.spec.memoryBytes : 0;
      if (c >= 1 - 1e-9 || b >= 1 - 1e-9) r.overloadedHostIntervals++;
    }
    r.membersOn.push(on);
    r.membersPowered.push(powered);
    r.minMembersOn = Math.min(r.minMembersOn, on);
    r.maxMembersOn = Math.max(r.maxMembersOn, on);
    if (i % every !== 0) continue;

    const from = Math.max(0, i + 1 - history);
    const state: ClusterState = {
      nowMs,
      intervalMs: step,
      members: memberList.map((m): MemberState => {
        const s: MemberState = {
          id: m.spec.id,
          cpuCapacity: m.spec.cpuCapacity,
          power: m.power,
          powerOffsMs: m.powerOffsMs,
          bootDelayMs: m.spec.bootDelayMs,
          bandwidthBytesPerSecond: m.spec.bandwidthBytesPerSecond,
        };
        if (m.spec.memoryBytes !== undefined) s.memoryBytes = m.spec.memoryBytes;
        if (m.readyAtMs !== undefined) s.readyAtMs = m.readyAtMs;
        if (m.poweredOnAtMs !== undefined) s.poweredOnAtMs = m.poweredOnAtMs;
        return s;
      }),
      guests: guests.map((g): GuestState => {
        const s: GuestState = {
          id: g.spec.id,
          model: g.spec.model,
          member: g.member,
          cpu: g.spec.cpu.subarray(from, i + 1),
        };
        if (g.spec.memoryBytes) s.memoryBytes = g.spec.memoryBytes.subarray(from, i + 1);
        if (g.spec.moveBytes !== undefined) s.moveBytes = g.spec.moveBytes;
        if (g.spec.downtimeBudgetMs !== undefined) s.downtimeBudgetMs = g.spec.downtimeBudgetMs;
        if (g.lastMove) s.lastMove = g.lastMove;
        return s;
      }),
    };
    const t0 = performance.now();
    const d = policy.decide(state);
    r.decideMs += performance.now() - t0;

    for (const e of d.evacuations) {
      const failed: Array<{ guest: string; error: string }> = [];
      for (const mv of e.moves) {
        const error = move(mv.guest, mv.from, mv.to, nowMs, mv.how, mv.downtimeMs);
        log(`${nowMs} evacuate ${mv.guest} ${mv.from}>${mv.to}${error ? ` failed: ${error}` : ''}`);
        // A failed migration aborts the evacuation: the rest are not tried.
        if (error) {
          failed.push({ guest: mv.guest, error });
          break;
        }
      }
      const verdict = concludeEvacuation(e, { failed });
      const m = members.get(e.member) as LiveMember;
      const empty = !guests.some((g) => g.member === e.member);
      if (verdict.kind === 'power-off' && empty && m.power === 'on') {
        m.power = 'off';
        m.powerOffsMs.push(nowMs);
        r.powerOffs++;
        const cycles = m.powerOffsMs.filter((t) => t > nowMs - 86_400_000).length;
        r.maxCyclesPerMemberPerDay = Math.max(r.maxCyclesPerMemberPerDay, cycles);
        log(`${nowMs} off ${e.member}`);
      } else {
        r.abortedEvacuations++;
        log(`${nowMs} abort ${e.member}: ${verdict.reason}`);
      }
    }
    for (const mv of d.moves) {
      const error = move(mv.guest, mv.from, mv.to, nowMs, mv.how, mv.downtimeMs);
      log(`${nowMs} ${mv.reason} ${mv.guest} ${mv.from}>${mv.to}${error ? ` failed: ${error}` : ''}`);
    }
    for (const p of d.powerOn) {
      const m = members.get(p.member);
      if (m?.power !== 'off') continue;
      m.power = m.spec.bootDelayMs > 0 ? 'booting' : 'on';
      m.readyAtMs = nowMs + m.spec.bootDelayMs;
      m.poweredOnAtMs = nowMs;
      r.powerOns++;
      log(`${nowMs} on ${p.member}`);
    }
  }
  for (const g of guests) r.placement[g.spec.id] = g.member;
  r.membersOnAtEnd = memberList.filter((m) => m.power !== 'off').length;
  r.slatah = r.activeHostIntervals === 0 ? 0 : r.overloadedHostIntervals / r.activeHostIntervals;
  if (!Number.isFinite(r.minMembersOn)) r.minMembersOn = 0;
  return r;
}
