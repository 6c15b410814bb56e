import { isIPv6 } from 'node:net';
import { alreadyExists, conflict, failedPrecondition, notFound } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import {
  addUsage,
  assertWithinLimits,
  DEFAULT_PROJECT,
  NO_USAGE,
  projectOfRecord,
} from '../core/projects.ts';
import type {
  Network,
  NetworkMemberState,
  NetworkSpec,
  NetworkStatus,
  NetworkTunnel,
} from '../core/types.ts';
import { type Ipv4Cidr, overlaps, parseCidr, parseGatewayCidr, subnetOf } from '../network/ipv4.ts';
import { addressHost, pickVni, SPANNED_MTU, spannedMtu, VXLAN_PORT } from '../network/vxlan.ts';
import { records, valuesOf } from '../store/records.ts';
import type { NetworkContext } from './network-context.ts';
import type { NetworkService } from './network-service.ts';
import { assertNetworkName, validateNetworkConfig } from './network-validation.ts';
import { guardedWrite } from './project-service.ts';

/** A network's status as one member's record of it says, against the spec's current generation. */
export function shownStatus(spec: NetworkSpec, status: NetworkStatus | undefined): Network['status'] {
  if (status?.error && status.failedGeneration === spec.generation) return 'Error';
  return status && status.observedGeneration >= spec.generation ? status.status : 'Pending';
}

/**
 * The network's bridge on each member (decision 0034): its own member's (`location`) from the
 * network's status, every other's from the status that member wrote (`NETWORK/MEMBER`); a
 * member that wrote none yet is Pending. Its own member first, then by name.
 */
export function networkMembers(
  spec: NetworkSpec,
  cluster: {
    own: NetworkStatus | undefined;
    members: string[];
    statuses: Map<string, NetworkStatus>;
    /** Each member's cluster address (`IP:PORT`): its end of the VXLAN, shown when the network has a VNI. */
    addresses?: Map<string, string>;
  },
): NetworkMemberState[] {
  const names = [...new Set([spec.location, ...[...cluster.members].sort()])];
  return names.map((member) => {
    const status = member === spec.location ? cluster.own : cluster.statuses.get(`${spec.name}/${member}`);
    const shown: NetworkMemberState = { name: member, status: shownStatus(spec, status) };
    if (status?.error && shown.status === 'Error') shown.error = status.error;
    const address = cluster.addresses?.get(member);
    if (spec.vni !== undefined && address !== undefined) shown.tunnelEndpoint = addressHost(address);
    return shown;
  });
}

/**
 * The VXLAN of a network on a cluster (decision 0050), as the API shows it: read-only. Its MTU is
 * 1430 when the members' cluster addresses are IPv6 (decision 0101), else 1450.
 */
export function networkTunnel(
  spec: NetworkSpec,
  addresses: Iterable<string> = [],
): NetworkTunnel | undefined {
  if (spec.vni === undefined) return undefined;
  const v6 = [...addresses].find((a) => isIPv6(addressHost(a)));
  return {
    type: 'vxlan',
    id: spec.vni,
    port: VXLAN_PORT,
    mtu: v6 ? spannedMtu(addressHost(v6)) : SPANNED_MTU,
  };
}

