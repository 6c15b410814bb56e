import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { createFakeDriver, type FakeDriver } from '../../test/fakes/fake-driver.ts';
import { BUSYBOX_IMAGE } from '../../test/fakes/guest-records.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus, ImageRecord } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import { createEventBus } from '../services/event-bus.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { createGuestController, type GuestController } from './guest-controller.ts';

// Status writes are compare-and-swap on the status's mod revision and bound to the guest's
// owner: the transaction compares `keys.guestLocation` with the writer (decision 28).

const image: ImageRecord = BUSYBOX_IMAGE;

const guestSpec = (location: string): GuestSpec => ({
  name: 'web',
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
  location,
  createdAt: new Date(0).toISOString(),
});

/** A fake driver whose starts wait until `release()`, so that the test can write meanwhile. */
function slowStarts(driver: FakeDriver) {
  let release: () => void = () => {};
  let started: () => void = () => {};
  const starting = new Promise<void>((r) => (started = r));
  const gate = new Promise<void>((r) => (release = r));
  const start = driver.start.bind(driver);
  driver.start = async (spec, handle) => {
    started();
    await gate;
    return start(spec, handle);
  };
  return { starting, release: () => release() };
}

const until = async (what: () => Promise<boolean>, message: string) => {
  for (let i = 0; i < 200; i++) {
    if (await what()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(message);
};

describe('guest status writes', () => {
  const store = createMemoryStore();
  let controller: GuestController | undefined;
  afterEach(async () => {
    await controller?.stop();
  });

  const controllerOf = (hostName: string, driver: FakeDriver) =>
    createGuestController({
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
      events: createEventBus(),
      log: silentLogger(),
      hostName,
      livenessIntervalMs: 60_000,
    });

  const status = async (): Promise<GuestStatus | undefined> => {
    const kv = await store.get(keys.guestStatus('web'));
    return kv ? (JSON.parse(kv.value) as GuestStatus) : undefined;
  };

  test('a member that stopped owning the guest while it reconciled cannot write its status', async () => {
    await store.delete('/trivisor/', { prefix: true });
    await store.put(keys.guest('web'), JSON.stringify(guestSpec('h2')));
    await store.put(keys.guestLocation('web'), 'h2');
    const driver = createFakeDriver('ct');
    const slow = slowStarts(driver);
    controller = controllerOf('h2', driver);
    // start() waits for its first reconciles, which wait for the gate: awaited after the release.
    const started = controller.start();
    await slow.starting;
    // The guest moves to h1 while h2 is starting it.
    await store.put(keys.guest('web'), JSON.stringify(guestSpec('h1')));
    await store.put(keys.guestLocation('web'), 'h1');
    slow.release();
    await started;
    await controller.reconcile('web');
    assert.equal(await status(), undefined, 'h2 wrote no status for a guest it no longer owns');
    assert.equal((await store.get(keys.guestLocation('web')))?.value, 'h1');
  });

  test('a status written by someone else meanwhile is not overwritten: the controller reads it again', async () => {
    await store.delete('/trivisor/', { prefix: true });
    await store.put(keys.guest('web'), JSON.stringify(guestSpec('h1')));
    await store.put(keys.guestLocation('web'), 'h1');
    const driver = createFakeDriver('ct');
    const slow = slowStarts(driver);
    controller = controllerOf('h1', driver);
    const started = controller.start();
    await slow.starting;
    // Another writer records a status (say, the previous owner's last one) while h1 starts the guest.
    const other: GuestStatus = {
      status: 'Stopped',
      observedGeneration: 0,
      observedRestartRequest: 0,
      restartCount: 7,
      provisioned: true,
      appliedConfig: {},
      pendingRestart: [],
    };
    await store.put(keys.guestStatus('web'), JSON.stringify(other));
    slow.release();
    await started;
    await until(
      async () => (await status())?.observedGeneration === 1,
      'the controller converged generation 1',
    );
    const final = await status();
    assert.equal(final?.status, 'Running');
    assert.equal(
      final?.restartCount,
      7,
      'the status was read again, not overwritten with what was read before',
    );
  });

  test('a guest recorded before location keys gets one from its owner, and not from another member', async () => {
    await store.delete('/trivisor/', { prefix: true });
    await store.put(keys.guest('web'), JSON.stringify(guestSpec('h1')));
    controller = controllerOf('h2', createFakeDriver('ct'));
    await controller.start();
    await controller.reconcile('web');
    assert.equal(await store.get(keys.guestLocation('web')), undefined);
    await controller.stop();
    controller = controllerOf('h1', createFakeDriver('ct'));
    await controller.start();
    await until(async () => (await status())?.status === 'Running', 'h1 converged its guest');
    assert.equal((await store.get(keys.guestLocation('web')))?.value, 'h1');
  });
});
