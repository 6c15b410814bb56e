import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { countingStore } from '../../test/fakes/counting-store.ts';
import { aGuestSpec } from '../../test/fakes/guest-records.ts';
import type { ClusterMove } from '../api/cluster-schemas.ts';
import { DEFAULT_REBALANCE_SETTINGS, rebalanceSettings } from '../core/config-keys.ts';
import { isTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, TrivisorEvent } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import { memberByClusterAddress } from '../network/forward-pins.ts';
import { createEventBus } from '../services/event-bus.ts';
import { type MetricsHistory, openMetricsHistory } from '../services/metrics-history.ts';
import { guestSeries, hostSeries } from '../services/metrics-sampler.ts';
import { createOperationService } from '../services/operation-service.ts';
import type { OperationService } from '../services/types.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { type MemberLoad, records } from '../store/records.ts';
import {
  buildClusterState,
  createRebalanceController,
  memberLoadOf,
  pinnedGuests,
  plannedGuest,
  type RebalanceMember,
} from './rebalance-controller.ts';

const GiB = 2 ** 30;
const member = (name: string, status = 'Online'): RebalanceMember => ({
  name,
  status,
  cpu: { cpus: 2 },
  memory: { totalBytes: 8 * GiB },
});
const spec = (name: string, location: string, config: Record<string, string> = {}): GuestSpec =>
  aGuestSpec({ name, location, config });
const settings = { ...DEFAULT_REBALANCE_SETTINGS, windowMs: 60_000 };
// 12:00:00 exactly: the 10 s steps of the window end at 11:59:50 … 12:00:00.
const NOW = Date.parse('2026-12-05T12:00:00Z');
const endAt = NOW / 1000;

