import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { certificateFingerprint } from '../api/certificates.ts';
import type { MemberPower } from '../api/cluster-schemas.ts';
import {
  evacuationProgress,
  followEvacuation,
  retryFailedReturns,
} from '../control/evacuation-controller.ts';
import type { PlacementCandidate } from '../control/placement.ts';
import { isStandby } from '../control/power-controller.ts';
import {
  alreadyExists,
  conflict,
  failedPrecondition,
  invalidArgument,
  isTrivisorError,
  notFound,
  permissionDenied,
  unavailable,
} from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import { reverter } from '../core/revert.ts';
import type { EvacuateMode, Operation } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { discardsForMemberDeleteOps, marksOfMemberDeleteOps } from '../services/move-marks.ts';
import type { OperationService } from '../services/types.ts';
import type { KvStore } from '../store/kv.ts';
import {
  type ClusterRecord,
  type MemberHeartbeat,
  type MemberRecord,
  records,
  valuesOf,
} from '../store/records.ts';
import { assertBindable, assertSameFamily, probeReachable, serveProbe } from './address-checks.ts';
import { makeClusterCa, makeMemberKey, signMemberCertificate } from './cluster-ca.ts';
import {
  clusterPaths,
  ensureClusterDir,
  type LocalMembership,
  parseMemberAddress,
  removeClusterFiles,
  writeLocalMembership,
  writePrivate,
} from './cluster-files.ts';
import type { EtcdMember, EtcdTls } from './etcd-member.ts';
import {
  decodeJoinToken,
  encodeJoinToken,
  newJoinSecret,
  secretDigest,
  secretMatches,
} from './join-token.ts';
import { createMemberClient, type MemberClient, requestWithPinnedCa } from './member-client.ts';

/** Roles a member record lists (Incus's "database" roles, named for what they are here). */
export const ETCD_VOTER = 'etcd-voter';
export const ETCD_CLIENT = 'etcd-client';
/** How many etcd voters a managed cluster keeps (Incus keeps 3 database members too). */
const VOTERS = 3;
/** How long a join token lasts unless `cluster add` says otherwise. */
export const DEFAULT_TOKEN_TTL_MS = 3 * 3_600_000;

/** A member as `cluster list` shows it. */
export interface ClusterMember {
  name: string;
  address: string;
  /** Standby: powered off by power management (decision 0055), or on its way off or back. */
  status: 'Online' | 'Offline' | 'Evacuated' | 'Standby';
  roles: string[];
  /** Guests this member owns. */
  guests: number;
  version: string;
  /** Measured by the member (its heartbeat); null while it is Offline. */
  cpu: { cpus: number; used: number; free: number } | null;
  memory: { totalBytes: number; usedBytes: number; freeBytes: number } | null;
  /** The default pool's file system (where guests go unless told otherwise), as measured. */
  disk?: { totalBytes: number; freeBytes: number } | null;
  /** When `cpu`, `memory` and `disk` were measured. */
  measuredAt?: string;
  joinedAt: string;
  /**
   * HA (decision 0052): whether its HA agent holds its lease, the HA guests it holds, and admission
   * control's warning when the others could not take them all if it were lost.
   */
  ha?: { live: boolean; guests: number; warning?: string };
  /** Power management's record (decision 0055): absent when it never powered the member off. */
  power?: MemberPower;
}

/**
 * The members as the scheduler sees them (decision 0033): an Offline member has no measurement
 * and is passed by; an Online one offers what its heartbeat measured free.
 */
export function placementCandidates(members: ClusterMember[] | undefined): PlacementCandidate[] {
  return (members ?? []).map((m) => ({
    name: m.name,
    status: m.status,
    cpus: m.cpu?.cpus ?? 0,
    cpuFree: m.cpu?.free ?? 0,
    memoryTotalBytes: m.memory?.totalBytes ?? 0,
    memoryFreeBytes: m.memory?.freeBytes ?? 0,
    ...(m.measuredAt !== undefined && { measuredAt: m.measuredAt }),
    ...(m.disk && { diskFreeBytes: m.disk.freeBytes }),
  }));
}

