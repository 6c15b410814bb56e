import { isIPv6 } from 'node:net';
import type { NetworkAclRule } from '../core/types.ts';
import { type Ipv4Cidr, subnetOf } from './ipv4.ts';
import type { NetworkDefinition } from './network-backend.ts';
import { VXLAN_PORT, vxlanInputRules } from './vxlan.ts';

/** nftables table of a network (family ip). */
export const networkTable = (name: string): string => `trivisor-${name}`;
/**
 * nftables table (family bridge) of a guest port as daemons before decision 0068 made it: one
 * table, and so one base chain on the bridge's prerouting hook, per port. The kernel takes at
 * most 1024 hooks per family and hook point in a network namespace (MAX_HOOK_COUNT): the
 * 1,024th port failed with E2BIG, and every frame went through every port's chain.
 */
export const legacyPortTable = (port: string): string => `trivisor-${port}`;
/** nftables table (family bridge) of every guest port of one state dir's daemon (decision 0068). */
export const portsTable = (owner: string): string => `trivisor-ports-${owner}`;
/** The regular chain of one port in the ports table as daemons made it before 2026-12-07 (adopted). */
export const legacyPortChain = (port: string): string => `port-${port}`;

/** Replaces a whole table in one nft transaction: `add` makes `delete` safe when it is missing. */
function replaceTable(family: string, table: string, body: string): string {
  return `add table ${family} ${table}\ndelete table ${family} ${table}\ntable ${family} ${table} {\n${body}}\n`;
}

/**
 * The ip-family table of a network: other networks and the outside reach its
 * guests only through replies and port forwards; without NAT the guests reach
 * nothing beyond the bridge; with NAT their subnet is masqueraded out of any
 * interface but the bridge.
 */
export function networkRuleset(
  def: Pick<NetworkDefinition, 'name' | 'nat' | 'forwards' | 'tunnel'> & { gateway: Ipv4Cidr },
): string {
  const br = JSON.stringify(def.name);
  const forward = [
    `    iifname ${br} oifname ${br} accept`,
    `    oifname ${br} ct state established,related accept`,
    `    oifname ${br} ct status dnat accept`,
    `    oifname ${br} drop`,
  ];
  // Replies to forwarded connections leave even a network without NAT.
  if (!def.nat)
    forward.push(`    iifname ${br} ct state established,related accept`, `    iifname ${br} drop`);
  let body = `  chain forward {\n    type filter hook forward priority filter; policy accept;\n${forward.join('\n')}\n  }\n`;
  if (def.nat) {
    body += `  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr ${subnetOf(def.gateway)} oifname != ${br} masquerade\n  }\n`;
  }
  // Over an IPv6 underlay (decision 0101) the tunnel's rules are the ip6 table's, and no IPv4
  // VXLAN is taken at all.
  const v6 = def.tunnel !== undefined && isIPv6(def.tunnel.local);
  const input = (rules: string[]) =>
    `  chain input {\n    type filter hook input priority filter; policy accept;\n${rules.join('\n')}\n  }\n`;
  if (def.tunnel) {
    body += input(
      v6
        ? [`    udp dport ${VXLAN_PORT} drop`]
        : vxlanInputRules(def.tunnel.remotes, def.tunnel.nics, { vni: def.tunnel.vni }),
    );
  }
  const dnat = (def.forwards ?? []).map(
    (f) =>
      `    ip daddr ${f.listenAddress} ${f.protocol} dport ${f.listenPort} dnat to ${f.targetAddress}:${f.targetPort}`,
  );
  if (dnat.length > 0) {
    // prerouting for clients elsewhere, output for clients on the host itself.
    // nft 1.0.6 takes the name dstnat only for prerouting; -100 is its value.
    for (const hook of ['prerouting', 'output']) {
      body += `  chain ${hook} {\n    type nat hook ${hook} priority -100; policy accept;\n${dnat.join('\n')}\n  }\n`;
    }
  }
  const ip6 =
    v6 && def.tunnel
      ? replaceTable(
          'ip6',
          networkTable(def.name),
          input(vxlanInputRules(def.tunnel.remotes, def.tunnel.nics, { family: 'ip6', vni: def.tunnel.vni })),
        )
      : deleteTable('ip6', networkTable(def.name));
  return replaceTable('ip', networkTable(def.name), body) + ip6;
}

