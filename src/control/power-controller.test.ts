import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { aGuestSpec } from '../../test/fakes/guest-records.ts';
import type { MemberPower } from '../api/cluster-schemas.ts';
import { autonomicPolicy } from '../autonomic/controller.ts';
import type { Evacuation } from '../autonomic/power-manager.ts';
import { DEFAULT_REBALANCE_SETTINGS } from '../core/config-keys.ts';
import { DEFAULT_POWER_SETTINGS, type MemberPowerConfig } from '../core/power-keys.ts';
import type { TrivisorEvent } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { PowerDriver } from '../power/power-driver.ts';
import { createEventBus } from '../services/event-bus.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { type MemberHeartbeat, type MemberLoad, type MemberRecord, records } from '../store/records.ts';
import { createPowerSteps, isBackOn, isStandby, powerMemberState } from './power-controller.ts';
import { buildClusterState, type RebalanceMember } from './rebalance-controller.ts';

const GiB = 2 ** 30;
const NOW = Date.parse('2026-12-05T12:00:00Z');
const iso = (ms: number) => new Date(ms).toISOString();
const member = (name: string, evacuated = false): MemberRecord => ({
  name,
  address: '198.18.0.1:8444',
  roles: [],
  certificateFingerprint: 'x',
  version: 'test',
  joinedAt: iso(0),
  evacuated,
});
/** A heartbeat of a daemon of boot `bootId` (undefined: an older daemon that reports none), started at `startedAtMs`. */
const heartbeat = (
  bootId: string | undefined,
  startedAtMs: number,
  incarnation = `i-${bootId}-${startedAtMs}`,
): MemberHeartbeat => ({
  incarnation,
  ...(bootId !== undefined && { bootId }),
  version: 'test',
  startedAt: iso(startedAtMs),
  usage: {
    cpus: 2,
    cpuUsedPercent: 0,
    memoryTotalBytes: 8 * GiB,
    memoryAvailableBytes: 8 * GiB,
    measuredAt: iso(startedAtMs),
  },
});
const command: MemberPowerConfig = { driver: 'command', bootDelayMs: 20_000, on: 'on', off: 'off' };
const evacuation: Evacuation = { member: 'm3', moves: [], reason: 'its load stayed low' };

