import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Network } from '../core/types.ts';
import { networkInfo } from './output.ts';

const network: Network = {
  name: 'lan',
  project: 'default',
  description: '',
  type: 'bridge',
  managed: true,
  config: { 'ipv4.address': '198.18.5.1/24' },
  status: 'Created',
  usedBy: [],
  createdAt: '2026-12-05T00:00:00.000Z',
};

test('network info lists each member with its status and error, after the guests on it', () => {
  const text = networkInfo({
    ...network,
    members: [
      { name: 'm1', status: 'Created' },
      { name: 'm2', status: 'Error', error: 'bridge lan: no such device' },
    ],
  });
  assert.match(
    text,
    /\nUsed by: \(none\)\nMembers:\n {2}m1: Created\n {2}m2: Error \(bridge lan: no such device\)\n$/,
  );
});

test('network info on a single host has no Members section', () => {
  assert.doesNotMatch(networkInfo(network), /Members/);
});

test("network info on a cluster shows the VXLAN's VNI, port and MTU, and each member's tunnel endpoint", () => {
  const text = networkInfo({
    ...network,
    tunnel: { type: 'vxlan', id: 7, port: 4789, mtu: 1450 },
    members: [
      { name: 'm1', status: 'Created', tunnelEndpoint: '198.18.5.11' },
      { name: 'm2', status: 'Pending', tunnelEndpoint: '198.18.5.12' },
    ],
  });
  assert.match(
    text,
    /\nTunnel: vxlan id 7, UDP port 4789, guest MTU 1450\nMembers:\n {2}m1: Created \(tunnel endpoint 198\.18\.5\.11\)\n {2}m2: Pending \(tunnel endpoint 198\.18\.5\.12\)\n$/,
  );
});