/** What `GET /1.0/cluster` says of this daemon. */
export interface ClusterInfo {
  enabled: boolean;
  /** This host's name: the `location` of what it holds (the member name on a cluster). */
  host?: string;
  /** This member's name and address (when a member). */
  member?: string;
  address?: string;
  caFingerprint?: string;
  /** managed: the members run etcd; otherwise an existing one at `endpoints`. */
  etcd?: { managed: boolean; endpoints: string[] };
}

/** Body of the join request a joining host sends a member (`POST /1.0/cluster/members`). */
export interface JoinRequest {
  name: string;
  secret: string;
  address: string;
  csr: string;
  version: string;
  nonce: string;
}

/** What the member that accepts a join answers. */
export interface JoinAnswer {
  /** The member that accepted the join (a failed join is undone through it). */
  acceptedBy: { name: string; address: string };
  certificate: string;
  caCert: string;
  member: MemberRecord;
  etcd: {
    endpoints: string[];
    /** The joiner runs one of the etcd voters. */
    voter: boolean;
    /** An existing etcd's client credentials (PEM), when it wants them. */
    tls?: { ca: string; cert?: string; key?: string };
  };
}

/** `trivisor cluster bootstrap`: the address, and an existing etcd instead of a managed one. */
export interface BootstrapRequest {
  address: string;
  etcd?: { endpoints: string[]; ca?: string; cert?: string; key?: string };
}

/** Membership: bootstrap, join tokens, joins (both ends), the member list, removal (decision 0032). */
export interface ClusterService {
  info(): Promise<ClusterInfo>;
  /** Makes this single host the first member; the daemon restarts on etcd right after answering. */
  bootstrap(request: BootstrapRequest): Promise<ClusterInfo>;
  /** A single-use join token for a new member `name` (printed alone by `cluster add`). */
  createJoinToken(
    name: string,
    options: { ttlMs?: number; createdBy: string },
  ): Promise<{ token: string; name: string; expiresAt: string }>;
  /** This host joins the cluster a token names; the daemon restarts on the cluster's store right after. */
  join(request: { token: string; address: string }): Promise<ClusterInfo>;
  /** The cluster's side of a join: checks the token, signs the joiner's certificate, records it. */
  acceptJoin(request: JoinRequest): Promise<JoinAnswer>;
  list(): Promise<ClusterMember[]>;
  get(name: string): Promise<ClusterMember>;
  /** Refused while the member holds guests, unless `force`. */
  remove(name: string, options?: { force?: boolean }): Promise<void>;
  /**
   * Marks a member evacuated (its guests leave it, it gets no new ones; `mode` for the guests
   * that do not say) or restored (decision 0041), idempotently: the members' evacuation
   * controllers carry it out, and the operation answered follows them in the records.
   */
  changeMemberState(
    name: string,
    request: { action: 'evacuate' | 'restore'; mode?: EvacuateMode },
  ): Promise<Operation>;
}

/** What the service needs of the daemon. */
export interface ClusterDeps {
  stateDir: string;
  /** The host name guests are owned under: a bootstrap makes it the member name. */
  hostName: string;
  version: string;
  runner: ProcessRunner;
  log: Logger;
  /** The store the daemon runs on now. */
  store: KvStore;
  /** This host's membership, when it is a member. */
  membership?: LocalMembership;
  /** Restarts the daemon on the new store (guests keep running and are adopted), after the answer went out. */
  restart: () => void;
  /** A joining host takes the member name its token gives. */
  setHostName: (name: string) => Promise<void>;
  /** Calls to other members (forwarding builds on it). */
  members?: MemberClient;
  /** Where an evacuation's operation runs. */
  operations?: Pick<OperationService, 'start'>;
  /** etcd's client and peer ports on a member's address (default 2379, 2380). */
  etcdPorts?: { client: number; peer: number };
  clock?: () => number;
}

