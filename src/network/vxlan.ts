import { createHash } from 'node:crypto';
import { isIPv6 } from 'node:net';
import { stableMac } from './ipv4.ts';
import type { DhcpHost } from './network-backend.ts';

/** IANA's VXLAN port (RFC 7348): what the kernel's own default of 8472 is not. */
export const VXLAN_PORT = 4789;
/** Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) header bytes added to every frame. */
export const VXLAN_OVERHEAD = 50;
/** The same over an IPv6 underlay: its outer header is 40 bytes, 20 more than IPv4's. */
export const VXLAN6_OVERHEAD = 70;
/** Underlay MTU assumed for the members' cluster addresses (ordinary Ethernet). */
export const UNDERLAY_MTU = 1500;
/** The MTU of a network spanned over IPv4 cluster addresses, as guests are told by DHCP (option 26). */
export const SPANNED_MTU = UNDERLAY_MTU - VXLAN_OVERHEAD;
/** The TCP MSS clamped on SYNs crossing an IPv4 tunnel: the spanned MTU less IPv4 and TCP headers. */
export const SPANNED_MSS = SPANNED_MTU - 40;

/**
 * The guests' MTU on a network whose tunnel starts at `local` (this member's cluster IP): 1450
 * over IPv4, 1430 over IPv6 (decision 0101).
 */
export function spannedMtu(local: string): number {
  return UNDERLAY_MTU - (isIPv6(local) ? VXLAN6_OVERHEAD : VXLAN_OVERHEAD);
}

/** The MSS clamped on TCP SYNs crossing a tunnel of `mtu`: less the guests' IPv4 and TCP headers. */
export const spannedMss = (mtu: number): number => mtu - 40;
/** VNIs are 24 bits; 0 is left out (some switches treat it as "none"). */
export const MIN_VNI = 1;
export const MAX_VNI = 2 ** 24 - 1;

/** How a network's bridge is joined to the other members' bridges. */
export interface TunnelDefinition {
  vni: number;
  /** This member's cluster address: the source of its VXLAN packets. */
  local: string;
  /** The other members' cluster addresses: one FDB entry each (head-end replication, no multicast). */
  remotes: string[];
  /**
   * The NICs each other member may send over the tunnel, by its cluster address: those of the
   * guests it runs, and of a guest moving from or to it (decision 0050). A remote missing here
   * runs none: no IPv4 or ARP from it is taken.
   */
  nics: Record<string, NicPair[]>;
}

/** A NIC's MAC and IPv4 address, as bound to the member that runs its guest. */
export interface NicPair {
  mac: string;
  ip: string;
}

/** The VXLAN device of a network: `vx` and 10 hex of state dir and network (at most 15 characters). */
export function vxlanDevice(stateDir: string, network: string): string {
  return `vx${createHash('sha256').update(`${stateDir}\0${network}`).digest('hex').slice(0, 10)}`;
}

/**
 * The gateway's MAC on a spanned network: the same on every member (derived from the network's
 * name and VNI only), so a guest that moves, live too, keeps a valid ARP entry for its gateway.
 */
export function gatewayMac(network: string, vni: number): string {
  return stableMac(`gateway\0${vni}`, network);
}

/**
 * The IP of a member's address (`IP:PORT`, `[IPv6]:PORT` or a bare IP). An IPv6 address is
 * given in its canonical form (lower case, zeros compressed), as `ip` and `bridge` show it: the
 * FDB and the device's `local` are compared with it.
 */
export function addressHost(address: string): string {
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(address);
  if (v6?.[1]) return canonicalIpv6(v6[1]);
  if (isIPv6(address)) return canonicalIpv6(address);
  const m = /^([^:]+)(?::\d+)?$/.exec(address);
  return m?.[1] ?? address;
}

/** An IPv6 address as `ip` prints it (`FD42:0::0012` → `fd42::12`); anything else unchanged. */
export function canonicalIpv6(ip: string): string {
  if (!isIPv6(ip)) return ip;
  return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
}

/**
 * The VXLAN peers of `self`: every other member's cluster IP, unique and sorted (so the FDB
 * and the nftables set are the same text whatever order the store listed the members in).
 * Undefined when `self` is not among the members (a single host: no tunnel).
 */
export function tunnelEnds(
  members: ReadonlyArray<{ name: string; address: string }>,
  self: string,
): { local: string; remotes: string[] } | undefined {
  const me = members.find((m) => m.name === self);
  if (!me) return undefined;
  const local = addressHost(me.address);
  const remotes = [...new Set(members.filter((m) => m.name !== self).map((m) => addressHost(m.address)))]
    .filter((ip) => ip !== local)
    .sort();
  return { local, remotes };
}

