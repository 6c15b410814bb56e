import { setTimeout as sleep } from 'node:timers/promises';
import {
  alreadyExists,
  conflict,
  failedPrecondition,
  invalidArgument,
  isErrorCode,
  notFound,
  TrivisorError,
  unavailable,
} from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import {
  addUsage,
  assertWithinLimits,
  DEFAULT_PROJECT,
  NO_USAGE,
  projectOfRecord,
} from '../core/projects.ts';
import type {
  GuestSpec,
  Model,
  Network,
  NetworkAclRule,
  NetworkAddressClaim,
  NetworkForward,
  NetworkSpec,
  NetworkStatus,
  NicDevice,
} from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { LiveResult } from '../drivers/guest-volumes.ts';
import type { HostSubnet } from '../network/default-network.ts';
import {
  allocateAddress,
  assertUnicastMac,
  contains,
  formatIpv4,
  type Ipv4Cidr,
  overlaps,
  parseBitRate,
  parseCidr,
  parseGatewayCidr,
  parseIpv4,
  stableMac,
  subnetOf,
} from '../network/ipv4.ts';
import type { Compare, KvStore, TxnOp } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { type ClaimHolder, type Claims, createClaims, describeHolder } from './claims.ts';
import { guardedWrite } from './project-service.ts';

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

