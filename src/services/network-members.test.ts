import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { NetworkSpec, NetworkStatus } from '../core/types.ts';
import { networkMembers, networkTunnel } from './network-crud.ts';

const spec: NetworkSpec = {
  name: 'lan',
  project: 'default',
  description: '',
  config: { 'ipv4.address': '198.18.5.1/24' },
  generation: 2,
  deleting: false,
  location: 'm2',
  createdAt: '2026-12-05T00:00:00.000Z',
};
const created = (generation: number): NetworkStatus => ({
  status: 'Created',
  observedGeneration: generation,
});

test("networkMembers() shows the network's own member first from its status, each other member from its own, Pending until it built the current generation", () => {
  const members = networkMembers(spec, {
    own: created(2),
    members: ['m3', 'm1', 'm2', 'm4'],
    statuses: new Map<string, NetworkStatus>([
      ['lan/m1', created(2)],
      ['lan/m3', created(1)],
      [
        'lan/m4',
        { status: 'Error', observedGeneration: 2, failedGeneration: 2, error: 'dnsmasq would not start' },
      ],
      // Another network's status of the same member is not this one's.
      ['lan2/m3', created(2)],
    ]),
  });
  assert.deepEqual(members, [
    { name: 'm2', status: 'Created' },
    { name: 'm1', status: 'Created' },
    { name: 'm3', status: 'Pending' },
    { name: 'm4', status: 'Error', error: 'dnsmasq would not start' },
  ]);
});

test('networkMembers(): a member that wrote no status yet is Pending, and an error of an older generation is not shown', () => {
  const members = networkMembers(spec, {
    own: { status: 'Error', observedGeneration: 1, failedGeneration: 1, error: 'old' },
    members: ['m1', 'm2'],
    statuses: new Map(),
  });
  assert.deepEqual(members, [
    { name: 'm2', status: 'Pending' },
    { name: 'm1', status: 'Pending' },
  ]);
});

test("networkMembers() and networkTunnel(): a network with a VNI shows its VXLAN and each member's end, the cluster address without its port", () => {
  const spanned = { ...spec, vni: 7 };
  const addresses = new Map([
    ['m1', '198.18.5.11:8443'],
    ['m2', '198.18.5.12:8443'],
  ]);
  assert.deepEqual(
    networkMembers(spanned, { own: created(2), members: ['m1', 'm2'], statuses: new Map(), addresses }),
    [
      { name: 'm2', status: 'Created', tunnelEndpoint: '198.18.5.12' },
      { name: 'm1', status: 'Pending', tunnelEndpoint: '198.18.5.11' },
    ],
  );
  assert.deepEqual(networkTunnel(spanned), { type: 'vxlan', id: 7, port: 4789, mtu: 1450 });
  assert.deepEqual(networkTunnel(spanned, addresses.values()), {
    type: 'vxlan',
    id: 7,
    port: 4789,
    mtu: 1450,
  });
  // Over IPv6 cluster addresses the outer header is 20 bytes more (decision 0101).
  const v6 = ['[fd42:1::11]:8443', '[fd42:1::12]:8443'];
  assert.deepEqual(networkTunnel(spanned, v6), { type: 'vxlan', id: 7, port: 4789, mtu: 1430 });
  assert.equal(
    networkMembers(spanned, {
      own: created(2),
      members: ['m1'],
      statuses: new Map(),
      addresses: new Map([['m1', v6[0] ?? '']]),
    }).find((m) => m.name === 'm1')?.tunnelEndpoint,
    'fd42:1::11',
  );
  // A network without a VNI yet (made before networks spanned members): no tunnel to show.
  assert.equal(networkTunnel(spec), undefined);
  assert.deepEqual(
    networkMembers(spec, { own: created(2), members: ['m2'], statuses: new Map(), addresses }),
    [{ name: 'm2', status: 'Created' }],
  );
});
