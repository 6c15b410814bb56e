import { isDeepStrictEqual } from 'node:util';
import { configValue } from '../core/config-keys.ts';
import { asTrivisorError, failedPrecondition, notSupported } from '../core/errors.ts';
import type { GuestSpec, GuestStatus, GuestStatusName, Model } from '../core/types.ts';
import type { GuestDriver, ImageHandle, RuntimeState } from '../drivers/guest-driver.ts';
import type { Logger } from '../host/logger.ts';
import type { EventBus } from '../services/types.ts';
import { type KvStore, readTogether } from '../store/kv.ts';
import { projectGuestIndex } from '../store/project-guests.ts';
import { ownedBy, records } from '../store/records.ts';
import { createInformer, type Informer } from './informer.ts';

/** Turns an image fingerprint into what drivers need to build a guest from it. */
export interface ImageResolver {
  handle(fingerprint: string): Promise<ImageHandle>;
}

export interface GuestControllerDeps {
  store: KvStore;
  drivers: Partial<Record<Model, GuestDriver>>;
  images: ImageResolver;
  events: EventBus;
  log: Logger;
  hostName: string;
  /** How often running guests are checked for unexpected death. */
  livenessIntervalMs?: number;
  /** Guests reconciled in parallel (start-up of 1000 guests, bulk launches). */
  concurrency?: number;
  /**
   * Removes where a deleted guest lived (its pool subvolume or directory) once the driver has
   * deleted it, before its records go: a delete is done when nothing of the guest is left.
   */
  releasePlacement?: (name: string) => Promise<void>;
  /**
   * Guests on a shared storage pool (decision 0049): `adopt` links a guest located here that has
   * no `guests/NAME` yet to its directory on the pool (an HA restart, a hand-over), before it is
   * made or started; `imageFor` gives it the pool's copy of its base disk.
   */
  shared?: {
    adopt(spec: GuestSpec): Promise<void>;
    imageFor(spec: GuestSpec, image: ImageHandle): Promise<ImageHandle>;
    /** A guest located on another member: this member's link to it on a shared pool goes (its files stay). */
    release(name: string): Promise<void>;
  };
  /**
   * HA (decision 0052): whether a guest's starts are its member's HA agent's to decide, and why
   * it may not start now (undefined: it may). Such a guest is started only when the agent asks,
   * and one that died is left for the agent, not restarted by policy nor marked stopped.
   */
  ha?: { manages(spec: GuestSpec): boolean; startRefusal(spec: GuestSpec): string | undefined };
}

/** Converges this host's guests to their desired state (Kubernetes controller pattern). */
export interface GuestController {
  /** Adopts what runs, finishes half-done work, starts autostart guests, then watches. */
  start(): Promise<void>;
  /** Stops watching and waits for in-flight reconciles; guests keep running. */
  stop(): Promise<void>;
  /** Queues a reconcile of one guest and resolves when it has run. */
  reconcile(name: string): Promise<void>;
  /**
   * This member's guests that their last reconcile left Running, with the status it wrote: from
   * memory, no store read (per-member loops use it rather than listing every guest of the cluster).
   */
  running(): Array<{ spec: GuestSpec; status: GuestStatus }>;
}

/** Restarts by policy within this window count towards giving up. */
const CRASH_WINDOW_MS = 60_000;
const CRASH_LIMIT = 5;
/** Guests the liveness pass inspects between two turns of the event loop. */
const LIVENESS_BATCH = 32;

export function initialStatus(): GuestStatus {
  return {
    status: 'Stopped',
    observedGeneration: 0,
    observedRestartRequest: 0,
    restartCount: 0,
    provisioned: false,
    appliedConfig: {},
    pendingRestart: [],
  };
}

