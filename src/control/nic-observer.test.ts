import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { type CountingStore, countingStore } from '../../test/fakes/counting-store.ts';
import { createFakeDriver, type FakeDriver } from '../../test/fakes/fake-driver.ts';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import { unavailable } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestNetworkObservation, GuestSpec, GuestStatus, Model, TrivisorEvent } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { PortState } from '../network/network-backend.ts';
import { createEventBus } from '../services/event-bus.ts';
import { createGuestService } from '../services/guest-service.ts';
import { createOperationService } from '../services/operation-service.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { createNicObserver, type NicObserver } from './nic-observer.ts';

const MAC = '02:00:00:00:00:05';
const RESERVED = '198.18.9.5';
const GRACE_MS = 30_000;

interface World {
  store: KvStore;
  driver: FakeDriver;
  observer: NicObserver;
  events: TrivisorEvent[];
  ports: Map<string, PortState>;
  leases: Record<string, string>;
  clock: { now: number };
  /** Puts a running guest with one NIC in the store and the fake driver (started `ageMs` ago). */
  run(name: string, options?: { ageMs?: number; model?: Model }): Promise<GuestStatus>;
  record(name: string): Promise<GuestNetworkObservation | undefined>;
  actions(): string[];
}

async function makeWorld(
  model: Model = 'ct',
  timing: {
    fastMs?: number;
    refreshMs?: number;
    realClock?: boolean;
    /** The store as the observer sees it (a counting one). */
    wrap?: (store: KvStore) => KvStore;
  } = {},
): Promise<World> {
  const store = createMemoryStore();
  const driver = createFakeDriver(model);
  const bus = createEventBus();
  const events: TrivisorEvent[] = [];
  bus.subscribe((e) => events.push(e));
  const ports = new Map<string, PortState>();
  const leases: Record<string, string> = {};
  const clock = { now: Date.parse('2026-06-01T00:00:00Z') };
  const observer = createNicObserver({
    store: timing.wrap ? timing.wrap(store) : store,
    drivers: { [model]: driver },
    networking: {
      async hostView(spec) {
        return Object.fromEntries(
          Object.keys(spec.devices ?? {}).map((nic) => {
            const port = `tv-${spec.name}-${nic}`;
            return [nic, { port, state: ports.get(port) ?? 'up' }];
          }),
        );
      },
      async leases() {
        return { ...leases };
      },
    },
    events: bus,
    log: silentLogger(),
    hostName: 'h1',
    graceMs: GRACE_MS,
    settleMs: 2000,
    ...(timing.realClock ? {} : { now: () => clock.now }),
    ...(timing.fastMs !== undefined && { fastMs: timing.fastMs }),
    ...(timing.refreshMs !== undefined && { refreshMs: timing.refreshMs }),
  });
  return {
    store,
    driver,
    observer,
    events,
    ports,
    leases,
    clock,
    async run(name, options = {}) {
      const spec: GuestSpec = {
        name,
        project: 'default',
        model: options.model ?? model,
        image: 'ab'.repeat(32),
        imageAlias: 'busybox',
        config: {},
        desired: 'Running',
        generation: 1,
        restartRequest: 0,
        stopTimeoutMs: 1000,
        stopForce: false,
        deleting: false,
        location: 'h1',
        createdAt: new Date(0).toISOString(),
        devices: { eth0: { type: 'nic', network: 'net1', hwaddr: MAC, 'ipv4.address': RESERVED } },
      };
      const process = { pid: 4000 + (driver.guests.size + 1), startTime: clock.now };
      const status: GuestStatus = {
        status: 'Running',
        observedGeneration: 1,
        observedRestartRequest: 0,
        process,
        startedAt: new Date(clock.now - (options.ageMs ?? 0)).toISOString(),
        appliedConfig: {},
        pendingRestart: [],
        restartCount: 0,
        provisioned: true,
      };
      driver.guests.set(name, { state: 'running', process, config: {} });
      await store.put(keys.guest(name), JSON.stringify(spec));
      await store.put(keys.guestStatus(name), JSON.stringify(status));
      return status;
    },
    async record(name) {
      const kv = await store.get(keys.guestNetwork(name));
      return kv ? (JSON.parse(kv.value) as GuestNetworkObservation) : undefined;
    },
    actions: () =>
      events.map((e) => `${e.action}:${JSON.stringify(e.metadata.warning ?? e.metadata.addresses ?? '')}`),
  };
}

