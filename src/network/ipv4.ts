import { createHash } from 'node:crypto';
import { failedPrecondition, invalidArgument, type TrivisorError } from '../core/errors.ts';

/** An IPv4 interface address: the gateway's address and its subnet. */
export interface Ipv4Cidr {
  /** The address as written, e.g. 198.18.10.1. */
  address: string;
  prefixLength: number;
  /** Address as an unsigned 32-bit number. */
  value: number;
  /** First address of the subnet (the network address), as a number. */
  network: number;
  /** Last address of the subnet (broadcast), as a number. */
  broadcast: number;
}

/** Parses a dotted quad; undefined when it is not one. */
export function parseIpv4(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    value = value * 256 + n;
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(value / 2 ** s) % 256).join('.');
}

/** Parses `198.18.10.1/24`; throws InvalidArgument for anything else. */
export function parseCidr(text: string, what = 'ipv4.address'): Ipv4Cidr {
  const m = /^([0-9.]+)\/([0-9]{1,2})$/.exec(text);
  const value = m?.[1] === undefined ? undefined : parseIpv4(m[1]);
  const prefixLength = Number(m?.[2]);
  if (!m || value === undefined || prefixLength > 32) {
    throw invalidArgument(
      `${what} ${JSON.stringify(text)} is not an IPv4 address with a prefix length, like 198.18.10.1/24`,
    );
  }
  const size = 2 ** (32 - prefixLength);
  const network = Math.floor(value / size) * size;
  return { address: m[1] as string, prefixLength, value, network, broadcast: network + size - 1 };
}

/** The gateway address of a network: an address with a /8 to /30 prefix that is neither network nor broadcast. */
export function parseGatewayCidr(text: string, what = 'ipv4.address'): Ipv4Cidr {
  const c = parseCidr(text, what);
  if (c.prefixLength < 8 || c.prefixLength > 30) {
    throw invalidArgument(`${what} ${text} has a /${c.prefixLength} prefix: use a prefix from /8 to /30`);
  }
  if (c.value === c.network || c.value === c.broadcast) {
    throw invalidArgument(
      `${what} ${text} is the network or broadcast address of its subnet: give the gateway's address, like ${formatIpv4(c.network + 1)}/${c.prefixLength}`,
    );
  }
  return c;
}

/** The subnet in CIDR notation, e.g. 198.18.10.0/24. */
export function subnetOf(c: Ipv4Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefixLength}`;
}

export function overlaps(a: Ipv4Cidr, b: Ipv4Cidr): boolean {
  return a.network <= b.broadcast && b.network <= a.broadcast;
}

export function contains(c: Ipv4Cidr, address: number): boolean {
  return address >= c.network && address <= c.broadcast;
}

/** Addresses DHCP hands out: every host address of the subnet but the gateway. */
export function dhcpRange(c: Ipv4Cidr): { first: number; last: number } {
  return { first: c.network + 1, last: c.broadcast - 1 };
}

/** How many guest NICs a network's subnet holds: its host addresses but the gateway (253 on a /24). */
export function nicCapacity(c: Ipv4Cidr): number {
  const { first, last } = dhcpRange(c);
  return last - first + 1 - (c.value >= first && c.value <= last ? 1 : 0);
}

/** The smallest prefix length whose subnet holds `nics` NICs beside the gateway (/24 at most). */
export function prefixFor(nics: number): number {
  let prefix = 24;
  while (prefix > 8 && 2 ** (32 - prefix) - 3 < nics) prefix--;
  return prefix;
}

/**
 * The error for a NIC on a network whose every address is taken (decision 0068): how many the
 * subnet holds, and what to do (a network's subnet is fixed while it has NICs).
 */
export function networkFull(network: string, c: Ipv4Cidr): TrivisorError {
  const wider = Math.max(8, c.prefixLength - 3);
  return failedPrecondition(
    `Network ${network} has no free address left: its subnet ${subnetOf(c)} holds ${nicCapacity(c)} NICs; put more guests on a network with a shorter prefix (a /${wider} holds ${2 ** (32 - wider) - 3})`,
  );
}

/** The lowest host address of the subnet that is neither the gateway nor in `used`; undefined when full. */
export function allocateAddress(c: Ipv4Cidr, used: ReadonlySet<number>): number | undefined {
  const { first, last } = dhcpRange(c);
  for (let a = first; a <= last; a++) {
    if (a !== c.value && !used.has(a)) return a;
  }
  return undefined;
}

/**
 * A MAC address stable for one NIC of one guest: locally administered, unicast
 * (02:…), derived from a hash so a restart or a daemon restart gives the same one.
 */
export function stableMac(guest: string, nic: string): string {
  const h = createHash('sha256').update(`${guest}/${nic}`).digest();
  return ['02', ...[...h.subarray(0, 5)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Throws InvalidArgument unless `mac` is a unicast MAC address in lower-case colon form. */
export function assertUnicastMac(mac: string, what = 'hwaddr'): void {
  if (!MAC.test(mac) || (Number.parseInt(mac.slice(0, 2), 16) & 1) === 1) {
    throw invalidArgument(
      `${what} ${JSON.stringify(mac)} is not a unicast MAC address like 02:00:00:00:00:01`,
    );
  }
}

const RATE_UNITS: Record<string, number> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9 };

/** Parses a bandwidth like `10Mbit`, `500kbit` or `1Gbit` into bits per second (Incus's limits.ingress syntax). */
export function parseBitRate(text: string, what = 'bandwidth'): number {
  const m = /^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)$/i.exec(text.trim());
  const unit = m?.[2] === undefined ? undefined : RATE_UNITS[m[2].toLowerCase()];
  const bits = m && unit ? Math.round(Number(m[1]) * unit) : Number.NaN;
  if (!Number.isFinite(bits) || bits < 8000 || bits > 100e9) {
    throw invalidArgument(
      `${what} ${JSON.stringify(text)} is not a bandwidth from 8kbit to 100Gbit, like 10Mbit`,
    );
  }
  return bits;
}