export function createGuestController(deps: GuestControllerDeps): GuestController {
  const { store, drivers, images, events, hostName } = deps;
  const log = deps.log.child({ component: 'guest-controller' });
  const concurrency = deps.concurrency ?? 4;
  const livenessIntervalMs = deps.livenessIntervalMs ?? 2000;

  /** Last known status of each of this host's running guests, for the liveness loop. */
  const live = new Map<string, { spec: GuestSpec; status: GuestStatus }>();
  const crashes = new Map<string, number[]>();

  // Work queue: one reconcile per guest at a time; requests while one runs coalesce into one re-run.
  const pending = new Map<string, Array<() => void>>();
  const running = new Set<string>();
  const inFlight = new Set<Promise<void>>();
  let informer: Informer<GuestSpec> | undefined;
  /**
   * boot.autostart guests that should run as the daemon starts: their first reconcile starts one
   * found dead (the host rebooted under it) whatever its restart policy, where a guest that died
   * otherwise stays Stopped.
   */
  const bootStarts = new Set<string>();
  /** HA guests whose start this reconcile left to their agent (decision 0052). */
  const deferred = new Set<string>();
  let livenessTimer: NodeJS.Timeout | undefined;
  let stopped = false;

  const pump = () => {
    for (const [name, waiters] of pending) {
      if (running.size >= concurrency) return;
      if (running.has(name)) continue;
      pending.delete(name);
      running.add(name);
      const p = reconcileOnce(name)
        .catch((e) => log.error({ guest: name, err: asTrivisorError(e).message }, 'reconcile crashed'))
        .finally(() => {
          running.delete(name);
          inFlight.delete(p);
          for (const w of waiters) w();
          pump();
        });
      inFlight.add(p);
    }
  };

  const enqueue = (name: string): Promise<void> =>
    new Promise((resolve) => {
      const waiters = pending.get(name) ?? [];
      waiters.push(resolve);
      pending.set(name, waiters);
      queueMicrotask(pump);
    });

  const lifecycle = (action: string, spec: GuestSpec, metadata: Record<string, unknown> = {}) =>
    events.publish({
      type: 'lifecycle',
      project: spec.project ?? 'default',
      action,
      source: `/1.0/guests/${spec.name}`,
      metadata: { name: spec.name, model: spec.model, ...metadata },
    });

  async function reconcileOnce(name: string): Promise<void> {
    // One read of the three records, at one revision: on etcd each request is a round trip, and a
    // start waits for it (three requests side by side cost more on a busy member than one).
    const read = await readTogether(store, [
      { key: records.guest.key(name) },
      { key: records.guestStatus.key(name) },
      { key: records.guestLocation.key(name) },
    ]);
    const [specKv, statusKv, locationKv] = read.kvs.map((kvs) => kvs[0]);
    const specRecord = specKv && { value: records.guest.decode(specKv) };
    const statusRecord = statusKv && {
      key: statusKv.key,
      value: records.guestStatus.decode(statusKv),
      modRevision: statusKv.modRevision,
    };
    const location = locationKv && { value: records.guestLocation.decode(locationKv) };
    if (!specRecord) {
      // A status without a spec is debris of an interrupted delete.
      if (statusRecord) await store.delete(statusRecord.key);
      live.delete(name);
      return;
    }
    const spec = specRecord.value;
    // The location key is what transactions compare; the spec's `location` says the same.
    if (location === undefined) {
      if (spec.location !== hostName) return;
      // A guest recorded before location keys: its owner marks it, once.
      const ref = records.guestLocation.at(name);
      await store.txn({ compare: [ref.absent()], success: [ref.putOp(hostName)] });
    } else if (location.value !== hostName) {
      live.delete(name);
      await deps.shared
        ?.release(name)
        .catch((e) =>
          log.warn({ guest: name, err: asTrivisorError(e).message }, 'cannot drop the link of a moved guest'),
        );
      return;
    }
    const previous: GuestStatus = statusRecord?.value ?? initialStatus();
    const status: GuestStatus = structuredClone(previous);
    const driver = drivers[spec.model];

    let deleted = false;
    try {
      if (!driver) throw notSupported(`The ${spec.model} model is not available on host ${hostName}`);
      deleted = await converge(spec, status, driver);
      delete status.error;
      delete status.errorCode;
      delete status.failedGeneration;
    } catch (e) {
      const err = asTrivisorError(e);
      log.warn({ guest: name, generation: spec.generation, err: err.message }, 'convergence failed');
      status.error = err.message;
      status.errorCode = err.code;
      status.failedGeneration = spec.generation;
      if (driver) {
        const rt = await driver
          .inspect(spec, status.process)
          .catch((): RuntimeState => ({ state: 'absent' }));
        status.status = statusOf(rt);
        if (rt.process) status.process = rt.process;
        else delete status.process;
      }
    }
    if (deleted) {
      live.delete(name);
      return;
    }
    // An HA guest whose start waits for its agent has not reached its spec yet.
    if (!deferred.delete(name)) {
      status.observedGeneration = spec.generation;
      status.observedRestartRequest = spec.restartRequest;
    }
    // Nothing to write when the reconcile changed nothing: a daemon's start reconciles every guest,
    // and 10,000 stopped guests' statuses were rewritten at each start.
    if (statusRecord && isDeepStrictEqual(status, previous)) return remember(spec, status);
    // Compare-and-swap, bound to the owner: the status is written only if nobody wrote it since it
    // was read, and only while this member owns the guest (decision 28).
    const ref = records.guestStatus.at(name);
    const written = await store.txn({
      compare: [ref.unchanged(statusRecord?.modRevision ?? 0), ownedBy(name, hostName)],
      success: [ref.putOp(status)],
    });
    if (!written.succeeded) {
      const owner = (await records.guestLocation.at(name).get(store))?.value;
      if (owner !== hostName) {
        log.warn(
          { guest: name, owner },
          'the guest belongs to another member now: its status is not written here',
        );
        live.delete(name);
        return;
      }
      // Another writer came first: read again and converge from what it wrote.
      log.info({ guest: name }, 'the status changed while the guest was reconciled: reconciling again');
      void enqueue(name);
      return;
    }
    remember(spec, status);
    if (previous.status !== status.status) lifecycle('guest-updated', spec, { status: status.status });
  }

  /** Keeps a running or frozen guest of this member in memory (running()), and forgets others. */
  function remember(spec: GuestSpec, status: GuestStatus): void {
    if (status.status === 'Running' || status.status === 'Frozen') live.set(spec.name, { spec, status });
    else live.delete(spec.name);
  }

  /** Brings one guest to its spec; mutates `status`; returns true when the guest was deleted. */
  async function converge(spec: GuestSpec, status: GuestStatus, driver: GuestDriver): Promise<boolean> {
    // The image is read once per reconcile, and while the driver inspects when this reconcile
    // will likely make or start the guest (a round trip saved on etcd's create+start).
    let imageHandle: Promise<ImageHandle> | undefined;
    const image = () => {
      const shared = deps.shared;
      imageHandle ??= shared
        ? images.handle(spec.image).then((h) => shared.imageFor(spec, h))
        : images.handle(spec.image);
      return imageHandle;
    };
    const upAsRecorded = status.status === 'Running' || status.status === 'Frozen';
    const willStart =
      !spec.deleting &&
      (!status.provisioned ||
        (spec.desired !== 'Stopped' && !upAsRecorded) ||
        (spec.desired !== 'Stopped' && spec.restartRequest > status.observedRestartRequest));
    // Its failure is the await's below, when the image is used.
    if (willStart) image().catch(() => {});
    // A guest on a shared pool that another member held until now is linked here first: the
    // driver then finds its files (and makes nothing) where it looks for them.
    if (!spec.deleting) await deps.shared?.adopt(spec);
    let rt = await driver.inspect(spec, status.process);

    if (spec.deleting) {
      if (rt.state !== 'stopped' && rt.state !== 'absent') {
        if (rt.state === 'frozen') await driver.unfreeze(spec);
        await driver.stop(spec, { timeoutMs: spec.stopTimeoutMs, force: spec.stopForce });
      }
      await driver.delete(spec);
      await deps.releasePlacement?.(spec.name);
      await store.txn({
        compare: [ownedBy(spec.name, hostName)],
        success: [
          records.guest.at(spec.name).deleteOp(),
          projectGuestIndex.deleteOp(spec),
          records.guestStatus.at(spec.name).deleteOp(),
          records.guestNetwork.at(spec.name).deleteOp(),
          records.guestLocation.at(spec.name).deleteOp(),
        ],
      });
      lifecycle('guest-deleted', spec);
      return true;
    }

    if (!status.provisioned) {
      await driver.create(spec, await image());
      status.provisioned = true;
      status.appliedConfig = { ...spec.config };
      // Where the guest went and why (decision 0033), with the event as with `info`.
      lifecycle('guest-created', spec, {
        location: spec.location,
        ...(spec.placement !== undefined && { placement: spec.placement }),
      });
    }

    const up = (s: RuntimeState['state']) => s === 'running' || s === 'frozen';
    const haManaged = deps.ha?.manages(spec) === true;
    const start = async (action: string) => {
      const refused = haManaged ? deps.ha?.startRefusal(spec) : undefined;
      if (refused !== undefined) {
        // Not converged yet: a waiter (launch, start) waits for the agent's permit, which
        // reconciles the guest again.
        deferred.add(spec.name);
        log.info({ guest: spec.name, why: refused }, 'HA guest not started by the controller');
        return;
      }
      const process = await driver.start(spec, await image());
      status.process = process;
      status.startedAt = new Date().toISOString();
      status.status = 'Running';
      status.appliedConfig = { ...spec.config };
      status.pendingRestart = [];
      rt = { state: 'running', process };
      lifecycle(action, spec, { pid: process.pid });
    };
    const stop = async (action: string) => {
      if (rt.state === 'frozen') await driver.unfreeze(spec);
      await driver.stop(spec, { timeoutMs: spec.stopTimeoutMs, force: spec.stopForce });
      markStopped(status);
      rt = { state: 'stopped' };
      lifecycle(action, spec);
    };

    // The first reconcile after start-up only: later deaths follow the restart policy alone.
    const booting = bootStarts.delete(spec.name);
    // The guest was up and went away without being asked: clean up, then apply the restart policy.
    const wasUp = status.status === 'Running' || status.status === 'Frozen';
    if (wasUp && !up(rt.state)) {
      // Said in the log: a guest that stops without being asked is otherwise only an event.
      log.warn(
        { guest: spec.name, pid: status.process?.pid, found: rt.state, desired: spec.desired },
        'a guest recorded running was found not running: its engine ended',
      );
      await driver.stop(spec, { timeoutMs: 0, force: true });
      markStopped(status);
      lifecycle('guest-died', spec);
      const policy = configValue.restartPolicy(spec.config);
      if (haManaged) {
        // Its agent starts it again here, or the CRM elsewhere: its desired state stays.
        if (spec.desired !== 'Stopped') await start('guest-restarted');
      } else if (spec.desired !== 'Stopped' && (policy !== 'never' || booting)) {
        if (tooManyCrashes(spec.name)) {
          status.status = 'Error';
          throw failedPrecondition(
            `Guest ${spec.name} died ${CRASH_LIMIT} times within a minute; not restarting it again`,
          );
        }
        if (!booting) status.restartCount++;
        await start(booting ? 'guest-started' : 'guest-restarted');
      } else if (spec.desired !== 'Stopped') {
        // As in Incus: a guest that shut itself down is Stopped, and its desired state says so.
        await setDesired(spec, 'Stopped');
        return false;
      }
    }

    if (spec.restartRequest > status.observedRestartRequest && spec.desired !== 'Stopped') {
      if (up(rt.state)) await stop('guest-stopped');
      await start('guest-restarted');
    }

    switch (spec.desired) {
      case 'Running':
        if (rt.state === 'frozen') {
          await driver.unfreeze(spec);
          status.status = 'Running';
          lifecycle('guest-unfrozen', spec);
        } else if (!up(rt.state)) await start('guest-started');
        else status.status = 'Running';
        break;
      case 'Frozen':
        if (rt.state === 'running') {
          await driver.freeze(spec);
          status.status = 'Frozen';
          lifecycle('guest-frozen', spec);
        } else if (rt.state === 'frozen') status.status = 'Frozen';
        else throw failedPrecondition(`Cannot freeze guest ${spec.name}: it is not running`);
        break;
      case 'Stopped':
        if (up(rt.state)) await stop('guest-stopped');
        // Already recorded stopped: its last exit stays the time it stopped.
        else if (status.status !== 'Stopped' || status.process || status.startedAt) markStopped(status);
        break;
    }

    const changed = changedKeys(status.appliedConfig, spec.config);
    if (changed.length > 0) {
      if (up(rt.state)) {
        const needRestart = await driver.update(spec, changed);
        status.pendingRestart = [...new Set([...status.pendingRestart, ...needRestart])];
      }
      status.appliedConfig = { ...spec.config };
    }
    return false;
  }

  function tooManyCrashes(name: string): boolean {
    const now = Date.now();
    const recent = (crashes.get(name) ?? []).filter((t) => now - t < CRASH_WINDOW_MS);
    recent.push(now);
    crashes.set(name, recent);
    return recent.length > CRASH_LIMIT;
  }

  /** Records a desired state chosen by the controller itself (autostart, self-shutdown), if nobody changed the spec meanwhile. */
  async function setDesired(spec: GuestSpec, desired: GuestSpec['desired']): Promise<void> {
    const ref = records.guest.at(spec.name);
    const current = await ref.get(store);
    if (!current || current.value.generation !== spec.generation) return;
    const next: GuestSpec = { ...current.value, desired, generation: current.value.generation + 1 };
    await store.txn({
      compare: [ref.unchanged(current.modRevision), ownedBy(spec.name, hostName)],
      success: [ref.putOp(next)],
    });
  }

  async function checkLiveness(): Promise<void> {
    let checked = 0;
    for (const [name, { spec, status }] of live) {
      if (stopped) return;
      // A ct guest's inspect reads synchronously (microseconds): the pass gives way to the rest of
      // the daemon (a start, an API call) every few dozen guests, not only once it has seen them all.
      if (++checked % LIVENESS_BATCH === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      const driver = drivers[spec.model];
      if (!driver || running.has(name) || pending.has(name)) continue;
      const rt = await driver.inspect(spec, status.process).catch((): RuntimeState => ({ state: 'absent' }));
      if (rt.state !== 'running' && rt.state !== 'frozen') void enqueue(name);
    }
  }

  return {
    async start() {
      // Until start-up has queued its first reconciles, changes only collect names: the
      // autostart writes below must land before the first reconcile of their guest.
      const names = new Set<string>();
      let starting = true;
      const changed = (key: string, spec: GuestSpec | undefined) => {
        const name = records.guest.nameOf(key);
        // Another member's guest is none of this controller's business (its reconcile would only
        // read three records to find so), unless it ran here: then it moved, and is let go.
        const ours = !spec || spec.location === hostName || live.has(name);
        if (!starting) {
          if (ours) void enqueue(name);
        } else if (!spec || spec.location === hostName) names.add(name);
      };
      informer = createInformer<GuestSpec>({
        store,
        prefix: records.guest.prefix,
        decode: records.guest.decode,
        log,
        handlers: {
          onAdd: (key, spec) => changed(key, spec),
          onUpdate: (key, spec) => changed(key, spec),
          // Also a delete the watch missed (found by a re-list after a compaction).
          onDelete: (key) => changed(key, undefined),
        },
      });
      await informer.start();
      for (const spec of informer.values()) {
        if (spec.location !== hostName) continue;
        if (configValue.autostart(spec.config) && spec.desired === 'Stopped' && !spec.deleting) {
          await setDesired(spec, 'Running');
        } else if (configValue.autostart(spec.config) && spec.desired === 'Running' && !spec.deleting) {
          bootStarts.add(spec.name);
        }
      }
      // Orphaned statuses (spec deleted while the daemon was down) are swept by the reconcile of their name.
      const statuses = await store.list(records.guestStatus.prefix);
      for (const kv of statuses.kvs) names.add(records.guestStatus.nameOf(kv.key));
      starting = false;
      await Promise.all([...names].map((n) => enqueue(n)));
      const tick = () => {
        livenessTimer = setTimeout(async () => {
          await checkLiveness().catch((e) => log.error({ err: String(e) }, 'liveness check failed'));
          if (!stopped) tick();
        }, livenessIntervalMs);
        livenessTimer.unref();
      };
      tick();
    },
    async stop() {
      stopped = true;
      informer?.stop();
      clearTimeout(livenessTimer);
      pending.clear();
      await Promise.allSettled([...inFlight]);
    },
    reconcile: enqueue,
    running: () => [...live.values()].filter(({ status }) => status.status === 'Running'),
  };
}

function markStopped(status: GuestStatus): void {
  status.status = 'Stopped';
  delete status.process;
  delete status.startedAt;
  status.lastExitAt = new Date().toISOString();
  status.pendingRestart = [];
}

function statusOf(rt: RuntimeState): GuestStatusName {
  return rt.state === 'running' ? 'Running' : rt.state === 'frozen' ? 'Frozen' : 'Stopped';
}

function changedKeys(a: Record<string, string>, b: Record<string, string>): string[] {
  const all = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...all].filter((k) => a[k] !== b[k]);
}
