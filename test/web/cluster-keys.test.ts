import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clusterKeyHelp, DEFAULT_REBALANCE_SETTINGS, rebalanceSettings } from '../../src/core/config-keys.ts';
import { REBALANCE_KEYS, settingsPatch } from '../../web/src/cluster-keys.ts';

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
