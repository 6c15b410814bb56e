import { existsSync } from 'node:fs';
import { readFile, rename } from 'node:fs/promises';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { openSqliteStore } from '../store/sqlite-store.ts';
import {
  clusterPaths,
  convertedStoreOf,
  type LocalMembership,
  parseMemberAddress,
  readLocalMembership,
  sqliteStoreOf,
  writeLocalMembership,
} from './cluster-files.ts';
import type { EtcdMember } from './etcd-member.ts';
import type { MemberTls } from './member-client.ts';
import { copyStore } from './store-copy.ts';

/** The store a daemon runs on, and its membership when it is a cluster member. */
export interface DaemonStore {
  store: KvStore;
  /** `sqlite` on a single host, `etcd` in a cluster (shown by /1.0). */
  description: 'sqlite' | 'etcd';
  membership?: LocalMembership;
  /** The etcd member this host runs (a voter), supervised by this daemon. */
  etcdMember?: EtcdMember;
  /** This member's certificate and the cluster CA (PEM), for the member API and the member client. */
  memberTls?: MemberTls;
}

/**
 * Opens the store at daemon start (decision 0032): the single host's SQLite file, or —
 * when `STATE/cluster/member.json` says this host is a member — the cluster's etcd,
 * adopting (or starting) this host's etcd member first. A daemon that was just made the
 * first member of a cluster copies its single-host store into etcd here, before anything
 * reads the store, and keeps the old file as `store.db.before-cluster`.
 */
export async function openDaemonStore(
  stateDir: string,
  options: { runner: ProcessRunner; log: Logger; etcdPorts?: { client: number; peer: number } },
): Promise<DaemonStore> {
  const { log } = options;
  const membership = await readLocalMembership(stateDir);
  if (!membership) return { store: openSqliteStore(sqliteStoreOf(stateDir)), description: 'sqlite' };
  // etcd's client only for a member: a single host never loads it (decision 0078).
  const { createEtcdMember } = await import('./etcd-member.ts');
  const { openEtcdStore } = await import('../store/etcd-store.ts');

  const paths = clusterPaths(stateDir);
  const memberTlsFiles = { caFile: paths.caCert, certFile: paths.cert, keyFile: paths.key };
  let etcdMember: EtcdMember | undefined;
  if (membership.etcdMember) {
    const ports = options.etcdPorts ?? { client: 2379, peer: 2380 };
    etcdMember = createEtcdMember({
      name: membership.name,
      stateDir,
      address: parseMemberAddress(membership.address).host,
      clientPort: ports.client,
      peerPort: ports.peer,
      tls: memberTlsFiles,
      runner: options.runner,
      log,
    });
    const { adopted } = await etcdMember.start();
    log.info({ member: membership.name, adopted }, 'etcd member serving');
  }
  const store = await openEtcdStore({
    ...etcdClientOptions(stateDir, membership, etcdMember?.clientUrl),
    onError: (e) => log.error({ err: String(e) }, 'etcd store callback failed'),
  });

  let current = membership;
  const sqlite = sqliteStoreOf(stateDir);
  if (membership.state === 'converting') {
    const from = openSqliteStore(sqlite);
    try {
      const report = await copyStore(from, store);
      log.info({ ...report }, 'the single-host store was copied into etcd');
    } finally {
      await from.close();
    }
    current = { ...membership, state: 'member' };
  }
  // A joined host's own store, or a converted one: kept, renamed, never opened again.
  if (existsSync(sqlite)) {
    for (const suffix of ['', '-wal', '-shm']) {
      if (existsSync(`${sqlite}${suffix}`))
        await rename(`${sqlite}${suffix}`, `${convertedStoreOf(stateDir)}${suffix}`);
    }
  }
  // The voters may have changed while this daemon was down: the next start asks them.
  const voters = valuesOf(await records.member.list(store)).flatMap((m) =>
    m.etcdClientUrl ? [m.etcdClientUrl] : [],
  );
  if (voters.length > 0 && voters.join() !== current.endpoints.join()) {
    current = { ...current, endpoints: voters };
  }
  if (current !== membership) await writeLocalMembership(stateDir, current);
  return {
    store,
    description: 'etcd',
    membership: current,
    ...(etcdMember && { etcdMember }),
    memberTls: await readMemberTls(stateDir),
  };
}

/**
 * Where a member's etcd clients connect, and with what credentials: the daemon's and the HA
 * agent's (decision 0052). A member that runs an etcd member talks to it alone: any member serves
 * any request, and a client given every member's endpoint sends its calls to each in turn, so
 * that with one member lost every member's calls waited out that member's deadline (5 s) now and
 * then (seen under a partition: leases missed, decisions 40 s late). Its own etcd cut off from
 * the others answers nothing, which is right for a member in the minority. A member that runs
 * none uses the voters' list.
 */
export function etcdClientOptions(
  stateDir: string,
  membership: LocalMembership,
  ownClientUrl?: string,
): { endpoints: string[]; tls?: { caFile: string; certFile?: string; keyFile?: string } } {
  const paths = clusterPaths(stateDir);
  const endpoints = ownClientUrl ? [ownClientUrl] : membership.endpoints;
  // An existing etcd's own credentials, none for a plain-HTTP one, else the member's certificate.
  const tls =
    membership.externalEtcdTls ??
    (endpoints.every((e) => e.startsWith('https:'))
      ? { caFile: paths.caCert, certFile: paths.cert, keyFile: paths.key }
      : undefined);
  return { endpoints, ...(tls && { tls }) };
}

/** This member's certificate, key and the cluster CA, as PEM. */
export async function readMemberTls(stateDir: string): Promise<MemberTls> {
  const paths = clusterPaths(stateDir);
  const [ca, cert, key] = await Promise.all([
    readFile(paths.caCert, 'utf8'),
    readFile(paths.cert, 'utf8'),
    readFile(paths.key, 'utf8'),
  ]);
  return { ca, cert, key };
}