describe('power steps', () => {
  let store: KvEngine;
  let clock: number;
  let calls: string[];
  let failDriver: boolean;
  let events: TrivisorEvent[];
  const driver = (m: string): PowerDriver => ({
    kind: 'command',
    async powerOn() {
      calls.push(`on ${m}`);
      if (failDriver) throw new Error('outlet unreachable');
    },
    async powerOff() {
      calls.push(`off ${m}`);
      if (failDriver) throw new Error('outlet unreachable');
    },
    status: async () => 'unknown',
  });
  const steps = () => {
    const bus = createEventBus();
    bus.subscribe((e) => events.push(e));
    return createPowerSteps({
      store,
      hostName: 'm1',
      members: async () => [{ name: 'm3', cpu: { cpus: 2 }, memory: { totalBytes: 8 * GiB } }],
      driverFor: driver,
      events: bus,
      log: silentLogger(),
      now: () => clock,
    });
  };
  const powerOf = async (m: string) => (await records.memberPower.at(m).get(store))?.value;
  const evacuated = async (m: string) => (await records.member.at(m).get(store))?.value.evacuated;

  beforeEach(async () => {
    store = createMemoryStore();
    clock = NOW;
    calls = [];
    failDriver = false;
    events = [];
    for (const m of ['m1', 'm3']) await records.member.at(m).put(store, member(m));
    await records.guest.at('g').put(store, aGuestSpec({ name: 'g', location: 'm3' }));
  });
  afterEach(async () => {
    await store.close();
  });

  test('an evacuation whose guest could not leave aborts the power-off: restored, on, with the reason and an event; nothing is switched off', async () => {
    const s = steps();
    await s.evacuate(evacuation, command);
    assert.equal((await powerOf('m3'))?.state, 'evacuating');
    assert.equal(await evacuated('m3'), true, 'the evacuation controller is asked to empty it');
    await s.advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'evacuating', 'its guest has not left yet');
    // What the evacuation controller records when the mover refuses.
    await records.evacuation
      .at('g')
      .put(store, { origin: 'm3', action: 'migrate', at: iso(clock), error: 'ct guests cannot move live' });
    await s.advance(new Map([['m3', command]]));
    const p = await powerOf('m3');
    assert.equal(p?.state, 'on');
    assert.equal(
      p?.reason,
      'evacuation of m3 aborted, the member stays on: moving g failed (ct guests cannot move live)',
    );
    assert.equal(p?.abortedAt, iso(NOW));
    assert.equal(await evacuated('m3'), false, 'restored');
    assert.deepEqual(calls, []);
    assert.deepEqual(
      events.map((e) => e.action),
      ['member-power-evacuate', 'member-power-off-aborted'],
    );
  });

  test('an empty member is powered off with its capacity and boot kept; a power-on waits for a heartbeat of another boot, then restores it', async () => {
    const s = steps();
    await records.memberHeartbeat.at('m3').put(store, heartbeat('boot-1', NOW - 3_600_000));
    await s.evacuate(evacuation, command);
    await records.guest.at('g').put(store, aGuestSpec({ name: 'g', location: 'm1' }));
    clock += 5_000;
    await s.advance(new Map([['m3', command]]));
    let p = await powerOf('m3');
    assert.equal(p?.state, 'off');
    assert.deepEqual(p?.powerOffs, [iso(NOW + 5_000)]);
    assert.deepEqual(p?.capacity, { cpus: 2, memoryBytes: 8 * GiB });
    assert.deepEqual(p?.offBoot, { incarnation: `i-boot-1-${NOW - 3_600_000}`, bootId: 'boot-1' });
    assert.match(p?.reason ?? '', /^m3 was powered off by its command driver \(m3 is empty/);
    assert.equal(isStandby(p?.state), true);
    assert.equal(await evacuated('m3'), true, 'an off member stays evacuated: placement and HA pass it by');
    assert.deepEqual(calls, ['off m3']);

    clock += 60_000;
    await s.powerOn({ member: 'm3', readyAtMs: clock + 20_000, reason: 'demand rose' }, command);
    assert.equal((await powerOf('m3'))?.state, 'powering-on');
    assert.deepEqual(calls, ['off m3', 'on m3']);
    // The heartbeat of the boot it went off in, still on its lease, is not it coming back; nor is
    // a daemon restarted in that boot with a clock ahead of the decider's.
    await s.advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'powering-on');
    await records.memberHeartbeat.at('m3').put(store, heartbeat('boot-1', clock + 3_600_000));
    await s.advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'powering-on');
    // A new boot whose clock is an hour behind: back.
    await records.memberHeartbeat.at('m3').put(store, heartbeat('boot-2', NOW - 3_600_000));
    await s.advance(new Map([['m3', command]]));
    p = await powerOf('m3');
    assert.equal(p?.state, 'on');
    assert.equal(p?.poweredOnAt, iso(clock));
    assert.equal(p?.reason, 'm3 is back and restored: it takes guests again (demand rose)');
    assert.equal(await evacuated('m3'), false);
    assert.deepEqual(
      events.map((e) => e.action),
      [
        'member-power-evacuate',
        'member-powering-off',
        'member-powered-off',
        'member-powering-on',
        'member-powered-on',
      ],
    );
  });

  test('a member never runs its own power-off: it records powering-off, and another member runs the driver and records it off', async () => {
    const stepsOn = (host: string) =>
      createPowerSteps({
        store,
        hostName: host,
        members: async () => [{ name: 'm3', cpu: { cpus: 2 }, memory: { totalBytes: 8 * GiB } }],
        driverFor: driver,
        events: createEventBus(),
        log: silentLogger(),
        now: () => clock,
      });
    await stepsOn('m3').evacuate(evacuation, command);
    await records.guest.at('g').put(store, aGuestSpec({ name: 'g', location: 'm1' }));
    await stepsOn('m3').advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'powering-off');
    await stepsOn('m3').advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'powering-off', 'still not by itself');
    assert.deepEqual(calls, []);
    await stepsOn('m1').advance(new Map([['m3', command]]));
    const p = await powerOf('m3');
    assert.equal(p?.state, 'off');
    assert.equal(p?.powerOffs.length, 1);
    assert.deepEqual(calls, ['off m3'], 'switched off once, by m1');
  });

  test('a driver that fails: a power-off is aborted (it stays on), a power-on leaves it off; a member that never comes back is taken as off', async () => {
    const s = steps();
    failDriver = true;
    await s.evacuate(evacuation, command);
    await records.guest.at('g').put(store, aGuestSpec({ name: 'g', location: 'm1' }));
    await s.advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'on');
    assert.match(
      (await powerOf('m3'))?.reason ?? '',
      /^powering m3 off failed, it stays on: outlet unreachable/,
    );
    assert.equal(await evacuated('m3'), false);

    const off: MemberPower = { state: 'off', since: iso(clock), reason: 'x', powerOffs: [iso(clock)] };
    await records.memberPower.at('m3').put(store, off);
    await s.powerOn({ member: 'm3', readyAtMs: clock, reason: 'demand rose' }, command);
    assert.equal((await powerOf('m3'))?.state, 'off');
    assert.match(
      (await powerOf('m3'))?.reason ?? '',
      /^powering m3 on failed, it stays off: outlet unreachable/,
    );

    failDriver = false;
    await s.powerOn({ member: 'm3', readyAtMs: clock, reason: 'demand rose' }, command);
    clock += 2 * 20_000 + 120_001;
    await s.advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'off');
    assert.match((await powerOf('m3'))?.reason ?? '', /did not come back within 160 s/);
  });

  test('an evacuation the administrator asked for is not turned into a power-off; one restored by hand meanwhile stays on', async () => {
    const s = steps();
    await records.member.at('m3').put(store, member('m3', true));
    await s.evacuate(evacuation, command);
    assert.equal(await powerOf('m3'), undefined);
    await records.member.at('m3').put(store, member('m3'));
    await s.evacuate(evacuation, command);
    await records.member.at('m3').put(store, member('m3'));
    await s.advance(new Map([['m3', command]]));
    assert.equal((await powerOf('m3'))?.state, 'on');
    assert.equal((await powerOf('m3'))?.reason, 'm3 was restored during its evacuation: it stays on');
    assert.deepEqual(calls, []);
  });
});

