import { isIP } from 'node:net';
import { parseDurationMs } from './durations.ts';
import { invalidArgument } from './errors.ts';

/**
 * Power management's keys (issue 14 §3, decision 0055), in the cluster's settings map beside
 * `cluster.rebalance.*` (`trivisor cluster set KEY=VALUE`): `cluster.power.*` for the policy, and
 * per member `member.NAME.power.*` for its driver. Off by default: nothing is ever powered off
 * unless `cluster.power.enabled=true` and the member has a driver.
 */
export interface PowerSettings {
  enabled: boolean;
  /** The long window a member's load must stay low over before it is emptied. */
  lowWindowMs: number;
  /** The short window whose rising demand powers members on. */
  highWindowMs: number;
  /** A member below this load (a fraction) over the long window is a candidate. */
  lowLoad: number;
  /** Members are powered on when demand passes this share of what is on, less one member's failure. */
  powerOnAt: number;
  /** A member is powered off only when the long window's peak stays below this share without it. */
  powerOffBelow: number;
  /** A member powered on stays on at least this long. */
  minOnMs: number;
  maxCyclesPerDay: number;
}

export const DEFAULT_POWER_SETTINGS: PowerSettings = {
  enabled: false,
  lowWindowMs: 40 * 60_000,
  highWindowMs: 10 * 60_000,
  lowLoad: 0.85,
  powerOnAt: 1,
  powerOffBelow: 1,
  minOnMs: 60 * 60_000,
  maxCyclesPerDay: 4,
};

/** How a member is powered on and off (`member.NAME.power.*`). */
export interface MemberPowerConfig {
  driver: 'ipmi' | 'wol' | 'command';
  /** From power-on until its daemon is back (default 5 min). */
  bootDelayMs: number;
  /** The command driver's (and Wake-on-LAN's power-off and status). */
  on?: string;
  off?: string;
  status?: string;
  ipmiHost?: string;
  ipmiPort?: number;
  ipmiUser?: string;
  ipmiPasswordFile?: string;
  ipmiInterface?: 'lan' | 'lanplus';
  wolMac?: string;
  wolBroadcast?: string;
  wolPort?: number;
}

export const DEFAULT_BOOT_DELAY_MS = 5 * 60_000;

const POWER_DRIVERS = ['ipmi', 'wol', 'command'] as const;

function durationMs(v: string, key: string, minMs: number, maxMs: number): number {
  const ms = /^\d{1,9}[smhdw]$/.test(v) ? parseDurationMs(v, key) : -1;
  if (!(ms >= minMs && ms <= maxMs)) {
    throw invalidArgument(
      `${key}=${JSON.stringify(v)} must be a duration from ${minMs / 1000}s to ${maxMs / 3_600_000}h, e.g. 30s, 10m or 1h`,
    );
  }
  return ms;
}

function percent(v: string, key: string): number {
  const n = /^\d{1,3}(\.\d+)?$/.test(v) ? Number(v) : Number.NaN;
  if (!(n > 0 && n <= 100))
    throw invalidArgument(`${key}=${JSON.stringify(v)} must be a percentage above 0 and at most 100`);
  return n / 100;
}

const POWER_KEYS: Record<string, { help: string; apply(v: string, s: PowerSettings, key: string): void }> = {
  'cluster.power.enabled': {
    help: 'whether members whose load stays low are evacuated and powered off, and powered on again when demand rises (default false)',
    apply(v, s, key) {
      if (v !== 'true' && v !== 'false')
        throw invalidArgument(`${key} must be true or false, got ${JSON.stringify(v)}`);
      s.enabled = v === 'true';
    },
  },
  'cluster.power.low_window': {
    help: "the window a member's load must stay low over before it is powered off (default 40m)",
    apply(v, s, key) {
      s.lowWindowMs = durationMs(v, key, 10_000, 24 * 3_600_000);
    },
  },
  'cluster.power.high_window': {
    help: 'the window whose rising demand powers members on (default 10m)',
    apply(v, s, key) {
      s.highWindowMs = durationMs(v, key, 10_000, 24 * 3_600_000);
    },
  },
  'cluster.power.low_load': {
    help: 'a member whose load stays below this percentage over the low window is a candidate for power-off (default 85)',
    apply(v, s, key) {
      s.lowLoad = percent(v, key);
    },
  },
  'cluster.power.on_at': {
    help: "members are powered on when demand passes this percentage of what is on, less one member's failure (default 100)",
    apply(v, s, key) {
      s.powerOnAt = percent(v, key);
    },
  },
  'cluster.power.off_below': {
    help: "a member is powered off only when the low window's peak stays below this percentage of what stays on, less one member's failure (default 100)",
    apply(v, s, key) {
      s.powerOffBelow = percent(v, key);
    },
  },
  'cluster.power.min_on': {
    help: 'how long a member powered on stays on at least (default 1h)',
    apply(v, s, key) {
      s.minOnMs = durationMs(v, key, 10_000, 7 * 24 * 3_600_000);
    },
  },
  'cluster.power.max_cycles': {
    help: 'how many times a day a member may be powered off at most, 1 to 4 (default 4)',
    apply(v, s, key) {
      if (!/^[1-4]$/.test(v)) throw invalidArgument(`${key}=${JSON.stringify(v)} must be 1, 2, 3 or 4`);
      s.maxCyclesPerDay = Number(v);
    },
  },
};