const holding = (addresses: string[], up = true) => ({
  interfaces: [{ name: 'eth0', mac: MAC, up, addresses }],
  engineErrors: [],
});

describe('NIC observer', () => {
  let w: World;
  beforeEach(async () => {
    w = await makeWorld();
  });
  afterEach(async () => {
    await w.observer.stop();
  });

  test('records the addresses a guest holds, follows them when they change, and says so in events', async () => {
    const status = await w.run('c1');
    const g = w.driver.guests.get('c1')!;
    g.nicView = holding([RESERVED]);
    await w.observer.tick();
    const r = await w.record('c1');
    assert.deepEqual(r?.process, status.process);
    assert.deepEqual(r?.nics, { eth0: { addresses: [RESERVED], source: 'guest' } });
    assert.deepEqual(w.actions(), [`guest-addresses-changed:["${RESERVED}"]`]);

    // Nothing changed: nothing written, no event.
    const before = (await w.store.get(keys.guestNetwork('c1')))?.modRevision;
    w.clock.now += 10_000;
    await w.observer.tick();
    assert.equal((await w.store.get(keys.guestNetwork('c1')))?.modRevision, before);

    g.nicView = holding(['198.18.9.77']);
    w.clock.now += 10_000;
    await w.observer.tick();
    assert.deepEqual((await w.record('c1'))?.nics.eth0?.addresses, ['198.18.9.77']);
    assert.equal(w.actions().at(-1), 'guest-addresses-changed:["198.18.9.77"]');
  });

  test('a settled guest is looked at again only after the refresh interval', async () => {
    await w.run('c1', { ageMs: GRACE_MS });
    w.driver.guests.get('c1')!.nicView = holding([RESERVED]);
    await w.observer.tick();
    w.clock.now += 1000;
    await w.observer.tick();
    assert.equal(w.driver.calls.filter((c) => c === 'observe-nics:c1').length, 1);
    w.clock.now += 5000;
    await w.observer.tick();
    assert.equal(w.driver.calls.filter((c) => c === 'observe-nics:c1').length, 2);
  });

  test('a NIC without an address while the guest boots is no warning; once the grace period is over it is', async () => {
    await w.run('c1');
    w.driver.guests.get('c1')!.nicView = holding([]);
    await w.observer.tick();
    w.clock.now += 5000;
    await w.observer.tick();
    assert.equal((await w.record('c1'))?.nics.eth0?.warning, undefined);
    assert.deepEqual(w.actions(), []);

    w.clock.now += GRACE_MS;
    await w.observer.tick();
    const warning = (await w.record('c1'))?.nics.eth0?.warning;
    assert.match(warning ?? '', /NIC eth0 holds no IPv4 address \(its DHCP reservation is 198\.18\.9\.5\)/);
    assert.deepEqual(w.actions(), [`guest-nic-warning:${JSON.stringify(warning)}`]);

    // DHCP gets there after all: the warning goes (at the next refresh), and the events say so.
    w.driver.guests.get('c1')!.nicView = holding([RESERVED]);
    w.clock.now += 5000;
    await w.observer.tick();
    assert.deepEqual((await w.record('c1'))?.nics.eth0, { addresses: [RESERVED], source: 'guest' });
    assert.deepEqual(w.actions().slice(1), [
      'guest-nic-recovered:""',
      `guest-addresses-changed:["${RESERVED}"]`,
    ]);
  });

  test('a host port that is gone is reported once it lasts, even while the guest boots', async () => {
    await w.run('c1');
    w.driver.guests.get('c1')!.nicView = { interfaces: [], engineErrors: [] };
    w.ports.set('tv-c1-eth0', 'missing');
    await w.observer.tick();
    assert.equal((await w.record('c1'))?.nics.eth0?.warning, undefined, 'a hot-plug may be under way');
    w.clock.now += 2000;
    await w.observer.tick();
    assert.match((await w.record('c1'))?.nics.eth0?.warning ?? '', /its host port tv-c1-eth0 is gone/);
    const ev = w.events.find((e) => e.action === 'guest-nic-warning');
    assert.equal(ev?.source, '/1.0/guests/c1');
    assert.deepEqual({ name: ev?.metadata.name, nic: ev?.metadata.nic }, { name: 'c1', nic: 'eth0' });
  });

  test('a NIC hot-plugged into a settled guest gets its own grace period', async () => {
    await w.run('c1', { ageMs: 10 * GRACE_MS });
    const g = w.driver.guests.get('c1')!;
    g.nicView = holding([RESERVED]);
    await w.observer.tick();
    const spec = JSON.parse((await w.store.get(keys.guest('c1')))!.value) as GuestSpec;
    spec.devices = {
      ...spec.devices,
      eth1: { type: 'nic', network: 'net1', hwaddr: '02:00:00:00:00:06', 'ipv4.address': '198.18.9.6' },
    };
    await w.store.put(keys.guest('c1'), JSON.stringify(spec));
    // The guest's kernel has not announced the new device yet.
    for (let i = 0; i < 10; i++) {
      w.clock.now += 1000;
      await w.observer.tick();
    }
    assert.equal((await w.record('c1'))?.nics.eth1?.warning, undefined);
    w.clock.now += GRACE_MS;
    await w.observer.tick();
    w.clock.now += 5000;
    await w.observer.tick();
    assert.match((await w.record('c1'))?.nics.eth1?.warning ?? '', /NIC eth1 is missing in the guest/);
    assert.equal((await w.record('c1'))?.nics.eth0?.warning, undefined);
  });

  test('a problem that goes before it has lasted is never reported', async () => {
    await w.run('c1', { ageMs: GRACE_MS });
    const g = w.driver.guests.get('c1')!;
    g.nicView = holding([], false);
    await w.observer.tick();
    g.nicView = holding([RESERVED]);
    w.clock.now += 1000;
    await w.observer.tick();
    assert.ok(!w.events.some((e) => e.action === 'guest-nic-warning'));
    assert.deepEqual((await w.record('c1'))?.nics.eth0, { addresses: [RESERVED], source: 'guest' });
  });

  test('a guest whose agent does not answer shows its DHCP lease, marked, and a warning after the grace period', async () => {
    await w.run('c1', { ageMs: GRACE_MS });
    w.driver.guests.get('c1')!.nicView = unavailable('The agent of guest c1 did not answer within 10000ms');
    w.leases.eth0 = RESERVED;
    await w.observer.tick();
    w.clock.now += 2000;
    await w.observer.tick();
    const nic = (await w.record('c1'))?.nics.eth0;
    assert.deepEqual(nic?.addresses, [RESERVED]);
    assert.equal(nic?.source, 'lease');
    assert.match(
      nic?.warning ?? '',
      /addresses of NIC eth0 are unknown: The agent of guest c1 did not answer/,
    );
  });

  test('the record of a guest that stopped or was deleted goes; one of an earlier run is replaced', async () => {
    const first = await w.run('c1');
    w.driver.guests.get('c1')!.nicView = holding([RESERVED]);
    await w.observer.tick();
    assert.ok(await w.record('c1'));
    const { process: _, ...stopped } = first;
    await w.store.put(
      keys.guestStatus('c1'),
      JSON.stringify({ ...stopped, status: 'Stopped' } satisfies GuestStatus),
    );
    await w.observer.tick();
    assert.equal(await w.record('c1'), undefined);

    // Started again: a new process, a new record.
    const again = await w.run('c1');
    w.driver.guests.get('c1')!.nicView = holding([RESERVED]);
    await w.observer.tick();
    assert.deepEqual((await w.record('c1'))?.process, again.process);

    await w.store.delete(keys.guest('c1'));
    await w.observer.tick();
    assert.equal(await w.record('c1'), undefined);
  });
});