describe('back on after a power-off', () => {
  const offAt = Date.parse('2026-12-05T12:00:00Z');
  const off = { bootId: 'boot-1', incarnation: 'i-1' };

  test('isBackOn() judges by boot id only: a member whose clock is behind or ahead is back only in a new boot', () => {
    for (const skewMs of [-86_400_000, -60_000, 0, 60_000, 86_400_000]) {
      // The old boot's daemon, or one restarted in it, whatever its clock says.
      assert.equal(isBackOn(heartbeat('boot-1', offAt + skewMs, 'i-1'), off), false, `old boot ${skewMs}`);
      assert.equal(isBackOn(heartbeat('boot-1', offAt + skewMs, 'i-2'), off), false, `restart ${skewMs}`);
      // A new boot, whatever its clock says.
      assert.equal(isBackOn(heartbeat('boot-2', offAt + skewMs, 'i-3'), off), true, `new boot ${skewMs}`);
    }
    assert.equal(isBackOn(undefined, off), false, 'no heartbeat: not back');
  });

  test('isBackOn() without boot ids: another daemon life of an older daemon; any heartbeat when none was seen at the power-off', () => {
    assert.equal(isBackOn(heartbeat(undefined, offAt + 60_000, 'i-1'), off), false);
    assert.equal(isBackOn(heartbeat(undefined, offAt - 60_000, 'i-2'), off), true);
    assert.equal(isBackOn(heartbeat('boot-2', offAt, 'i-1'), { incarnation: 'i-1' }), false);
    assert.equal(isBackOn(heartbeat('boot-2', offAt, 'i-2'), { incarnation: 'i-1' }), true);
    assert.equal(isBackOn(heartbeat('boot-1', offAt - 60_000), undefined), true);
  });

  test('a member powered on by hand in a new boot is on again, its clock behind; the old boot heartbeat is not it', async () => {
    const store = createMemoryStore();
    try {
      const s = createPowerSteps({
        store,
        hostName: 'm1',
        members: async () => [],
        driverFor: () => {
          throw new Error('no driver call expected');
        },
        log: silentLogger(),
        now: () => offAt + 120_000,
      });
      await records.member.at('m3').put(store, member('m3', true));
      const record: MemberPower = {
        state: 'off',
        since: iso(offAt),
        reason: 'x',
        powerOffs: [iso(offAt)],
        offBoot: off,
      };
      await records.memberPower.at('m3').put(store, record);
      await records.memberHeartbeat.at('m3').put(store, heartbeat('boot-1', offAt + 60_000, 'i-1'));
      await s.advance(new Map([['m3', command]]));
      assert.equal((await records.memberPower.at('m3').get(store))?.value.state, 'off');
      await records.memberHeartbeat.at('m3').put(store, heartbeat('boot-2', offAt - 600_000, 'i-2'));
      await s.advance(new Map([['m3', command]]));
      const p = (await records.memberPower.at('m3').get(store))?.value;
      assert.equal(p?.state, 'on');
      assert.equal(
        p?.reason,
        'm3 came back without power management: it is on, and stays evacuated until restored',
      );
    } finally {
      await store.close();
    }
  });
});

