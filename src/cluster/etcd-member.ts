import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdir, open, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { noop } from 'cockatiel';
import { ClusterClient } from 'etcd3';
import { ConnectionPool } from 'etcd3/lib/connection-pool.js';
import { failedPrecondition, invalidArgument, TrivisorError, unavailable } from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import type { ProcessIdentity } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { isSameProcess, readProcessIdentity } from '../host/proc-stat.ts';
import type { ProcessRunner } from '../host/runner.ts';

/** Certificates of a member: its own (for its client and peer listeners, and as a client of the others) and the cluster CA. */
export interface EtcdTls {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** Where and how one etcd member of this host runs. */
export interface EtcdMemberOptions {
  /** Member name, a DNS label (the host's member name). */
  name: string;
  /** The daemon's state dir: the member lives in `etcd/` under it (root only). */
  stateDir: string;
  /** The address other members and clients reach this one at (an IP). */
  address: string;
  /** Client port (default 2379). */
  clientPort?: number;
  /** Peer port (default 2380). */
  peerPort?: number;
  /** With it, clients and peers talk TLS with certificates signed by the CA (client-cert-auth both ways). */
  tls?: EtcdTls;
  runner: ProcessRunner;
  log: Logger;
  /** The etcd binary (default `etcd`, Debian's etcd-server). */
  etcdBinary?: string;
  /** How often the supervisor looks whether etcd still runs (default 1000 ms). */
  checkIntervalMs?: number;
  /** First pause before a crashed etcd is started again (default 500 ms); doubles up to `maxRestartDelayMs`. */
  restartDelayMs?: number;
  /** Longest pause between restarts (default 30 s). */
  maxRestartDelayMs?: number;
  /** How long etcd may take to serve after a start (default 30 s). */
  startTimeoutMs?: number;
  /** etcd's own log level (default `warn`; its log is `etcd/etcd.log`). */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /**
   * How often etcd tells a quiet watch how far it has caught up (default 60 s; etcd's own default
   * is 10 min). The informers' re-watch starts from there (decision 0087), every 5 minutes.
   */
  progressNotifyIntervalMs?: number;
}

/**
 * The default of `progressNotifyIntervalMs`: well under the informers' 5-minute re-watch, each
 * of which opens a new watch stream and so restarts etcd's timer of that stream (decision 0087).
 */
export const PROGRESS_NOTIFY_INTERVAL_MS = 60_000;

/** How the member's cluster is formed the first time it starts (kept in `etcd/member.json`). */
export type EtcdClusterJoin =
  | { state: 'new' }
  | {
      state: 'existing';
      /** Every member's name and peer URLs, this one included (what `member add` answers). */
      members: Array<{ name: string; peerUrls: string[] }>;
    };

/** What is kept of a member in `etcd/member.json`: enough to start it again the same way. */
export interface MemberRecord {
  name: string;
  clientUrl: string;
  peerUrl: string;
  initialCluster: string;
  initialClusterState: 'new' | 'existing';
  /** The token that keeps two clusters formed at once apart. */
  clusterToken: string;
}

/** A supervised etcd member of this host. */
export interface EtcdMember {
  readonly name: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  /** The data directory (under the state dir). */
  readonly dataDir: string;
  /**
   * Adopts the etcd of this state dir if one runs (an earlier daemon's: pid, start time
   * and data dir must match), else starts it; resolves once it serves, and supervises it
   * from then on: a crashed etcd is started again with backoff.
   */
  start(): Promise<{ adopted: boolean; process: ProcessIdentity }>;
  /** Stops supervising and stops etcd (SIGTERM; etcd syncs its data before it exits). */
  stop(): Promise<void>;
  /** Stops supervising and leaves etcd running, for the next daemon to adopt. */
  detach(): void;
  /** The etcd process as last seen. */
  process(): ProcessIdentity | undefined;
  /** How many times the supervisor started etcd again after it died. */
  restarts(): number;
}

const DEFAULT_CLIENT_PORT = 2379;
const DEFAULT_PEER_PORT = 2380;
/** A restart that ran this long counts as a good run: the backoff starts over. */
const STABLE_AFTER_MS = 60_000;

/** Paths of the member's files under the state dir. */
export function etcdPaths(stateDir: string) {
  const dir = join(stateDir, 'etcd');
  return {
    dir,
    dataDir: join(dir, 'data'),
    record: join(dir, 'member.json'),
    pidFile: join(dir, 'etcd.pid'),
    log: join(dir, 'etcd.log'),
  };
}

/**
 * Starts a new single-member cluster on this host, or (after a daemon restart) the
 * member it made before. The member record is written before etcd first starts, so a
 * daemon killed meanwhile starts the same member again.
 */
export async function bootstrapEtcdMember(options: EtcdMemberOptions): Promise<EtcdMember> {
  const member = await prepareMember(options, { state: 'new' });
  await member.start();
  return member;
}

/**
 * Adds this host to the etcd cluster at `endpoints` (etcd's member add, through a client
 * of it), then starts the member with initial-cluster-state=existing. Adding again a
 * member that was added but never started (a join cut short) reuses the addition.
 */
export async function joinEtcdCluster(
  options: EtcdMemberOptions,
  cluster: { endpoints: string[]; tls?: EtcdTls },
): Promise<EtcdMember> {
  const paths = etcdPaths(options.stateDir);
  const existing = await readRecord(paths.record);
  if (existing) {
    // Joined before (this is a daemon restart): start it as it was made.
    const member = createEtcdMember(options);
    await member.start();
    return member;
  }
  const { peerUrl } = urlsOf(options);
  const members = await addMember(cluster, options.name, peerUrl);
  const member = await prepareMember(options, { state: 'existing', members });
  await member.start();
  return member;
}

/** The command line etcd runs with for `record` (what `launch` spawns). */
export function etcdArgv(options: EtcdMemberOptions, record: MemberRecord): string[] {
  const tls = options.tls;
  const progressMs = options.progressNotifyIntervalMs ?? PROGRESS_NOTIFY_INTERVAL_MS;
  if (!Number.isInteger(progressMs) || progressMs < 1) {
    throw invalidArgument(
      `The etcd progress notification interval must be a whole number of ms from 1, got ${progressMs}.`,
    );
  }
  return [
    options.etcdBinary ?? 'etcd',
    `--name=${record.name}`,
    `--data-dir=${etcdPaths(options.stateDir).dataDir}`,
    `--listen-client-urls=${record.clientUrl}`,
    `--advertise-client-urls=${record.clientUrl}`,
    `--listen-peer-urls=${record.peerUrl}`,
    `--initial-advertise-peer-urls=${record.peerUrl}`,
    `--initial-cluster=${record.initialCluster}`,
    `--initial-cluster-state=${record.initialClusterState}`,
    `--initial-cluster-token=${record.clusterToken}`,
    // Watches that fall behind more than an hour re-list (the informer does); etcd
    // would otherwise keep every revision forever.
    '--auto-compaction-mode=periodic',
    '--auto-compaction-retention=1h',
    // A quiet watch learns how far the store has moved on from these notifications; an informer
    // re-watches from there every 5 minutes (decision 0087). At etcd's default of 10 minutes, and
    // with the timer restarting on each new watch stream, a quiet prefix's watch never got one: each
    // re-watch replayed the history since its last event, and listed again once that was compacted.
    `--experimental-watch-progress-notify-interval=${progressMs}ms`,
    // etcd 3.5's default: 3.4's 100000 keeps too much of the log in memory.
    '--snapshot-count=10000',
    // A member cut off and back must not call an election that stalls every write for seconds
    // (3.4's default is off): the HA agents would all miss renewals and fence (decision 0052).
    '--pre-vote=true',
    '--logger=zap',
    '--log-outputs=stderr',
    `--log-level=${options.logLevel ?? 'warn'}`,
    ...(tls
      ? [
          `--cert-file=${tls.certFile}`,
          `--key-file=${tls.keyFile}`,
          `--trusted-ca-file=${tls.caFile}`,
          '--client-cert-auth',
          `--peer-cert-file=${tls.certFile}`,
          `--peer-key-file=${tls.keyFile}`,
          `--peer-trusted-ca-file=${tls.caFile}`,
          '--peer-client-cert-auth',
        ]
      : []),
  ];
}

/**
 * The member of this state dir as its record says (made by bootstrap or join): for a
 * daemon that starts again. FailedPrecondition on start when there is no record.
 */
export function createEtcdMember(options: EtcdMemberOptions): EtcdMember {
  assertDnsLabel(options.name, 'etcd member name');
  const paths = etcdPaths(options.stateDir);
  const { clientUrl, peerUrl } = urlsOf(options);
  const { runner } = options;
  const log = options.log.child({ component: 'etcd-member', member: options.name });
  const checkIntervalMs = options.checkIntervalMs ?? 1000;
  const firstDelayMs = options.restartDelayMs ?? 500;
  const maxDelayMs = options.maxRestartDelayMs ?? 30_000;
  const startTimeoutMs = options.startTimeoutMs ?? 30_000;
  let current: ProcessIdentity | undefined;
  let child: ChildProcess | undefined;
  let startedAt = 0;
  let failures = 0;
  let restarts = 0;
  let supervising = false;
  let timer: NodeJS.Timeout | undefined;
  let restarting: Promise<void> | undefined;

  const argvOf = (record: MemberRecord): string[] => etcdArgv(options, record);

  /** The etcd of this data dir, if one runs: the pid file's if it is still that process, else any naming the data dir. */
  const findRunning = async (): Promise<ProcessIdentity | undefined> => {
    const recorded = await readPidFile(paths.pidFile);
    if (recorded && (await isSameProcess(recorded)) && (await namesDataDir(recorded.pid, paths.dataDir))) {
      return recorded;
    }
    // No pid file, or a stale one (a daemon killed between starting etcd and writing it).
    for (const pid of await listPids()) {
      if (!(await namesDataDir(pid, paths.dataDir))) continue;
      const identity = await readProcessIdentity(pid);
      if (identity) return identity;
    }
    return undefined;
  };

  const launch = async (record: MemberRecord): Promise<ProcessIdentity> => {
    await mkdir(paths.dataDir, { recursive: true, mode: 0o700 });
    await chmod(paths.dataDir, 0o700);
    const logFile = await open(paths.log, 'a', 0o600);
    let spawned: ChildProcess;
    try {
      // Detached (its own session) and writing to a file, not a pipe: it outlives the
      // daemon, even one killed with -9, like the guests do.
      spawned = runner.spawn(argvOf(record), {
        cwd: paths.dir,
        stdio: ['ignore', logFile.fd, logFile.fd],
        detached: true,
      });
    } finally {
      await logFile.close();
    }
    spawned.on('error', (e) => log.error({ err: e.message }, 'cannot run etcd'));
    spawned.unref();
    if (spawned.pid === undefined)
      throw unavailable(`Cannot run etcd for member ${options.name}: is etcd-server installed?`);
    const identity = await readProcessIdentity(spawned.pid);
    if (!identity)
      throw unavailable(`etcd for member ${options.name} exited at once: ${await logTail(paths.log)}`);
    child = spawned;
    // Told at once when it was our child that died, rather than at the next look.
    spawned.once('exit', () => {
      if (supervising) schedule(0);
    });
    await writeFileAtomic(paths.pidFile, `${JSON.stringify(identity)}\n`);
    startedAt = Date.now();
    log.info({ pid: identity.pid }, 'etcd started');
    return identity;
  };

  const waitServing = async (identity: ProcessIdentity): Promise<void> => {
    const deadline = Date.now() + startTimeoutMs;
    while (!(await healthy(clientUrl, options.tls))) {
      if (!(await isSameProcess(identity))) {
        throw unavailable(
          `etcd for member ${options.name} exited while starting: ${await logTail(paths.log)}`,
        );
      }
      if (Date.now() > deadline) {
        throw unavailable(
          `etcd for member ${options.name} does not serve at ${clientUrl} after ${startTimeoutMs} ms: ${await logTail(paths.log)}`,
        );
      }
      await sleep(100);
    }
  };

  const schedule = (delayMs: number) => {
    clearTimeout(timer);
    timer = setTimeout(() => void check(), delayMs);
    timer.unref();
  };

  /** Looks whether etcd runs; starts it again (with backoff) when it does not. */
  const check = async (): Promise<void> => {
    if (!supervising || restarting) return;
    if (current && (await isSameProcess(current))) {
      if (Date.now() - startedAt > STABLE_AFTER_MS) failures = 0;
      schedule(checkIntervalMs);
      return;
    }
    const delay = failures === 0 ? 0 : Math.min(firstDelayMs * 2 ** (failures - 1), maxDelayMs);
    failures++;
    log.warn(
      { pid: current?.pid, retryInMs: delay, log: await logTail(paths.log) },
      'etcd is not running; starting it again',
    );
    restarting = (async () => {
      await sleep(delay);
      if (!supervising) return;
      const record = await readRecord(paths.record);
      if (!record) return;
      // Someone else may have started it meanwhile (another daemon of this state dir).
      current = (await findRunning()) ?? (await launch(record));
      restarts++;
    })()
      .catch((e) => log.error({ err: String(e) }, 'cannot start etcd again'))
      .finally(() => {
        restarting = undefined;
        if (supervising) schedule(current ? checkIntervalMs : firstDelayMs);
      });
  };

  return {
    name: options.name,
    clientUrl,
    peerUrl,
    dataDir: paths.dataDir,
    async start() {
      const record = await readRecord(paths.record);
      if (!record) {
        throw failedPrecondition(
          `There is no etcd member in ${paths.dir}: bootstrap a cluster or join one first.`,
        );
      }
      if (record.clientUrl !== clientUrl || record.peerUrl !== peerUrl) {
        throw failedPrecondition(
          `The etcd member in ${paths.dir} was made for ${record.peerUrl}, not ${peerUrl}: a member's address cannot change; remove it from the cluster and join again.`,
        );
      }
      const running = await findRunning();
      const identity = running ?? (await launch(record));
      current = identity;
      if (running) {
        startedAt = Date.now();
        log.info({ pid: running.pid }, 'adopted the running etcd');
        // An etcd started by a daemon before its progress notifications were set keeps etcd's
        // 10 minutes until it is restarted: said, not acted on (a restart stalls the cluster).
        const argv = await cmdlineOf(running.pid);
        const want = etcdArgv(options, record).find((a) => a.startsWith(PROGRESS_FLAG));
        if (want && argv.length > 0 && !argv.includes(want)) {
          log.warn(
            {
              pid: running.pid,
              want,
              has: argv.find((a) => a.startsWith(PROGRESS_FLAG)) ?? 'etcd default 10m',
            },
            'the adopted etcd runs with other watch progress notifications: informers re-watch from further back until it restarts',
          );
        }
        // Our pid file may be the stale one: the adopted process is the one to remember.
        await writeFileAtomic(paths.pidFile, `${JSON.stringify(running)}\n`);
      }
      await waitServing(identity);
      supervising = true;
      schedule(checkIntervalMs);
      return { adopted: running !== undefined, process: identity };
    },
    async stop() {
      supervising = false;
      clearTimeout(timer);
      await restarting;
      const identity = current ?? (await findRunning());
      if (!identity || !(await isSameProcess(identity))) return;
      child?.ref();
      process.kill(identity.pid, 'SIGTERM');
      const deadline = Date.now() + 15_000;
      while (await isSameProcess(identity)) {
        if (Date.now() > deadline) {
          log.warn({ pid: identity.pid }, 'etcd ignored SIGTERM for 15 s; killing it');
          process.kill(identity.pid, 'SIGKILL');
        }
        await sleep(50);
      }
      log.info({ pid: identity.pid }, 'etcd stopped');
    },
    detach() {
      supervising = false;
      clearTimeout(timer);
    },
    process: () => current,
    restarts: () => restarts,
  };
}

/** Writes the member record (unless one exists) and returns the member. */
async function prepareMember(options: EtcdMemberOptions, join: EtcdClusterJoin): Promise<EtcdMember> {
  assertDnsLabel(options.name, 'etcd member name');
  const paths = etcdPaths(options.stateDir);
  await mkdir(paths.dir, { recursive: true, mode: 0o700 });
  await chmod(paths.dir, 0o700);
  const existing = await readRecord(paths.record);
  if (!existing) {
    const { clientUrl, peerUrl } = urlsOf(options);
    const members = join.state === 'new' ? [{ name: options.name, peerUrls: [peerUrl] }] : join.members;
    const record: MemberRecord = {
      name: options.name,
      clientUrl,
      peerUrl,
      initialCluster: members.flatMap((m) => m.peerUrls.map((u) => `${m.name}=${u}`)).join(','),
      initialClusterState: join.state,
      // Only a new cluster's members use it (a joining member's is ignored by etcd).
      clusterToken: `trivisor-${options.name}-${Date.now().toString(36)}`,
    };
    await writeFileAtomic(paths.record, `${JSON.stringify(record, null, 2)}\n`);
  }
  return createEtcdMember(options);
}

function urlsOf(options: EtcdMemberOptions): { clientUrl: string; peerUrl: string } {
  if (!/^[0-9a-fA-F.:]+$/.test(options.address)) {
    throw invalidArgument(
      `The etcd member address must be an IP address, got ${JSON.stringify(options.address)}.`,
    );
  }
  const host = options.address.includes(':') ? `[${options.address}]` : options.address;
  const scheme = options.tls ? 'https' : 'http';
  return {
    clientUrl: `${scheme}://${host}:${options.clientPort ?? DEFAULT_CLIENT_PORT}`,
    peerUrl: `${scheme}://${host}:${options.peerPort ?? DEFAULT_PEER_PORT}`,
  };
}

/**
 * etcd's member add, made safe to repeat: a member already added with this peer URL but
 * never started is reused; one that runs under another name is refused.
 */
async function addMember(
  cluster: { endpoints: string[]; tls?: EtcdTls },
  name: string,
  peerUrl: string,
): Promise<Array<{ name: string; peerUrls: string[] }>> {
  const tls = cluster.tls;
  const pool = new ConnectionPool({
    hosts: cluster.endpoints,
    ...(tls
      ? {
          credentials: {
            rootCertificate: readFileSync(tls.caFile),
            privateKey: readFileSync(tls.keyFile),
            certChain: readFileSync(tls.certFile),
          },
        }
      : {}),
    defaultCallOptions: () => ({ deadline: Date.now() + 10_000 }),
    // The add is retried here, knowingly; etcd3's breaker would refuse the retries.
    faultHandling: { host: () => noop, global: noop },
  });
  try {
    const client = new ClusterClient(pool);
    const listed = await client.memberList({ linearizable: true });
    const same = listed.members.find((m) => m.peerURLs.includes(peerUrl));
    if (same && same.name !== '' && same.name !== name) {
      throw failedPrecondition(
        `${peerUrl} is already etcd member ${same.name}: remove that member first, or join with another address.`,
      );
    }
    if (listed.members.some((m) => m.name === name && !m.peerURLs.includes(peerUrl))) {
      throw failedPrecondition(`The etcd cluster already has a member named ${name}: pick another name.`);
    }
    const members = same ? listed.members : await memberAddWhenReady(client, peerUrl);
    return members.map((m) => ({ name: m.peerURLs.includes(peerUrl) ? name : m.name, peerUrls: m.peerURLs }));
  } catch (e) {
    if (e instanceof TrivisorError) throw e;
    throw unavailable(
      `Cannot add member ${name} to the etcd cluster at ${cluster.endpoints.join(',')}: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}.`,
    );
  } finally {
    pool.close();
  }
}

/** An etcd member as `member list` shows it. */
export interface EtcdClusterMember {
  id: string;
  name: string;
  peerUrls: string[];
  clientUrls: string[];
  isLearner: boolean;
}

/** The members of the etcd cluster at `endpoints` (linearizable: what the leader knows now). */
export async function listEtcdMembers(cluster: {
  endpoints: string[];
  tls?: EtcdTls;
}): Promise<EtcdClusterMember[]> {
  return withClusterClient(cluster, 'list the members of', async (client) =>
    (await client.memberList({ linearizable: true })).members.map((m) => ({
      id: m.ID,
      name: m.name,
      peerUrls: m.peerURLs,
      clientUrls: m.clientURLs,
      isLearner: m.isLearner ?? false,
    })),
  );
}

/**
 * Removes the etcd member with peer URL `peerUrl` (a cluster member being removed);
 * nothing when there is none. The removed etcd stops serving by itself.
 */
export async function removeEtcdMember(
  cluster: { endpoints: string[]; tls?: EtcdTls },
  peerUrl: string,
): Promise<boolean> {
  return withClusterClient(cluster, 'remove a member from', async (client) => {
    const listed = await client.memberList({ linearizable: true });
    const member = listed.members.find((m) => m.peerURLs.includes(peerUrl));
    if (!member) return false;
    await client.memberRemove({ ID: member.ID });
    return true;
  });
}

async function withClusterClient<T>(
  cluster: { endpoints: string[]; tls?: EtcdTls },
  what: string,
  work: (client: ClusterClient) => Promise<T>,
): Promise<T> {
  const tls = cluster.tls;
  const pool = new ConnectionPool({
    hosts: cluster.endpoints,
    ...(tls
      ? {
          credentials: {
            rootCertificate: readFileSync(tls.caFile),
            privateKey: readFileSync(tls.keyFile),
            certChain: readFileSync(tls.certFile),
          },
        }
      : {}),
    defaultCallOptions: () => ({ deadline: Date.now() + 10_000 }),
    faultHandling: { host: () => noop, global: noop },
  });
  try {
    return await work(new ClusterClient(pool));
  } catch (e) {
    if (e instanceof TrivisorError) throw e;
    throw unavailable(
      `Cannot ${what} the etcd cluster at ${cluster.endpoints.join(',')}: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}.`,
    );
  } finally {
    pool.close();
  }
}

/**
 * etcd refuses a new voting member until every member has been connected for 5 s
 * (strict reconfiguration check: "unhealthy cluster"), and while members added before
 * have not started; both pass with time, so the add is tried again for a while.
 */
async function memberAddWhenReady(client: ClusterClient, peerUrl: string) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return (await client.memberAdd({ peerURLs: [peerUrl] })).members;
    } catch (e) {
      const message = e instanceof Error ? e.message : '';
      if (!/unhealthy cluster|not enough started members/.test(message) || Date.now() > deadline) throw e;
      await sleep(500);
    }
  }
}