const deleteTable = (family: string, table: string) =>
  `add table ${family} ${table}\ndelete table ${family} ${table}\n`;

/** Deletes a network's ip table and its ip6 table (the input rules of a tunnel over IPv6). */
export function deleteNetworkRuleset(name: string): string {
  return deleteTable('ip', networkTable(name)) + deleteTable('ip6', networkTable(name));
}

/**
 * The ports table (decision 0068, amended 2026-12-07): one base chain on the bridge family's
 * prerouting hook with fixed rules, and three sets that say which interfaces are guest ports and
 * what each may send. Frames from a guest port must carry the NIC's MAC; ARP its MAC and its
 * address (0.0.0.0 only, for DHCP's probes); IPv4 its address (0.0.0.0 only, for DHCP). Nothing
 * but untagged IPv4 and ARP leaves a guest port: IPv6 (managed networks are IPv4 only), VLAN-tagged
 * frames (matched on the frame's own ether type, which the kernel keeps 802.1Q for a tagged frame
 * even when it moved the tag aside: `meta protocol` would read the inner type and let a tagged IPv4
 * packet with the port's own addresses through, as the per-port chains did) and other ether types
 * are dropped. Interfaces that are no guest port (a bridge's uplinks, the VXLAN device) pass.
 *
 * Plugging or unplugging a port changes set elements only: no verdict, no chain, no rule. A
 * verdict (the `jump` of a verdict map's element) made the kernel validate every chain of the
 * table at each commit, O(N) a port at N ports; a set element is not validated. Each frame costs
 * at most four hash lookups, whatever the number of ports.
 */
export const PORTS_CHAIN = 'prerouting';
/** Set of the guest ports' names. */
export const GUEST_PORTS = 'guest_ports';
/** Set of `port . MAC` a guest port may send from (as ether and as ARP source). */
export const PORT_MAC = 'port_mac';
/** Set of `port . IPv4` a guest port may send from (as IPv4 and as ARP source). */
export const PORT_IP = 'port_ip';

/** The base chain's rules, in order: what passes is accepted, the last rule drops the rest. */
export const PORTS_RULES: readonly string[] = [
  `iifname != @${GUEST_PORTS} accept`,
  `iifname . ether saddr != @${PORT_MAC} drop`,
  `iifname . arp saddr ether != @${PORT_MAC} drop`,
  `iifname . arp saddr ip @${PORT_IP} accept`,
  'arp saddr ip 0.0.0.0 accept',
  `ether type ip iifname . ip saddr @${PORT_IP} accept`,
  'ether type ip ip saddr 0.0.0.0 accept',
  'drop',
];

/** What one guest port may send: its MAC and IPv4 address. */
export interface PortFilter {
  port: string;
  mac: string;
  ip: string;
}

const q = JSON.stringify;

/**
 * The whole ports table with these ports' elements, replacing whatever is there (an older layout
 * included) in one transaction: `add` first makes the `delete` safe when the table is missing.
 * Used when a daemon finds the table missing, damaged or of an older layout; never per port.
 */
export function portsTableRuleset(owner: string, ports: readonly PortFilter[]): string {
  const elements = (f: (p: PortFilter) => string) =>
    ports.length > 0 ? `    elements = { ${ports.map(f).join(', ')} }\n` : '';
  const body = [
    `  set ${GUEST_PORTS} {\n    type ifname\n${elements((p) => q(p.port))}  }\n`,
    `  set ${PORT_MAC} {\n    type ifname . ether_addr\n${elements((p) => `${q(p.port)} . ${p.mac}`)}  }\n`,
    `  set ${PORT_IP} {\n    type ifname . ipv4_addr\n${elements((p) => `${q(p.port)} . ${p.ip}`)}  }\n`,
    `  chain ${PORTS_CHAIN} {\n    type filter hook prerouting priority filter; policy accept;\n`,
    ...PORTS_RULES.map((r) => `    ${r}\n`),
    '  }\n',
  ].join('');
  return replaceTable('bridge', portsTable(owner), body);
}

const elementOps = (verb: 'add' | 'delete', owner: string, p: PortFilter): string[] => {
  const t = `bridge ${portsTable(owner)}`;
  return [
    `${verb} element ${t} ${GUEST_PORTS} { ${q(p.port)} }`,
    `${verb} element ${t} ${PORT_MAC} { ${q(p.port)} . ${p.mac} }`,
    `${verb} element ${t} ${PORT_IP} { ${q(p.port)} . ${p.ip} }`,
  ];
};

