import { createHash } from 'node:crypto';
import { failedPrecondition } from '../core/errors.ts';
import type { GuestNicState, GuestSpec, NetworkSpec, NicDevice, ObservedNic } from '../core/types.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';
import { parseBitRate } from './ipv4.ts';
import type { NetworkBackend, PortDefinition, PortState } from './network-backend.ts';

/** What guest drivers use to put a guest's NICs on their networks. */
export interface GuestNetworking {
  /** Whether the guest has NICs at all (drivers skip every network step when not). */
  hasNics(spec: GuestSpec): boolean;
  /** Plugs every NIC into its bridge, the guest end into `netnsPid`'s network namespace under the NIC's name. */
  plugVeths(spec: GuestSpec, netnsPid: number): Promise<void>;
  /**
   * For vm and pvm: a tap per NIC on its bridge (filtered, limited); the driver hands
   * each `tap` to QEMU or UML with the NIC's `mac`.
   */
  plugTaps(
    spec: GuestSpec,
    options?: { user?: number },
  ): Promise<Array<{ nic: string; tap: string; mac: string }>>;
  /** Removes every port of the guest and its filters; idempotent. */

  unplug(spec: GuestSpec): Promise<void>;
  /**
   * Hot-plug into a running ct guest: one NIC's veth, its guest end into `netnsPid`'s namespace,
   * up and holding its reserved address (the guest's DHCP client ran at boot only).
   */
  plugVeth(spec: GuestSpec, nic: string, netnsPid: number): Promise<void>;
  /**
   * Hot-plug into a running vm or pvm guest: one NIC's tap on its bridge, filtered and limited;
   * `cidr` is the NIC's reserved address with the network's prefix and `mtu` the network's MTU
   * (lower on a network that spans members), for the guest to take.
   */
  plugTap(
    spec: GuestSpec,
    nic: string,
    options?: { user?: number },
  ): Promise<{ tap: string; mac: string; cidr: string; mtu: number }>;
  /** Removes one NIC's port and its filters (hot-unplug); idempotent. */
  unplugNic(spec: GuestSpec, nic: string): Promise<void>;
  /**
   * Per-NIC state for `info`: the addresses and warnings of `observed` (what the NIC observer
   * last saw of the running guest; none shown without it), and counters while it runs.
   */
  state(
    spec: GuestSpec,
    options: { running: boolean; observed?: Record<string, ObservedNic> },
  ): Promise<Record<string, GuestNicState>>;
  /** Each NIC's host port and what the host sees of it (for the NIC observer). */
  hostView(spec: GuestSpec): Promise<Record<string, { port: string; state: PortState }>>;
  /** Each NIC's unexpired DHCP lease, for NICs that have one (for guests that cannot be asked). */
  leases(spec: GuestSpec): Promise<Record<string, string>>;
}

const nicsOf = (spec: GuestSpec): Array<[string, NicDevice]> =>
  Object.entries(spec.devices ?? {}).filter(([, d]) => d.type === 'nic');

const nicOf = (spec: GuestSpec, nic: string): NicDevice => {
  const d = spec.devices?.[nic];
  if (d?.type !== 'nic') throw failedPrecondition(`Guest ${spec.name} has no NIC ${nic}`);
  return d;
};

/** Host-side interface name of a NIC: `tv` + 10 hex, unique per state dir, guest and NIC (15 chars at most). */
export function hostPortName(stateDir: string, guest: string, nic: string): string {
  return `tv${createHash('sha256').update(`${stateDir}\0${guest}\0${nic}`).digest('hex').slice(0, 10)}`;
}