/** Listing, reading, creating, changing and deleting networks of the context's view. */
export function networkCrud(
  ctx: NetworkContext,
): Pick<NetworkService, 'list' | 'get' | 'create' | 'update' | 'delete'> {
  const { store, deps, scope, load, guestsUsing, waitConverged, writeSpec, rollBack } = ctx;

  const toNetwork = (
    spec: NetworkSpec,
    status: NetworkStatus | undefined,
    usedBy: string[],
    cluster?: { members: string[]; statuses: Map<string, NetworkStatus>; addresses: Map<string, string> },
  ): Network => {
    const n: Network = {
      name: spec.name,
      project: projectOfRecord(spec),
      description: spec.description,
      type: 'bridge',
      managed: true,
      config: spec.config,
      status: shownStatus(spec, status),
      usedBy: usedBy.map((g) => `/1.0/guests/${g}`),
      createdAt: spec.createdAt,
    };
    if (status?.error) n.error = status.error;
    if (spec.forwards?.length) n.forwards = spec.forwards;
    if (spec.acls?.length) n.acls = spec.acls;
    if (cluster && cluster.members.length > 0) {
      n.members = networkMembers(spec, { own: status, ...cluster });
      const tunnel = networkTunnel(spec, cluster.addresses.values());
      if (tunnel) n.tunnel = tunnel;
    }
    return n;
  };

  /** The cluster's members and the bridges their non-owners built, of one network or all (single host: none). */
  async function memberStatuses(
    name?: string,
  ): Promise<{ members: string[]; statuses: Map<string, NetworkStatus>; addresses: Map<string, string> }> {
    const [members, statuses] = await Promise.all([
      records.member.list(store),
      name === undefined
        ? records.networkMemberStatus.list(store)
        : records.networkMemberStatus.list(store, name),
    ]);
    const byKey = new Map<string, NetworkStatus>();
    for (const s of statuses.items) byKey.set(records.networkMemberStatus.nameOf(s.key), s.value);
    return {
      members: members.items.map((m) => records.member.nameOf(m.key)),
      statuses: byKey,
      addresses: new Map(members.items.map((m) => [records.member.nameOf(m.key), m.value.address])),
    };
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

  return {
    async list(options = {}) {
      const [specs, statuses, used, cluster] = await Promise.all([
        records.network.list(store),
        records.networkStatus.list(store),
        guestsUsing(),
        memberStatuses(),
      ]);
      const st = new Map<string, NetworkStatus>();
      for (const s of statuses.items) st.set(records.networkStatus.nameOf(s.key), s.value);
      return valuesOf(specs)
        .filter((s) => scope === undefined || options.allProjects || projectOfRecord(s) === scope)
        .map((s) => toNetwork(s, st.get(s.name), used.get(s.name) ?? [], cluster));
    },

    async get(name) {
      const l = await load(name);
      const [used, cluster] = await Promise.all([guestsUsing(), memberStatuses(name)]);
      return toNetwork(l.spec, l.status, used.get(name) ?? [], cluster);
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
      const base: NetworkSpec = {
        name: request.name,
        project,
        description: request.description ?? '',
        config,
        generation: 1,
        deleting: false,
        location: deps.hostName,
        createdAt: new Date().toISOString(),
      };
      // The VNI is claimed with the spec (decision 0050): two members creating networks at once
      // never take one VNI; the one that loses picks again.
      let spec = base;
      for (let attempt = 0; ; attempt++) {
        const used = (await records.networkVni.list(store)).items.map((v) =>
          Number(records.networkVni.nameOf(v.key)),
        );
        const vni = pickVni(used);
        if (vni === undefined)
          throw failedPrecondition('Every VXLAN network identifier (VNI) is taken: delete a network first');
        spec = { ...base, vni };
        const vniRef = records.networkVni.at(String(vni));
        const r = await guardedWrite(store, project, async (p) => {
          assertWithinLimits(project, p.spec.config, {
            before: p.usage,
            after: addUsage(p.usage, { ...NO_USAGE, networks: 1 }),
          });
          return {
            compare: [records.network.at(spec.name).absent(), vniRef.absent()],
            success: [
              records.network.at(spec.name).putOp(spec),
              records.networkStatus.at(spec.name).deleteOp(),
              vniRef.putOp(spec.name),
            ],
          };
        });
        if (r.succeeded) break;
        const now = await records.network.at(spec.name).get(store);
        if (now || attempt >= 5) throw nameTaken(spec.name, now?.value, project);
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
      return ctx.get(spec.name);
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
      return ctx.get(name);
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
  };
}

/** A name taken by another project's network says only that (network names are the host's bridges). */
function nameTaken(name: string, other: NetworkSpec | undefined, project: string) {
  return other && projectOfRecord(other) !== project
    ? alreadyExists(
        `The name ${name} is taken by a network of another project: network names are unique on this host (they name its bridges), pick another`,
      )
    : alreadyExists(`Network ${name} already exists`);
}
