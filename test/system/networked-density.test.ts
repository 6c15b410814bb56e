import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { formatIpv4, nicCapacity, parseCidr, prefixFor } from '../../src/network/ipv4.ts';
import { ownerAlias, ownerHash } from '../../src/network/linux-network-backend.ts';
import { parsePortsTable, portsTable } from '../../src/network/nft-rules.ts';
import { type Daemon, startDaemon } from './harness.ts';
import {
  awaitLeases,
  checkFromInside,
  deleteGuest,
  freeGateway,
  inPool,
  launchOnNetwork,
  nicsOf,
  spoofing,
} from './networked-guests.ts';

/*
 * Networked density at a CI size (issue 16 §4, decision 0068): N ct guests with a NIC each on one
 * managed network get their reserved addresses by DHCP and reach the gateway; anti-spoofing holds
 * on a sample of ports, in one nftables base chain of fixed rules for all of them (set elements per port). Bridges take 64 guest ports
 * here (TRIVISOR_BRIDGE_PORTS; 1,000 in production, under the kernel's 1,023), so the guests
 * spread over the network's bridge and two leaf bridges, as 2,000 do over two in production.
 * Traffic stays between this test's guests and its bridges, in 198.19.0.0/16.
 */

const N = Number(process.env.TRIVISOR_NET_DENSITY_N ?? 150);
const PER_BRIDGE = 64;
const sfx = String(process.pid % 10000);
const NET = `tnd${sfx}`;
const SMALL = `tns${sfx}`;
const names = Array.from({ length: N }, (_, i) => `n${i}`);

describe(`${N} networked ct guests on one network`, { timeout: 1_800_000 }, () => {
  let d: Daemon;
  let gateway = '';

  before(async () => {
    d = await startDaemon({ env: { TRIVISOR_BRIDGE_PORTS: String(PER_BRIDGE) } });
    const cidr = await freeGateway(prefixFor(N));
    gateway = cidr.split('/')[0] ?? '';
    d.ok(['network', 'create', NET, `ipv4.address=${cidr}`]);
    const failed: string[] = [];
    await inPool(names, 4, async (name) => {
      await launchOnNetwork(d, name, NET).catch((e) => failed.push(String(e)));
    });
    assert.deepEqual(failed, [], 'guests that did not start');
  });

  after(async () => {
    if (!d) return;
    // Side by side (destroy() deletes one after the other), then the networks; destroy() checks
    // that nothing is left, and a killed run's leftovers are swept by the next (test/leftovers.ts).
    await inPool([...names, 's0', 's1', 's2', 's3', 's4'], 4, async (name) => {
      await deleteGuest(d, name).catch(() => {});
    });
    d.cli(['network', 'delete', NET, SMALL], { timeoutMs: 120_000 });
    await d.destroy();
  });

  test('every guest gets its reserved address by DHCP and reaches the gateway', async () => {
    const nics = await nicsOf(d);
    assert.equal(nics.size, N);
    assert.deepEqual(await awaitLeases(d, NET, nics, 300_000), [], 'guests without a lease of their address');
    const wrong: string[] = [];
    await inPool(names, 4, async (name) => {
      // One exec a guest: the address its DHCP client took, and a ping of the gateway.
      const r = await checkFromInside(d, name, gateway);
      if (r.held !== nics.get(name)?.ip)
        wrong.push(`${name} holds ${r.held}, not ${nics.get(name)?.ip}: ${r.error}`);
      else if (!r.reached) wrong.push(`${name} does not reach the gateway: ${r.error}`);
    });
    assert.deepEqual(wrong, []);
  });

  test('the guests spread over the bridge and leaf bridges, none above its share', () => {
    const bridges = JSON.parse(
      spawnSync('ip', ['-json', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' }).stdout,
    ) as Array<{ ifname: string; ifalias?: string }>;
    const leaves = bridges.filter((b) => b.ifalias === `${ownerAlias(d.stateDir)}:leaf:${NET}`);
    assert.equal(leaves.length, Math.ceil(N / PER_BRIDGE) - 1, 'leaf bridges');
    let total = 0;
    for (const b of [NET, ...leaves.map((l) => l.ifname)]) {
      const ports = spawnSync('ls', [`/sys/class/net/${b}/brif`], { encoding: 'utf8' })
        .stdout.split('\n')
        .filter((p) => p.startsWith('tv'));
      assert.ok(ports.length <= PER_BRIDGE, `${b} holds ${ports.length} guest ports`);
      total += ports.length;
    }
    assert.equal(total, N, 'every guest port is on one of them');
  });

  test("every port has its elements in the ports table's sets, behind one base chain of fixed rules", () => {
    const table = portsTable(ownerHash(d.stateDir));
    const listed = spawnSync('nft', ['-j', 'list', 'table', 'bridge', table], { encoding: 'utf8' }).stdout;
    const state = parsePortsTable(listed);
    assert.equal(state.layout, 'current', 'this layout, whole');
    assert.equal(state.ports.length, N, "every port's name, MAC and address");
    assert.equal(new Set(state.ports.map((p) => p.ip)).size, N);
    const text = spawnSync('nft', ['list', 'table', 'bridge', table], { encoding: 'utf8' }).stdout;
    assert.equal(text.match(/^\s+chain /gm)?.length, 1, 'one chain, no chain per port');
    assert.equal(text.match(/hook prerouting/g)?.length, 1, 'one base chain on the hook');
    assert.doesNotMatch(text, /jump|vmap/, 'no verdict to validate at each commit');
  });

  test('a guest that takes another address or MAC is dropped, on the bridge and on a leaf', async () => {
    const cidr = parseCidr(`${gateway}/${prefixFor(N)}`);
    // An address of the subnet no guest holds: the last host address (N stays below the capacity).
    assert.ok(N < nicCapacity(cidr));
    const foreignIp = formatIpv4(cidr.broadcast - 1);
    for (const name of [names[0], names[N - 1]] as string[]) {
      const r = await spoofing(d, name, { target: gateway, foreignIp, prefix: cidr.prefixLength });
      assert.deepEqual(r, { foreignIpDropped: true, foreignMacDropped: true, worksAgain: true }, name);
    }
  });

  test('a network whose addresses are all taken refuses one more NIC with a clear error', async () => {
    const small = await freeGateway(29);
    d.ok(['network', 'create', SMALL, `ipv4.address=${small}`]);
    for (let i = 0; i < 5; i++) {
      const r = await d.api('POST', '/1.0/guests', {
        name: `s${i}`,
        image: 'busybox',
        devices: { eth0: { type: 'nic', network: SMALL } },
      });
      assert.ok(r.status < 300, `s${i}: ${r.status} ${r.body.error}`);
    }
    const r = await d.api('POST', '/1.0/guests', {
      name: 's5',
      image: 'busybox',
      devices: { eth0: { type: 'nic', network: SMALL } },
    });
    assert.equal(r.status, 400);
    assert.match(
      String(r.body.error),
      new RegExp(`^Network ${SMALL} has no free address left: its subnet \\S+/29 holds 5 NICs; `),
    );
    assert.equal((await d.api('GET', '/1.0/guests/s5')).status, 404, 'nothing of it was made');
  });
});