/** Whether etcd answers /health with true (it has a leader and serves). */
function healthy(clientUrl: string, tls: EtcdTls | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const url = new URL('/health', clientUrl);
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = request(
      url,
      {
        timeout: 2000,
        ...(tls
          ? { ca: readFileSync(tls.caFile), cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) }
          : {}),
      },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => {
          body += d.toString();
        });
        res.on('end', () => resolve(res.statusCode === 200 && /"health":\s*"true"/.test(body)));
        res.on('error', () => resolve(false));
      },
    );
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

async function readRecord(path: string): Promise<MemberRecord | undefined> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as MemberRecord;
  } catch {
    throw failedPrecondition(
      `The etcd member record ${path} is not valid JSON: restore it or remove the member's directory.`,
    );
  }
}

async function readPidFile(path: string): Promise<ProcessIdentity | undefined> {
  try {
    const value = JSON.parse(await readFile(path, 'utf8')) as Partial<ProcessIdentity>;
    return Number.isInteger(value.pid) && Number.isInteger(value.startTime)
      ? { pid: value.pid as number, startTime: value.startTime as number }
      : undefined;
  } catch {
    return undefined;
  }
}

async function writeFileAtomic(path: string, text: string): Promise<void> {
  await writeFile(`${path}.tmp`, text, { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}

async function listPids(): Promise<number[]> {
  return (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);
}

/** Whether process `pid` runs with `--data-dir=DIR` (so it is this member's etcd, not another). */
async function namesDataDir(pid: number, dataDir: string): Promise<boolean> {
  return (await cmdlineOf(pid)).includes(`--data-dir=${dataDir}`);
}

/** A process's arguments ([] when it is gone). */
async function cmdlineOf(pid: number): Promise<string[]> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline === '' ? [] : cmdline.split('\0');
}

const PROGRESS_FLAG = '--experimental-watch-progress-notify-interval=';

async function logTail(path: string): Promise<string> {
  const st = await stat(path).catch(() => undefined);
  if (!st) return 'no log';
  const text = await readFile(path, 'utf8').catch(() => '');
  const lines = text.trim().split('\n').slice(-3);
  return lines.map((l) => l.slice(0, 300)).join(' | ') || 'empty log';
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
