import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { countingStore } from '../../test/fakes/counting-store.ts';
import { createFakeDriver, type FakeDriver } from '../../test/fakes/fake-driver.ts';
import { aGuestSpec, aGuestStatus, BUSYBOX_IMAGE } from '../../test/fakes/guest-records.ts';
import { createGuestController, type GuestController } from '../control/guest-controller.ts';
import { isTrivisorError, type TrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, ImageRecord, TrivisorEvent } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { indexProjectGuests, projectGuestIndex } from '../store/project-guests.ts';
import { records } from '../store/records.ts';
import { createEventBus } from './event-bus.ts';
import { createGuestService } from './guest-service.ts';
import { createLastUsage } from './last-usage.ts';
import { openMetricsHistory } from './metrics-history.ts';
import { createMetricsSampler } from './metrics-sampler.ts';
import { createOperationService } from './operation-service.ts';
import type { GuestService, OperationService } from './types.ts';

const image: ImageRecord = BUSYBOX_IMAGE;

interface World {
  store: KvStore;
  driver: FakeDriver;
  guests: GuestService;
  operations: OperationService;
  controller: GuestController;
  events: TrivisorEvent[];
}

async function makeWorld(store: KvStore = createMemoryStore(), driver = createFakeDriver()): Promise<World> {
  const bus = createEventBus();
  const events: TrivisorEvent[] = [];
  bus.subscribe((e) => events.push(e));
  const operations = createOperationService(bus);
  const images = {
    async get(ref: string) {
      if (ref !== 'busybox') throw Object.assign(new Error(`Image ${ref} not found`), { code: 'NotFound' });
      return image;
    },
  };
  const guests = createGuestService({
    store,
    drivers: { ct: driver },
    images,
    operations,
    hostName: 'h1',
    capacity: { memoryBytes: 4 * 2 ** 30, cpus: 2 },
  });
  const controller = await startController(store, bus, driver);
  return { store, driver, guests, operations, controller, events };
}

/** Member h1's guest controller over `store`, with the fake driver for ct guests. */
async function startController(
  store: KvStore,
  bus: ReturnType<typeof createEventBus>,
  driver: FakeDriver,
): Promise<GuestController> {
  const controller = createGuestController({
    store,
    drivers: { ct: driver },
    images: {
      handle: async () => ({
        record: image,
        rootfs: '/x',
        shiftedRootfs: async () => '/y',
        baseDisk: async () => '/z',
      }),
    },
    events: bus,
    log: silentLogger(),
    hostName: 'h1',
    livenessIntervalMs: 20,
  });
  await controller.start();
  return controller;
}

async function done(w: World, op: { id: string }) {
  return w.operations.wait(op.id);
}

