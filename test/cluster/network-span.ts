import assert from 'node:assert/strict';
import type { MemberHost, TestCluster } from './cluster-harness.ts';

/**
 * What the tests of a managed network spanning members (cluster-network-span, over IPv4, and
 * cluster-network-span-v6) read and do the same way: a guest's shell and NIC through the CLI, and a
 * member's VXLAN devices and their flood entries from its namespace. Not a test file.
 */

/** A guest a span test launches: on which member, of which model, with which extra CLI words. */
export interface SpanGuest {
  readonly name: string;
  readonly model: string;
  readonly member: string;
  readonly args: readonly string[];
}

/** A guest's NIC as `info --format json` shows it. */
export interface SpanNic {
  hwaddr?: string;
  'ipv4.address'?: string;
}

/** A VXLAN device as `ip -details -json link` shows it (`local` on an IPv4 underlay, `local6` on an IPv6 one). */
export interface VxlanLink {
  ifname: string;
  mtu: number;
  master?: string;
  linkinfo: { info_data: { id: number; local?: string; local6?: string; port: number } };
}

/** Runs `script` in `guest` with `sh -c` through `host`'s CLI (the guest may be on another member). */
export const guestSh = (host: MemberHost, guest: string, script: string) =>
  host.daemon.cli(['exec', guest, '--', 'sh', '-c', script], { timeoutMs: 120_000 });

/** `guest`'s eth0 as `host`'s API shows it. */
export const nicOf = (host: MemberHost, guest: string): SpanNic =>
  (JSON.parse(host.daemon.ok(['info', guest, '--format', 'json'])) as { devices?: Record<string, SpanNic> })
    .devices?.eth0 ?? {};

/** The VXLAN devices in `host`'s namespace. */
export const vxlanOf = (cluster: TestCluster, host: MemberHost): VxlanLink[] => {
  const r = cluster.inNetns(host.netns, ['ip', '-details', '-json', 'link', 'show', 'type', 'vxlan']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as VxlanLink[];
};

/** The remote addresses `dev` floods to on `host` (its all-zero FDB entries). */
export const floodsOf = (cluster: TestCluster, host: MemberHost, dev: string): string[] =>
  (
    JSON.parse(
      cluster.inNetns(host.netns, ['bridge', '-json', 'fdb', 'show', 'dev', dev]).stdout || '[]',
    ) as Array<{ mac: string; dst?: string }>
  ).flatMap((e) => (e.mac === '00:00:00:00:00:00' && e.dst ? [e.dst] : []));

/** Launches each guest (busybox) on its member, on network `net`, through `host`'s CLI. */
export const launchGuests = (host: MemberHost, net: string, guests: readonly SpanGuest[]) => {
  for (const g of guests) {
    host.daemon.ok([
      ...['launch', 'busybox', g.name, '--model', g.model, '--target', g.member, '--network', net],
      ...g.args,
    ]);
  }
};
