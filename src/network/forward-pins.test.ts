import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { GuestSpec, NetworkForward, NetworkSpec } from '../core/types.ts';
import { forwardPins, memberByClusterAddress, pinNote, pinRefusal } from './forward-pins.ts';

const forward = (more: Partial<NetworkForward> = {}): NetworkForward => ({
  listenAddress: '198.18.0.11',
  listenPort: 8080,
  protocol: 'tcp',
  targetAddress: '198.18.50.20',
  targetPort: 80,
  ...more,
});
const network = (name: string, forwards: NetworkForward[], more: Partial<NetworkSpec> = {}): NetworkSpec => ({
  name,
  description: '',
  config: { 'ipv4.address': '198.18.50.1/24' },
  generation: 1,
  deleting: false,
  location: 'm1',
  createdAt: new Date(0).toISOString(),
  forwards,
  ...more,
});
const guest = (more: Partial<Pick<GuestSpec, 'location' | 'devices'>> = {}) => ({
  name: 'web',
  project: 'default',
  location: 'm1',
  devices: { eth0: { type: 'nic' as const, network: 'lab', 'ipv4.address': '198.18.50.20' } },
  ...more,
});
const memberOf = memberByClusterAddress([
  { name: 'm1', address: '198.18.0.11:8443' },
  { name: 'm2', address: '198.18.0.12:8443' },
]);

describe('port forwards that pin a guest to its member', () => {
  test("a forward of the guest's member's address to the guest's address on that network pins it", () => {
    const f = forward();
    assert.deepEqual(forwardPins(guest(), [network('lab', [f])], memberOf), [{ network: 'lab', forward: f }]);
  });

  test("forwards that do not reach the guest pin nothing: another member's address, an address no member has, another guest's, another network's, another project's, a network being deleted", () => {
    const networks = [
      network('lab', [
        forward({ listenAddress: '198.18.0.12' }),
        forward({ listenAddress: '203.0.113.7' }),
        forward({ targetAddress: '198.18.50.21' }),
      ]),
      network('other', [forward()]),
      network('lab2', [forward()], { project: 'team1' }),
      network('lab3', [forward()], { deleting: true }),
    ];
    const g = guest({
      devices: {
        eth0: { type: 'nic', network: 'lab', 'ipv4.address': '198.18.50.20' },
        eth1: { type: 'nic', network: 'lab3', 'ipv4.address': '198.18.50.20' },
      },
    });
    assert.deepEqual(forwardPins(g, networks, memberOf), []);
    // A guest without an address on the network, and a guest on the other member.
    assert.deepEqual(forwardPins(guest({ devices: {} }), [network('lab', [forward()])], memberOf), []);
    assert.deepEqual(forwardPins(guest({ location: 'm2' }), [network('lab', [forward()])], memberOf), []);
  });

  test('the refusal and the note are one line, name every forward and say what to do', () => {
    const pins = [
      { network: 'lab', forward: forward() },
      { network: 'lab', forward: forward({ listenPort: 5353, protocol: 'udp', targetPort: 53 }) },
    ];
    assert.equal(
      pinRefusal('web', { from: 'm1', to: 'm2' }, pins.slice(0, 1)),
      "Guest web cannot move to m2: port forward lab 198.18.0.11:8080/tcp → 198.18.50.20:80 listens on member m1's address and would no longer reach it; remove it (trivisor network forward remove lab 198.18.0.11:8080), move the guest, and forward an address of m2 instead",
    );
    assert.equal(
      pinRefusal('web', { from: 'm1', to: 'm2' }, pins),
      "Guest web cannot move to m2: port forwards lab 198.18.0.11:8080/tcp → 198.18.50.20:80, lab 198.18.0.11:5353/udp → 198.18.50.20:53 listen on member m1's address and would no longer reach it; remove them (trivisor network forward remove lab 198.18.0.11:8080, …), move the guest, and forward an address of m2 instead",
    );
    assert.equal(
      pinNote('web', 'm1', pins.slice(1)),
      "web is pinned to m1 by port forward lab 198.18.0.11:5353/udp → 198.18.50.20:53 (a forward reaches only the guests of its listen address's member)",
    );
  });
});
