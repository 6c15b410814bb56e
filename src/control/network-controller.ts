import { asTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, NetworkAddressClaim, NetworkSpec, NetworkStatus } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { hostPortName } from '../network/guest-networking.ts';
import { parseGatewayCidr } from '../network/ipv4.ts';
import type { DhcpHost, NetworkBackend, NetworkDefinition } from '../network/network-backend.ts';
import { nicsByEnd, pickVni, type TunnelDefinition, tunnelEnds } from '../network/vxlan.ts';
import type { MoveMark } from '../services/move-marks.ts';
import type { EventBus } from '../services/types.ts';
import type { KvStore } from '../store/kv.ts';
import { type MemberRecord, records, valuesOf } from '../store/records.ts';
import { createInformer, type Informer } from './informer.ts';

export interface NetworkControllerDeps {
  store: KvStore;
  backend: NetworkBackend;
  events: EventBus;
  log: Logger;
  hostName: string;
  /** State dir: names the host ends of NICs, to put them back on a recreated bridge. */
  stateDir?: string;
  /** How often bridges and dnsmasq are checked and repaired. */
  checkIntervalMs?: number;
}

/** Converges this host's managed networks to their specs (bridge, dnsmasq, nftables). */
export interface NetworkController {
  /** Removes stale bridges, builds or repairs every network, then watches. */
  start(): Promise<void>;
  /** Stops watching; networks keep working. */
  stop(): Promise<void>;
  reconcile(name: string): Promise<void>;
}

/** The backend's view of a network spec and the NICs that claimed its addresses. */
export function networkDefinition(
  spec: NetworkSpec,
  claims: Array<{ ip: string; claim: NetworkAddressClaim }>,
  stateDir?: string,
  /** This member's and the other members' cluster addresses and their NICs (a cluster member only). */
  ends?: Omit<TunnelDefinition, 'vni'>,
): NetworkDefinition {
  const hosts: DhcpHost[] = claims.map(({ ip, claim }) => ({
    mac: claim.hwaddr,
    ip,
    // A guest's first NIC answers to its name; others to NAME-NIC.
    name: claim.nic === 'eth0' ? claim.guest : `${claim.guest}-${claim.nic}`,
    ...(stateDir !== undefined && { port: hostPortName(stateDir, claim.guest, claim.nic) }),
  }));
  return {
    name: spec.name,
    gateway: parseGatewayCidr(spec.config['ipv4.address'] as string),
    nat: spec.config['ipv4.nat'] === 'true',
    isolated: spec.config['security.isolated'] === 'true',
    domain: spec.config['dns.domain'] ?? 'trivisor',
    hosts,
    forwards: spec.forwards ?? [],
    acls: spec.acls ?? [],
    ...(spec.vni !== undefined && { vni: spec.vni }),
    ...(spec.vni !== undefined && ends && { tunnel: { vni: spec.vni, ...ends } }),
  };
}

