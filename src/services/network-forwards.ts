import { conflict, failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { NetworkForward, NetworkSpec } from '../core/types.ts';
import { contains, parseGatewayCidr, parseIpv4, subnetOf } from '../network/ipv4.ts';
import { records, valuesOf } from '../store/records.ts';
import { addressMembers } from './address-members.ts';
import type { NetworkContext } from './network-context.ts';
import type { NetworkService } from './network-service.ts';
import { validateAclRule } from './network-validation.ts';

/** Port forwards and ACL rules of a network of the context's view. */
export function networkForwards(
  ctx: NetworkContext,
): Pick<NetworkService, 'addForward' | 'removeForward' | 'addAcl' | 'removeAcl'> {
  const { store, deps, load, guestIn, waitConverged, writeSpec, rollBack } = ctx;

  /**
   * Refuses a forward whose target runs on another member than the one holding its listen
   * address (decision 0050): the gateway is distributed and a member's host reaches only its
   * own guests over the bridge, so the DNAT would send into nothing. A target no guest holds,
   * or a listen address no member is known by, cannot be checked and is taken.
   */
  async function assertSameMember(
    network: NetworkSpec,
    listenAddress: string,
    targetAddress: string,
    targetGuest: string | undefined,
  ): Promise<void> {
    const owner = (await addressMembers({ store, hostName: deps.hostName, hostSubnets: deps.hostSubnets }))(
      listenAddress,
    );
    if (owner === undefined) return;
    const guest = valuesOf(await records.guest.list(store)).find(
      (g) =>
        projectOfRecord(g) === projectOfRecord(network) &&
        (targetGuest !== undefined
          ? g.name === targetGuest
          : Object.values(g.devices ?? {}).some(
              (d) => d.type === 'nic' && d.network === network.name && d['ipv4.address'] === targetAddress,
            )),
    );
    if (!guest || guest.location === owner) return;
    throw failedPrecondition(
      `Guest ${guest.name} runs on member ${guest.location}, but ${listenAddress} is member ${owner}'s: a forward reaches only the guests of the member holding its listen address; forward an address of ${guest.location}`,
    );
  }

  return {
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
      await assertSameMember(l.spec, request.listenAddress, targetAddress, targetGuest);
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
      return ctx.get(network);
    },

    async removeForward(network, f) {
      const l = await load(network);
      const protocol = f.protocol ?? 'tcp';
      const forwards = l.spec.forwards ?? [];
      const rest = forwards.filter(
        (x) =>
          !(x.listenAddress === f.listenAddress && x.listenPort === f.listenPort && x.protocol === protocol),
      );
      if (rest.length === forwards.length) {
        throw notFound(`Network ${network} has no ${protocol} forward of ${f.listenAddress}:${f.listenPort}`);
      }
      const gen = l.spec.generation + 1;
      await writeSpec({ ...l.spec, forwards: rest, generation: gen }, l.modRevision);
      await waitConverged(network, gen);
      return ctx.get(network);
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
      return ctx.get(network);
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
      return ctx.get(network);
    },
  };
}
