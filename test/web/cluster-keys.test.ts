import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clusterKeyHelp, DEFAULT_REBALANCE_SETTINGS, rebalanceSettings } from '../../src/core/config-keys.ts';
import { DEFAULT_POWER_SETTINGS, powerKeyHelp, powerSettings } from '../../src/core/power-keys.ts';
import {
  MEMBER_POWER_FIELDS,
  memberPowerKey,
  memberPowerPatch,
  POWER_DRIVERS,
  POWER_KEYS,
  REBALANCE_KEYS,
  settingsPatch,
} from '../../web/src/cluster-keys.ts';

test("the Members page offers exactly the daemon's cluster keys, each with the daemon's default", () => {
  assert.deepEqual(
    REBALANCE_KEYS.map((k) => k.key).sort(),
    Object.keys(clusterKeyHelp())
      .filter((k) => k.startsWith('cluster.rebalance.'))
      .sort(),
  );
  for (const k of REBALANCE_KEYS) {
    // Set to what the page calls its default, the key changes nothing.
    assert.deepEqual(rebalanceSettings({ [k.key]: k.defaultValue }), DEFAULT_REBALANCE_SETTINGS, k.key);
  }
});

test('a settings form sends only what changed: an emptied field unsets its key, an unchanged one is not sent', () => {
  const current = { 'cluster.rebalance.interval': '10m', 'cluster.rebalance.window': '1h' };
  assert.equal(settingsPatch(current, { ...current }), null);
  assert.deepEqual(
    settingsPatch(current, {
      'cluster.rebalance.interval': '',
      'cluster.rebalance.window': '1h',
      'cluster.rebalance.threshold': ' 20 ',
    }),
    { 'cluster.rebalance.interval': null, 'cluster.rebalance.threshold': '20' },
  );
  // An empty field of a key that is not set sends nothing.
  assert.equal(settingsPatch({}, { 'cluster.rebalance.cooldown': '' }), null);
});

test("the Members page offers exactly the daemon's power keys, each with the daemon's default and help", () => {
  const help = powerKeyHelp();
  assert.deepEqual(
    POWER_KEYS.map((k) => k.key).sort(),
    Object.keys(help)
      .filter((k) => k.startsWith('cluster.power.'))
      .sort(),
  );
  for (const k of POWER_KEYS) {
    assert.deepEqual(powerSettings({ [k.key]: k.defaultValue }).settings, DEFAULT_POWER_SETTINGS, k.key);
    assert.equal(k.hint, help[k.key], k.key);
    assert.ok(k.hint.includes(`(default ${k.defaultValue})`), k.key);
  }
  // A member's fields: the daemon's, with its help; the BMC's password only ever as a file.
  assert.deepEqual(
    MEMBER_POWER_FIELDS.map((f) => `member.NAME.power.${f.field}`).sort(),
    Object.keys(help)
      .filter((k) => k.startsWith('member.NAME.power.'))
      .sort(),
  );
  for (const f of MEMBER_POWER_FIELDS) assert.equal(f.hint, help[`member.NAME.power.${f.field}`], f.field);
  assert.ok(!MEMBER_POWER_FIELDS.some((f) => /password(?!_file)/.test(f.field)));
});

test("each driver's required fields are what the daemon refuses it without", () => {
  const filled: Record<string, string> = {
    'ipmi.host': '198.18.0.9',
    'ipmi.user': 'admin',
    'ipmi.password_file': '/etc/trivisor/bmc-pass',
    'wol.mac': '52:54:00:12:34:56',
    on: 'true',
    off: 'true',
  };
  for (const driver of POWER_DRIVERS) {
    const required = MEMBER_POWER_FIELDS.filter((f) => f.requiredFor?.includes(driver)).map((f) => f.field);
    const config = (fields: string[]) =>
      Object.fromEntries([
        [memberPowerKey('m1', 'driver'), driver],
        ...fields.map((f) => [memberPowerKey('m1', f), filled[f] as string]),
      ]);
    assert.equal(powerSettings(config(required)).members.get('m1')?.driver, driver);
    for (const missing of required) {
      assert.throws(() => powerSettings(config(required.filter((f) => f !== missing))), /needs/, missing);
    }
  }
});

test("a member's power form sends its driver's fields, unsets the rest of its keys, and touches no other member's", () => {
  const current = {
    'member.m1.power.driver': 'ipmi',
    'member.m1.power.ipmi.host': '198.18.0.9',
    'member.m1.power.ipmi.user': 'admin',
    'member.m1.power.ipmi.password_file': '/etc/bmc',
    'member.m2.power.driver': 'command',
    'cluster.power.enabled': 'true',
  };
  assert.equal(
    memberPowerPatch('m1', current, 'ipmi', {
      'ipmi.host': '198.18.0.9',
      'ipmi.user': 'admin',
      'ipmi.password_file': '/etc/bmc',
    }),
    null,
  );
  assert.deepEqual(
    memberPowerPatch('m1', current, 'command', { on: ' wake m1 ', off: 'halt m1', 'ipmi.host': 'x' }),
    {
      'member.m1.power.driver': 'command',
      'member.m1.power.ipmi.host': null,
      'member.m1.power.ipmi.user': null,
      'member.m1.power.ipmi.password_file': null,
      'member.m1.power.on': 'wake m1',
      'member.m1.power.off': 'halt m1',
    },
  );
  assert.deepEqual(memberPowerPatch('m2', current, '', {}), { 'member.m2.power.driver': null });
});