export function createNetworkService(deps: NetworkServiceDeps): NetworkService {
  const { store } = deps;
  const waitMs = deps.convergeWaitMs ?? 30_000;

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

  const toNetwork = (spec: NetworkSpec, status: NetworkStatus | undefined, usedBy: string[]): Network => {
    const n: Network = {
      name: spec.name,
      project: projectOfRecord(spec),
      description: spec.description,
      type: 'bridge',
      managed: true,
      config: spec.config,
      status:
        status?.error && status.failedGeneration === spec.generation
          ? 'Error'
          : status && status.observedGeneration >= spec.generation
            ? status.status
            : 'Pending',
      usedBy: usedBy.map((g) => `/1.0/guests/${g}`),
      createdAt: spec.createdAt,
    };
    if (status?.error) n.error = status.error;
    if (spec.forwards?.length) n.forwards = spec.forwards;
    if (spec.acls?.length) n.acls = spec.acls;
    return n;
  };

  /** Waits until the controller answered `generation` (or deleted the network when `gone`). */
  async function waitConverged(name: string, generation: number, gone = false): Promise<void> {
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      const [s, st] = await Promise.all([
        records.network.at(name).get(store),
        records.networkStatus.at(name).get(store),
      ]);
      if (!s) {
        if (gone) return;
        throw conflict(`Network ${name} was deleted meanwhile`);
      }
      const status = st?.value;
      if (status?.failedGeneration === generation && status.error) {
        // The controller's code (a refusal stays what it was); statuses without one were refusals.
        throw new TrivisorError(
          isErrorCode(status.errorCode) && status.errorCode !== 'Internal'
            ? status.errorCode
            : 'FailedPrecondition',
          status.error,
        );
      }
      if (!gone && status && status.observedGeneration >= generation) return;
      await sleep(50);
    }
    throw unavailable(
      `Network ${name} was not converged within ${waitMs / 1000} s: is the daemon's network controller running?`,
    );
  }

  async function assertNoOverlap(name: string, cidr: Ipv4Cidr, project: string): Promise<void> {
    for (const other of valuesOf(await records.network.list(store))) {
      if (other.name === name || other.deleting) continue;
      const o = other.config['ipv4.address'];
      if (o && overlaps(parseGatewayCidr(o), cidr)) {
        // Subnets are the host's: another project's network is named by nothing but that.
        const which =
          projectOfRecord(other) === project
            ? `network ${other.name} (${o})`
            : 'a network of another project';
        throw conflict(`Subnet ${subnetOf(cidr)} overlaps ${which}: pick another ipv4.address`);
      }
    }
  }

  /**
   * Refuses a subnet the host already routes through an interface that is not a Trivisor
   * network's bridge (those are checked against the store above): the host would have two
   * routes for it, and guests on the new network could reach neither side reliably.
   */
  async function assertNotHostRouted(name: string, cidr: Ipv4Cidr): Promise<void> {
    if (!deps.hostSubnets) return;
    // The network's own bridge (one a lost record left, too: the controller takes it over) is no conflict.
    const ours = new Set([
      name,
      ...(await store.list(records.network.prefix)).kvs.map((kv) => records.network.nameOf(kv.key)),
    ]);
    for (const host of await deps.hostSubnets()) {
      if (ours.has(host.dev)) continue;
      let theirs: Ipv4Cidr;
      try {
        theirs = parseCidr(host.cidr);
      } catch {
        continue;
      }
      if (!overlaps(theirs, cidr)) continue;
      const where = host.dev ? `host interface ${host.dev}` : 'the host';
      const what = host.source === 'address' ? `the address ${host.cidr} of` : `a route to ${host.cidr} on`;
      throw conflict(
        `Subnet ${subnetOf(cidr)} overlaps ${what} ${where}: pick another ipv4.address (a free /24 of 198.18.0.0/15, say)`,
      );
    }
  }

  async function writeSpec(next: NetworkSpec, modRevision: number): Promise<void> {
    const ref = records.network.at(next.name);
    const r = await store.txn({ compare: [ref.unchanged(modRevision)], success: [ref.putOp(next)] });
    if (!r.succeeded) throw conflict(`Network ${next.name} was changed at the same time; retry`);
  }

  /** Puts back the spec before a change the host could not apply, unless it changed again meanwhile. */
  async function rollBack(name: string, failedGen: number, before: NetworkSpec): Promise<void> {
    const now = await records.network.at(name).get(store);
    if (!now || now.value.generation !== failedGen) return;
    await writeSpec({ ...before, generation: failedGen + 1 }, now.modRevision).catch(() => {});
  }

  // One NIC change of a guest at a time, whichever member asks: each reads the guest, writes it
  // (compared on its revision, with the address claims) and plugs or unplugs (decision 28).
  const claims = deps.claims ?? createClaims({ store, member: deps.hostName });
  const nicsBusy = (guest: string) => ({
    action: 'NIC change',
    busy: (h: ClaimHolder) =>
      conflict(`Guest ${guest} is having a NIC added or removed (${describeHolder(h)}): wait for it`),
  });

  /**
   * The guest's top process while it runs (checked against pid reuse by its driver); undefined when
   * stopped. FailedPrecondition when frozen, or running without a driver here to plug NICs live.
   */
  async function runningPid(spec: GuestSpec): Promise<number | undefined> {
    const status = (await records.guestStatus.at(spec.name).get(store))?.value;
    const driver = deps.drivers?.[spec.model];
    if (!driver) {
      if (status?.status === 'Running' || status?.status === 'Frozen') {
        throw failedPrecondition(`Guest ${spec.name} is running: stop it before changing its NICs`);
      }
      return undefined;
    }
    const rt = await driver
      .inspect(spec, status?.process)
      .catch(() => ({ state: 'absent' as const, process: undefined }));
    if (rt.state === 'frozen') {
      throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it before changing its NICs`);
    }
    return rt.state === 'running' ? rt.process?.pid : undefined;
  }

  /** Removes a NIC from the guest's spec and releases its address, in one transaction. */
  async function removeNic(guest: string, nic: string, device: NicDevice): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const found = await records.guest.at(guest).get(store);
      if (!found) return;
      const spec = found.value;
      const devices = { ...spec.devices };
      delete devices[nic];
      const release =
        device['ipv4.address'] && spec.devices?.[nic]
          ? [records.networkAddress.at(device.network, device['ipv4.address']).deleteOp()]
          : [];
      const r = await store.txn({
        compare: [records.guest.at(guest).unchanged(found.modRevision)],
        success: [records.guest.at(guest).putOp({ ...spec, devices }), ...release],
      });
      if (r.succeeded) return;
    }
    throw conflict(`Guest ${guest} was changed at the same time; retry`);
  }

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

    const service: NetworkService = {
      inProject: (project) => scoped(project),

      async list(options = {}) {
        const [specs, statuses, used] = await Promise.all([
          records.network.list(store),
          records.networkStatus.list(store),
          guestsUsing(),
        ]);
        const st = new Map<string, NetworkStatus>();
        for (const s of statuses.items) st.set(records.networkStatus.nameOf(s.key), s.value);
        return valuesOf(specs)
          .filter((s) => scope === undefined || options.allProjects || projectOfRecord(s) === scope)
          .map((s) => toNetwork(s, st.get(s.name), used.get(s.name) ?? []));
      },

      async get(name) {
        const l = await load(name);
        return toNetwork(l.spec, l.status, (await guestsUsing()).get(name) ?? []);
      },

      async create(request) {
        assertNetworkName(request.name);
        const project = scope ?? DEFAULT_PROJECT;
        const config = validateNetworkConfig({ ...(request.config ?? {}) });
        const cidr = parseGatewayCidr(config['ipv4.address'] as string);
        const taken = await records.network.at(request.name).get(store);
        if (taken) throw nameTaken(request.name, taken.value, project);
        await assertNoOverlap(request.name, cidr, project);
        await assertNotHostRouted(request.name, cidr);
        const spec: NetworkSpec = {
          name: request.name,
          project,
          description: request.description ?? '',
          config,
          generation: 1,
          deleting: false,
          location: deps.hostName,
          createdAt: new Date().toISOString(),
        };
        const r = await guardedWrite(store, project, async (p) => {
          assertWithinLimits(project, p.spec.config, {
            before: p.usage,
            after: addUsage(p.usage, { ...NO_USAGE, networks: 1 }),
          });
          return {
            compare: [records.network.at(spec.name).absent()],
            success: [
              records.network.at(spec.name).putOp(spec),
              records.networkStatus.at(spec.name).deleteOp(),
            ],
          };
        });
        if (!r.succeeded) {
          const now = await records.network.at(spec.name).get(store);
          throw nameTaken(spec.name, now?.value, project);
        }
        try {
          await waitConverged(spec.name, 1);
        } catch (e) {
          // A network that could not be built leaves nothing behind.
          const l = await load(spec.name).catch(() => undefined);
          if (l) {
            await writeSpec(
              { ...l.spec, deleting: true, generation: l.spec.generation + 1 },
              l.modRevision,
            ).catch(() => {});
            await waitConverged(spec.name, l.spec.generation + 1, true).catch(() => {});
          }
          throw e;
        }
        return service.get(spec.name);
      },

      async update(name, change) {
        const l = await load(name);
        if (l.spec.deleting) throw conflict(`Network ${name} is being deleted`);
        const config = { ...l.spec.config, ...(change.set ?? {}) };
        for (const key of change.unset ?? []) {
          if (!(key in config))
            throw notFound(`Network ${name} has no configuration key ${JSON.stringify(key)}`);
          delete config[key];
        }
        const next = validateNetworkConfig(config);
        if (next['ipv4.address'] !== l.spec.config['ipv4.address']) {
          const cidr = parseGatewayCidr(next['ipv4.address'] as string);
          await assertNoOverlap(name, cidr, projectOfRecord(l.spec));
          await assertNotHostRouted(name, cidr);
          const claims = await store.list(keys.networkAddresses(name));
          if (claims.kvs.length > 0) {
            throw failedPrecondition(
              `Network ${name} has guest NICs with addresses in its subnet: remove them before changing ipv4.address`,
            );
          }
        }
        const gen = l.spec.generation + 1;
        await writeSpec({ ...l.spec, config: next, generation: gen }, l.modRevision);
        await waitConverged(name, gen).catch(async (e) => {
          await rollBack(name, gen, l.spec);
          throw e;
        });
        return service.get(name);
      },

      async delete(name) {
        const l = await load(name);
        const users = (await guestsUsing()).get(name) ?? [];
        if (users.length > 0) {
          throw failedPrecondition(
            `Network ${name} is used by ${users.join(', ')}: delete those guests or their NICs first`,
          );
        }
        const gen = l.spec.generation + 1;
        if (!l.spec.deleting) await writeSpec({ ...l.spec, deleting: true, generation: gen }, l.modRevision);
        await waitConverged(name, gen, true);
      },

      async addForward(network, request) {
        const l = await load(network);
        if (l.spec.deleting) throw conflict(`Network ${network} is being deleted`);
        const protocol = request.protocol ?? 'tcp';
        if (protocol !== 'tcp' && protocol !== 'udp')
          throw invalidArgument(`Protocol ${JSON.stringify(protocol)} is not tcp or udp`);
        const listen = parseIpv4(request.listenAddress);
        if (listen === undefined || listen === 0) {
          throw invalidArgument(
            `Listen address ${JSON.stringify(request.listenAddress)} is not an IPv4 address of this host`,
          );
        }
        for (const [what, port] of [
          ['listen port', request.listenPort],
          ['target port', request.targetPort],
        ] as const) {
          if (!Number.isInteger(port) || port < 1 || port > 65535) {
            throw invalidArgument(`The ${what} ${JSON.stringify(port)} is not a port number from 1 to 65535`);
          }
        }
        const cidr = parseGatewayCidr(l.spec.config['ipv4.address'] as string);
        let targetAddress: string;
        let targetGuest: string | undefined;
        const asIp = parseIpv4(request.target);
        if (asIp !== undefined) {
          if (!contains(cidr, asIp)) {
            throw invalidArgument(
              `Target ${request.target} is not in network ${network}'s subnet ${subnetOf(cidr)}`,
            );
          }
          targetAddress = request.target;
        } else {
          const { spec: g } = await guestIn(request.target, projectOfRecord(l.spec));
          const nic = Object.values(g.devices ?? {}).find((d) => d.network === network && d['ipv4.address']);
          if (!nic?.['ipv4.address'])
            throw failedPrecondition(`Guest ${request.target} has no NIC on network ${network}`);
          targetAddress = nic['ipv4.address'];
          targetGuest = g.name;
        }
        for (const other of valuesOf(await records.network.list(store))) {
          const taken = (other.forwards ?? []).find(
            (f) =>
              f.listenAddress === request.listenAddress &&
              f.listenPort === request.listenPort &&
              f.protocol === protocol,
          );
          if (taken) {
            // A host port is the host's: where another project forwards it is not this project's business.
            const where =
              projectOfRecord(other) === projectOfRecord(l.spec)
                ? ` to ${taken.targetAddress}:${taken.targetPort} (network ${other.name}): remove that forward first`
                : ' by another project: pick another listen port';
            throw conflict(
              `${protocol} ${request.listenAddress}:${request.listenPort} is already forwarded${where}`,
            );
          }
        }
        const forward: NetworkForward = {
          listenAddress: request.listenAddress,
          listenPort: request.listenPort,
          protocol,
          targetAddress,
          targetPort: request.targetPort,
          ...(targetGuest !== undefined && { targetGuest }),
        };
        const gen = l.spec.generation + 1;
        await writeSpec(
          { ...l.spec, forwards: [...(l.spec.forwards ?? []), forward], generation: gen },
          l.modRevision,
        );
        await waitConverged(network, gen).catch(async (e) => {
          await rollBack(network, gen, l.spec);
          throw e;
        });
        return service.get(network);
      },

      async removeForward(network, f) {
        const l = await load(network);
        const protocol = f.protocol ?? 'tcp';
        const forwards = l.spec.forwards ?? [];
        const rest = forwards.filter(
          (x) =>
            !(
              x.listenAddress === f.listenAddress &&
              x.listenPort === f.listenPort &&
              x.protocol === protocol
            ),
        );
        if (rest.length === forwards.length) {
          throw notFound(
            `Network ${network} has no ${protocol} forward of ${f.listenAddress}:${f.listenPort}`,
          );
        }
        const gen = l.spec.generation + 1;
        await writeSpec({ ...l.spec, forwards: rest, generation: gen }, l.modRevision);
        await waitConverged(network, gen);
        return service.get(network);
      },

      async addAcl(network, raw) {
        const rule = validateAclRule(raw);
        const l = await load(network);
        if (l.spec.deleting) throw conflict(`Network ${network} is being deleted`);
        const gen = l.spec.generation + 1;
        await writeSpec({ ...l.spec, acls: [...(l.spec.acls ?? []), rule], generation: gen }, l.modRevision);
        await waitConverged(network, gen).catch(async (e) => {
          await rollBack(network, gen, l.spec);
          throw e;
        });
        return service.get(network);
      },

      async removeAcl(network, index) {
        const l = await load(network);
        const acls = l.spec.acls ?? [];
        if (!Number.isInteger(index) || index < 0 || index >= acls.length) {
          throw notFound(
            `Network ${network} has no ACL rule ${index}: see trivisor network acl list ${network}`,
          );
        }
        const gen = l.spec.generation + 1;
        await writeSpec(
          { ...l.spec, acls: acls.filter((_, i) => i !== index), generation: gen },
          l.modRevision,
        );
        await waitConverged(network, gen);
        return service.get(network);
      },

      async attach(network, guest, options = {}) {
        // Refused before the claim when it can be: a refused request writes nothing.
        await guestIn(guest, projectOfRecord((await load(network)).spec));
        return claims.holding('guest-nics', guest, nicsBusy(guest), async () => {
          const net = await load(network);
          const { modRevision, spec } = await guestIn(guest, projectOfRecord(net.spec));
          if (spec.deleting) throw conflict(`Guest ${guest} is being deleted`);
          const devices = spec.devices ?? {};
          let nic = options.nic;
          if (nic === undefined) {
            for (let i = 0; nic === undefined; i++) if (!(`eth${i}` in devices)) nic = `eth${i}`;
          }
          if (nic in devices) throw alreadyExists(`Guest ${guest} already has a device ${nic}`);
          const pid = await runningPid(spec);
          const claims = await service.claimNics(
            guest,
            { [nic]: { ...options.device, type: 'nic', network } },
            { project: projectOfRecord(net.spec) },
          );
          const next: GuestSpec = { ...spec, devices: { ...devices, ...claims.devices } };
          const r = await store.txn({
            compare: [records.guest.at(guest).unchanged(modRevision), ...claims.compare],
            success: [records.guest.at(guest).putOp(next), ...claims.success],
          });
          if (!r.succeeded)
            throw conflict(`Guest ${guest} or the address was changed at the same time; retry`);
          let applied: NicChange['applied'] = 'none';
          const driver = deps.drivers?.[spec.model];
          if (pid !== undefined && driver) {
            try {
              applied = await driver.attachNic(next, nic, { pid });
            } catch (e) {
              // Recorded first (a daemon killed meanwhile leaves a NIC for the next start); taken back here.
              await removeNic(guest, nic, claims.devices[nic] as NicDevice).catch(() => {});
              throw e;
            }
          }
          const how =
            applied === 'live'
              ? ' (live)'
              : applied === 'next-start'
                ? `; ${guest} gets it at its next start`
                : `; ${guest} gets it when it starts`;
          return { guest, nic, applied, message: `Attached ${nic} on ${network} to ${guest}${how}` };
        });
      },

      async detach(network, guest, options = {}) {
        await guestIn(guest, projectOfRecord((await load(network)).spec));
        return claims.holding('guest-nics', guest, nicsBusy(guest), async () => {
          const net = await load(network);
          const { spec } = await guestIn(guest, projectOfRecord(net.spec));
          const onNet = Object.entries(spec.devices ?? {}).filter(
            ([name, d]) => d.network === network && (options.nic === undefined || name === options.nic),
          );
          if (onNet.length === 0) throw notFound(`Guest ${guest} has no NIC on network ${network}`);
          if (onNet.length > 1) {
            throw invalidArgument(
              `Guest ${guest} has several NICs on network ${network} (${onNet.map(([n]) => n).join(', ')}): say which`,
            );
          }
          const [nic, device] = onNet[0] as [string, NicDevice];
          const pid = await runningPid(spec);
          let applied: NicChange['applied'] = 'none';
          if (pid !== undefined) {
            const driver = deps.drivers?.[spec.model];
            if (!driver)
              throw failedPrecondition(`Guest ${guest} is running: stop it before detaching a NIC`);
            // Unplugged first: when the guest does not let go, the NIC stays recorded and nothing changed.
            applied = await driver.detachNic(spec, nic, { pid });
          }
          await removeNic(guest, nic, device);
          const how =
            applied === 'live' ? ' (live)' : applied === 'next-start' ? `; it goes when ${guest} stops` : '';
          return { guest, nic, applied, message: `Detached ${nic} on ${network} from ${guest}${how}` };
        });
      },

      async claimNics(guest, devices, options = {}) {
        const project = options.project ?? scope;
        const out: NicClaims = { devices: {}, compare: [], success: [] };
        const taken = new Map<string, Set<number>>();
        for (const [nic, raw] of Object.entries(devices)) {
          if (!/^[a-z][a-z0-9]{0,14}$/.test(nic)) {
            throw invalidArgument(
              `Device name ${JSON.stringify(nic)} is not a valid interface name like eth0`,
            );
          }
          if (raw.type !== 'nic')
            throw invalidArgument(
              `Device ${nic} has type ${JSON.stringify(raw.type)}: only nic is supported`,
            );
          const l = await loadAny(raw.network).then(
            (found) => {
              // A guest gets NICs on its own project's networks only.
              if (project !== undefined && projectOfRecord(found.spec) !== project) {
                throw notFound(`Network ${raw.network} of device ${nic} not found: create it first`);
              }
              return found;
            },
            (e) => {
              throw e.code === 'NotFound'
                ? notFound(`Network ${raw.network} of device ${nic} not found: create it first`)
                : e;
            },
          );
          if (l.spec.deleting) throw conflict(`Network ${raw.network} is being deleted`);
          const cidr = parseGatewayCidr(l.spec.config['ipv4.address'] as string);
          const hwaddr = raw.hwaddr?.toLowerCase() ?? stableMac(guest, nic);
          assertUnicastMac(hwaddr, `${nic}.hwaddr`);
          let used = taken.get(raw.network);
          if (!used) {
            used = new Set(
              (await store.list(keys.networkAddresses(raw.network))).kvs.map(
                (kv) => parseIpv4(kv.key.slice(keys.networkAddresses(raw.network).length)) ?? 0,
              ),
            );
            taken.set(raw.network, used);
          }
          let ip: number | undefined;
          const wanted = raw['ipv4.address'];
          if (wanted !== undefined) {
            ip = parseIpv4(wanted);
            if (
              ip === undefined ||
              !contains(cidr, ip) ||
              ip === cidr.value ||
              ip === cidr.network ||
              ip === cidr.broadcast
            ) {
              throw invalidArgument(
                `${nic}.ipv4.address ${wanted} is not a host address of network ${raw.network} (${subnetOf(cidr)}) other than its gateway`,
              );
            }
            if (used.has(ip))
              throw conflict(`Address ${wanted} of network ${raw.network} is taken: pick another`);
          } else {
            ip = allocateAddress(cidr, used);
            if (ip === undefined) throw failedPrecondition(`Network ${raw.network} has no free address left`);
          }
          used.add(ip);
          const address = formatIpv4(ip);
          const device: NicDevice = { type: 'nic', network: raw.network, hwaddr, 'ipv4.address': address };
          for (const key of ['limits.ingress', 'limits.egress'] as const) {
            const v = raw[key];
            if (v === undefined) continue;
            parseBitRate(v, `${nic}.${key}`);
            device[key] = v;
          }
          out.devices[nic] = device;
          const ref = records.networkAddress.at(raw.network, address);
          const claim: NetworkAddressClaim = { guest, nic, hwaddr };
          out.compare.push(ref.absent());
          out.success.push(ref.putOp(claim));
        }
        return out;
      },
    };
    return service;
  }

  return scoped(undefined);
}

/** A name taken by another project's network says only that (network names are the host's bridges). */
function nameTaken(name: string, other: NetworkSpec | undefined, project: string) {
  return other && projectOfRecord(other) !== project
    ? alreadyExists(
        `The name ${name} is taken by a network of another project: network names are unique on this host (they name its bridges), pick another`,
      )
    : alreadyExists(`Network ${name} already exists`);
}