describe('power management in the cycle', () => {
  const settings = { ...DEFAULT_REBALANCE_SETTINGS, windowMs: 60_000 };
  const power = { ...DEFAULT_POWER_SETTINGS, enabled: true, lowWindowMs: 60_000, highWindowMs: 30_000 };
  const rm = (name: string, status = 'Online'): RebalanceMember => ({
    name,
    status,
    cpu: status === 'Online' ? { cpus: 2 } : null,
    memory: status === 'Online' ? { totalBytes: 8 * GiB } : null,
  });
  const load = (guests: MemberLoad['guests']): MemberLoad => ({
    stepSeconds: 10,
    endAt: NOW / 1000,
    publishedAt: iso(NOW),
    guests,
  });
  const flat = (cpu: number) => ({
    model: 'ct' as const,
    cpu: new Array(6).fill(cpu),
    memoryBytes: new Array(6).fill(64 * 2 ** 20),
  });
  const stateOf = (records: Map<string, MemberPower>, guests: Record<string, [string, number]>) => {
    const byMember = new Map<string, MemberLoad['guests']>();
    for (const [g, [m, cpu]] of Object.entries(guests)) {
      byMember.set(m, { ...(byMember.get(m) ?? {}), [g]: flat(cpu) });
    }
    return buildClusterState({
      nowMs: NOW,
      settings,
      members: [rm('m1'), rm('m2'), rm('m3', records.get('m3')?.state === 'off' ? 'Standby' : 'Online')],
      loads: new Map(['m1', 'm2', 'm3'].map((m) => [m, load(byMember.get(m) ?? {})])),
      specs: Object.entries(guests).map(([g, [m]]) => aGuestSpec({ name: g, location: m })),
      moves: [],
      bandwidthBytesPerSecond: 1e8,
      power: { settings: power, records, configs: new Map([['m3', command]]) },
    });
  };
  const policy = (onAt = 1) =>
    autonomicPolicy({
      power: { lowWindowMs: 60_000, highWindowMs: 30_000, powerOnAt: onAt, maxEvacuationsPerCycle: 1 },
    });

  test('only a member with a driver is powered off: idle m3 is emptied, m1 and m2 are not candidates', () => {
    const { state } = stateOf(new Map(), { a: ['m1', 0.1], b: ['m3', 0.05] });
    assert.deepEqual(
      state.members.map((m) => [m.id, m.power, m.powerManaged]),
      [
        ['m1', 'on', false],
        ['m2', 'on', false],
        ['m3', 'on', true],
      ],
    );
    const d = policy().decide(state);
    assert.deepEqual(
      d.evacuations.map((e) => [e.member, e.moves.map((m) => m.guest)]),
      [['m3', ['b']]],
    );
    assert.deepEqual(d.powerOn, []);
  });

  test('an off member takes part as off with the capacity it went off with, and is powered on when demand rises', () => {
    const off: MemberPower = {
      state: 'off',
      since: iso(NOW - 600_000),
      reason: 'x',
      powerOffs: [iso(NOW - 600_000)],
      capacity: { cpus: 2, memoryBytes: 8 * GiB },
    };
    const quiet = stateOf(new Map([['m3', off]]), { a: ['m1', 0.05] });
    const m3 = quiet.state.members.find((m) => m.id === 'm3');
    assert.deepEqual(
      [m3?.power, m3?.cpuCapacity, m3?.memoryBytes, m3?.bootDelayMs, m3?.powerOffsMs],
      ['off', 2, 8 * GiB, 20_000, [NOW - 600_000]],
    );
    assert.deepEqual(policy(0.1).decide(quiet.state).powerOn, []);
    const busy = stateOf(new Map([['m3', off]]), { a: ['m1', 1] });
    assert.deepEqual(
      policy(0.1)
        .decide(busy.state)
        .powerOn.map((p) => p.member),
      ['m3'],
    );
  });

  test('a member whose power-off was aborted is left on for a low window, said in a note; one being emptied takes no part', () => {
    const aborted: MemberPower = {
      state: 'on',
      since: iso(NOW - 10_000),
      reason: 'evacuation of m3 aborted',
      powerOffs: [],
      abortedAt: iso(NOW - 10_000),
      error: 'moving pinned failed',
    };
    const r = powerMemberState({ name: 'm3', power: aborted, config: command, settings: power, nowMs: NOW });
    assert.equal(r.fields.powerManaged, false);
    assert.equal(
      r.note,
      'm3 stays on: its last power-off was aborted less than a low window ago (moving pinned failed)',
    );
    assert.equal(
      powerMemberState({ name: 'm3', power: aborted, config: command, settings: power, nowMs: NOW + 60_000 })
        .fields.powerManaged,
      true,
    );
    const emptying = powerMemberState({
      name: 'm3',
      power: { ...aborted, state: 'evacuating' },
      config: command,
      settings: power,
      nowMs: NOW,
    });
    assert.equal(emptying.part, 'none');
  });
});
