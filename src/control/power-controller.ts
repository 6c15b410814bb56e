import type { MemberPower } from '../api/cluster-schemas.ts';
import type { MemberState } from '../autonomic/cluster-state.ts';
import { concludeEvacuation, type Evacuation, type PowerOn } from '../autonomic/power-manager.ts';
import { asTrivisorError } from '../core/errors.ts';
import type { MemberPowerConfig, PowerSettings } from '../core/power-keys.ts';
import type { Logger } from '../host/logger.ts';
import type { PowerDriver } from '../power/power-driver.ts';
import type { EventBus } from '../services/types.ts';
import type { KvStore } from '../store/kv.ts';
import { type MemberHeartbeat, records } from '../store/records.ts';
import { evacuationProgress } from './evacuation-controller.ts';

/**
 * Power management in the cluster (issue 14 §3, decision 0055): the steps that carry out the
 * power manager's decisions (decision 0051's `planPower`, run in the rebalancer's cycle), one
 * record per member (`/trivisor/power/members/NAME`) saying where it is:
 *
 *   on → evacuating → powering-off → off → powering-on → on
 *
 * - An evacuation is the evacuation controller's (decision 0041): the member is marked evacuated
 *   and its own daemon moves its guests away. Its outcome is read from the evacuation records and
 *   fed to `concludeEvacuation`: a guest that could not leave aborts the power-off, the member is
 *   restored (it stays on) and is not tried again for a low window; otherwise its driver powers it off.
 * - A powered-off member stays marked evacuated: placement, HA and admission control already
 *   leave an evacuated member alone, and it holds no guest that HA could want to restart.
 * - A power-on is done when the member's daemon is back: a heartbeat from another boot than the
 *   one recorded when it went off (`isBackOn`: boot ids, never clocks); the member is then
 *   restored, and the guests it had come back to it.
 * Every step is an event (`member-power-*`) and the record's `reason` says why (`cluster list`).
 * Level-based: whichever member holds the rebalancer's election key goes on from the records.
 */
export interface PowerStepsDeps {
  store: KvStore;
  hostName: string;
  /** The members' measured capacity (`cluster list`), kept in the record when a member goes off. */
  members: () => Promise<
    Array<{ name: string; cpu: { cpus: number } | null; memory: { totalBytes: number } | null }>
  >;
  driverFor: (member: string, config: MemberPowerConfig) => PowerDriver;
  events?: Pick<EventBus, 'publish'>;
  log: Logger;
  now: () => number;
  /** How long an evacuation for a power-off may take before it is aborted (default 30 min). */
  evacuationTimeoutMs?: number;
}

/** A power record's state counts as on (absent: on). */
const stateOf = (r: MemberPower | undefined): MemberPower['state'] => r?.state ?? 'on';

/** The power-offs of the last 24 h. */
const lastDay = (offs: readonly string[], nowMs: number) =>
  offs.filter((t) => nowMs - Date.parse(t) < 86_400_000);

const withoutError = (p: MemberPower): MemberPower => {
  const { error: _, ...rest } = p;
  return rest;
};

/**
 * Whether a member powered off when its daemon was `offBoot` is back on, from its heartbeat now
 * (pure). Judged by the host's boot id, never by clocks: the member's clock may be behind or ahead
 * of the decider's, and a heartbeat of the old boot may stay on its lease for a while after the
 * power-off. A daemon that reports no boot id (older than this rule) is back when it is another
 * daemon life; a member that had no heartbeat when it went off (its lease had expired) is back with
 * any heartbeat.
 */
export function isBackOn(heartbeat: MemberHeartbeat | undefined, offBoot: MemberPower['offBoot']): boolean {
  if (!heartbeat) return false;
  if (!offBoot) return true;
  if (heartbeat.bootId !== undefined && offBoot.bootId !== undefined)
    return heartbeat.bootId !== offBoot.bootId;
  return heartbeat.incarnation !== offBoot.incarnation;
}