describe('buildClusterState', () => {
  const load = (guests: MemberLoad['guests'], end = endAt): MemberLoad => ({
    stepSeconds: 10,
    endAt: end,
    publishedAt: new Date(NOW).toISOString(),
    guests,
  });

  test('members that are not Online, published no recent load or measured less than half the window take no part, with the reason', () => {
    const { state, notes } = buildClusterState({
      nowMs: NOW,
      settings,
      members: [member('a'), member('b', 'Offline'), member('c'), member('d'), member('e')],
      loads: new Map([
        ['a', load({})],
        ['b', load({})],
        ['d', load({}, endAt - 120)],
        ['e', { ...load({}), measuredSteps: 2 }],
      ]),
      specs: [],
      moves: [],
      bandwidthBytesPerSecond: 1e8,
    });
    assert.deepEqual(
      state.members.map((m) => m.id),
      ['a'],
    );
    assert.deepEqual(notes, [
      'b is Offline: it takes no part',
      'c has published no recent load: it takes no part',
      'd has published no recent load: it takes no part',
      "e has measured 2 of the window's 6 steps, fewer than half: it takes no part yet",
    ]);
  });

  test("the etcd voters are counted from the members' roles, Offline ones too; a member's measured links come from the store's", () => {
    const voter = (name: string, status = 'Online') => ({ ...member(name, status), roles: ['etcd-voter'] });
    const { state } = buildClusterState({
      nowMs: NOW,
      settings,
      members: [voter('a'), voter('b', 'Offline'), voter('c'), { ...member('d'), roles: ['etcd-client'] }],
      loads: new Map(['a', 'b', 'c', 'd'].map((n) => [n, load({})])),
      specs: [],
      moves: [],
      bandwidthBytesPerSecond: 1e8,
      links: new Map([['a', { c: { bytesPerSecond: 5e7, moves: 2 } }]]),
    });
    assert.equal(state.etcdVoters, 3);
    assert.deepEqual(
      state.members.map((m) => `${m.id}${m.etcdVoter ? ' voter' : ''}`),
      ['a voter', 'c voter', 'd'],
    );
    assert.deepEqual(state.members[0]?.links, { c: { bytesPerSecond: 5e7, moves: 2 } });
  });

  test("a guest that a port forward of its member's cluster address points at is pinned, with the note; other guests are not", () => {
    const nic = (ip: string) => ({ eth0: { type: 'nic' as const, network: 'lab', 'ipv4.address': ip } });
    const lab = {
      name: 'lab',
      description: '',
      config: { 'ipv4.address': '198.18.50.1/24' },
      generation: 1,
      deleting: false,
      location: 'a',
      createdAt: new Date(0).toISOString(),
      forwards: [
        {
          listenAddress: '198.18.0.11',
          listenPort: 8080,
          protocol: 'tcp' as const,
          targetAddress: '198.18.50.20',
          targetPort: 80,
        },
      ],
    };
    const pinned = pinnedGuests(
      [
        aGuestSpec({ name: 'web', location: 'a', devices: nic('198.18.50.20') }),
        aGuestSpec({ name: 'db', location: 'a', devices: nic('198.18.50.21') }),
      ],
      [lab],
      memberByClusterAddress([
        { name: 'a', address: '198.18.0.11:8443' },
        { name: 'b', address: '198.18.0.12:8443' },
      ]),
    );
    const why =
      "web is pinned to a by port forward lab 198.18.0.11:8080/tcp → 198.18.50.20:80 (a forward reaches only the guests of its listen address's member)";
    assert.deepEqual([...pinned], [['web', why]]);
    const { state } = buildClusterState({
      nowMs: NOW,
      settings,
      members: [member('a'), member('b')],
      loads: new Map([
        [
          'a',
          load({
            web: { model: 'ct', cpu: [1, 1, 1, 1, 1, 1], memoryBytes: [1, 1, 1, 1, 1, 1] },
            db: { model: 'ct', cpu: [1, 1, 1, 1, 1, 1], memoryBytes: [1, 1, 1, 1, 1, 1] },
          }),
        ],
        ['b', load({})],
      ]),
      specs: [spec('web', 'a'), spec('db', 'a')],
      moves: [],
      bandwidthBytesPerSecond: 1e8,
      pinned,
    });
    assert.deepEqual(
      state.guests.map((g) => [g.id, g.pinned]),
      [
        ['db', undefined],
        ['web', why],
      ],
    );
  });

  test('plannedGuest keeps what a plan reads: NICs as network and fixed address, one shared empty config; pins and budgets are as from whole specs', () => {
    const lab = {
      name: 'lab',
      description: '',
      config: { 'ipv4.address': '198.18.50.1/24' },
      generation: 1,
      deleting: false,
      location: 'a',
      createdAt: new Date(0).toISOString(),
      forwards: [
        {
          listenAddress: '198.18.0.11',
          listenPort: 8080,
          protocol: 'tcp' as const,
          targetAddress: '198.18.50.20',
          targetPort: 80,
        },
      ],
    };
    const whole = [
      aGuestSpec({
        name: 'web',
        location: 'a',
        devices: {
          eth0: {
            type: 'nic',
            network: 'lab',
            hwaddr: '00:16:3e:00:00:01',
            'ipv4.address': '198.18.50.20',
            'limits.ingress': '10Mbit',
          },
          eth1: { type: 'nic', network: 'lab', hwaddr: '00:16:3e:00:00:02' },
        },
      }),
      aGuestSpec({ name: 'dhcp', location: 'a', devices: { eth0: { type: 'nic', network: 'lab' } } }),
      aGuestSpec({ name: 'db', location: 'a', config: { 'limits.memory': '1GiB' } }),
      aGuestSpec({ name: 'vm', location: 'b', config: { 'migration.downtime_budget': '0', 'user.x': 'y' } }),
    ];
    const [web, dhcp, db, vm] = whole.map(plannedGuest);
    assert.deepEqual(web?.devices, { eth0: { type: 'nic', network: 'lab', 'ipv4.address': '198.18.50.20' } });
    assert.equal(dhcp?.devices, undefined, 'a NIC without a fixed address pins nothing: not kept');
    assert.deepEqual(db?.config, {});
    assert.equal(db?.config, web?.config, 'guests without a planned key share one config');
    assert.deepEqual(vm?.config, { 'migration.downtime_budget': '0' });
    const memberOf = memberByClusterAddress([
      { name: 'a', address: '198.18.0.11:8443' },
      { name: 'b', address: '198.18.0.12:8443' },
    ]);
    const planned = whole.map(plannedGuest);
    assert.deepEqual([...pinnedGuests(planned, [lab], memberOf)], [...pinnedGuests(whole, [lab], memberOf)]);
    assert.equal(pinnedGuests(planned, [lab], memberOf).size, 1);
  });

  test("series are aligned on the window's steps, gaps are no demand, and the last move, the budget and the owner come from the records", () => {
    const moves: ClusterMove[] = [
      { ...aMove('busy', 'b', 'a', NOW - 600_000), result: 'moved', finishedAt: '' },
      { ...aMove('busy', 'a', 'b', NOW - 900_000), result: 'moved', finishedAt: '' },
      { ...aMove('idle', 'a', 'b', NOW - 100_000), result: 'failed', finishedAt: '' },
    ];
    const { state } = buildClusterState({
      nowMs: NOW,
      settings,
      members: [member('a'), member('b')],
      loads: new Map([
        // a published 10 s earlier than b: its last step is one behind, and its first one old.
        [
          'a',
          load(
            { busy: { model: 'ct', cpu: [9, 1, 1, null, 1, 1, 1], memoryBytes: [0, 1, 1, 1, 1, 1, 1] } },
            endAt - 10,
          ),
        ],
        [
          'b',
          load({
            idle: { model: 'ct', cpu: [0, 0, 0, 0, 0, 0], memoryBytes: [5, 5, 5, 5, 5, 5] },
            moved: { model: 'ct', cpu: [1, 1, 1, 1, 1, 1], memoryBytes: [1, 1, 1, 1, 1, 1] },
          }),
        ],
      ]),
      specs: [
        spec('busy', 'a', { 'migration.downtime_budget': '0' }),
        spec('idle', 'b', { 'migration.downtime_budget': '2m' }),
        spec('moved', 'a'),
      ],
      moves,
      bandwidthBytesPerSecond: 1e8,
    });
    assert.equal(state.intervalMs, 10_000);
    const busy = state.guests.find((g) => g.id === 'busy');
    assert.deepEqual(Array.from(busy?.cpu ?? []), [1, 1, 0, 1, 1, 1]);
    assert.equal(busy?.downtimeBudgetMs, 0);
    assert.deepEqual(busy?.lastMove, { atMs: NOW - 600_000, from: 'b', to: 'a' });
    const idle = state.guests.find((g) => g.id === 'idle');
    assert.equal(idle?.downtimeBudgetMs, 120_000);
    assert.equal(idle?.lastMove, undefined, 'a failed move is no move');
    assert.equal(
      state.guests.find((g) => g.id === 'moved'),
      undefined,
      'a guest its publisher no longer owns is left out',
    );
  });

  test('a guest that moved in or started in the window repeats its measured steps before its first sample here; later gaps stay no demand', () => {
    const { state } = buildClusterState({
      nowMs: NOW,
      settings,
      members: [member('a')],
      loads: new Map([
        [
          'a',
          load({
            arrived: {
              model: 'ct',
              cpu: [null, null, null, null, 2, 4],
              memoryBytes: [null, null, null, 7, 8, 9],
            },
            started: { model: 'vm', cpu: [3], memoryBytes: [5] },
            paused: { model: 'ct', cpu: [null, 1, null, 1, 1, 1], memoryBytes: [1, 1, 1, 1, 1, 1] },
          }),
        ],
      ]),
      specs: [spec('arrived', 'a'), spec('started', 'a'), spec('paused', 'a')],
      moves: [],
      bandwidthBytesPerSecond: 1e8,
    });
    const of = (id: string) => state.guests.find((g) => g.id === id);
    assert.deepEqual(Array.from(of('arrived')?.cpu ?? []), [2, 4, 2, 4, 2, 4]);
    assert.deepEqual(Array.from(of('arrived')?.memoryBytes ?? []), [7, 8, 9, 7, 8, 9]);
    assert.deepEqual(
      Array.from(of('started')?.cpu ?? []),
      [3, 3, 3, 3, 3, 3],
      'a series shorter than the window',
    );
    assert.deepEqual(
      Array.from(of('paused')?.cpu ?? []),
      [1, 1, 0, 1, 1, 1],
      'a gap after the first sample is no demand',
    );
  });
});

