import type { NetworkAclRule, NetworkForward, ProcessIdentity } from '../core/types.ts';
import type { Ipv4Cidr } from './ipv4.ts';
import type { TunnelDefinition } from './vxlan.ts';

/** One DHCP reservation and DNS name of a NIC on a network. */
export interface DhcpHost {
  mac: string;
  /** Dotted quad. */
  ip: string;
  /** Host name the guest gets in DNS (`NAME` and `NAME.<dns.domain>`). */
  name: string;
  /** Host-side interface of the NIC: put back on the bridge when the bridge was recreated. */
  port?: string;
}

/** Everything the host needs to build one network, derived from its spec. */
export interface NetworkDefinition {
  /** Network name, also the Linux bridge's name (at most 15 characters). */
  name: string;
  gateway: Ipv4Cidr;
  nat: boolean;
  isolated: boolean;
  /** DNS domain of the guests (`trivisor` by default). */
  domain: string;
  hosts: DhcpHost[];
  /** Port forwards into the network (DNAT). */
  forwards?: NetworkForward[];
  /** ACL rules applied on every guest port (`hosts[].port`). */
  acls?: NetworkAclRule[];
  /**
   * The network's VNI (decision 0050): the gateway's MAC derives from it, the same on every
   * member. Absent in records made before networks spanned members.
   */
  vni?: number;
  /** On a cluster: the VXLAN that joins this member's bridge to the other members' (decision 0050). */
  tunnel?: TunnelDefinition;
}

/** A guest's port on a network: a veth (ct) or tap (vm, pvm) enslaved to the bridge. */
export interface PortDefinition {
  /** Host-side interface name (at most 15 characters). */
  port: string;
  bridge: string;
  mac: string;
  ip: string;
  isolated: boolean;
  /** Bandwidth to the guest (bits/s), shaped with tbf on the host end. */
  ingressBitsPerSecond?: number;
  /** Bandwidth from the guest (bits/s), shaped with tbf on an ifb the host end redirects to. */
  egressBitsPerSecond?: number;
}

/** Counters of a NIC, from the guest's point of view. */
export interface NicCounters {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  rxErrors: number;
  txErrors: number;
  /** Packets for the guest that the host dropped (its end's transmit drops). */
  rxDropped: number;
  txDropped: number;
}

/**
 * What the host sees of a guest port: `up` when it has carrier (a veth: both ends are up;
 * a tap: QEMU or UML has it open), `no-carrier`, or `missing` when the interface is gone.
 */
export type PortState = 'up' | 'no-carrier' | 'missing';

/**
 * The host's side of network virtualization: bridges, their dnsmasq and
 * nftables tables, and guest ports on them. Idempotent; only ever touches
 * objects it made (bridges carry an alias naming their state dir).
 */
export interface NetworkBackend {
  /**
   * Creates or repairs a network: bridge with its gateway address, up; DHCP/DNS
   * files; dnsmasq (restarted when its arguments changed, signalled when its
   * hosts changed); the network's nftables table. Resolves with dnsmasq's identity.
   */
  ensure(def: NetworkDefinition, known: ProcessIdentity | undefined): Promise<ProcessIdentity>;
  /** Whether the bridge exists and dnsmasq (`known`) still runs. */
  inspect(name: string, known: ProcessIdentity | undefined): Promise<{ bridge: boolean; dnsmasq: boolean }>;
  /** Deletes the bridge, its dnsmasq, its nftables table and its files; nothing else. */
  remove(name: string, known: ProcessIdentity | undefined): Promise<void>;
  /** Names of the bridges this state dir made (for removing stale ones). */
  listOwned(): Promise<string[]>;
  /**
   * Creates a veth pair on the bridge and moves its guest end into `netnsPid`'s namespace as
   * `ifname` (with `address`, `IP/prefix`, when given: a NIC hot-plugged into a running guest).
   */
  plugVeth(
    def: PortDefinition,
    options: { netnsPid: number; ifname: string; address?: string },
  ): Promise<void>;
  /**
   * Creates a tap device on the bridge for a `vm` or `pvm` guest (QEMU or UML opens it;
   * `user` may open it without privileges), with the same filters and limits as a veth.
   * Resolves with the MTU the guest's end must take: the tunnel's on a network that spans
   * members (decision 0050), else 1500.
   */
  plugTap(def: PortDefinition, options?: { user?: number }): Promise<{ mtu: number }>;
  /** Removes a port (veth or tap) and its filters; a port that is gone already is fine. */

  unplug(port: string): Promise<void>;
  counters(port: string): Promise<NicCounters | undefined>;
  /** Whether a port exists and has carrier (read from sysfs: cheap enough for every port every few seconds). */
  portState(port: string): Promise<PortState>;
  /** A network's unexpired DHCP leases from its dnsmasq's lease file: MAC (lower case) → address. */
  leases(network: string): Promise<Map<string, string>>;
}
