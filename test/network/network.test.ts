import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { ownerHash } from '../../src/network/linux-network-backend.ts';
import { parsePortsTable, portsTable } from '../../src/network/nft-rules.ts';
import { type Daemon, eventually, sleep, startDaemon } from '../system/harness.ts';
import { hasPortFilter } from './port-filters.ts';
import { arpRequest, frame, ipv4Udp, ipv6, receiveFrames, sendFrames } from './raw-frames.ts';

/*
 * Real networks between real ct guests. Traffic stays between this test's guests,
 * bridges and one test network namespace; every address is in 198.18.0.0/15.
 */

const sfx = String(process.pid % 10000);
const NET_A = `tna${sfx}`;
const NET_B = `tnb${sfx}`;
const NET_ISO = `tni${sfx}`;
const UPLINK_NS = `tvtinet${sfx}`;
const UPLINK_HOST = `tvtup${sfx}`;

/** Links, nft tables and dnsmasq processes on the host now. */
function hostNetworkState() {
  const links = spawnSync('ip', ['-o', 'link'], { encoding: 'utf8' }).stdout;
  const tables = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;
  return { links, tables };
}

/** Live (non-zombie) dnsmasq processes whose command line mentions `dir`. */
function dnsmasqOf(dir: string): number[] {
  const out = spawnSync('pgrep', ['-f', `dnsmasq.*${dir}`], { encoding: 'utf8' }).stdout;
  return out
    .split('\n')
    .filter(Boolean)
    .map(Number)
    .filter((pid) => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
      } catch {
        return false;
      }
    });
}