/**
 * The NICs each member may send over the tunnel, by cluster IP (decision 0050): a claimed
 * address's NIC is bound to the member its guest's location names and, while the guest moves
 * (its move's mark, written before the migration), to both ends of the move, so that a live
 * move's hand-over does not leave the other members dropping the guest's frames until they have
 * seen it. A claim whose guest has no location (none recorded yet) is bound to no member.
 */
export function nicsByEnd(opts: {
  claims: ReadonlyArray<{ guest: string; mac: string; ip: string }>;
  members: ReadonlyArray<{ name: string; address: string }>;
  /** Guest name → the member that holds it. */
  locations: ReadonlyMap<string, string>;
  /** Moves under way or left unfinished. */
  moves: ReadonlyArray<{ guest: string; from: string; to: string }>;
}): Record<string, NicPair[]> {
  const ipOf = new Map(opts.members.map((m) => [m.name, addressHost(m.address)]));
  const ends = new Map<string, Set<string>>();
  const add = (guest: string, member: string | undefined) => {
    if (member === undefined) return;
    const set = ends.get(guest) ?? new Set<string>();
    set.add(member);
    ends.set(guest, set);
  };
  for (const [guest, member] of opts.locations) add(guest, member);
  for (const m of opts.moves) {
    add(m.guest, m.from);
    add(m.guest, m.to);
  }
  const out: Record<string, Set<string>> = {};
  for (const c of opts.claims) {
    for (const member of ends.get(c.guest) ?? []) {
      const ip = ipOf.get(member);
      if (ip === undefined) continue;
      out[ip] ??= new Set();
      out[ip].add(`${c.mac.toLowerCase()}\0${c.ip}`);
    }
  }
  return Object.fromEntries(
    Object.entries(out)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([ip, pairs]) => [
        ip,
        [...pairs].sort().map((p) => {
          const [mac = '', addr = ''] = p.split('\0');
          return { mac, ip: addr };
        }),
      ]),
  );
}

/** The all-zero FDB entries (`bridge fdb … 00:00:00:00:00:00 dst IP`) to add and to delete. */
export function fdbChanges(
  present: readonly string[],
  wanted: readonly string[],
): { add: string[]; remove: string[] } {
  const have = new Set(present);
  const want = new Set(wanted);
  return {
    add: [...want].filter((ip) => !have.has(ip)).sort(),
    remove: [...have].filter((ip) => !want.has(ip)).sort(),
  };
}

/** The flood destinations of a VXLAN device from `bridge -json fdb show dev DEV`. */
export function floodDestinations(json: string): string[] {
  const entries = JSON.parse(json || '[]') as Array<{ mac?: string; dst?: string }>;
  return entries.flatMap((e) => (e.mac === '00:00:00:00:00:00' && e.dst ? [e.dst] : []));
}

/** The lowest VNI no other network holds (`used`); undefined when all 2^24-1 are taken. */
export function pickVni(used: Iterable<number>): number | undefined {
  const taken = new Set(used);
  for (let vni = MIN_VNI; vni <= MAX_VNI; vni++) if (!taken.has(vni)) return vni;
  return undefined;
}

/** nftables table of a network's tunnel filters (family bridge). */
export const tunnelTable = (network: string): string => `trivisor-vx-${network}`;

/**
 * The filters on a network's VXLAN port (bridge family). The gateway is distributed: every
 * member's bridge holds the gateway address with the same MAC, so nothing of it may cross the
 * tunnel: frames from or to the host itself (output, input), ARP about the gateway address,
 * and DHCP (each guest's DHCP server is its own member's dnsmasq). What comes in from the
 * tunnel must be IPv4 or ARP from a claimed NIC's MAC with that NIC's address (the other
 * member's port filters already checked it: this holds even when they did not). TCP SYNs
 * crossing have their MSS clamped to the spanned MTU, for guests that kept an MTU of 1500.
 */
