import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { GuestSpec } from '../core/types.ts';
import type { ExecSession } from './guest-driver.ts';
import { NIC_PROBE_SCRIPT, nicUpScript, parseNicProbe, probeGuestNics } from './guest-nic.ts';

// What the probe printed in a pvm guest (busybox ip), with a second NIC that is down.
const BUSYBOX = [
  'link eth0 02:37:7d:ab:da:6b 0x1003',
  'link eth1 02:37:7d:ab:da:6c 0x1002',
  '2: eth0    inet 198.18.241.2/24 scope global eth0\\       valid_lft forever preferred_lft forever',
  '3: eth1    inet 198.18.242.9/24 scope global eth1\\       valid_lft forever preferred_lft forever',
  '',
].join('\n');

test('parseNicProbe() reads interfaces, MACs, the up flag and IPv4 addresses', () => {
  assert.deepEqual(parseNicProbe(BUSYBOX), [
    { name: 'eth0', mac: '02:37:7d:ab:da:6b', up: true, addresses: ['198.18.241.2'] },
    { name: 'eth1', mac: '02:37:7d:ab:da:6c', up: false, addresses: ['198.18.242.9'] },
  ]);
});

test("parseNicProbe() reads iproute2's one-line output too, and ignores loopback and noise", () => {
  const out = [
    'link ens3 52:54:00:12:34:56 0x1003',
    '1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever',
    '2: ens3    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic ens3\\       valid_lft 86000sec',
    '2: ens3    inet 10.0.2.16/24 scope global secondary ens3',
    'cat: read error: Invalid argument',
  ].join('\n');
  assert.deepEqual(parseNicProbe(out), [
    { name: 'ens3', mac: '52:54:00:12:34:56', up: true, addresses: ['10.0.2.15', '10.0.2.16'] },
  ]);
});

const spec = { name: 'g1' } as GuestSpec;
const session = (output: string, exit: Promise<number>): ExecSession => {
  const stdout = new PassThrough();
  stdout.end(output);
  return {
    stdin: new PassThrough(),
    stdout,
    stderr: new PassThrough().end() as PassThrough,
    resize() {},
    signal() {},
    exit,
  };
};

test('probeGuestNics() runs the probe with the kit busybox and parses what it prints', async () => {
  let argv: string[] = [];
  const ifs = await probeGuestNics(
    async (_s, o) => {
      argv = o.command;
      return session(BUSYBOX, Promise.resolve(0));
    },
    spec,
    { timeoutMs: 1000 },
  );
  assert.deepEqual(argv, ['/.trivisor/busybox', 'sh', '-c', NIC_PROBE_SCRIPT]);
  assert.equal(ifs.length, 2);
});

test('probeGuestNics() is Unavailable when the agent fails or does not answer in time', async () => {
  await assert.rejects(
    probeGuestNics(async () => session('', Promise.resolve(1)), spec, { timeoutMs: 1000 }),
    (e: Error & { code?: string }) =>
      e.code === 'Unavailable' && /could not list its interfaces/.test(e.message),
  );
  await assert.rejects(
    probeGuestNics(async () => session('', new Promise(() => {})), spec, { timeoutMs: 50 }),
    (e: Error & { code?: string }) =>
      e.code === 'Unavailable' && /did not answer within 50ms/.test(e.message),
  );
  await assert.rejects(
    probeGuestNics(
      async () => {
        throw new Error('connect ENOENT');
      },
      spec,
      { timeoutMs: 1000 },
    ),
    (e: Error & { code?: string }) => e.code === 'Unavailable' && /connect ENOENT/.test(e.message),
  );
});

test('parseNicProbe() keeps 16 addresses per interface, however many the guest reports', () => {
  const lines = ['link eth0 02:00:00:00:00:01 0x1003'];
  for (let i = 0; i < 40; i++) lines.push(`2: eth0    inet 10.0.0.${i}/24 scope global eth0`);
  assert.equal(parseNicProbe(lines.join('\n'))[0]?.addresses.length, 16);
});

test("nicUpScript() gives a hot-plugged NIC the network's MTU before it comes up, when told one", () => {
  const nic = { name: 'eth1', mac: '02:00:00:00:00:09', cidr: '198.18.10.9/24' };
  const lines = nicUpScript({ ...nic, mtu: 1450 }).split('\n');
  const mtu = lines.indexOf('/.trivisor/busybox ip link set dev "$dev" mtu 1450');
  const up = lines.indexOf('/.trivisor/busybox ip link set dev "$dev" up');
  assert.ok(mtu > 0 && up > mtu, lines.join('\n'));
  assert.doesNotMatch(nicUpScript(nic), / mtu /);
});
