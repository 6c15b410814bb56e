import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import type { MemberPowerConfig } from '../core/power-keys.ts';
import { silentLogger } from '../host/logger.ts';
import { createPowerDriver } from './power-driver.ts';
import { dgramSend, magicPacket } from './wol-driver.ts';

const log = silentLogger();
const config = (c: Partial<MemberPowerConfig>): MemberPowerConfig => ({
  driver: 'command',
  bootDelayMs: 60_000,
  ...c,
});

describe('power drivers', () => {
  test('command: on and off run sh -c with the member and the action in the environment; status reads on or off', async () => {
    const runner = fakeRunner((argv) => (argv[2] === 'bmc-status m3' ? { stdout: 'OFF\n' } : undefined));
    const d = createPowerDriver('m3', config({ on: 'pdu on 3', off: 'pdu off 3', status: 'bmc-status m3' }), {
      runner,
      log,
    });
    assert.equal(d.kind, 'command');
    await d.powerOff();
    await d.powerOn();
    assert.equal(await d.status(), 'off');
    assert.deepEqual(runner.commands(), ['sh -c pdu off 3', 'sh -c pdu on 3', 'sh -c bmc-status m3']);
    assert.deepEqual(
      runner.calls.map((c) => (c.options as { env?: Record<string, string> }).env),
      ['off', 'on', 'status'].map((a) => ({ TRIVISOR_POWER_MEMBER: 'm3', TRIVISOR_POWER_ACTION: a })),
    );
  });

  test('command: a failing command is an error naming it; no status command is unknown', async () => {
    const runner = fakeRunner(() => ({ code: 3, stderr: 'no such outlet' }));
    const d = createPowerDriver('m3', config({ on: 'pdu on 9', off: 'pdu off 9' }), { runner, log });
    await assert.rejects(d.powerOff(), /sh failed \(exit 3\): no such outlet/);
    assert.equal(await d.status(), 'unknown');
  });

  test('ipmi: ipmitool lanplus chassis power, the password read from a file (-f), never on the command line', async () => {
    const runner = fakeRunner((argv) =>
      argv.at(-1) === 'status' ? { stdout: 'Chassis Power is on\n' } : undefined,
    );
    const d = createPowerDriver(
      'm3',
      config({
        driver: 'ipmi',
        ipmiHost: '198.18.5.3',
        ipmiUser: 'admin',
        ipmiPasswordFile: '/etc/trivisor/bmc-m3',
      }),
      { runner, log },
    );
    await d.powerOff();
    await d.powerOn();
    assert.equal(await d.status(), 'on');
    assert.deepEqual(runner.commands(), [
      'ipmitool -R 2 -N 2 -I lanplus -H 198.18.5.3 -U admin -f /etc/trivisor/bmc-m3 chassis power off',
      'ipmitool -R 2 -N 2 -I lanplus -H 198.18.5.3 -U admin -f /etc/trivisor/bmc-m3 chassis power on',
      'ipmitool -R 2 -N 2 -I lanplus -H 198.18.5.3 -U admin -f /etc/trivisor/bmc-m3 chassis power status',
    ]);
    const withPort = createPowerDriver(
      'm3',
      config({
        driver: 'ipmi',
        ipmiHost: 'bmc',
        ipmiPort: 9623,
        ipmiUser: 'u',
        ipmiPasswordFile: '/p',
        ipmiInterface: 'lan',
      }),
      { runner, log },
    );
    await withPort.powerOn();
    assert.equal(
      runner.commands().at(-1),
      'ipmitool -R 2 -N 2 -I lan -H bmc -p 9623 -U u -f /p chassis power on',
    );
  });

  test('wol: the magic packet is 6 x ff then the MAC 16 times, sent to the broadcast and port; power-off is the off command', async () => {
    const packet = magicPacket('52:54:00:AB:cd:01');
    assert.equal(packet.length, 102);
    assert.equal(packet.subarray(0, 6).toString('hex'), 'ffffffffffff');
    for (let i = 0; i < 16; i++) {
      assert.equal(packet.subarray(6 + i * 6, 12 + i * 6).toString('hex'), '525400abcd01');
    }
    assert.throws(() => magicPacket('52:54:00'), /not a MAC address/);
    const sent: Array<{ hex: string; address: string; port: number }> = [];
    const runner = fakeRunner();
    const d = createPowerDriver(
      'm3',
      config({
        driver: 'wol',
        wolMac: '52:54:00:ab:cd:01',
        wolBroadcast: '198.18.5.255',
        off: 'ssh m3 poweroff',
      }),
      {
        runner,
        log,
        udpSend: async (p, to) => {
          sent.push({ hex: p.toString('hex'), ...to });
        },
      },
    );
    await d.powerOn();
    assert.deepEqual(sent, [{ hex: packet.toString('hex'), address: '198.18.5.255', port: 9 }]);
    await d.powerOff();
    assert.deepEqual(runner.commands(), ['sh -c ssh m3 poweroff']);
  });

  test('wol: node:dgram really sends the packet (received on a UDP socket of the loopback)', async () => {
    const socket = createSocket('udp4');
    const got = new Promise<Buffer>((resolve) => socket.once('message', (m) => resolve(m)));
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    try {
      const packet = magicPacket('52:54:00:ab:cd:02');
      await dgramSend(packet, { address: '127.0.0.1', port: socket.address().port });
      assert.deepEqual(await got, packet);
    } finally {
      socket.close();
    }
  });
});
