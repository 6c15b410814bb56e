import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { type Daemon, eventually, sleep, startDaemon } from '../system/harness.ts';
import { hasPortFilter } from './port-filters.ts';

/*
 * One guest of each model (ct, vm, pvm) on one managed network: DHCP, ping by address and
 * by name, TCP both ways, counters, anti-spoofing on a tap, and the taps through a daemon
 * kill -9, stop and delete. Traffic stays between this test's guests and bridge, in
 * 198.18.211.0/24.
 */

const sfx = String(process.pid % 10000);
const NET = `tnm${sfx}`;
const GUESTS = { mc: 'ct', mv: 'vm', mp: 'pvm' } as const;
type Name = keyof typeof GUESTS;
const NAMES = Object.keys(GUESTS) as Name[];

/** Host interfaces now (`ip -o link`). */
const links = () => spawnSync('ip', ['-o', 'link'], { encoding: 'utf8' }).stdout;
const tables = () => spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;

interface NicInfo {
  hostName: string;
  hwaddr: string;
  addresses: string[];
  counters: { rxBytes: number; txBytes: number; rxPackets: number; txPackets: number } | null;
}

describe('ct, vm and pvm guests on one network', { timeout: 900_000 }, () => {
  let d: Daemon;
  const ports: Partial<Record<Name, string>> = {};

  const sh = (guest: string, script: string) =>
    d.cli(['exec', guest, '--', 'sh', '-c', script], { timeoutMs: 120_000 });
  const pings = (from: string, to: string) => sh(from, `ping -c1 -W3 ${to}`).code === 0;
  const infoOf = (guest: string) =>
    JSON.parse(d.ok(['info', guest, '--format', 'json'])) as {
      devices?: Record<string, { 'ipv4.address'?: string }>;
      state: { nics?: Record<string, NicInfo> };
    };
  const nicOf = (guest: string): NicInfo => {
    const nic = infoOf(guest).state.nics?.eth0;
    assert.ok(nic, `${guest} has eth0 in info`);
    return nic;
  };
  /** The address reserved for eth0 (info's addresses are what the guest holds, once it holds it). */
  const addressOf = (guest: string) => infoOf(guest).devices?.eth0?.['ipv4.address'] ?? '';
  /** The address eth0 holds inside the guest. */
  const leased = (guest: string) =>
    /inet (\d+\.\d+\.\d+\.\d+)\//.exec(sh(guest, 'ip -4 addr show dev eth0').stdout)?.[1];

  before(async () => {
    d = await startDaemon();
    d.ok(['network', 'create', NET, 'ipv4.address=198.18.211.1/24']);
    for (const name of NAMES) {
      d.ok(['launch', 'busybox', name, '--model', GUESTS[name], '-n', NET]);
      ports[name] = nicOf(name).hostName;
    }
  });

  after(async () => {
    if (d) {
      d.cli(['delete', '--force', ...NAMES]);
      d.cli(['network', 'delete', NET]);
      await d.destroy();
    }
    const now = links();
    for (const port of [NET, ...Object.values(ports)]) assert.doesNotMatch(now, new RegExp(`: ${port}[:@]`));
    assert.doesNotMatch(tables(), new RegExp(`trivisor-(${[NET, ...Object.values(ports)].join('|')})`));
  });

  test('each guest gets its reserved address by DHCP on eth0, and list shows it', async () => {
    for (const name of NAMES) {
      const ip = addressOf(name);
      assert.match(ip, /^198\.18\.211\.\d+$/, `${name} has an address`);
      // udhcpc may still be asking when a fast guest's init has run.
      await eventually(`${name}'s eth0 holds ${ip}`, () => leased(name) === ip, 60_000);
      assert.match(
        sh(name, 'cat /etc/resolv.conf').stdout,
        /nameserver 198\.18\.211\.1/,
        `${name} uses the network's DNS`,
      );
      assert.equal(
        sh(name, 'cat /sys/class/net/eth0/address').stdout.trim(),
        nicOf(name).hwaddr,
        `${name}'s eth0 has the NIC's MAC`,
      );
    }
    assert.equal(new Set(NAMES.map(addressOf)).size, 3);
    for (const name of NAMES) {
      const shown = new RegExp(`${name}\\s.*${addressOf(name).replace(/\./g, '\\.')}`);
      await eventually(`list shows the address ${name} holds`, () => shown.test(d.ok(['list'])), 15_000);
      assert.deepEqual(nicOf(name).addresses, [addressOf(name)]);
    }
  });

  test('vm and pvm NICs are taps on the bridge (pvm: owned by the guest uid), with their filters', () => {
    const now = links();
    for (const name of ['mv', 'mp'] as const) {
      const port = ports[name] ?? '';
      assert.match(now, new RegExp(`: ${port}: .* master ${NET} `), `${name}'s tap is on the bridge`);
      const info = JSON.parse(
        spawnSync('ip', ['-json', '-d', 'link', 'show', 'dev', port], { encoding: 'utf8' }).stdout,
      )[0] as { linkinfo?: { info_kind?: string; info_data?: { user?: string | number } } };
      assert.equal(info.linkinfo?.info_kind, 'tun');
      assert.ok(hasPortFilter(port), `${name}'s tap has its anti-spoofing chain`);
    }
    const uid = Number(spawnSync('cat', [`${d.stateDir}/guests/mp/uid`], { encoding: 'utf8' }).stdout.trim());
    const owner = JSON.parse(
      spawnSync('ip', ['-json', '-d', 'link', 'show', 'dev', ports.mp ?? ''], { encoding: 'utf8' }).stdout,
    )[0]?.linkinfo?.info_data?.user;
    assert.ok(uid > 0);
    assert.ok(owner === uid || owner === String(uid), `the pvm tap belongs to uid ${uid}, not ${owner}`);
  });

  test('every guest pings the others by address and by DNS name, and the gateway', () => {
    for (const from of NAMES) {
      assert.ok(pings(from, '198.18.211.1'), `${from} reaches the gateway`);
      for (const to of NAMES) {
        if (to === from) continue;
        assert.ok(pings(from, addressOf(to)), `${from} pings ${to} by address`);
        assert.ok(pings(from, `${to}.trivisor`), `${from} pings ${to}.trivisor`);
      }
    }
  });

  test('every guest moves data over TCP to each of the others', async () => {
    for (const to of NAMES) {
      for (const from of NAMES) {
        if (to === from) continue;
        const port = 5100 + NAMES.indexOf(from);
        const listen = sh(
          to,
          `rm -f /tmp/got-${from}; nc -l -p ${port} -e sh -c "cat > /tmp/got-${from}" </dev/null >/dev/null 2>&1 &`,
        );
        assert.equal(listen.code, 0, listen.stderr);
        await sleep(500);
        const sent = sh(
          from,
          `dd if=/dev/urandom of=/tmp/sent bs=1k count=256 2>/dev/null && nc ${to}.trivisor ${port} < /tmp/sent && md5sum /tmp/sent`,
        );
        assert.equal(sent.code, 0, `${from} → ${to}: ${sent.stderr}`);
        const sum = sent.stdout.split(' ')[0] ?? '';
        assert.match(sum, /^[0-9a-f]{32}$/);
        await eventually(
          `${to} received all of ${from}'s data`,
          () => sh(to, `md5sum /tmp/got-${from}`).stdout.startsWith(`${sum} `),
          30_000,
        );
      }
    }
  });

  test('info shows per-NIC counters for every model', () => {
    for (const name of NAMES) {
      const c = nicOf(name).counters;
      assert.ok(c && c.rxBytes > 256 * 1024 && c.txBytes > 256 * 1024, `${name}: ${JSON.stringify(c)}`);
    }
    assert.match(d.ok(['info', 'mv']), new RegExp(`eth0: network ${NET}`));
  });

  test('a pvm or vm guest that takes another address or MAC is dropped', () => {
    const target = addressOf('mc');
    for (const name of ['mp', 'mv'] as const) {
      const spoofIp = sh(
        name,
        `ip addr add 198.18.211.250/24 dev eth0 && ping -c1 -W2 -I 198.18.211.250 ${target}; r=$?; ip addr del 198.18.211.250/24 dev eth0; exit $r`,
      );
      assert.notEqual(spoofIp.code, 0, `a packet from a foreign address got out of ${name}`);
      const mac = sh(name, 'cat /sys/class/net/eth0/address').stdout.trim();
      const spoofMac = sh(
        name,
        `ip link set eth0 address 02:00:00:00:00:99 && ping -c1 -W2 ${target}; r=$?; ip link set eth0 address ${mac}; exit $r`,
      );
      assert.notEqual(spoofMac.code, 0, `a frame from a foreign MAC got out of ${name}`);
      assert.ok(pings(name, target), `back to its own addresses, ${name} works again`);
    }
  });

  /** Addresses of a deleted guest, given again to the next one (its old lease must not keep them). */
  let released: string[] = [];

  test('a guest NIC gets its own name whatever order the kernel finds it in', async () => {
    // Attached eth1 first: UML's eth0 carries NIC eth1, and the kit must swap the names.
    d.ok(['create', 'busybox', 'mr', '--model', 'pvm']);
    try {
      d.ok(['network', 'attach', NET, 'mr', 'eth1']);
      d.ok(['network', 'attach', NET, 'mr', 'eth0']);
      d.ok(['start', 'mr']);
      const g = JSON.parse(d.ok(['info', 'mr', '--format', 'json'])) as {
        state: { nics: Record<string, NicInfo> };
      };
      for (const nic of ['eth0', 'eth1']) {
        assert.equal(
          sh('mr', `cat /sys/class/net/${nic}/address`).stdout.trim(),
          g.state.nics[nic]?.hwaddr,
          `${nic} inside has NIC ${nic}'s MAC`,
        );
      }
      const ip = addressOf('mr');
      await eventually('eth0 holds its own address', () => leased('mr') === ip, 60_000);
      released = ['eth0', 'eth1'].map((nic) => infoOf('mr').devices?.[nic]?.['ipv4.address'] ?? '');
    } finally {
      d.cli(['delete', '--force', 'mr']);
    }
  });

  test('bandwidth limits on a tap (pvm) hold within 20% both ways', async () => {
    d.ok([
      'launch',
      'busybox',
      'ml',
      '--model',
      'pvm',
      '-n',
      `${NET},limits.ingress=8Mbit,limits.egress=8Mbit`,
    ]);
    try {
      const ip = addressOf('ml');
      assert.ok(released.includes(ip), `ml got ${ip}, an address mr held (${released})`);
      await eventually(
        'ml has its address (not one dnsmasq had left to mr)',
        () => leased('ml') === ip,
        60_000,
      );
      const bytes = 4 * 1024 * 1024;
      for (const [from, to, port] of [
        ['ml', 'mc', 5200],
        ['mc', 'ml', 5201],
      ] as const) {
        assert.equal(
          sh(
            to,
            `rm -f /tmp/t; nc -l -p ${port} -e sh -c "time cat > /dev/null" </dev/null >/dev/null 2>/tmp/t &`,
          ).code,
          0,
        );
        await sleep(500);
        const r = sh(
          from,
          `dd if=/dev/zero bs=1k count=${bytes / 1024} 2>/dev/null > /tmp/f && nc ${to}.trivisor ${port} < /tmp/f`,
        );
        assert.equal(r.code, 0, r.stderr);
        let seconds = Number.NaN;
        await eventually('the receiver timed the transfer', () => {
          const m = /real\s+(?:(\d+)m\s*)?([\d.]+)s/.exec(sh(to, 'cat /tmp/t').stdout);
          if (m) seconds = Number(m[1] ?? 0) * 60 + Number(m[2]);
          return m !== null;
        });
        const mbit = (bytes * 8) / seconds / 1e6;
        assert.ok(mbit > 6.4 && mbit < 9.6, `${from} -> ${to}: ${mbit.toFixed(2)} Mbit/s, limit 8`);
      }
    } finally {
      d.cli(['delete', '--force', 'ml']);
    }
  });

  test('after a daemon kill -9 the guests are re-adopted with their taps, and still talk', async () => {
    await d.kill9();
    await d.restart();
    const now = links();
    for (const name of ['mv', 'mp'] as const)
      assert.match(now, new RegExp(`: ${ports[name]}: .* master ${NET} `));
    for (const name of NAMES) {
      const g = JSON.parse(d.ok(['info', name, '--format', 'json'])) as { status: string };
      assert.equal(g.status, 'Running', `${name} is still running`);
    }
    assert.ok(pings('mv', 'mp.trivisor'));
    assert.ok(pings('mp', 'mc.trivisor'));
    assert.ok(pings('mc', 'mv.trivisor'));
  });

  test('stop removes the taps and their filters; start brings them back; delete removes them', async () => {
    for (const name of ['mv', 'mp'] as const) {
      const port = ports[name] ?? '';
      d.ok(['stop', '--force', name]);
      assert.doesNotMatch(links(), new RegExp(`: ${port}[:@]`), `${name}'s tap went with the stop`);
      assert.ok(!hasPortFilter(port), `${name}'s anti-spoofing chain went with the stop`);
    }
    d.ok(['start', 'mp']);
    assert.match(links(), new RegExp(`: ${ports.mp}: .* master ${NET} `));
    // Running is said once UML runs; its init configures eth0 a moment later (seconds, under load).
    await eventually(
      'a restarted pvm guest has its network back',
      () => pings('mp', addressOf('mc')),
      60_000,
    );
    for (const name of ['mv', 'mp'] as const) {
      d.ok(['delete', '--force', name]);
      assert.doesNotMatch(links(), new RegExp(`: ${ports[name]}[:@]`));
    }
  });
});
