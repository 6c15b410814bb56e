import { notFound } from '../core/errors.ts';
import type { GuestSpec, Network, NetworkSpec, NetworkStatus } from '../core/types.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import type { Convergence } from './network-convergence.ts';
import type { NetworkServiceDeps } from './network-service.ts';
import { assertNetworkName } from './network-validation.ts';

/** A network's spec and status as read, with the revision its next write compares on. */
export interface LoadedNetwork {
  spec: NetworkSpec;
  status: NetworkStatus | undefined;
  modRevision: number;
}

/** What the parts of the network service share: one project's view (`scope`) over one store. */
export interface NetworkContext extends Convergence {
  store: KvStore;
  deps: NetworkServiceDeps;
  /** The project the service is scoped to; undefined is the host's view. */
  scope: string | undefined;
  /** Any project's network (the host's view). */
  loadAny(name: string): Promise<LoadedNetwork>;
  /** A network of `scope` (another project's network is NotFound). */
  load(name: string): Promise<LoadedNetwork>;
  /** The guest of a NIC change, which must be in the network's project (else it is not found). */
  guestIn(guest: string, project: string): Promise<{ modRevision: number; spec: GuestSpec }>;
  /** Guest names by the networks their NICs are on. */
  guestsUsing(): Promise<Map<string, string[]>>;
  /** The scoped service's `get`: what a change answers with. */
  get(name: string): Promise<Network>;
}

/** Reads of networks and of the guests on them, over `store`. */
export function networkReads(store: KvStore): Pick<NetworkContext, 'loadAny' | 'guestsUsing'> {
  async function loadAny(name: string) {
    assertNetworkName(name);
    const found = await records.network.at(name).get(store);
    if (!found) throw notFound(`Network ${name} not found: see trivisor network list`);
    const st = await records.networkStatus.at(name).get(store);
    return { spec: found.value, status: st?.value, modRevision: found.modRevision };
  }

  async function guestsUsing(): Promise<Map<string, string[]>> {
    const byNetwork = new Map<string, string[]>();
    for (const g of valuesOf(await records.guest.list(store))) {
      for (const d of Object.values(g.devices ?? {})) {
        if (d.type !== 'nic') continue;
        const list = byNetwork.get(d.network) ?? [];
        if (!list.includes(g.name)) list.push(g.name);
        byNetwork.set(d.network, list);
      }
    }
    return byNetwork;
  }

  return { loadAny, guestsUsing };
}