function aMove(guest: string, from: string, to: string, atMs: number) {
  return {
    atMs,
    guest,
    model: 'ct' as const,
    from,
    to,
    how: 'cold' as const,
    reason: 'balance' as const,
    imbalanceBefore: 0.3,
    imbalanceAfter: 0.1,
    loadBefore: { from: 0.6, to: 0 },
    loadAfter: { from: 0.3, to: 0.3 },
    benefitSeconds: 100,
    costSeconds: 1,
    copySeconds: 0,
    downtimeMs: 1000,
    constraints: [],
    summary: 'x',
  };
}

describe('rebalance controller', () => {
  let store: KvEngine;
  let operations: OperationService;
  let history: MetricsHistory;
  let clock: number;
  let moved: string[];
  let events: TrivisorEvent[];
  /** The members as `cluster list` has them, each time the controller asks. */
  let membersNow: () => RebalanceMember[];
  const controllers: Array<ReturnType<typeof createRebalanceController>> = [];
  const controllerOf = (hostName: string, keep?: number) => {
    const bus = createEventBus();
    bus.subscribe((e) => events.push(e));
    const c = createRebalanceController({
      store,
      hostName,
      ...(keep !== undefined && { keep }),
      // Each member has its own history; here one holds every guest's, read by whoever owns it.
      history,
      operations,
      events: bus,
      log: silentLogger(),
      now: () => clock,
      members: async () => membersNow(),
      // Short, so that a move left waiting fails the test rather than hanging it.
      moveTimeoutMs: 20_000,
      mover: {
        async move(name, { target, live }) {
          moved.push(`${name}->${target}${live ? ' live' : ''}`);
          return operations.start({
            project: 'default',
            description: `move ${name}`,
            resources: {},
            run: async () => {
              const s = await records.guest.at(name).get(store);
              assert.ok(s);
              await records.guest.at(name).put(store, { ...s.value, location: target });
              return undefined;
            },
          });
        },
      },
    });
    controllers.push(c);
    return c;
  };

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    history = openMetricsHistory(':memory:');
    moved = [];
    events = [];
    membersNow = () => [member('h1'), member('h2')];
    clock = NOW - 60_000;
    // A busy guest and its idle twin (same configuration) on h1 with a busy guest that may not
    // cold-move; h2 idle. One core is 1.0 of cpu, h1 has 2: it is full.
    await records.guest.at('busy').put(store, spec('busy', 'h1'));
    await records.guest.at('idle').put(store, spec('idle', 'h1'));
    await records.guest.at('anchor').put(store, spec('anchor', 'h1', { 'migration.downtime_budget': '0' }));
    await records.guest.at('other').put(store, spec('other', 'h2'));
    for (; clock <= NOW; clock += 10_000) {
      history.record(
        [
          { series: guestSeries('busy'), values: { cpu: 1, memoryBytes: 64 * 2 ** 20 } },
          { series: guestSeries('idle'), values: { cpu: 0.001, memoryBytes: 64 * 2 ** 20 } },
          { series: guestSeries('anchor'), values: { cpu: 1, memoryBytes: 64 * 2 ** 20 } },
          { series: guestSeries('other'), values: { cpu: 0.001, memoryBytes: 2 ** 20 } },
          // The members' own series: they have measured the whole window.
          { series: hostSeries('h1'), values: { memoryBytes: GiB } },
          { series: hostSeries('h2'), values: { memoryBytes: GiB } },
        ],
        clock,
      );
    }
    clock = NOW;
  });
  afterEach(async () => {
    for (const c of controllers.splice(0)) await c.stop();
    history.close();
    await store.close();
  });

  test('memberLoadOf publishes the maximum of each step of the guests it is given over the window, and how much of it the member measured', () => {
    const load = memberLoadOf({
      history,
      hostName: 'h1',
      guests: [spec('busy', 'h1')],
      windowMs: 60_000,
      nowMs: NOW,
    });
    assert.equal(load.stepSeconds, 10);
    assert.equal(load.endAt, endAt);
    assert.equal(load.measuredSteps, 6);
    assert.deepEqual(load.guests.busy?.cpu, [1, 1, 1, 1, 1, 1]);
    const fresh = memberLoadOf({ history, hostName: 'h3', guests: [], windowMs: 60_000, nowMs: NOW });
    assert.equal(fresh.measuredSteps, 0);
  });

  test('memberLoadOf ends the window at the last step the member sampled, not at the step in progress', () => {
    // 12:00:05: the step of 12:00:00 is sampled, that of 12:00:10 not yet; and 9 s later, one
    // more step has begun with no sample: still the same window, not one ending on a step of 0.
    for (const nowMs of [NOW + 5_000, NOW + 19_000]) {
      const load = memberLoadOf({
        history,
        hostName: 'h1',
        guests: [spec('busy', 'h1')],
        windowMs: 60_000,
        nowMs,
      });
      assert.equal(load.endAt, endAt, `at ${new Date(nowMs).toISOString()}`);
      assert.deepEqual(load.guests.busy?.cpu, [1, 1, 1, 1, 1, 1]);
      assert.equal(load.measuredSteps, 6);
    }
    // Its next sample moves the end on.
    history.record(
      [
        { series: guestSeries('busy'), values: { cpu: 0.5, memoryBytes: 64 * 2 ** 20 } },
        { series: hostSeries('h1'), values: { memoryBytes: GiB } },
      ],
      NOW + 10_000,
    );
    const next = memberLoadOf({
      history,
      hostName: 'h1',
      guests: [spec('busy', 'h1')],
      windowMs: 60_000,
      nowMs: NOW + 19_000,
    });
    assert.equal(next.endAt, endAt + 10);
    assert.deepEqual(next.guests.busy?.cpu, [1, 1, 1, 1, 1, 0.5]);
  });

  test('a dry run plans the busy guest, not its idle twin nor the one with a budget of 0, and moves nothing; a cycle asked of the other member has the owner move it, explained; the next plan does not send it back within its cooldown', async () => {
    const h1 = controllerOf('h1');
    const h2 = controllerOf('h2');
    await h1.updateSettings({ 'cluster.rebalance.window': '1m' });
    await h1.publish();
    await h2.publish();

    const dry = await h2.run({ dryRun: true });
    assert.equal(dry.dryRun, true);
    assert.deepEqual(
      dry.planned.map((m) => `${m.guest} ${m.from}->${m.to} ${m.how}`),
      ['busy h1->h2 cold'],
    );
    assert.ok(
      dry.notes.some((n) => n.includes('anchor: migration.downtime_budget is 0')),
      dry.notes.join('\n'),
    );
    assert.deepEqual(moved, []);
    assert.deepEqual(await h1.moves(), []);

    // h2 plans; h1 owns the guest and carries the move out when it looks.
    const cycle = h2.run({ dryRun: false });
    while ((await records.rebalanceRequest.list(store)).items.length === 0)
      await new Promise((r) => setTimeout(r, 20));
    // While h2 holds the election key, h1 cannot run a cycle of its own.
    await assert.rejects(h1.run({ dryRun: false }), (e) => isTrivisorError(e) && e.code === 'Conflict');
    await h1.pass();
    const result = await cycle;
    assert.deepEqual(moved, ['busy->h2']);
    assert.deepEqual(
      result.moved.map((m) => `${m.guest} ${m.result}`),
      ['busy moved'],
    );
    const listed = await h2.moves();
    assert.equal(listed.length, 1);
    assert.equal(listed[0]?.guest, 'busy');
    assert.ok(listed[0]?.imbalanceAfter < listed[0]!.imbalanceBefore);
    assert.match(listed[0]?.summary ?? '', /busy \(ct\) cold h1 → h2/);
    assert.deepEqual(
      events.map((e) => `${e.action} ${e.location}`),
      ['cluster-move h1'],
    );
    assert.equal(await store.get(keys.rebalanceLeader), undefined, 'the election key goes with the cycle');

    // Now h2 is the full one and h1 nearly empty (anchor deleted, other busy): moving busy back
    // would balance as well as moving other, but busy is in its cooldown and left h1 last.
    const anchor = await records.guest.at('anchor').get(store);
    assert.ok(anchor);
    await records.guest.at('anchor').put(store, { ...anchor.value, deleting: true });
    for (let t = NOW - 60_000; t <= NOW; t += 10_000) {
      history.record([{ series: guestSeries('other'), values: { cpu: 1 } }], t);
    }
    await h1.publish();
    await h2.publish();
    const again = await h1.run({ dryRun: true });
    assert.deepEqual(
      again.planned.map((m) => `${m.guest} ${m.from}->${m.to}`),
      ['other h2->h1'],
    );
    assert.ok(again.notes.includes('1 guest(s) of h2 in their cooldown'), again.notes.join('\n'));
  });

  test('a vm moves live, made by the planner when it owns the guest; only the newest moves are kept', async () => {
    const busy = await records.guest.at('busy').get(store);
    assert.ok(busy);
    await records.guest.at('busy').put(store, { ...busy.value, model: 'vm' });
    for (const at of [NOW - 3_000_000, NOW - 2_000_000]) {
      const old = aMove('gone', 'h2', 'h1', at);
      await records.clusterMove
        .at(`${String(at).padStart(15, '0')}-gone`)
        .put(store, { ...old, result: 'moved', finishedAt: new Date(at).toISOString() });
    }
    const h1 = controllerOf('h1', 2);
    const h2 = controllerOf('h2');
    await h1.updateSettings({ 'cluster.rebalance.window': '1m' });
    await h1.publish();
    await h2.publish();
    const r = await h1.run({ dryRun: false });
    assert.deepEqual(
      r.moved.map((m) => `${m.guest} ${m.how} ${m.result}`),
      ['busy live moved'],
    );
    assert.deepEqual(moved, ['busy->h2 live']);
    assert.equal((await records.rebalanceRequest.list(store)).items.length, 0, 'no request: made here');
    assert.deepEqual(
      (await h1.moves()).map((m) => `${m.guest} ${m.atMs}`),
      [`busy ${NOW}`, `gone ${NOW - 2_000_000}`],
    );
  });

  test('bad settings are refused in one line and change nothing; null unsets a key', async () => {
    const h1 = controllerOf('h1');
    await h1.updateSettings({ 'cluster.rebalance.threshold': '20' });
    for (const [k, v] of [
      ['cluster.rebalance.aggressiveness', '6'],
      ['cluster.rebalance.interval', '1s'],
      ['cluster.rebalance.threshold', '-1'],
      ['cluster.rebalance.enabled', 'yes'],
      ['cluster.rebalance.nope', '1'],
    ] as const) {
      await assert.rejects(
        h1.updateSettings({ 'cluster.rebalance.cooldown': '2h', [k]: v }),
        (e) => isTrivisorError(e) && e.code === 'InvalidArgument' && !e.message.includes('\n'),
      );
    }
    assert.deepEqual(await h1.settings(), { 'cluster.rebalance.threshold': '20' });
    assert.equal(rebalanceSettings(await h1.settings()).targetImbalance, 0.2);
    await h1.updateSettings({ 'cluster.rebalance.threshold': null, 'cluster.rebalance.interval': '5' });
    assert.deepEqual(await h1.settings(), { 'cluster.rebalance.interval': '5' });
    assert.equal(rebalanceSettings(await h1.settings()).intervalMs, 300_000);
  });

  test('a periodic cycle runs once per interval, on one member, and not while disabled', async () => {
    const h1 = controllerOf('h1');
    const h2 = controllerOf('h2');
    await h1.updateSettings({ 'cluster.rebalance.window': '1m', 'cluster.rebalance.enabled': 'false' });
    await h1.pass();
    await h2.pass();
    assert.equal(await store.get(keys.rebalanceLast), undefined);
    await h1.updateSettings({ 'cluster.rebalance.enabled': null, 'cluster.rebalance.interval': '1m' });
    // h2 finds a cycle due (none ran yet), plans, and asks h1, the owner, for the move.
    const periodic = h2.pass();
    while ((await records.rebalanceRequest.list(store)).items.length === 0)
      await new Promise((r) => setTimeout(r, 20));
    await h1.pass();
    await periodic;
    assert.deepEqual(moved, ['busy->h2']);
    assert.equal((await store.get(keys.rebalanceLast))?.value, new Date(NOW).toISOString());
    // Not due again before the interval, on either member.
    await h1.pass();
    await h2.pass();
    assert.equal((await h1.moves()).length, 1);
  });

  test('a move whose owner is not Online fails at once, naming the member and its state; one whose owner goes Offline while asked is dropped', {
    timeout: 30_000,
  }, async () => {
    const h1 = controllerOf('h1');
    const h2 = controllerOf('h2');
    await h1.updateSettings({ 'cluster.rebalance.window': '1m' });
    await h1.publish();
    await h2.publish();
    // Online when the plan is made (the first look), Offline when the move is asked.
    let looks = 0;
    membersNow = () =>
      looks++ === 0 ? [member('h1'), member('h2')] : [member('h1', 'Offline'), member('h2')];
    const started = Date.now();
    const r = await h2.run({ dryRun: false });
    assert.ok(Date.now() - started < 5_000, 'not waited for');
    assert.deepEqual(
      r.moved.map((m) => `${m.guest} ${m.result}: ${m.error}`),
      ['busy failed: Member h1 is Offline: busy was not moved h1 → h2'],
    );
    assert.equal((await records.rebalanceRequest.list(store)).items.length, 0, 'nothing asked of h1');
    assert.deepEqual(moved, []);

    // The destination down is refused the same way.
    looks = 0;
    membersNow = () =>
      looks++ === 0 ? [member('h1'), member('h2')] : [member('h1'), member('h2', 'Standby')];
    const toStandby = await h2.run({ dryRun: false });
    assert.deepEqual(
      toStandby.moved.map((m) => m.error),
      ['Member h2 is Standby: busy was not moved h1 → h2'],
    );

    // Online when planned and asked, Offline while the request waits (h1 never looks): dropped.
    looks = 0;
    membersNow = () => (looks++ < 2 ? [member('h1'), member('h2')] : [member('h1', 'Offline'), member('h2')]);
    const dropped = await h2.run({ dryRun: false });
    assert.deepEqual(
      dropped.moved.map((m) => `${m.result}: ${m.error}`),
      ['failed: Member h1 went Offline before it moved busy: the move was dropped'],
    );
    assert.equal((await records.rebalanceRequest.list(store)).items.length, 0, 'the request is withdrawn');
    assert.deepEqual(moved, []);
  });
});

