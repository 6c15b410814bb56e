/*
 * The rebalancer's cluster-wide keys (decision 0053) as the Members page offers them. The API
 * answers only the keys that are set, not their defaults nor their meaning, so these repeat
 * src/core/config-keys.ts (which the page cannot import: it pulls in a cron parser);
 * test/web/cluster-keys.test.ts fails when a key or a default changes there without here.
 */

/** One editable key: its default (what an unset key means) and a line on what it does. */
export interface ClusterKey {
  key: string;
  label: string;
  defaultValue: string;
  hint: string;
}

export const REBALANCE_KEYS: readonly ClusterKey[] = [
  {
    key: 'cluster.rebalance.enabled',
    label: 'Runs by itself',
    defaultValue: 'true',
    hint: 'true or false; "Rebalance now" works either way',
  },
  {
    key: 'cluster.rebalance.interval',
    label: 'Interval',
    defaultValue: '5m',
    hint: 'how often a cycle runs: 30s, 5m, 1h (a bare number is minutes)',
  },
  {
    key: 'cluster.rebalance.threshold',
    label: 'Threshold (%)',
    defaultValue: '10',
    hint: "target imbalance: the members' loads' standard deviation below which only overloads move",
  },
  {
    key: 'cluster.rebalance.aggressiveness',
    label: 'Aggressiveness',
    defaultValue: '3',
    hint: '1 (only relieve overloaded members) to 5 (chase small gains)',
  },
  {
    key: 'cluster.rebalance.cooldown',
    label: 'Cooldown',
    defaultValue: '1h',
    hint: 'how long a moved guest stays where it went',
  },
  {
    key: 'cluster.rebalance.window',
    label: 'Window',
    defaultValue: '1h',
    hint: 'the measured demand balanced, up to 1d (up to 15m in 10 s steps)',
  },
  {
    key: 'cluster.rebalance.percentile',
    label: 'Percentile',
    defaultValue: '95',
    hint: "the percentile of a member's load over the window that counts",
  },
];

/**
 * The change a settings form asks for: a field left empty unsets its key (the default then
 * applies), a value equal to what is set is not sent; null when nothing changed.
 */
export function settingsPatch(
  current: Record<string, string>,
  entered: Record<string, string>,
): Record<string, string | null> | null {
  const patch: Record<string, string | null> = {};
  for (const { key } of REBALANCE_KEYS) {
    const value = (entered[key] ?? '').trim();
    if (value === '') {
      if (key in current) patch[key] = null;
    } else if (current[key] !== value) patch[key] = value;
  }
  return Object.keys(patch).length === 0 ? null : patch;
}
