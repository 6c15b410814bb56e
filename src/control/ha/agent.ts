import { availableParallelism, totalmem } from 'node:os';
import { isTrivisorError } from '../../core/errors.ts';
import type { Logger } from '../../host/logger.ts';
import type { KvStore } from '../../store/kv.ts';
import { records } from '../../store/records.ts';
import { createInformer } from '../informer.ts';
import { dropPermit, writeAgentState, writePermit } from './ha-files.ts';
import { type HaWorld, isHaGuest, readHaWorld, txnOf } from './ha-store.ts';
import { createLrm, type LeaseAnswer, type LrmAction } from './lrm.ts';
import { DEFAULT_TIMINGS, type HaTimings, type HeartbeatValue, haKeys } from './types.ts';

/**
 * The HA agent's loop (decision 0052): decision 0044's LRM on the real store, in a process of
 * its own beside the daemon. It holds the member's HA lease and heartbeat key, fences on its own
 * clock (kills this member's HA guests by their cgroups, then gives the lease up), tells the
 * daemon which HA guests it may start (a permit file under the agent's token), and pets the
 * watchdog while HA guests run here.
 *
 * The look runs every `lookEveryMs` and never waits for the store: a renewal, a read or a write
 * is sent in the background, at most one of each kind at once, each bounded by a timeout; the
 * clock check that fences is made at every look whatever the store does.
 */
export interface HaAgentDeps {
  store: KvStore;
  stateDir: string;
  member: string;
  log: Logger;
  /**
   * Which of `guests` (this member's) have processes (their cgroups). The agent asks only about
   * the guests HA knows of: none with no HA guest (decision 0080).
   */
  running: (guests: ReadonlySet<string>) => Promise<Set<string>>;
  /** Kills a guest at once (SIGKILL by its cgroup). */
  kill: (guest: string) => Promise<void>;
  /** The host's watchdog: armed and petted while HA guests run, disarmed after. */
  watchdog?: { pet(untilMs: number): void; disarm(): void };
  timings?: HaTimings;
  /** Monotonic ms (default performance.now). */
  clock?: () => number;
  lookEveryMs?: number;
  /** A store call that takes longer counts as failed (default 1000 ms). */
  callTimeoutMs?: number;
  /** A start the daemon has not made after this long counts as failed (default 90 s: vm boots under TCG). */
  startTimeoutMs?: number;
  /**
   * Told once the member's record is gone (`cluster remove`): the agent has fenced by then (killed
   * its HA guests, given its lease up), as a member that leaves must; its process exits.
   */
  onRemoved?: () => void;
  /**
   * Told after every look that ran to its end: the service manager's watchdog (systemd's
   * `WatchdogSec`, decision 0052 amended) is petted from it, so that an agent whose loop hangs or
   * whose looks keep failing is restarted.
   */
  onLook?: () => void;
}

export interface HaAgent {
  /** A clean stop: fences (kills the HA guests, revokes the lease), as decision 0044 asks of a member that leaves. */
  stop(): Promise<void>;
}

const nameOf = (key: string) => key.slice(records.guest.prefix.length);

function timeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

