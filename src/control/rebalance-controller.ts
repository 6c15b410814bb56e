import type {
  ClusterMove,
  ClusterSettingsPatch,
  MemberPower,
  RebalanceResult,
} from '../api/cluster-schemas.ts';
import type {
  ClusterState,
  GuestState,
  LinkBandwidth,
  MemberState,
  MoveRecord,
} from '../autonomic/cluster-state.ts';
import { autonomicPolicy } from '../autonomic/controller.ts';
import type { Evacuation, PowerOn } from '../autonomic/power-manager.ts';
import { planRebalance } from '../autonomic/rebalancer.ts';
import { ETCD_VOTER } from '../cluster/membership.ts';
import { migrationDowntimeBudgetMs, type RebalanceSettings, rebalanceSettings } from '../core/config-keys.ts';
import { asTrivisorError, conflict, isTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { isPowerKey, type MemberPowerConfig, type PowerSettings, powerSettings } from '../core/power-keys.ts';
import type { GuestSpec, NetworkSpec, NicDevice } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { forwardPins, memberByClusterAddress, pinNote } from '../network/forward-pins.ts';
import type { GuestMover } from '../services/guest-move.ts';
import type { HistoryPoints, MetricsHistory } from '../services/metrics-history.ts';
import { guestSeries, hostSeries } from '../services/metrics-sampler.ts';
import { succeeded } from '../services/operation-service.ts';
import type { EventBus, OperationService } from '../services/types.ts';
import { compareByteOrder } from '../store/key-order.ts';
import type { KvStore } from '../store/kv.ts';
import { type MemberLoad, type RebalanceRequest, records, valuesOf } from '../store/records.ts';
import { readLinks } from './move-bandwidth.ts';
import { createPowerSteps, type PowerStepsDeps, powerMemberState } from './power-controller.ts';
import { watchSubset } from './watched-subset.ts';

/**
 * The rebalancer in the cluster (issue 14 §2, decision 0053): the pure policy of decision 0051
 * fed from what the members measure, its moves carried out by the guests' owners.
 *
 * - Every member publishes a compact window of its own guests' metric history into the store
 *   (`MemberLoad`: the maximum of each step, per guest), so that whichever member plans reads
 *   the whole cluster's load from the store alone.
 * - A cycle runs on one member at a time: it holds the election key on a lease of its own daemon
 *   for the cycle's length. Every `cluster.rebalance.interval` one member runs it (the first to
 *   take the key, after checking the last cycle's time again); `cluster rebalance` runs one now.
 * - Each planned move, one at a time, is asked of the guest's owner through a request record (or
 *   made here, when this member owns the guest); the owner moves it with the mover (vm live, ct
 *   and pvm cold) and records the outcome with its explanation, which `cluster moves` lists.
 */
export interface RebalanceControllerDeps {
  store: KvStore;
  hostName: string;
  history: Pick<MetricsHistory, 'query'>;
  mover: Pick<GuestMover, 'move'>;
  operations: Pick<OperationService, 'wait'>;
  /** The members as `cluster list` has them. */
  members: () => Promise<RebalanceMember[]>;
  events?: Pick<EventBus, 'publish'>;
  log: Logger;
  /** Wall clock, ms (default Date.now). */
  now?: () => number;
  /** How often it looks: publishes, carries out requests, checks whether a cycle is due (default 2 s). */
  tickMs?: number;
  /** The election lease's TTL (default 10 s). */
  leaseTtlSeconds?: number;
  /** Moves kept in the store (default 100). */
  keep?: number;
  /** Migration bandwidth between members, bytes/s (default 1 Gbit/s). */
  bandwidthBytesPerSecond?: number;
  /** How long a cycle waits for an owner to carry out one move (default 10 min). */
  moveTimeoutMs?: number;
  /**
   * A member's power driver (decision 0055). Without it power management is off on this member:
   * it plans no power-off nor power-on, and carries none out.
   */
  driverFor?: PowerStepsDeps['driverFor'];
}

/** A member as the rebalancer reads it. */
export interface RebalanceMember {
  name: string;
  status: string;
  cpu: { cpus: number } | null;
  memory: { totalBytes: number } | null;
  /** Its roles (`etcd-voter`: it votes in the cluster's etcd). */
  roles?: string[];
}

/** What the API asks of the rebalancer. */
export interface RebalanceService {
  settings(): Promise<Record<string, string>>;
  /** Validates every key first: a bad one changes nothing. */
  updateSettings(patch: ClusterSettingsPatch['config']): Promise<Record<string, string>>;
  /** The recorded moves, newest first. */
  moves(): Promise<ClusterMove[]>;
  /** One cycle now; `dryRun` plans only. */
  run(options: { dryRun: boolean }): Promise<RebalanceResult>;
}

export interface RebalanceController extends RebalanceService {
  start(): void;
  stop(): Promise<void>;
  /** One look (tests call it directly): publish, carry out requests, run a cycle when due. */
  pass(): Promise<void>;
  /** Publishes this member's load now. */
  publish(): Promise<void>;
}

/** The history's step a window is read in: 10 s up to 15 minutes, else the 5-minute steps. */
export const stepSecondsFor = (windowMs: number): number => (windowMs <= 15 * 60_000 ? 10 : 300);

/** A member's window of its guests' load from its metric history (the maximum of each step). */
export function memberLoadOf(options: {
  history: Pick<MetricsHistory, 'query'>;
  /** This member: its own series says for how much of the window it has been measuring. */
  hostName: string;
  guests: ReadonlyArray<Pick<GuestSpec, 'name' | 'model'>>;
  windowMs: number;
  nowMs: number;
}): MemberLoad {
  const step = stepSecondsFor(options.windowMs);
  const n = Math.max(1, Math.round(options.windowMs / 1000 / step));
  const range = step === 10 ? 'hour' : 'day';
  const host = options.history.query(hostSeries(options.hostName), range, options.nowMs);
  // The step in progress holds no sample until the sampler's next tick, and a window ending on it
  // would read every guest's demand there as 0 (half of a 20 s window). The window ends at the
  // last step this member sampled (its own series), when it has sampled any.
  const hostMemory = host.metrics.memoryBytes.maximum;
  let sampled = hostMemory.length;
  while (sampled > 0 && hostMemory[sampled - 1] === null) sampled--;
  const endTime = sampled > 0 ? host.times[sampled - 1] : undefined;
  const out: MemberLoad = {
    stepSeconds: step,
    endAt: 0,
    publishedAt: new Date(options.nowMs).toISOString(),
    measuredSteps: hostMemory
      .slice(0, sampled || hostMemory.length)
      .slice(-n)
      .filter((v) => v !== null).length,
    guests: {},
  };
  for (const g of options.guests) {
    const p: HistoryPoints = options.history.query(guestSeries(g.name), range, options.nowMs);
    const at = endTime === undefined ? -1 : p.times.lastIndexOf(endTime);
    const upTo = at >= 0 ? at + 1 : p.times.length;
    out.endAt = p.times[upTo - 1] ?? Math.floor(options.nowMs / 1000 / step) * step;
    const cpu = p.metrics.cpu.maximum.slice(0, upTo).slice(-n);
    const memoryBytes = p.metrics.memoryBytes.maximum.slice(0, upTo).slice(-n);
    // A guest that ran at no time in the window demands nothing: it is not published.
    if (cpu.every((v) => v === null) && memoryBytes.every((v) => v === null)) continue;
    out.guests[g.name] = { model: g.model, cpu, memoryBytes };
  }
  if (out.endAt === 0) out.endAt = endTime ?? Math.floor(options.nowMs / 1000 / step) * step;
  return out;
}

/**
 * What the rebalancer keeps of a guest's spec: what a plan (its member, model, the two keys of its
 * config a plan reads, its NICs for the port forwards that pin it) and a publication need. Kept
 * for every guest of the cluster from a watch (decision 0087, part 3), so that a cycle reads no
 * guest record.
 */
export type PlannedGuest = Pick<
  GuestSpec,
  'name' | 'model' | 'project' | 'location' | 'deleting' | 'devices' | 'config'
>;

/** The config keys a plan reads of a guest. */
const PLANNED_KEYS = ['migration.downtime_budget', 'cluster.evacuate'] as const;

/** The config of a guest that sets none of `PLANNED_KEYS` (most guests): one object for all. */
const NO_PLANNED_KEYS: Record<string, string> = Object.freeze({}) as Record<string, string>;

/**
 * What `PlannedGuest` keeps of a spec; the rest of the decoded record is left to the collector.
 * Trimmed (measured by bench/planned-guests-memory.ts, decision 0087): NICs only as the port
 * forwards' pins read them (network and fixed address; a NIC without one pins nothing), and one
 * empty config shared by the guests that set no planned key.
 */
export function plannedGuest(spec: GuestSpec): PlannedGuest {
  let config = NO_PLANNED_KEYS;
  for (const key of PLANNED_KEYS) {
    const value = spec.config[key];
    if (value === undefined) continue;
    if (config === NO_PLANNED_KEYS) config = {};
    config[key] = value;
  }
  let devices: Record<string, NicDevice> | undefined;
  for (const [name, d] of Object.entries(spec.devices ?? {})) {
    const address = d['ipv4.address'];
    if (d.type !== 'nic' || address === undefined) continue;
    devices ??= {};
    devices[name] = { type: 'nic', network: d.network, 'ipv4.address': address };
  }
  return {
    name: spec.name,
    model: spec.model,
    project: spec.project,
    location: spec.location,
    deleting: spec.deleting,
    config,
    ...(devices && { devices }),
  };
}

/** What a cluster state is built from: everything read from the store, and the clock. */
export interface StateInputs {
  nowMs: number;
  settings: RebalanceSettings;
  members: readonly RebalanceMember[];
  loads: ReadonlyMap<string, MemberLoad>;
  specs: readonly PlannedGuest[];
  moves: readonly ClusterMove[];
  bandwidthBytesPerSecond: number;
  /** The links finished moves measured (move-bandwidth.ts), by source then destination: they replace the assumed bandwidth. */
  links?: ReadonlyMap<string, Readonly<Record<string, LinkBandwidth>>>;
  /** Guests that must stay where they are, with the reason (port forwards, decision 0075). */
  pinned?: ReadonlyMap<string, string>;
  /** Power management's view (decision 0055): off and booting members take part as such. */
  power?: {
    settings: PowerSettings;
    records: ReadonlyMap<string, MemberPower>;
    configs: ReadonlyMap<string, MemberPowerConfig>;
  };
}

/**
 * The policies' `ClusterState` from the members' published loads (pure). Members that are not
 * Online, or whose load is missing or older than three steps, take no part (a member whose load
 * is not known could be taken for an empty one); their reasons are in `notes`. A step in which a
 * guest was not sampled counts as no demand (it was stopped), except the steps before its first
 * sample on this member (it moved in or started in the window), which repeat its measured steps:
 * a guest that runs now is not lighter for having run here only part of the window. Each guest's
 * last move comes from the moves recorded, for the cooldown and the no-return rule.
 */
export function buildClusterState(input: StateInputs): { state: ClusterState; notes: string[] } {
  const notes: string[] = [];
  const step = stepSecondsFor(input.settings.windowMs);
  const n = Math.max(1, Math.round(input.settings.windowMs / 1000 / step));
  const nowStep = Math.floor(input.nowMs / 1000 / step) * step;
  const members: MemberState[] = [];
  const voterOf = (m: RebalanceMember) => (m.roles?.includes(ETCD_VOTER) ? { etcdVoter: true } : {});
  const linksOf = (name: string) => {
    const links = input.links?.get(name);
    return links ? { links } : {};
  };
  const usable = new Map<string, MemberLoad>();
  for (const m of [...input.members].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const power = input.power
      ? powerMemberState({
          name: m.name,
          power: input.power.records.get(m.name),
          config: input.power.configs.get(m.name),
          settings: input.power.settings,
          nowMs: input.nowMs,
        })
      : undefined;
    if (power?.note) notes.push(power.note);
    if (power && power.part === 'none') continue;
    if (power && (power.part === 'off' || power.part === 'booting')) {
      // Off or booting: no load and no guests, only the capacity it would bring back.
      members.push({
        id: m.name,
        cpuCapacity: 0,
        powerOffsMs: [],
        bootDelayMs: 0,
        bandwidthBytesPerSecond: input.bandwidthBytesPerSecond,
        power: 'off',
        ...voterOf(m),
        ...power.fields,
      });
      continue;
    }
    if (m.status !== 'Online') {
      notes.push(`${m.name} is ${m.status}: it takes no part`);
      continue;
    }
    const load = input.loads.get(m.name);
    if (!load || load.stepSeconds !== step || load.endAt < nowStep - 3 * step) {
      notes.push(`${m.name} has published no recent load: it takes no part`);
      continue;
    }
    // A percentile over a few samples is noise: a member (a new cluster, a daemon whose history
    // was lost) waits until it has measured half the window.
    if (load.measuredSteps !== undefined && load.measuredSteps < Math.ceil(n / 2)) {
      notes.push(
        `${m.name} has measured ${load.measuredSteps} of the window's ${n} steps, fewer than half: it takes no part yet`,
      );
      continue;
    }
    if (!m.cpu || !(m.cpu.cpus > 0)) {
      notes.push(`${m.name} has not reported its CPUs: it takes no part`);
      continue;
    }
    usable.set(m.name, load);
    members.push({
      id: m.name,
      cpuCapacity: m.cpu.cpus,
      ...(m.memory && m.memory.totalBytes > 0 && { memoryBytes: m.memory.totalBytes }),
      power: 'on',
      powerOffsMs: [],
      bootDelayMs: 0,
      bandwidthBytesPerSecond: input.bandwidthBytesPerSecond,
      ...linksOf(m.name),
      ...voterOf(m),
      ...power?.fields,
    });
  }
  const lastMove = new Map<string, { atMs: number; from: string; to: string }>();
  for (const mv of input.moves) {
    if (mv.result !== 'moved') continue;
    const before = lastMove.get(mv.guest);
    if (!before || before.atMs < mv.atMs) lastMove.set(mv.guest, { atMs: mv.atMs, from: mv.from, to: mv.to });
  }
  // The window ends at the step every member has published: one that published a step later
  // would otherwise show the others' current step as empty.
  let end = nowStep;
  for (const load of usable.values()) end = Math.min(end, load.endAt);
  const specs = new Map(input.specs.map((s) => [s.name, s]));
  const pinnedOf = (name: string) => {
    const why = input.pinned?.get(name);
    return why === undefined ? {} : { pinned: why };
  };
  const guests: GuestState[] = [];
  for (const [member, load] of usable) {
    for (const name of Object.keys(load.guests).sort()) {
      const g = load.guests[name];
      const spec = specs.get(name);
      // Moved or deleted since the member published: the next publication tells.
      if (!g || !spec || spec.location !== member || spec.deleting) continue;
      const at = (series: Array<number | null>) => {
        const out = new Array<number>(n);
        let first = -1;
        for (let i = 0; i < n; i++) {
          const t = end - (n - 1 - i) * step;
          const j = series.length - 1 - (load.endAt - t) / step;
          const v = Number.isInteger(j) && j >= 0 ? series[j] : undefined;
          const known = typeof v === 'number' && Number.isFinite(v) && v >= 0;
          if (known && first < 0) first = i;
          out[i] = known ? v : 0;
        }
        // Before its first sample here the guest was elsewhere or not started: it runs now, so
        // those steps repeat what it was measured doing here, not nothing.
        for (let i = 0, k = n - first; first > 0 && i < first; i++) out[i] = out[first + (i % k)] as number;
        return out;
      };
      let budget: number | undefined;
      try {
        budget = migrationDowntimeBudgetMs(spec.config['migration.downtime_budget']);
      } catch {
        budget = undefined;
      }
      const last = lastMove.get(name);
      guests.push({
        id: name,
        model: spec.model,
        member,
        cpu: at(g.cpu),
        memoryBytes: at(g.memoryBytes),
        ...(budget !== undefined && { downtimeBudgetMs: budget }),
        ...(spec.config['cluster.evacuate'] === 'stop' && { stopOnEvacuation: true }),
        ...pinnedOf(name),
        ...(last && { lastMove: last }),
      });
    }
  }
  // The etcd voters, running or not (decision 0055): the power manager keeps a quorum of them on.
  const etcdVoters = input.members.filter((m) => m.roles?.includes(ETCD_VOTER)).length;
  return {
    state: {
      nowMs: input.nowMs,
      intervalMs: step * 1000,
      members,
      guests,
      ...(etcdVoters > 0 && { etcdVoters }),
    },
    notes,
  };
}

/**
 * The guests port forwards pin to their member (decision 0075), each with the planners' note.
 * Here a listen address is placed by the members' cluster addresses only (another member's own
 * interfaces are not known where the plan runs); the mover, on the guest's member, also knows
 * its own interfaces' and refuses such a move, which the move's record then says.
 */
export function pinnedGuests(
  specs: ReadonlyArray<Pick<GuestSpec, 'name' | 'project' | 'location' | 'devices'>>,
  networks: readonly NetworkSpec[],
  memberOf: (address: string) => string | undefined,
): Map<string, string> {
  const out = new Map<string, string>();
  if (!networks.some((n) => (n.forwards ?? []).length > 0)) return out;
  for (const spec of specs) {
    const pins = forwardPins(spec, networks, memberOf);
    if (pins.length > 0) out.set(spec.name, pinNote(spec.name, spec.location, pins));
  }
  return out;
}

/** The rebalancer's keys: the settings map less power management's (decision 0055). */
const rebalanceKeys = (config: Record<string, string>): Record<string, string> =>
  Object.fromEntries(Object.entries(config).filter(([k]) => !isPowerKey(k)));

const moveId = (m: MoveRecord) => `${String(Math.round(m.atMs)).padStart(15, '0')}-${m.guest}`;

export function createRebalanceController(deps: RebalanceControllerDeps): RebalanceController {
  const { store, hostName } = deps;
  const log = deps.log.child({ component: 'rebalance' });
  const now = deps.now ?? Date.now;
  const keep = deps.keep ?? 100;
  const ttl = deps.leaseTtlSeconds ?? 10;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  let cycling = false;
  let lastPublishMs = 0;
  const executing = new Set<string>();

  const power =
    deps.driverFor &&
    createPowerSteps({
      store,
      hostName,
      members: deps.members,
      driverFor: deps.driverFor,
      ...(deps.events && { events: deps.events }),
      log: deps.log,
      now,
    });
  const keysNow = async () => (await records.clusterSettings.at().get(store))?.value ?? {};
  const settingsNow = async () => rebalanceSettings(rebalanceKeys(await keysNow()));
  const powerNow = async () => powerSettings(await keysNow());

  // Every guest of the cluster as a plan and a publication need it, from a watch: listed once, at
  // the first publication or plan, then one decoded record per change. A publication (decision
  // 0080) and a cycle (decision 0087) read no guest record.
  const guests = watchSubset<PlannedGuest>({
    store,
    prefix: records.guest.prefix,
    pick: (kv) => plannedGuest(records.guest.decode(kv)),
    log,
  });

  async function publish(): Promise<void> {
    const settings = await settingsNow();
    await guests.ready();
    const mine = [...guests.picked()]
      .filter(([, g]) => g.location === hostName && !g.deleting)
      .sort(([a], [b]) => compareByteOrder(a, b))
      .map(([, g]) => ({ name: g.name, model: g.model }));
    const load = memberLoadOf({
      hostName,
      history: deps.history,
      guests: mine,
      windowMs: settings.windowMs,
      nowMs: now(),
    });
    await records.memberLoad.at(hostName).put(store, load);
    lastPublishMs = now();
  }

  /** Moves the guest (this member owns it) and records the outcome; never throws. */
  async function execute(request: RebalanceRequest): Promise<ClusterMove> {
    const m = request.move;
    let error: string | undefined;
    try {
      const op = await deps.mover.move(m.guest, {
        target: m.to,
        live: m.how === 'live',
        reason: 'rebalancing',
      });
      await succeeded(deps.operations, op);
    } catch (e) {
      error = asTrivisorError(e).message;
    }
    const done: ClusterMove = {
      ...m,
      result: error === undefined ? 'moved' : 'failed',
      ...(error !== undefined && { error }),
      finishedAt: new Date(now()).toISOString(),
    };
    await store.txn({
      compare: [],
      success: [
        records.clusterMove.at(moveId(m)).putOp(done),
        { type: 'delete', key: records.rebalanceRequest.key(m.guest) },
      ],
    });
    if (error === undefined) log.info({ guest: m.guest, to: m.to }, m.summary);
    else log.warn({ guest: m.guest, to: m.to, err: error }, 'a rebalancing move failed');
    deps.events?.publish({
      type: 'lifecycle',
      action: error === undefined ? 'cluster-move' : 'cluster-move-failed',
      source: `/1.0/guests/${m.guest}`,
      location: hostName,
      metadata: { ...done },
    });
    // The oldest beyond the last `keep` go.
    const all = await store.list(records.clusterMove.prefix);
    for (const kv of all.kvs.slice(0, Math.max(0, all.kvs.length - keep))) await store.delete(kv.key);
    return done;
  }

  /** Requests for guests this member owns, carried out one at a time. */
  async function carryOut(): Promise<void> {
    const requests = await records.rebalanceRequest.list(store);
    for (const { key, value } of requests.items) {
      if (stopped) return;
      const name = records.rebalanceRequest.nameOf(key);
      if (executing.has(name)) continue;
      const spec = await records.guest.at(name).get(store);
      if (spec?.value.location !== hostName) {
        // Gone, or its owner is not the one planned: the request is void.
        if (!spec || spec.value.location !== value.move.from) await store.delete(key);
        continue;
      }
      executing.add(name);
      try {
        await execute(value);
      } finally {
        executing.delete(name);
      }
    }
  }

  // The election: the key on a lease of this daemon's own, held for the cycle's length.
  let lease: number | undefined;
  async function elect(): Promise<string | undefined> {
    lease ??= (await store.grantLease(ttl)).id;
    const r = await store.txn({
      compare: [{ key: keys.rebalanceLeader, target: 'createRevision', op: '=', value: 0 }],
      success: [{ type: 'put', key: keys.rebalanceLeader, value: hostName, lease }],
    });
    if (r.succeeded) return undefined;
    const holder = (await store.get(keys.rebalanceLeader))?.value;
    return holder === hostName ? undefined : (holder ?? 'another member');
  }
  async function keepElected(): Promise<void> {
    if (lease !== undefined) await store.keepAlive(lease);
  }
  async function resign(): Promise<void> {
    const held = lease;
    lease = undefined;
    if (held !== undefined) await store.revokeLease(held).catch(() => {});
  }

  /** The first of `names` that is not Online (or not a member any more), with its status. */
  async function notOnline(names: string[]): Promise<{ name: string; status: string } | undefined> {
    const members = await deps.members();
    for (const name of names) {
      const status = members.find((x) => x.name === name)?.status ?? 'not a member';
      if (status !== 'Online') return { name, status };
    }
    return undefined;
  }

  /** Asks the owner to move the guest and waits for the outcome. */
  async function carry(m: MoveRecord): Promise<ClusterMove> {
    const failed = (error: string): ClusterMove => ({
      ...m,
      result: 'failed',
      error,
      finishedAt: new Date(now()).toISOString(),
    });
    // Neither end may be down: a member that is not Online cannot carry a move out nor take a
    // guest, and waiting for it would hold the cycle for the whole timeout.
    const down = await notOnline([m.from, m.to]);
    if (down)
      return failed(`Member ${down.name} is ${down.status}: ${m.guest} was not moved ${m.from} → ${m.to}`);
    const request: RebalanceRequest = { move: m, requestedBy: hostName, at: new Date(now()).toISOString() };
    if (m.from === hostName) return execute(request);
    const ref = records.rebalanceRequest.at(m.guest);
    const r = await store.txn({ compare: [ref.absent()], success: [ref.putOp(request)] });
    if (!r.succeeded) throw conflict(`A move of ${m.guest} is already asked for`);
    const deadline = now() + (deps.moveTimeoutMs ?? 10 * 60_000);
    let looks = 0;
    while (now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await keepElected();
      if (await ref.get(store)) {
        // The owner going down meanwhile ends the wait (checked every few seconds: members() is a list).
        const gone = ++looks % 6 === 0 ? await notOnline([m.from]) : undefined;
        if (gone) {
          await store.delete(ref.key);
          return failed(
            `Member ${gone.name} went ${gone.status} before it moved ${m.guest}: the move was dropped`,
          );
        }
        continue;
      }
      const done = await records.clusterMove.at(moveId(m)).get(store);
      if (done) return done.value;
      return {
        ...m,
        result: 'failed',
        error: 'The request was dropped by its owner',
        finishedAt: new Date(now()).toISOString(),
      };
    }
    await store.delete(ref.key);
    return {
      ...m,
      result: 'failed',
      error: `${m.from} did not carry the move out in time`,
      finishedAt: new Date(now()).toISOString(),
    };
  }

  async function plan(settings: RebalanceSettings) {
    const [members, loads, , moves, pw, links, networks, memberRecords] = await Promise.all([
      deps.members(),
      records.memberLoad.list(store),
      guests.ready(),
      records.clusterMove.list(store),
      power ? powerNow() : undefined,
      readLinks(store),
      records.network.list(store),
      records.member.list(store),
    ]);
    const managed =
      power && pw?.settings.enabled
        ? { settings: pw.settings, configs: pw.members, records: await power.read() }
        : undefined;
    const specs = [...guests.picked().values()];
    const { state, notes } = buildClusterState({
      ...(managed && { power: managed }),
      nowMs: now(),
      settings,
      members,
      loads: new Map(loads.items.map((l) => [records.memberLoad.nameOf(l.key), l.value])),
      specs,
      moves: valuesOf(moves),
      bandwidthBytesPerSecond: deps.bandwidthBytesPerSecond ?? 125_000_000,
      links,
      pinned: pinnedGuests(
        specs,
        valuesOf(networks),
        memberByClusterAddress(valuesOf(memberRecords).map((m) => ({ name: m.name, address: m.address }))),
      ),
    });
    const rebalance = {
      intervalMs: settings.intervalMs,
      windowMs: settings.windowMs,
      percentile: settings.percentile,
      targetImbalance: settings.targetImbalance,
      aggressiveness: settings.aggressiveness,
      cooldownMs: settings.cooldownMs,
    };
    const p = planRebalance(state, rebalance);
    if (!managed) {
      return {
        ...p,
        notes: [...notes, ...p.notes],
        evacuations: [] as Evacuation[],
        powerOn: [] as PowerOn[],
      };
    }
    // Power management on (decision 0055): decision 0051's whole policy, the power manager first.
    const s = managed.settings;
    const d = autonomicPolicy({
      rebalance,
      power: {
        lowWindowMs: s.lowWindowMs,
        highWindowMs: s.highWindowMs,
        lowLoad: s.lowLoad,
        powerOnAt: s.powerOnAt,
        powerOffBelow: s.powerOffBelow,
        minOnMs: s.minOnMs,
        maxCyclesPerDay: s.maxCyclesPerDay,
        // One member emptied at a time: each is a real evacuation whose outcome is waited for.
        maxEvacuationsPerCycle: 1,
      },
    }).decide(state);
    return {
      imbalanceBefore: p.imbalanceBefore,
      imbalanceAfter:
        d.moves.length > 0 ? (d.moves.at(-1)?.imbalanceAfter ?? p.imbalanceAfter) : p.imbalanceBefore,
      moves: d.moves,
      notes: [...notes, ...d.notes],
      evacuations: d.evacuations,
      powerOn: d.powerOn,
      configs: managed.configs,
    };
  }

  /** A cycle under the election key; `periodic` cycles run only when one is due. */
  async function cycle(options: {
    dryRun: boolean;
    periodic: boolean;
  }): Promise<RebalanceResult | undefined> {
    const settings = await settingsNow();
    if (options.dryRun) {
      const p = await plan(settings);
      return { dryRun: true, ...resultOf(p), moved: [] };
    }
    if (cycling) throw conflict(`A rebalancing cycle is running on ${hostName}: try again when it ends`);
    cycling = true;
    try {
      const holder = await elect();
      if (holder !== undefined) {
        if (options.periodic) return undefined;
        throw conflict(`A rebalancing cycle is running on ${holder}: try again when it ends`);
      }
      if (options.periodic && !(await due(settings))) return undefined;
      await store.put(keys.rebalanceLast, new Date(now()).toISOString());
      const p = await plan(settings);
      if (power && 'configs' in p && p.configs) {
        for (const on of p.powerOn) {
          const config = p.configs.get(on.member);
          if (config) await power.powerOn(on, config);
        }
        for (const e of p.evacuations) {
          const config = p.configs.get(e.member);
          if (config) await power.evacuate(e, config);
        }
      }
      const moved: ClusterMove[] = [];
      // A periodic cycle with the rebalancer off runs for power management only.
      for (const m of options.periodic && !settings.enabled ? [] : p.moves) {
        if (stopped) break;
        const done = await carry(m);
        moved.push(done);
        // The rest of the plan assumed this move: it waits for the next cycle.
        if (done.result !== 'moved') break;
      }
      return { dryRun: false, ...resultOf(p), moved };
    } finally {
      cycling = false;
      await resign();
    }
  }

  const resultOf = (p: Awaited<ReturnType<typeof plan>>) => ({
    imbalanceBefore: p.imbalanceBefore,
    imbalanceAfter: p.imbalanceAfter,
    planned: p.moves,
    notes: p.notes,
    ...((p.evacuations.length > 0 || p.powerOn.length > 0) && {
      power: {
        powerOn: p.powerOn.map((o) => ({ member: o.member, reason: o.reason })),
        powerOff: p.evacuations.map((e) => ({ member: e.member, reason: e.reason, moves: e.moves })),
      },
    }),
  });

  const powerEnabled = async () => power !== undefined && (await powerNow()).settings.enabled;

  async function due(settings: RebalanceSettings): Promise<boolean> {
    if (!settings.enabled && !(await powerEnabled())) return false;
    const last = Date.parse((await store.get(keys.rebalanceLast))?.value ?? '');
    if (now() - last < settings.intervalMs) return false;
    // Listing the members is the dearer read: only once a cycle would otherwise be due.
    return (await deps.members()).length >= 2;
  }

  /** Members on their way off or back on are taken a step further by one member at a time. */
  async function advancePower(): Promise<void> {
    if (!power || cycling || !(await power.pending())) return;
    cycling = true;
    try {
      if ((await elect()) !== undefined) return;
      await power.advance((await powerNow()).members);
    } finally {
      cycling = false;
      await resign();
    }
  }

  async function pass(): Promise<void> {
    const settings = await settingsNow().catch(() => undefined);
    const publishEvery = Math.min(60_000, stepSecondsFor(settings?.windowMs ?? 3_600_000) * 1000);
    if (now() - lastPublishMs >= publishEvery) await publish();
    await carryOut();
    await advancePower();
    if (settings && !cycling && (await due(settings))) await cycle({ dryRun: false, periodic: true });
  }

  const tick = () => {
    if (stopped) return;
    running = pass()
      .catch((e: unknown) => {
        if (!(isTrivisorError(e) && e.code === 'Conflict')) {
          log.warn({ err: asTrivisorError(e).message }, 'rebalance pass failed');
        }
      })
      .finally(() => {
        running = undefined;
        if (!stopped) timer = setTimeout(tick, deps.tickMs ?? 2000);
        timer?.unref();
      });
  };

  return {
    start: tick,
    async stop() {
      stopped = true;
      guests.stop();
      clearTimeout(timer);
      await running;
      await resign();
    },
    pass,
    publish,
    settings: keysNow,
    async updateSettings(patch) {
      const ref = records.clusterSettings.at();
      const before = await ref.get(store);
      const next = { ...(before?.value ?? {}) };
      for (const [k, v] of Object.entries(patch)) {
        if (v === null) delete next[k];
        else next[k] = v;
      }
      rebalanceSettings(rebalanceKeys(next));
      powerSettings(next);
      await ref.put(store, next, { ifModRevision: before?.modRevision ?? 0 });
      return next;
    },
    async moves() {
      return valuesOf(await records.clusterMove.list(store)).reverse();
    },
    async run({ dryRun }) {
      return (await cycle({ dryRun, periodic: false })) as RebalanceResult;
    },
  };
}