export function createGuestNetworking(deps: {
  store: KvStore;
  backend: NetworkBackend;
  stateDir: string;
}): GuestNetworking {
  const { store, backend, stateDir } = deps;

  const networkOf = async (name: string): Promise<NetworkSpec> => {
    const found = await records.network.at(name).get(store);
    if (!found) throw failedPrecondition(`Network ${name} does not exist: create it or remove the NIC`);
    return found.value;
  };

  /** `IP/prefix` of a NIC's address on its network. */
  const cidrOf = async (ip: string, network: string): Promise<string> =>
    `${ip}/${(await networkOf(network)).config['ipv4.address']?.split('/')[1] ?? '24'}`;

  const portOf = async (spec: GuestSpec, nic: string, d: NicDevice): Promise<PortDefinition> => {
    const net = await networkOf(d.network);
    if (!d.hwaddr || !d['ipv4.address']) {
      throw failedPrecondition(`NIC ${nic} of guest ${spec.name} has no MAC or address: recreate the guest`);
    }
    return {
      port: hostPortName(stateDir, spec.name, nic),
      bridge: net.name,
      mac: d.hwaddr,
      ip: d['ipv4.address'],
      isolated: net.config['security.isolated'] === 'true',
      ...(d['limits.ingress'] !== undefined && { ingressBitsPerSecond: parseBitRate(d['limits.ingress']) }),
      ...(d['limits.egress'] !== undefined && { egressBitsPerSecond: parseBitRate(d['limits.egress']) }),
    };
  };

  const gn: GuestNetworking = {
    hasNics: (spec) => nicsOf(spec).length > 0,

    async plugVeths(spec, netnsPid) {
      for (const [nic, d] of nicsOf(spec)) {
        await backend.plugVeth(await portOf(spec, nic, d), { netnsPid, ifname: nic });
      }
    },

    async plugTaps(spec, options = {}) {
      const taps: Array<{ nic: string; tap: string; mac: string }> = [];
      try {
        for (const [nic, d] of nicsOf(spec)) {
          const port = await portOf(spec, nic, d);
          await backend.plugTap(port, options);
          taps.push({ nic, tap: port.port, mac: port.mac });
        }
      } catch (e) {
        await gn.unplug(spec);
        throw e;
      }
      return taps;
    },

    async plugVeth(spec, nic, netnsPid) {
      const d = nicOf(spec, nic);
      const port = await portOf(spec, nic, d);
      await backend.plugVeth(port, { netnsPid, ifname: nic, address: await cidrOf(port.ip, d.network) });
    },

    async plugTap(spec, nic, options = {}) {
      const d = nicOf(spec, nic);
      const port = await portOf(spec, nic, d);
      const cidr = await cidrOf(port.ip, d.network);
      const { mtu } = await backend.plugTap(port, options);
      return { tap: port.port, mac: port.mac, cidr, mtu };
    },

    async unplugNic(spec, nic) {
      await backend.unplug(hostPortName(stateDir, spec.name, nic));
    },

    async unplug(spec) {
      for (const [nic] of nicsOf(spec)) await backend.unplug(hostPortName(stateDir, spec.name, nic));
    },

    async state(spec, { running, observed }) {
      const out: Record<string, GuestNicState> = {};
      for (const [nic, d] of nicsOf(spec)) {
        const hostName = hostPortName(stateDir, spec.name, nic);
        const seen = running ? observed?.[nic] : undefined;
        out[nic] = {
          network: d.network,
          hwaddr: d.hwaddr ?? '',
          hostName,
          addresses: seen?.addresses ?? [],
          ...(seen?.source === 'lease' && { addressSource: 'lease' as const }),
          ...(seen?.warning !== undefined && { warning: seen.warning }),
          counters: running ? ((await backend.counters(hostName)) ?? null) : null,
        };
      }
      return out;
    },

    async hostView(spec) {
      const out: Record<string, { port: string; state: PortState }> = {};
      for (const [nic] of nicsOf(spec)) {
        const port = hostPortName(stateDir, spec.name, nic);
        out[nic] = { port, state: await backend.portState(port) };
      }
      return out;
    },

    async leases(spec) {
      const out: Record<string, string> = {};
      const byNetwork = new Map<string, Map<string, string>>();
      for (const [nic, d] of nicsOf(spec)) {
        let leases = byNetwork.get(d.network);
        if (!leases) {
          leases = await backend.leases(d.network);
          byNetwork.set(d.network, leases);
        }
        const ip = d.hwaddr ? leases.get(d.hwaddr.toLowerCase()) : undefined;
        if (ip !== undefined) out[nic] = ip;
      }
      return out;
    },
  };
  return gn;
}