export function createClusterService(deps: ClusterDeps): ClusterService {
  const { stateDir, store, log, runner } = deps;
  const paths = clusterPaths(stateDir);
  const ports = deps.etcdPorts ?? { client: 2379, peer: 2380 };
  const now = deps.clock ?? Date.now;
  const membership = deps.membership;
  let changing = false;

  const etcdTlsFiles: EtcdTls = { caFile: paths.caCert, certFile: paths.cert, keyFile: paths.key };

  const requireMember = (): LocalMembership => {
    if (!membership) {
      throw failedPrecondition(
        'This daemon is not a cluster member: make it the first one with trivisor cluster bootstrap --address IP, or join one with trivisor cluster join',
      );
    }
    return membership;
  };

  const clusterRecord = async () => {
    const found = await records.cluster.at().get(store);
    if (!found) throw failedPrecondition('The store holds no cluster record: was this cluster bootstrapped?');
    return found;
  };

  /** One change of membership at a time on this daemon (a bootstrap and a join would fight over STATE/cluster). */
  const exclusively = async <T>(work: () => Promise<T>): Promise<T> => {
    if (changing)
      throw conflict('A cluster bootstrap or join is already under way on this daemon: wait for it');
    changing = true;
    try {
      return await work();
    } finally {
      changing = false;
    }
  };

  const assertNotMember = () => {
    if (membership) {
      throw failedPrecondition(
        `This daemon is already member ${membership.name} of a cluster (at ${membership.address})`,
      );
    }
  };

  const etcdUrls = (host: string) => {
    const h = isIP(host) === 6 ? `[${host}]` : host;
    return { client: `https://${h}:${ports.client}`, peer: `https://${h}:${ports.peer}` };
  };

  const toMember = (
    m: MemberRecord,
    heartbeat: MemberHeartbeat | undefined,
    guests: number,
    power: MemberPower | undefined,
  ): ClusterMember => {
    const usage = heartbeat?.usage;
    const usedCpus = usage ? Math.round((usage.cpuUsedPercent / 100) * usage.cpus * 100) / 100 : 0;
    return {
      name: m.name,
      address: m.address,
      status: isStandby(power?.state)
        ? 'Standby'
        : m.evacuated
          ? 'Evacuated'
          : heartbeat
            ? 'Online'
            : 'Offline',
      roles: m.roles,
      guests,
      version: heartbeat?.version ?? m.version,
      cpu: usage ? { cpus: usage.cpus, used: usedCpus, free: Math.max(0, usage.cpus - usedCpus) } : null,
      memory: usage
        ? {
            totalBytes: usage.memoryTotalBytes,
            usedBytes: usage.memoryTotalBytes - usage.memoryAvailableBytes,
            freeBytes: usage.memoryAvailableBytes,
          }
        : null,
      disk:
        usage?.diskTotalBytes !== undefined && usage.diskAvailableBytes !== undefined
          ? { totalBytes: usage.diskTotalBytes, freeBytes: usage.diskAvailableBytes }
          : null,
      ...(usage && { measuredAt: usage.measuredAt }),
      joinedAt: m.joinedAt,
      ...(power && { power }),
    };
  };

  const guestsByMember = async (): Promise<Map<string, string[]>> => {
    const out = new Map<string, string[]>();
    for (const g of valuesOf(await records.guest.list(store))) {
      out.set(g.location, [...(out.get(g.location) ?? []), g.name]);
    }
    return out;
  };

  const list = async (): Promise<ClusterMember[]> => {
    requireMember();
    const [members, heartbeats, guests, powers] = await Promise.all([
      records.member.list(store),
      records.memberHeartbeat.list(store),
      guestsByMember(),
      records.memberPower.list(store),
    ]);
    const beats = new Map(heartbeats.items.map((h) => [records.memberHeartbeat.nameOf(h.key), h.value]));
    const power = new Map(powers.items.map((p) => [records.memberPower.nameOf(p.key), p.value]));
    return members.items.map(({ value: m }) =>
      toMember(m, beats.get(m.name), guests.get(m.name)?.length ?? 0, power.get(m.name)),
    );
  };

  /** A joining host must bring nothing the cluster's store would lose: it starts empty, as Incus asks. */
  const assertEmpty = async () => {
    const [guests, volumes, networks] = await Promise.all([
      records.guest.list(store),
      records.volume.list(store),
      records.network.list(store),
    ]);
    const held = [
      ...guests.items.map((g) => `guest ${g.value.name}`),
      ...volumes.items.map((v) => `volume ${v.value.pool}/${v.value.name}`),
      ...networks.items.map((n) => `network ${n.value.name}`),
    ];
    if (held.length > 0) {
      throw failedPrecondition(
        `A joining host must hold no guests, custom volumes or networks (its store is replaced by the cluster's); this one holds ${held.slice(0, 5).join(', ')}${held.length > 5 ? ` and ${held.length - 5} more` : ''}: delete them first, or bootstrap a cluster from this host instead`,
      );
    }
  };

  return {
    async info() {
      if (!membership) return { enabled: false, host: deps.hostName };
      const cluster = await records.cluster.at().get(store);
      return {
        enabled: true,
        host: membership.name,
        member: membership.name,
        address: membership.address,
        ...(cluster && {
          caFingerprint: cluster.value.ca.fingerprint,
          etcd: { managed: cluster.value.etcd.managed, endpoints: membership.endpoints },
        }),
      };
    },

    bootstrap: (request) =>
      exclusively(async () => {
        assertNotMember();
        const name = deps.hostName;
        assertDnsLabel(name, 'member name (this host name)');
        const { host, port, address } = parseMemberAddress(request.address);
        const external = request.etcd;
        if (external) {
          if (external.endpoints.length === 0) throw invalidArgument('--etcd needs at least one URL');
          for (const url of external.endpoints) {
            if (!/^https?:\/\/[^/\s]+\/?$/.test(url)) {
              throw invalidArgument(
                `--etcd ${JSON.stringify(url.slice(0, 100))} is not an etcd client URL (http[s]://HOST:PORT)`,
              );
            }
          }
        }
        await assertBindable(host, external ? [port] : [port, ports.client, ports.peer]);
        const r = reverter();
        try {
          await ensureClusterDir(stateDir);
          r.add(() => removeClusterFiles(stateDir));
          const ca = await makeClusterCa(paths.scratch, { runner });
          const key = await makeMemberKey(paths.scratch, { runner, name });
          const cert = await signMemberCertificate(paths.scratch, {
            runner,
            ca,
            csr: key.csr,
            name,
            address: host,
          });
          await writePrivate(paths.caCert, ca.cert);
          await writePrivate(paths.cert, cert);
          await writePrivate(paths.key, key.key);
          let endpoints: string[];
          let etcdTls: EtcdStoreTls;
          let member: EtcdMember | undefined;
          if (external) {
            endpoints = external.endpoints.map((u) => u.replace(/\/$/, ''));
            etcdTls = await writeExternalTls(external);
          } else {
            const { bootstrapEtcdMember, etcdPaths } = await etcdMemberModule();
            member = await bootstrapEtcdMember({
              name,
              stateDir,
              address: host,
              clientPort: ports.client,
              peerPort: ports.peer,
              tls: etcdTlsFiles,
              runner,
              log,
            });
            const started = member;
            r.add(async () => {
              await started.stop();
              await rm(etcdPaths(stateDir).dir, { recursive: true, force: true });
            });
            endpoints = [member.clientUrl];
            etcdTls = etcdTlsFiles;
          }
          const etcd = await (await etcdStoreModule()).openEtcdStore({
            endpoints,
            ...(etcdTls && { tls: etcdTls }),
          });
          try {
            if ((await etcd.list('/trivisor/', { limit: 1 })).kvs.length > 0) {
              throw failedPrecondition(
                `The etcd at ${endpoints.join(',')} already holds Trivisor data: join that cluster (trivisor cluster add on one of its members), or give an empty etcd`,
              );
            }
            const cluster: ClusterRecord = {
              createdAt: new Date(now()).toISOString(),
              ca,
              etcd: {
                managed: !external,
                endpoints: external ? endpoints : [],
                ...(external &&
                  (external.ca || external.cert) && {
                    tls: {
                      ca: external.ca ?? '',
                      ...(external.cert !== undefined && { cert: external.cert }),
                      ...(external.key !== undefined && { key: external.key }),
                    },
                  }),
              },
            };
            const record: MemberRecord = {
              name,
              address,
              roles: [external ? ETCD_CLIENT : ETCD_VOTER],
              ...(!external && { etcdClientUrl: endpoints[0] }),
              certificateFingerprint: certificateFingerprint(cert),
              version: deps.version,
              joinedAt: new Date(now()).toISOString(),
              evacuated: false,
            };
            const done = await etcd.txn({
              compare: [records.cluster.at().absent()],
              success: [records.cluster.at().putOp(cluster), records.member.at(name).putOp(record)],
            });
            if (!done.succeeded)
              throw conflict('Another host bootstrapped a cluster in this etcd at the same time');
          } finally {
            await etcd.close();
          }
          await writeLocalMembership(stateDir, {
            name,
            address,
            etcdMember: !external,
            endpoints,
            ...(external && etcdTls && { externalEtcdTls: etcdTls }),
            state: 'converting',
          });
          // etcd outlives this daemon life: the next one adopts it.
          member?.detach();
          r.success();
          log.info({ member: name, address }, 'cluster bootstrapped; restarting on etcd');
          setTimeout(() => deps.restart(), 200);
          return {
            enabled: true,
            member: name,
            address,
            caFingerprint: ca.fingerprint,
            etcd: { managed: !external, endpoints },
          };
        } catch (e) {
          await r.fail();
          throw e;
        }
      }),

    async createJoinToken(name, options) {
      const self = requireMember();
      assertDnsLabel(name, 'member name');
      const ttlMs = options.ttlMs ?? DEFAULT_TOKEN_TTL_MS;
      if (!Number.isInteger(ttlMs) || ttlMs < 1000 || ttlMs > 30 * 86_400_000) {
        throw invalidArgument('A join token lasts from 1 s to 30 days');
      }
      if (await records.member.at(name).get(store)) {
        throw alreadyExists(`The cluster already has a member named ${name}: pick another name`);
      }
      const cluster = await clusterRecord();
      const members = await list();
      // The members a joiner may ask: those online now (this one first), else every one.
      const online = members.filter((m) => m.status === 'Online').map((m) => m.address);
      const addresses = [
        self.address,
        ...(online.length > 0 ? online : members.map((m) => m.address)).filter((a) => a !== self.address),
      ];
      const secret = newJoinSecret();
      const expiresAt = new Date(now() + ttlMs).toISOString();
      // A new token for the same name replaces the old one, which stops working.
      await records.joinToken.at(name).put(store, {
        name,
        secretSha256: secretDigest(secret),
        createdAt: new Date(now()).toISOString(),
        expiresAt,
        createdBy: options.createdBy,
      });
      const token = encodeJoinToken({
        name,
        addresses,
        caFingerprint: cluster.value.ca.fingerprint,
        secret,
        expiresAt,
      });
      return { token, name, expiresAt };
    },

    join: (request) =>
      exclusively(async () => {
        assertNotMember();
        const token = decodeJoinToken(request.token);
        assertDnsLabel(token.name, 'member name');
        const name = token.name;
        if (Date.parse(token.expiresAt) <= now()) {
          throw permissionDenied(
            `The join token for ${name} expired at ${token.expiresAt}: make a new one with trivisor cluster add ${name} on a member`,
          );
        }
        const { host, port, address } = parseMemberAddress(request.address);
        assertSameFamily(
          host,
          token.addresses.map((a) => ({ address: a })),
        );
        await assertEmpty();
        await assertBindable(host, [port, ports.client, ports.peer]);
        // Until a member accepts, nothing of the join stays behind whatever fails.
        let key: { key: string; csr: string };
        let accepted: (JoinAnswer & { caCert: string }) | undefined;
        try {
          await ensureClusterDir(stateDir);
          const nonce = randomBytes(16).toString('hex');
          key = await makeMemberKey(paths.scratch, { runner, name });
          const csr = key.csr;
          const unreachable: string[] = [];
          const probe = await serveProbe(host, port, nonce);
          try {
            for (const at of token.addresses) {
              try {
                const answer = await requestWithPinnedCa<JoinAnswer>(at, {
                  caFingerprint: token.caFingerprint,
                  method: 'POST',
                  path: '/1.0/cluster/members',
                  body: {
                    name,
                    secret: token.secret,
                    address,
                    csr,
                    version: deps.version,
                    nonce,
                  } satisfies JoinRequest,
                  timeoutMs: 60_000,
                });
                // The CA is the one the handshake proved, whatever the body says.
                accepted = { ...answer.metadata, caCert: answer.caCert };
                break;
              } catch (e) {
                // Another member may answer; anything else is the cluster's answer to this join.
                if (isTrivisorError(e) && e.code === 'Unavailable') unreachable.push(e.message);
                else throw e;
              }
            }
          } finally {
            await probe.close();
          }
          if (!accepted) {
            throw unavailable(`Cannot reach the cluster: ${unreachable.join('; ')}. Nothing was changed`);
          }
        } catch (e) {
          await removeClusterFiles(stateDir);
          throw e;
        }
        // From here on the cluster has this member: a failure removes it there again.
        const r = reverter();
        r.add(() => removeClusterFiles(stateDir));
        const answer = accepted;
        try {
          if (certificateFingerprint(answer.caCert) !== token.caFingerprint) {
            throw unavailable('The member that accepted the join presented another CA than it signed with');
          }
          await writePrivate(paths.caCert, answer.caCert);
          await writePrivate(paths.cert, answer.certificate);
          await writePrivate(paths.key, key.key);
          const tls = { ca: answer.caCert, cert: answer.certificate, key: key.key };
          r.add(async () => {
            // Undo the record the cluster made for this join, as the member it now is.
            await createMemberClient(() => tls)
              .request(answer.acceptedBy, 'DELETE', `/1.0/cluster/members/${name}?force=true`)
              .catch((e: unknown) =>
                log.warn(
                  { err: String(e) },
                  `cannot undo the join: remove member ${name} with trivisor cluster remove`,
                ),
              );
          });
          // An existing etcd's own credentials, none for a plain-HTTP one, else this member's certificate.
          const external = answer.etcd.tls ? await writeExternalTls(answer.etcd.tls) : undefined;
          const etcdTls: EtcdStoreTls =
            external ??
            (answer.etcd.endpoints.every((e) => e.startsWith('https:')) ? etcdTlsFiles : undefined);
          let member: EtcdMember | undefined;
          if (answer.etcd.voter) {
            const { joinEtcdCluster, etcdPaths } = await etcdMemberModule();
            member = await joinEtcdCluster(
              {
                name,
                stateDir,
                address: host,
                clientPort: ports.client,
                peerPort: ports.peer,
                tls: etcdTlsFiles,
                runner,
                log,
              },
              { endpoints: answer.etcd.endpoints, tls: etcdTlsFiles },
            );
            const started = member;
            r.add(async () => {
              await started.stop();
              await rm(etcdPaths(stateDir).dir, { recursive: true, force: true });
            });
          }
          const endpoints = member ? [member.clientUrl, ...answer.etcd.endpoints] : answer.etcd.endpoints;
          // The new certificate opens the cluster's store: proven before this host commits to it.
          const etcd = await (await etcdStoreModule()).openEtcdStore({
            endpoints,
            ...(etcdTls && { tls: etcdTls }),
          });
          await etcd.close();
          await deps.setHostName(name);
          await writeLocalMembership(stateDir, {
            name,
            address,
            etcdMember: member !== undefined,
            endpoints: [...new Set(endpoints)],
            ...(external && { externalEtcdTls: external }),
            state: 'member',
          });
          member?.detach();
          r.success();
        } catch (e) {
          await r.fail();
          throw e;
        }
        log.info({ member: name, address }, 'joined the cluster; restarting on its store');
        setTimeout(() => deps.restart(), 200);
        return {
          enabled: true,
          member: name,
          address,
          caFingerprint: token.caFingerprint,
          etcd: { managed: !answer.etcd.tls, endpoints: answer.etcd.endpoints },
        };
      }),

    async acceptJoin(request) {
      const self = requireMember();
      assertDnsLabel(request.name, 'member name');
      const name = request.name;
      const { host, port, address } = parseMemberAddress(request.address);
      const tokenRef = records.joinToken.at(name);
      const stored = await tokenRef.get(store);
      const again = `make a new one with trivisor cluster add ${name} on a member`;
      if (!stored || !secretMatches(request.secret, stored.value.secretSha256)) {
        throw permissionDenied(
          `The join token for ${name} is not valid (revoked or replaced by a newer one): ${again}`,
        );
      }
      if (stored.value.usedAt !== undefined) {
        throw permissionDenied(
          `The join token for ${name} was already used (at ${stored.value.usedAt}${stored.value.usedFrom ? ` by ${stored.value.usedFrom}` : ''}): a token admits one host once; ${again}`,
        );
      }
      if (Date.parse(stored.value.expiresAt) <= now()) {
        throw permissionDenied(`The join token for ${name} expired at ${stored.value.expiresAt}: ${again}`);
      }
      if (await records.member.at(name).get(store)) {
        throw alreadyExists(`The cluster already has a member named ${name}`);
      }
      const members = valuesOf(await records.member.list(store));
      assertSameFamily(host, members);
      const sameHost = members.find((m) => parseMemberAddress(m.address).host === host);
      if (sameHost) {
        throw conflict(
          `Member ${sameHost.name} already has address ${host}: give the joining host's own address`,
        );
      }
      await probeReachable(host, port, request.nonce, { member: self.name });
      const cluster = await clusterRecord();
      const certificate = await signMemberCertificate(paths.scratch, {
        runner,
        ca: cluster.value.ca,
        csr: request.csr,
        name,
        address: host,
      });
      const voters = members.filter((m) => m.roles.includes(ETCD_VOTER));
      const voter = cluster.value.etcd.managed && voters.length < VOTERS;
      const record: MemberRecord = {
        name,
        address,
        roles: [voter ? ETCD_VOTER : ETCD_CLIENT],
        ...(voter && { etcdClientUrl: etcdUrls(host).client }),
        certificateFingerprint: certificateFingerprint(certificate),
        version: request.version,
        joinedAt: new Date(now()).toISOString(),
        evacuated: false,
      };
      // One join at a time: the cluster record is rewritten as is, so that two joins that
      // both counted two voters cannot both make a third.
      const done = await store.txn({
        compare: [
          tokenRef.unchanged(stored.modRevision),
          records.member.at(name).absent(),
          records.cluster.at().unchanged(cluster.modRevision),
        ],
        success: [
          tokenRef.putOp({ ...stored.value, usedAt: new Date(now()).toISOString(), usedFrom: address }),
          records.member.at(name).putOp(record),
          records.cluster.at().putOp(cluster.value),
        ],
      });
      if (!done.succeeded) throw conflict('Another join changed the cluster at the same time: try again');
      log.info({ member: name, address, voter }, 'a host joined the cluster');
      const endpoints = cluster.value.etcd.managed
        ? voters.flatMap((m) => (m.etcdClientUrl ? [m.etcdClientUrl] : []))
        : cluster.value.etcd.endpoints;
      return {
        acceptedBy: { name: self.name, address: self.address },
        certificate,
        caCert: cluster.value.ca.cert,
        member: record,
        etcd: {
          endpoints,
          voter,
          ...(cluster.value.etcd.tls && { tls: cluster.value.etcd.tls }),
        },
      };
    },

    list,

    async get(name) {
      const found = (await list()).find((m) => m.name === name);
      if (!found) throw notFound(`No cluster member is named ${name}: see trivisor cluster list`);
      return found;
    },

    async changeMemberState(name, { action, mode }) {
      requireMember();
      if (action === 'restore' && mode !== undefined) throw invalidArgument('A restore takes no mode');
      const operations = deps.operations;
      if (!operations)
        throw failedPrecondition('This daemon runs no operations: it cannot evacuate a member');
      const evacuated = action === 'evacuate';
      for (;;) {
        const member = await records.member.at(name).get(store);
        if (!member) throw notFound(`No cluster member is named ${name}: see trivisor cluster list`);
        const { evacuateMode: _, ...rest } = member.value;
        const next = { ...rest, evacuated, ...(evacuated && mode !== undefined && { evacuateMode: mode }) };
        const ref = records.member.at(name);
        const r = await store.txn({
          compare: [ref.unchanged(member.modRevision)],
          success: [ref.putOp(next)],
        });
        if (r.succeeded) break;
      }
      log.info({ member: name, evacuated, mode }, evacuated ? 'member evacuated' : 'member restored');
      // A restore asked again tries again the guests whose move back failed for good.
      if (!evacuated) await retryFailedReturns(store, name);
      return operations.start({
        project: 'default',
        description: evacuated ? `Evacuating member ${name}` : `Restoring member ${name}`,
        resources: { members: [`/1.0/cluster/members/${name}`] },
        mayCancel: true,
        run: (ctx) => followEvacuation(() => evacuationProgress(store, name, action), name, action, ctx),
      });
    },

    async remove(name, options = {}) {
      const self = requireMember();
      const member = await records.member.at(name).get(store);
      if (!member) throw notFound(`No cluster member is named ${name}: see trivisor cluster list`);
      if (name === self.name) {
        throw failedPrecondition(
          `Member ${name} is the one this request reached: remove it through another member`,
        );
      }
      const held = (await guestsByMember()).get(name) ?? [];
      if (held.length > 0 && !options.force) {
        throw failedPrecondition(
          `Member ${name} holds ${held.length} guest${held.length === 1 ? '' : 's'} (${held.slice(0, 5).join(', ')}${held.length > 5 ? ', …' : ''}): move or delete them first, or remove it anyway with --force (its guests stay recorded on it)`,
        );
      }
      const cluster = await clusterRecord();
      if (cluster.value.etcd.managed && member.value.roles.includes(ETCD_VOTER)) {
        const voters = valuesOf(await records.member.list(store)).filter(
          (m) => m.name !== name && m.roles.includes(ETCD_VOTER) && m.etcdClientUrl,
        );
        const { host } = parseMemberAddress(member.value.address);
        await (await etcdMemberModule()).removeEtcdMember(
          { endpoints: voters.map((m) => m.etcdClientUrl as string), tls: etcdTlsFiles },
          etcdUrls(host).peer,
        );
      }
      const beat = await store.get(records.memberHeartbeat.key(name));
      // Its lease goes too: a daemon still running there learns at its next renewal that it was removed.
      if (beat?.lease) await store.revokeLease(beat.lease).catch(() => {});
      await store.txn({
        compare: [],
        success: [
          records.member.at(name).deleteOp(),
          records.memberHeartbeat.at(name).deleteOp(),
          records.joinToken.at(name).deleteOp(),
          // Its load, published for the rebalancer (decision 0053).
          records.memberLoad.at(name).deleteOp(),
          // The moves it left unfinished: nobody is left to finish them (decision 0079).
          ...(await marksOfMemberDeleteOps(store, name)),
          // The copies moves left there to discard: the member is gone.
          ...(await discardsForMemberDeleteOps(store, name)),
        ],
      });
      log.info({ member: name, force: options.force === true, guests: held.length }, 'member removed');
    },
  };

  /** An existing etcd's credentials, written beside the membership; undefined when it needs none. */
  async function writeExternalTls(tls: { ca?: string; cert?: string; key?: string }): Promise<EtcdStoreTls> {
    if (!tls.ca) return undefined;
    await writePrivate(paths.etcdCa, tls.ca);
    if (tls.cert && tls.key) {
      await writePrivate(paths.etcdCert, tls.cert);
      await writePrivate(paths.etcdKey, tls.key);
      return { caFile: paths.etcdCa, certFile: paths.etcdCert, keyFile: paths.etcdKey };
    }
    return { caFile: paths.etcdCa };
  }
}

/** The TLS files an etcd client uses (none for a plain-HTTP etcd). */
type EtcdStoreTls = { caFile: string; certFile?: string; keyFile?: string } | undefined;

// etcd's client (etcd3, with grpc-js and protobufjs) is loaded when this host joins or makes a
// cluster, never on a single host: loaded at start it cost every daemon some 7 MiB of live heap
// and more of its resident memory (decision 0078).
const etcdMemberModule = () => import('./etcd-member.ts');
const etcdStoreModule = () => import('../store/etcd-store.ts');
