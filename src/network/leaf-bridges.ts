import { createHash } from 'node:crypto';

/**
 * A Linux bridge takes at most 1,023 ports (BR_MAX_PORTS is 1 << 10, port 0 reserved): the
 * 1,024th `ip link set … master` fails with EXFULL ("Exchange full"). A network holds more
 * guests than that on leaf bridges hung off its bridge by a veth each (decision 0068). A
 * bridge is given this many guest ports before the next leaf is used, under the kernel's
 * limit with room for uplinks, the VXLAN device and two attaches racing for the last place.
 */
export const PORTS_PER_BRIDGE = 1000;

/** The index-th leaf bridge of a network (from 1): `tl` + 10 hex, unique per state dir. */
export function leafBridgeName(stateDir: string, network: string, index: number): string {
  return `tl${createHash('sha256').update(`${stateDir}\0${network}\0${index}`).digest('hex').slice(0, 10)}`;
}

/** The uplink veth of a leaf: its end on the leaf bridge, and its end on the network's bridge. */
export function leafUplink(leaf: string): { leafEnd: string; bridgeEnd: string } {
  return { leafEnd: `${leaf}u`, bridgeEnd: `${leaf}d` };
}

/** The alias a leaf bridge carries: its owner's alias and its network (never taken for a network). */
export const leafAlias = (ownerAlias: string, network: string): string => `${ownerAlias}:leaf:${network}`;

/**
 * Which bridge a new port goes on: the network's own while it has room, else the first leaf
 * with room, else a new leaf (`create`: true) at the first unused index. `ports(bridge)` is
 * how many guest ports a bridge has, undefined when the bridge does not exist.
 */
export function pickBridge(
  network: string,
  options: {
    leafName: (index: number) => string;
    ports: (bridge: string) => number | undefined;
    perBridge: number;
  },
): { bridge: string; create: boolean } {
  if ((options.ports(network) ?? 0) < options.perBridge) return { bridge: network, create: false };
  for (let index = 1; ; index++) {
    const leaf = options.leafName(index);
    const n = options.ports(leaf);
    if (n === undefined) return { bridge: leaf, create: true };
    if (n < options.perBridge) return { bridge: leaf, create: false };
  }
}
