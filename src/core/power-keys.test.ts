import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DEFAULT_POWER_SETTINGS, isPowerKey, powerSettings } from './power-keys.ts';

describe('power keys', () => {
  test('off by default; cluster.power.* tune the policy; the rebalancer keys are not power keys', () => {
    assert.deepEqual(powerSettings({ 'cluster.rebalance.window': '1m' }).settings, DEFAULT_POWER_SETTINGS);
    const { settings } = powerSettings({
      'cluster.power.enabled': 'true',
      'cluster.power.low_window': '2m',
      'cluster.power.high_window': '30s',
      'cluster.power.low_load': '50',
      'cluster.power.on_at': '10',
      'cluster.power.off_below': '90',
      'cluster.power.min_on': '1h',
      'cluster.power.max_cycles': '2',
    });
    assert.deepEqual(settings, {
      enabled: true,
      lowWindowMs: 120_000,
      highWindowMs: 30_000,
      lowLoad: 0.5,
      powerOnAt: 0.1,
      powerOffBelow: 0.9,
      minOnMs: 3_600_000,
      maxCyclesPerDay: 2,
    });
    assert.equal(isPowerKey('cluster.rebalance.enabled'), false);
    assert.equal(isPowerKey('member.m3.power.driver'), true);
  });

  test("each member's driver, with its defaults", () => {
    const { members } = powerSettings({
      'member.m3.power.driver': 'command',
      'member.m3.power.on': 'echo on',
      'member.m3.power.off': 'echo off',
      'member.m3.power.boot_delay': '20s',
      'member.m4.power.driver': 'ipmi',
      'member.m4.power.ipmi.host': '198.18.0.4',
      'member.m4.power.ipmi.user': 'admin',
      'member.m4.power.ipmi.password_file': '/etc/trivisor/bmc',
      'member.m5.power.driver': 'wol',
      'member.m5.power.wol.mac': '52:54:00:AA:BB:CC',
      'member.m5.power.off': 'ssh m5 poweroff',
    });
    assert.deepEqual(Object.fromEntries(members), {
      m3: { driver: 'command', bootDelayMs: 20_000, on: 'echo on', off: 'echo off' },
      m4: {
        driver: 'ipmi',
        bootDelayMs: 300_000,
        ipmiHost: '198.18.0.4',
        ipmiUser: 'admin',
        ipmiPasswordFile: '/etc/trivisor/bmc',
      },
      m5: { driver: 'wol', bootDelayMs: 300_000, wolMac: '52:54:00:aa:bb:cc', off: 'ssh m5 poweroff' },
    });
  });

  test('bad keys are one line each', () => {
    for (const [config, why] of [
      [{ 'cluster.power.enabled': 'yes' }, /cluster.power.enabled must be true or false/],
      [{ 'cluster.power.low_window': '1s' }, /must be a duration from 10s/],
      [{ 'cluster.power.low_load': '0' }, /must be a percentage above 0/],
      [{ 'cluster.power.max_cycles': '9' }, /must be 1, 2, 3 or 4/],
      [{ 'cluster.power.high_window': '1h' }, /must not be longer than cluster.power.low_window/],
      [{ 'cluster.power.nothing': '1' }, /Unknown cluster key "cluster.power.nothing"/],
      [{ 'member.m3.power.on': 'x' }, /member.m3.power.driver must be set/],
      [{ 'member.m3.power.driver': 'pdu' }, /must be ipmi, wol or command/],
      [{ 'member.m3.power.driver': 'command', 'member.m3.power.on': 'x' }, /needs member.m3.power.off$/],
      [
        { 'member.m3.power.driver': 'wol', 'member.m3.power.wol.mac': '52:54:00:aa:bb:cc' },
        /only wakes a host\) needs member.m3.power.off/,
      ],
      [
        {
          'member.m3.power.driver': 'ipmi',
          'member.m3.power.ipmi.host': 'bmc',
          'member.m3.power.ipmi.user': 'u',
          'member.m3.power.ipmi.password_file': 'secret',
        },
        /must be an absolute path/,
      ],
      [
        { 'member.m3.power.driver': 'wol', 'member.m3.power.wol.mac': 'nope', 'member.m3.power.off': 'x' },
        /must be a MAC address/,
      ],
      [{ 'member.m3.power.driver': 'command', 'member.m3.power.colour': 'x' }, /Unknown member power key/],
      [{ 'member.M3.power.driver': 'command' }, /Unknown cluster key "member.M3.power.driver"/],
    ] as const) {
      assert.throws(
        () => powerSettings(config),
        (e: Error) => why.test(e.message) && !e.message.includes('\n'),
        JSON.stringify(config),
      );
    }
  });
});