describe('ct guests on managed networks', { timeout: 600_000 }, () => {
  let d: Daemon;
  let uplinkServer: ChildProcess | undefined;

  const sh = (guest: string, script: string) => d.cli(['exec', guest, '--', 'sh', '-c', script]);
  const pings = (from: string, to: string) => sh(from, `ping -c1 -W2 ${to}`).code === 0;
  const infoOf = (guest: string) =>
    JSON.parse(d.ok(['info', guest, '--format', 'json'])) as {
      devices?: Record<string, { 'ipv4.address'?: string }>;
      state: { addresses?: string[] };
    };
  /** The address reserved for eth0 (info's addresses are what the guest holds, once it holds it). */
  const addressOf = (guest: string): string => infoOf(guest).devices?.eth0?.['ipv4.address'] ?? '';
  /** The address DHCP gave eth0, as the guest sees it. */
  const leased = (guest: string) =>
    /inet (\d+\.\d+\.\d+\.\d+)\//.exec(sh(guest, 'ip -4 addr show dev eth0').stdout)?.[1];

  before(async () => {
    d = await startDaemon();
    d.ok(['network', 'create', NET_A, 'ipv4.address=198.18.201.1/24']);
    d.ok(['network', 'create', NET_B, 'ipv4.address=198.18.202.1/24', 'dns.domain=lab.test']);
    d.ok(['network', 'create', NET_ISO, '--isolated', 'ipv4.address=198.18.203.1/24']);
    d.ok(['launch', 'busybox', 'a1', '-n', NET_A]);
    d.ok(['launch', 'busybox', 'a2', '--network', NET_A]);
    d.ok(['launch', 'busybox', 'b1', '-n', NET_B]);
    d.ok(['launch', 'busybox', 'i1', '-n', NET_ISO]);
    d.ok(['launch', 'busybox', 'i2', '-n', NET_ISO]);
  });

  after(async () => {
    uplinkServer?.kill('SIGKILL');
    spawnSync('ip', ['netns', 'del', UPLINK_NS]);
    spawnSync('ip', ['link', 'del', UPLINK_HOST]);
    if (d) {
      d.cli(['delete', '--force', 'a1', 'a2', 'b1', 'i1', 'i2', 'l1', 'late']);
      d.cli(['network', 'delete', NET_A, NET_B, NET_ISO]);
      const stateDir = d.stateDir;
      await d.destroy();
      await eventually('no dnsmasq of the test left', () => dnsmasqOf(stateDir).length === 0, 5000);
    }
    const { links, tables } = hostNetworkState();
    for (const n of [NET_A, NET_B, NET_ISO, UPLINK_HOST])
      assert.doesNotMatch(links, new RegExp(`: ${n}[:@]`));
    assert.doesNotMatch(tables, new RegExp(`trivisor-(${NET_A}|${NET_B}|${NET_ISO})`));
  });

  test('guests get their addresses by DHCP, and list shows them', async () => {
    for (const g of ['a1', 'a2']) {
      const ip = addressOf(g);
      assert.match(ip, /^198\.18\.201\.\d+$/);
      await eventually(`${g}'s eth0 has the address it was given`, () => leased(g) === ip, 30_000);
      await eventually(
        `info shows the address ${g} holds`,
        () => JSON.stringify(infoOf(g).state.addresses) === JSON.stringify([ip]),
        15_000,
      );
    }
    assert.notEqual(addressOf('a1'), addressOf('a2'));
    assert.match(d.ok(['list']), /a1\s.*198\.18\.201\./);
    assert.match(sh('a1', 'cat /etc/resolv.conf').stdout, /nameserver 198\.18\.201\.1/);
  });

  test('guests on one network ping each other by address and by DNS name', () => {
    assert.ok(pings('a1', addressOf('a2')));
    assert.ok(pings('a1', `a2.trivisor`));
    assert.ok(pings('a2', 'a1'));
    assert.ok(pings('a1', '198.18.201.1'), 'the gateway answers');
  });

  test('dns.domain names guests of a network', () => {
    assert.ok(pings('b1', 'b1.lab.test'));
    assert.match(sh('b1', 'nslookup b1.lab.test 198.18.202.1').stdout, /198\.18\.202\./);
  });

  test('guests move data over TCP', async () => {
    assert.equal(sh('a2', 'nc -l -p 5000 -e sh -c "cat > /tmp/got" </dev/null >/dev/null 2>&1 &').code, 0);
    await sleep(300);
    const sent = sh(
      'a1',
      'dd if=/dev/urandom of=/tmp/sent bs=1k count=512 2>/dev/null && nc a2 5000 < /tmp/sent && md5sum /tmp/sent',
    );
    assert.equal(sent.code, 0, sent.stderr);
    const sum = sent.stdout.split(' ')[0];
    await eventually(
      'a2 received everything',
      () => sh('a2', 'md5sum /tmp/got').stdout.startsWith(`${sum} `),
      10_000,
    );
  });

  test('two networks cannot reach each other', () => {
    assert.equal(pings('b1', addressOf('a1')), false);
    assert.equal(pings('a1', addressOf('b1')), false);
  });

  test('an isolated network blocks guest to guest but not the gateway', () => {
    assert.ok(pings('i1', '198.18.203.1'));
    assert.ok(pings('i2', '198.18.203.1'));
    assert.equal(pings('i1', addressOf('i2')), false);
  });

  test('a guest that takes another address or MAC is dropped', () => {
    const a2 = addressOf('a2');
    const spoofIp = sh(
      'a1',
      `ip addr add 198.18.201.250/24 dev eth0 && ping -c1 -W2 -I 198.18.201.250 ${a2}; r=$?; ip addr del 198.18.201.250/24 dev eth0; exit $r`,
    );
    assert.notEqual(spoofIp.code, 0, 'a packet from a foreign address got through');
    const mac = sh('a1', 'cat /sys/class/net/eth0/address').stdout.trim();
    const spoofMac = sh(
      'a1',
      `ip link set eth0 address 02:00:00:00:00:99 && ping -c1 -W2 ${a2}; r=$?; ip link set eth0 address ${mac}; exit $r`,
    );
    assert.notEqual(spoofMac.code, 0, 'a frame from a foreign MAC got through');
    assert.ok(pings('a1', a2), 'back to its own addresses, the guest works again');
  });

  /** The network namespace of a running guest, as a path nsenter takes. */
  const netnsOf = (guest: string) =>
    `/proc/${(JSON.parse(d.ok(['info', guest, '--format', 'json'])) as { state: { pid: number } }).state.pid}/ns/net`;

  /**
   * Crafted frames from a1's port, received on a2's: exactly the untagged IPv4 and ARP from a1's
   * own MAC and address (and DHCP's 0.0.0.0) arrive. The same frames sent by the host on the
   * bridge all arrive: what the port drops is dropped by its filter.
   */
  const checkFrames = async () => {
    const own = sh('a1', 'cat /sys/class/net/eth0/address').stdout.trim();
    const ip = addressOf('a1');
    const a2 = addressOf('a2');
    const BC = 'ff:ff:ff:ff:ff:ff';
    const FOREIGN = '02:00:00:00:00:99';
    const frames: Record<string, Buffer> = {
      'own-ipv4': frame(BC, own, 0x0800, ipv4Udp(ip, a2, 'MARK:own-ipv4')),
      'dhcp-ipv4': frame(BC, own, 0x0800, ipv4Udp('0.0.0.0', '255.255.255.255', 'MARK:dhcp-ipv4')),
      'own-arp': frame(BC, own, 0x0806, arpRequest(own, ip, a2, 'MARK:own-arp')),
      'probe-arp': frame(BC, own, 0x0806, arpRequest(own, '0.0.0.0', ip, 'MARK:probe-arp')),
      'spoofed-ip': frame(BC, own, 0x0800, ipv4Udp('198.18.201.250', a2, 'MARK:spoofed-ip')),
      'spoofed-mac': frame(BC, FOREIGN, 0x0800, ipv4Udp(ip, a2, 'MARK:spoofed-mac')),
      'arp-spoofed-ip': frame(BC, own, 0x0806, arpRequest(own, '198.18.201.250', a2, 'MARK:arp-spoofed-ip')),
      'arp-spoofed-mac': frame(BC, own, 0x0806, arpRequest(FOREIGN, ip, a2, 'MARK:arp-spoofed-mac')),
      ipv6: frame('33:33:00:00:00:01', own, 0x86dd, ipv6('fe80::99', 'ff02::1', 'MARK:ipv6')),
      'vlan-ipv4': frame(BC, own, 0x0800, ipv4Udp(ip, a2, 'MARK:vlan-ipv4'), 7),
      'vlan-arp': frame(BC, own, 0x0806, arpRequest(own, ip, a2, 'MARK:vlan-arp'), 7),
      'other-type': frame(BC, own, 0x88b5, Buffer.from('MARK:other-type')),
    };
    const received = async (netns: string, ifname: string) => {
      const r = receiveFrames(netnsOf('a2'), 'eth0', 3);
      await r.ready;
      sendFrames(netns, ifname, Object.values(frames));
      return [...(await r.markers)].sort();
    };
    assert.deepEqual(
      await received(`/proc/${process.pid}/ns/net`, NET_A),
      Object.keys(frames).sort(),
      'every frame reaches a2 when no guest port filters it',
    );
    assert.deepEqual(
      await received(netnsOf('a1'), 'eth0'),
      ['dhcp-ipv4', 'own-arp', 'own-ipv4', 'probe-arp'],
      'from a1: its own untagged IPv4 and ARP only; a foreign address or MAC, IPv6, VLAN-tagged and other types dropped',
    );
  };

  test('crafted frames from a guest port: only untagged IPv4 and ARP with its own MAC and address pass', async () => {
    await checkFrames();
  });

  test('a daemon that finds its ports table of before (a chain per port behind a verdict map) adopts it at its start', async () => {
    const table = portsTable(ownerHash(d.stateDir));
    const list = () =>
      spawnSync('nft', ['-j', 'list', 'table', 'bridge', table], { encoding: 'utf8' }).stdout;
    const now = parsePortsTable(list());
    assert.equal(now.layout, 'current');
    assert.ok(now.ports.length >= 2, JSON.stringify(now));
    // The layout before 2026-12-07, as those daemons wrote it, in place of this one.
    const t = `bridge ${table}`;
    const legacy = [
      `add table ${t}`,
      `delete table ${t}`,
      `add table ${t}`,
      `add map ${t} ports { type ifname : verdict; }`,
      `add chain ${t} prerouting { type filter hook prerouting priority filter; policy accept; }`,
      `add rule ${t} prerouting iifname vmap @ports`,
      ...now.ports.flatMap((p) => [
        `add chain ${t} port-${p.port}`,
        ...[
          `ether saddr != ${p.mac} drop`,
          `arp saddr ether != ${p.mac} drop`,
          `arp saddr ip ${p.ip} return`,
          'arp saddr ip 0.0.0.0 return',
          `ip saddr ${p.ip} return`,
          'ip saddr 0.0.0.0 return',
          'drop',
        ].map((r) => `add rule ${t} port-${p.port} ${r}`),
        `add element ${t} ports { "${p.port}" : jump port-${p.port} }`,
      ]),
      '',
    ].join('\n');
    const loaded = spawnSync('nft', ['-f', '-'], { input: legacy, encoding: 'utf8' });
    assert.equal(loaded.status, 0, loaded.stderr);
    assert.equal(parsePortsTable(list()).layout, 'rewrite');
    assert.match(
      spawnSync('nft', ['list', 'table', 'bridge', table], { encoding: 'utf8' }).stdout,
      /chain port-/,
    );
    await d.kill9();
    await d.restart();
    await eventually(
      'the ports table is rewritten',
      () => parsePortsTable(list()).layout === 'current',
      60_000,
    );
    const after = spawnSync('nft', ['list', 'table', 'bridge', table], { encoding: 'utf8' }).stdout;
    assert.doesNotMatch(after, /chain port-|vmap|jump/, after);
    assert.deepEqual(
      parsePortsTable(list()).ports.sort((a, b) => a.port.localeCompare(b.port)),
      now.ports.sort((a, b) => a.port.localeCompare(b.port)),
      'every port it filtered, with its MAC and address',
    );
    await checkFrames();
    // Idempotent: another start leaves it as it is.
    const handles = list();
    await d.kill9();
    await d.restart();
    assert.ok(pings('a1', addressOf('a2')));
    assert.equal(list(), handles, 'the same table, not rewritten');
  });

  test('a guest with a NIC holds CAP_NET_ADMIN, scoped to its own network namespace; one without a NIC does not', () => {
    // CAP_NET_ADMIN is bit 12 of the effective set (threat model, decision 0007).
    const netAdmin = (guest: string) => {
      const capEff = /CapEff:\s*([0-9a-f]+)/.exec(sh(guest, 'cat /proc/self/status').stdout)?.[1] ?? '0';
      return (BigInt(`0x${capEff}`) & (1n << 12n)) !== 0n;
    };
    assert.equal(netAdmin('a1'), true, 'a guest with a NIC has CAP_NET_ADMIN');
    const added = sh('a1', 'ip addr add 192.0.2.77/32 dev lo && ip -4 addr show dev lo');
    assert.equal(added.code, 0, added.stderr);
    assert.match(added.stdout, /192\.0\.2\.77/, 'it changes its own namespace');
    const host = spawnSync('ip', ['-o', '-4', 'addr'], { encoding: 'utf8' }).stdout;
    assert.doesNotMatch(host, /192\.0\.2\.77/, "and nothing of the host's");
    sh('a1', 'ip addr del 192.0.2.77/32 dev lo');
    d.ok(['launch', 'busybox', 'nonic']);
    try {
      assert.equal(netAdmin('nonic'), false, 'a guest without NICs has no CAP_NET_ADMIN');
      const refused = sh('nonic', 'ip addr add 192.0.2.78/32 dev lo');
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /not permitted/i);
    } finally {
      d.ok(['delete', '--force', 'nonic']);
    }
  });

  test('NAT rewrites the source address towards a (fake) uplink; without NAT guests stay inside', async () => {
    const ip = (...args: string[]) => {
      const r = spawnSync('ip', args, { encoding: 'utf8' });
      assert.equal(r.status, 0, `ip ${args.join(' ')}: ${r.stderr}`);
    };
    // Claimed first: if this test is killed, the next run's sweep removes them (test/leftovers.ts).
    d.claim({ netns: [UPLINK_NS], links: [UPLINK_HOST] });
    ip('netns', 'add', UPLINK_NS);
    ip('link', 'add', UPLINK_HOST, 'type', 'veth', 'peer', 'name', `${UPLINK_HOST}p`);
    ip('link', 'set', `${UPLINK_HOST}p`, 'netns', UPLINK_NS);
    ip('addr', 'add', '198.19.250.1/24', 'dev', UPLINK_HOST);
    ip('link', 'set', UPLINK_HOST, 'up');
    ip('-n', UPLINK_NS, 'addr', 'add', '198.19.250.2/24', 'dev', `${UPLINK_HOST}p`);
    ip('-n', UPLINK_NS, 'link', 'set', `${UPLINK_HOST}p`, 'up');
    // The "internet" answers every connection with the address it came from.
    uplinkServer = spawn('ip', [
      'netns',
      'exec',
      UPLINK_NS,
      process.execPath,
      '-e',
      "require('net').createServer((s) => s.end(s.remoteAddress.replace('::ffff:', '') + '\\n')).listen(6000)",
    ]);
    await eventually('the uplink server listens', () =>
      spawnSync('ip', ['netns', 'exec', UPLINK_NS, 'ss', '-ltn'], { encoding: 'utf8' }).stdout.includes(
        ':6000',
      ),
    );
    const ask = () => sh('a1', 'sleep 1 | nc -w 3 198.19.250.2 6000');
    assert.notEqual(ask().code, 0, 'without NAT the guest reaches nothing beyond its bridge');
    d.ok(['network', 'set', NET_A, 'ipv4.nat=true']);
    const r = ask();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), '198.19.250.1', 'the uplink sees the host, not the guest');
  });

  test('a port forward reaches a guest from a client in a separate namespace, also on a network without NAT', async () => {
    for (const g of ['a2', 'b1']) {
      const r = sh(g, 'nc -ll -p 80 -e sh -c "echo hello from $(hostname)" </dev/null >/dev/null 2>&1 &');
      assert.equal(r.code, 0, r.stderr);
    }
    d.ok(['network', 'forward', 'add', NET_A, '198.19.250.1:8080', 'a2:80']);
    d.ok(['network', 'forward', 'add', NET_B, '198.19.250.1:8081', 'b1:80']);
    assert.match(
      d.ok(['network', 'forward', 'list', NET_A]),
      /tcp\s+198\.19\.250\.1:8080\s+198\.18\.201\.\d+:80\s+a2/,
    );
    const fetch = (port: number) =>
      spawnSync(
        'ip',
        ['netns', 'exec', UPLINK_NS, 'sh', '-c', `sleep 1 | busybox nc -w 3 198.19.250.1 ${port}`],
        {
          encoding: 'utf8',
        },
      ).stdout.trim();
    await eventually('the forward to a2 answers', () => fetch(8080) === 'hello from a2', 10_000);
    await eventually('the forward to b1 answers', () => fetch(8081) === 'hello from b1', 10_000);
    const twice = d.cli(['network', 'forward', 'add', NET_B, '198.19.250.1:8080', 'b1:80']);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /already forwarded/);
    d.ok(['network', 'forward', 'remove', NET_B, '198.19.250.1:8081']);
    assert.equal(fetch(8081), '');
  });

  test('an ACL drop takes effect between guests of one network, and its removal lifts it', async () => {
    const a2 = addressOf('a2');
    assert.ok(pings('a1', a2));
    d.ok(['network', 'acl', 'add', NET_A, 'ingress', 'drop', 'protocol=icmp', `destination=${a2}`]);
    assert.match(
      d.ok(['network', 'acl', 'list', NET_A]),
      /0\s+ingress\s+drop\s+-\s+198\.18\.201\.\d+\s+icmp/,
    );
    assert.equal(pings('a1', a2), false, 'the ACL did not stop the ping');
    assert.ok(pings('a1', '198.18.201.1'), 'a rule for a2 leaves the others alone');
    const bad = d.cli(['network', 'acl', 'add', NET_A, 'ingress', 'drop', 'destination_port=22']);
    assert.match(bad.stderr, /destination_port needs protocol/);
    d.ok(['network', 'acl', 'remove', NET_A, '0']);
    assert.ok(pings('a1', a2));
  });

  test('bandwidth limits hold within 20% both ways', async () => {
    d.ok(['launch', 'busybox', 'l1', '-n', `${NET_A},limits.ingress=8Mbit,limits.egress=8Mbit`]);
    const bytes = 4 * 1024 * 1024;
    /** Seconds the receiver took for `bytes`, timed by the receiver from connection to end of data. */
    const transfer = async (from: string, to: string, port: number) => {
      sh(
        to,
        `rm -f /tmp/t; nc -l -p ${port} -e sh -c "time cat > /dev/null" </dev/null >/dev/null 2>/tmp/t &`,
      );
      await sleep(300);
      const r = sh(
        from,
        `dd if=/dev/zero bs=1k count=${bytes / 1024} 2>/dev/null > /tmp/f && nc ${to} ${port} < /tmp/f`,
      );
      assert.equal(r.code, 0, r.stderr);
      let seconds = Number.NaN;
      await eventually('the receiver timed the transfer', () => {
        const m = /real\s+(?:(\d+)m\s*)?([\d.]+)s/.exec(sh(to, 'cat /tmp/t').stdout);
        if (m) seconds = Number(m[1] ?? 0) * 60 + Number(m[2]);
        return m !== null;
      });
      return seconds;
    };
    for (const [from, to, port] of [
      ['l1', 'a2', 5100],
      ['a2', 'l1', 5101],
    ] as const) {
      const mbit = (bytes * 8) / (await transfer(from, to, port)) / 1e6;
      assert.ok(mbit > 6.4 && mbit < 9.6, `${from} -> ${to}: ${mbit.toFixed(2)} Mbit/s, limit 8`);
    }
    d.ok(['delete', '--force', 'l1']);
  });

  test('networks survive a daemon restart; a deleted bridge or dnsmasq is recreated', async () => {
    await d.kill9();
    await d.restart();
    assert.ok(pings('a1', 'a2.trivisor'), 'DNS and traffic work after the restart');
    spawnSync('ip', ['link', 'del', NET_A]);
    await eventually('the bridge is back', () => hostNetworkState().links.includes(`: ${NET_A}:`), 15_000);
    await eventually('a1 reaches a2 again', () => pings('a1', addressOf('a2')), 15_000);
    for (const pid of dnsmasqOf(`${d.stateDir}/networks/${NET_A}/`)) process.kill(pid, 'SIGKILL');
    await eventually(
      'dnsmasq is back',
      () => dnsmasqOf(`${d.stateDir}/networks/${NET_A}/`).length === 1,
      15_000,
    );
    assert.ok(pings('a1', 'a2.trivisor'));
  });

  test('info shows per-NIC counters', () => {
    const g = JSON.parse(d.ok(['info', 'a1', '--format', 'json'])) as {
      state: { nics?: Record<string, { counters: { rxBytes: number; txBytes: number } | null }> };
    };
    const c = g.state.nics?.eth0?.counters;
    assert.ok(c && c.rxBytes > 0 && c.txBytes > 0, JSON.stringify(g.state.nics));
    assert.match(d.ok(['info', 'a1']), /eth0: network tna/);
  });

  test('bad input gets clear errors', () => {
    const overlap = d.cli(['network', 'create', `tno${sfx}`, 'ipv4.address=198.18.201.129/25']);
    assert.equal(overlap.code, 1);
    assert.match(overlap.stderr, /overlaps network/);
    const badCidr = d.cli(['network', 'create', `tno${sfx}`, 'ipv4.address=198.18.300.1/24']);
    assert.match(badCidr.stderr, /not an IPv4 address with a prefix length/);
    const unknown = d.cli(['launch', 'busybox', 'x1', '-n', 'nosuchnet']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /Network nosuchnet/);
    const inUse = d.cli(['network', 'delete', NET_A]);
    assert.match(inUse.stderr, /is used by a1, a2/);
    const longName = d.cli(['network', 'create', 'abcdefghijklmnop', 'ipv4.address=198.18.210.1/24']);
    assert.match(longName.stderr, /at most 15/);
  });

  test('attach gives a stopped guest a NIC it uses at its next start; detach takes it away live', async () => {
    d.ok(['create', 'busybox', 'late']);
    assert.match(
      d.ok(['network', 'attach', NET_B, 'late']),
      /Attached eth0 on tnb\S* to late; late gets it when it starts/,
    );
    d.ok(['start', 'late']);
    // Running is said once init runs; udhcpc gets eth0 its address a moment later.
    await eventually('the attached NIC works after start', () => pings('late', 'b1.lab.test'), 30_000);
    assert.match(d.ok(['network', 'detach', NET_B, 'late']), /Detached eth0 on tnb\S* from late \(live\)/);
    assert.ok(!pings('late', 'b1.lab.test'), 'the detached NIC is gone from the running guest');
    d.ok(['stop', '--force', 'late']);
    const g = JSON.parse(d.ok(['info', 'late', '--format', 'json'])) as { devices?: Record<string, unknown> };
    assert.deepEqual(g.devices ?? {}, {});
    d.ok(['delete', 'late']);
  });

  test('stop and delete leave no port behind', async () => {
    const g = JSON.parse(d.ok(['info', 'i2', '--format', 'json'])) as {
      state: { nics: Record<string, { hostName: string }> };
    };
    const port = g.state.nics.eth0?.hostName ?? '';
    assert.match(hostNetworkState().links, new RegExp(`: ${port}@`));
    d.ok(['stop', '--force', 'i2']);
    assert.doesNotMatch(hostNetworkState().links, new RegExp(`: ${port}@`));
    assert.ok(!hasPortFilter(port), 'its anti-spoofing chain went with the stop');
    d.ok(['start', 'i2']);
    await eventually('a restarted guest has its network back', () => pings('i2', '198.18.203.1'), 30_000);
    d.ok(['delete', '--force', 'i2']);
    assert.doesNotMatch(hostNetworkState().links, new RegExp(`: ${port}@`));
  });
});

describe('the default network', { timeout: 120_000 }, () => {
  test('trivisor0 is created on first start with NAT and a free subnet, and stays deleted once deleted', async (t) => {
    if (hostNetworkState().links.includes(': trivisor0:')) {
      t.skip('another daemon on this host holds the bridge trivisor0');
      return;
    }
    const d = await startDaemon({ defaultNetwork: true });
    try {
      const n = JSON.parse(d.ok(['network', 'info', 'trivisor0', '--format', 'json'])) as {
        config: Record<string, string>;
        status: string;
      };
      assert.equal(n.status, 'Created');
      assert.equal(n.config['ipv4.nat'], 'true');
      assert.match(n.config['ipv4.address'] ?? '', /^198\.1[89]\.\d+\.1\/24$/);
      d.ok(['network', 'delete', 'trivisor0']);
      d.process.kill('SIGTERM');
      await new Promise((r) => d.process.once('exit', r));
      await d.restart();
      assert.doesNotMatch(d.ok(['network', 'list']), /trivisor0/);
    } finally {
      await d.destroy();
    }
    assert.doesNotMatch(hostNetworkState().links, /: trivisor0:/);
  });
});
