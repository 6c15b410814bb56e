import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eventually, sleep } from '../system/harness.ts';
import {
  formCluster,
  type MemberHost,
  makeTestCluster,
  membersOf,
  type TestCluster,
} from './cluster-harness.ts';
import { floodsOf, guestSh, launchGuests, nicOf, vxlanOf } from './network-span.ts';

/*
 * Issue 13 part 2 over an IPv6 underlay (decision 0101): the cluster-network-span test's fixture
 * with the members' cluster addresses on a ULA /64 (fd42:…, inside the test's namespaces). The
 * cluster forms on them (etcd, member API), a managed network's bridges are joined by VXLAN over
 * IPv6 (local and FDB entries v6, guests' MTU 1430: the outer IPv6 header is 20 bytes more than
 * IPv4's), the VXLAN port is admitted from the members only by the ip6 table, and a ct guest on
 * m1 and a pvm guest on m2 ping each other (also with packets that fit 1430 and not 1450) and
 * move data over TCP. A host joining with an IPv4 address is refused in one line. Guests' traffic
 * stays in 198.19.86.0/24 and the cluster's namespaces.
 */

const NET = 'span6';
const SUBNET = '198.19.86';
const GUESTS = [
  { name: 'c6', model: 'ct', member: 'm1', args: [] },
  { name: 'p6', model: 'pvm', member: 'm2', args: ['-c', 'limits.memory=64MiB'] },
] as const;

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2'], { underlay: 'ipv6' });
});

after(async () => {
  if (cluster) await cluster.destroy();
});

