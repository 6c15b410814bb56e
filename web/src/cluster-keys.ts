/*
 * The rebalancer's cluster-wide keys (decision 0053) and power management's (decision 0055) as
 * the Members page offers them. The API answers only the keys that are set, not their defaults
 * nor their meaning, so these repeat src/core/config-keys.ts and src/core/power-keys.ts (which
 * the page cannot import: they pull in a cron parser and node:net);
 * test/web/cluster-keys.test.ts fails when a key, a default or a power key's help changes there
 * without here.
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

/** Power management's cluster-wide keys; each hint is the daemon's own help line. */
export const POWER_KEYS: readonly ClusterKey[] = [
  {
    key: 'cluster.power.enabled',
    label: 'Power management',
    defaultValue: 'false',
    hint: 'whether members whose load stays low are evacuated and powered off, and powered on again when demand rises (default false)',
  },
  {
    key: 'cluster.power.low_window',
    label: 'Low window',
    defaultValue: '40m',
    hint: "the window a member's load must stay low over before it is powered off (default 40m)",
  },
  {
    key: 'cluster.power.high_window',
    label: 'High window',
    defaultValue: '10m',
    hint: 'the window whose rising demand powers members on (default 10m)',
  },
  {
    key: 'cluster.power.low_load',
    label: 'Low load (%)',
    defaultValue: '85',
    hint: 'a member whose load stays below this percentage over the low window is a candidate for power-off (default 85)',
  },
  {
    key: 'cluster.power.on_at',
    label: 'Power on at (%)',
    defaultValue: '100',
    hint: "members are powered on when demand passes this percentage of what is on, less one member's failure (default 100)",
  },
  {
    key: 'cluster.power.off_below',
    label: 'Power off below (%)',
    defaultValue: '100',
    hint: "a member is powered off only when the low window's peak stays below this percentage of what stays on, less one member's failure (default 100)",
  },
  {
    key: 'cluster.power.min_on',
    label: 'Minimum time on',
    defaultValue: '1h',
    hint: 'how long a member powered on stays on at least (default 1h)',
  },
  {
    key: 'cluster.power.max_cycles',
    label: 'Power-offs a day',
    defaultValue: '4',
    hint: 'how many times a day a member may be powered off at most, 1 to 4 (default 4)',
  },
];

/** How a member is powered on and off (`member.NAME.power.driver`). */
export const POWER_DRIVERS = ['ipmi', 'wol', 'command'] as const;
export type PowerDriver = (typeof POWER_DRIVERS)[number];

/** One field of a member's power settings (`member.NAME.power.FIELD`); the hint is the daemon's help. */
export interface MemberPowerField {
  field: string;
  label: string;
  hint: string;
  /** The drivers that use it: the form shows it only for those. */
  drivers: readonly PowerDriver[];
  /** Whether that driver is refused without it. */
  requiredFor?: readonly PowerDriver[];
}

/*
 * The password of the BMC is never a field: ipmi.password_file names a file on every member,
 * which ipmitool reads (-f), so the password is neither in the store nor in a browser.
 */
export const MEMBER_POWER_FIELDS: readonly MemberPowerField[] = [
  { field: 'driver', label: 'Driver', hint: 'ipmi, wol or command', drivers: POWER_DRIVERS },
  {
    field: 'boot_delay',
    label: 'Boot delay',
    hint: 'from power-on until its daemon is back, e.g. 3m (default 5m)',
    drivers: POWER_DRIVERS,
  },
  {
    field: 'ipmi.host',
    label: 'BMC address',
    hint: "the BMC's address",
    drivers: ['ipmi'],
    requiredFor: ['ipmi'],
  },
  { field: 'ipmi.port', label: 'BMC port', hint: "the BMC's UDP port (default 623)", drivers: ['ipmi'] },
  { field: 'ipmi.user', label: 'BMC user', hint: 'the BMC user', drivers: ['ipmi'], requiredFor: ['ipmi'] },
  {
    field: 'ipmi.password_file',
    label: 'BMC password file',
    hint: 'a file on every member holding the BMC password (ipmitool -f): never the password itself',
    drivers: ['ipmi'],
    requiredFor: ['ipmi'],
  },
  { field: 'ipmi.interface', label: 'BMC interface', hint: 'lanplus (default) or lan', drivers: ['ipmi'] },
  {
    field: 'wol.mac',
    label: 'MAC address',
    hint: "the member's MAC address for Wake-on-LAN",
    drivers: ['wol'],
    requiredFor: ['wol'],
  },
  {
    field: 'wol.broadcast',
    label: 'Broadcast address',
    hint: 'where the magic packet goes (default 255.255.255.255)',
    drivers: ['wol'],
  },
  { field: 'wol.port', label: 'Wake-on-LAN port', hint: 'its UDP port (default 9)', drivers: ['wol'] },
  {
    field: 'on',
    label: 'Power-on command',
    hint: "the command driver's power-on command (sh -c, TRIVISOR_POWER_MEMBER set)",
    drivers: ['command'],
    requiredFor: ['command'],
  },
  {
    field: 'off',
    label: 'Power-off command',
    hint: "the command and wol drivers' power-off command",
    drivers: ['command', 'wol'],
    requiredFor: ['command', 'wol'],
  },
  {
    field: 'status',
    label: 'Status command',
    hint: 'a command that prints on or off (optional)',
    drivers: ['command', 'wol'],
  },
];

/** `member.NAME.power.FIELD`. */
export const memberPowerKey = (member: string, field: string): string => `member.${member}.power.${field}`;

/**
 * The change a member's power form asks for: the chosen driver's fields as entered (an empty one
 * unset), every other of the member's power keys unset, so that what the form shows is what is
 * set; `driver` '' removes the member's power settings altogether. Null when nothing changed.
 */
export function memberPowerPatch(
  member: string,
  current: Record<string, string>,
  driver: PowerDriver | '',
  entered: Record<string, string>,
): Record<string, string | null> | null {
  const patch: Record<string, string | null> = {};
  const prefix = memberPowerKey(member, '');
  const wanted = new Map<string, string>();
  if (driver !== '') {
    wanted.set(memberPowerKey(member, 'driver'), driver);
    for (const f of MEMBER_POWER_FIELDS) {
      if (f.field === 'driver' || !f.drivers.includes(driver)) continue;
      const value = (entered[f.field] ?? '').trim();
      if (value !== '') wanted.set(memberPowerKey(member, f.field), value);
    }
  }
  for (const key of Object.keys(current)) {
    if (key.startsWith(prefix) && !wanted.has(key)) patch[key] = null;
  }
  for (const [key, value] of wanted) if (current[key] !== value) patch[key] = value;
  return Object.keys(patch).length === 0 ? null : patch;
}

/**
 * The change a settings form asks for: a field left empty unsets its key (the default then
 * applies), a value equal to what is set is not sent; null when nothing changed.
 */
export function settingsPatch(
  current: Record<string, string>,
  entered: Record<string, string>,
  keys: readonly ClusterKey[] = [...REBALANCE_KEYS, ...POWER_KEYS],
): Record<string, string | null> | null {
  const patch: Record<string, string | null> = {};
  for (const { key } of keys) {
    const value = (entered[key] ?? '').trim();
    if (value === '') {
      if (key in current) patch[key] = null;
    } else if (current[key] !== value) patch[key] = value;
  }
  return Object.keys(patch).length === 0 ? null : patch;
}
