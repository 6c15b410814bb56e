import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { aGuestSpec } from '../../test/fakes/guest-records.ts';
import { keys } from '../core/keys.ts';
import type { NetworkSpec } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { NetworkBackend } from '../network/network-backend.ts';
import { createEventBus } from '../services/event-bus.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createNetworkController, type NetworkController } from './network-controller.ts';

// A deleted guest's address claims are swept by listing every claim and guest: deleting many
// guests at once must not list them once per guest (decision 0068).

const memory = createMemoryStore();
let controller: NetworkController | undefined;
afterEach(async () => {
  await controller?.stop();
  await memory.close();
});

test('deleting 40 guests at once sweeps their address claims in a few passes, not one per guest', async () => {
  const claimLists: string[] = [];
  const guestLists: string[] = [];
  const store: KvStore = new Proxy(memory, {
    get(target, prop) {
      if (prop === 'list') {
        return (prefix: string, options?: { limit?: number }) => {
          if (prefix.startsWith(keys.networkAddressPrefix)) claimLists.push(prefix);
          if (prefix.startsWith(keys.guestPrefix)) guestLists.push(prefix);
          return target.list(prefix, options);
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const spec: NetworkSpec = {
    name: 'net1',
    project: 'default',
    description: '',
    config: { 'ipv4.address': '198.18.10.1/24' },
    generation: 1,
    deleting: false,
    location: 'h1',
    createdAt: new Date(0).toISOString(),
    vni: 1,
  };
  await memory.put(keys.network('net1'), JSON.stringify(spec));
  const names = Array.from({ length: 40 }, (_, i) => `g${i}`);
  await memory.txn({
    compare: [],
    success: names.flatMap((name, i) => {
      const ip = `198.18.10.${i + 2}`;
      const guest = aGuestSpec({
        name,
        devices: { eth0: { type: 'nic', network: 'net1', hwaddr: '02:00:00:00:00:01', 'ipv4.address': ip } },
      });
      return [
        records.guest.at(name).putOp(guest),
        records.networkAddress
          .at('net1', ip)
          .putOp({ guest: name, nic: 'eth0', hwaddr: '02:00:00:00:00:01' }),
      ];
    }),
  });
  // Only what the controller calls; the rest of the interface is never reached here.
  const backend = {
    ensure: async () => ({ pid: 1, startTime: 1 }),
    remove: async () => {},
    inspect: async () => ({ bridge: true, dnsmasq: true }),
    listOwned: async () => ['net1'],
  } as unknown as NetworkBackend;
  controller = createNetworkController({
    store,
    backend,
    events: createEventBus(),
    log: silentLogger(),
    hostName: 'h1',
    checkIntervalMs: 60_000,
  });
  await controller.start();
  assert.equal((await memory.list(keys.networkAddresses('net1'))).kvs.length, 40, 'every claim kept');

  const before = claimLists.filter((p) => p === keys.networkAddressPrefix).length;
  // One guest deleted alone: its claim goes, the others' stay, and no guest is listed (a delete's
  // sweep reads the deleted guest's record only; listing every guest per delete was O(N²)).
  guestLists.length = 0;
  await memory.delete(keys.guest('g0'));
  for (
    const deadline = Date.now() + 5000;
    (await memory.list(keys.networkAddresses('net1'))).kvs.length > 39;
  ) {
    assert.ok(Date.now() < deadline, "g0's claim was swept");
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 50));
  assert.equal((await memory.list(keys.networkAddresses('net1'))).kvs.length, 39, "the others' claims stay");
  assert.deepEqual(guestLists, [], 'no guest listed for a delete');
  await memory.txn({ compare: [], success: names.slice(1).map((name) => records.guest.at(name).deleteOp()) });
  const deadline = Date.now() + 5000;
  while ((await memory.list(keys.networkAddresses('net1'))).kvs.length > 0) {
    assert.ok(Date.now() < deadline, 'the claims were swept');
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 50));
  const sweeps = claimLists.filter((p) => p === keys.networkAddressPrefix).length - before;
  assert.ok(sweeps >= 1 && sweeps <= 3, `${sweeps} sweeps listed every claim`);
});