test('a publication after the first reads none of the 10,000 guests of other members, and names a guest that came here since (decision 0080)', async () => {
  const memory = createMemoryStore();
  const store = countingStore(memory);
  const history = openMetricsHistory(':memory:');
  const operations = createOperationService(createEventBus());
  const nowMs = Date.parse('2026-12-05T10:00:00Z');
  for (let i = 0; i < 10_000; i++) await records.guest.at(`o${i}`).put(memory, spec(`o${i}`, 'h2'));
  for (const name of ['a', 'b']) await records.guest.at(name).put(memory, spec(name, 'h1'));
  for (const series of [hostSeries('h1'), guestSeries('a'), guestSeries('b'), guestSeries('o7')])
    history.record([{ series, values: { cpu: 0.5, memoryBytes: 100 } }], nowMs - 5000);
  const c = createRebalanceController({
    store,
    hostName: 'h1',
    history,
    operations,
    log: silentLogger(),
    now: () => nowMs,
    members: async () => [],
    mover: {
      async move() {
        throw new Error('no move here');
      },
    },
  });
  try {
    await c.publish();
    const published = async () =>
      Object.keys((await records.memberLoad.at('h1').get(memory))?.value.guests ?? {});
    assert.deepEqual(await published(), ['a', 'b']);
    store.reset();
    await c.publish();
    assert.deepEqual(store.reads.lists, []);
    assert.ok(store.reads.records <= 2, `a publication read ${store.reads.records} records`);
    await records.guest.at('o7').put(memory, spec('o7', 'h1'));
    await new Promise((r) => setTimeout(r, 20));
    await c.publish();
    assert.deepEqual(await published(), ['a', 'b', 'o7']);
  } finally {
    await c.stop();
    history.close();
    await memory.close();
  }
});

