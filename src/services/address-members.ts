import type { HostSubnet } from '../network/default-network.ts';
import { memberByClusterAddress } from '../network/forward-pins.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';

/**
 * Which member holds an address, read once: a member's cluster address, or an address of this
 * member's own interfaces (not a network's bridge: its gateway address is on every member).
 * Undefined on a single host (no members), or for an address no member is known by. The port
 * forwards' check (decision 0050) and the mover's (decision 0075) place listen addresses so.
 */
export async function addressMembers(deps: {
  store: KvStore;
  hostName: string;
  hostSubnets?: (() => Promise<HostSubnet[]>) | undefined;
}): Promise<(address: string) => string | undefined> {
  const members = (await records.member.list(deps.store)).items;
  if (members.length === 0) return () => undefined;
  const byCluster = memberByClusterAddress(
    members.map((m) => ({ name: records.member.nameOf(m.key), address: m.value.address })),
  );
  const own = new Set<string>();
  if (deps.hostSubnets) {
    const bridges = new Set(
      (await deps.store.list(records.network.prefix)).kvs.map((kv) => records.network.nameOf(kv.key)),
    );
    for (const h of await deps.hostSubnets()) {
      const address = h.cidr.split('/')[0];
      if (h.source === 'address' && !bridges.has(h.dev) && address) own.add(address);
    }
  }
  return (address) => byCluster(address) ?? (own.has(address) ? deps.hostName : undefined);
}
