import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { failedPrecondition, invalidArgument } from '../core/errors.ts';

/** The member port other members reach a member's API at when `--address` names none. */
export const DEFAULT_MEMBER_PORT = 8444;

/**
 * What this host knows of its membership without the store (`STATE/cluster/member.json`):
 * enough to open the cluster's store at start, before anything else runs.
 */
export interface LocalMembership {
  /** This member's name: the host name it owns guests under. */
  name: string;
  /** `IP:PORT` of this member's API. */
  address: string;
  /** This host runs one of the cluster's etcd voters (under `STATE/etcd`). */
  etcdMember: boolean;
  /** Client URLs of the cluster's etcd (the voters', refreshed at every start from the member records). */
  endpoints: string[];
  /**
   * An existing etcd's own credentials (`--etcd`), as files beside this one; absent: the
   * member certificate with the cluster CA.
   */
  externalEtcdTls?: { caFile: string; certFile?: string; keyFile?: string };
  /**
   * `converting`: the single-host store's contents still have to be copied into etcd,
   * which the next start does before anything reads the store; `member`: done.
   */
  state: 'converting' | 'member';
}

/** Files of the membership under the state dir (`cluster/`, 0700). */
export function clusterPaths(stateDir: string) {
  const dir = path.join(stateDir, 'cluster');
  return {
    dir,
    membership: path.join(dir, 'member.json'),
    caCert: path.join(dir, 'ca.crt'),
    cert: path.join(dir, 'member.crt'),
    key: path.join(dir, 'member.key'),
    etcdCa: path.join(dir, 'etcd-ca.crt'),
    etcdCert: path.join(dir, 'etcd-client.crt'),
    etcdKey: path.join(dir, 'etcd-client.key'),
    /** Where openssl's short-lived files go (root-only). */
    scratch: path.join(dir, 'tmp'),
  };
}

/** The store file a single-host daemon used, kept (renamed) once its contents moved into etcd. */
export const sqliteStoreOf = (stateDir: string) => path.join(stateDir, 'store.db');
export const convertedStoreOf = (stateDir: string) => path.join(stateDir, 'store.db.before-cluster');

/** This host's membership, or undefined on a single host. */
export async function readLocalMembership(stateDir: string): Promise<LocalMembership | undefined> {
  const file = clusterPaths(stateDir).membership;
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const value = JSON.parse(text) as LocalMembership;
    if (typeof value.name !== 'string' || !Array.isArray(value.endpoints)) throw new Error('incomplete');
    return value;
  } catch {
    throw failedPrecondition(
      `${file} is not a valid membership file: restore it, or remove ${path.dirname(file)} to run as a single host again`,
    );
  }
}

/** Writes the membership file whole (a rename), 0600 in a 0700 directory. */
export async function writeLocalMembership(stateDir: string, membership: LocalMembership): Promise<void> {
  const paths = clusterPaths(stateDir);
  await ensureClusterDir(stateDir);
  await writePrivate(paths.membership, `${JSON.stringify(membership, null, 2)}\n`);
}

/** Makes `STATE/cluster` (0700). */
export async function ensureClusterDir(stateDir: string): Promise<void> {
  const { dir } = clusterPaths(stateDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

/** Writes a file whole through a rename, root-only (certificates too: nothing else needs them). */
export async function writePrivate(file: string, text: string): Promise<void> {
  await writeFile(`${file}.tmp`, text, { mode: 0o600 });
  await chmod(`${file}.tmp`, 0o600);
  await rename(`${file}.tmp`, file);
}

/** Removes every membership file (a bootstrap or join that failed half-way). */
export async function removeClusterFiles(stateDir: string): Promise<void> {
  await rm(clusterPaths(stateDir).dir, { recursive: true, force: true });
}

/** `IP[:PORT]` (`[v6]:PORT` for IPv6) as an IP and a port; InvalidArgument otherwise. */
export function parseMemberAddress(text: string): { host: string; port: number; address: string } {
  const trimmed = text.trim();
  let host = trimmed;
  let port = DEFAULT_MEMBER_PORT;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(trimmed);
  if (bracketed) {
    host = bracketed[1] ?? '';
    if (bracketed[2] !== undefined) port = Number(bracketed[2]);
  } else if (isIP(trimmed) !== 6 && trimmed.includes(':')) {
    const i = trimmed.lastIndexOf(':');
    host = trimmed.slice(0, i);
    port = Number(trimmed.slice(i + 1));
  }
  if (isIP(host) === 0) {
    throw invalidArgument(
      `--address ${JSON.stringify(text.slice(0, 100))} is not IP[:PORT]: give the IP address other members reach this host at`,
    );
  }
  if (['0.0.0.0', '::'].includes(host)) {
    throw invalidArgument(
      `--address ${host} means every address: give the one IP address other members reach this host at`,
    );
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalidArgument(`--address ${JSON.stringify(text.slice(0, 100))} has no valid port (1-65535)`);
  }
  return { host, port, address: isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}` };
}

/** `IP:PORT` or `[IP]:PORT` as its parts (an address already checked). */
export function splitAddress(address: string): { host: string; port: number } {
  const { host, port } = parseMemberAddress(address);
  return { host, port };
}
