import { asTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type {
  GuestNetworkObservation,
  GuestSpec,
  GuestStatus,
  Model,
  NicDevice,
  ObservedNic,
  ProcessIdentity,
} from '../core/types.ts';
import type { GuestDriver, GuestNicView } from '../drivers/guest-driver.ts';
import type { Logger } from '../host/logger.ts';
import { sameIdentity } from '../host/proc-stat.ts';
import type { GuestNetworking } from '../network/guest-networking.ts';
import type { EventBus } from '../services/types.ts';
import { type KeyValue, type KvStore, readTogether } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { createInformer, type Informer } from './informer.ts';
import { diagnoseNic, interfaceOf, type NicProblem } from './nic-diagnosis.ts';

export interface NicObserverDeps {
  store: KvStore;
  drivers: Partial<Record<Model, GuestDriver>>;
  networking: Pick<GuestNetworking, 'hostView' | 'leases'>;
  events: EventBus;
  log: Logger;
  hostName: string;
  /** How often a settled guest is looked at again (the most an address change takes to show). */
  refreshMs?: number;
  /** How often a guest is looked at while it boots or while a problem is being confirmed. */
  fastMs?: number;
  /** How long a problem must last before it is a warning (a hot-plug, a DHCP renewal pass by). */
  settleMs?: number;
  /** After a start, how long a NIC may lack an address or be down before that is a warning (DHCP takes a while). */
  graceMs?: number;
  /** How long a guest's agent may take to answer. */
  agentTimeoutMs?: number;
  /** Guests observed at once. */
  concurrency?: number;
  now?: () => number;
}

/**
 * Watches what this host's running guests hold on their NICs (decision 15): each guest's own
 * view (ct: its network namespace through /proc; vm, pvm: a probe through its agent), its host
 * ports' carrier, and its engine's log; records addresses and warnings at `keys.guestNetwork`
 * when they change, and publishes `guest-nic-warning`, `guest-nic-recovered` and
 * `guest-addresses-changed` events. Lists stay cheap: they read the record, never the guest.
 */
export interface NicObserver {
  start(): Promise<void>;
  /** Stops looking; waits for observations in flight. */
  stop(): Promise<void>;
  /** Runs one pass now and waits for the observations it started (tests). */
  tick(): Promise<void>;
}

interface Tracked {
  /** Spec and status as the last full pass read them. */
  spec: GuestSpec;
  status: GuestStatus;
  process: ProcessIdentity;
  /** Problems seen but not yet reported, by NIC: kind and since when. */
  pending: Map<string, { kind: string; since: number }>;
  record: GuestNetworkObservation | undefined;
  nextAt: number;
  inFlight: boolean;
  /** When each NIC's grace period began: the guest's start, or when a hot-plugged NIC was first seen. */
  nicSince: Map<string, number>;
}

const nicsOf = (spec: GuestSpec): Array<[string, NicDevice]> =>
  Object.entries(spec.devices ?? {}).filter(([, d]) => d.type === 'nic');

/** The record without its timestamp, for telling whether anything changed. */
const essence = (r: GuestNetworkObservation | undefined) =>
  r === undefined ? '' : JSON.stringify({ process: r.process, nics: r.nics });

/** Guests read a transaction in an incremental pass: three keys each, under etcd's 128 operations. */
const CHANGED_PER_READ = 40;
/** More changed guests than this (a mass start, a daemon coming back): one full pass lists them all instead. */
const FULL_ABOVE = 400;

export function createNicObserver(deps: NicObserverDeps): NicObserver {
  const { store, drivers, networking, events, hostName } = deps;
  const log = deps.log.child({ component: 'nic-observer' });
  const refreshMs = deps.refreshMs ?? 5000;
  const fastMs = deps.fastMs ?? 1000;
  const settleMs = deps.settleMs ?? 2000;
  const graceMs = deps.graceMs ?? 30_000;
  const agentTimeoutMs = deps.agentTimeoutMs ?? 10_000;
  const concurrency = deps.concurrency ?? 8;
  const now = deps.now ?? Date.now;

  const tracked = new Map<string, Tracked>();
  const inFlight = new Set<Promise<void>>();
  /** Guests waiting for a free observation slot, in the order they became due. */
  const queue: Tracked[] = [];
  let busy = 0;
  const informers: Array<Informer<true>> = [];
  /**
   * Guests whose spec, status or observation changed since the last pass (a guest started,
   * stopped, got a NIC, moved, was deleted): the next pass reads those alone (decision 0080).
   */
  const changed = new Set<string>();
  /** The next pass lists every guest: at start, and after an informer listed again (it may have missed changes). */
  let full = true;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  const publish = (action: string, spec: GuestSpec, metadata: Record<string, unknown>) =>
    events.publish({
      type: 'lifecycle',
      project: spec.project ?? 'default',
      action,
      source: `/1.0/guests/${spec.name}`,
      metadata: { name: spec.name, model: spec.model, ...metadata },
    });

  /** Asks the guest; undefined view with a reason when it cannot be asked. */
  async function guestView(
    spec: GuestSpec,
    driver: GuestDriver,
    process: ProcessIdentity,
  ): Promise<{ view: GuestNicView } | { view: undefined; why: string; expected: boolean } | 'not-running'> {
    try {
      return { view: await driver.observeNics(spec, { process, timeoutMs: agentTimeoutMs }) };
    } catch (e) {
      const err = asTrivisorError(e);
      if (err.code === 'FailedPrecondition') return 'not-running';
      return { view: undefined, why: err.message, expected: err.code === 'NotSupported' };
    }
  }

  async function observe(spec: GuestSpec, status: GuestStatus, t: Tracked): Promise<void> {
    const driver = drivers[spec.model];
    if (!driver || !status.process) return;
    const [ports, asked] = await Promise.all([
      networking.hostView(spec),
      guestView(spec, driver, status.process),
    ]);
    // Stopped or frozen meanwhile: the guest controller notices; nothing to say about its NICs.
    if (asked === 'not-running') return;
    const leases = asked.view ? {} : await networking.leases(spec).catch(() => ({}));
    const at = now();
    const startedAt = status.startedAt ? Date.parse(status.startedAt) : 0;
    const nics: Record<string, ObservedNic> = {};
    let unsettled = false;
    let booting = false;
    for (const [nic, device] of nicsOf(spec)) {
      const port = ports[nic];
      if (!port) continue;
      // A NIC hot-plugged into the running guest gets its own grace period from when it was first seen.
      if (!t.nicSince.has(nic)) t.nicSince.set(nic, t.nextAt > 0 ? at : startedAt);
      const nicBooting = at - (t.nicSince.get(nic) ?? startedAt) < graceMs;
      booting ||= nicBooting;
      const iface = asked.view ? interfaceOf(asked.view.interfaces, nic, device.hwaddr) : undefined;
      const lease = (leases as Record<string, string>)[nic];
      const verdict = diagnoseNic({
        nic,
        device,
        model: spec.model,
        port: { name: port.port, state: port.state },
        inGuest: asked.view ? (iface ?? 'absent') : 'unknown',
        ...(asked.view ? {} : { unknownWhy: asked.why, unknownExpected: asked.expected }),
        ...(lease !== undefined && { lease }),
        engineErrors: asked.view?.engineErrors ?? [],
      });
      const entry: ObservedNic = { ...verdict.observed };
      const warning = warningOf(t, nic, verdict.problem, at, nicBooting);
      if (warning !== undefined) entry.warning = warning;
      // A problem not reported yet is looked at again soon, to confirm it or see it go.
      if (verdict.problem && warning === undefined) unsettled = true;
      nics[nic] = entry;
    }
    if (booting && Object.values(nics).some((n) => n.addresses.length === 0)) unsettled = true;
    t.nextAt = at + (unsettled ? fastMs : refreshMs);

    const record: GuestNetworkObservation = {
      process: status.process,
      nics,
      changedAt: new Date(at).toISOString(),
    };
    const previous = t.record && sameIdentity(t.record.process, status.process) ? t.record : undefined;
    if (essence(previous) === essence(record)) return;
    if (stopped) return;
    await records.guestNetwork.at(spec.name).put(store, record);
    t.record = record;
    announce(spec, previous, record);
  }

  /** The warning a problem makes now, if it has lasted long enough; updates what is pending. */
  function warningOf(
    t: Tracked,
    nic: string,
    problem: NicProblem | undefined,
    at: number,
    booting: boolean,
  ): string | undefined {
    if (!problem) {
      t.pending.delete(nic);
      return undefined;
    }
    let p = t.pending.get(nic);
    if (p?.kind !== problem.kind) {
      p = { kind: problem.kind, since: at };
      t.pending.set(nic, p);
    }
    const reported = t.record?.nics[nic]?.warning !== undefined && sameIdentity(t.record.process, t.process);
    if (reported) return problem.text;
    if (at - p.since < settleMs) return undefined;
    if (booting && !problem.definite) return undefined;
    return problem.text;
  }

  function announce(
    spec: GuestSpec,
    previous: GuestNetworkObservation | undefined,
    next: GuestNetworkObservation,
  ): void {
    for (const [nic, n] of Object.entries(next.nics)) {
      const before = previous?.nics[nic]?.warning;
      if (n.warning !== undefined && n.warning !== before) {
        log.warn({ guest: spec.name, nic, warning: n.warning }, 'guest NIC warning');
        publish('guest-nic-warning', spec, { nic, warning: n.warning });
      } else if (n.warning === undefined && before !== undefined) {
        publish('guest-nic-recovered', spec, { nic });
      }
    }
    const addresses = (r: GuestNetworkObservation | undefined) =>
      Object.values(r?.nics ?? {}).flatMap((n) => n.addresses);
    if (JSON.stringify(addresses(previous)) !== JSON.stringify(addresses(next))) {
      publish('guest-addresses-changed', spec, { addresses: addresses(next) });
    }
  }

  /** Starts queued observations while slots are free; resolves when those it started are done. */
  function drain(): Promise<void> {
    const started: Promise<void>[] = [];
    while (!stopped && busy < concurrency && queue.length > 0) {
      const t = queue.shift() as Tracked;
      const { spec, status } = t;
      busy++;
      const p = observe(spec, status, t)
        .catch((e) => {
          log.warn({ guest: spec.name, err: asTrivisorError(e).message }, 'cannot observe guest NICs');
          t.nextAt = now() + refreshMs;
        })
        .finally(() => {
          busy--;
          t.inFlight = false;
          inFlight.delete(p);
          void drain();
        });
      inFlight.add(p);
      started.push(p);
    }
    return Promise.all(started).then(() => {});
  }

  /** Queues the tracked guests that are due and starts what the slots allow (no store access). */
  function quickScan(): { done: Promise<void> } {
    const at = now();
    for (const t of tracked.values()) {
      if (!t.inFlight && at >= t.nextAt) {
        t.inFlight = true;
        queue.push(t);
      }
    }
    return { done: drain() };
  }

  /**
   * Reads every guest of this host from the store (level-based: whatever was missed is seen here),
   * drops records of guests that stopped or are gone, queues the guests that are due.
   */
  async function scan(): Promise<{ done: Promise<void> }> {
    full = false;
    changed.clear();
    const [specs, statuses, observations] = await Promise.all([
      records.guest.list(store),
      records.guestStatus.list(store),
      records.guestNetwork.list(store),
    ]);
    const statusOf = new Map<string, GuestStatus>();
    for (const s of statuses.items) statusOf.set(records.guestStatus.nameOf(s.key), s.value);
    const recordOf = new Map<string, GuestNetworkObservation>();
    for (const o of observations.items) recordOf.set(records.guestNetwork.nameOf(o.key), o.value);
    const ours = new Set<string>();
    // Every guest with a record, whether it decodes or not: only a gone guest's observation goes.
    const named = new Set(specs.malformed.map((m) => records.guest.nameOf(m.key)));
    const at = now();
    for (const spec of valuesOf(specs)) {
      named.add(spec.name);
      if (spec.location !== hostName) continue;
      ours.add(spec.name);
      await visit(spec, statusOf.get(spec.name), recordOf.get(spec.name), at);
    }
    // Records of guests that are gone (deleted while an observation was in flight).
    for (const name of recordOf.keys()) if (!named.has(name)) await store.delete(keys.guestNetwork(name));
    for (const name of tracked.keys()) if (!ours.has(name)) tracked.delete(name);

    // Wrapped: an async function would wait for a promise it returns.
    return { done: drain() };
  }

  /** Decodes a record read by key; undefined (as a list leaves it out) when it does not decode. */
  const decodedOr = <T>(decode: (kv: KeyValue) => T, kv: KeyValue | undefined): T | undefined => {
    if (!kv) return undefined;
    try {
      return decode(kv);
    } catch {
      return undefined;
    }
  };

  /**
   * What a full pass does for the guests that changed since the last pass, reading only theirs:
   * spec, status and observation of each, a few guests a transaction (etcd bounds its operations).
   */
  async function scanChanged(): Promise<void> {
    const names = [...changed];
    changed.clear();
    const at = now();
    for (let i = 0; i < names.length; i += CHANGED_PER_READ) {
      const some = names.slice(i, i + CHANGED_PER_READ);
      const r = await readTogether(
        store,
        some.flatMap((n) => [
          { key: keys.guest(n) },
          { key: keys.guestStatus(n) },
          { key: keys.guestNetwork(n) },
        ]),
      );
      for (const [j, name] of some.entries()) {
        const specKv = r.kvs[3 * j]?.[0];
        const status = decodedOr(records.guestStatus.decode, r.kvs[3 * j + 1]?.[0]);
        const record = decodedOr(records.guestNetwork.decode, r.kvs[3 * j + 2]?.[0]);
        if (!specKv) {
          // Gone (deleted while an observation was in flight, or before).
          tracked.delete(name);
          if (record) await store.delete(keys.guestNetwork(name));
          continue;
        }
        // A spec that does not decode keeps its observation, and is not observed.
        const spec = decodedOr(records.guest.decode, specKv);
        if (!spec || spec.location !== hostName) {
          tracked.delete(name);
          continue;
        }
        await visit(spec, status, record, at);
      }
    }
  }

  /** One guest of this host as a pass found it: tracked and queued when due, or its record dropped. */
  async function visit(
    spec: GuestSpec,
    status: GuestStatus | undefined,
    record: GuestNetworkObservation | undefined,
    at: number,
  ): Promise<void> {
    // Frozen guests cannot be asked: their last observation stays.
    if (status?.status === 'Frozen') return;
    if (status?.status !== 'Running' || !status.process || spec.deleting || nicsOf(spec).length === 0) {
      tracked.delete(spec.name);
      if (record) await store.delete(keys.guestNetwork(spec.name));
      return;
    }
    let t = tracked.get(spec.name);
    if (!t || !sameIdentity(t.process, status.process)) {
      t = {
        spec,
        status,
        process: status.process,
        pending: new Map(),
        record: record && sameIdentity(record.process, status.process) ? record : undefined,
        nextAt: 0,
        inFlight: false,
        nicSince: new Map(),
      };
      tracked.set(spec.name, t);
    }
    t.spec = spec;
    t.status = status;
    if (!t.inFlight && at >= t.nextAt) {
      t.inFlight = true;
      queue.push(t);
    }
  }

  /** One pass; waits until every observation in flight is done (tests). */
  async function tick(): Promise<void> {
    await (await scan()).done;
    while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
  }

  return {
    async start() {
      stopped = false;
      // A started guest is looked at within a second: the next pass reads the guests whose spec,
      // status or observation changed (a watch on each prefix names them), and queues the tracked
      // guests that are due (a settled one every refresh interval). Only the first pass, and one
      // after an informer listed again (a lost watch; its periodic resync watches again from where
      // it stands and lists nothing, decision 0087), lists every guest: a pass costs what changed,
      // not every guest of the cluster (decision 0080).
      // Informers rather than bare watches: a watch lost to a compaction is re-listed, and
      // the changes it missed still make the next pass a full one. The passes read the store
      // themselves (they must work without start, in tests), so the caches keep only keys.
      for (const prefix of [keys.guestPrefix, keys.guestStatusPrefix, keys.guestNetworkPrefix]) {
        const mark = (key: string) => void changed.add(key.slice(prefix.length));
        const informer = createInformer({
          store,
          prefix,
          decode: () => true as const,
          log,
          handlers: {
            onAdd: mark,
            onUpdate: mark,
            onDelete: mark,
            onSynced: () => {
              full = true;
            },
          },
        });
        await informer.start();
        informers.push(informer);
      }
      const loop = () => {
        // Observations run on in the background: a slow agent never holds up the next pass.
        timer = setTimeout(async () => {
          try {
            if (full || changed.size > FULL_ABOVE) await scan();
            else {
              if (changed.size > 0) await scanChanged();
              quickScan();
            }
          } catch (e) {
            log.error({ err: asTrivisorError(e).message }, 'NIC observation failed');
          }
          if (!stopped) loop();
        }, fastMs);
        timer.unref();
      };
      loop();
    },
    async stop() {
      stopped = true;
      for (const informer of informers.splice(0)) informer.stop();
      clearTimeout(timer);
      await Promise.allSettled([...inFlight]);
    },
    tick,
  };
}