/** A member's key: `member.NAME.power.FIELD`. */
const MEMBER_KEY = /^member\.([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)\.power\.(.+)$/;

const MEMBER_FIELDS: Record<string, string> = {
  driver: 'ipmi, wol or command',
  boot_delay: 'from power-on until its daemon is back, e.g. 3m (default 5m)',
  on: "the command driver's power-on command (sh -c, TRIVISOR_POWER_MEMBER set)",
  off: "the command and wol drivers' power-off command",
  status: 'a command that prints on or off (optional)',
  'ipmi.host': "the BMC's address",
  'ipmi.port': "the BMC's UDP port (default 623)",
  'ipmi.user': 'the BMC user',
  'ipmi.password_file':
    'a file on every member holding the BMC password (ipmitool -f): never the password itself',
  'ipmi.interface': 'lanplus (default) or lan',
  'wol.mac': "the member's MAC address for Wake-on-LAN",
  'wol.broadcast': 'where the magic packet goes (default 255.255.255.255)',
  'wol.port': 'its UDP port (default 9)',
};

/** Whether `key` is power management's (the rebalancer's keys are the rest). */
export const isPowerKey = (key: string): boolean =>
  key.startsWith('cluster.power.') || key.startsWith('member.');

/** The power keys with a line of help each. */
export function powerKeyHelp(): Record<string, string> {
  return {
    ...Object.fromEntries(Object.entries(POWER_KEYS).map(([k, s]) => [k, s.help])),
    ...Object.fromEntries(Object.entries(MEMBER_FIELDS).map(([k, h]) => [`member.NAME.power.${k}`, h])),
  };
}

const port = (v: string, key: string): number => {
  const n = /^\d{1,5}$/.test(v) ? Number(v) : 0;
  if (!(n >= 1 && n <= 65535))
    throw invalidArgument(`${key}=${JSON.stringify(v)} must be a port from 1 to 65535`);
  return n;
};

function memberConfig(name: string, fields: Map<string, string>): MemberPowerConfig {
  const key = (f: string) => `member.${name}.power.${f}`;
  const driver = fields.get('driver');
  if (driver === undefined) {
    throw invalidArgument(
      `${key('driver')} must be set (ipmi, wol or command) for the other ${key('*')} keys to mean anything`,
    );
  }
  if (!(POWER_DRIVERS as readonly string[]).includes(driver)) {
    throw invalidArgument(`${key('driver')}=${JSON.stringify(driver)} must be ipmi, wol or command`);
  }
  const c: MemberPowerConfig = {
    driver: driver as MemberPowerConfig['driver'],
    bootDelayMs: DEFAULT_BOOT_DELAY_MS,
  };
  for (const [f, v] of fields) {
    const k = key(f);
    if (v.length === 0 || v.length > 1000 || v.includes('\n')) {
      throw invalidArgument(`${k} must be one line of 1 to 1000 characters`);
    }
    switch (f) {
      case 'driver':
        break;
      case 'boot_delay':
        c.bootDelayMs = durationMs(v, k, 1000, 3_600_000);
        break;
      case 'on':
        c.on = v;
        break;
      case 'off':
        c.off = v;
        break;
      case 'status':
        c.status = v;
        break;
      case 'ipmi.host':
        if (!(isIP(v) || /^[a-zA-Z0-9.-]{1,253}$/.test(v)))
          throw invalidArgument(`${k}=${JSON.stringify(v)} must be an address or a host name`);
        c.ipmiHost = v;
        break;
      case 'ipmi.port':
        c.ipmiPort = port(v, k);
        break;
      case 'ipmi.user':
        if (!/^[\w.@-]{1,32}$/.test(v))
          throw invalidArgument(
            `${k}=${JSON.stringify(v)} must be a user name of up to 32 letters, digits, . @ _ or -`,
          );
        c.ipmiUser = v;
        break;
      case 'ipmi.password_file':
        if (!v.startsWith('/'))
          throw invalidArgument(
            `${k}=${JSON.stringify(v)} must be an absolute path (a file holding the password, never the password)`,
          );
        c.ipmiPasswordFile = v;
        break;
      case 'ipmi.interface':
        if (v !== 'lan' && v !== 'lanplus')
          throw invalidArgument(`${k}=${JSON.stringify(v)} must be lanplus or lan`);
        c.ipmiInterface = v;
        break;
      case 'wol.mac':
        if (!/^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$/.test(v))
          throw invalidArgument(`${k}=${JSON.stringify(v)} must be a MAC address such as 52:54:00:12:34:56`);
        c.wolMac = v.toLowerCase();
        break;
      case 'wol.broadcast':
        if (isIP(v) !== 4) throw invalidArgument(`${k}=${JSON.stringify(v)} must be an IPv4 address`);
        c.wolBroadcast = v;
        break;
      case 'wol.port':
        c.wolPort = port(v, k);
        break;
      default:
        throw invalidArgument(
          `Unknown member power key ${JSON.stringify(k)}: known are ${Object.keys(MEMBER_FIELDS)
            .map((x) => `member.NAME.power.${x}`)
            .join(', ')}`,
        );
    }
  }
  const need = (fs: string[], why: string) => {
    const missing = fs.filter((f) => !fields.has(f));
    if (missing.length > 0) throw invalidArgument(`${why} needs ${missing.map(key).join(' and ')}`);
  };
  if (c.driver === 'command') need(['on', 'off'], `${key('driver')}=command`);
  if (c.driver === 'ipmi') need(['ipmi.host', 'ipmi.user', 'ipmi.password_file'], `${key('driver')}=ipmi`);
  // Wake-on-LAN only wakes: the member is switched off by a command (decision 0055).
  if (c.driver === 'wol') need(['wol.mac', 'off'], `${key('driver')}=wol (it only wakes a host)`);
  return c;
}

/**
 * Power management's settings and each member's driver from the cluster's keys; InvalidArgument
 * in one line for an unknown key, a bad value or a member whose driver lacks what it needs.
 * Keys that are not power keys are ignored (they are the rebalancer's).
 */
export function powerSettings(config: Record<string, string>): {
  settings: PowerSettings;
  members: Map<string, MemberPowerConfig>;
} {
  const settings: PowerSettings = { ...DEFAULT_POWER_SETTINGS };
  const perMember = new Map<string, Map<string, string>>();
  for (const [key, value] of Object.entries(config)) {
    if (!isPowerKey(key)) continue;
    if (typeof value !== 'string') throw invalidArgument(`The value of ${key} must be a string`);
    const spec = POWER_KEYS[key];
    if (spec) {
      spec.apply(value, settings, key);
      continue;
    }
    const m = MEMBER_KEY.exec(key);
    if (!m) {
      throw invalidArgument(
        `Unknown cluster key ${JSON.stringify(key)}: known power keys are ${Object.keys(powerKeyHelp()).join(', ')}`,
      );
    }
    const name = m[1] as string;
    const fields = perMember.get(name) ?? new Map<string, string>();
    fields.set(m[3] as string, value);
    perMember.set(name, fields);
  }
  const members = new Map<string, MemberPowerConfig>();
  for (const [name, fields] of [...perMember].sort(([a], [b]) => (a < b ? -1 : 1))) {
    members.set(name, memberConfig(name, fields));
  }
  if (settings.highWindowMs > settings.lowWindowMs) {
    throw invalidArgument(
      `cluster.power.high_window (${settings.highWindowMs / 1000}s) must not be longer than cluster.power.low_window (${settings.lowWindowMs / 1000}s)`,
    );
  }
  return { settings, members };
}