/** Removes a port's table as a daemon before decision 0068 made it, if there is one. */
const dropLegacy = (port: string) =>
  `add table bridge ${legacyPortTable(port)}\ndelete table bridge ${legacyPortTable(port)}\n`;

/**
 * Anti-spoofing of one guest port, in the daemon's ports table (`owner`: its state dir's hash):
 * its three elements, in one transaction with the removal of the elements it had (`previous`,
 * what the table holds for it, when the NIC's MAC or address changed) and of a per-port table of
 * a daemon before decision 0068. Set elements only: the table must be there (portsTableRuleset).
 */
export function portRuleset(owner: string, def: PortFilter, previous?: PortFilter): string {
  return [
    ...(previous ? elementOps('delete', owner, previous) : []),
    ...elementOps('add', owner, def),
    dropLegacy(def.port),
  ].join('\n');
}

/**
 * Removes a port's elements (`previous`: what the table holds for it; none when it holds nothing)
 * and a per-port table of a daemon before decision 0068, in one transaction.
 */
export function deletePortRuleset(owner: string, port: string, previous?: PortFilter): string {
  return [...(previous ? elementOps('delete', owner, previous) : []), dropLegacy(port)].join('\n');
}

/** Removes the ports table (when the daemon's last network goes). */
export function deletePortsTable(owner: string): string {
  return `add table bridge ${portsTable(owner)}\ndelete table bridge ${portsTable(owner)}\n`;
}

/** What a daemon found in its ports table (`nft -j list table`). */
export interface PortsTableState {
  /**
   * `current`: this layout, whole; `missing`: no table; `rewrite`: another layout (the per-port
   * chains and verdict map of before 2026-12-07) or a damaged one, to be replaced.
   */
  layout: 'current' | 'missing' | 'rewrite';
  /** The ports it filters, with what each may send. */
  ports: PortFilter[];
}

type NftObject = Record<string, Record<string, unknown>>;
type Expr = Record<string, unknown>;

/** The IPv4 address other than 0.0.0.0 a legacy chain's `ip saddr`/`arp saddr ip` match names. */
function legacyAddress(right: unknown): string | undefined {
  const values = typeof right === 'string' ? [right] : ((right as { set?: unknown[] })?.set ?? []);
  return values.find((v): v is string => typeof v === 'string' && v !== '0.0.0.0');
}

/**
 * Reads the ports table from `nft -j list table bridge …` (empty or failed: missing). This layout's
 * elements are taken as they are; a table of the layout before 2026-12-07 gives the ports of its
 * verdict map with the MAC (`ether saddr != MAC drop`) and address (`ip saddr ADDR return`, or the
 * anonymous set `{ 0.0.0.0, ADDR }` of the first layout) of each port's chain. A port whose MAC or
 * address cannot be read is left out of the rewrite: a filter that names what it does not know
 * would drop everything its guest sends, and the port's next plug writes it.
 */
