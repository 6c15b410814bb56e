import { notFound } from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { Model, Network, NetworkAclRule, NicDevice } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { LiveResult } from '../drivers/guest-volumes.ts';
import type { HostSubnet } from '../network/default-network.ts';
import type { Compare, KvStore, TxnOp } from '../store/kv.ts';
import { records } from '../store/records.ts';
import { type Claims, createClaims } from './claims.ts';
import { type NetworkContext, networkReads } from './network-context.ts';
import { createConvergence } from './network-convergence.ts';
import { networkCrud } from './network-crud.ts';
import { networkForwards } from './network-forwards.ts';
import { nicChanges } from './network-nics.ts';

export {
  assertNetworkName,
  DEFAULT_DNS_DOMAIN,
  MAX_NETWORK_NAME,
  validateAclRule,
  validateNetworkConfig,
} from './network-validation.ts';

/** Body of `POST /1.0/networks`. */
export interface CreateNetworkRequest {
  name: string;
  description?: string;
  config?: Record<string, string>;
}

/** Body of `POST /1.0/networks/{name}/forwards`. */
export interface AddForwardRequest {
  listenAddress: string;
  listenPort: number;
  protocol?: 'tcp' | 'udp';
  /** A guest with a NIC on the network, or an address of the network. */
  target: string;
  targetPort: number;
}

/** What a guest create adds to its transaction to claim its NICs' addresses. */
export interface NicClaims {
  devices: Record<string, NicDevice>;
  compare: Compare[];
  success: TxnOp[];
}

/** Managed networks: validates and writes desired state; the network controller builds them. */
export interface NetworkService {
  /** One project's view (another project's network is NotFound); the service itself is the host's view. */
  inProject(project: string): NetworkService;
  list(options?: { allProjects?: boolean }): Promise<Network[]>;
  get(name: string): Promise<Network>;
  /** Validates, records and waits until the network is built (or removes it again and throws). */
  create(request: CreateNetworkRequest): Promise<Network>;
  update(name: string, change: { set?: Record<string, string>; unset?: string[] }): Promise<Network>;
  /** FailedPrecondition while a NIC uses the network. */
  delete(name: string): Promise<void>;
  /** Adds a port forward; Conflict when that address, port and protocol is forwarded already. */
  addForward(network: string, request: AddForwardRequest): Promise<Network>;
  /** NotFound when there is no such forward. */
  removeForward(
    network: string,
    forward: { listenAddress: string; listenPort: number; protocol?: 'tcp' | 'udp' },
  ): Promise<Network>;
  /** Appends an ACL rule to the network's list. */
  addAcl(network: string, rule: NetworkAclRule): Promise<Network>;
  /** Removes the rule at `index` (0-based, as listed). */
  removeAcl(network: string, index: number): Promise<Network>;
  /**
   * Adds a NIC to a guest (`eth0`, `eth1`… when no name is given), hot-plugged into a running
   * guest by its driver; nothing is changed when that fails. FailedPrecondition for a frozen guest.
   */
  attach(
    network: string,
    guest: string,
    options?: { nic?: string; device?: Omit<NicDevice, 'type' | 'network'> },
  ): Promise<NicChange>;
  /** Removes a guest's NIC on this network (the only one, or `nic`), hot-unplugged from a running guest first. */
  detach(network: string, guest: string, options?: { nic?: string }): Promise<NicChange>;
  /** Completes a guest's NICs (MAC, address) and the store operations that claim their addresses. */
  claimNics(
    guest: string,
    devices: Record<string, NicDevice>,
    options?: { project?: string },
  ): Promise<NicClaims>;
}

/** What an attach or detach did. */
export interface NicChange {
  guest: string;
  nic: string;
  /** `live`: the running guest has (or lost) it now; `none`: the guest does not run, it applies at its start. */
  applied: LiveResult | 'none';
  /** One line for people, e.g. "Attached eth1 on lab to web1 (live)". */
  message: string;
}

export interface NetworkServiceDeps {
  store: KvStore;
  hostName: string;
  /** Drivers that hot-plug NICs into running guests; without them NICs change only on stopped guests. */
  drivers?: Partial<Record<Model, GuestDriver>>;
  /** How long create/update/delete wait for the controller. */
  convergeWaitMs?: number;
  /**
   * The subnets the host's own interfaces and routes carry (network/default-network.ts
   * hostNetworks): a network's subnet may not overlap one of them, as Docker refuses too.
   */
  hostSubnets?: () => Promise<HostSubnet[]>;
  /** Operation claims of this member (default: this service's own, over `store`). */
  claims?: Claims;
}

/**
 * Composes the service's parts (network-crud.ts, network-forwards.ts, network-nics.ts) over
 * one context per project view; network-convergence.ts writes specs and waits for the controller.
 */
export function createNetworkService(deps: NetworkServiceDeps): NetworkService {
  const { store } = deps;
  const convergence = createConvergence(store, deps.convergeWaitMs ?? 30_000);
  const { loadAny, guestsUsing } = networkReads(store);

  // One NIC change of a guest at a time, whichever member asks: each reads the guest, writes it
  // (compared on its revision, with the address claims) and plugs or unplugs (decision 28).
  const claims = deps.claims ?? createClaims({ store, member: deps.hostName });

  /** The service as one project sees it; `scope` undefined is the host's view. */
  function scoped(scope: string | undefined): NetworkService {
    async function load(name: string) {
      const l = await loadAny(name);
      if (scope !== undefined && projectOfRecord(l.spec) !== scope) {
        throw notFound(`Network ${name} not found: see trivisor network list`);
      }
      return l;
    }

    /** The guest of a NIC change, which must be in the network's project (else it is not found). */
    async function guestIn(guest: string, project: string) {
      assertDnsLabel(guest, 'guest name');
      const found = await records.guest.at(guest).get(store);
      if (!found || projectOfRecord(found.value) !== project) throw notFound(`Guest ${guest} not found`);
      return { modRevision: found.modRevision, spec: found.value };
    }

    const ctx: NetworkContext = {
      ...convergence,
      store,
      deps,
      scope,
      loadAny,
      load,
      guestIn,
      guestsUsing,
      get: (name) => service.get(name),
    };
    const service: NetworkService = {
      inProject: (project) => scoped(project),
      ...networkCrud(ctx),
      ...networkForwards(ctx),
      ...nicChanges(ctx, claims),
    };
    return service;
  }

  return scoped(undefined);
}
