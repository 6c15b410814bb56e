import { createHash, randomBytes } from 'node:crypto';
import { existsSync, type FSWatcher, mkdirSync, readFileSync, statfsSync, watch } from 'node:fs';
import { chmod, lstat, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { splitAddress } from './cluster/cluster-files.ts';
import { openDaemonStore } from './cluster/daemon-store.ts';
import { createMoveTransport } from './cluster/guest-transfer.ts';
import { createImageFetcher } from './cluster/image-fetch.ts';
import { buildMemberApi } from './cluster/member-api.ts';
import { createMemberClient } from './cluster/member-client.ts';
import { type MemberLease, startMemberLease } from './cluster/member-lease.ts';
import { type ClusterMember, createClusterService, placementCandidates } from './cluster/membership.ts';
import { createUsageMeter } from './cluster/usage-meter.ts';
import { createBackupScheduler } from './control/backup-scheduler.ts';
import { createEvacuationController } from './control/evacuation-controller.ts';
import { createGuestController } from './control/guest-controller.ts';
import { createGuestStorageController } from './control/guest-storage-controller.ts';
import { superviseHaAgent } from './control/ha/agent-process.ts';
import { startCrmLoop } from './control/ha/crm-loop.ts';
import { haPaths, liveAgentToken, readAgentState, startRefusal } from './control/ha/ha-files.ts';
import { isHaGuest, readHaMembers } from './control/ha/ha-store.ts';
import { haSummary } from './control/ha/ha-summary.ts';
import { createMemoryReclaim } from './control/memory-reclaim.ts';
import { everyMinute } from './control/minute-clock.ts';
import { measuringMover } from './control/move-bandwidth.ts';
import { createNetworkController } from './control/network-controller.ts';
import { createNicObserver } from './control/nic-observer.ts';
import { createPoolController } from './control/pool-controller.ts';
import { createRebalanceController } from './control/rebalance-controller.ts';
import { createSnapshotScheduler } from './control/snapshot-scheduler.ts';
import { asTrivisorError, notFound, notSupported } from './core/errors.ts';
import type { GuestSpec, Model } from './core/types.ts';
import { createCtDriver } from './drivers/ct/ct-driver.ts';
import { createCtStorage } from './drivers/ct/ct-storage.ts';
import { createCtVolumes } from './drivers/ct/ct-volumes.ts';
import { cgroupParentOf } from './drivers/guest-cgroup.ts';
import type { DriverContext, GuestDriver } from './drivers/guest-driver.ts';
import type { PvmAgentMap } from './drivers/pvm/pvm-agent-pool.ts';
import { PVM_UID_OFFSET, UID_SLOTS as PVM_UID_SLOTS } from './drivers/pvm/pvm-context.ts';
import { createPvmDriver } from './drivers/pvm/pvm-driver.ts';
import { createPvmStorage } from './drivers/pvm/pvm-storage.ts';
import { createPvmVolumes } from './drivers/pvm/pvm-volumes.ts';
import { createAgentPool } from './drivers/vm/vm-agent.ts';
import { VM_UID_OFFSET, UID_SLOTS as VM_UID_SLOTS } from './drivers/vm/vm-context.ts';
import { createVmDriver } from './drivers/vm/vm-driver.ts';
import { createVmStorage } from './drivers/vm/vm-storage.ts';
import { createVmVolumes } from './drivers/vm/vm-volumes.ts';
import { KERNEL_BOOT_ID_FILE, readBootId } from './host/boot-id.ts';
import { parseFailpoints } from './host/failpoints.ts';
import { helperRunner } from './host/helper-runner.ts';
import { readCgroupProcessIo, readGuestIo, readHostCounters } from './host/host-counters.ts';
import { DENSITY_SYSCTLS, raiseSysctls } from './host/host-sysctls.ts';
import { createKsmControl } from './host/ksm.ts';
import { createLauncher } from './host/launcher.ts';
import { createLogger, type LogForward } from './host/logger.ts';
import { ensureSharedMount } from './host/mounts.ts';
import { hostRunner } from './host/runner.ts';
import { ensureServerCertificate } from './host/server-certificate.ts';
import { imageFiles } from './images/image-files.ts';
import { hostNetworks, pickDefaultSubnet } from './network/default-network.ts';
import { createGuestNetworking } from './network/guest-networking.ts';
import { createLinuxNetworkBackend } from './network/linux-network-backend.ts';
import { createPowerDriver } from './power/power-driver.ts';
import { buildServer } from './server/build-server.ts';
import type { MemberForwarding } from './server/forward.ts';
import { listenTcp, listenUnix } from './server/listen.ts';
import { createWebSessions } from './server/web-sessions.ts';
import { auditRetentionFromEnv, createAuditLog } from './services/audit-log.ts';
import { createAuthService } from './services/auth-service.ts';
import { createBackupRecovery } from './services/backup-recovery.ts';
import { createClaims } from './services/claims.ts';
import { createConsolidationPlanner } from './services/consolidation-planner.ts';
import { createEventBus } from './services/event-bus.ts';
import {
  createGuestMover,
  createMoveReceiver,
  liveMoveRefusal,
  type MoveTransport,
} from './services/guest-move.ts';
import { createGuestService } from './services/guest-service.ts';
import { createHostService } from './services/host-service.ts';
import { createImageService } from './services/image-service.ts';
import { createLastUsage } from './services/last-usage.ts';
import { openMetricsHistory } from './services/metrics-history.ts';
import { createMetricsSampler } from './services/metrics-sampler.ts';
import { createNetworkService, type NetworkService } from './services/network-service.ts';
import { createOperationService } from './services/operation-service.ts';
import { createOwnerRouting } from './services/owner-routing.ts';
import { createPoolService } from './services/pool-service.ts';
import { createProjectService } from './services/project-service.ts';
import { createStorageService } from './services/storage-service.ts';
import type { Services } from './services/types.ts';
import { createVolumeResolver, createVolumeService, poolPathOf } from './services/volume-service.ts';
import { createPoolDrivers } from './storage/storage-pools.ts';
import { closeVolumesDir, createVolumeBackend } from './storage/volumes.ts';
import { openSqliteAuditStore } from './store/audit-store.ts';
import { indexProjectGuests } from './store/project-guests.ts';
import { records, valuesOf } from './store/records.ts';

export interface DaemonOptions {
  /** State directory; default $TRIVISOR_DIR or /var/lib/trivisor. */
  stateDir?: string;
  /** `HOST:PORT` for the HTTPS listener (tokens, client certificates), or `none`; default $TRIVISOR_LISTEN or 127.0.0.1:8443. */
  listen?: string;
}

/**
 * Host ids of unprivileged guests start here: the ct range shared by guests with
 * security.idmap.isolated=false, pvm kernels' uids, then one range of 65536 per ct guest
 * (src/drivers/ct/id-ranges.ts).
 */
const IDMAP_BASE = 1_000_000;

const version = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** Composition root: reads config, builds every part, injects it, serves until SIGTERM/SIGINT. */
export async function runDaemon(options: DaemonOptions = {}): Promise<void> {
  const stateDir = path.resolve(options.stateDir ?? process.env.TRIVISOR_DIR ?? '/var/lib/trivisor');
  const listen = options.listen ?? process.env.TRIVISOR_LISTEN ?? '127.0.0.1:8443';
  await mkdir(stateDir, { recursive: true, mode: 0o711 });
  // Search only for others (docs/decisions/0018): guests' uids walk through it to what is theirs.
  await chmod(stateDir, 0o711);
  // Warnings and errors also go out as `logging` events (Incus's), once the event bus exists.
  const logForward: LogForward = {};
  const log = createLogger({ forward: logForward });
  await takePidLock(stateDir);
  // Fault tests' failpoints (decision 0107): a daemon started with them stops itself at each.
  const failpoints = parseFailpoints(process.env.TRIVISOR_FAILPOINTS);
  if (failpoints.armed.size > 0) {
    log.warn(
      { failpoints: [...failpoints.armed] },
      'failpoints armed: the daemon stops itself (SIGSTOP) at each',
    );
  }
  if (failpoints.unknown.length > 0) {
    log.warn({ names: failpoints.unknown }, 'TRIVISOR_FAILPOINTS names no such failpoint: ignored');
  }
  // Before any guest starts: the kernel settings thousands of ct guests need (decisions 0057-0059).
  // Only raised, never lowered; each is reported in `trivisor info --host`.
  const sysctls = await raiseSysctls(DENSITY_SYSCTLS);
  for (const s of sysctls) {
    if (s.changed)
      log.info({ key: s.key, before: s.before, value: s.value }, 'raised a kernel setting for dense hosts');
    if (s.error) log.warn({ key: s.key, err: s.error }, 'cannot raise a kernel setting for dense hosts');
  }

  const runner = hostRunner();
  // Before anything is mounted below it (pools, guests' trees): see ensureSharedMount.
  await ensureSharedMount(stateDir, { runner });
  // SQLite on a single host; the cluster's etcd once this host is a member (decision 0032).
  const opened = await openDaemonStore(stateDir, { runner, log });
  const { store, membership } = opened;
  const hostName = await hostIdentity(stateDir);
  if (membership && membership.name !== hostName) {
    log.error({ member: membership.name, hostName }, 'the member name and the host name differ');
  }
  // A store written before the index of each project's guests gets it once (decision 0087); until
  // then project reads go on reading every guest, so a failure here only costs reads. Checked again
  // every minute (two counts): a member running a daemon from before the index makes guests
  // without their keys, which this finds and indexes (readers read every guest meanwhile).
  const checkIndex = () =>
    indexProjectGuests(store).then(
      (r) => {
        if (r.recount === 'short') {
          log.warn(
            r,
            'guests were made without their project index key (a member running an older daemon?): indexed them again',
          );
        } else if (r.added + r.dropped > 0) log.info(r, "indexed each project's guests");
      },
      (e: unknown) => log.warn({ err: String(e) }, "cannot index each project's guests yet"),
    );
  await checkIndex();
  let indexChecking = false;
  const indexChecks = setInterval(() => {
    if (indexChecking) return;
    indexChecking = true;
    void checkIndex().finally(() => {
      indexChecking = false;
    });
  }, 60_000);
  indexChecks.unref();
  // Operation claims this member's previous daemon held when it died are released before anything runs.
  const claims = createClaims({ store, member: hostName });
  const swept = await claims.sweep();
  if (swept > 0) log.info({ claims: swept }, 'released the operation claims of the previous daemon');
  // TRIVISOR_BRIDGE_PORTS: guest ports per bridge before a leaf bridge is used (decision 0068; tests lower it).
  const portsPerBridge = Number(process.env.TRIVISOR_BRIDGE_PORTS ?? '');
  // The ct start's helper and the short commands of a guest's start and stop (ip, nft, bridge,
  // sysctl, tc, nsenter; runc's kill, start, delete, update) fork from a small perl process, not
  // from the daemon (decision 0097); live children (spawn) stay the daemon's.
  const launcher = createLauncher(runner, log, { dir: path.join(stateDir, 'launcher') });
  const forkless = helperRunner(launcher, runner);
  const networkBackend = createLinuxNetworkBackend({
    runner: forkless,
    log,
    stateDir,
    ...(Number.isInteger(portsPerBridge) && portsPerBridge > 0 && { portsPerBridge }),
  });
  const nics = createGuestNetworking({ store, backend: networkBackend, stateDir });
  const poolDrivers = createPoolDrivers({ runner, stateDir });
  const volumeResolver = createVolumeResolver({ store, drivers: poolDrivers, stateDir });
  const ctx: DriverContext = {
    runner,
    log,
    stateDir,
    idmapBase: IDMAP_BASE,
    network: nics,
    volumes: volumeResolver,
  };
  // One set of agent connections per model, shared by driver and storage (an agent's line serves one client).
  const vmAgents = createAgentPool();
  const pvmAgents: PvmAgentMap = new Map();
  const drivers: Partial<Record<Model, GuestDriver>> = {
    // The ct start's helper is launched from a small process, not forked from the daemon (decision 0097).
    ct: createCtDriver({ ...ctx, runner: forkless }, { launcher }),
    pvm: createPvmDriver(ctx, { agents: pvmAgents }),
    vm: createVmDriver(ctx, { agents: vmAgents }),
  };

  const events = createEventBus();
  logForward.to = (line) =>
    events.publish({
      type: 'logging',
      location: hostName,
      metadata: { message: line.message, level: line.level, context: line.context },
    });
  const operations = createOperationService(events, { location: hostName });
  const files = imageFiles(stateDir, { runner, log });
  await files.prepare();
  // Members talk to each other over mutual TLS (decision 0032).
  const memberClient = opened.memberTls
    ? createMemberClient(() => opened.memberTls as NonNullable<typeof opened.memberTls>)
    : undefined;
  /** The cluster's members as `cluster list` has them (none off a cluster). */
  const clusterMembers = async () => (await services.cluster?.list()) ?? [];
  /** The other members, Offline ones left out. */
  const otherMembers = async () =>
    (await clusterMembers()).filter((m) => m.name !== membership?.name && m.status !== 'Offline');
  /** A member's name and member-API address, from its record. */
  const memberTarget = async (name: string) => {
    const record = (await records.member.at(name).get(store))?.value;
    return record && { name: record.name, address: record.address };
  };
  const images = createImageService({
    store,
    files,
    operations,
    events,
    // A member fetches the image files it lacks from the others (decision 0034).
    ...(membership &&
      memberClient && {
        fetch: createImageFetcher({
          files,
          client: memberClient,
          log,
          members: async () => (await otherMembers()).map((m) => ({ name: m.name, address: m.address })),
        }),
      }),
  });
  const capacity = { memoryBytes: os.totalmem(), cpus: os.availableParallelism() };
  const networks = createNetworkService({
    store,
    hostName,
    drivers,
    hostSubnets: () => hostNetworks(runner),
    claims,
  });
  // The metric sampler's last usage of each running guest, which the guests list answers from
  // instead of reading every guest's cgroups at each request (decision 0099).
  const lastUsage = createLastUsage();
  const guests = createGuestService({
    store,
    drivers,
    images,
    operations,
    hostName,
    capacity,
    networks,
    nics,
    lastUsage,
    // On a cluster the scheduler places new guests from the members' heartbeats (decision 0033).
    ...(membership && {
      placement: {
        candidates: async () => placementCandidates(await services.cluster?.list()),
      },
    }),
  });
  // KSM while vm guests run (decision 0060): what the daemon found is kept to be put back.
  const ksm = createKsmControl({ stateFile: path.join(stateDir, 'ksm.json'), log });
  const host = createHostService({
    hostName,
    version,
    stateDir,
    storeDescription: opened.description,
    sysctls,
    drivers,
    guests,
    ksm: () => ksm.status(),
    // The metrics' sources (decision 0030); pools are made below, hence the late lookup.
    guestRecords: async () => {
      const [specs, statuses] = await Promise.all([
        records.guest.list(store),
        records.guestStatus.list(store),
      ]);
      const processOf = new Map(
        statuses.items.map((s) => [records.guestStatus.nameOf(s.key), s.value.process]),
      );
      return new Map(valuesOf(specs).map((spec) => [spec.name, { spec, process: processOf.get(spec.name) }]));
    },
    nicCounters: (port) => networkBackend.counters(port),
    processIo: (spec) => readCgroupProcessIo(`${cgroupParentOf(stateDir)}/${spec.name}`),
    readHost: () => readHostCounters(),
    pools: async () => (await services.pools?.list({ guests: false })) ?? [],
  });
  const projects = createProjectService({ store });
  const services: Services = { guests, networks, images, operations, events, host, projects };
  // Requests that must run where their guest is are answered here only for this member's guests.
  services.owner = createOwnerRouting({ store, member: hostName });
  // Tokens and trusted certificates (in the store), and the audit log (its own file): decision 0022.
  services.auth = createAuthService({ store, assertProjectExists: (name) => projects.assertExists(name) });
  const audit = createAuditLog({
    store: openSqliteAuditStore(path.join(stateDir, 'audit.db')),
    events,
    hostName,
    retention: auditRetentionFromEnv(process.env),
    onError: (e) => log.error({ err: String(e) }, 'cannot record an audit entry'),
  });
  services.audit = audit;

  const guestStorage = {
    ct: createCtStorage(ctx),
    vm: createVmStorage(ctx, { agents: vmAgents }),
    pvm: createPvmStorage(ctx, { agents: pvmAgents }),
  };
  services.storage = createStorageService({
    store,
    storage: guestStorage,
    guests,
    images,
    operations,
    events,
    runner,
    stateDir,
    drivers,
    hostName,
    pools: () => services.pools,
    log,
    claims,
  });
  // Half-made snapshots, backups and imports of a daemon that died mid-way go before anything else runs.
  await services.storage.sweep();
  // On a cluster, guests move between members (decision 0040): this member's files of a guest
  // that moved away, or of one whose move here was undone, go with its driver's delete.
  let moveTransport: MoveTransport | undefined;
  /** Finishes the moves this member's daemon left unfinished when it died (decision 0079). */
  let resumeMoves: (() => Promise<number>) | undefined;
  /** Tries again, every minute, a move whose undoing or resume failed while this daemon lives. */
  let retryMoves: (() => { stop(): void }) | undefined;
  let movesRetrying: { stop(): void } | undefined;
  /** Sweeps what undone moves left here now (the receiver's sweep, otherwise every 5 minutes). */
  let sweepMoves: (() => void) | undefined;
  if (membership && memberClient) {
    const removeLocal = async (spec: GuestSpec) => {
      // A guest on a shared pool keeps its files (the pool's, now used by another member): only this member's link goes.
      if (await services.pools?.sharedPoolOf(spec.name)) return services.pools?.dropShared(spec.name);
      const driver = drivers[spec.model];
      if (!driver) throw notSupported(`The ${spec.model} model is not available on host ${hostName}`);
      await driver.delete(spec);
    };
    moveTransport = createMoveTransport({
      client: memberClient,
      // A live move's prepare makes a disk and starts a QEMU before it answers.
      liveClient: createMemberClient(() => opened.memberTls as NonNullable<typeof opened.memberTls>, {
        timeoutMs: 180_000,
      }),
      member: memberTarget,
    });
    const guestMover = createGuestMover({
      store,
      operations,
      hostName,
      guests,
      storage: services.storage,
      removeLocal,
      members: clusterMembers,
      transport: moveTransport,
      liveRefusal: liveMoveRefusal(runner, {
        migrates: (model) => drivers[model]?.migration !== undefined,
      }),
      migrationOf: (model) => drivers[model]?.migration,
      log,
      hostSubnets: () => hostNetworks(runner),
      // An HA guest's move mark is ended under the token this member's agent holds now (decision 0089).
      haToken: () => liveAgentToken(readAgentState(stateDir)),
      // A move that ends leaving the guest elsewhere (HA gave it away) lets its shared link go.
      releaseShared: async (name) => services.pools?.releaseShared(name),
    });
    resumeMoves = () => guestMover.resumeUnfinished();
    const receiver = createMoveReceiver({
      store,
      hostName,
      storage: guestStorage,
      runner,
      workDir: path.join(stateDir, 'imports'),
      removeLocal,
      log,
      // A live migration comes in on this member's cluster address (decision 0042).
      live: {
        migrationOf: (model) => drivers[model]?.migration,
        image: (fingerprint) => images.handle(fingerprint),
        host: splitAddress(membership.address).host,
        addressOf: async (member) => {
          const target = await memberTarget(member);
          return target && splitAddress(target.address).host;
        },
        // Over a shared pool only the RAM moves (decision 0061); the pool service is made below.
        shared: {
          linkIncoming: async (spec) => (await services.pools?.linkIncoming(spec)) === true,
          imageFor: async (spec, image) => services.pools?.imageFor(spec, image) ?? image,
        },
        hasCopy: async (name) =>
          lstat(path.join(stateDir, 'guests', name)).then(
            () => true,
            (e: NodeJS.ErrnoException) => {
              if (e.code === 'ENOENT') return false;
              throw e;
            },
          ),
      },
    });
    // What moves to here left in imports/ and the upload directory (a daemon that died between a
    // live move's snapshots and its prepare, or during a receive) goes now, before the member API
    // serves, then every 5 minutes (decision 0088, amended).
    await receiver.sweep({ uploadDir: stateDir });
    sweepMoves = () => void receiver.sweep();
    retryMoves = () => {
      const moves = guestMover.retryUnfinished();
      const sweeps = receiver.sweepEvery();
      return {
        stop: () => {
          moves.stop();
          sweeps.stop();
        },
      };
    };
    services.moves = {
      // Each finished move measures its pair's bandwidth for the rebalancer (issue 14 §2).
      mover: measuringMover(guestMover, { store, operations, hostName, log }),
      receiver,
    };
  }
  // A lost member's guests, and those the store does not know, back from the backup directory (decision 0046).
  services.backupRecovery = createBackupRecovery({
    store,
    hostName,
    operations,
    guests,
    storage: services.storage,
    members: clusterMembers,
    ...(moveTransport && { transport: moveTransport }),
    ...(services.moves && { receiver: services.moves.receiver }),
    workDir: path.join(stateDir, 'imports'),
    log,
  });
  services.volumes = createVolumeService({
    store,
    pools: poolDrivers,
    backend: createVolumeBackend({ runner }),
    stateDir,
    drivers,
    live: {
      ct: createCtVolumes({ runner, idmapBase: IDMAP_BASE }),
      vm: createVmVolumes({ stateDir, runner }),
      pvm: createPvmVolumes({ runner, stateDir }),
    },
    events,
    images,
    hostName,
    claims,
  });
  const volumeService = services.volumes;
  const poolService = createPoolService({
    // The host uids vm and pvm guests run as here: an adopted guest on a shared pool gets its own (decision 0049).
    uidBlocks: {
      vm: { base: IDMAP_BASE + VM_UID_OFFSET, slots: VM_UID_SLOTS - 1 },
      pvm: { base: IDMAP_BASE + PVM_UID_OFFSET, slots: PVM_UID_SLOTS },
    },
    inUse: (pool) => volumeService.poolInUse(pool),
    store,
    drivers: poolDrivers,
    log,
    stateDir,
    runner,
    guests,
    operations,
    events,
    hostName,
    claims,
    // On a cluster a pool created without a target is every member's (decision 0038).
    ...(membership && { cluster: true }),
  });
  services.pools = poolService;
  // The default pool is recorded and every pool mounted before guests start; limits.disk follows.
  const poolController = createPoolController({ store, drivers: poolDrivers, runner, log, hostName });
  await poolController.start();
  // Links to guests on shared pools that another member runs now (decision 0049): only the link goes.
  await poolService
    .sweepSharedLinks()
    .catch((e: unknown) => log.warn({ err: String(e) }, 'cannot sweep the links of guests on shared pools'));
  // guest.json copies, snapshot records of deleted guests, volumes no guest has given back to root.
  const guestStorageController = createGuestStorageController({
    store,
    log,
    hostName,
    stateDir,
    pools: poolDrivers,
  });
  await guestStorageController.start();
  // Every pool's volumes, left open (0711) by earlier versions: root only (decision 18).
  const poolPaths = valuesOf(await records.pool.list(store)).map((pool) =>
    poolPathOf(pool, poolDrivers, stateDir),
  );
  for (const dir of new Set([stateDir, ...poolPaths])) {
    await closeVolumesDir(dir).catch((e: unknown) =>
      log.warn({ err: String(e), pool: dir }, 'cannot close the volumes directory'),
    );
  }
  // The busybox image is made again at every start (so an upgraded busybox-static gives a new
  // image), which takes a few hundred ms: once it exists, start-up (re-adoption) does not wait.
  const busybox = images.ensureBusybox();
  const hasBusybox = await images.get('busybox').then(
    () => true,
    () => false,
  );
  if (hasBusybox)
    busybox.catch((e: unknown) => log.warn({ err: String(e) }, 'cannot refresh the busybox image'));
  else await busybox;
  // Networks first: guests that start now need their bridges.
  const networkController = createNetworkController({
    store,
    backend: networkBackend,
    events,
    log,
    hostName,
    stateDir,
  });
  await networkController.start();
  await ensureDefaultNetwork(stateDir, networks, runner).catch((e) =>
    log.warn(
      { err: String(e) },
      'cannot create the default network; create one with trivisor network create',
    ),
  );
  // HA (decision 0052): the member's agent holds the HA lease and fences; the daemon starts an HA
  // guest only when the agent asks, and runs the CRM that gives a lost member's guests away.
  const haAgent = membership
    ? await superviseHaAgent({
        stateDir,
        runner,
        log,
        ...(opened.etcdMember && { etcdEndpoints: [opened.etcdMember.clientUrl] }),
        external: process.env.TRIVISOR_HA_AGENT === 'systemd',
      })
    : undefined;
  const controller = createGuestController({
    store,
    drivers,
    images,
    events,
    log,
    hostName,
    ...(membership && {
      ha: {
        manages: (spec: GuestSpec) => isHaGuest(spec),
        startRefusal: (spec: GuestSpec) => startRefusal(stateDir, spec.name),
      },
    }),
    releasePlacement: (name) => poolService.releaseGuest(name),
    // Guests on a shared pool run on whichever member they are located on (decision 0049).
    shared: {
      adopt: (spec) => poolService.adoptShared(spec),
      imageFor: (spec, image) => poolService.imageFor(spec, image),
      release: (name) => poolService.releaseShared(name),
    },
  });
  await controller.start();
  // A permit the agent writes is a start it asks for: that guest is reconciled at once.
  let permitWatch: FSWatcher | undefined;
  if (membership) {
    mkdirSync(haPaths(stateDir).permits, { recursive: true, mode: 0o700 });
    permitWatch = watch(haPaths(stateDir).permits, (_event, file) => {
      if (file && !file.includes('.tmp-')) void controller.reconcile(file).catch(() => {});
    });
  }
  // What running guests actually hold on their NICs, and NICs that did not come up (decision 15).
  const nicObserver = createNicObserver({ store, drivers, networking: nics, events, log, hostName });
  await nicObserver.start();

  // The metric history the web UI charts (decision 0027): its own file, sampled every 10 s.
  const metricsHistory = openMetricsHistory(path.join(stateDir, 'metrics.db'));
  services.metricsHistory = metricsHistory;
  // Plans of uploaded inventories, each in a worker thread off the event loop (decision 0065).
  services.consolidation = createConsolidationPlanner();
  const sampler = createMetricsSampler({
    // This member's running guests from the controller's memory, their usage read where they run
    // (decision 0080); every guest's name only every ten minutes, for the series of guests gone.
    running: async () => (await guests.withUsage?.(controller.running())) ?? [],
    names: async () =>
      new Set((await store.list(records.guest.prefix)).kvs.map((kv) => records.guest.nameOf(kv.key))),
    history: metricsHistory,
    hostName,
    readHost: () => readHostCounters(),
    readGuestIo: (g) => readGuestIo(g),
    lastUsage,
    onError: (e) => log.warn({ err: String(e) }, 'cannot sample the metric history'),
  });
  sampler.start();
  // Idle guests' memory back to the host (decision 0060): KSM for vm, free pages of pvm guests.
  // TRIVISOR_MEMORY_RECLAIM=off leaves both alone (bench/vm-pvm-density.ts measures without them).
  const memoryReclaim = createMemoryReclaim({
    // From the guest controller's memory: listing every guest and status of the cluster every 10 s
    // was two full range reads per member at 10,000 guests (decision 0068).
    runningGuests: async () =>
      controller.running().map(({ spec, status }) => ({
        spec,
        ...(status.startedAt && { startedAt: status.startedAt }),
        ...(status.process && { process: status.process }),
      })),
    drivers,
    ksm,
    log,
  });
  if (process.env.TRIVISOR_MEMORY_RECLAIM !== 'off') memoryReclaim.start();

  // Browser sessions and login links (decision 0026), in the store: both listeners and restarts share them.
  let daemonTokenSha256: string | undefined;
  const sessionTtlSeconds = Number(process.env.TRIVISOR_WEB_SESSION_TTL ?? '');
  const webSessions = createWebSessions({
    store,
    daemonTokenSha256: () => daemonTokenSha256,
    ...(Number.isInteger(sessionTtlSeconds) &&
      sessionTtlSeconds > 0 && { sessionTtlMs: sessionTtlSeconds * 1000 }),
  });
  // Membership (decision 0032): a bootstrap or a join answers, then the daemon restarts on the
  // cluster's store (below, after shutting down as for SIGTERM; guests keep running).
  let restartRequested = false;
  let stopDaemon = () => {};
  services.cluster = createClusterService({
    stateDir,
    hostName,
    version,
    runner,
    log,
    store,
    ...(membership && { membership }),
    ...(memberClient && { members: memberClient }),
    operations,
    restart: () => {
      restartRequested = true;
      stopDaemon();
    },
    setHostName: (name) => writeFile(path.join(stateDir, 'host-name'), `${name}\n`),
  });
  // Liveness: the member's lease and heartbeat, once its guests are adopted (Online means serving).
  let lease: MemberLease | undefined;
  if (membership) {
    // The default pool's space, for placement (decision 0033): the state directory's file system.
    const meter = createUsageMeter(undefined, undefined, () => {
      const st = statfsSync(stateDir);
      return { totalBytes: st.blocks * st.bsize, availableBytes: st.bavail * st.bsize };
    });
    const heartbeat = {
      incarnation: randomBytes(8).toString('hex'),
      // Which boot of the host this is: power management's "back on" (decision 0055).
      bootId: await readBootId(process.env.TRIVISOR_BOOT_ID_FILE || KERNEL_BOOT_ID_FILE),
      version,
      startedAt: new Date().toISOString(),
    };
    let fenced = false;
    lease = await startMemberLease({
      store,
      name: membership.name,
      heartbeat: () => ({ ...heartbeat, usage: meter.sample() }),
      log,
      // Back after its lease was lost (its host hung or was cut off, its daemon stopped): a move to
      // here undone meanwhile left its copy for this member to discard (decision 0042, amended: a
      // hung destination), now rather than at the next sweep, up to 5 minutes on.
      onStateChange: (state) => {
        if (state === 'fenced') fenced = true;
        else if (state === 'live' && fenced) {
          fenced = false;
          sweepMoves?.();
        }
      },
    });
  }

  // On a cluster, requests that another member must answer are passed on to it (decision 0034).
  const forward: MemberForwarding | undefined =
    membership && memberClient
      ? {
          here: membership.name,
          others: async () => (await otherMembers()).map((m) => m.name),
          connect: async (member) => {
            const target = await memberTarget(member);
            if (!target) throw notFound(`Member ${member} not found`);
            return memberClient.connect(target);
          },
          statusOf: async (member) => (await clusterMembers()).find((m) => m.name === member)?.status,
        }
      : undefined;
  // Scheduled backups go here (decision 0046), and import reads from it (decision 0070).
  const backupDir = process.env.TRIVISOR_BACKUP_DIR || path.join(stateDir, 'shipped-backups');
  const unixApp = await buildServer(services, {
    auth: { type: 'none' },
    ...(forward && { forward }),
    logger: false,
    uploadDir: stateDir,
    backupDir,
    web: { sessions: webSessions },
  });
  const socketPath = path.join(stateDir, 'trivisor.sock');
  await listenUnix(unixApp, socketPath);
  const apps = [unixApp];
  let url: string | null = null;
  let fingerprint: string | null = null;
  if (listen !== 'none') {
    const token = await ensureToken(stateDir);
    daemonTokenSha256 = createHash('sha256').update(token).digest('hex');
    const [hostPart, portPart] = splitHostPort(listen);
    // TCP is HTTPS only: clients pin this certificate's fingerprint (trivisor remote add).
    const certificate = await ensureServerCertificate(stateDir, { runner, hostName, listenHost: hostPart });
    fingerprint = certificate.fingerprint;
    const tcpApp = await buildServer(services, {
      auth: { type: 'token', token },
      ...(forward && { forward }),
      logger: false,
      uploadDir: stateDir,
      backupDir,
      https: { key: certificate.key, cert: certificate.cert },
      // The web UI is served where browsers can reach it: HTTPS (decision 0026).
      // TRIVISOR_WEB_ROOT: a checkout whose web/ to serve instead of this one's (tests of the bundle).
      web: {
        sessions: webSessions,
        uiRoot: process.env.TRIVISOR_WEB_ROOT || path.resolve(import.meta.dirname, '..'),
      },
    });
    const bound = await listenTcp(tcpApp, hostPart, portPart);
    url = `https://${bound.host.includes(':') ? `[${bound.host}]` : bound.host}:${bound.port}`;
    apps.push(tcpApp);
  }
  if (membership && opened.memberTls && services.auth) {
    // The member API on the cluster address: members prove themselves with the certificate the
    // cluster CA signed for them, which this one presents too (with the CA, for joiners to check).
    const memberApp = await buildMemberApi(
      { ...services, auth: services.auth },
      {
        store,
        tls: opened.memberTls,
        token: await ensureToken(stateDir),
        uploadDir: stateDir,
        ...(forward && { forward }),
      },
    );
    const { host, port } = splitAddress(membership.address);
    await listenTcp(memberApp, host, port);
    apps.push(memberApp);
  }
  // Evacuations and restores of members (decision 0041), carried on from the records: once this
  // member serves, since a move needs the destination's member API and this one's.
  const evacuations =
    services.moves &&
    createEvacuationController({
      store,
      hostName,
      mover: services.moves.mover,
      guests,
      operations,
      members: clusterMembers,
      log,
    });
  // Moves this member's daemon left unfinished when it died are finished or undone first, once
  // this member serves (decision 0079); the evacuation, which moves its guests again, after them.
  void (resumeMoves?.() ?? Promise.resolve(0))
    .catch((e: unknown) =>
      log.error({ err: asTrivisorError(e).message }, 'unfinished moves were not resumed'),
    )
    .finally(() => {
      movesRetrying = retryMoves?.();
      evacuations?.start();
    });
  // The rebalancer (decision 0053): every member publishes its guests' measured load and carries
  // out the moves asked of it; one member at a time plans a cycle, every cluster.rebalance.interval.
  const rebalancer =
    services.moves &&
    createRebalanceController({
      store,
      hostName,
      history: metricsHistory,
      mover: services.moves.mover,
      operations,
      members: clusterMembers,
      events,
      log,
      // Power management (decision 0055): the members' drivers run on whichever member decides.
      driverFor: (member, config) => createPowerDriver(member, config, { runner, log }),
    });
  if (rebalancer) services.rebalance = rebalancer;
  rebalancer?.start();
  // HA (decision 0052): the members as the CRM places on them, and admission control for `cluster list`.
  const haMembers = (members: ClusterMember[]) =>
    members.map((m) => ({
      name: m.name,
      memoryTotalBytes: m.memory?.totalBytes ?? 0,
      cpus: m.cpu?.cpus ?? 0,
      // A powered-off member (Standby, decision 0055) is evacuated: no HA guest goes to it.
      evacuated: m.status === 'Evacuated' || m.status === 'Standby',
    }));
  if (membership) services.haSummary = (members) => haSummary(store, haMembers(members));
  const crm =
    membership &&
    startCrmLoop({
      store,
      stateDir,
      member: membership.name,
      members: () => readHaMembers(store),
      log,
    });
  // Scheduled snapshots and their expiry (decision 0043), for this member's own guests.
  const snapshotScheduler = createSnapshotScheduler({
    store,
    hostName,
    storage: services.storage,
    operations,
    log,
  });
  // Scheduled backups shipped to the host administrator's backup directory (decision 0046).
  const backupScheduler = createBackupScheduler({
    store,
    hostName,
    storage: services.storage,
    operations,
    events,
    directory: backupDir,
    log,
  });
  // One clock for both: a guest's snapshot and its backup of the same minute, one after the other
  // (at once, each would find the guest busy with the other, minute after minute).
  const schedules = everyMinute({
    pass: async (at) => {
      await snapshotScheduler.pass(at);
      await backupScheduler.pass(at);
    },
    now: () => new Date(),
    log,
    what: 'snapshot and backup schedule',
  });
  schedules.start();
  await writeFile(
    path.join(stateDir, 'daemon.json'),
    `${JSON.stringify({ pid: process.pid, socket: socketPath, url, fingerprint, version }, null, 2)}\n`,
  );
  log.info({ stateDir, socket: socketPath, url, fingerprint }, 'trivisor daemon ready');

  process.on('unhandledRejection', (e) => log.error({ err: String(e) }, 'unhandled rejection'));
  await new Promise<void>((resolve) => {
    stopDaemon = () => resolve();
    process.once('SIGTERM', stopDaemon);
    process.once('SIGINT', stopDaemon);
  });
  // Guests keep running: they outlive the daemon and are re-adopted at the next start.
  log.info('shutting down; guests keep running');
  clearInterval(indexChecks);
  movesRetrying?.stop();
  await evacuations?.stop();
  await rebalancer?.stop();
  await crm?.stop();
  haAgent?.stop();
  permitWatch?.close();
  snapshotScheduler.stop();
  backupScheduler.stop();
  await schedules.stop();
  await Promise.allSettled(apps.map((a) => a.close()));
  // Offline at once rather than at the lease's end: this daemon is stopping on purpose.
  await lease?.stop({ revoke: true });
  sampler.stop();
  await memoryReclaim.stop();
  metricsHistory.close();
  audit.close();
  await nicObserver.stop();
  await controller.stop();
  guestStorageController.stop();
  poolController.stop();
  await networkController.stop();
  await store.close();
  // etcd, like the guests, outlives the daemon: the next start adopts it.
  opened.etcdMember?.detach();
  await rm(path.join(stateDir, 'trivisor.pid'), { force: true });
  if (restartRequested) {
    // The same process (pid, namespaces, service manager's view) runs the daemon again, now on
    // the cluster's store: what SIGTERM and a start would do, without anyone to start it.
    log.info('restarting on the cluster store');
    if (!process.execve) throw new Error('This Node.js cannot restart itself: start the daemon again');
    process.execve(
      process.execPath,
      [process.execPath, ...process.execArgv, ...process.argv.slice(1)],
      process.env,
    );
  }
}

/**
 * Creates the default network (`trivisor0`, NAT, a free /24 of 198.18.0.0/15) on
 * the first start only: once deleted it stays deleted. TRIVISOR_DEFAULT_NETWORK
 * names it differently, or `none` skips it (test daemons side by side).
 */
async function ensureDefaultNetwork(
  stateDir: string,
  networks: NetworkService,
  runner: ReturnType<typeof hostRunner>,
): Promise<void> {
  const name = process.env.TRIVISOR_DEFAULT_NETWORK ?? 'trivisor0';
  const marker = path.join(stateDir, 'default-network');
  if (name === 'none' || existsSync(marker)) return;
  const taken = (await networks.list()).map((n) => n.config['ipv4.address'] ?? '');
  if (!(await networks.list()).some((n) => n.name === name)) {
    const address = await pickDefaultSubnet(runner, taken);
    await networks.create({
      name,
      description: 'Default network',
      config: { 'ipv4.address': address, 'ipv4.nat': 'true' },
    });
  }
  await writeFile(marker, `${name}\n`);
}

function splitHostPort(listen: string): [string, number] {
  const i = listen.lastIndexOf(':');
  const port = Number(listen.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`--listen ${listen} is not HOST:PORT`);
  }
  return [listen.slice(0, i).replace(/^\[|\]$/g, ''), port];
}

/**
 * The name this host owns its guests under: taken from the system host name on first
 * start and kept, so that renaming the machine never orphans its guests.
 */
async function hostIdentity(stateDir: string): Promise<string> {
  const file = path.join(stateDir, 'host-name');
  const kept = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (kept) return kept;
  const name = os.hostname();
  await writeFile(file, `${name}\n`);
  return name;
}

/** The bearer token TCP clients need; made once, readable by root only. */
async function ensureToken(stateDir: string): Promise<string> {
  const file = path.join(stateDir, 'token');
  if (existsSync(file)) return (await readFile(file, 'utf8')).trim();
  const token = randomBytes(32).toString('hex');
  await writeFile(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
  await chmod(file, 0o600);
  return token;
}

/** One daemon per state directory: a second one would fight the first over every guest. */
async function takePidLock(stateDir: string): Promise<void> {
  const file = path.join(stateDir, 'trivisor.pid');
  try {
    await writeFile(file, `${process.pid}\n`, { flag: 'wx' });
    return;
  } catch {
    const other = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (other > 0 && other !== process.pid && isAlive(other)) {
      throw new Error(`Another trivisor daemon (pid ${other}) already uses ${stateDir}`);
    }
    await writeFile(file, `${process.pid}\n`);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