// A guard against a hang, not a measure.
describe('a managed network spanning two members whose cluster addresses are IPv6', {
  timeout: 1_200_000,
}, () => {
  let m1: MemberHost;
  let m2: MemberHost;
  const sh = (guest: string, script: string) => guestSh(m1, guest, script);
  const addressOf = (guest: string) => nicOf(m2, guest)['ipv4.address'] ?? '';

  test('the cluster forms on IPv6 addresses: members listed at [IPv6]:PORT, both Online', async () => {
    [m1, m2] = cluster.hosts as [MemberHost, MemberHost];
    assert.match(m1.ip, /^fd42:/);
    await formCluster(cluster);
    const listed = Object.fromEntries(membersOf(m2.daemon).map((m) => [m.name, m]));
    assert.match(listed.m1?.address ?? '', new RegExp(`^\\[${m1.ip}\\]:\\d+$`));
    assert.match(listed.m2?.address ?? '', new RegExp(`^\\[${m2.ip}\\]:\\d+$`));
    assert.equal(listed.m1?.status, 'Online');
  });

  test("a network's bridges are joined by VXLAN over IPv6: local and flood entry v6, MTU 1430, VXLAN admitted from the members by the ip6 table only", async () => {
    m1.daemon.ok(['network', 'create', NET, `ipv4.address=${SUBNET}.1/24`]);
    for (const [host, other] of [
      [m1, m2],
      [m2, m1],
    ] as const) {
      await eventually(
        `${NET}'s VXLAN on ${host.name}, flooding to ${other.ip} only`,
        () =>
          vxlanOf(cluster, host).some(
            (v) => v.master === NET && floodsOf(cluster, host, v.ifname).join() === other.ip,
          ),
        60_000,
      );
      const vx = vxlanOf(cluster, host).find((v) => v.master === NET);
      assert.ok(vx);
      assert.equal(
        vx.linkinfo.info_data.local6,
        host.ip,
        `${host.name}'s VXLAN sends from its cluster address`,
      );
      assert.equal(vx.linkinfo.info_data.port, 4789);
      assert.equal(vx.mtu, 1430, 'the outer IPv6 header is 20 bytes more than IPv4: 1500 - 70');
      const ip6 = cluster.inNetns(host.netns, ['nft', 'list', 'table', 'ip6', `trivisor-${NET}`]);
      assert.equal(ip6.code, 0, ip6.stderr);
      assert.match(ip6.stdout, new RegExp(`udp dport 4789 ip6 saddr != ${other.ip} drop`));
      const ip4 = cluster.inNetns(host.netns, ['nft', 'list', 'table', 'ip', `trivisor-${NET}`]);
      assert.match(ip4.stdout, /\n\s*udp dport 4789 drop\n/, 'no IPv4 VXLAN taken at all');
      const dnsmasq = cluster.inNetns(host.netns, ['pgrep', '-a', 'dnsmasq']).stdout;
      assert.match(dnsmasq, /--dhcp-option=option:mtu,1430/);
    }
    const shown = JSON.parse(m2.daemon.ok(['network', 'info', NET, '--format', 'json'])) as {
      tunnel?: { mtu?: number };
      members?: Array<{ name: string; tunnelEndpoint?: string }>;
    };
    assert.equal(shown.tunnel?.mtu, 1430);
    assert.deepEqual(Object.fromEntries((shown.members ?? []).map((m) => [m.name, m.tunnelEndpoint])), {
      m1: m1.ip,
      m2: m2.ip,
    });
  });

  test('a ct guest on m1 and a pvm guest on m2 get their addresses and MTU 1430', async () => {
    launchGuests(m1, NET, GUESTS);
    for (const g of GUESTS) {
      const ip = addressOf(g.name);
      await eventually(
        `${g.name} holds ${ip}`,
        () => sh(g.name, 'ip -4 addr show dev eth0').stdout.includes(`inet ${ip}/24`),
        120_000,
      );
      // The ct's from its host end, the pvm's from DHCP option 26.
      assert.equal(sh(g.name, 'cat /sys/class/net/eth0/mtu').stdout.trim(), '1430', `${g.name}'s MTU`);
    }
  });

  test('the guests ping each other across the IPv6 underlay by address and by name, with packets of 1430 bytes and more', () => {
    for (const [from, to] of [
      ['c6', 'p6'],
      ['p6', 'c6'],
    ] as const) {
      for (const target of [addressOf(to), `${to}.trivisor`]) {
        const r = sh(from, `ping -c2 -W5 ${target}`);
        assert.equal(r.code, 0, `${from} pings ${to} as ${target}: ${r.stdout}${r.stderr}`);
      }
      // 1402 bytes of data: a 1430-byte packet, whole. 1422: 1450 bytes, which at an MTU of 1450
      // would go whole and, 1520 bytes with its IPv6 VXLAN header, be dropped by the underlay.
      for (const size of [1402, 1422, 3000]) {
        const r = sh(from, `ping -c2 -W5 -s ${size} ${addressOf(to)}`);
        assert.equal(r.code, 0, `${from} pings ${to} with ${size} bytes: ${r.stdout}${r.stderr}`);
      }
    }
  });

  test('the guests move data over TCP to each other across the IPv6 underlay', async () => {
    const from = 'c6';
    const to = 'p6';
    const port = 5300;
    const listen = sh(
      to,
      `rm -f /tmp/got; nc -l -p ${port} -e sh -c "cat > /tmp/got" </dev/null >/dev/null 2>&1 &`,
    );
    assert.equal(listen.code, 0, listen.stderr);
    await sleep(500);
    const sent = sh(
      from,
      `dd if=/dev/urandom of=/tmp/sent bs=1k count=256 2>/dev/null && nc ${addressOf(to)} ${port} < /tmp/sent && md5sum /tmp/sent`,
    );
    assert.equal(sent.code, 0, `${from} → ${to}: ${sent.stderr}`);
    const sum = sent.stdout.split(' ')[0] ?? '';
    assert.match(sum, /^[0-9a-f]{32}$/);
    await eventually(
      `${to} received all of ${from}'s data`,
      () => sh(to, 'md5sum /tmp/got').stdout.startsWith(`${sum} `),
      60_000,
    );
  });

  test('a host joining with an IPv4 address is refused in one line, naming the family, and is no member', async () => {
    const m3 = await cluster.addHost('m3');
    const token = m1.daemon.ok(['cluster', 'add', 'm3']).trim();
    const r = m3.daemon.cli(['cluster', 'join', token, '--address', m3.ip4], { timeoutMs: 120_000 });
    assert.notEqual(r.code, 0, r.stdout);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /members are on IPv6 addresses .* give --address as an IPv6 address/);
    assert.deepEqual(
      membersOf(m1.daemon)
        .map((m) => m.name)
        .sort(),
      ['m1', 'm2'],
    );
  });

  test('deleting the guests and the network removes the VXLAN devices and both tables on both members', async () => {
    m1.daemon.ok(['delete', '--force', ...GUESTS.map((g) => g.name)]);
    m1.daemon.ok(['network', 'delete', NET]);
    for (const host of [m1, m2]) {
      await eventually(
        `${NET} gone from ${host.name}`,
        () =>
          vxlanOf(cluster, host).length === 0 &&
          cluster.inNetns(host.netns, ['nft', 'list', 'table', 'ip6', `trivisor-${NET}`]).code !== 0 &&
          cluster.inNetns(host.netns, ['nft', 'list', 'table', 'ip', `trivisor-${NET}`]).code !== 0,
        60_000,
      );
    }
  });
});