/** Whether a member in `state` is shown as Standby (powered off, or on its way off or back on). */
export const isStandby = (state: MemberPower['state'] | undefined): boolean =>
  state === 'powering-off' || state === 'off' || state === 'powering-on';

/**
 * What the power manager knows of a member beyond its load (pure): its power state, power-offs,
 * boot delay, and whether it may be powered off at all (a driver, and no abort within a low
 * window). `undefined` for a member that takes no part in this cycle, with the note saying why.
 */
export function powerMemberState(options: {
  name: string;
  power: MemberPower | undefined;
  config: MemberPowerConfig | undefined;
  settings: PowerSettings;
  nowMs: number;
}): { part: 'on' | 'off' | 'booting' | 'none'; fields: Partial<MemberState>; note?: string } {
  const { name, power, config, settings, nowMs } = options;
  const bootDelayMs = config?.bootDelayMs ?? 0;
  const powerOffsMs = lastDay(power?.powerOffs ?? [], nowMs).map((t) => Date.parse(t));
  const common = {
    powerOffsMs,
    bootDelayMs,
    ...(power?.poweredOnAt !== undefined && { poweredOnAtMs: Date.parse(power.poweredOnAt) }),
  };
  const state = stateOf(power);
  if (state === 'evacuating' || state === 'powering-off') {
    return { part: 'none', fields: {}, note: `${name} is ${state} for a power-off: it takes no part` };
  }
  if (state === 'off' || state === 'powering-on') {
    if (!config || !power?.capacity) {
      return {
        part: 'none',
        fields: {},
        note: `${name} is off with no power driver or no known capacity: it stays off`,
      };
    }
    return {
      part: state === 'off' ? 'off' : 'booting',
      fields: {
        ...common,
        cpuCapacity: power.capacity.cpus,
        ...(power.capacity.memoryBytes > 0 && { memoryBytes: power.capacity.memoryBytes }),
        power: state === 'off' ? 'off' : 'booting',
        ...(state === 'powering-on' && { readyAtMs: Date.parse(power.since) + bootDelayMs }),
      },
    };
  }
  const abortedAt = power?.abortedAt !== undefined ? Date.parse(power.abortedAt) : undefined;
  const backingOff = abortedAt !== undefined && nowMs - abortedAt < settings.lowWindowMs;
  return {
    part: 'on',
    fields: { ...common, powerManaged: config !== undefined && !backingOff },
    ...(backingOff && {
      note: `${name} stays on: its last power-off was aborted less than a low window ago (${power?.error ?? power?.reason})`,
    }),
  };
}

export interface PowerSteps {
  /** Every member's power record. */
  read(): Promise<Map<string, MemberPower>>;
  /** Starts an evacuation for a power-off: the member is marked evacuated, its record `evacuating`. */
  evacuate(e: Evacuation, config: MemberPowerConfig): Promise<void>;
  /** Powers a member on through its driver: `powering-on` until its daemon is back. */
  powerOn(p: PowerOn, config: MemberPowerConfig): Promise<void>;
  /** Takes every member in a passing state one step on (the election key held). */
  advance(configs: ReadonlyMap<string, MemberPowerConfig>): Promise<void>;
  /** Whether a member is in a passing state (an advance is needed). */
  pending(): Promise<boolean>;
}

