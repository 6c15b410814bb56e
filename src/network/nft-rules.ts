import { isIPv6 } from 'node:net';
import type { NetworkAclRule } from '../core/types.ts';
import { type Ipv4Cidr, subnetOf } from './ipv4.ts';
import type { NetworkDefinition, PortDefinition } from './network-backend.ts';
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
/** The regular chain of one port's anti-spoofing rules in the ports table. */
export const portChain = (port: string): string => `port-${port}`;

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
 * The ports table's frame (idempotent, elements kept): one base chain on the bridge family's
 * prerouting hook that looks the input interface up in a verdict map, port → `jump` to that
 * port's chain. Each frame costs one hash lookup whatever the number of ports; interfaces
 * that are no guest port (a bridge's uplinks, the VXLAN device) pass.
 */
function portsFrame(table: string): string {
  const t = `bridge ${table}`;
  return [
    `add table ${t}`,
    `add map ${t} ports { type ifname : verdict; }`,
    `add chain ${t} prerouting { type filter hook prerouting priority filter; policy accept; }`,
    `flush chain ${t} prerouting`,
    `add rule ${t} prerouting iifname vmap @ports`,
    '',
  ].join('\n');
}

/** Removes a port's table as a daemon before decision 0068 made it, if there is one. */
const dropLegacy = (port: string) =>
  `add table bridge ${legacyPortTable(port)}\ndelete table bridge ${legacyPortTable(port)}\n`;

/**
 * Anti-spoofing of one guest port (bridge family, before any forwarding decision), in the
 * daemon's ports table (`owner`: its state dir's hash): frames from the port must carry the
 * NIC's MAC, IPv4 packets its address (0.0.0.0 only for DHCP), ARP its MAC and address;
 * nothing but IPv4 and ARP leaves the port: IPv6 (managed networks are IPv4 only),
 * VLAN-tagged frames (which would carry either past these checks) and other ether types are
 * dropped. What may pass returns; the last rule drops the rest. No rule holds an anonymous set
 * (`!= { 0.0.0.0, IP }` made three per port): every `nft -f` reads every set of the table
 * first, and at 2,000 ports those were 6,000 (decision 0068). One transaction: the port's chain
 * is (re)written and its map entry added.
 */
export function portRuleset(owner: string, def: Pick<PortDefinition, 'port' | 'mac' | 'ip'>): string {
  const t = `bridge ${portsTable(owner)}`;
  const chain = portChain(def.port);
  const rules = [
    `ether saddr != ${def.mac} drop`,
    `arp saddr ether != ${def.mac} drop`,
    `arp saddr ip ${def.ip} return`,
    'arp saddr ip 0.0.0.0 return',
    `ip saddr ${def.ip} return`,
    'ip saddr 0.0.0.0 return',
    'drop',
  ];
  return [
    portsFrame(portsTable(owner)),
    `add chain ${t} ${chain}`,
    `flush chain ${t} ${chain}`,
    ...rules.map((r) => `add rule ${t} ${chain} ${r}`),
    `add element ${t} ports { ${JSON.stringify(def.port)} : jump ${chain} }`,
    dropLegacy(def.port),
  ].join('\n');
}

/** Removes a port's map entry and chain (and a legacy table); a port that has none is fine. */
export function deletePortRuleset(owner: string, port: string): string {
  const t = `bridge ${portsTable(owner)}`;
  const chain = portChain(port);
  // Added first so that the deletes never fail on what is missing (nft 1.0.6 has no `destroy`).
  return [
    `add table ${t}`,
    `add map ${t} ports { type ifname : verdict; }`,
    `add chain ${t} ${chain}`,
    `add element ${t} ports { ${JSON.stringify(port)} : jump ${chain} }`,
    `delete element ${t} ports { ${JSON.stringify(port)} }`,
    `delete chain ${t} ${chain}`,
    dropLegacy(port),
  ].join('\n');
}

/** Removes the ports table (when the daemon's last network goes). */
export function deletePortsTable(owner: string): string {
  return `add table bridge ${portsTable(owner)}\ndelete table bridge ${portsTable(owner)}\n`;
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