export function createNetworkController(deps: NetworkControllerDeps): NetworkController {
  const { store, backend, events, hostName } = deps;
  const log = deps.log.child({ component: 'network-controller' });
  const checkIntervalMs = deps.checkIntervalMs ?? 5000;
  const informers: Array<Informer<unknown>> = [];
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  // One reconcile per network at a time; requests meanwhile coalesce into one re-run.
  const chains = new Map<string, Promise<void>>();
  const dirty = new Set<string>();

  const reconcile = (name: string): Promise<void> => {
    if (dirty.has(name)) return chains.get(name) ?? Promise.resolve();
    dirty.add(name);
    const prev = chains.get(name) ?? Promise.resolve();
    const next = prev.then(async () => {
      dirty.delete(name);
      await reconcileOnce(name).catch((e) =>
        log.error({ network: name, err: asTrivisorError(e).message }, 'network reconcile crashed'),
      );
    });
    chains.set(name, next);
    void next.then(() => {
      if (chains.get(name) === next) chains.delete(name);
    });
    return next;
  };

  async function claimsOf(name: string) {
    const prefix = keys.networkAddresses(name);
    const { items } = await records.networkAddress.list(store, name);
    return items.map((c) => ({ key: c.key, ip: c.key.slice(prefix.length), claim: c.value }));
  }

  // The informers' caches (decision 0087), set by start(): where each guest runs and the moves
  // under way, read per reconcile from memory instead of listing them from the store.
  let locations: Informer<string> | undefined;
  let moves: Informer<MoveMark> | undefined;
  // Guest → the networks it holds address claims on (→ how many), kept from the claims' watch: what
  // a guest's location or move mark changes.
  const guestNetworks = new Map<string, Map<string, number>>();
  const indexClaim = (guest: string, network: string, by: 1 | -1) => {
    const nets = guestNetworks.get(guest) ?? new Map<string, number>();
    const count = (nets.get(network) ?? 0) + by;
    if (count > 0) nets.set(network, count);
    else nets.delete(network);
    if (nets.size > 0) guestNetworks.set(guest, nets);
    else guestNetworks.delete(guest);
  };

  /**
   * Each member's NICs on a spanned network, by cluster IP (decision 0050): its guests' (their
   * location records) and those of guests moving from or to it (their move marks). Read from the
   * informers' caches: per network, what its claims name, not every guest of the cluster.
   */
  function boundNics(
    claims: Array<{ ip: string; claim: NetworkAddressClaim }>,
    members: Array<{ name: string; address: string }>,
    remotes: string[],
  ) {
    const named = new Set(claims.map((c) => c.claim.guest));
    const where = new Map<string, string>();
    const moving: MoveMark[] = [];
    for (const guest of named) {
      const member = locations?.get(keys.guestLocation(guest));
      if (member !== undefined) where.set(guest, member);
      const mark = moves?.get(keys.guestMove(guest));
      if (mark) moving.push(mark);
    }
    const byEnd = nicsByEnd({
      claims: claims.map((c) => ({ guest: c.claim.guest, mac: c.claim.hwaddr, ip: c.ip })),
      members,
      locations: where,
      moves: moving,
    });
    return Object.fromEntries(Object.entries(byEnd).filter(([ip]) => remotes.includes(ip)));
  }

  async function reconcileOnce(name: string): Promise<void> {
    // The network's own member (its `location`) writes its status and its end; every other member
    // builds the same bridge and says how that went in a status of its own (decision 0034).
    const [specRecord, statusRecord, memberRecord] = await Promise.all([
      records.network.at(name).get(store),
      records.networkStatus.at(name).get(store),
      records.networkMemberStatus.at(name, hostName).get(store),
    ]);
    if (!specRecord) {
      // Deleted: this member's bridge goes with it (the owner's went before its records did).
      if (memberRecord) {
        await backend.remove(name, memberRecord.value.dnsmasq);
        await store.delete(memberRecord.key);
      }
      if (statusRecord) await store.delete(statusRecord.key);
      return;
    }
    const spec = specRecord.value;
    const primary = spec.location === hostName;
    const own = primary ? statusRecord : memberRecord;
    const previous = own?.value;
    if (spec.deleting) {
      await backend.remove(name, previous?.dnsmasq);
      if (!primary) {
        if (memberRecord) await store.delete(memberRecord.key);
        return;
      }
      await store.txn({
        compare: [],
        success: [
          records.network.at(name).deleteOp(),
          records.networkStatus.at(name).deleteOp(),
          { type: 'delete', key: keys.networkAddresses(name), prefix: true },
          ...(spec.vni !== undefined ? [records.networkVni.at(String(spec.vni)).deleteOp()] : []),
        ],
      });
      events.publish({
        type: 'lifecycle',
        project: spec.project ?? 'default',
        action: 'network-deleted',
        source: `/1.0/networks/${name}`,
        metadata: { name },
      });
      return;
    }
    if (spec.vni === undefined && primary) {
      // A network made before networks spanned members gets its VNI from its own member.
      await assignVni(name, specRecord.modRevision);
      return;
    }
    const status: NetworkStatus = { status: 'Created', observedGeneration: spec.generation };
    try {
      const [claims, members] = await Promise.all([claimsOf(name), records.member.list(store)]);
      const memberEnds = members.items.map((m) => ({
        name: records.member.nameOf(m.key),
        address: m.value.address,
      }));
      const ends = tunnelEnds(memberEnds, hostName);
      status.dnsmasq = await backend.ensure(
        networkDefinition(
          spec,
          claims,
          deps.stateDir,
          ends && { ...ends, nics: boundNics(claims, memberEnds, ends.remotes) },
        ),
        previous?.dnsmasq,
      );
    } catch (e) {
      const err = asTrivisorError(e);
      log.warn({ network: name, err: err.message }, 'network convergence failed');
      status.status = 'Error';
      status.error = err.message;
      status.errorCode = err.code;
      status.failedGeneration = spec.generation;
      if (previous?.dnsmasq) status.dnsmasq = previous.dnsmasq;
    }
    if (JSON.stringify(previous) !== JSON.stringify(status)) {
      // Compare-and-swap: a status another writer wrote since it was read is read again, not overwritten.
      const ref = primary ? records.networkStatus.at(name) : records.networkMemberStatus.at(name, hostName);
      const written = await store.txn({
        compare: [ref.unchanged(own?.modRevision ?? 0)],
        success: [ref.putOp(status)],
      });
      if (!written.succeeded) {
        log.info({ network: name }, 'the network status changed while it was reconciled: reconciling again');
        void reconcile(name);
        return;
      }
      // The network's lifecycle is its own member's to announce: once, not once per member.
      if (
        primary &&
        (previous?.status !== status.status || previous.observedGeneration !== status.observedGeneration)
      ) {
        events.publish({
          type: 'lifecycle',
          project: spec.project ?? 'default',
          action: previous ? 'network-updated' : 'network-created',
          source: `/1.0/networks/${name}`,
          metadata: { name, status: status.status },
        });
      }
    }
  }

  /** Gives a network without a VNI the lowest free one, claimed with it in one transaction. */
  async function assignVni(name: string, modRevision: number): Promise<void> {
    const used = (await records.networkVni.list(store)).items.map((v) =>
      Number(records.networkVni.nameOf(v.key)),
    );
    const vni = pickVni(used);
    const spec = (await records.network.at(name).get(store))?.value;
    if (vni === undefined || !spec) return;
    const ref = records.network.at(name);
    const claim = records.networkVni.at(String(vni));
    const r = await store.txn({
      compare: [ref.unchanged(modRevision), claim.absent()],
      success: [ref.putOp({ ...spec, vni }), claim.putOp(name)],
    });
    log.info({ network: name, vni, assigned: r.succeeded }, 'network VNI assigned');
    // Whatever happened, the spec's watch (or this retry) reconciles it again.
    if (!r.succeeded) void reconcile(name);
  }

  // Sweeps coalesce: deletes that come while one runs make one more, not one each, for the guests
  // deleted meanwhile (decision 0068). A delete's sweep reads the claims and those guests' own
  // records only: reading every guest per delete made deleting N guests O(N²).
  let sweeping: Promise<void> | undefined;
  let sweepFor = new Set<string>();
  const requestSweep = (deleted: string): Promise<void> => {
    sweepFor.add(deleted);
    sweeping ??= (async () => {
      // Guests deleted while a sweep runs are left in sweepFor: one more pass takes them all.
      while (sweepFor.size > 0 && !stopped) {
        const names = sweepFor;
        sweepFor = new Set();
        await sweepClaims(names).catch((e) => log.warn({ err: String(e) }, 'cannot sweep address claims'));
      }
    })().finally(() => {
      sweeping = undefined;
    });
    return sweeping;
  };

  /**
   * Releases addresses whose guest or NIC is gone (a deleted guest's claims end here): every
   * claim's at start, the claims of the guests named when they are deleted.
   */
  async function sweepClaims(only?: ReadonlySet<string>): Promise<void> {
    if (only?.size === 0) return;
    const claims = await records.networkAddress.list(store);
    const candidates = only ? claims.items.filter((c) => only.has(c.value.guest)) : claims.items;
    if (candidates.length === 0) return;
    const guestSpecs: GuestSpec[] = [];
    if (only) {
      for (const name of new Set(candidates.map((c) => c.value.guest))) {
        // A guest record that does not decode keeps its claims: its NICs cannot be told.
        const found = await records.guest
          .at(name)
          .get(store)
          .catch(() => null);
        if (found === null) return;
        if (found) guestSpecs.push(found.value);
      }
    } else {
      const guests = await records.guest.list(store);
      if (guests.malformed.length > 0) return;
      guestSpecs.push(...valuesOf(guests));
    }
    const nics = new Set<string>();
    for (const g of guestSpecs) {
      for (const [nic, d] of Object.entries(g.devices ?? {}))
        nics.add(`${g.name}/${nic}/${d.network}/${d['ipv4.address']}`);
    }
    const touched = new Set<string>();
    for (const { key, value: c, modRevision } of candidates) {
      const [net, ip] = records.networkAddress.nameOf(key).split('/');
      if (!nics.has(`${c.guest}/${c.nic}/${net}/${ip}`)) {
        const ref = records.networkAddress.ref(key);
        await store.txn({ compare: [ref.unchanged(modRevision)], success: [ref.deleteOp()] });
        if (net) touched.add(net);
      }
    }
    for (const net of touched) void reconcile(net);
  }

  async function check(): Promise<void> {
    const [specs, statuses, memberStatuses] = await Promise.all([
      records.network.list(store),
      records.networkStatus.list(store),
      records.networkMemberStatus.list(store),
    ]);
    const st = new Map(statuses.items.map((s) => [records.networkStatus.nameOf(s.key), s.value]));
    const mine = new Map(
      memberStatuses.items.flatMap((s) => {
        const [network, member] = records.networkMemberStatus.nameOf(s.key).split('/');
        return member === hostName && network ? [[network, s.value] as const] : [];
      }),
    );
    for (const spec of valuesOf(specs)) {
      if (spec.deleting) continue;
      const s = spec.location === hostName ? st.get(spec.name) : mine.get(spec.name);
      const seen = await backend.inspect(spec.name, s?.dnsmasq);
      if (!seen.bridge || !seen.dnsmasq || s?.status === 'Error') {
        log.info({ network: spec.name, ...seen }, 'network needs repair');
        void reconcile(spec.name);
      }
    }
  }

  return {
    async start() {
      const nameOf = (key: string, prefix: string) => key.slice(prefix.length).split('/')[0] ?? '';
      // What changes while the informers start up is reconciled once they all have listed.
      const names = new Set<string>();
      let starting = true;
      const changed = (name: string) => {
        if (starting) names.add(name);
        else void reconcile(name);
      };
      const networks = createInformer<NetworkSpec>({
        store,
        prefix: keys.networkPrefix,
        decode: records.network.decode,
        log,
        handlers: {
          onAdd: (key) => changed(nameOf(key, keys.networkPrefix)),
          onUpdate: (key) => changed(nameOf(key, keys.networkPrefix)),
          onDelete: (key) => changed(nameOf(key, keys.networkPrefix)),
        },
      });
      // Claims are read from the store when acted on: their cache keeps each claim's guest only, for
      // the index of which networks a guest's location or move mark concerns.
      const claims = createInformer<string>({
        store,
        prefix: keys.networkAddressPrefix,
        // A claim that does not decode is kept under no guest: its changes still reconcile its network.
        decode: (kv) => {
          try {
            return records.networkAddress.decode(kv).guest;
          } catch {
            return '';
          }
        },
        log,
        handlers: {
          onAdd: (key, guest) => {
            indexClaim(guest, nameOf(key, keys.networkAddressPrefix), 1);
            if (!starting) changed(nameOf(key, keys.networkAddressPrefix));
          },
          onUpdate: (key, guest, previous) => {
            const network = nameOf(key, keys.networkAddressPrefix);
            if (guest !== previous) {
              indexClaim(previous, network, -1);
              indexClaim(guest, network, 1);
            }
            changed(network);
          },
          onDelete: (key, guest) => {
            indexClaim(guest, nameOf(key, keys.networkAddressPrefix), -1);
            changed(nameOf(key, keys.networkAddressPrefix));
          },
        },
      });
      // Guests are read from the store when acted on: their cache keeps only keys.
      const present = () => true as const;
      const guests = createInformer({
        store,
        prefix: keys.guestPrefix,
        decode: present,
        log,
        handlers: {
          // A deleted guest's claims end here (also a delete only a re-list found); while
          // starting, the sweep below covers it.
          onDelete: (key) => {
            if (!starting) void requestSweep(nameOf(key, keys.guestPrefix));
          },
        },
      });
      // A member that joins or leaves changes every network's tunnel (its FDB, its nftables set).
      const members = createInformer<MemberRecord>({
        store,
        prefix: keys.memberPrefix,
        decode: records.member.decode,
        log,
        handlers: {
          onAdd: () => reconcileAll(),
          onUpdate: (_key, next, previous) => {
            if (next.address !== previous.address) reconcileAll();
          },
          onDelete: () => reconcileAll(),
        },
      });
      // Where a guest runs binds its NICs to that member on the other members' tunnel ports: a
      // guest made or handed over (a create, a move, HA) or a move begun or ended changes what each
      // member takes, on the networks of that guest's claims only. A location or mark that names no
      // other member changes nothing here (this member's own guests are no remote's): on a single
      // host a create's location reconciles nothing more than its claims did.
      const rebind = (key: string, prefix: string, ...named: Array<string | undefined>) => {
        if (starting || !named.some((m) => m !== undefined && m !== hostName)) return;
        for (const network of guestNetworks.get(key.slice(prefix.length))?.keys() ?? [])
          void reconcile(network);
      };
      const at = keys.guestLocationPrefix;
      locations = createInformer<string>({
        store,
        prefix: at,
        decode: records.guestLocation.decode,
        log,
        handlers: {
          // Added: a create (its claims' reconcile may have read this cache before it got here), a
          // restore, or a guest recorded before location keys.
          onAdd: (key, member) => rebind(key, at, member),
          onUpdate: (key, next, previous) => {
            if (next !== previous) rebind(key, at, next, previous);
          },
          onDelete: (key, last) => rebind(key, at, last),
        },
      });
      const mv = keys.guestMovePrefix;
      moves = createInformer<MoveMark>({
        store,
        prefix: mv,
        decode: (kv) => JSON.parse(kv.value) as MoveMark,
        log,
        handlers: {
          onAdd: (key, mark) => rebind(key, mv, mark.from, mark.to),
          onUpdate: (key, next, previous) => {
            if (next.from !== previous.from || next.to !== previous.to)
              rebind(key, mv, next.from, next.to, previous.from, previous.to);
          },
          onDelete: (key, mark) => rebind(key, mv, mark.from, mark.to),
        },
      });
      const reconcileAll = () => {
        if (starting) return;
        for (const spec of networks.values()) void reconcile(spec.name);
      };
      informers.push(networks, claims, guests, members, locations, moves);
      for (const informer of informers) await informer.start();
      // Every network has a bridge on every member; one whose record does not decode is kept too.
      const named = (await store.list(records.network.prefix)).kvs.map((kv) =>
        records.network.nameOf(kv.key),
      );
      const keep = new Set(named);
      for (const bridge of await backend.listOwned()) {
        if (!keep.has(bridge)) {
          log.info({ network: bridge }, 'removing stale network');
          await backend
            .remove(bridge, undefined)
            .catch((e) => log.warn({ network: bridge, err: String(e) }, 'cannot remove stale network'));
        }
      }
      // This member's statuses of networks deleted while it was down.
      for (const { key } of (await records.networkMemberStatus.list(store)).items) {
        const [network, member] = records.networkMemberStatus.nameOf(key).split('/');
        if (member === hostName && network && !keep.has(network)) await store.delete(key);
      }
      const ours = new Set(networks.values().map((spec) => spec.name));
      starting = false;
      await sweepClaims().catch((e) => log.warn({ err: String(e) }, 'cannot sweep address claims'));
      await Promise.all([...new Set([...ours, ...names])].map((n) => reconcile(n)));
      const tick = () => {
        timer = setTimeout(async () => {
          await check().catch((e) => log.error({ err: String(e) }, 'network check failed'));
          if (!stopped) tick();
        }, checkIntervalMs);
        timer.unref();
      };
      tick();
    },
    async stop() {
      stopped = true;
      for (const informer of informers.splice(0)) informer.stop();
      clearTimeout(timer);
      await Promise.allSettled([...chains.values(), sweeping]);
    },
    reconcile,
  };
}