export function createPowerSteps(deps: PowerStepsDeps): PowerSteps {
  const { store, hostName, now } = deps;
  const log = deps.log.child({ component: 'power' });
  const iso = () => new Date(now()).toISOString();

  const say = (member: string, action: string, power: MemberPower, extra: Record<string, unknown> = {}) => {
    const line = `${member}: ${power.reason}`;
    if (action.endsWith('failed') || action.endsWith('aborted')) log.warn({ member, action }, line);
    else log.info({ member, action }, line);
    deps.events?.publish({
      type: 'lifecycle',
      action,
      source: `/1.0/cluster/members/${member}`,
      location: hostName,
      metadata: { member, ...power, ...extra },
    });
  };

  const write = async (member: string, next: MemberPower) => {
    await records.memberPower.at(member).put(store, next);
    return next;
  };

  /** Marks the member evacuated or restored (the evacuation controller does the rest). */
  const setEvacuated = async (member: string, evacuated: boolean): Promise<boolean> => {
    const ref = records.member.at(member);
    const m = await ref.get(store);
    if (!m) return false;
    if (m.value.evacuated === evacuated) return true;
    const { evacuateMode: _, ...rest } = m.value;
    await ref.put(store, { ...rest, evacuated }, { ifModRevision: m.modRevision });
    return true;
  };

  /** The power-off is called off: the member is restored and stays on. */
  const abort = async (member: string, power: MemberPower, reason: string) => {
    await setEvacuated(member, false);
    const next = await write(member, {
      ...power,
      state: 'on',
      since: iso(),
      reason,
      abortedAt: iso(),
      error: reason,
    });
    say(member, 'member-power-off-aborted', next);
  };

  /** Whether the member runs again in another boot than the one it was powered off in. */
  const cameBack = async (member: string, power: MemberPower): Promise<boolean> =>
    isBackOn((await records.memberHeartbeat.at(member).get(store))?.value, power.offBoot);

  async function powerOff(member: string, power: MemberPower, config: MemberPowerConfig | undefined) {
    if (!config) {
      await abort(
        member,
        power,
        `${member} has no power driver any more: the power-off is called off, it stays on`,
      );
      return;
    }
    try {
      await deps.driverFor(member, config).powerOff();
    } catch (e) {
      await abort(member, power, `powering ${member} off failed, it stays on: ${asTrivisorError(e).message}`);
      return;
    }
    const next = await write(member, {
      ...withoutError(power),
      state: 'off',
      since: iso(),
      reason: `${member} was powered off by its ${config.driver} driver (${power.reason})`,
      powerOffs: [...lastDay(power.powerOffs, now()), iso()],
    });
    say(member, 'member-powered-off', next);
  }

  async function step(member: string, power: MemberPower, config: MemberPowerConfig | undefined) {
    switch (power.state) {
      case 'on':
        return;
      case 'evacuating': {
        const m = await records.member.at(member).get(store);
        if (!m) {
          await store.delete(records.memberPower.key(member));
          return;
        }
        if (!m.value.evacuated) {
          const next = await write(member, {
            ...power,
            state: 'on',
            since: iso(),
            reason: `${member} was restored during its evacuation: it stays on`,
          });
          say(member, 'member-power-off-aborted', next);
          return;
        }
        const progress = await evacuationProgress(store, member, 'evacuate');
        if (progress.failed.length > 0) {
          const verdict = concludeEvacuation({ member, moves: [], reason: power.reason }, progress);
          await abort(member, power, verdict.reason);
          return;
        }
        if (progress.left.length > 0) {
          const timeout = deps.evacuationTimeoutMs ?? 30 * 60_000;
          if (now() - Date.parse(power.since) > timeout) {
            await abort(
              member,
              power,
              `evacuation of ${member} aborted, the member stays on: ${progress.left.length} guest(s) had not left after ${Math.round(timeout / 60_000)} min (${progress.left.slice(0, 3).join(', ')})`,
            );
          }
          return;
        }
        const verdict = concludeEvacuation({ member, moves: [], reason: power.reason }, { failed: [] });
        const listed = (await deps.members()).find((x) => x.name === member);
        const capacity = listed?.cpu
          ? { cpus: listed.cpu.cpus, memoryBytes: listed.memory?.totalBytes ?? 0 }
          : power.capacity;
        // The boot it goes off in: a heartbeat of another one is it back on.
        const beat = (await records.memberHeartbeat.at(member).get(store))?.value;
        const { offBoot: _, ...rest } = power;
        const next = await write(member, {
          ...rest,
          state: 'powering-off',
          since: iso(),
          reason: verdict.reason,
          ...(capacity && { capacity }),
          ...(beat && {
            offBoot: {
              incarnation: beat.incarnation,
              ...(beat.bootId !== undefined && { bootId: beat.bootId }),
            },
          }),
        });
        say(member, 'member-powering-off', next);
        if (member !== hostName) await powerOff(member, next, config);
        return;
      }
      case 'powering-off':
        // A member never runs its own power-off: its driver would switch it off under its feet,
        // before it could record that it did (and the member taking over from a dead decider
        // would switch it off a second time). Another member runs it, at its next step.
        if (member === hostName) return;
        // A decider that died between the record and the driver: the driver again (idempotent).
        await powerOff(member, power, config);
        return;
      case 'powering-on': {
        if (await cameBack(member, power)) {
          await setEvacuated(member, false);
          const next = await write(member, {
            ...withoutError(power),
            state: 'on',
            since: iso(),
            poweredOnAt: iso(),
            reason: `${member} is back and restored: it takes guests again (${power.reason})`,
          });
          say(member, 'member-powered-on', next);
          return;
        }
        const waitMs = 2 * (config?.bootDelayMs ?? 0) + 120_000;
        if (now() - Date.parse(power.since) > waitMs) {
          const next = await write(member, {
            ...power,
            state: 'off',
            since: iso(),
            reason: `${member} did not come back within ${Math.round(waitMs / 1000)} s of its power-on: it is taken as off`,
            error: 'no heartbeat after power-on',
          });
          say(member, 'member-power-on-failed', next);
        }
        return;
      }
      case 'off':
        // Powered on by hand: it is on, and stays evacuated until `cluster restore` says otherwise.
        if (await cameBack(member, power)) {
          const next = await write(member, {
            ...power,
            state: 'on',
            since: iso(),
            poweredOnAt: iso(),
            reason: `${member} came back without power management: it is on, and stays evacuated until restored`,
          });
          say(member, 'member-powered-on', next);
        }
        return;
    }
  }

  return {
    async read() {
      const listed = await records.memberPower.list(store);
      return new Map(listed.items.map((r) => [records.memberPower.nameOf(r.key), r.value]));
    },
    async evacuate(e, config) {
      const before = (await records.memberPower.at(e.member).get(store))?.value;
      if (stateOf(before) !== 'on') return;
      const m = await records.member.at(e.member).get(store);
      // An evacuation the administrator asked for is theirs: not turned into a power-off.
      if (!m || m.value.evacuated) return;
      const next = await write(e.member, {
        state: 'evacuating',
        since: iso(),
        reason: e.reason,
        powerOffs: lastDay(before?.powerOffs ?? [], now()),
        ...(before?.poweredOnAt !== undefined && { poweredOnAt: before.poweredOnAt }),
        ...(before?.capacity && { capacity: before.capacity }),
      });
      await setEvacuated(e.member, true);
      say(e.member, 'member-power-evacuate', next, {
        driver: config.driver,
        planned: e.moves.map((mv) => mv.summary),
      });
    },
    async powerOn(p, config) {
      const before = (await records.memberPower.at(p.member).get(store))?.value;
      if (before?.state !== 'off') return;
      const next = await write(p.member, {
        ...withoutError(before),
        state: 'powering-on',
        since: iso(),
        reason: p.reason,
      });
      say(p.member, 'member-powering-on', next, { driver: config.driver });
      try {
        await deps.driverFor(p.member, config).powerOn();
      } catch (e) {
        const failed = await write(p.member, {
          ...before,
          since: iso(),
          reason: `powering ${p.member} on failed, it stays off: ${asTrivisorError(e).message}`,
          error: asTrivisorError(e).message,
        });
        say(p.member, 'member-power-on-failed', failed);
      }
    },
    async advance(configs) {
      for (const [member, power] of await this.read()) {
        try {
          await step(member, power, configs.get(member));
        } catch (e) {
          log.warn({ member, err: asTrivisorError(e).message }, 'a power step failed; trying again');
        }
      }
    },
    async pending() {
      // An off member is looked at too: it may have been powered on by hand.
      for (const p of (await this.read()).values()) if (p.state !== 'on') return true;
      return false;
    },
  };
}
