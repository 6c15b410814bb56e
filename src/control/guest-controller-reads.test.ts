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
  const store: KvStore = {
    get: (key) => {
      gets.push(key);
      return memory.get(key);
    },
    list: (prefix, options) => memory.list(prefix, options),
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
