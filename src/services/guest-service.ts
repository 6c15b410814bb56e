import {
  assertTargetName,
  type PlacementCandidate,
  placeGuest,
  withReservations,
} from '../control/placement.ts';
import {
  configValue,
  createOnlyChanges,
  DEFAULT_VM_MEMORY_BYTES,
  type HostCapacity,
  haEnabled,
  PVM_DEFAULT_MEMORY_BYTES,
  validateConfig,
} from '../core/config-keys.ts';
import {
  alreadyExists,
  asTrivisorError,
  conflict,
  failedPrecondition,
  invalidArgument,
  notFound,
  notSupported,
  TrivisorError,
} from '../core/errors.ts';
import { checkAttributes, checkGuestPath, GUEST_FILE_MAX_BYTES } from '../core/guest-files.ts';
import { assertCanDo } from '../core/guest-state.ts';
import { assertDnsLabel } from '../core/names.ts';
import {
  addUsage,
  assertGuestCountable,
  assertWithinLimits,
  DEFAULT_PROJECT,
  guestUsage,
  projectOfRecord,
  subtractUsage,
} from '../core/projects.ts';
import { parseBytes } from '../core/sizes.ts';
import {
  type Guest,
  type GuestNetworkObservation,
  type GuestSpec,
  type GuestStatus,
  type GuestUsage,
  type ImageRecord,
  MODELS,
  type Model,
} from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { GuestNetworking } from '../network/guest-networking.ts';
import type { Compare, KvStore } from '../store/kv.ts';
import { indexedGuestNames, projectGuestIndex } from '../store/project-guests.ts';
import { type BackupFailure, records, valuesOf } from '../store/records.ts';
import { BLANK_IMAGE } from './image-service.ts';
import type { LastUsage } from './last-usage.ts';
import { moveMarkOf, noMoveOf, staleMoveMarkDeleteOp } from './move-marks.ts';
import type { NetworkService } from './network-service.ts';
import { guardedWrite, readGuard } from './project-service.ts';
import type { ConsoleStream, GuestService, ImageService, OperationService } from './types.ts';
import { convergedTo, convergenceError, waitForGuest } from './wait-guest.ts';

export interface GuestServiceDeps {
  store: KvStore;
  drivers: Partial<Record<Model, GuestDriver>>;
  /** Resolves images host-wide: create checks that the image is the project's own or `default`'s. */
  images: Pick<ImageService, 'get'>;
  operations: OperationService;
  hostName: string;
  capacity: HostCapacity;
  /** How long a config change waits for the controller before answering (it still applies later). */
  configWaitMs?: number;
  /** Claims NIC addresses at create; without it guests cannot have NICs. */
  networks?: Pick<NetworkService, 'claimNics'>;
  /** Per-NIC state for `info`. */
  nics?: GuestNetworking;
  /**
   * The members a new guest may be placed on, as measured (a cluster member's daemon); a single
   * host places every guest on itself.
   */
  placement?: { candidates(): Promise<PlacementCandidate[]> };
  /**
   * The metric sampler's last usage of each running guest: the list with usage answers from it,
   * reading live only a guest it has not sampled in its current run (decision 0099).
   */
  lastUsage?: Pick<LastUsage, 'of'>;
}

const DEFAULT_STOP_TIMEOUT_MS = 30_000;

/** The space a guest's disk may take on its member's pool: limits.disk, or nothing asked. */
function placementDisk(config: Record<string, string>): number {
  const raw = config['limits.disk'];
  return raw === undefined ? 0 : parseBytes(raw, 'limits.disk');
}

/** The memory a guest holds on its member: its limit, or its model's default (ct: none). */
function placementMemory(model: Model, config: Record<string, string>): number {
  return (
    configValue.memoryBytes(config) ??
    (model === 'vm' ? DEFAULT_VM_MEMORY_BYTES : model === 'pvm' ? PVM_DEFAULT_MEMORY_BYTES : 0)
  );
}
/** `--timeout -1`: wait for the guest as long as it takes (a day, in practice). */
const FOREVER_MS = 24 * 3600_000;

interface Loaded {
  spec: GuestSpec;
  status: GuestStatus | undefined;
  modRevision: number;
  /** What the NIC observer last saw, when it is about the guest's current run. */
  network: GuestNetworkObservation | undefined;
  /** The guest's last scheduled backup, when it failed (decision 0062). */
  backupFailure: BackupFailure | undefined;
}