async function rejectsWith(p: Promise<unknown>, code: TrivisorError['code'], re?: RegExp) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isTrivisorError(e), `expected a TrivisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  });
}

describe('guest service and controller', () => {
  let w: World;
  beforeEach(async () => {
    w = await makeWorld();
  });
  afterEach(async () => {
    await w.controller.stop();
  });

  test('launch creates and starts the guest and reports Running with a pid', async () => {
    const op = await done(w, await w.guests.create({ name: 'web1', image: 'busybox', start: true }));
    assert.equal(op.status, 'Success', op.error ?? '');
    const g = await w.guests.get('web1');
    assert.equal(g.status, 'Running');
    assert.equal(typeof g.state.pid, 'number');
    assert.deepEqual(w.driver.calls, ['create:web1', 'start:web1']);
    assert.ok(w.events.some((e) => e.action === 'guest-started'));
  });

  test('create without start leaves a Stopped guest; start, freeze, unfreeze, stop go through the driver', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox' }));
    assert.equal((await w.guests.get('a')).status, 'Stopped');
    for (const [action, want] of [
      ['start', 'Running'],
      ['freeze', 'Frozen'],
      ['unfreeze', 'Running'],
      ['stop', 'Stopped'],
    ] as const) {
      const op = await done(w, await w.guests.changeState('a', { action }));
      assert.equal(op.status, 'Success', `${action}: ${op.error}`);
      assert.equal((await w.guests.get('a')).status, want, action);
    }
  });

  test('wrong-state actions are refused with FailedPrecondition and change nothing', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox', start: true }));
    const before = await w.store.get(keys.guest('a'));
    await rejectsWith(w.guests.changeState('a', { action: 'start' }), 'FailedPrecondition', /is Running/);
    await rejectsWith(w.guests.changeState('a', { action: 'unfreeze' }), 'FailedPrecondition');
    await rejectsWith(w.guests.delete('a'), 'FailedPrecondition', /--force/);
    assert.equal((await w.store.get(keys.guest('a')))?.modRevision, before?.modRevision);
  });

  test('bad names, unknown images, unknown keys, bad limits and duplicates are refused before anything is made', async () => {
    for (const name of ['../x', 'a/b', '', 'x'.repeat(64), 'Upper', '-a']) {
      await rejectsWith(w.guests.create({ name, image: 'busybox' }), 'InvalidArgument');
    }
    await assert.rejects(w.guests.create({ name: 'a', image: 'nope' }), /not found/);
    await rejectsWith(
      w.guests.create({ name: 'a', image: 'busybox', config: { 'limits.bogus': '1' } }),
      'InvalidArgument',
      /Unknown configuration key/,
    );
    for (const v of ['lots', '-1', '0', '100GiB']) {
      await rejectsWith(
        w.guests.create({ name: 'a', image: 'busybox', config: { 'limits.memory': v } }),
        'InvalidArgument',
      );
    }
    await rejectsWith(
      w.guests.create({ name: 'a', image: 'busybox', config: { 'limits.cpu': '64' } }),
      'InvalidArgument',
    );
    assert.equal((await w.store.list(keys.guestPrefix)).kvs.length, 0);
    assert.deepEqual(w.driver.calls, []);
    await done(w, await w.guests.create({ name: 'a', image: 'busybox' }));
    await rejectsWith(w.guests.create({ name: 'a', image: 'busybox' }), 'AlreadyExists');
  });

  test("a copy's or an import's marker is written with the guest record, never on a guest the create did not make", async () => {
    const pending = { kind: 'import' } as const;
    const op = await w.guests.create({ name: 'a', image: 'busybox' }, { pending });
    const guest = await w.store.get(keys.guest('a'));
    const marker = await w.store.get(keys.storagePending('a'));
    assert.deepEqual(
      await records.storagePending
        .at('a')
        .get(w.store)
        .then((r) => r?.value),
      pending,
    );
    assert.equal(marker?.modRevision, guest?.modRevision, 'one transaction');
    await done(w, op);
    await w.store.delete(keys.storagePending('a'));
    // Taken: refused with no marker put on the guest that has the name.
    await rejectsWith(w.guests.create({ name: 'a', image: 'busybox' }, { pending }), 'AlreadyExists');
    assert.equal(await w.store.get(keys.storagePending('a')), undefined);
    // A marker an earlier guest of a name left behind does not stay on a new guest of that name.
    await w.store.put(keys.storagePending('b'), JSON.stringify({ kind: 'copy' }));
    await done(w, await w.guests.create({ name: 'b', image: 'busybox' }));
    assert.equal(await w.store.get(keys.storagePending('b')), undefined);
  });

  test('a launch whose start fails rolls back everything it made', async () => {
    w.driver.failNext('start', 'runc exploded');
    const op = await done(w, await w.guests.create({ name: 'bad', image: 'busybox', start: true }));
    assert.equal(op.status, 'Failure');
    assert.match(op.error ?? '', /runc exploded/);
    assert.equal(await w.store.get(keys.guest('bad')), undefined);
    assert.equal(await w.store.get(keys.guestStatus('bad')), undefined);
    assert.equal(w.driver.guests.has('bad'), false);
  });

  test('a failed start of an existing guest leaves it Stopped and startable', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox' }));
    w.driver.failNext('start', 'no init');
    const op = await done(w, await w.guests.changeState('a', { action: 'start' }));
    assert.equal(op.status, 'Failure');
    const g = await w.guests.get('a');
    assert.equal(g.status, 'Stopped');
    const again = await done(w, await w.guests.changeState('a', { action: 'start' }));
    assert.equal(again.status, 'Success', again.error ?? '');
  });

  test('delete --force stops a running guest and removes its records and files', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox', start: true }));
    const op = await done(w, await w.guests.delete('a', { force: true }));
    assert.equal(op.status, 'Success', op.error ?? '');
    assert.deepEqual(w.driver.calls.slice(-2), ['stop:a:force', 'delete:a']);
    await rejectsWith(w.guests.get('a'), 'NotFound');
  });

  test('a failed scheduled backup is a warning of the guest in get and list until it is cleared; a new guest of the name starts without it', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox' }));
    const failure = { at: '2026-12-05T03:00:00Z', member: 'h1', error: 'no space left on device' };
    await records.backupFailure.at('a').put(w.store, failure);
    const warning = 'The scheduled backup of 2026-12-05T03:00:00Z failed on h1: no space left on device';
    assert.deepEqual((await w.guests.get('a')).state.warnings, [warning]);
    assert.deepEqual((await w.guests.list()).find((g) => g.name === 'a')?.state.warnings, [warning]);
    await w.store.delete(keys.backupFailure('a'));
    assert.equal((await w.guests.get('a')).state.warnings, undefined);
    await done(w, await w.guests.delete('a', { force: true }));
    await records.backupFailure.at('a').put(w.store, failure);
    await done(w, await w.guests.create({ name: 'a', image: 'busybox' }));
    assert.equal((await w.guests.get('a')).state.warnings, undefined);
  });

  test("a move mark left by a member that never came back (decision 0079) does not outlive its guest's name", async () => {
    const mark = {
      guest: 'a',
      from: 'gone',
      to: 'h2',
      reason: 'migration',
      startedAt: '2026-12-06T03:00:00Z',
    };
    await w.store.put(keys.guestMove('a'), JSON.stringify(mark));
    await done(w, await w.guests.create({ name: 'a', image: 'busybox' }));
    assert.equal(await w.store.get(keys.guestMove('a')), undefined);
  });

  test('stop passes the timeout; restart stops then starts', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox', start: true }));
    await done(w, await w.guests.changeState('a', { action: 'restart', timeout: 5 }));
    assert.deepEqual(w.driver.calls.slice(-2), ['stop:a:5000', 'start:a']);
    await done(w, await w.guests.changeState('a', { action: 'stop', force: true }));
    assert.equal(w.driver.calls.at(-1), 'stop:a:force');
  });

  test('live config changes reach the running guest; others wait for a restart', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox', start: true }));
    const r = await w.guests.updateConfig('a', { set: { 'limits.memory': '128MiB', 'limits.disk': '2GiB' } });
    assert.equal(r.guest.config['limits.memory'], '128MiB');
    assert.deepEqual(r.pendingRestart, ['limits.disk']);
    await rejectsWith(
      w.guests.updateConfig('a', { set: { 'security.privileged': 'true' } }),
      'InvalidArgument',
      /only be set when a guest is created/,
    );
    assert.ok(w.driver.calls.some((c) => c.startsWith('update:a:')));
    await rejectsWith(w.guests.updateConfig('a', { set: { 'limits.memory': 'lots' } }), 'InvalidArgument');
    await rejectsWith(w.guests.updateConfig('a', { unset: ['limits.cpu'] }), 'NotFound');
  });

  test('a live config change the guest refuses is a FailedPrecondition and the old config stays', async () => {
    await done(
      w,
      await w.guests.create({
        name: 'a',
        image: 'busybox',
        start: true,
        config: { 'limits.memory': '256MiB' },
      }),
    );
    const update = w.driver.update;
    w.driver.update = async () => {
      throw new Error('memory limit below current usage');
    };
    try {
      await rejectsWith(
        w.guests.updateConfig('a', { set: { 'limits.memory': '8MiB' } }),
        'FailedPrecondition',
        /below current usage/,
      );
    } finally {
      w.driver.update = update;
    }
    await waitUntil(async () => (await w.guests.get('a')).config['limits.memory'] === '256MiB');
    const r = await w.guests.updateConfig('a', { set: { 'limits.memory': '128MiB' } });
    assert.equal(r.guest.config['limits.memory'], '128MiB');
  });

  test('a guest that dies is marked Stopped; with restart_policy=always it is restarted', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox', start: true }));
    await done(
      w,
      await w.guests.create({
        name: 'b',
        image: 'busybox',
        start: true,
        config: { 'boot.restart_policy': 'always' },
      }),
    );
    w.driver.kill('a');
    w.driver.kill('b');
    await waitUntil(async () => (await w.guests.get('a')).status === 'Stopped');
    await waitUntil(async () => (await w.guests.get('b')).state.restartCount === 1);
    assert.equal((await w.guests.get('b')).status, 'Running');
    const spec = JSON.parse((await w.store.get(keys.guest('a')))!.value) as GuestSpec;
    assert.equal(spec.desired, 'Stopped');
  });

  test('a restarted controller re-adopts running guests, restarts autostart ones and finishes half-done deletes', async () => {
    await done(w, await w.guests.create({ name: 'keep', image: 'busybox', start: true }));
    await done(
      w,
      await w.guests.create({ name: 'auto', image: 'busybox', config: { 'boot.autostart': 'true' } }),
    );
    await done(w, await w.guests.create({ name: 'gone', image: 'busybox' }));
    await w.controller.stop();
    // A delete requested while the daemon was down.
    const kv = await w.store.get(keys.guest('gone'));
    const spec = JSON.parse(kv!.value) as GuestSpec;
    await w.store.put(
      keys.guest('gone'),
      JSON.stringify({ ...spec, deleting: true, generation: spec.generation + 1 }),
    );
    const pid = (await w.guests.get('keep')).state.pid;
    const starts = w.driver.calls.filter((c) => c === 'start:keep').length;

    const w2 = await makeWorld(w.store, w.driver);
    try {
      await waitUntil(async () => (await w2.guests.get('auto')).status === 'Running');
      await waitUntil(async () => (await w2.store.get(keys.guest('gone'))) === undefined);
      const keep = await w2.guests.get('keep');
      assert.equal(keep.status, 'Running');
      assert.equal(keep.state.pid, pid);
      assert.equal(w.driver.calls.filter((c) => c === 'start:keep').length, starts, 'not started twice');
    } finally {
      await w2.controller.stop();
    }
  });

  test('exec needs a running guest and passes the command through', async () => {
    await done(w, await w.guests.create({ name: 'a', image: 'busybox' }));
    await rejectsWith(w.guests.exec('a', { command: ['true'] }), 'FailedPrecondition', /start it first/);
    await done(w, await w.guests.changeState('a', { action: 'start' }));
    const s = await w.guests.exec('a', { command: ['echo', 'hi'] });
    assert.equal(await s.exit, 0);
    await rejectsWith(w.guests.exec('a', { command: [] }), 'InvalidArgument');
  });
});

async function waitUntil(cond: () => Promise<boolean>, timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail('condition not met in time');
}

describe('placement of new guests (decision 0033)', () => {
  const GIB = 2 ** 30;
  /** A guest service on a cluster whose members the test describes; the controller is h1's. */
  async function clusterWorld(
    members: Array<{ name: string; status?: 'Online' | 'Offline'; freeGib: number }>,
  ) {
    const store = createMemoryStore();
    const operations = createOperationService(createEventBus());
    const guests = createGuestService({
      store,
      drivers: { ct: createFakeDriver(), vm: createFakeDriver() },
      images: { get: async () => image },
      operations,
      hostName: 'h1',
      capacity: { memoryBytes: 24 * GIB, cpus: 2 },
      placement: {
        candidates: async () =>
          members.map((m) => ({
            name: m.name,
            status: m.status ?? 'Online',
            cpus: 2,
            cpuFree: 1,
            memoryTotalBytes: 24 * GIB,
            memoryFreeBytes: m.freeGib * GIB,
          })),
      },
    });
    return { store, guests };
  }

  test('a single host places every guest on itself; --target names only this host', async () => {
    const w = await makeWorld();
    try {
      await done(w, await w.guests.create({ name: 'here', image: 'busybox', target: 'h1' }));
      const g = await w.guests.get('here');
      assert.equal(g.location, 'h1');
      assert.equal(g.placement, undefined);
      const created = w.events.find((e) => e.action === 'guest-created');
      assert.deepEqual(created?.metadata, { name: 'here', model: 'ct', location: 'h1' });
      await rejectsWith(
        w.guests.create({ name: 'there', image: 'busybox', target: 'h2' }),
        'NotFound',
        /^Member h2 not found: this host \(h1\) is not in a cluster$/,
      );
      await rejectsWith(w.guests.create({ name: 'bad', image: 'busybox', target: 'a b' }), 'InvalidArgument');
      assert.equal(await w.store.get(keys.guest('there')), undefined);
    } finally {
      await w.controller.stop();
    }
  });

  test('on a cluster the spec goes to the member with the most free memory, with the reason', async () => {
    const { guests, store } = await clusterWorld([
      { name: 'h1', freeGib: 2 },
      { name: 'h2', freeGib: 18.2 },
      { name: 'h3', freeGib: 30, status: 'Offline' },
    ]);
    // Nothing converges h2's guest here (no controller for h2): the spec is what is checked.
    await guests.create({ name: 'auto', image: 'busybox' });
    const spec = JSON.parse((await store.get(keys.guest('auto')))?.value ?? '{}') as GuestSpec;
    assert.equal(spec.location, 'h2');
    assert.equal(spec.placement, 'most free memory: 18.2 GiB of 24.0');
    assert.equal((await store.get(keys.guestLocation('auto')))?.value, 'h2');
  });

  test("the owner's created event says where the guest went and why", async () => {
    const { store, guests } = await clusterWorld([
      { name: 'h1', freeGib: 12.5 },
      { name: 'h2', freeGib: 3 },
    ]);
    const bus = createEventBus();
    const events: TrivisorEvent[] = [];
    bus.subscribe((e) => events.push(e));
    const controller = await startController(store, bus, createFakeDriver());
    try {
      await guests.create({ name: 'placed', image: 'busybox' });
      const created = await new Promise<TrivisorEvent>((resolve, reject) => {
        const t0 = Date.now();
        const look = () => {
          const e = events.find((x) => x.action === 'guest-created');
          if (e) resolve(e);
          else if (Date.now() - t0 > 5000) reject(new Error('no guest-created event'));
          else setTimeout(look, 10);
        };
        look();
      });
      assert.deepEqual(created.metadata, {
        name: 'placed',
        model: 'ct',
        location: 'h1',
        placement: 'most free memory: 12.5 GiB of 24.0',
      });
    } finally {
      await controller.stop();
    }
  });

  test('--target an Offline or unknown member, or one without room, is refused and writes nothing', async () => {
    const { guests, store } = await clusterWorld([
      { name: 'h1', freeGib: 0.1 },
      { name: 'h3', freeGib: 30, status: 'Offline' },
    ]);
    await rejectsWith(
      guests.create({ name: 'x', image: 'busybox', target: 'h3' }),
      'FailedPrecondition',
      /^Cannot place the guest on h3: h3 is Offline$/,
    );
    await rejectsWith(
      guests.create({ name: 'x', image: 'busybox', target: 'h9' }),
      'NotFound',
      /Member h9 not found/,
    );
    await rejectsWith(
      guests.create({ name: 'x', image: 'busybox', model: 'vm', config: { 'limits.memory': '1GiB' } }),
      'FailedPrecondition',
      /No member can take a vm guest with 1\.0 GiB/,
    );
    assert.equal(await store.get(keys.guest('x')), undefined);
  });
});

test("a create in a project without limits reads its project's record, not the 10,000 guests beside it (decision 0084)", async () => {
  const memory = createMemoryStore();
  const store = countingStore(memory);
  // Another member's guests: this member's controller leaves them alone.
  const ops = Array.from({ length: 10_000 }, (_, i) =>
    records.guest.at(`g${i}`).putOp(aGuestSpec({ name: `g${i}`, desired: 'Stopped', location: 'h2' })),
  );
  for (let i = 0; i < ops.length; i += 1000)
    await memory.txn({ compare: [], success: ops.slice(i, i + 1000) });
  const w = await makeWorld(store);
  try {
    store.reset();
    const op = await w.guests.create({ name: 'web', image: 'busybox' });
    const read = store.reads.records;
    assert.ok(read < 50, `the create read ${read} records`);
    assert.deepEqual(store.reads.lists, []);
    await done(w, op);
    // With a limit it counts the guests it must: 10,001 of 10,002 is over.
    await records.project.at('default').put(memory, {
      name: 'default',
      description: '',
      config: { 'limits.guests': '10001' },
      createdAt: new Date(0).toISOString(),
    });
    await rejectsWith(
      w.guests.create({ name: 'web2', image: 'busybox' }),
      'Conflict',
      /^Project default would use 10002 guests of limits\.guests=10001/,
    );
  } finally {
    await w.controller.stop();
    await memory.close();
  }
});

test('withUsage gives the usage of the guests it is handed and reads no store record, among 10,000 guests (decision 0080)', async () => {
  const memory = createMemoryStore();
  const store = countingStore(memory);
  const guests = createGuestService({
    store,
    drivers: { ct: createFakeDriver() },
    images: { get: async () => image },
    operations: createOperationService(createEventBus()),
    hostName: 'h1',
    capacity: { memoryBytes: 4 * 2 ** 30, cpus: 2 },
  });
  try {
    for (let i = 0; i < 10_000; i++) {
      await records.guest.at(`g${i}`).put(memory, aGuestSpec({ name: `g${i}`, desired: 'Stopped' }));
      await records.guestStatus.at(`g${i}`).put(memory, aGuestStatus({ status: 'Stopped' }));
    }
    const spec = aGuestSpec({ name: 'web' });
    const status = aGuestStatus({ status: 'Running', process: { pid: 4242, startTime: 1 } });
    const [web, ...more] = await guests.withUsage!([{ spec, status }]);
    assert.equal(more.length, 0);
    assert.equal(web?.name, 'web');
    assert.equal(web?.status, 'Running');
    assert.equal(web?.state.pid, 4242);
    assert.ok(web?.state.usage, 'the usage was read from the driver');
    assert.equal(store.reads.records, 0);
    assert.deepEqual(store.reads.lists, []);
  } finally {
    await memory.close();
  }
});

describe('names: the guests list without recursion (issue 16 §3)', () => {
  /** Guests of three projects on two members, written as create writes them (spec and index key). */
  const GUESTS = [
    { name: 'a1', project: 'a', location: 'h1' },
    { name: 'b1', project: 'b', location: 'h2' },
    { name: 'web', project: 'default', location: 'h1' },
    { name: 'a2', project: 'a', location: 'h2' },
    { name: 'zz', location: 'h1' },
    { name: 'd-2', project: 'default', location: 'h2' },
    { name: 'a10', project: 'a', location: 'h1' },
    // Sorts after b1 and d-2, whose projects' keys come after a's.
    { name: 'e5', project: 'a', location: 'h2' },
  ];

  async function world(options: { indexed: boolean }) {
    const memory = createMemoryStore();
    for (const g of GUESTS) {
      const spec = aGuestSpec({ ...g, desired: 'Stopped' });
      await memory.txn({
        compare: [],
        success: [records.guest.at(g.name).putOp(spec), projectGuestIndex.putOp(spec)],
      });
    }
    // A spec that does not decode: neither list shows it; the index counts it as unindexable.
    await memory.put(records.guest.key('broken'), '{"name":');
    if (options.indexed) await indexProjectGuests(memory);
    const store = countingStore(memory);
    const guests = createGuestService({
      store,
      drivers: { ct: createFakeDriver() },
      images: { get: async () => image },
      operations: createOperationService(createEventBus()),
      hostName: 'h1',
      capacity: { memoryBytes: 4 * 2 ** 30, cpus: 2 },
    });
    return { memory, store, guests };
  }

  const VIEWS = [undefined, 'default', 'a', 'b', 'c'];
  const OPTIONS: Array<{ allProjects?: boolean; target?: string }> = [
    {},
    { allProjects: true },
    { target: 'h1' },
    { target: 'h2' },
    { target: 'h9' },
    { allProjects: true, target: 'h2' },
  ];

  /** Every view and filter: names() says exactly what list() shows, in its order. */
  async function assertSameAsList(guests: GuestService): Promise<void> {
    for (const view of VIEWS) {
      const service = view === undefined ? guests : guests.inProject(view);
      for (const options of OPTIONS) {
        const full = (await service.list(options)).map((g) => g.name);
        assert.deepEqual(await service.names(options), full, `view ${view}, ${JSON.stringify(options)}`);
      }
    }
  }

  test('names() answers what list() shows for every project view, all-projects and target, from the index keys alone', async () => {
    const { memory, store, guests } = await world({ indexed: true });
    try {
      await assertSameAsList(guests);
      assert.deepEqual(await guests.inProject('a').names(), ['a1', 'a10', 'a2', 'e5']);
      assert.deepEqual(await guests.inProject('default').names(), ['d-2', 'web', 'zz']);
      assert.deepEqual(await guests.inProject('a').names({ allProjects: true }), [
        'a1',
        'a10',
        'a2',
        'b1',
        'd-2',
        'e5',
        'web',
        'zz',
      ]);
      // One request: the mark, the project's keys and two counts; no spec read.
      store.reset();
      await guests.inProject('a').names();
      assert.equal(store.calls.requests, 1);
      assert.equal(store.reads.records, 1 + 4);
      assert.deepEqual(store.reads.lists, []);
    } finally {
      await memory.close();
    }
  });

  test('names() reads the specs, with the same answers, where the index cannot say: not marked, a stale key, a missing key', async () => {
    const unmarked = await world({ indexed: false });
    try {
      await assertSameAsList(unmarked.guests);
      unmarked.store.reset();
      await unmarked.guests.inProject('a').names();
      assert.deepEqual(unmarked.store.reads.lists, [records.guest.prefix]);
    } finally {
      await unmarked.memory.close();
    }
    // A key whose guest is gone (deleted by a daemon from before the index): never a name.
    const stale = await world({ indexed: true });
    try {
      await stale.memory.delete(records.guest.key('a2'));
      await assertSameAsList(stale.guests);
      assert.deepEqual(await stale.guests.inProject('a').names(), ['a1', 'a10', 'e5']);
    } finally {
      await stale.memory.close();
    }
    const missing = await world({ indexed: true });
    try {
      await records.guest
        .at('b2')
        .put(missing.memory, aGuestSpec({ name: 'b2', project: 'b', location: 'h1' }));
      await assertSameAsList(missing.guests);
      assert.deepEqual(await missing.guests.inProject('b').names(), ['b1', 'b2']);
    } finally {
      await missing.memory.close();
    }
  });
});

describe("the list's usage: the metric sampler's last sample (decision 0099)", () => {
  /** Two running guests and a stopped one, a driver whose every usage read gives new figures. */
  async function world(options: { maxAgeMs?: number } = {}) {
    const store = createMemoryStore();
    const reads: string[] = [];
    const driver = createFakeDriver();
    driver.usage = async (spec) => {
      reads.push(spec.name);
      return { memoryBytes: 1000 * reads.length, cpuSeconds: reads.length, processes: 1 };
    };
    const lastUsage = createLastUsage(options);
    const guests = createGuestService({
      store,
      drivers: { ct: driver },
      images: { get: async () => image },
      operations: createOperationService(createEventBus()),
      hostName: 'h1',
      capacity: { memoryBytes: 4 * 2 ** 30, cpus: 2 },
      lastUsage,
    });
    const running = new Map<string, { pid: number; startedAt: string }>([
      ['a', { pid: 101, startedAt: '2026-12-06T20:00:00.000Z' }],
      ['b', { pid: 102, startedAt: '2026-12-06T20:00:01.000Z' }],
    ]);
    const put = async (name: string) => {
      const run = running.get(name);
      await records.guest.at(name).put(store, aGuestSpec({ name, desired: run ? 'Running' : 'Stopped' }));
      await records.guestStatus
        .at(name)
        .put(
          store,
          run
            ? aGuestStatus({ process: { pid: run.pid, startTime: run.pid }, startedAt: run.startedAt })
            : aGuestStatus({ status: 'Stopped' }),
        );
    };
    for (const name of ['a', 'b', 'c']) await put(name);
    const history = openMetricsHistory(':memory:');
    const sampler = createMetricsSampler({
      // As main.ts: the controller's running guests (here, those of the map) with their usage.
      running: async () => {
        const all = await guests.list();
        const handed = all.flatMap((g) => {
          const run = running.get(g.name);
          return run
            ? [
                {
                  spec: aGuestSpec({ name: g.name }),
                  status: aGuestStatus({
                    process: { pid: run.pid, startTime: run.pid },
                    startedAt: run.startedAt,
                  }),
                },
              ]
            : [];
        });
        return (await guests.withUsage?.(handed)) ?? [];
      },
      names: async () => new Set(['a', 'b', 'c']),
      history,
      hostName: 'h1',
      readHost: () => ({
        cpuBusySeconds: 0,
        memoryUsedBytes: 0,
        netRxBytes: 0,
        netTxBytes: 0,
        diskReadBytes: 0,
        diskWriteBytes: 0,
      }),
      readGuestIo: () => undefined,
      lastUsage,
    });
    const usageOf = async (name: string) =>
      (await guests.list({ withUsage: true })).find((g) => g.name === name)?.state.usage;
    return { store, reads, guests, sampler, running, put, usageOf, close: () => history.close() };
  }

  test("the list's usage equals the sampler's last sample, with its time, and reads no guest's cgroups", async () => {
    const w = await world();
    try {
      await w.sampler.sample();
      assert.deepEqual(w.reads.sort(), ['a', 'b']);
      const sampled = await w.guests.withUsage?.([]); // nothing handed: nothing read
      assert.deepEqual(sampled, []);
      const listed = await w.guests.list({ withUsage: true });
      assert.deepEqual(w.reads.sort(), ['a', 'b'], 'the list read no usage');
      const a = listed.find((g) => g.name === 'a')?.state.usage;
      const b = listed.find((g) => g.name === 'b')?.state.usage;
      assert.ok(a && b);
      assert.deepEqual(
        [a.memoryBytes, b.memoryBytes].sort(),
        [1000, 2000],
        'the figures of the sample, not new reads',
      );
      assert.ok(a.sampledAt && Date.now() - Date.parse(a.sampledAt) < 5000, `sampled at ${a.sampledAt}`);
      assert.equal(listed.find((g) => g.name === 'c')?.state.usage, null, 'a stopped guest has none');
      // The next sample's figures replace them.
      await w.sampler.sample();
      assert.deepEqual(
        [(await w.usageOf('a'))?.memoryBytes, (await w.usageOf('b'))?.memoryBytes].sort(),
        [3000, 4000],
      );
      assert.equal(w.reads.length, 4);
    } finally {
      w.close();
      await w.store.close();
    }
  });

  test('a guest the sampler has not sampled in its current run is read live', async () => {
    const w = await world();
    try {
      await w.sampler.sample();
      // c starts after the sample: no figure of it yet.
      w.running.set('c', { pid: 103, startedAt: '2026-12-06T20:05:00.000Z' });
      await w.put('c');
      const before = Date.now();
      const c = await w.usageOf('c');
      assert.deepEqual(w.reads.slice(2), ['c']);
      assert.equal(c?.memoryBytes, 3000);
      assert.ok(c?.sampledAt && Date.parse(c.sampledAt) >= before, 'stamped when read');
      // a restarted since the sample (new pid and start time): its sampled figure is of the old run.
      w.running.set('a', { pid: 201, startedAt: '2026-12-06T20:06:00.000Z' });
      await w.put('a');
      const listed = await w.guests.list({ withUsage: true });
      const usage = (name: string) => listed.find((g) => g.name === name)?.state.usage?.memoryBytes;
      // a and c (still not sampled) read live, in list order; b's sample still served.
      assert.deepEqual(w.reads.slice(3), ['a', 'c']);
      assert.equal(usage('a'), 4000);
      assert.equal(usage('c'), 5000);
      assert.ok((usage('b') ?? 0) <= 2000, 'b from the sample');
    } finally {
      w.close();
      await w.store.close();
    }
  });

  test('a sample older than maxAgeMs is not served: the list reads live again', async () => {
    const w = await world({ maxAgeMs: 0 });
    try {
      await w.sampler.sample();
      await new Promise((r) => setTimeout(r, 5));
      await w.guests.list({ withUsage: true });
      assert.deepEqual(w.reads.slice(2).sort(), ['a', 'b']);
    } finally {
      w.close();
      await w.store.close();
    }
  });

  test("a guest's info reads its usage live, whatever was sampled", async () => {
    const w = await world();
    try {
      await w.sampler.sample();
      const before = Date.now();
      const a = await w.guests.get('a', { withUsage: true });
      assert.equal(w.reads.length, 3);
      assert.equal(a.state.usage?.memoryBytes, 3000, 'a new read, not the sample');
      assert.ok(a.state.usage?.sampledAt && Date.parse(a.state.usage.sampledAt) >= before);
    } finally {
      w.close();
      await w.store.close();
    }
  });
});
