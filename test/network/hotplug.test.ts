import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { ownerHash } from '../../src/network/linux-network-backend.ts';
import { type Daemon, eventually, startDaemon } from '../system/harness.ts';
import { hasPortFilter } from './port-filters.ts';

/*
 * NIC hot-plug: a ct, a vm and a pvm guest started without NICs each get one live
 * (`network attach` on the running guest), reach a guest already on the network and are
 * reached by it, then lose it live (`network detach`): unreachable, and no port, ifb or
 * nftables table left. Then IPv6: a guest that sends IPv6 with a forged source is dropped at
 * its port, while the same IPv6 from an unfiltered test namespace on the bridge gets through.
 * Traffic stays between this test's guests, bridge and namespaces: 198.18.212.0/24, fd00::/8.
 */

const sfx = String(process.pid % 10000);
const NET = `tnh${sfx}`;
const PEER = 'hpeer';
const GUESTS = { hc: 'ct', hv: 'vm', hm: 'pvm' } as const;
type Name = keyof typeof GUESTS;
const NAMES = Object.keys(GUESTS) as Name[];
/** Test namespaces and their veths on the bridge (no guest port: no filters). */
const RX = `tvhr${sfx}`;
const TX = `tvht${sfx}`;

const run = (argv: string[]) => spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' });
const links = () => run(['ip', '-o', 'link']).stdout;
const tables = () => run(['nft', 'list', 'tables']).stdout;

interface NicInfo {
  hostName: string;
  hwaddr: string;
  addresses: string[];
}

