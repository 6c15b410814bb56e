import { afterEach, beforeEach, describe, test } from 'node:test';
import { createFakeDriver, type FakeDriver } from '../../test/fakes/fake-driver.ts';
import { BUSYBOX_IMAGE } from '../../test/fakes/guest-records.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, ImageRecord, NetworkSpec } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { NetworkBackend, NetworkDefinition } from '../network/network-backend.ts';
import { createEventBus } from '../services/event-bus.ts';
import type { KvStore } from '../store/kv.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { createGuestController, type GuestController } from './guest-controller.ts';
import { createNetworkController, type NetworkController } from './network-controller.ts';

// The controllers watch through informers: a watch the store loses (compacted, cancelled
// by etcd) is followed by a re-list, and what changed meanwhile is converged all the same.
// Each test holds the re-list until the change is written, so only the re-list can tell.

/** The store with a list that can be held, to write while an informer has no watch. */
function holdable(store: KvEngine) {
  let held: Promise<void> | undefined;
  let release: () => void = () => {};
  let waiting = 0;
  const proxy: KvStore = new Proxy(store, {
    get(target, prop) {
      if (prop === 'list') {
        return async (prefix: string, options?: { limit?: number }) => {
          if (held) {
            waiting++;
            await held;
          }
          return target.list(prefix, options);
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return {
    proxy,
    hold() {
      held = new Promise((resolve) => (release = resolve));
    },
    waiting: () => waiting,
    release() {
      held = undefined;
      release();
    },
  };
}

const image: ImageRecord = BUSYBOX_IMAGE;

const guestSpec = (name: string, more: Partial<GuestSpec> = {}): GuestSpec => ({
  name,
  project: 'default',
  model: 'ct',
  image: image.fingerprint,
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
  ...more,
});

describe('guest controller after a lost watch', () => {
  let store: KvEngine;
  let driver: FakeDriver;
  let controller: GuestController;
  let list: ReturnType<typeof holdable>;

  beforeEach(async () => {
    store = createMemoryStore();
    driver = createFakeDriver();
    list = holdable(store);
    controller = createGuestController({
      store: list.proxy,
      drivers: { ct: driver },
      images: {
        handle: async () => ({
          record: image,
          rootfs: '/x',
          shiftedRootfs: async () => '/y',
          baseDisk: async () => '/z',
        }),
      },
      events: createEventBus(),
      log: silentLogger(),
      hostName: 'h1',
      livenessIntervalMs: 60_000,
    });
    await controller.start();
  });
  afterEach(async () => {
    list.release();
    await controller.stop();
    await store.close();
  });

  test('a stop and a delete written while the watch was lost are converged after the re-list', async () => {
    await store.put(keys.guest('g1'), JSON.stringify(guestSpec('g1')));
    await store.put(keys.guest('g2'), JSON.stringify(guestSpec('g2')));
    await waitFor(
      () => driver.guests.get('g1')?.state === 'running' && driver.guests.get('g2')?.state === 'running',
    );
    await waitFor(async () => (await store.get(keys.guestStatus('g2'))) !== undefined);

    list.hold();
    store.cancelWatches('test: the watch is lost');
    await waitFor(() => list.waiting() > 0);
    await store.put(keys.guest('g1'), JSON.stringify(guestSpec('g1', { desired: 'Stopped', generation: 2 })));
    // g2's spec goes behind the controller's back (as another member's delete would): its
    // status is debris the controller sweeps once it learns of the delete.
    await store.delete(keys.guest('g2'));
    list.release();

    await waitFor(() => driver.guests.get('g1')?.state === 'stopped');
    await waitFor(async () => (await store.get(keys.guestStatus('g2'))) === undefined);
  });
});

describe('network controller after a lost watch', () => {
  let store: KvEngine;
  let controller: NetworkController;
  let list: ReturnType<typeof holdable>;
  const bridges = new Set<string>();
  // Only what the controller calls; the rest of the interface is never reached here.
  const backend = {
    async ensure(def: NetworkDefinition) {
      bridges.add(def.name);
      return { pid: 1, startTime: 1 };
    },
    async remove(name: string) {
      bridges.delete(name);
    },
    async inspect(name: string) {
      return { bridge: bridges.has(name), dnsmasq: true };
    },
    async listOwned() {
      return [...bridges];
    },
  } as unknown as NetworkBackend;

  beforeEach(async () => {
    bridges.clear();
    store = createMemoryStore();
    list = holdable(store);
    controller = createNetworkController({
      store: list.proxy,
      backend,
      events: createEventBus(),
      log: silentLogger(),
      hostName: 'h1',
      checkIntervalMs: 60_000,
    });
    await controller.start();
  });
  afterEach(async () => {
    list.release();
    await controller.stop();
    await store.close();
  });

  test('a network created while the watch was lost is built after the re-list', async () => {
    list.hold();
    store.cancelWatches('test: the watch is lost');
    await waitFor(() => list.waiting() > 0);
    const spec: NetworkSpec = {
      name: 'net1',
      project: 'default',
      description: '',
      config: { 'ipv4.address': '198.18.10.1/24' },
      generation: 1,
      deleting: false,
      location: 'h1',
      createdAt: new Date(0).toISOString(),
    };
    await store.put(keys.network('net1'), JSON.stringify(spec));
    list.release();
    await waitFor(() => bridges.has('net1'));
  });
});

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
