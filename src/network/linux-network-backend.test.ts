import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { createLogger } from '../host/logger.ts';
import { dnsmasqArgv, dnsmasqPaths } from './dnsmasq-config.ts';
import { parseGatewayCidr } from './ipv4.ts';
import { leafBridgeName } from './leaf-bridges.ts';
import { bridgeMac, createLinuxNetworkBackend, ownerAlias, ownerHash } from './linux-network-backend.ts';
import type { NetworkDefinition } from './network-backend.ts';
import {
  aclRuleset,
  deletePortRuleset,
  networkRuleset,
  PORTS_RULES,
  type PortFilter,
  parsePortsTable,
  portRuleset,
  portsTableRuleset,
} from './nft-rules.ts';
import { gatewayMac, vxlanDevice } from './vxlan.ts';

/** `nft -j list table bridge trivisor-ports-x` of a daemon before 2026-12-07 with one port (nft 1.0.6). */
const LEGACY_PORTS_JSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "bridge", "name": "trivisor-ports-x", "handle": 20}}, {"map": {"family": "bridge", "name": "ports", "table": "trivisor-ports-x", "type": "ifname", "handle": 1, "map": "verdict", "elem": [["tvg", {"jump": {"target": "port-tvg"}}]]}}, {"chain": {"family": "bridge", "table": "trivisor-ports-x", "name": "prerouting", "handle": 2, "type": "filter", "hook": "prerouting", "prio": -200, "policy": "accept"}}, {"chain": {"family": "bridge", "table": "trivisor-ports-x", "name": "port-tvg", "handle": 4}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "prerouting", "handle": 3, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@ports"}}]}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "port-tvg", "handle": 5, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}}, "right": "02:00:00:00:00:01"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "port-tvg", "handle": 6, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "arp", "field": "saddr ether"}}, "right": "02:00:00:00:00:01"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "port-tvg", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "saddr ip"}}, "right": "10.0.0.5"}}, {"return": null}]}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "port-tvg", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "saddr ip"}}, "right": "0.0.0.0"}}, {"return": null}]}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "port-tvg", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.0.0.5"}}, {"return": null}]}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "port-tvg", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "0.0.0.0"}}, {"return": null}]}}, {"rule": {"family": "bridge", "table": "trivisor-ports-x", "chain": "port-tvg", "handle": 11, "expr": [{"drop": null}]}}]}`;

/** `nft -j list table` of the ports table in this layout, as nft 1.0.6 writes it. */
function currentPortsJson(ports: PortFilter[], table = 'trivisor-ports-x'): string {
  const base = { family: 'bridge', table };
  const set = (name: string, type: string | string[], elem: unknown[]) => ({
    set: { ...base, name, type, handle: 1, ...(elem.length > 0 ? { elem } : {}) },
  });
  return JSON.stringify({
    nftables: [
      { metainfo: { version: '1.0.6', json_schema_version: 1 } },
      { table: { family: 'bridge', name: table, handle: 1 } },
      set(
        'guest_ports',
        'ifname',
        ports.map((p) => p.port),
      ),
      set(
        'port_mac',
        ['ifname', 'ether_addr'],
        ports.map((p) => ({ concat: [p.port, p.mac] })),
      ),
      set(
        'port_ip',
        ['ifname', 'ipv4_addr'],
        ports.map((p) => ({ concat: [p.port, p.ip] })),
      ),
      { chain: { ...base, name: 'prerouting', handle: 1, type: 'filter', hook: 'prerouting', prio: -200 } },
      ...PORTS_RULES.map((_, i) => ({ rule: { ...base, chain: 'prerouting', handle: 5 + i, expr: [] } })),
    ],
  });
}

/** A runner whose ports table (of state dir /s) is there in this layout, holding these ports. */
const portsRunner = (ports: PortFilter[] = []) =>
  fakeRunner((argv) =>
    argv.join(' ') === `nft -j list table bridge trivisor-ports-${ownerHash('/s')}`
      ? { stdout: currentPortsJson(ports, `trivisor-ports-${ownerHash('/s')}`) }
      : undefined,
  );

/**
 * What a host without the network's devices answers a backend: no link is found, and dnsmasq
 * starts (its pid file written). Checked after what a test answers itself.
 */
const noDevices = (paths: { dir: string; pidFile: string }, argv: readonly string[]) => {
  if (argv[0] === 'ip' && argv.includes('link') && argv.includes('show'))
    return { code: 1, stderr: 'does not exist' };
  if (argv[0] === 'dnsmasq')
    return {
      effect: () =>
        mkdir(paths.dir, { recursive: true }).then(() => writeFile(paths.pidFile, `${process.pid}\n`)),
    };
  return undefined;
};

const log = createLogger({ level: 'silent' });
const dirs: string[] = [];
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

const def = (over: Partial<NetworkDefinition> = {}): NetworkDefinition => ({
  name: 'tvnet0',
  gateway: parseGatewayCidr('198.18.10.1/24'),
  nat: true,
  isolated: false,
  domain: 'trivisor',
  hosts: [{ mac: '02:00:00:00:00:02', ip: '198.18.10.2', name: 'a' }],
  ...over,
});

describe('nft rulesets', () => {
  test('a NAT network masquerades its subnet out of every interface but its bridge', () => {
    const text = networkRuleset(def());
    assert.match(
      text,
      /^add table ip trivisor-tvnet0\ndelete table ip trivisor-tvnet0\ntable ip trivisor-tvnet0 \{/,
    );
    assert.match(text, /ip saddr 198\.18\.10\.0\/24 oifname != "tvnet0" masquerade/);
    assert.match(
      text,
      /oifname "tvnet0" ct state established,related accept\n\s+oifname "tvnet0" ct status dnat accept\n\s+oifname "tvnet0" drop/,
    );
    assert.doesNotMatch(text, /iifname "tvnet0" drop/);
  });

  test('a network without NAT keeps its guests on the bridge', () => {
    const text = networkRuleset(def({ nat: false }));
    assert.doesNotMatch(text, /masquerade/);
    assert.match(text, /iifname "tvnet0" drop/);
  });

  test('forwards become DNAT rules for clients elsewhere and on the host; replies leave a network without NAT', () => {
    const text = networkRuleset(
      def({
        nat: false,
        forwards: [
          {
            listenAddress: '198.19.251.1',
            listenPort: 8080,
            protocol: 'tcp',
            targetAddress: '198.18.10.2',
            targetPort: 80,
          },
        ],
      }),
    );
    assert.match(
      text,
      /chain prerouting \{\n\s+type nat hook prerouting priority -100; policy accept;\n\s+ip daddr 198\.19\.251\.1 tcp dport 8080 dnat to 198\.18\.10\.2:80/,
    );
    assert.match(text, /chain output \{\n\s+type nat hook output priority -100/);
    assert.match(text, /iifname "tvnet0" ct state established,related accept\n\s+iifname "tvnet0" drop/);
    assert.doesNotMatch(networkRuleset(def()), /dnat to/);
  });

  test('ACLs: egress rules on frames from guest ports, ingress rules on frames to them, first match decides', () => {
    const text = aclRuleset({
      name: 'tvnet0',
      hosts: [
        { mac: '02:00:00:00:00:02', ip: '198.18.10.2', name: 'a', port: 'tva' },
        { mac: '02:00:00:00:00:03', ip: '198.18.10.3', name: 'b', port: 'tvb' },
      ],
      acls: [
        { direction: 'ingress', action: 'allow', source: '198.18.10.2' },
        { direction: 'ingress', action: 'drop', protocol: 'tcp', destinationPort: 22 },
        { direction: 'egress', action: 'drop', protocol: 'icmp', destination: '198.18.10.0/24' },
      ],
    });
    assert.match(text, /table bridge trivisor-acl-tvnet0/);
    assert.match(text, /chain ingress \{\n\s+ip saddr 198\.18\.10\.2 return\n\s+tcp dport 22 drop\n\s+\}/);
    assert.match(text, /chain egress \{\n\s+ip daddr 198\.18\.10\.0\/24 ip protocol icmp drop\n\s+\}/);
    assert.match(
      text,
      /hook forward priority filter; policy accept;\n\s+iifname \{ "tva", "tvb" \} jump egress\n\s+oifname \{ "tva", "tvb" \} jump ingress/,
    );
    assert.match(
      text,
      /hook input priority filter; policy accept;\n\s+iifname \{ "tva", "tvb" \} jump egress/,
    );
    assert.match(
      text,
      /hook output priority filter; policy accept;\n\s+oifname \{ "tva", "tvb" \} jump ingress/,
    );
    assert.equal(
      aclRuleset({ name: 'tvnet0', hosts: [], acls: [] }),
      'add table bridge trivisor-acl-tvnet0\ndelete table bridge trivisor-acl-tvnet0\n',
    );
  });

  test('a port may only send with its own MAC and address, ARP included: fixed rules, per-port sets', () => {
    const text = portsTableRuleset('abc', [{ port: 'tvabc', mac: '02:00:00:00:00:02', ip: '198.18.10.2' }]);
    assert.match(text, /^add table bridge trivisor-ports-abc\ndelete table bridge trivisor-ports-abc\n/);
    assert.equal(text.match(/hook prerouting/g)?.length, 1, 'one base chain');
    assert.match(text, /set guest_ports \{\n {4}type ifname\n {4}elements = \{ "tvabc" \}\n/);
    assert.match(
      text,
      /set port_mac \{\n {4}type ifname \. ether_addr\n {4}elements = \{ "tvabc" \. 02:00:00:00:00:02 \}/,
    );
    assert.match(
      text,
      /set port_ip \{\n {4}type ifname \. ipv4_addr\n {4}elements = \{ "tvabc" \. 198\.18\.10\.2 \}/,
    );
    const rules = text
      .slice(text.indexOf('policy accept;\n') + 'policy accept;\n'.length)
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && l !== '}');
    assert.deepEqual(rules, [
      'iifname != @guest_ports accept',
      'iifname . ether saddr != @port_mac drop',
      'iifname . arp saddr ether != @port_mac drop',
      'iifname . arp saddr ip @port_ip accept',
      'arp saddr ip 0.0.0.0 accept',
      'ether type ip iifname . ip saddr @port_ip accept',
      'ether type ip ip saddr 0.0.0.0 accept',
      'drop',
    ]);
    // No verdict but accept and drop: a jump makes every commit validate the table's chains (O(N) a port).
    assert.doesNotMatch(text, /jump|goto|vmap|map /);
    // No per-port rule: a table without ports has the same chain.
    assert.equal(
      portsTableRuleset('abc', []).replace(/\n {4}elements = [^\n]*/g, ''),
      text.replace(/\n {4}elements = [^\n]*/g, ''),
    );
  });

  test("a port's add and delete are set element changes only, in one transaction (decision 0068)", () => {
    const a = { port: 'tva', mac: '02:00:00:00:00:0a', ip: '198.18.10.10' };
    const add = portRuleset('abc', a);
    assert.equal(
      add,
      [
        'add element bridge trivisor-ports-abc guest_ports { "tva" }',
        'add element bridge trivisor-ports-abc port_mac { "tva" . 02:00:00:00:00:0a }',
        'add element bridge trivisor-ports-abc port_ip { "tva" . 198.18.10.10 }',
        // A table made by a daemon before 0068 goes when the port is plugged again or unplugged.
        'add table bridge trivisor-tva\ndelete table bridge trivisor-tva\n',
      ].join('\n'),
    );
    assert.doesNotMatch(add, /chain|rule|flush|jump/);
    // Its MAC or address changed: the old elements go in the same transaction, before the new come.
    const moved = portRuleset('abc', { ...a, ip: '198.18.10.11' }, a);
    assert.ok(
      moved.indexOf('delete element bridge trivisor-ports-abc port_ip { "tva" . 198.18.10.10 }') <
        moved.indexOf('add element bridge trivisor-ports-abc port_ip { "tva" . 198.18.10.11 }'),
      moved,
    );
    assert.match(
      moved,
      /^delete element bridge trivisor-ports-abc port_mac \{ "tva" \. 02:00:00:00:00:0a \}$/m,
    );
    const del = deletePortRuleset('abc', 'tva', a);
    assert.deepEqual(del.split('\n').slice(0, 3), [
      'delete element bridge trivisor-ports-abc guest_ports { "tva" }',
      'delete element bridge trivisor-ports-abc port_mac { "tva" . 02:00:00:00:00:0a }',
      'delete element bridge trivisor-ports-abc port_ip { "tva" . 198.18.10.10 }',
    ]);
    assert.doesNotMatch(del, /chain|rule|flush/);
    // A port the table does not hold: only a legacy table's removal.
    assert.equal(
      deletePortRuleset('abc', 'tvb'),
      'add table bridge trivisor-tvb\ndelete table bridge trivisor-tvb\n',
    );
  });

  test('the ports table read back: this layout kept, the per-port chains of before adopted, a damaged one rewritten', () => {
    const legacy = LEGACY_PORTS_JSON;
    assert.deepEqual(parsePortsTable(legacy), {
      layout: 'rewrite',
      ports: [{ port: 'tvg', mac: '02:00:00:00:00:01', ip: '10.0.0.5' }],
    });
    // The first layout's port chains held `ip saddr != { 0.0.0.0, IP } drop`.
    const first = legacy.replace(
      '"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.0.0.5"',
      '"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": ["0.0.0.0", "10.0.0.5"]}',
    );
    assert.notEqual(first, legacy);
    assert.deepEqual(parsePortsTable(first).ports, [
      { port: 'tvg', mac: '02:00:00:00:00:01', ip: '10.0.0.5' },
    ]);
    const current = currentPortsJson([
      { port: 'tvg', mac: '02:00:00:00:00:01', ip: '10.0.0.5' },
      { port: 'tvi', mac: '02:00:00:00:00:04', ip: '10.0.0.8' },
    ]);
    assert.deepEqual(parsePortsTable(current), {
      layout: 'current',
      ports: [
        { port: 'tvg', mac: '02:00:00:00:00:01', ip: '10.0.0.5' },
        { port: 'tvi', mac: '02:00:00:00:00:04', ip: '10.0.0.8' },
      ],
    });
    // Its last rule (the drop) deleted by hand: rewritten, its ports kept.
    const damaged = JSON.parse(current) as { nftables: Array<Record<string, unknown>> };
    damaged.nftables.pop();
    assert.equal(parsePortsTable(JSON.stringify(damaged)).layout, 'rewrite');
    assert.equal(parsePortsTable(JSON.stringify(damaged)).ports.length, 2);
    assert.deepEqual(parsePortsTable(''), { layout: 'missing', ports: [] });
  });
});

describe('dnsmasq config', () => {
  test('dnsmasq serves the reserved addresses of the subnet, on the bridge only, with its files in the state dir', () => {
    const argv = dnsmasqArgv(def(), dnsmasqPaths('/s', 'tvnet0'));
    assert.ok(argv.includes('--interface=tvnet0'));
    assert.ok(argv.includes('--listen-address=198.18.10.1'));
    assert.ok(argv.includes('--dhcp-range=198.18.10.0,static,255.255.255.0,1h'), 'reserved addresses only');
    assert.ok(argv.includes('--pid-file=/s/networks/tvnet0/dnsmasq.pid'));
    assert.ok(argv.includes('--domain=trivisor'));
    assert.ok(argv.includes('--conf-file=/dev/null'));
    assert.ok(argv.includes('--dhcp-lease-max=253'), 'as many leases as the range has addresses');
  });

  test('a /21 network leases 2,045 addresses, past the 1,000 dnsmasq gives by default (decision 0068)', () => {
    const argv = dnsmasqArgv(
      def({ gateway: parseGatewayCidr('198.18.8.1/21') }),
      dnsmasqPaths('/s', 'tvnet0'),
    );
    assert.ok(argv.includes('--dhcp-range=198.18.8.0,static,255.255.248.0,1h'), argv.join(' '));
    assert.ok(argv.includes('--dhcp-lease-max=2045'));
  });
});

describe('linux network backend', () => {
  test('ensure() creates a bridge marked as ours, its address, nft table, files and dnsmasq', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'trivisor-net-'));
    dirs.push(stateDir);
    const paths = dnsmasqPaths(stateDir, 'tvnet0');
    const runner = fakeRunner((argv) => {
      return noDevices(paths, argv);
    });
    const backend = createLinuxNetworkBackend({ runner, log, stateDir });
    const identity = await backend.ensure(def(), undefined);
    assert.equal(identity.pid, process.pid);
    const cmds = runner.commands();
    assert.ok(cmds.includes('ip link add name tvnet0 type bridge stp_state 0'));
    assert.ok(cmds.includes(`ip link set dev tvnet0 alias ${ownerAlias(stateDir)}`));
    assert.ok(cmds.includes('ip addr add 198.18.10.1/24 dev tvnet0'));
    assert.ok(cmds.includes(`ip link set dev tvnet0 address ${bridgeMac(stateDir, 'tvnet0')} up`));
    assert.ok(cmds.includes('sysctl -q -w net.ipv4.ip_forward=1'));
    const nft = runner.calls.find((c) => c.argv.join(' ') === 'nft -f -');
    assert.match(String((nft?.options as { input?: string } | undefined)?.input), /table ip trivisor-tvnet0/);
    assert.ok(cmds.some((c) => c.startsWith('dnsmasq ')));
    assert.equal(await readFile(paths.dhcpHosts, 'utf8'), '02:00:00:00:00:02,198.18.10.2,a\n');
    assert.equal(await readFile(paths.hosts, 'utf8'), '198.18.10.2 a.trivisor a\n');
  });

  test('ensure() on a cluster joins the bridge by VXLAN: filters first, one flood entry per other member, MTU 1450, the shared gateway MAC; inspect() wants the device back', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'trivisor-net-'));
    dirs.push(stateDir);
    const paths = dnsmasqPaths(stateDir, 'tvnet0');
    const vx = vxlanDevice(stateDir, 'tvnet0');
    let bridgeExists = false;
    const runner = fakeRunner((argv) => {
      const line = argv.join(' ');
      if (line === 'ip -json link show dev tvnet0' && bridgeExists)
        return { stdout: JSON.stringify([{ ifname: 'tvnet0', ifalias: ownerAlias(stateDir) }]) };
      if (line === `bridge -json fdb show dev ${vx}`)
        return { stdout: JSON.stringify([{ mac: '00:00:00:00:00:00', dst: '198.18.5.99' }]) };
      return noDevices(paths, argv);
    });
    const backend = createLinuxNetworkBackend({ runner, log, stateDir });
    const tunnel = {
      vni: 7,
      local: '198.18.5.11',
      remotes: ['198.18.5.12', '198.18.5.13'],
      nics: { '198.18.5.12': [{ mac: '02:00:00:00:00:05', ip: '198.18.10.5' }] },
    };
    await backend.ensure(def({ vni: 7, tunnel }), undefined);
    const cmds = runner.commands();
    assert.ok(cmds.includes(`ip link set dev tvnet0 address ${gatewayMac('tvnet0', 7)} up`));
    const add = cmds.indexOf(`ip link add name ${vx} type vxlan id 7 local 198.18.5.11 dstport 4789`);
    const up = cmds.indexOf(`ip link set dev ${vx} mtu 1450 master tvnet0 up`);
    assert.ok(add >= 0 && up > add, cmds.join('\n'));
    for (const ip of ['198.18.5.12', '198.18.5.13'])
      assert.ok(cmds.includes(`bridge fdb append 00:00:00:00:00:00 dev ${vx} dst ${ip}`));
    assert.ok(
      cmds.includes(`bridge fdb del 00:00:00:00:00:00 dev ${vx} dst 198.18.5.99`),
      'a departed member goes',
    );
    assert.ok(cmds.includes(`bridge link set dev ${vx} isolated off`));
    const scripts = runner.calls.flatMap((c, at) =>
      c.argv[0] === 'nft' ? [{ at, input: String((c.options as { input?: string }).input) }] : [],
    );
    const tunnelTable = scripts.find((x) => x.input.includes('table bridge trivisor-vx-tvnet0 {'));
    assert.ok(tunnelTable && tunnelTable.at < runner.calls.findIndex((c) => c.argv.join(' ') === cmds[up]));
    assert.ok(
      scripts.some((x) => x.input.includes('udp dport 4789 ip saddr != { 198.18.5.12, 198.18.5.13 } drop')),
    );
    const input = scripts.find((x) => x.input.includes('table ip trivisor-tvnet0 {'))?.input ?? '';
    assert.ok(
      input.includes(
        'udp dport 4789 ip saddr 198.18.5.12 @th,96,24 7 @th,224,16 0x0800 @th,176,48 . @th,336,32 != { 0x020000000005 . 0xc6120a05 } drop',
      ) &&
        input.includes('udp dport 4789 ip saddr 198.18.5.13 @th,96,24 7 @th,224,16 { 0x0800, 0x0806 } drop'),
      input,
    );
    const started = cmds.find((c) => c.startsWith('dnsmasq '));
    assert.ok(started?.includes('--dhcp-option=option:mtu,1450'), started);
    await backend.plugVeth(
      {
        port: 'tv0123456789',
        bridge: 'tvnet0',
        mac: '02:00:00:00:00:02',
        ip: '198.18.10.2',
        isolated: false,
      },
      { netnsPid: 42, ifname: 'eth0' },
    );
    assert.ok(
      runner
        .commands()
        .includes(
          'ip link add name tv0123456789 master tvnet0 up type veth peer name eth0 address 02:00:00:00:00:02 mtu 1450 netns /proc/42/ns/net',
        ),
      'a ct NIC starts at 1450',
    );
    const tap = await backend.plugTap({
      port: 'tv0123456788',
      bridge: 'tvnet0',
      mac: '02:00:00:00:00:03',
      ip: '198.18.10.3',
      isolated: false,
    });
    assert.deepEqual(tap, { mtu: 1450 }, 'a vm or pvm NIC is told the tunnel MTU');
    assert.ok(runner.commands().includes('ip link set dev tv0123456788 mtu 1450'), 'its tap at 1450');
    bridgeExists = true;
    assert.equal((await backend.inspect('tvnet0', undefined)).bridge, false, 'the VXLAN device is missing');
    runner.respond((argv) =>
      argv.join(' ') === `ip -json link show dev ${vx}`
        ? { stdout: JSON.stringify([{ ifname: vx, ifalias: ownerAlias(stateDir) }]) }
        : undefined,
    );
    assert.equal((await backend.inspect('tvnet0', undefined)).bridge, true, 'bridge and VXLAN device there');
  });

  test('ensure() over IPv6 cluster addresses (decision 0101): local and flood entries v6, MTU 1430 on the device, ports and DHCP, the input rules in the ip6 table; a device already right is kept', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'trivisor-net-'));
    dirs.push(stateDir);
    const paths = dnsmasqPaths(stateDir, 'tvnet0');
    const vx = vxlanDevice(stateDir, 'tvnet0');
    let device: unknown;
    const runner = fakeRunner((argv) => {
      const line = argv.join(' ');
      if (line === `ip -details -json link show dev ${vx}` && device)
        return { stdout: JSON.stringify([device]) };
      if (line === `bridge -json fdb show dev ${vx}`) return { stdout: '[]' };
      return noDevices(paths, argv);
    });
    const backend = createLinuxNetworkBackend({ runner, log, stateDir });
    const tunnel = {
      vni: 7,
      local: 'fd42:1::11',
      remotes: ['fd42:1::12'],
      nics: { 'fd42:1::12': [{ mac: '02:00:00:00:00:05', ip: '198.18.10.5' }] },
    };
    await backend.ensure(def({ vni: 7, tunnel }), undefined);
    const cmds = runner.commands();
    assert.ok(
      cmds.includes(`ip link add name ${vx} type vxlan id 7 local fd42:1::11 dstport 4789`),
      cmds.join('\n'),
    );
    assert.ok(cmds.includes(`bridge fdb append 00:00:00:00:00:00 dev ${vx} dst fd42:1::12`));
    assert.ok(cmds.includes(`ip link set dev ${vx} mtu 1430 master tvnet0 up`), cmds.join('\n'));
    const scripts = runner.calls.flatMap((c) =>
      c.argv[0] === 'nft' ? [String((c.options as { input?: string }).input)] : [],
    );
    const tables = scripts.find((x) => x.includes('table ip trivisor-tvnet0 {')) ?? '';
    assert.match(
      tables,
      /table ip trivisor-tvnet0 \{[\s\S]*chain input \{[^}]*\n {4}udp dport 4789 drop\n {2}\}/,
    );
    assert.ok(tables.includes('udp dport 4789 ip6 saddr != { fd42:1::12 } drop'), tables);
    assert.ok(
      tables.includes(
        'udp dport 4789 ip6 saddr fd42:1::12 @th,96,24 7 @th,224,16 0x0800 @th,176,48 . @th,336,32 != { 0x020000000005 . 0xc6120a05 } drop',
      ),
      tables,
    );
    assert.ok(
      tables.indexOf('table ip6 trivisor-tvnet0 {') > tables.indexOf('table ip trivisor-tvnet0 {'),
      tables,
    );
    assert.ok(
      scripts.some((x) => x.includes('tcp option maxseg size set 1390')),
      'SYNs clamped to 1430 - 40',
    );
    assert.ok(cmds.find((c) => c.startsWith('dnsmasq '))?.includes('--dhcp-option=option:mtu,1430'));
    await backend.plugVeth(
      {
        port: 'tv0123456789',
        bridge: 'tvnet0',
        mac: '02:00:00:00:00:02',
        ip: '198.18.10.2',
        isolated: false,
      },
      { netnsPid: 42, ifname: 'eth0' },
    );
    assert.ok(
      runner
        .commands()
        .some((c) => c.startsWith('ip link add name tv0123456789 ') && c.includes(' mtu 1430 ')),
    );
    const tap = await backend.plugTap({
      port: 'tv0123456788',
      bridge: 'tvnet0',
      mac: '02:00:00:00:00:03',
      ip: '198.18.10.3',
      isolated: false,
    });
    assert.deepEqual(tap, { mtu: 1430 });
    // `ip -details -json` calls an IPv6 local `local6`: a device already right is not made again.
    device = {
      ifname: vx,
      ifalias: ownerAlias(stateDir),
      linkinfo: { info_kind: 'vxlan', info_data: { id: 7, local6: 'fd42:1::11', port: 4789 } },
    };
    const before = runner.commands().length;
    await backend.ensure(def({ vni: 7, tunnel }), undefined);
    const again = runner.commands().slice(before);
    assert.ok(
      !again.some((c) => c.startsWith(`ip link del dev ${vx}`) || c.startsWith(`ip link add name ${vx}`)),
      again.join('\n'),
    );
  });

  test('ensure() without a tunnel (a single host) removes a VXLAN device of its own and its table, and advertises no MTU', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'trivisor-net-'));
    dirs.push(stateDir);
    const paths = dnsmasqPaths(stateDir, 'tvnet0');
    const vx = vxlanDevice(stateDir, 'tvnet0');
    const runner = fakeRunner((argv) => {
      const line = argv.join(' ');
      if (line === `ip -details -json link show dev ${vx}`)
        return { stdout: JSON.stringify([{ ifname: vx, ifalias: ownerAlias(stateDir) }]) };
      return noDevices(paths, argv);
    });
    await createLinuxNetworkBackend({ runner, log, stateDir }).ensure(def({ vni: 7 }), undefined);
    const cmds = runner.commands();
    assert.ok(cmds.includes(`ip link del dev ${vx}`));
    assert.ok(!cmds.some((c) => c.includes('type vxlan')));
    assert.ok(
      runner.calls.some((c) =>
        String((c.options as { input?: string }).input).includes('delete table bridge trivisor-vx-tvnet0'),
      ),
    );
    assert.ok(!cmds.find((c) => c.startsWith('dnsmasq '))?.includes('option:mtu'));
  });

  test('ensure() refuses a host interface of that name that is not ours', async () => {
    const runner = fakeRunner((argv) =>
      argv.join(' ') === 'ip -json link show dev tvnet0' ? { stdout: '[{"ifname":"tvnet0"}]' } : undefined,
    );
    const backend = createLinuxNetworkBackend({ runner, log, stateDir: '/nonexistent' });
    await assert.rejects(backend.ensure(def(), undefined), { code: 'FailedPrecondition' });
    assert.ok(!runner.commands().some((c) => c.includes('link add') || c.includes('link del')));
  });

  test('remove() deletes only our bridge and its nft tables (ip, and ip6 for a tunnel over IPv6)', async () => {
    const stateDir = '/nonexistent-state';
    const runner = fakeRunner((argv) =>
      argv.join(' ') === 'ip -json link show dev tvnet0'
        ? { stdout: JSON.stringify([{ ifname: 'tvnet0', ifalias: ownerAlias(stateDir) }]) }
        : undefined,
    );
    await createLinuxNetworkBackend({ runner, log, stateDir }).remove('tvnet0', undefined);
    assert.ok(runner.commands().includes('ip link del dev tvnet0'));
    const nft = runner.calls
      .filter((c) => c.argv[0] === 'nft')
      .map((c) => (c.options as { input?: string }).input);
    assert.ok(
      nft.includes(
        'add table ip trivisor-tvnet0\ndelete table ip trivisor-tvnet0\nadd table ip6 trivisor-tvnet0\ndelete table ip6 trivisor-tvnet0\n',
      ),
      nft.join('\n'),
    );
    // Its last network gone, the daemon's ports table goes too.
    const ports = `trivisor-ports-${ownerHash(stateDir)}`;
    assert.ok(nft.includes(`add table bridge ${ports}\ndelete table bridge ${ports}\n`), nft.join('\n'));
  });

  test('remove() deletes the leaf bridges, and keeps the ports table while another network is left', async () => {
    const stateDir = '/nonexistent-state';
    const alias = ownerAlias(stateDir);
    const leaf = leafBridgeName(stateDir, 'tvnet0', 1);
    const runner = fakeRunner((argv) => {
      const line = argv.join(' ');
      if (line === 'ip -json link show dev tvnet0')
        return { stdout: JSON.stringify([{ ifname: 'tvnet0', ifalias: alias }]) };
      if (line === 'ip -json link show type bridge') {
        return {
          stdout: JSON.stringify([
            { ifname: leaf, ifalias: `${alias}:leaf:tvnet0` },
            { ifname: 'tlother', ifalias: `${alias}:leaf:tvnet1` },
            { ifname: 'tvnet1', ifalias: alias },
          ]),
        };
      }
      return undefined;
    });
    await createLinuxNetworkBackend({ runner, log, stateDir }).remove('tvnet0', undefined);
    const cmds = runner.commands();
    assert.ok(cmds.includes(`ip link del dev ${leaf}`), cmds.join('\n'));
    assert.ok(cmds.includes(`ip link del dev ${leaf}d`), 'its uplink');
    assert.ok(
      !cmds.some((c) => c.includes('tlother') || c.includes('del dev tvnet1')),
      'the leaf of another network stays',
    );
    const nft = runner.calls.map((c) => String((c.options as { input?: string }).input));
    assert.ok(!nft.some((t) => t.includes('delete table bridge trivisor-ports-')), 'the ports table stays');
  });

  test('a port beyond the share of a bridge goes on a leaf bridge hung off it by a veth (decision 0068)', async () => {
    const sys = await mkdtemp(join(tmpdir(), 'trivisor-sys-net-'));
    dirs.push(sys);
    const leaf = leafBridgeName('/s', 'tvnet0', 1);
    await mkdir(join(sys, 'tvnet0', 'brif', 'tv0000000001'), { recursive: true });
    await mkdir(join(sys, 'tvnet0', 'brif', 'tv0000000002'), { recursive: true });
    const runner = fakeRunner((argv) => {
      // The leaf exists once it was added.
      if (argv.join(' ').startsWith(`ip link add name ${leaf} `)) {
        return { effect: () => mkdir(join(sys, leaf, 'brif'), { recursive: true }).then(() => {}) };
      }
      return undefined;
    });
    const backend = createLinuxNetworkBackend({
      runner,
      log,
      stateDir: '/s',
      sysClassNet: sys,
      portsPerBridge: 2,
    });
    const port = (n: number) => ({
      port: `tv012345678${n}`,
      bridge: 'tvnet0',
      mac: `02:00:00:00:00:0${n}`,
      ip: `198.18.10.${n + 2}`,
      isolated: true,
    });
    await backend.plugTap(port(1));
    const cmds = runner.commands();
    assert.ok(cmds.includes(`ip link add name ${leaf} type bridge stp_state 0`), cmds.join('\n'));
    assert.ok(cmds.includes(`ip link add name ${leaf}u type veth peer name ${leaf}d`));
    assert.ok(
      cmds.includes(`sysctl -q -w net.ipv4.conf.${leaf}.arp_ignore=8`),
      'the leaf never answers ARP for the gateway',
    );
    assert.ok(cmds.includes(`ip link set dev ${leaf}u master ${leaf} up`));
    assert.ok(cmds.includes(`ip link set dev ${leaf}d master tvnet0 up`));
    assert.ok(
      cmds.includes(`bridge link set dev ${leaf}d isolated on`),
      'leaves are isolated from each other',
    );
    assert.ok(cmds.includes(`ip link set dev tv0123456781 master ${leaf} up`), 'the port is on the leaf');
    assert.ok(cmds.includes('bridge link set dev tv0123456781 isolated on'));
    // A second port while the leaf has room: no second leaf.
    await mkdir(join(sys, leaf, 'brif', 'tv0123456781'), { recursive: true });
    await backend.plugTap(port(2));
    assert.equal(runner.commands().filter((c) => c.includes(' type bridge ')).length, 1);
    assert.ok(runner.commands().includes(`ip link set dev tv0123456782 master ${leaf} up`));
  });

  for (const kind of ['tap', 'veth'] as const)
    test(`ports attached side by side count each other: no bridge takes more than its share (${kind}s)`, async () => {
      const sys = await mkdtemp(join(tmpdir(), 'trivisor-sys-net-'));
      dirs.push(sys);
      const leaf = leafBridgeName('/s', 'tvnet0', 1);
      await mkdir(join(sys, 'tvnet0', 'brif', 'tv0000000001'), { recursive: true });
      const runner = fakeRunner((argv) => {
        const cmd = argv.join(' ');
        if (cmd.startsWith(`ip link add name ${leaf} `)) {
          return { effect: () => mkdir(join(sys, leaf, 'brif'), { recursive: true }).then(() => {}) };
        }
        // A guest port is on its bridge only after the command took its time, as the kernel's is.
        // (A tap is enslaved once made; a veth is made on its bridge.)
        const m =
          /^ip link set dev (tv\S+) master (\S+) up$/.exec(cmd) ??
          /^ip link add name (tv\S+) master (\S+) up type veth /.exec(cmd);
        if (m?.[1]?.startsWith('tv0') && m[2]) {
          const [, port, bridge] = m;
          return {
            effect: async () => {
              await new Promise((r) => setTimeout(r, 20));
              await mkdir(join(sys, bridge, 'brif', port), { recursive: true });
            },
          };
        }
        return undefined;
      });
      const backend = createLinuxNetworkBackend({
        runner,
        log,
        stateDir: '/s',
        sysClassNet: sys,
        portsPerBridge: 2,
      });
      const port = (n: number) => ({
        port: `tv012345678${n}`,
        bridge: 'tvnet0',
        mac: `02:00:00:00:00:0${n}`,
        ip: `198.18.10.${n + 2}`,
        isolated: false,
      });
      await Promise.all(
        [1, 2, 3].map((n) =>
          kind === 'tap'
            ? backend.plugTap(port(n))
            : backend.plugVeth(port(n), { netnsPid: 40 + n, ifname: 'eth0' }),
        ),
      );
      assert.deepEqual(
        (await readdir(join(sys, 'tvnet0', 'brif'))).filter((p) => p.startsWith('tv0')).length,
        2,
      );
      assert.equal((await readdir(join(sys, leaf, 'brif'))).length, 2, 'the rest on the first leaf');
      assert.ok(
        !runner.commands().some((c) => c.includes(leafBridgeName('/s', 'tvnet0', 2))),
        'no second leaf',
      );
    });

  test('plugVeth() puts the host end on the bridge, isolates it, filters it and moves the guest end', async () => {
    const runner = portsRunner();
    const backend = createLinuxNetworkBackend({ runner, log, stateDir: '/s' });
    await backend.plugVeth(
      { port: 'tv0123456789', bridge: 'tvnet0', mac: '02:00:00:00:00:02', ip: '198.18.10.2', isolated: true },
      { netnsPid: 42, ifname: 'eth0' },
    );
    // What a start costs the daemon (each command a fork of it, decision 0068): five, filters included,
    // and the ports table read once in the daemon's life (its first network's reconcile does it).
    assert.deepEqual(runner.commands(), [
      'ip -force -batch -',
      `nft -j list table bridge trivisor-ports-${ownerHash('/s')}`,
      'nft -f -',
      'ip link add name tv0123456789 master tvnet0 up type veth peer name eth0 address 02:00:00:00:00:02 netns /proc/42/ns/net',
      'bridge link set dev tv0123456789 isolated on',
      'nsenter --net=/proc/42/ns/net ip link set dev eth0 up',
    ]);
    const input = (i: number) => (runner.calls[i]?.options as { input?: string } | undefined)?.input;
    assert.equal(
      input(0),
      'link del dev tv0123456789\nlink del dev tv0123456789i\n',
      'what an earlier run left',
    );
    assert.equal(
      input(2),
      portRuleset(ownerHash('/s'), { port: 'tv0123456789', mac: '02:00:00:00:00:02', ip: '198.18.10.2' }),
      'its elements only',
    );
  });

  test('a port unplugged by this daemon is not unplugged again: the clean-up before a start and the plug run nothing more', async () => {
    const def = {
      port: 'tv0123456789',
      bridge: 'tvnet0',
      mac: '02:00:00:00:00:02',
      ip: '198.18.10.2',
      isolated: false,
    };
    // A daemon restarted with the port's elements in its table.
    const runner = portsRunner([{ port: def.port, mac: def.mac, ip: def.ip }]);
    const backend = createLinuxNetworkBackend({ runner, log, stateDir: '/s' });
    await backend.unplug(def.port);
    assert.deepEqual(runner.commands(), [
      'ip -force -batch -',
      `nft -j list table bridge trivisor-ports-${ownerHash('/s')}`,
      'nft -f -',
    ]);
    assert.equal(
      (runner.calls[2]?.options as { input?: string } | undefined)?.input,
      deletePortRuleset(ownerHash('/s'), def.port, def),
      'its elements, as the table holds them, go',
    );
    await backend.unplug(def.port);
    await backend.plugVeth(def, { netnsPid: 42, ifname: 'eth0' });
    assert.deepEqual(runner.commands().slice(3), [
      'nft -f -',
      'ip link add name tv0123456789 master tvnet0 up type veth peer name eth0 address 02:00:00:00:00:02 netns /proc/42/ns/net',
      'nsenter --net=/proc/42/ns/net ip link set dev eth0 up',
    ]);
    // Plugged again, it is unplugged for real.
    await backend.unplug(def.port);
    assert.deepEqual(runner.commands().slice(6), ['ip -force -batch -', 'nft -f -']);
  });

  test('a daemon that finds the per-port chains of before rewrites its ports table once, keeping every port filtered (adoption)', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'trivisor-net-'));
    dirs.push(stateDir);
    const table = `trivisor-ports-${ownerHash(stateDir)}`;
    let listed = LEGACY_PORTS_JSON.replaceAll('trivisor-ports-x', table);
    const runner = fakeRunner((argv) => {
      const cmd = argv.join(' ');
      if (cmd === `nft -j list table bridge ${table}`) return { stdout: listed };
      if (argv[0] === 'ip' && argv.includes('link') && argv.includes('show'))
        return { code: 1, stderr: 'does not exist' };
      if (argv[0] === 'dnsmasq')
        return { effect: () => writeFile(dnsmasqPaths(stateDir, 'tvnet0').pidFile, `${process.pid}\n`) };
      return undefined;
    });
    const inputs = () =>
      runner.calls
        .filter((c) => c.argv.join(' ') === 'nft -f -')
        .map((c) => String((c.options as { input?: string }).input));
    await createLinuxNetworkBackend({ runner, log, stateDir }).ensure(def(), undefined);
    const tvg = { port: 'tvg', mac: '02:00:00:00:00:01', ip: '10.0.0.5' };
    const rewrite = portsTableRuleset(ownerHash(stateDir), [tvg]);
    assert.deepEqual(
      inputs().filter((t) => t.includes(table)),
      [rewrite],
      'one transaction replaces the table',
    );
    // The next start finds this layout: nothing is rewritten, and the port's elements are known.
    listed = currentPortsJson([tvg], table);
    runner.calls.length = 0;
    const again = createLinuxNetworkBackend({ runner, log, stateDir });
    await again.ensure(def(), undefined);
    assert.deepEqual(
      inputs().filter((t) => t.includes(table)),
      [],
      'nothing to adopt',
    );
    await again.unplug('tvg');
    assert.deepEqual(
      inputs().filter((t) => t.includes(table)),
      [deletePortRuleset(ownerHash(stateDir), 'tvg', tvg)],
    );
  });

  test('a reconcile writes the network tables at its first run and when they change, and skips them while they list the same', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'trivisor-net-'));
    dirs.push(stateDir);
    const paths = dnsmasqPaths(stateDir, 'tvnet0');
    // What `nft list table` shows of each table; absent: no such table.
    const listing = new Map<string, string>();
    const runner = fakeRunner((argv) => {
      const cmd = argv.join(' ');
      if (cmd.startsWith('nft list table ')) {
        const l = listing.get(argv.slice(3).join(' '));
        return l === undefined ? { code: 1, stderr: 'Error: No such file or directory' } : { stdout: l };
      }
      return noDevices(paths, argv);
    });
    const backend = createLinuxNetworkBackend({ runner, log, stateDir });
    const written = () =>
      runner.calls.filter(
        (c) =>
          c.argv.join(' ') === 'nft -f -' &&
          String((c.options as { input?: string }).input).includes('table ip trivisor-tvnet0 {'),
      ).length;
    const acl = def({
      hosts: [{ mac: '02:00:00:00:00:02', ip: '198.18.10.2', name: 'a', port: 'tva' }],
      acls: [{ direction: 'egress', action: 'drop', protocol: 'tcp', destinationPort: 22 }],
    });
    listing.set('ip trivisor-tvnet0', 'table ip trivisor-tvnet0 {\n\tchain forward {…}\n}\n');
    listing.set('bridge trivisor-acl-tvnet0', 'table bridge trivisor-acl-tvnet0 {…}\n');
    const known = await backend.ensure(acl, undefined);
    assert.equal(written(), 1, 'the first reconcile writes them');
    const lists = () => runner.commands().filter((c) => c.startsWith('nft list table ')).length;
    assert.equal(lists(), 2, 'and lists the two tables it made, once each');
    await backend.ensure(acl, known);
    assert.equal(written(), 1, 'the same text, the same listing: skipped');
    assert.equal(lists(), 4, 'one list a table');
    // A chain flushed under the daemon (the listing changed): written again.
    listing.set('ip trivisor-tvnet0', 'table ip trivisor-tvnet0 {\n\tchain forward {\n\t}\n}\n');
    await backend.ensure(acl, known);
    assert.equal(written(), 2);
    // The ACL table deleted under the daemon: written again.
    listing.delete('bridge trivisor-acl-tvnet0');
    await backend.ensure(acl, known);
    assert.equal(written(), 3);
    listing.set('bridge trivisor-acl-tvnet0', 'table bridge trivisor-acl-tvnet0 {…}\n');
    await backend.ensure(acl, known);
    assert.equal(written(), 4, 'its listing then is what the next reconcile compares with');
    await backend.ensure(acl, known);
    assert.equal(written(), 4);
    // A change (another ACL rule) is written whatever is there.
    await backend.ensure(
      { ...acl, acls: [...(acl.acls ?? []), { direction: 'ingress', action: 'drop' }] },
      known,
    );
    assert.equal(written(), 5);
    // remove() forgets it: a network made again under the same name is written.
    await backend.remove('tvnet0', known);
    await backend.ensure(acl, undefined).catch(() => undefined);
    assert.equal(written(), 6);
  });

  test('a port whose address changed swaps its elements; a change that fails reads the table again and is made from what it holds', async () => {
    const owner = ownerHash('/s');
    const a = { port: 'tva', mac: '02:00:00:00:00:0a', ip: '198.18.10.10' };
    let held: PortFilter[] = [];
    let failNext = false;
    const runner = fakeRunner((argv) => {
      const cmd = argv.join(' ');
      if (cmd === `nft -j list table bridge trivisor-ports-${owner}`)
        return { stdout: currentPortsJson(held, `trivisor-ports-${owner}`) };
      if (cmd === 'nft -f -' && failNext) {
        failNext = false;
        return { code: 1, stderr: 'Error: Could not process rule: No such file or directory' };
      }
      return undefined;
    });
    const backend = createLinuxNetworkBackend({ runner, log, stateDir: '/s' });
    const plug = (p: PortFilter) =>
      backend.plugVeth({ ...p, bridge: 'tvnet0', isolated: false }, { netnsPid: 42, ifname: 'eth0' });
    const nftInputs = () =>
      runner.calls
        .filter((c) => c.argv.join(' ') === 'nft -f -')
        .map((c) => String((c.options as { input?: string }).input));
    await plug(a);
    const b = { ...a, ip: '198.18.10.11' };
    await plug(b);
    assert.equal(
      nftInputs().at(-1),
      portRuleset(owner, b, a),
      'the old elements out, the new in, one transaction',
    );
    // Plugged again as it is: no transaction at all.
    const count = nftInputs().length;
    await plug(b);
    assert.equal(nftInputs().length, count);
    // Someone removed the port's elements by hand: the delete fails, the table is read again, and
    // the unplug deletes nothing that is not there.
    held = [];
    failNext = true;
    await backend.unplug('tva');
    assert.equal(
      runner.commands().filter((c) => c === `nft -j list table bridge trivisor-ports-${owner}`).length,
      2,
      'read again',
    );
    assert.equal(nftInputs().at(-1), deletePortRuleset(owner, 'tva'));
  });

  test('plugVeth() into a running guest gives the guest end its address, and a failed plug leaves nothing', async () => {
    const runner = fakeRunner((argv) =>
      argv[0] === 'nsenter' ? { code: 1, stderr: 'no such process' } : undefined,
    );
    const backend = createLinuxNetworkBackend({ runner, log, stateDir: '/s' });
    await assert.rejects(
      backend.plugVeth(
        {
          port: 'tv0123456789',
          bridge: 'tvnet0',
          mac: '02:00:00:00:00:02',
          ip: '198.18.10.2',
          isolated: false,
        },
        { netnsPid: 42, ifname: 'eth1', address: '198.18.10.2/24' },
      ),
    );
    const at = runner.commands().indexOf('nsenter --net=/proc/42/ns/net ip -batch -');
    assert.equal(
      (runner.calls[at]?.options as { input?: string } | undefined)?.input,
      'link set dev eth1 up\naddr replace 198.18.10.2/24 dev eth1\n',
    );
    assert.deepEqual(runner.commands().slice(at + 1), ['ip -force -batch -', 'nft -f -'], 'unplugged again');
  });

  test('plugVeth() shapes bandwidth: tbf on the host end for ingress, an ifb for egress', async () => {
    const runner = fakeRunner();
    const backend = createLinuxNetworkBackend({ runner, log, stateDir: '/s' });
    await backend.plugVeth(
      {
        port: 'tv0123456789',
        bridge: 'tvnet0',
        mac: '02:00:00:00:00:02',
        ip: '198.18.10.2',
        isolated: false,
        ingressBitsPerSecond: 8_000_000,
        egressBitsPerSecond: 16_000_000,
      },
      { netnsPid: 42, ifname: 'eth0' },
    );
    const cmds = runner.commands();
    assert.ok(
      cmds.includes('tc qdisc replace dev tv0123456789 root tbf rate 8000000bit burst 15000 latency 50ms'),
    );
    assert.ok(cmds.includes('ip link add name tv0123456789i type ifb'));
    assert.ok(
      cmds.includes('tc qdisc replace dev tv0123456789i root tbf rate 16000000bit burst 20000 latency 50ms'),
    );
    assert.ok(cmds.includes('tc qdisc add dev tv0123456789 handle ffff: ingress'));
    assert.ok(
      cmds.includes(
        'tc filter add dev tv0123456789 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev tv0123456789i',
      ),
    );
    await backend.unplug('tv0123456789');
    const del = runner.calls.findLast((c) => c.argv.join(' ') === 'ip -force -batch -');
    assert.match(
      String((del?.options as { input?: string } | undefined)?.input),
      /^link del dev tv0123456789i$/m,
    );
  });

  test('plugTap() makes a tap the given user may open, filtered and on the bridge', async () => {
    const runner = portsRunner();
    const backend = createLinuxNetworkBackend({ runner, log, stateDir: '/s' });
    const tap = await backend.plugTap(
      {
        port: 'tv0123456789',
        bridge: 'tvnet0',
        mac: '02:00:00:00:00:02',
        ip: '198.18.10.2',
        isolated: false,
      },
      { user: 1234 },
    );
    const cmds = runner.commands();
    assert.deepEqual(tap, { mtu: 1500 }, 'a network on one host keeps 1500');
    assert.ok(!cmds.some((c) => c.includes(' mtu ')), cmds.join('\n'));
    assert.ok(cmds.includes('ip tuntap add dev tv0123456789 mode tap user 1234'));
    assert.ok(cmds.includes('ip link set dev tv0123456789 master tvnet0 up'));
    const nft = runner.calls
      .filter((c) => c.argv[0] === 'nft')
      .map((c) => (c.options as { input?: string }).input);
    assert.ok(nft.some((t) => t?.includes('port_mac { "tv0123456789" . 02:00:00:00:00:02 }')));
    assert.ok(
      cmds.indexOf('nft -f -') < cmds.indexOf('ip link set dev tv0123456789 master tvnet0 up'),
      'filtered before it is on the bridge',
    );
  });

  test('counters() reads the host end and reports them as the guest sees them', async () => {
    const sys = await mkdtemp(join(tmpdir(), 'trivisor-sys-net-'));
    dirs.push(sys);
    await mkdir(join(sys, 'tvx', 'statistics'), { recursive: true });
    for (const [f, v] of [
      ['rx_bytes', 10],
      ['tx_bytes', 20],
      ['rx_packets', 1],
      ['tx_packets', 2],
      ['rx_errors', 3],
      ['tx_errors', 4],
      ['rx_dropped', 5],
      ['tx_dropped', 6],
    ] as const)
      await writeFile(join(sys, 'tvx', 'statistics', f), `${v}\n`);
    const backend = createLinuxNetworkBackend({
      runner: fakeRunner(),
      log,
      stateDir: '/s',
      sysClassNet: sys,
    });
    assert.deepEqual(await backend.counters('tvx'), {
      rxBytes: 20,
      txBytes: 10,
      rxPackets: 2,
      txPackets: 1,
      rxErrors: 4,
      txErrors: 3,
      rxDropped: 6,
      txDropped: 5,
    });
    assert.equal(await backend.counters('nope'), undefined);
  });

  test('portState() reads carrier from sysfs: up, no carrier (also when it cannot be read), or missing', async () => {
    const sys = await mkdtemp(join(tmpdir(), 'trivisor-sys-net-'));
    dirs.push(sys);
    await mkdir(join(sys, 'tvup'), { recursive: true });
    await writeFile(join(sys, 'tvup', 'carrier'), '1\n');
    await mkdir(join(sys, 'tvdown'), { recursive: true });
    await writeFile(join(sys, 'tvdown', 'carrier'), '0\n');
    // An interface that is administratively down answers EINVAL; a directory stands in for it here.
    await mkdir(join(sys, 'tvadmin', 'carrier'), { recursive: true });
    const backend = createLinuxNetworkBackend({
      runner: fakeRunner(),
      log,
      stateDir: '/s',
      sysClassNet: sys,
    });
    assert.equal(await backend.portState('tvup'), 'up');
    assert.equal(await backend.portState('tvdown'), 'no-carrier');
    assert.equal(await backend.portState('tvadmin'), 'no-carrier');
    assert.equal(await backend.portState('tvgone'), 'missing');
  });

  test('leases() reads the unexpired leases of a network from its dnsmasq lease file', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'trivisor-net-'));
    dirs.push(stateDir);
    await mkdir(join(stateDir, 'networks', 'tvnet0'), { recursive: true });
    const soon = Math.floor(Date.now() / 1000) + 3600;
    await writeFile(
      join(stateDir, 'networks', 'tvnet0', 'dnsmasq.leases'),
      `${soon} 02:AA:00:00:00:01 198.18.9.5 g1 *\n1 02:aa:00:00:00:02 198.18.9.6 g2 *\n0 02:aa:00:00:00:03 198.18.9.7 g3 *\n`,
    );
    const backend = createLinuxNetworkBackend({ runner: fakeRunner(), log, stateDir });
    assert.deepEqual(
      [...(await backend.leases('tvnet0'))],
      [
        ['02:aa:00:00:00:01', '198.18.9.5'],
        ['02:aa:00:00:00:03', '198.18.9.7'],
      ],
    );
    assert.deepEqual([...(await backend.leases('none'))], []);
  });
});