export function startHaAgent(deps: HaAgentDeps): HaAgent {
  const { store, log, member } = deps;
  const timings = deps.timings ?? DEFAULT_TIMINGS;
  const clock = deps.clock ?? (() => performance.now());
  const callMs = deps.callTimeoutMs ?? 1000;
  const startTimeoutMs = deps.startTimeoutMs ?? 90_000;
  const lrm = createLrm(member, timings);
  const ttlSeconds = Math.ceil(timings.leaseTtlMs / 1000);

  let lease: number | undefined;
  /** Wall-clock ms of the last confirmed renewal's sending: the agent state's `liveUntil` counts from it. */
  let confirmedWall = 0;
  let leaseCall = false;
  let revokeCall = false;
  let manageCall = false;
  let world: HaWorld | undefined;
  /** Guests whose HA records this agent has read: those it fences and whose starts are its (the others are not HA). */
  let haNames = new Set<string>();
  const pending = new Map<string, number>();
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let looking: Promise<void> = Promise.resolve();

  // The guests made HA, known from the specs as soon as the store says so (a watch), before the
  // CRM records them: a fence kills them too, whether or not a record was read yet.
  const haSpecs = new Set<string>();
  const specs = createInformer<boolean>({
    store,
    prefix: records.guest.prefix,
    decode: (kv) => isHaGuest(records.guest.decode(kv)),
    handlers: {
      onAdd: (key, ha) => void (ha ? haSpecs.add(nameOf(key)) : haSpecs.delete(nameOf(key))),
      onUpdate: (key, ha) => void (ha ? haSpecs.add(nameOf(key)) : haSpecs.delete(nameOf(key))),
      onDelete: (key) => void haSpecs.delete(nameOf(key)),
    },
    log,
  });
  specs.start().catch((e: unknown) => log.warn({ err: String(e) }, 'HA: cannot list the guests yet'));
  const haRunning = (running: Set<string>) =>
    new Set([...running].filter((g) => haNames.has(g) || haSpecs.has(g)));
  /** The guests the agent may care about: HA by record or spec, or a start it asked for. */
  const candidates = () => new Set([...haNames, ...haSpecs, ...pending.keys()]);

  const answer = (a: LeaseAnswer) => {
    for (const x of lrm.leaseAnswer(clock(), a)) void act(x);
  };

  async function leaseRequest(kind: 'grant' | 'renew') {
    if (leaseCall) return;
    leaseCall = true;
    const sentAt = clock();
    const sentWall = Date.now();
    try {
      if (kind === 'renew') {
        if (lease === undefined) return answer({ kind: 'gone' });
        try {
          await timeout(store.keepAlive(lease), callMs);
        } catch (e) {
          return answer(isTrivisorError(e) && e.code === 'NotFound' ? { kind: 'gone' } : { kind: 'failed' });
        }
        confirmedWall = sentWall;
        return answer({ kind: 'renewed', sentAt });
      }
      const granted = await timeout(store.grantLease(ttlSeconds), callMs);
      const r = await timeout(
        store.txn({
          compare: [{ key: haKeys.heartbeat(member), target: 'createRevision', op: '=', value: 0 }],
          success: [
            {
              type: 'put',
              key: haKeys.heartbeat(member),
              value: JSON.stringify({
                member,
                memoryTotalBytes: totalmem(),
                cpus: availableParallelism(),
              } satisfies HeartbeatValue),
              lease: granted.id,
            },
          ],
        }),
        callMs,
      );
      if (!r.succeeded) {
        // The old heartbeat is still there (its lease not yet expired or revoked).
        await store.revokeLease(granted.id).catch(() => {});
        return answer({ kind: 'failed' });
      }
      lease = granted.id;
      confirmedWall = sentWall;
      log.info({ member, token: r.revision }, 'HA: lease granted');
      return answer({ kind: 'granted', token: r.revision, sentAt });
    } catch (e) {
      log.warn({ member, err: String(e) }, `HA: cannot ${kind} the member's HA lease`);
      return answer({ kind: 'failed' });
    } finally {
      leaseCall = false;
    }
  }

  async function revoke() {
    if (revokeCall) return;
    const held = lease;
    if (held === undefined) return answer({ kind: 'revoked' });
    revokeCall = true;
    try {
      await timeout(store.revokeLease(held), callMs);
    } catch (e) {
      if (!(isTrivisorError(e) && e.code === 'NotFound')) return;
    } finally {
      revokeCall = false;
    }
    if (lease === held) lease = undefined;
    log.info({ member }, 'HA: the fenced lease is given up');
    answer({ kind: 'revoked' });
  }

  async function act(a: LrmAction): Promise<void> {
    switch (a.kind) {
      case 'grant':
      case 'renew':
        return leaseRequest(a.kind);
      case 'revoke':
        return revoke();
      case 'fence':
        log.warn({ member, guests: a.guests }, 'HA: fenced: killing the HA guests of this member');
        for (const g of a.guests) dropPermit(deps.stateDir, g);
        for (const p of pending.keys()) dropPermit(deps.stateDir, p);
        pending.clear();
        await Promise.all(a.guests.map((g) => deps.kill(g)));
        return;
      case 'start': {
        const token = lrm.token(clock());
        if (token === undefined || pending.has(a.guest)) return;
        writePermit(deps.stateDir, a.guest, { token, at: Date.now() });
        pending.set(a.guest, clock());
        log.info({ member, guest: a.guest, token }, 'HA: starting a guest here');
        return;
      }
      case 'stop':
        dropPermit(deps.stateDir, a.guest);
        // A guest to be stopped is stopped by the daemon (its desired state says so); one that
        // another member owns now is killed at once, as a fence would.
        if (a.why === 'it is to be stopped') return;
        log.warn({ member, guest: a.guest, why: a.why }, 'HA: killing a guest this member no longer owns');
        await deps.kill(a.guest);
        return;
      case 'pet':
        deps.watchdog?.pet(a.untilMs);
        return;
      case 'disarm':
        deps.watchdog?.disarm();
        return;
      case 'write': {
        if (!world) return;
        await timeout(store.txn(txnOf(a.write, world)), callMs).catch((e: unknown) =>
          log.warn({ member, guest: a.guest, err: String(e) }, 'HA: cannot record failed starts'),
        );
        return;
      }
    }
  }

  async function manage(running: Set<string>) {
    if (manageCall) return;
    manageCall = true;
    try {
      const [read, me] = await timeout(
        Promise.all([readHaWorld(store), records.member.at(member).get(store)]),
        callMs * 2,
      );
      world = read;
      if (!me) {
        // Removed from the cluster: nobody else may revoke this lease (decision 0044), so the
        // agent fences and gives it up itself, and stops.
        log.warn({ member }, 'HA: this member was removed from the cluster: fencing and stopping');
        stopped = true;
        clearTimeout(timer);
        for (const a of lrm.fenceNow(haRunning(running))) await act(a);
        publish();
        deps.onRemoved?.();
        return;
      }
      haNames = new Set(world.guests.filter((g) => g.value.ha).map((g) => g.value.name));
      const now = clock();
      for (const [g, since] of pending) {
        if (running.has(g)) {
          pending.delete(g);
          lrm.started(now, g, true);
        } else if (now - since > startTimeoutMs) {
          pending.delete(g);
          dropPermit(deps.stateDir, g);
          lrm.started(now, g, false);
          log.warn({ member, guest: g }, 'HA: the daemon did not start the guest in time');
        }
      }
      // A guest made HA a moment ago is not recorded until the CRM's next pass: left running till then.
      const recorded = new Set(world.guests.map((g) => g.value.name));
      const awaiting = new Set([...haSpecs].filter((g) => !recorded.has(g)));
      for (const a of lrm.manage(now, { guests: world.guests, running: haRunning(running), awaiting }))
        await act(a);
    } catch (e) {
      log.warn({ member, err: String(e) }, 'HA: cannot read the HA records');
    } finally {
      manageCall = false;
    }
  }

  function publish() {
    const now = clock();
    const token = lrm.token(now);
    try {
      writeAgentState(deps.stateDir, {
        pid: process.pid,
        member,
        ...(token !== undefined && { token }),
        liveUntil: token === undefined ? 0 : confirmedWall + timings.fenceAfterMs,
        at: Date.now(),
      });
    } catch (e) {
      log.warn({ err: String(e) }, 'HA: cannot write the agent state');
    }
  }

  async function look() {
    const running = await deps.running(candidates());
    for (const a of lrm.tick(clock(), haRunning(running))) await act(a);
    // Not live: whatever HA guest runs here is killed (a start that was in flight at the fence).
    if (!lrm.live(clock())) {
      for (const g of haRunning(running)) {
        log.warn({ member, guest: g }, 'HA: an HA guest runs on a fenced member: killing it');
        await deps.kill(g);
      }
    } else void manage(running);
    publish();
    deps.onLook?.();
  }

  const loop = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      looking = look()
        .catch((e: unknown) => log.error({ err: String(e) }, 'HA: a look failed'))
        .finally(loop);
    }, deps.lookEveryMs ?? 500);
  };
  loop();

  return {
    async stop() {
      stopped = true;
      specs.stop();
      clearTimeout(timer);
      await looking;
      for (const a of lrm.fenceNow(haRunning(await deps.running(candidates())))) await act(a);
      publish();
    },
  };
}