export function tunnelRuleset(def: {
  network: string;
  device: string;
  gateway: string;
  hosts: ReadonlyArray<Pick<DhcpHost, 'mac' | 'ip'>>;
  /** The tunnel's MTU (default: over IPv4, 1450): SYNs are clamped to it less 40. */
  mtu?: number;
}): string {
  const vx = JSON.stringify(def.device);
  const mss = spannedMss(def.mtu ?? SPANNED_MTU);
  const pairs = [...new Set(def.hosts.map((h) => `${h.mac.toLowerCase()} . ${h.ip}`))].sort();
  const fromTunnel =
    pairs.length === 0
      ? [`    iifname ${vx} drop`]
      : [
          `    iifname ${vx} ether type != { ip, arp } drop`,
          `    iifname ${vx} ether type ip ether saddr . ip saddr != { ${pairs.join(', ')} } drop`,
          `    iifname ${vx} arp saddr ether . arp saddr ip != { ${pairs.join(', ')} } drop`,
        ];
  const forward = [
    `    oifname ${vx} arp daddr ip ${def.gateway} drop`,
    `    iifname ${vx} arp daddr ip ${def.gateway} drop`,
    `    oifname ${vx} udp dport { 67, 68 } drop`,
    `    iifname ${vx} udp dport { 67, 68 } drop`,
    ...fromTunnel,
    `    oifname ${vx} tcp flags syn tcp option maxseg size > ${mss} tcp option maxseg size set ${mss}`,
    `    iifname ${vx} tcp flags syn tcp option maxseg size > ${mss} tcp option maxseg size set ${mss}`,
  ];
  const table = tunnelTable(def.network);
  const body = [
    `  chain forward {\n    type filter hook forward priority filter; policy accept;\n${forward.join('\n')}\n  }`,
    `  chain input {\n    type filter hook input priority filter; policy accept;\n    iifname ${vx} drop\n  }`,
    `  chain output {\n    type filter hook output priority filter; policy accept;\n    oifname ${vx} drop\n  }`,
  ].join('\n');
  return `add table bridge ${table}\ndelete table bridge ${table}\ntable bridge ${table} {\n${body}\n}\n`;
}

export function deleteTunnelRuleset(network: string): string {
  return `add table bridge ${tunnelTable(network)}\ndelete table bridge ${tunnelTable(network)}\n`;
}

/** A MAC as the 48-bit integer nft compares a raw payload field with (`0x525400aabbcc`). */
const macHex = (mac: string): string => `0x${mac.toLowerCase().replaceAll(':', '')}`;
/** An IPv4 address as a 32-bit hex integer (`0xc6120005`). */
const ipHex = (ip: string): string =>
  `0x${ip
    .split('.')
    .map((o) => Number(o).toString(16).padStart(2, '0'))
    .join('')}`;

/**
 * Offsets in bits from the UDP header of a VXLAN packet (UDP 8 bytes, VXLAN 8, then the inner
 * Ethernet frame): the inner ether type (byte 28), source MAC (22), IPv4 source (42), ARP's
 * sender MAC (38) and sender address (44). Raw payload matches: the ip family's hook sees the
 * packet before the VXLAN device decapsulates it, and so still knows which member sent it.
 */
const INNER = {
  /** The VXLAN header's VNI (bytes 12-14: UDP 8, then flags 1 and reserved 3). */
  vni: '@th,96,24',
  etherType: '@th,224,16',
  ipPair: '@th,176,48 . @th,336,32',
  arpPair: '@th,304,48 . @th,352,32',
};

/**
 * The input rules of a network's ip table. VXLAN is accepted from the other members' cluster
 * addresses only (it is unauthenticated: anyone else could inject frames onto the bridge), and
 * from each member R only IPv4 and ARP whose inner (source MAC, source address) is a NIC of a
 * guest R runs or that moves from or to R (`nics`): a member cannot bring onto this bridge the
 * MAC or address of a NIC another member runs (decision 0050). Other ether types are dropped at
 * the VXLAN port (the tunnel's bridge table).
 */
export function vxlanInputRules(
  remotes: readonly string[],
  nics: Readonly<Record<string, NicPair[]>>,
  options: {
    /** The underlay's family: `ip6` for the ip6 table of a tunnel over IPv6 (decision 0101). */
    family?: 'ip' | 'ip6';
    /**
     * The network's VNI: a member's rules judge that network's packets only. Every network's
     * table sees every VXLAN packet on the input hook, and one drop is final: without it, a
     * second spanned network dropped the first one's frames from a member (decision 0101).
     */
    vni?: number;
  } = {},
): string[] {
  const family = options.family ?? 'ip';
  if (remotes.length === 0) return [`    udp dport ${VXLAN_PORT} drop`];
  const rules = [`    udp dport ${VXLAN_PORT} ${family} saddr != { ${remotes.join(', ')} } drop`];
  const vni = options.vni === undefined ? '' : ` ${INNER.vni} ${options.vni}`;
  for (const remote of remotes) {
    const from = `    udp dport ${VXLAN_PORT} ${family} saddr ${remote}${vni} ${INNER.etherType}`;
    const pairs = [...new Set((nics[remote] ?? []).map((n) => `${macHex(n.mac)} . ${ipHex(n.ip)}`))].sort();
    if (pairs.length === 0) {
      rules.push(`${from} { 0x0800, 0x0806 } drop`);
      continue;
    }
    const set = `{ ${pairs.join(', ')} }`;
    rules.push(
      `${from} 0x0800 ${INNER.ipPair} != ${set} drop`,
      `${from} 0x0806 ${INNER.arpPair} != ${set} drop`,
    );
  }
  return rules;
}
