import { invalidArgument } from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import type { NetworkAclRule } from '../core/types.ts';
import { parseCidr, parseGatewayCidr, parseIpv4 } from '../network/ipv4.ts';

/** Longest Linux interface name: the network's name is its bridge's name. */
export const MAX_NETWORK_NAME = 15;
export const DEFAULT_DNS_DOMAIN = 'trivisor';
const NETWORK_KEYS = new Set(['ipv4.address', 'ipv4.nat', 'dns.domain', 'security.isolated']);
const DOMAIN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

export function assertNetworkName(name: unknown): asserts name is string {
  assertDnsLabel(name, 'network name');
  if (name.length > MAX_NETWORK_NAME) {
    throw invalidArgument(
      `The network name ${name} is ${name.length} characters long; it names a Linux bridge, so at most ${MAX_NETWORK_NAME} are allowed`,
    );
  }
}

/** Validates a network's config and returns it with defaults filled in. */
export function validateNetworkConfig(config: Record<string, string>): Record<string, string> {
  for (const key of Object.keys(config)) {
    if (!NETWORK_KEYS.has(key)) {
      throw invalidArgument(
        `Unknown network configuration key ${JSON.stringify(key)}: use ${[...NETWORK_KEYS].join(', ')}`,
      );
    }
  }
  const address = config['ipv4.address'];
  if (address === undefined)
    throw invalidArgument('ipv4.address is required, like ipv4.address=198.18.10.1/24');
  parseGatewayCidr(address);
  for (const key of ['ipv4.nat', 'security.isolated']) {
    const v = config[key];
    if (v !== undefined && v !== 'true' && v !== 'false') {
      throw invalidArgument(`${key} must be true or false, not ${JSON.stringify(v)}`);
    }
  }
  const domain = config['dns.domain'] ?? DEFAULT_DNS_DOMAIN;
  if (!DOMAIN.test(domain) || domain.length > 253) {
    throw invalidArgument(
      `dns.domain ${JSON.stringify(domain)} is not a DNS domain like trivisor or lab.example`,
    );
  }
  return { 'ipv4.nat': 'false', 'security.isolated': 'false', 'dns.domain': domain, ...config };
}

/** Checks an ACL rule and returns it with only the fields it uses. */
export function validateAclRule(raw: NetworkAclRule): NetworkAclRule {
  if (raw.direction !== 'ingress' && raw.direction !== 'egress') {
    throw invalidArgument(`ACL direction ${JSON.stringify(raw.direction)} is not ingress or egress`);
  }
  if (raw.action !== 'allow' && raw.action !== 'drop') {
    throw invalidArgument(`ACL action ${JSON.stringify(raw.action)} is not allow or drop`);
  }
  const rule: NetworkAclRule = { direction: raw.direction, action: raw.action };
  for (const key of ['source', 'destination'] as const) {
    const v = raw[key];
    if (v === undefined) continue;
    if (parseIpv4(v) === undefined) parseCidr(v, key);
    rule[key] = v;
  }
  if (raw.protocol !== undefined) {
    if (!['tcp', 'udp', 'icmp'].includes(raw.protocol)) {
      throw invalidArgument(`ACL protocol ${JSON.stringify(raw.protocol)} is not tcp, udp or icmp`);
    }
    rule.protocol = raw.protocol;
  }
  if (raw.destinationPort !== undefined) {
    if (rule.protocol !== 'tcp' && rule.protocol !== 'udp') {
      throw invalidArgument('destination_port needs protocol=tcp or protocol=udp');
    }
    if (!Number.isInteger(raw.destinationPort) || raw.destinationPort < 1 || raw.destinationPort > 65535) {
      throw invalidArgument(
        `destination_port ${JSON.stringify(raw.destinationPort)} is not a port from 1 to 65535`,
      );
    }
    rule.destinationPort = raw.destinationPort;
  }
  return rule;
}
