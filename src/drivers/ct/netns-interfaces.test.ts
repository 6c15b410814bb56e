import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  netnsInterfaces,
  parseFibTrieLocal,
  parseLinkRoutes,
  parseNetDev,
  readNetnsInterfaces,
} from './netns-interfaces.ts';

// Read from a network namespace with eth0 up (198.18.250.5/24, 198.18.251.7/32, default route)
// and eth1 down (198.18.252.9/24).
const FIB_TRIE =
  'Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n        |-- 127.255.255.255\n           /32 link BROADCAST\n     +-- 198.18.248.0/21 2 1 2\n        +-- 198.18.250.0/23 2 0 1\n           +-- 198.18.250.0/29 2 0 2\n              |-- 198.18.250.0\n                 /24 link UNICAST\n              |-- 198.18.250.5\n                 /32 host LOCAL\n           |-- 198.18.250.255\n              /32 link BROADCAST\n           |-- 198.18.251.7\n              /32 host LOCAL\n        |-- 198.18.252.9\n           /32 host LOCAL\nLocal:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n        |-- 127.255.255.255\n           /32 link BROADCAST\n     +-- 198.18.248.0/21 2 1 2\n        +-- 198.18.250.0/23 2 0 1\n           +-- 198.18.250.0/29 2 0 2\n              |-- 198.18.250.0\n                 /24 link UNICAST\n              |-- 198.18.250.5\n                 /32 host LOCAL\n           |-- 198.18.250.255\n              /32 link BROADCAST\n           |-- 198.18.251.7\n              /32 host LOCAL\n        |-- 198.18.252.9\n           /32 host LOCAL\n';
const ROUTE =
  'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT                                                       \neth0\t00000000\t01FA12C6\t0003\t0\t0\t0\t00000000\t0\t0\t0                                                                               \neth0\t00FA12C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0                                                                               \n';
const DEV =
  'Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  eth1:      90       1    0    0    0     0          0         0       90       1    0    0    0     0       0          0\n  eth0:      90       1    0    0    0     0          0         0       90       1    0    0    0     0       0          0\n';

test('parseNetDev() names every interface but loopback', () => {
  assert.deepEqual(parseNetDev(DEV).sort(), ['eth0', 'eth1']);
});

test('parseFibTrieLocal() lists local addresses once, down interfaces included, loopback left out', () => {
  assert.deepEqual(parseFibTrieLocal(FIB_TRIE).sort(), ['198.18.250.5', '198.18.251.7', '198.18.252.9']);
});

test('parseLinkRoutes() keeps routes without a gateway, decoded from little-endian hex', () => {
  assert.deepEqual(parseLinkRoutes(ROUTE), [{ iface: 'eth0', network: 0xc612fa00, mask: 0xffffff00 }]);
});

test('netnsInterfaces() puts addresses on the interface whose prefix route holds them', () => {
  const ifs = netnsInterfaces({ dev: DEV, fibTrie: FIB_TRIE, route: ROUTE });
  assert.deepEqual(
    ifs.sort((a, b) => a.name.localeCompare(b.name)),
    [
      { name: 'eth0', addresses: ['198.18.250.5'] },
      // Down: its prefix route is gone, and with two interfaces nothing says whose the address is.
      { name: 'eth1', addresses: [] },
    ],
  );
});

test('netnsInterfaces() gives an address no route holds to the only interface', () => {
  const dev = DEV.split('\n')
    .filter((l) => !l.includes('eth1:'))
    .join('\n');
  const ifs = netnsInterfaces({ dev, fibTrie: FIB_TRIE, route: ROUTE });
  assert.deepEqual(ifs, [{ name: 'eth0', addresses: ['198.18.250.5', '198.18.251.7', '198.18.252.9'] }]);
});

test('netnsInterfaces() of a namespace whose eth0 lost its address shows eth0 without one', () => {
  const fibTrie = FIB_TRIE.replace(/\|-- 198\.18\.250\.5\n\s*\/32 host LOCAL\n/g, '');
  const dev = DEV.split('\n')
    .filter((l) => !l.includes('eth1:'))
    .join('\n');
  const ifs = netnsInterfaces({ dev, fibTrie, route: '' });
  assert.deepEqual(ifs, [{ name: 'eth0', addresses: ['198.18.251.7', '198.18.252.9'] }]);
});

test('readNetnsInterfaces() reads /proc/PID/net of the process and throws when it is gone', async () => {
  const root = await mkdtemp(join(tmpdir(), 'trivisor-netns-'));
  try {
    await mkdir(join(root, '42', 'net'), { recursive: true });
    await writeFile(join(root, '42', 'net', 'dev'), DEV);
    await writeFile(join(root, '42', 'net', 'fib_trie'), FIB_TRIE);
    await writeFile(join(root, '42', 'net', 'route'), ROUTE);
    const ifs = readNetnsInterfaces(42, { procRoot: root });
    assert.deepEqual(ifs.find((i) => i.name === 'eth0')?.addresses, ['198.18.250.5']);
    assert.throws(() => readNetnsInterfaces(43, { procRoot: root }));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('a guest with thousands of addresses gets 16 kept, and only the first 256 KiB of a file is read', async () => {
  const leaves = Array.from(
    { length: 20_000 },
    (_, i) => `        |-- 10.${i >> 16}.${(i >> 8) & 255}.${i & 255}\n           /32 host LOCAL\n`,
  );
  const fibTrie = `Local:\n  +-- 0.0.0.0/0 3 0 5\n${leaves.join('')}`;
  const dev = DEV.split('\n')
    .filter((l) => !l.includes('eth1:'))
    .join('\n');
  assert.equal(netnsInterfaces({ dev, fibTrie, route: '' })[0]?.addresses.length, 16);
  const root = await mkdtemp(join(tmpdir(), 'trivisor-netns-'));
  try {
    await mkdir(join(root, '7', 'net'), { recursive: true });
    await writeFile(join(root, '7', 'net', 'dev'), dev);
    await writeFile(join(root, '7', 'net', 'fib_trie'), fibTrie);
    await writeFile(join(root, '7', 'net', 'route'), ROUTE);
    assert.ok(fibTrie.length > 256 * 1024);
    assert.equal(readNetnsInterfaces(7, { procRoot: root })[0]?.addresses.length, 16);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
