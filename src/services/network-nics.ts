import { alreadyExists, conflict, failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { GuestSpec, NetworkAddressClaim, NicDevice } from '../core/types.ts';
import {
  allocateAddress,
  assertUnicastMac,
  contains,
  formatIpv4,
  networkFull,
  parseBitRate,
  parseGatewayCidr,
  parseIpv4,
  stableMac,
  subnetOf,
} from '../network/ipv4.ts';
import { records } from '../store/records.ts';
import { type ClaimHolder, type Claims, describeHolder } from './claims.ts';
import type { NetworkContext } from './network-context.ts';
import type { NetworkService, NicChange, NicClaims } from './network-service.ts';

const nicsBusy = (guest: string) => ({
  action: 'NIC change',
  busy: (h: ClaimHolder) =>
    conflict(`Guest ${guest} is having a NIC added or removed (${describeHolder(h)}): wait for it`),
});

/**
 * A guest's NICs on networks of the context's view: attach and detach (under the guest's
 * `guest-nics` claim, decision 28) and the address claims a guest's NICs take.
 */
export function nicChanges(
  ctx: NetworkContext,
  claims: Claims,
): Pick<NetworkService, 'attach' | 'detach' | 'claimNics'> {
  const { store, deps, scope, loadAny, load, guestIn } = ctx;

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

  const nics: Pick<NetworkService, 'attach' | 'detach' | 'claimNics'> = {
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
        const claims = await nics.claimNics(
          guest,
          { [nic]: { ...options.device, type: 'nic', network } },
          { project: projectOfRecord(net.spec) },
        );
        const next: GuestSpec = { ...spec, devices: { ...devices, ...claims.devices } };
        const r = await store.txn({
          compare: [records.guest.at(guest).unchanged(modRevision), ...claims.compare],
          success: [records.guest.at(guest).putOp(next), ...claims.success],
        });
        if (!r.succeeded) throw conflict(`Guest ${guest} or the address was changed at the same time; retry`);
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
          if (!driver) throw failedPrecondition(`Guest ${guest} is running: stop it before detaching a NIC`);
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
          throw invalidArgument(`Device name ${JSON.stringify(nic)} is not a valid interface name like eth0`);
        }
        if (raw.type !== 'nic')
          throw invalidArgument(`Device ${nic} has type ${JSON.stringify(raw.type)}: only nic is supported`);
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
          if (ip === undefined) throw networkFull(raw.network, cidr);
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
  return nics;
}