describe('NIC hot-plug into running ct, vm and pvm guests; IPv6 from guest ports', {
  timeout: 900_000,
}, () => {
  let d: Daemon;
  const ports: string[] = [];

  const sh = (guest: string, script: string) =>
    d.cli(['exec', guest, '--', 'sh', '-c', script], { timeoutMs: 120_000 });
  const pings = (from: string, to: string) => sh(from, `ping -c1 -W3 ${to}`).code === 0;
  const infoOf = (guest: string) =>
    JSON.parse(d.ok(['info', guest, '--format', 'json'])) as {
      devices?: Record<string, { 'ipv4.address'?: string }>;
      state: { nics?: Record<string, NicInfo> };
    };
  const nicsOf = (guest: string): Record<string, NicInfo> => infoOf(guest).state.nics ?? {};
  /** The address reserved for a NIC (info's addresses are what the guest holds, once it holds it). */
  const reservedOf = (guest: string, nic = 'eth0') => infoOf(guest).devices?.[nic]?.['ipv4.address'] ?? '';

  before(async () => {
    d = await startDaemon();
    d.ok(['network', 'create', NET, 'ipv4.address=198.18.212.1/24']);
    d.ok(['launch', 'busybox', PEER, '-n', NET]);
    for (const name of NAMES) d.ok(['launch', 'busybox', name, '--model', GUESTS[name]]);
    const peer = nicsOf(PEER).eth0;
    assert.ok(peer);
    ports.push(peer.hostName);
    const ip = reservedOf(PEER);
    await eventually(
      `${PEER} holds ${ip}`,
      () => sh(PEER, 'ip -4 addr show dev eth0').stdout.includes(ip),
      60_000,
    );
  });

  after(async () => {
    for (const ns of [RX, TX]) {
      run(['ip', 'netns', 'del', ns]);
      run(['ip', 'link', 'del', `${ns}h`]);
    }
    if (d) {
      d.cli(['delete', '--force', PEER, ...NAMES]);
      d.cli(['network', 'delete', NET]);
      await d.destroy();
    }
    const now = links();
    for (const port of [NET, `${RX}h`, `${TX}h`, ...ports])
      assert.doesNotMatch(now, new RegExp(`: ${port}[:@]`));
    assert.doesNotMatch(tables(), new RegExp(`trivisor-(${[NET, ...ports].join('|')})`));
  });

  for (const name of NAMES) {
    test(`a running ${GUESTS[name]} guest gets a NIC live, reaches a guest on the network, and loses it live`, async () => {
      const peerIp = reservedOf(PEER);
      const attached = d.ok([
        ...['network', 'attach', NET, name],
        ...['--limits-ingress', '50Mbit', '--limits-egress', '50Mbit'],
      ]);
      assert.match(attached, new RegExp(`Attached eth0 on ${NET} to ${name} \\(live\\)`));
      const nic = nicsOf(name).eth0;
      assert.ok(nic, `${name} has eth0 in info`);
      ports.push(nic.hostName);
      const ip = reservedOf(name);
      assert.match(ip, /^198\.18\.212\.\d+$/);
      assert.match(
        links(),
        new RegExp(`: ${nic.hostName}[:@].* master ${NET} `),
        'the port is on the bridge',
      );
      assert.ok(hasPortFilter(nic.hostName), 'with its anti-spoofing chain');
      // Its bandwidth limits as at start: tbf on the port, and on the ifb its ingress goes through.
      assert.match(run(['tc', 'qdisc', 'show', 'dev', nic.hostName]).stdout, /qdisc tbf .*rate 50Mbit/);
      assert.match(run(['tc', 'qdisc', 'show', 'dev', `${nic.hostName}i`]).stdout, /qdisc tbf .*rate 50Mbit/);
      // The driver brings the NIC up with its reserved address (the image's DHCP client ran at boot only).
      await eventually(
        `${name}'s eth0 holds ${ip}`,
        () => sh(name, 'ip -4 addr show dev eth0').stdout.includes(`inet ${ip}/24`),
        60_000,
      );
      assert.equal(sh(name, 'cat /sys/class/net/eth0/address').stdout.trim(), nic.hwaddr);
      await eventually(
        `info shows the address the hot-plugged NIC of ${name} holds`,
        () => JSON.stringify(nicsOf(name).eth0?.addresses) === JSON.stringify([ip]),
        15_000,
      );
      await eventually(`${name} reaches ${PEER}`, () => pings(name, peerIp), 30_000);
      assert.ok(pings(PEER, ip), `${PEER} reaches ${name}`);
      // Anti-spoofing holds on the hot-plugged port as at start.
      if (name !== 'hc') {
        const spoof = sh(
          name,
          `ip addr add 198.18.212.250/24 dev eth0 && ping -c1 -W2 -I 198.18.212.250 ${peerIp}; r=$?; ip addr del 198.18.212.250/24 dev eth0; exit $r`,
        );
        assert.notEqual(spoof.code, 0, `a packet from a foreign address got out of ${name}`);
      }

      const detached = d.ok(['network', 'detach', NET, name]);
      assert.match(detached, new RegExp(`Detached eth0 on ${NET} from ${name} \\(live\\)`));
      assert.deepEqual(Object.keys(nicsOf(name)), []);
      assert.doesNotMatch(links(), new RegExp(`: ${nic.hostName}[:@]`), 'no port is left');
      assert.doesNotMatch(links(), new RegExp(`: ${nic.hostName}i[:@]`), 'no ifb is left');
      assert.ok(!hasPortFilter(nic.hostName), 'no anti-spoofing chain is left');
      assert.ok(!pings(PEER, ip), `${name} is unreachable after the detach`);
      await eventually(
        `the NIC is gone inside ${name}`,
        () => !sh(name, 'cat /sys/class/net/*/address').stdout.includes(nic.hwaddr),
        60_000,
      );
      const g = JSON.parse(d.ok(['info', name, '--format', 'json'])) as { status: string };
      assert.equal(g.status, 'Running');
    });
  }

  test('vm and pvm NICs present at boot (DHCP at boot) are unplugged live too', async () => {
    const peerIp = reservedOf(PEER);
    for (const [name, model] of [
      ['bv', 'vm'],
      ['bm', 'pvm'],
    ] as const) {
      d.ok(['launch', 'busybox', name, '--model', model, '-n', NET]);
      try {
        const nic = nicsOf(name).eth0;
        assert.ok(nic);
        ports.push(nic.hostName);
        const ip = reservedOf(name);
        await eventually(
          `${name} leased ${ip} at boot`,
          () => sh(name, 'ip -4 addr show dev eth0').stdout.includes(`inet ${ip}/`),
          60_000,
        );
        assert.ok(pings(name, peerIp), `${name} reaches ${PEER}`);
        assert.match(d.ok(['network', 'detach', NET, name]), /\(live\)/);
        assert.ok(!pings(PEER, ip), `${name} is unreachable after the detach`);
        assert.doesNotMatch(links(), new RegExp(`: ${nic.hostName}[:@]`));
        assert.ok(!hasPortFilter(nic.hostName), 'no anti-spoofing chain is left');
        await eventually(
          `the NIC is gone inside ${name}`,
          () => !sh(name, 'cat /sys/class/net/*/address').stdout.includes(nic.hwaddr),
          60_000,
        );
        // And it can come back live on the same guest.
        assert.match(d.ok(['network', 'attach', NET, name]), /\(live\)/);
        await eventually(`${name} reaches ${PEER} again`, () => pings(name, peerIp), 60_000);
      } finally {
        d.cli(['delete', '--force', name]);
      }
    }
  });

  test('a NIC attached live stays across a restart of the guest; a second one can come and go', () => {
    d.ok(['network', 'attach', NET, 'hc']);
    d.ok(['restart', 'hc']);
    const nic = nicsOf('hc').eth0;
    assert.ok(nic);
    ports.push(nic.hostName);
    assert.match(links(), new RegExp(`: ${nic.hostName}[:@].* master ${NET} `));
    assert.match(d.ok(['network', 'attach', NET, 'hc', 'eth1']), /\(live\)/);
    const second = nicsOf('hc').eth1;
    assert.ok(second);
    ports.push(second.hostName);
    assert.match(d.ok(['network', 'detach', NET, 'hc', 'eth1']), /\(live\)/);
    assert.doesNotMatch(links(), new RegExp(`: ${second.hostName}[:@]`));
    assert.match(links(), new RegExp(`: ${nic.hostName}[:@]`), 'the other NIC stays');
  });

  test('IPv6 with a forged source from a guest port is dropped; from an unfiltered namespace it passes', async () => {
    // A receiver namespace on the bridge with fd00::2, and a control sender with fd00::77.
    d.claim({ netns: [RX, TX], links: [`${RX}h`, `${TX}h`] });
    for (const [ns, addr] of [
      [RX, 'fd00::2/64'],
      [TX, 'fd00::77/64'],
    ] as const) {
      for (const argv of [
        ['ip', 'netns', 'add', ns],
        ['ip', 'link', 'add', `${ns}h`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns],
        ['ip', 'link', 'set', `${ns}h`, 'master', NET, 'up'],
        ['ip', 'netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up'],
        ['ip', 'netns', 'exec', ns, 'ip', 'link', 'set', 'eth0', 'up'],
        ['ip', 'netns', 'exec', ns, 'ip', '-6', 'addr', 'add', addr, 'dev', 'eth0', 'nodad'],
      ]) {
        const r = run(argv);
        assert.equal(r.status, 0, `${argv.join(' ')}: ${r.stderr}`);
      }
    }
    await eventually(
      'the unfiltered namespace reaches the receiver over IPv6',
      () => run(['ip', 'netns', 'exec', TX, 'busybox', 'ping', '-6', '-c1', '-W2', 'fd00::2']).status === 0,
      30_000,
    );
    // The peer (a ct guest started with a NIC, so root in it may configure it) takes an IPv6
    // address no one gave it and tries, then tries its own link-local address.
    const add = sh(PEER, 'ip -6 addr add fd00::66/64 dev eth0 && sleep 3 && ip -6 addr show dev eth0');
    assert.equal(add.code, 0, add.stderr);
    assert.match(add.stdout, /inet6 fd00::66\/64/);
    const table = ['bridge', `trivisor-ports-${ownerHash(d.stateDir)}`];
    const chain = 'prerouting';
    // The ports chain's last rule: what a guest port sends that was accepted neither as IPv4 nor as
    // ARP is dropped.
    const rule = 'drop';
    try {
      const forged = sh(PEER, 'ping -6 -c3 -W2 fd00::2');
      assert.notEqual(forged.code, 0, `IPv6 from a forged source got out of ${PEER}: ${forged.stdout}`);
      assert.match(forged.stdout, /3 packets transmitted, 0 packets received/, 'the guest did send');
      // Without the port's rule the same packets get through: it is the rule that drops them.
      const listed = run(['nft', '-a', 'list', 'chain', ...table, chain]).stdout;
      const handle = /\n\s+drop # handle (\d+)\n\s+\}/.exec(listed)?.[1];
      assert.ok(handle, listed);
      assert.equal(run(['nft', 'delete', 'rule', ...table, chain, 'handle', handle]).status, 0);
      try {
        await eventually(
          'the forged IPv6 passes without the rule',
          () => sh(PEER, 'ping -6 -c1 -W2 fd00::2').code === 0,
          20_000,
        );
      } finally {
        assert.equal(run(['nft', `add rule ${table.join(' ')} ${chain} ${rule}`]).status, 0);
      }
      const again = sh(PEER, 'ip -6 neigh flush dev eth0; ping -6 -c2 -W2 fd00::2');
      assert.notEqual(again.code, 0, 'with the rule back the forged IPv6 is dropped again');
    } finally {
      sh(PEER, 'ip -6 addr del fd00::66/64 dev eth0');
    }
    const ll = run([
      'ip',
      'netns',
      'exec',
      RX,
      'ip',
      '-6',
      '-o',
      'addr',
      'show',
      'dev',
      'eth0',
      'scope',
      'link',
    ]);
    const rxLinkLocal = /inet6 (fe80::[0-9a-f:]+)\//.exec(ll.stdout)?.[1];
    assert.ok(rxLinkLocal, ll.stdout);
    const viaLinkLocal = sh(PEER, `ping -6 -c2 -W2 -I eth0 ${rxLinkLocal}`);
    assert.notEqual(viaLinkLocal.code, 0, 'link-local IPv6 is dropped too');
    assert.ok(pings(PEER, '198.18.212.1'), 'IPv4 from the same port still passes');
  });
});
