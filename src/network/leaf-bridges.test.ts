import assert from 'node:assert/strict';
import { test } from 'node:test';
import { leafBridgeName, leafUplink, pickBridge } from './leaf-bridges.ts';

const leafName = (i: number) => `leaf${i}`;

test('a port goes on the network bridge while it has room, then on the first leaf with room', () => {
  const counts: Record<string, number> = { net: 999 };
  const ports = (b: string) => counts[b];
  assert.deepEqual(pickBridge('net', { leafName, ports, perBridge: 1000 }), { bridge: 'net', create: false });
  counts.net = 1000;
  assert.deepEqual(pickBridge('net', { leafName, ports, perBridge: 1000 }), {
    bridge: 'leaf1',
    create: true,
  });
  counts.leaf1 = 1000;
  counts.leaf2 = 10;
  assert.deepEqual(pickBridge('net', { leafName, ports, perBridge: 1000 }), {
    bridge: 'leaf2',
    create: false,
  });
  counts.leaf1 = 400;
  assert.deepEqual(pickBridge('net', { leafName, ports, perBridge: 1000 }), {
    bridge: 'leaf1',
    create: false,
  });
  counts.leaf1 = 1000;
  counts.leaf2 = 1000;
  assert.deepEqual(pickBridge('net', { leafName, ports, perBridge: 1000 }), {
    bridge: 'leaf3',
    create: true,
  });
});

test('a network bridge that does not exist yet takes the port', () => {
  assert.deepEqual(pickBridge('net', { leafName, ports: () => undefined, perBridge: 2 }), {
    bridge: 'net',
    create: false,
  });
});

test('leaf and uplink names fit in 15 characters, differ per state dir, network and index', () => {
  const a = leafBridgeName('/s', 'net', 1);
  assert.match(a, /^tl[0-9a-f]{10}$/);
  assert.notEqual(a, leafBridgeName('/s', 'net', 2));
  assert.notEqual(a, leafBridgeName('/t', 'net', 1));
  assert.notEqual(a, leafBridgeName('/s', 'net2', 1));
  const { leafEnd, bridgeEnd } = leafUplink(a);
  assert.ok(leafEnd.length <= 15 && bridgeEnd.length <= 15 && leafEnd !== bridgeEnd);
});
