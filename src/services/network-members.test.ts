import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { NetworkSpec, NetworkStatus } from '../core/types.ts';
import { networkMembers } from './network-crud.ts';

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