export function parsePortsTable(json: string): PortsTableState {
  let objects: NftObject[];
  try {
    objects = (JSON.parse(json || '{}') as { nftables?: NftObject[] }).nftables ?? [];
  } catch {
    return { layout: 'missing', ports: [] };
  }
  if (!objects.some((o) => o.table)) return { layout: 'missing', ports: [] };
  const sets = new Map<string, unknown[]>();
  for (const o of objects) {
    const s = o.set ?? o.map;
    if (s) sets.set(String(s.name), (s.elem as unknown[] | undefined) ?? []);
  }
  const chains = objects.flatMap((o) => (o.chain ? [String(o.chain.name)] : []));
  const rules = objects.flatMap((o) => (o.rule ? [o.rule as { chain: string; expr: Expr[] }] : []));
  const baseRules = rules.filter((r) => r.chain === PORTS_CHAIN).length;
  const current =
    [GUEST_PORTS, PORT_MAC, PORT_IP].every((n) => sets.has(n)) &&
    sets.size === 3 &&
    chains.length === 1 &&
    chains[0] === PORTS_CHAIN &&
    baseRules === PORTS_RULES.length;

  const ports: PortFilter[] = [];
  if (sets.has(GUEST_PORTS)) {
    const pairs = (name: string) => {
      const m = new Map<string, string>();
      for (const e of sets.get(name) ?? []) {
        const c = (e as { concat?: unknown[] })?.concat;
        if (Array.isArray(c) && typeof c[0] === 'string' && typeof c[1] === 'string' && !m.has(c[0]))
          m.set(c[0], c[1]);
      }
      return m;
    };
    const macs = pairs(PORT_MAC);
    const ips = pairs(PORT_IP);
    for (const port of sets.get(GUEST_PORTS) ?? []) {
      if (typeof port !== 'string') continue;
      const mac = macs.get(port);
      const ip = ips.get(port);
      if (mac && ip) ports.push({ port, mac, ip });
    }
  } else if (sets.has('ports')) {
    // The verdict map of before: port → jump port-PORT.
    for (const e of sets.get('ports') ?? []) {
      const port = Array.isArray(e) ? e[0] : undefined;
      if (typeof port !== 'string') continue;
      let mac: string | undefined;
      let ip: string | undefined;
      for (const r of rules.filter((x) => x.chain === legacyPortChain(port))) {
        const m = (r.expr.find((x) => x.match) as { match?: { op: string; left: Expr; right: unknown } })
          ?.match;
        const payload = m?.left?.payload as { protocol?: string; field?: string } | undefined;
        if (!m || !payload) continue;
        if (payload.protocol === 'ether' && payload.field === 'saddr' && typeof m.right === 'string') {
          mac ??= m.right;
        } else if (payload.protocol === 'ip' && payload.field === 'saddr') {
          ip ??= legacyAddress(m.right);
        }
      }
      if (mac && ip) ports.push({ port, mac, ip });
    }
  }
  return { layout: current ? 'current' : 'rewrite', ports };
}

/** nftables table of a network's ACLs (family bridge). */
export const aclTable = (name: string): string => `trivisor-acl-${name}`;

function aclMatch(rule: NetworkAclRule): string {
  const parts: string[] = [];
  if (rule.source) parts.push(`ip saddr ${rule.source}`);
  if (rule.destination) parts.push(`ip daddr ${rule.destination}`);
  if (rule.protocol === 'icmp') parts.push('ip protocol icmp');
  else if (rule.protocol) {
    parts.push(
      rule.destinationPort
        ? `${rule.protocol} dport ${rule.destinationPort}`
        : `ip protocol ${rule.protocol}`,
    );
  }
  if (parts.length === 0) parts.push('ether type ip');
  return parts.join(' ');
}

/**
 * A network's ACLs, in the bridge family so that they also hold between guests
 * of one bridge: frames from a guest port go through `egress`, frames to one
 * through `ingress`; the first matching rule decides, the rest is allowed.
 * Stateless (this kernel has no bridge conntrack): an allow rule does not
 * open the way back, and replies are matched like any other packet. Without
 * rules or ports the table is removed.
 */
export function aclRuleset(def: Pick<NetworkDefinition, 'name' | 'acls' | 'hosts'>): string {
  const ports = def.hosts.flatMap((h) => (h.port ? [JSON.stringify(h.port)] : []));
  const acls = def.acls ?? [];
  if (acls.length === 0 || ports.length === 0) {
    return `add table bridge ${aclTable(def.name)}\ndelete table bridge ${aclTable(def.name)}\n`;
  }
  const set = `{ ${ports.join(', ')} }`;
  const chain = (direction: NetworkAclRule['direction']) =>
    acls
      .filter((r) => r.direction === direction)
      .map((r) => `    ${aclMatch(r)} ${r.action === 'allow' ? 'return' : 'drop'}`)
      .join('\n');
  const body = [
    `  chain egress {\n${chain('egress')}\n  }`,
    `  chain ingress {\n${chain('ingress')}\n  }`,
    `  chain between_ports {\n    type filter hook forward priority filter; policy accept;\n    iifname ${set} jump egress\n    oifname ${set} jump ingress\n  }`,
    `  chain to_host {\n    type filter hook input priority filter; policy accept;\n    iifname ${set} jump egress\n  }`,
    `  chain from_host {\n    type filter hook output priority filter; policy accept;\n    oifname ${set} jump ingress\n  }`,
  ].join('\n');
  return replaceTable('bridge', aclTable(def.name), `${body}\n`);
}
