import { join } from 'node:path';
import { dhcpRange, formatIpv4 } from './ipv4.ts';
import type { DhcpHost, NetworkDefinition } from './network-backend.ts';
import { spannedMtu } from './vxlan.ts';

/** Files of one network's dnsmasq under `${stateDir}/networks/<name>/`. */
export interface DnsmasqPaths {
  dir: string;
  pidFile: string;
  leases: string;
  dhcpHosts: string;
  hosts: string;
  log: string;
}

export function dnsmasqPaths(stateDir: string, name: string): DnsmasqPaths {
  const dir = join(stateDir, 'networks', name);
  return {
    dir,
    pidFile: join(dir, 'dnsmasq.pid'),
    leases: join(dir, 'dnsmasq.leases'),
    dhcpHosts: join(dir, 'dhcp-hosts'),
    hosts: join(dir, 'hosts'),
    log: join(dir, 'dnsmasq.log'),
  };
}

/**
 * argv of a network's dnsmasq: bound to the bridge only (several run side by
 * side), no system config file, DHCP over the whole subnet but the gateway,
 * authoritative for the network's domain. It daemonizes and writes a pid file,
 * so it outlives the Trivisor daemon.
 */
export function dnsmasqArgv(def: NetworkDefinition, paths: DnsmasqPaths): string[] {
  let { first, last } = dhcpRange(def.gateway);
  if (first === def.gateway.value) first++;
  if (last === def.gateway.value) last--;
  const mask = formatIpv4(2 ** 32 - 2 ** (32 - def.gateway.prefixLength));
  return [
    'dnsmasq',
    '--conf-file=/dev/null',
    '--strict-order',
    '--bind-dynamic',
    `--interface=${def.name}`,
    '--except-interface=lo',
    `--listen-address=${def.gateway.address}`,
    `--pid-file=${paths.pidFile}`,
    `--dhcp-leasefile=${paths.leases}`,
    `--dhcp-hostsfile=${paths.dhcpHosts}`,
    `--addn-hosts=${paths.hosts}`,
    // Static: only NICs with a reservation get an address (every NIC has one). A guest whose DHCP
    // client asks before the network's reconcile has given dnsmasq its reservation gets no answer
    // and asks again, where a dynamic range gave it another address, which its port's anti-spoofing
    // then drops until the lease is renewed half an hour later (seen at 150 guests, decision 0068).
    `--dhcp-range=${formatIpv4(def.gateway.network)},static,${mask},1h`,
    // dnsmasq hands out at most 1,000 leases unless told (decision 0068): the subnet's size.
    `--dhcp-lease-max=${last - first + 1}`,
    '--dhcp-authoritative',
    '--dhcp-no-override',
    `--domain=${def.domain}`,
    `--local=/${def.domain}/`,
    '--expand-hosts',
    '--no-hosts',
    `--log-facility=${paths.log}`,
    // A spanned network's frames carry VXLAN's 50 bytes on the wire (decision 0050).
    ...(def.tunnel ? [`--dhcp-option=option:mtu,${spannedMtu(def.tunnel.local)}`] : []),
  ];
}

/** `--dhcp-hostsfile` content: every NIC's reservation (re-read on SIGHUP). */
export function dhcpHostsFile(def: Pick<NetworkDefinition, 'hosts'>): string {
  return def.hosts.map((h) => `${h.mac},${h.ip},${h.name}\n`).join('');
}

/** `--addn-hosts` content: DNS names of every NIC, also before its first lease. */
export function hostsFile(def: Pick<NetworkDefinition, 'hosts' | 'domain'>): string {
  return def.hosts.map((h) => `${h.ip} ${h.name}.${def.domain} ${h.name}\n`).join('');
}

/**
 * A dnsmasq lease file (`EXPIRY MAC IP NAME CLIENT-ID` a line) without the leases of
 * addresses now reserved for another MAC (a deleted guest's address given to a new
 * guest); the same text when there are none.
 */
export function leasesWithoutConflicts(
  text: string,
  hosts: ReadonlyArray<Pick<DhcpHost, 'mac' | 'ip'>>,
): string {
  const reserved = new Map(hosts.map((h) => [h.ip, h.mac.toLowerCase()]));
  const lines = text.split('\n');
  const kept = lines.filter((line) => {
    const [, mac, ip] = line.split(' ');
    const owner = ip === undefined ? undefined : reserved.get(ip);
    return owner === undefined || owner === mac?.toLowerCase();
  });
  return kept.length === lines.length ? text : kept.join('\n');
}

/**
 * The unexpired leases of a dnsmasq lease file (`EXPIRY MAC IP NAME CLIENT-ID` a line;
 * expiry 0 never ends): MAC (lower case) → address.
 */
export function activeLeases(text: string, nowSeconds: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const [expiry, mac, ip] = line.trim().split(/\s+/);
    if (!expiry || !mac || !ip || !/^\d+$/.test(expiry)) continue;
    const ends = Number(expiry);
    if (ends === 0 || ends > nowSeconds) out.set(mac.toLowerCase(), ip);
  }
  return out;
}