test("a cycle's plan after the first reads none of the 10,000 guest records, plans the same, and sees a guest that moved since (decision 0087)", async () => {
  const memory = createMemoryStore();
  const store = countingStore(memory);
  const history = openMetricsHistory(':memory:');
  const operations = createOperationService(createEventBus());
  const nowMs = NOW;
  for (let i = 0; i < 10_000; i++) await records.guest.at(`o${i}`).put(memory, spec(`o${i}`, 'h2'));
  for (const name of ['busy', 'busy2']) await records.guest.at(name).put(memory, spec(name, 'h1'));
  for (let t = nowMs - 60_000; t <= nowMs; t += 10_000) {
    history.record(
      [
        { series: guestSeries('busy'), values: { cpu: 1, memoryBytes: 64 * 2 ** 20 } },
        { series: guestSeries('busy2'), values: { cpu: 1, memoryBytes: 64 * 2 ** 20 } },
        { series: hostSeries('h1'), values: { memoryBytes: GiB } },
      ],
      t,
    );
  }
  const c = createRebalanceController({
    store,
    hostName: 'h1',
    history,
    operations,
    log: silentLogger(),
    now: () => nowMs,
    members: async () => [member('h1'), member('h2')],
    mover: {
      async move() {
        throw new Error('no move here');
      },
    },
  });
  try {
    await c.updateSettings({ 'cluster.rebalance.window': '1m' });
    await c.publish();
    // h2's own publication: one idle guest measured over the window.
    await records.memberLoad.at('h2').put(memory, {
      stepSeconds: 10,
      endAt,
      publishedAt: new Date(nowMs).toISOString(),
      measuredSteps: 6,
      guests: { o1: { model: 'ct', cpu: [0, 0, 0, 0, 0, 0], memoryBytes: [1, 1, 1, 1, 1, 1] } },
    });
    const first = await c.run({ dryRun: true });
    const planned = (r: typeof first) => r.planned.map((m) => `${m.guest} ${m.from}->${m.to}`);
    assert.equal(planned(first).length, 1, first.notes.join('\n'));
    assert.match(planned(first)[0] ?? '', /^busy2? h1->h2$/);
    store.reset();
    const second = await c.run({ dryRun: true });
    assert.ok(!store.reads.lists.includes(records.guest.prefix), store.reads.lists.join(' '));
    assert.ok(store.reads.records <= 20, `a plan read ${store.reads.records} records`);
    assert.deepEqual(planned(second), planned(first));
    // The planned guest moves to h2 meanwhile: the next plan knows it from the watch.
    const moved = planned(first)[0]?.split(' ')[0] ?? '';
    await records.guest.at(moved).put(memory, spec(moved, 'h2'));
    await new Promise((r) => setTimeout(r, 20));
    const third = await c.run({ dryRun: true });
    assert.ok(!planned(third).some((m) => m.startsWith(`${moved} `)), planned(third).join(', '));
  } finally {
    await c.stop();
    history.close();
    await memory.close();
  }
});