/** An observation counts only for the run it was made in, and only while the guest runs. */
function currentObservation(
  status: GuestStatus | undefined,
  observation: GuestNetworkObservation | undefined,
): GuestNetworkObservation | undefined {
  const running = status?.status === 'Running' || status?.status === 'Frozen';
  const p = status?.process;
  if (!running || !p || !observation) return undefined;
  return observation.process.pid === p.pid && observation.process.startTime === p.startTime
    ? observation
    : undefined;
}

export function createGuestService(deps: GuestServiceDeps): GuestService {
  const { store, drivers, operations } = deps;

  /**
   * `ha.enabled=true` (decision 0049) only where another member can start the guest: on a
   * cluster, with its disk on a shared pool and every custom volume it has on one too.
   * InvalidArgument in one line otherwise.
   */
  async function assertHaPossible(spec: GuestSpec): Promise<void> {
    if (!haEnabled(spec)) return;
    if (!deps.placement) {
      throw invalidArgument(
        `ha.enabled=true needs a cluster: ${deps.hostName} is a single host, with no member to restart guest ${spec.name} on`,
      );
    }
    const placed = (await records.guestPool.at(spec.name).get(store))?.value;
    const pool = placed && (await records.pool.at(placed.pool).get(store))?.value;
    if (!pool?.shared) {
      const name = placed?.pool ?? 'default';
      const whose =
        pool?.location !== undefined && pool.location !== ''
          ? `member ${pool.location}'s own`
          : "each member's own (not shared)";
      throw invalidArgument(
        `ha.enabled=true needs the guest's disk on a shared storage pool: ${spec.name} is on pool ${name}, which is ${name === 'default' ? `${spec.location ?? deps.hostName}'s own` : whose}`,
      );
    }
    for (const [device, disk] of Object.entries(spec.disks ?? {})) {
      const volumePool = (await records.pool.at(disk.pool).get(store))?.value;
      if (!volumePool?.shared) {
        throw invalidArgument(
          `ha.enabled=true needs every volume of guest ${spec.name} on a shared storage pool: ${disk.source} (${device}) is on pool ${disk.pool}, which is not shared`,
        );
      }
    }
  }

  const driverFor = (model: Model): GuestDriver => {
    const d = drivers[model];
    if (!d)
      throw notSupported(
        `The ${model} model is not available on this host; available: ${Object.keys(drivers).join(', ')}`,
      );
    return d;
  };

  /**
   * Where a new guest goes (decision 0033): on a single host, here (`--target` may name only
   * this host); on a cluster, the member the scheduler picks from the members' measurements, or
   * the one `--target` names if it can take the guest.
   */
  async function placementOf(
    model: Model,
    config: Record<string, string>,
    target: string | undefined,
  ): Promise<{ member: string; reason?: string }> {
    if (target !== undefined) assertTargetName(target);
    if (!deps.placement) {
      if (target !== undefined && target !== deps.hostName) {
        throw notFound(`Member ${target} not found: this host (${deps.hostName}) is not in a cluster`);
      }
      return { member: deps.hostName };
    }
    const [candidates, specs, statuses] = await Promise.all([
      deps.placement.candidates(),
      records.guest.list(store),
      records.guestStatus.list(store),
    ]);
    const statusOf = new Map(statuses.items.map((s) => [records.guestStatus.nameOf(s.key), s.value]));
    const placed = valuesOf(specs).map((spec) => {
      const st = statusOf.get(spec.name);
      return {
        location: spec.location,
        memoryBytes: placementMemory(spec.model, spec.config),
        cpus: Math.ceil(configValue.cpus(spec.config) ?? 1),
        diskBytes: placementDisk(spec.config),
        createdAt: spec.createdAt,
        ...(st?.startedAt !== undefined && { startedAt: st.startedAt }),
        running: st?.status === 'Running' || st?.status === 'Frozen',
      };
    });
    return placeGuest(withReservations(candidates, placed), {
      model,
      memoryBytes: placementMemory(model, config),
      cpus: Math.ceil(configValue.cpus(config) ?? 1),
      diskBytes: placementDisk(config),
      ...(target !== undefined && { target }),
    });
  }

  async function loadAny(name: string): Promise<Loaded> {
    assertDnsLabel(name, 'guest name');
    const [s, st, net, failed] = await Promise.all([
      records.guest.at(name).get(store),
      records.guestStatus.at(name).get(store),
      records.guestNetwork.at(name).get(store),
      records.backupFailure.at(name).get(store),
    ]);
    if (!s) throw notFound(`Guest ${name} not found`);
    return {
      spec: s.value,
      status: st?.value,
      modRevision: s.modRevision,
      network: currentObservation(st?.value, net?.value),
      backupFailure: failed?.value,
    };
  }

  /** Writes a new spec if nobody else changed it since `loaded` was read. */
  /** Writes `next` over the spec as loaded (and as `also` holds); Conflict in one line when either changed. */
  async function writeSpec(loaded: Loaded, next: GuestSpec, also: Compare[] = []): Promise<void> {
    const ref = records.guest.at(next.name);
    const r = await store.txn({
      compare: [ref.unchanged(loaded.modRevision), ...also],
      success: [ref.putOp(next)],
    });
    if (!r.succeeded) throw conflict(`Guest ${next.name} was changed at the same time; retry`);
  }

  const statusName = (l: Loaded) => l.status?.status ?? 'Stopped';

  /** Files are copied through the running guest (its agent, or its init's root for ct). */
  function assertFilesReachable(l: Loaded): void {
    const status = statusName(l);
    if (status !== 'Running' && status !== 'Frozen') {
      throw failedPrecondition(
        `Guest ${l.spec.name} is ${status.toLowerCase()}: start it first (files are copied through the running guest)`,
      );
    }
  }

  /** A guest whose last change is still being carried out takes no new one. */
  function assertIdle(l: Loaded): void {
    if (l.spec.deleting) throw conflict(`Guest ${l.spec.name} is being deleted`);
    if (!l.status || l.status.observedGeneration < l.spec.generation) {
      throw conflict(`Guest ${l.spec.name} is busy with another change; wait for its operation to finish`);
    }
  }

  /** Puts the spec's desired state back after a failed change, unless it changed again meanwhile. */
  async function revertDesired(name: string, gen: number, desired: GuestSpec['desired']): Promise<void> {
    const l = await loadAny(name).catch(() => undefined);
    if (!l || l.spec.generation !== gen) return;
    await writeSpec(l, { ...l.spec, desired, generation: gen + 1 }).catch(() => {});
  }

  async function usageOf(spec: GuestSpec, status: GuestStatus | undefined): Promise<GuestUsage | null> {
    if (status?.status !== 'Running' && status?.status !== 'Frozen') return null;
    const usage = await drivers[spec.model]?.usage(spec).catch(() => null);
    return usage ? { ...usage, sampledAt: new Date().toISOString() } : null;
  }

  /** The sampler's last figure of the guest's current run, else a live read (decision 0099). */
  function sampledUsageOf(
    spec: GuestSpec,
    status: GuestStatus | undefined,
    nowMs: number,
  ): GuestUsage | null | Promise<GuestUsage | null> {
    if (status?.status !== 'Running' && status?.status !== 'Frozen') return null;
    const run = { pid: status.process?.pid ?? null, startedAt: status.startedAt ?? null };
    return deps.lastUsage?.of(spec.name, run, nowMs) ?? usageOf(spec, status);
  }

  async function nicsOf(
    spec: GuestSpec,
    status: GuestStatus | undefined,
    options: { withCounters: boolean; network: GuestNetworkObservation | undefined },
  ) {
    if (!deps.nics?.hasNics(spec)) return undefined;
    const running = status?.status === 'Running' || status?.status === 'Frozen';
    const { withCounters, network } = options;
    const state = await deps.nics
      .state(spec, { running, ...(network && { observed: network.nics }) })
      .catch(() => undefined);
    if (state && !withCounters) for (const n of Object.values(state)) n.counters = null;
    return state;
  }

  function toGuest(
    spec: GuestSpec,
    status: GuestStatus | undefined,
    usage: GuestUsage | null,
    options: {
      nics?: Guest['state']['nics'];
      network: GuestNetworkObservation | undefined;
      backupFailure: BackupFailure | undefined;
    },
  ): Guest {
    const { nics, network, backupFailure } = options;
    const startedAt = status?.startedAt ?? null;
    const guest: Guest = {
      name: spec.name,
      project: spec.project,
      model: spec.model,
      status: status?.status ?? 'Stopped',
      image: spec.image,
      imageAlias: spec.imageAlias,
      config: spec.config,
      host: spec.location,
      location: spec.location,
      ...(spec.placement !== undefined && { placement: spec.placement }),
      createdAt: spec.createdAt,
      state: {
        pid: status?.process?.pid ?? null,
        startedAt,
        uptimeSeconds: startedAt
          ? Math.max(0, Math.round((Date.now() - Date.parse(startedAt)) / 1000))
          : null,
        usage,
        restartCount: status?.restartCount ?? 0,
      },
    };
    if (spec.devices) {
      guest.devices = spec.devices;
      // What the guest holds, as last observed (decision 15); never the reservation itself.
      const seen = Object.keys(spec.devices).flatMap((nic) => {
        const n = network?.nics[nic];
        return n ? [n] : [];
      });
      guest.state.addresses = seen.flatMap((n) => n.addresses);
      const warnings = seen.flatMap((n) => (n.warning !== undefined ? [n.warning] : []));
      if (warnings.length > 0) guest.state.warnings = warnings;
    }
    if (backupFailure) {
      // Until the next scheduled backup succeeds (decision 0062).
      const warning = `The scheduled backup of ${backupFailure.at} failed on ${backupFailure.member}: ${backupFailure.error}`;
      guest.state.warnings = [...(guest.state.warnings ?? []), warning];
    }
    if (spec.disks && Object.keys(spec.disks).length > 0) guest.disks = spec.disks;
    if (nics) guest.state.nics = nics;
    if (status?.error) guest.error = status.error;
    return guest;
  }

  /** What another project's object gets: the same answer as a name nobody has. */
  const nameTaken = (name: string, other: GuestSpec | undefined, project: string) =>
    other && projectOfRecord(other) !== project
      ? alreadyExists(
          `The name ${name} is taken by a guest of another project: guest names are unique on this host, pick another`,
        )
      : alreadyExists(`Guest ${name} already exists`);

  async function existing(name: string): Promise<GuestSpec | undefined> {
    return (await records.guest.at(name).get(store))?.value;
  }

  /** The image record of a guest (the blank record for one made without an image), when it is on this host. */
  async function imageOf(spec: GuestSpec): Promise<ImageRecord | undefined> {
    if (spec.image === '') return BLANK_IMAGE.record;
    return deps.images.get(spec.image).catch(() => undefined);
  }

  /** The driver of a running guest that has a screen (a vm guest's display), or why not. */
  async function displayDriver(l: Loaded, what: string): Promise<GuestDriver> {
    const driver = driverFor(l.spec.model);
    if (!driver.attachDisplay || !driver.screenshot || !driver.sendKeys) {
      throw notSupported(
        `Guest ${l.spec.name} is a ${l.spec.model} guest, which has no screen: only vm guests do`,
      );
    }
    const status = statusName(l);
    if (status !== 'Running' && status !== 'Frozen') {
      throw failedPrecondition(`Guest ${l.spec.name} is ${status}: start it to ${what}`);
    }
    return driver;
  }

  /** The service as one project sees it; `scope` undefined is the host's view (internal callers). */
  function scoped(scope: string | undefined): GuestService {
    /** A guest of another project is NotFound, word for word as one that does not exist. */
    async function load(name: string): Promise<Loaded> {
      const l = await loadAny(name);
      if (scope !== undefined && projectOfRecord(l.spec) !== scope) throw notFound(`Guest ${name} not found`);
      return l;
    }

    /** Whether `list` (and `names`) show a guest: the view's project, else every one; the member asked. */
    const listed = (spec: GuestSpec, options: { allProjects?: boolean; target?: string }) =>
      (scope === undefined || options.allProjects === true || projectOfRecord(spec) === scope) &&
      (options.target === undefined || spec.location === options.target);

    return {
      inProject: (project) => scoped(project),

      async names(options = {}) {
        // The project index (decision 0087) answers without decoding a guest record; a member
        // (`target`) is only in the spec, and an index that cannot answer exactly is not used.
        const everyProject = scope === undefined || options.allProjects === true;
        const indexed =
          options.target === undefined
            ? await indexedGuestNames(store, everyProject ? undefined : scope)
            : undefined;
        if (indexed) return indexed;
        return valuesOf(await records.guest.list(store))
          .filter((spec) => listed(spec, options))
          .map((spec) => spec.name);
      },

      async list(options = {}) {
        const [specs, statuses, networks, failures] = await Promise.all([
          records.guest.list(store),
          records.guestStatus.list(store),
          records.guestNetwork.list(store),
          records.backupFailure.list(store),
        ]);
        const failureOf = new Map(failures.items.map((f) => [records.backupFailure.nameOf(f.key), f.value]));
        const byName = new Map<string, GuestStatus>();
        for (const st of statuses.items) byName.set(records.guestStatus.nameOf(st.key), st.value);
        const observed = new Map<string, GuestNetworkObservation>();
        for (const n of networks.items) observed.set(records.guestNetwork.nameOf(n.key), n.value);
        const specList = valuesOf(specs).filter((spec) => listed(spec, options));
        // Live usage is read where the guest runs: another member's guests have none here (the
        // API asks their members for it, decision 0034).
        const here = (spec: GuestSpec) => spec.location === deps.hostName;
        const networkOf = (spec: GuestSpec) =>
          currentObservation(byName.get(spec.name), observed.get(spec.name));
        // From the sampler's last sample; the live reads left (guests it has not sampled yet) can
        // be slow per guest (a QMP round trip for vm): side by side.
        const nowMs = Date.now();
        const usages = options.withUsage
          ? await Promise.all(
              specList.map((spec) =>
                here(spec) ? sampledUsageOf(spec, byName.get(spec.name), nowMs) : null,
              ),
            )
          : [];
        const nics = options.withUsage
          ? await Promise.all(
              specList.map((spec) =>
                here(spec)
                  ? nicsOf(spec, byName.get(spec.name), { withCounters: true, network: networkOf(spec) })
                  : undefined,
              ),
            )
          : [];
        return specList.map((spec, i) =>
          toGuest(spec, byName.get(spec.name), usages[i] ?? null, {
            nics: nics[i],
            network: networkOf(spec),
            backupFailure: failureOf.get(spec.name),
          }),
        );
      },

      async withUsage(guests) {
        return Promise.all(
          guests.map(async ({ spec, status }) => {
            const [usage, nics] = await Promise.all([
              usageOf(spec, status),
              nicsOf(spec, status, { withCounters: true, network: undefined }),
            ]);
            return toGuest(spec, status, usage, { nics, network: undefined, backupFailure: undefined });
          }),
        );
      },

      async get(name, options = { withUsage: true }) {
        const l = await load(name);
        return toGuest(l.spec, l.status, options.withUsage ? await usageOf(l.spec, l.status) : null, {
          nics: await nicsOf(l.spec, l.status, {
            withCounters: options.withUsage === true,
            network: l.network,
          }),
          backupFailure: l.backupFailure,
          network: l.network,
        });
      },

      async placementFor(request) {
        const model = request.model ?? 'ct';
        const config = validateConfig({ ...(request.config ?? {}) }, deps.capacity, model);
        return placementOf(model, config, request.target);
      },

      async create(request, options = {}) {
        assertDnsLabel(request.name, 'guest name');
        const model = request.model ?? 'ct';
        if (!MODELS.includes(model))
          throw notSupported(`Unknown model ${JSON.stringify(model)}: use ct, pvm or vm`);
        const driver = driverFor(model);
        const project = scope ?? request.project ?? DEFAULT_PROJECT;
        // '' asks for no image: a vm guest with a blank disk, installed from an ISO (`create --empty`).
        if (request.image === '' && model !== 'vm') {
          throw invalidArgument(
            `A ${model} guest needs an image with a root file system; only vm guests start from a blank disk (--empty)`,
          );
        }
        // The image and the placement are read side by side (each a round trip or two on etcd);
        // their errors still come in this order: the image's, the config's, the placement's.
        const imageLookup =
          request.image === '' ? Promise.resolve(BLANK_IMAGE.record) : deps.images.get(request.image);
        imageLookup.catch(() => {});
        // So is the project the quota is checked against (guardedWrite below starts from it).
        const projectRead = readGuard(store, project);
        projectRead.catch(() => {});
        let config: Record<string, string>;
        try {
          config = validateConfig({ ...(request.config ?? {}) }, deps.capacity, model);
        } catch (e) {
          await imageLookup;
          throw e;
        }
        const placing = placementOf(model, config, request.target);
        placing.catch(() => {});
        const image = await imageLookup;
        // A project launches from its own images and from default's, the host's shared catalogue (decision 21).
        const imageProject = projectOfRecord(image);
        if (request.image !== '' && imageProject !== project && imageProject !== DEFAULT_PROJECT) {
          throw notFound(`Image ${request.image} not found; see trivisor image list`);
        }
        if (image.type === 'disk' && model !== 'vm') {
          throw invalidArgument(
            `Image ${request.image} is a whole-disk image with its own boot loader and kernel, which only vm guests boot (through their firmware): use --model vm`,
          );
        }
        const where = await placing;
        const spec: GuestSpec = {
          name: request.name,
          project,
          model,
          image: image.fingerprint,
          imageAlias: request.image,
          config,
          desired: request.start ? 'Running' : 'Stopped',
          generation: 1,
          restartRequest: 0,
          stopTimeoutMs: DEFAULT_STOP_TIMEOUT_MS,
          stopForce: false,
          deleting: false,
          location: where.member,
          ...(where.reason !== undefined && { placement: where.reason }),
          createdAt: new Date().toISOString(),
        };
        let claims: Awaited<ReturnType<NetworkService['claimNics']>> | undefined;
        if (request.devices && Object.keys(request.devices).length > 0) {
          if (!deps.networks)
            throw notSupported('Networking is not set up on this host: create the guest without NICs');
          const other = await existing(spec.name);
          if (other) throw nameTaken(spec.name, other, project);
          claims = await deps.networks.claimNics(spec.name, request.devices, { project });
          spec.devices = claims.devices;
        }
        driver.validate(spec, image);
        await assertHaPossible(spec);
        // The quota is decided on the project as read and the guest lands only if nothing was
        // written in the project meanwhile (guardedWrite reads again and decides again then).
        const r = await guardedWrite(
          store,
          project,
          async (p) => {
            assertGuestCountable(project, p.spec.config, config);
            assertWithinLimits(project, p.spec.config, {
              before: p.usage,
              after: addUsage(p.usage, guestUsage(config)),
            });
            return {
              compare: [records.guest.at(spec.name).absent(), ...(claims?.compare ?? [])],
              // A stale status of an earlier guest of this name must not make the new one look provisioned.
              success: [
                records.guest.at(spec.name).putOp(spec),
                // Its project's index (decision 0087): where project show, delete and the guard find it.
                projectGuestIndex.putOp(spec),
                records.guestLocation.at(spec.name).putOp(spec.location),
                records.guestStatus.at(spec.name).deleteOp(),
                records.guestNetwork.at(spec.name).deleteOp(),
                records.backupFailure.at(spec.name).deleteOp(),
                // A move of an earlier guest of this name left unfinished by a member that never came back.
                staleMoveMarkDeleteOp(spec.name),
                ...(claims?.success ?? []),
                // A copy's or an import's marker, in this transaction (never on a guest it did not
                // make); any other create drops a marker an earlier guest of the name left behind.
                options.pending
                  ? records.storagePending.at(spec.name).putOp(options.pending)
                  : records.storagePending.at(spec.name).deleteOp(),
              ],
            };
          },
          { firstRead: projectRead },
        );
        if (!r.succeeded) {
          const other = await existing(spec.name);
          if (claims && !other) {
            throw conflict(`An address of guest ${spec.name}'s NICs was taken at the same time; retry`);
          }
          throw nameTaken(spec.name, other, project);
        }
        return operations.start({
          project,
          description: request.start ? `Launching guest ${spec.name}` : `Creating guest ${spec.name}`,
          resources: { guests: [`/1.0/guests/${spec.name}`] },
          async run(ctx) {
            try {
              await waitForGuest(store, spec.name, convergedTo(1), ctx.signal);
            } catch (e) {
              // A create that fails half way leaves nothing behind.
              const l = await loadAny(spec.name).catch(() => undefined);
              if (l && !l.spec.deleting) {
                await writeSpec(l, {
                  ...l.spec,
                  deleting: true,
                  stopForce: true,
                  generation: l.spec.generation + 1,
                }).catch(() => {});
              }
              await waitForGuest(store, spec.name, (s) => (s ? undefined : true)).catch(() => {});
              throw e;
            }
            return undefined;
          },
        });
      },

      async changeState(name, request) {
        const l = await load(name);
        assertIdle(l);
        assertCanDo(request.action, name, statusName(l));
        const stopTimeoutMs =
          request.timeout === undefined
            ? DEFAULT_STOP_TIMEOUT_MS
            : request.timeout < 0
              ? FOREVER_MS
              : Math.round(request.timeout * 1000);
        const gen = l.spec.generation + 1;
        const next: GuestSpec = {
          ...l.spec,
          generation: gen,
          stopTimeoutMs,
          stopForce: request.force === true,
        };
        switch (request.action) {
          case 'start':
          case 'unfreeze':
            next.desired = 'Running';
            break;
          case 'stop':
            next.desired = 'Stopped';
            break;
          case 'freeze':
            next.desired = 'Frozen';
            break;
          case 'restart':
            next.desired = 'Running';
            next.restartRequest = l.spec.restartRequest + 1;
            break;
        }
        await writeSpec(l, next);
        const verb = {
          start: 'Starting',
          stop: 'Stopping',
          restart: 'Restarting',
          freeze: 'Freezing',
          unfreeze: 'Unfreezing',
        };
        return operations.start({
          project: projectOfRecord(l.spec),
          description: `${verb[request.action]} guest ${name}`,
          resources: { guests: [`/1.0/guests/${name}`] },
          async run(ctx) {
            try {
              await waitForGuest(store, name, convergedTo(gen), ctx.signal);
            } catch (e) {
              await revertDesired(name, gen, l.spec.desired);
              throw e;
            }
            return undefined;
          },
        });
      },

      async delete(name, options = {}) {
        const l = await load(name);
        if (l.spec.deleting) throw conflict(`Guest ${name} is already being deleted`);
        const status = statusName(l);
        if (!options.force) assertCanDo('delete', name, status);
        await writeSpec(l, {
          ...l.spec,
          deleting: true,
          stopForce: options.force === true,
          generation: l.spec.generation + 1,
        });
        return operations.start({
          project: projectOfRecord(l.spec),
          description: `Deleting guest ${name}`,
          resources: { guests: [`/1.0/guests/${name}`] },
          async run(ctx) {
            await waitForGuest(
              store,
              name,
              (spec, st) => {
                if (!spec) return true;
                if (st?.error && st.failedGeneration === spec.generation) {
                  return convergenceError({ error: st.error, errorCode: st.errorCode });
                }
                return undefined;
              },
              ctx.signal,
            );
            return undefined;
          },
        });
      },

      async updateConfig(name, change) {
        const l = await load(name);
        assertIdle(l);
        const config = { ...l.spec.config, ...(change.set ?? {}) };
        for (const key of change.unset ?? []) {
          if (!(key in config))
            throw notFound(`Guest ${name} has no configuration key ${JSON.stringify(key)}`);
          delete config[key];
        }
        validateConfig(config, deps.capacity, l.spec.model);
        const frozenKeys = createOnlyChanges(l.spec.config, config);
        if (frozenKeys.length > 0) {
          throw invalidArgument(
            `${frozenKeys.join(', ')} can only be set when a guest is created: copy or re-create guest ${name} instead`,
          );
        }
        const next: GuestSpec = { ...l.spec, config, generation: l.spec.generation + 1 };
        driverFor(next.model).validate(next, await imageOf(next));
        await assertHaPossible(next);
        // Made HA while a move of it runs, its HA record would be made without the move's mark
        // (decision 0075): refused, and the write below compares that no move began meanwhile.
        const notMoving = !haEnabled(l.spec) && haEnabled(next) ? [noMoveOf(name)] : [];
        const refuseMoving = async () => {
          const mark = await moveMarkOf(store, name);
          if (mark) throw conflict(`Guest ${name} is moving to ${mark.to}; make it HA after the move`);
        };
        if (notMoving.length > 0) await refuseMoving();
        const counted = ['limits.memory', 'limits.cpu', 'limits.disk'];
        if (counted.some((key) => l.spec.config[key] !== config[key])) {
          // A change of what the project counts is a guarded write, like a create.
          const project = projectOfRecord(l.spec);
          const r = await guardedWrite(store, project, async (p) => {
            assertGuestCountable(project, p.spec.config, config);
            assertWithinLimits(project, p.spec.config, {
              before: p.usage,
              after: addUsage(subtractUsage(p.usage, guestUsage(l.spec.config)), guestUsage(config)),
            });
            return {
              compare: [records.guest.at(name).unchanged(l.modRevision), ...notMoving],
              success: [records.guest.at(name).putOp(next)],
            };
          });
          if (!r.succeeded) {
            await refuseMoving();
            throw conflict(`Guest ${name} was changed at the same time; retry`);
          }
        } else {
          await writeSpec(l, next, notMoving).catch(async (e: unknown) => {
            if (notMoving.length > 0) await refuseMoving();
            throw e;
          });
        }
        const timeout = AbortSignal.timeout(deps.configWaitMs ?? 60_000);
        try {
          await waitForGuest(store, name, convergedTo(next.generation), timeout);
        } catch (e) {
          // The guest refused the change (e.g. a memory limit below what it uses): put the old config back.
          const now = await loadAny(name).catch(() => undefined);
          if (now && now.spec.generation === next.generation) {
            await writeSpec(now, {
              ...now.spec,
              config: l.spec.config,
              generation: next.generation + 1,
            }).catch(() => {});
          }
          // The controller's code when it gave one (a refusal by the driver); FailedPrecondition otherwise.
          const err = asTrivisorError(e);
          throw new TrivisorError(
            err.code === 'Internal' ? 'FailedPrecondition' : err.code,
            `Cannot apply the configuration to guest ${name}: ${err.message}`,
          );
        }
        const after = await load(name);
        return {
          guest: toGuest(after.spec, after.status, await usageOf(after.spec, after.status), {
            network: after.network,
            backupFailure: after.backupFailure,
          }),
          pendingRestart: after.status?.pendingRestart ?? [],
        };
      },

      async exec(name, request) {
        const l = await load(name);
        assertCanDo('exec', name, statusName(l));
        if (request.command.length === 0 || request.command[0] === '') {
          throw invalidArgument('No command given: pass the command to run after --');
        }
        const options: Parameters<GuestDriver['exec']>[1] = {
          command: request.command,
          env: { ...configValue.environment(l.spec.config), ...(request.environment ?? {}) },
          tty: request.interactive === true,
        };
        if (request.cwd !== undefined) options.cwd = request.cwd;
        if (request.width !== undefined) options.columns = request.width;
        if (request.height !== undefined) options.rows = request.height;
        if (request.user !== undefined) options.user = request.user;
        if (request.group !== undefined) options.group = request.group;
        return driverFor(l.spec.model).exec(l.spec, options);
      },

      async attachConsole(name) {
        const l = await load(name);
        const status = statusName(l);
        if (status !== 'Running' && status !== 'Frozen') {
          throw failedPrecondition(`Guest ${name} is ${status}: start it to attach to its console`);
        }
        return driverFor(l.spec.model).attachConsole(l.spec);
      },

      async attachDisplay(name) {
        const l = await load(name);
        const driver = await displayDriver(l, 'attach to its display');
        return driver.attachDisplay?.(l.spec) as Promise<ConsoleStream>;
      },

      async screenshot(name) {
        const l = await load(name);
        return (await displayDriver(l, 'take a screenshot')).screenshot?.(l.spec) as Promise<Buffer>;
      },

      async sendKeys(name, keys) {
        const l = await load(name);
        if ((keys.combos ?? []).length === 0 && (keys.text ?? '') === '') {
          throw invalidArgument('No keys to send: give a key combination (ctrl-alt-del) or text to type');
        }
        await (await displayDriver(l, 'send it keys')).sendKeys?.(l.spec, keys);
      },

      async consoleLogPath(name) {
        const l = await load(name);
        return driverFor(l.spec.model).consoleLogPath(l.spec);
      },

      async pushFile(name, request) {
        checkGuestPath(request.path);
        const attributes = { mode: request.mode ?? 0o644, uid: request.uid ?? 0, gid: request.gid ?? 0 };
        checkAttributes(attributes);
        if (request.data.length > GUEST_FILE_MAX_BYTES) {
          throw invalidArgument(
            `The file is ${request.data.length} bytes, more than the ${GUEST_FILE_MAX_BYTES / 2 ** 20} MiB a push may have`,
          );
        }
        const l = await load(name);
        assertFilesReachable(l);
        await driverFor(l.spec.model).pushFile(l.spec, {
          path: request.path,
          data: request.data,
          ...attributes,
          ...(request.createDirs ? { createDirs: true } : {}),
        });
        return { size: request.data.length };
      },

      async pullFile(name, path) {
        checkGuestPath(path);
        const l = await load(name);
        assertFilesReachable(l);
        return driverFor(l.spec.model).pullFile(l.spec, path);
      },
    };
  }

  return scoped(undefined);
}
