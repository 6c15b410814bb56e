import type { NetworkAclRule } from '../core/types.ts';
import { type Ipv4Cidr, subnetOf } from './ipv4.ts';
import type { NetworkDefinition, PortDefinition } from './network-backend.ts';
import { vxlanInputRule } from './vxlan.ts';

/** nftables table of a network (family ip). */
export const networkTable = (name: string): string => `trivisor-${name}`;
/** nftables table of a guest port (family bridge). */
export const portTable = (port: string): string => `trivisor-${port}`;

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
  if (def.tunnel) {
    body += `  chain input {\n    type filter hook input priority filter; policy accept;\n${vxlanInputRule(def.tunnel.remotes)}\n  }\n`;
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
  return replaceTable('ip', networkTable(def.name), body);
}

export function deleteNetworkRuleset(name: string): string {
  return `add table ip ${networkTable(name)}\ndelete table ip ${networkTable(name)}\n`;
}

/**
 * Anti-spoofing of one guest port (bridge family, before any forwarding
 * decision): frames from the port must carry the NIC's MAC, IPv4 packets its
 * address (0.0.0.0 only for DHCP), ARP its MAC and address; nothing but IPv4 and
 * ARP leaves the port: IPv6 (managed networks are IPv4 only), VLAN-tagged frames
 * (which would carry either past these checks) and other ether types are dropped.
 */
export function portRuleset(def: Pick<PortDefinition, 'port' | 'mac' | 'ip'>): string {
  const p = JSON.stringify(def.port);
  const rules = [
    `    iifname ${p} ether saddr != ${def.mac} drop`,
    `    iifname ${p} arp saddr ether != ${def.mac} drop`,
    `    iifname ${p} arp saddr ip != { 0.0.0.0, ${def.ip} } drop`,
    `    iifname ${p} ip saddr != { 0.0.0.0, ${def.ip} } drop`,
    `    iifname ${p} ether type != { ip, arp } drop`,
  ];
  const body = `  chain prerouting {\n    type filter hook prerouting priority filter; policy accept;\n${rules.join('\n')}\n  }\n`;
  return replaceTable('bridge', portTable(def.port), body);
}

export function deletePortRuleset(port: string): string {
  return `add table bridge ${portTable(port)}\ndelete table bridge ${portTable(port)}\n`;
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
