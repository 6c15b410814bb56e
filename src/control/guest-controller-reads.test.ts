import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { createFakeDriver } from '../../test/fakes/fake-driver.ts';
import { aGuestSpec, BUSYBOX_IMAGE } from '../../test/fakes/guest-records.ts';
import { keys } from '../core/keys.ts';
import type { GuestStatus, ImageRecord } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import { createEventBus } from '../services/event-bus.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { createGuestController, type GuestController } from './guest-controller.ts';

// On etcd every read is a round trip: a create+start waits for the controller's reads, and
// every member's controller sees every guest's spec change.

const image: ImageRecord = BUSYBOX_IMAGE;

const guestSpec = (name: string, location: string) =>
  aGuestSpec({ name, location, image: image.fingerprint });

const until = async (what: () => Promise<boolean>, message: string) => {
  for (let i = 0; i < 200; i++) {
    if (await what()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(message);
};

describe('guest controller reads', () => {
  const memory = createMemoryStore();
  const gets: string[] = [];
  const lists: string[] = [];
  const store: KvStore = {
    get: (key) => {
      gets.push(key);
      return memory.get(key);
    },
    list: (prefix, options) => {
      lists.push(prefix);
      return memory.list(prefix, options);
    },
    put: (key, value, options) => memory.put(key, value, options),
    delete: (key, options) => memory.delete(key, options),
    txn: (request) => {
      for (const op of request.success) if (op.type === 'get') gets.push(op.key);
      return memory.txn(request);
    },
    watch: (key, options, onEvents) => memory.watch(key, options, onEvents),
    revision: () => memory.revision(),
    compact: (revision) => memory.compact(revision),
    grantLease: (ttl) => memory.grantLease(ttl),
    keepAlive: (id) => memory.keepAlive(id),
    revokeLease: (id) => memory.revokeLease(id),
    close: () => memory.close(),
  };
  let handles = 0;
  let controller: GuestController | undefined;
  afterEach(async () => {
    await controller?.stop();
    controller = undefined;
  });

  const controllerOf = (hostName: string) =>
    createGuestController({
      store,
      drivers: { ct: createFakeDriver('ct') },
      images: {
        handle: async () => {
          handles++;
          return {
            record: image,
            rootfs: '/x',
            shiftedRootfs: async () => '/y',
            baseDisk: async () => '/z',
          };
        },
      },
      events: createEventBus(),
      log: silentLogger(),
      hostName,
      livenessIntervalMs: 60_000,
    });

  const statusOf = async (name: string): Promise<GuestStatus | undefined> => {
    const kv = await memory.get(keys.guestStatus(name));
    return kv ? (JSON.parse(kv.value) as GuestStatus) : undefined;
  };

  test('a create+start reads the guest image once', async () => {
    await memory.delete('/trivisor/', { prefix: true });
    controller = controllerOf('h1');
    await controller.start();
    handles = 0;
    await memory.txn({
      compare: [],
      success: [
        { type: 'put', key: keys.guest('web'), value: JSON.stringify(guestSpec('web', 'h1')) },
        { type: 'put', key: keys.guestLocation('web'), value: 'h1' },
      ],
    });
    await until(async () => (await statusOf('web'))?.status === 'Running', 'h1 started its guest');
    assert.equal(handles, 1, 'the image was read once for the create and the start');
  });

  test('running() gives the running guests of this member from memory: no store read (decision 0068)', async () => {
    await memory.delete('/trivisor/', { prefix: true });
    controller = controllerOf('h1');
    await controller.start();
    const put = (name: string, location: string, desired: 'Running' | 'Stopped') =>
      memory.txn({
        compare: [],
        success: [
          {
            type: 'put',
            key: keys.guest(name),
            value: JSON.stringify({ ...guestSpec(name, location), desired }),
          },
          { type: 'put', key: keys.guestLocation(name), value: location },
        ],
      });
    await put('a', 'h1', 'Running');
    await put('b', 'h1', 'Running');
    await put('stopped', 'h1', 'Stopped');
    await put('elsewhere', 'h2', 'Running');
    await until(async () => (await statusOf('b'))?.status === 'Running', 'h1 started its guests');
    await until(async () => (await statusOf('a'))?.status === 'Running', 'h1 started its guests');
    await controller.reconcile('stopped');
    gets.length = 0;
    lists.length = 0;
    const running = controller.running();
    assert.deepEqual(running.map((g) => g.spec.name).sort(), ['a', 'b']);
    assert.ok(running.every((g) => g.status.status === 'Running' && g.status.startedAt !== undefined));
    assert.deepEqual([gets, lists], [[], []], 'no store read');
    // A guest stopped is no longer in it.
    await put('a', 'h1', 'Stopped');
    await until(async () => (await statusOf('a'))?.status === 'Stopped', 'h1 stopped a');
    assert.deepEqual(
      controller.running().map((g) => g.spec.name),
      ['b'],
    );
  });

  test('a reconcile that changes nothing writes nothing: a stopped guest keeps its status record and its last exit', async () => {
    await memory.delete('/trivisor/', { prefix: true });
    controller = controllerOf('h1');
    await controller.start();
    await memory.txn({
      compare: [],
      success: [
        {
          type: 'put',
          key: keys.guest('idle'),
          value: JSON.stringify({ ...guestSpec('idle', 'h1'), desired: 'Stopped' }),
        },
        { type: 'put', key: keys.guestLocation('idle'), value: 'h1' },
      ],
    });
    await until(async () => (await statusOf('idle'))?.provisioned === true, 'h1 made its guest');
    await controller.reconcile('idle');
    const before = await memory.get(keys.guestStatus('idle'));
    // As at a daemon's start: every guest is reconciled again.
    await controller.reconcile('idle');
    await controller.reconcile('idle');
    const after = await memory.get(keys.guestStatus('idle'));
    assert.equal(after?.modRevision, before?.modRevision, 'the status was not written again');
    assert.equal(after?.value, before?.value);
  });

  test("another member's guest is not reconciled (nor read) by this member's controller", async () => {
    await memory.delete('/trivisor/', { prefix: true });
    const other = controllerOf('h2');
    controller = controllerOf('h1');
    await Promise.all([controller.start(), other.start()]);
    gets.length = 0;
    try {
      await memory.txn({
        compare: [],
        success: [
          { type: 'put', key: keys.guest('web'), value: JSON.stringify(guestSpec('web', 'h1')) },
          { type: 'put', key: keys.guestLocation('web'), value: 'h1' },
        ],
      });
      await until(async () => (await statusOf('web'))?.status === 'Running', 'h1 started its guest');
      // h1's one reconcile read the spec, status and location once; h2 read nothing.
      const specReads = gets.filter((k) => k === keys.guest('web')).length;
      assert.equal(specReads, 1, `one reconcile read the spec (reads: ${gets.join(', ')})`);
    } finally {
      await other.stop();
    }
  });
});