test('started, the observer looks at a guest soon after it starts, and follows it without being asked', async () => {
  const w = await makeWorld('ct', { fastMs: 20, refreshMs: 100, realClock: true });
  await w.observer.start();
  try {
    await w.run('c1');
    w.driver.guests.get('c1')!.nicView = holding([RESERVED]);
    const until = async (what: string, cond: () => Promise<boolean>) => {
      for (let i = 0; i < 200 && !(await cond()); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(await cond(), what);
    };
    await until('the new guest was looked at', async () => (await w.record('c1')) !== undefined);
    w.driver.guests.get('c1')!.nicView = holding(['198.18.9.77']);
    await until(
      'the change inside it was seen at a later pass',
      async () => (await w.record('c1'))?.nics.eth0?.addresses[0] === '198.18.9.77',
    );
  } finally {
    await w.observer.stop();
  }
});

test('among 10,000 guests, a pass reads only the guests that changed, and still follows a new one (decision 0080)', async () => {
  let counted: CountingStore | undefined;
  const w = await makeWorld('ct', {
    fastMs: 20,
    refreshMs: 100,
    realClock: true,
    wrap: (s) => {
      counted = countingStore(s);
      return counted;
    },
  });
  for (let i = 0; i < 10_000; i++) {
    const name = `s${i}`;
    await w.store.put(keys.guest(name), JSON.stringify(aGuestSpec({ name, desired: 'Stopped' })));
    await w.store.put(keys.guestStatus(name), JSON.stringify(aGuestStatus({ status: 'Stopped' })));
  }
  await w.run('c1');
  w.driver.guests.get('c1')!.nicView = holding([RESERVED]);
  const until = async (what: string, cond: () => Promise<boolean>) => {
    for (let i = 0; i < 500 && !(await cond()); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(await cond(), what);
  };
  await w.observer.start();
  try {
    await until('c1 was looked at', async () => (await w.record('c1')) !== undefined);
    const reads = counted!.reads;
    counted!.reset();
    // A second of passes (fastMs 20) over settled guests: c1 is looked at again every 100 ms.
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(reads.lists, [], 'a pass listed a prefix');
    assert.ok(reads.records <= 30, `a second of passes read ${reads.records} records`);
    // A guest started now is seen through the watches, and read alone.
    await w.run('c2');
    w.driver.guests.get('c2')!.nicView = holding([RESERVED]);
    await until('c2 was looked at', async () => (await w.record('c2')) !== undefined);
    assert.deepEqual(reads.lists, []);
  } finally {
    await w.observer.stop();
  }
});

describe('guest service with observed addresses', () => {
  test('list and get show what the guest holds and its warnings, never the reservation, and nothing of an earlier run', async () => {
    const w = await makeWorld();
    const guests = createGuestService({
      store: w.store,
      drivers: { ct: w.driver },
      images: { get: async () => assert.fail('no image needed') },
      operations: createOperationService(createEventBus()),
      hostName: 'h1',
      capacity: { memoryBytes: 2 ** 30, cpus: 1 },
    });
    const status = await w.run('c1', { ageMs: GRACE_MS });
    // Before the first observation nothing is known: no address is shown.
    assert.deepEqual((await guests.list())[0]?.state.addresses, []);

    w.driver.guests.get('c1')!.nicView = holding([], false);
    await w.observer.tick();
    w.clock.now += 2000;
    await w.observer.tick();
    const g = await guests.get('c1');
    assert.deepEqual(g.state.addresses, []);
    assert.equal(g.devices?.eth0?.['ipv4.address'], RESERVED, 'the reservation stays in devices');
    assert.equal(g.state.warnings?.length, 1);
    assert.match(g.state.warnings?.[0] ?? '', /NIC eth0 is down in the guest/);

    w.driver.guests.get('c1')!.nicView = holding([RESERVED]);
    w.clock.now += 5000;
    await w.observer.tick();
    const [listed] = await guests.list();
    assert.deepEqual(listed?.state.addresses, [RESERVED]);
    assert.equal(listed?.state.warnings, undefined);

    // A record of another run of the guest (a pid reused, a daemon that died mid-write) is not shown.
    const stale: GuestNetworkObservation = {
      process: { pid: status.process!.pid, startTime: status.process!.startTime - 1 },
      nics: { eth0: { addresses: ['198.18.9.99'], source: 'guest' } },
      changedAt: new Date().toISOString(),
    };
    await w.store.put(keys.guestNetwork('c1'), JSON.stringify(stale));
    assert.deepEqual((await guests.get('c1')).state.addresses, []);
  });
});
