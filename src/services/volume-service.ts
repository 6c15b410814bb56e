import { rm, stat } from 'node:fs/promises';
import { poolPathOf } from '../control/guest-storage-controller.ts';
import { haEnabled } from '../core/config-keys.ts';
import {
  alreadyExists,
  conflict,
  failedPrecondition,
  invalidArgument,
  notFound,
  unavailable,
} from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import {
  addUsage,
  assertWithinLimits,
  DEFAULT_PROJECT,
  NO_USAGE,
  projectOfRecord,
} from '../core/projects.ts';
import { formatBytes } from '../core/sizes.ts';
import type { DiskDevice, GuestSpec, Model } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { AttachedVolume, GuestVolumes, LiveResult, VolumeResolver } from '../drivers/guest-volumes.ts';
import { isMountPoint } from '../host/mounts.ts';
import type { PoolDriver, PoolDriverName, PoolRecord } from '../storage/storage-pools.ts';
import {
  assertVolumeName,
  checkGrow,
  checkMountPath,
  checkVolumeConfig,
  DEFAULT_VOLUME_BYTES,
  isIsoImage,
  modelsFor,
  parseVolumeType,
  type VolumeBackend,
  type VolumeRecord,
  volumePath,
} from '../storage/volumes.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import { type ClaimHolder, type Claims, createClaims, describeHolder } from './claims.ts';
import { guardedWrite, readGuard } from './project-service.ts';
import type { EventBus, ImageService } from './types.ts';

/** A volume record with its project (volumes.ts's record predates projects). */
type OwnedVolume = VolumeRecord & { project: string };

/** A volume as the API shows it: its record, where it is, who uses it and its space. */
export interface StorageVolume extends VolumeRecord {
  project: string;
  /** Incus's volume type: always `custom`; `contentType` is filesystem or block. */
  kind: 'custom';
  path: string;
  /** `/1.0/guests/NAME` of every guest it is attached to. */
  usedBy: string[];
  attachments: VolumeAttachment[];
  /** Bytes it takes on its pool (sparse raw disks: only what was written). */
  usedBytes: number | null;
}

/** One guest a volume is attached to, as which device. */
export interface VolumeAttachment {
  guest: string;
  device: string;
  path?: string;
}

/** Body of `POST /1.0/storage-pools/{pool}/volumes/custom`. */
export interface CreateVolumeRequest {
  name: string;
  /** `filesystem` (default, for ct) or `block` (for vm and pvm). */
  type?: string;
  description?: string;
  /** `size` (default 10GiB). */
  config?: Record<string, string>;
}

/** An uploaded ISO file to keep as an iso volume (`POST …/volumes/custom` with the file as the body). */
export interface ImportIsoRequest {
  name: string;
  /** The uploaded file (the daemon's own temp file): moved into the pool, or removed on failure. */
  file: string;
  description?: string;
}

/** Body of `POST …/volumes/custom/{vol}/attach`. */
export interface AttachVolumeRequest {
  guest: string;
  /** Device name in the guest (default: the volume's name). */
  device?: string;
  /** Mount path in a ct guest (filesystem volumes; required there). */
  path?: string;
}

/** What an attach, detach or resize did. */
export interface VolumeChange {
  volume: StorageVolume;
  guest?: string;
  device?: string;
  /** `live`: the running guest has it now; `next-start`: it applies when the guest starts next; `none`: nothing runs. */
  applied: LiveResult | 'none';
  /** One line for people, e.g. "Attached data to web1 at /mnt/data (live)". */
  message: string;
}

/** Custom storage volumes (`trivisor storage volume`), as in Incus's /1.0/storage-pools/{pool}/volumes/custom. */
export interface VolumeService {
  /** One project's view (another project's volume is NotFound); the service itself is the host's view. */
  inProject(project: string): VolumeService;
  list(pool: string, options?: { allProjects?: boolean }): Promise<StorageVolume[]>;
  get(pool: string, name: string): Promise<StorageVolume>;
  create(pool: string, request: CreateVolumeRequest): Promise<StorageVolume>;
  /** Keeps an uploaded ISO image as an iso volume (a vm guest's CD-ROM); the file is always consumed. */
  importIso(pool: string, request: ImportIsoRequest): Promise<StorageVolume>;
  /** Grows a volume (`config.size`); shrinking is refused. */
  update(pool: string, name: string, change: { config?: Record<string, string> }): Promise<VolumeChange>;
  /** Refused while the volume is attached. */
  delete(pool: string, name: string): Promise<void>;
  attach(pool: string, name: string, request: AttachVolumeRequest): Promise<VolumeChange>;
  detach(pool: string, name: string, request: { guest: string; device?: string }): Promise<VolumeChange>;
  /** Why a pool cannot be deleted (it holds volumes), or undefined. */
  poolInUse(pool: string): Promise<string | undefined>;
}

/** Most volumes one guest can have: a vm's hot-plug ports, UML's ubd slots after root and config. */
export const MAX_VOLUMES: Record<Model, number> = { vm: 4, pvm: 14, ct: 64 };
/** Most ISOs a vm guest can have attached: its CD-ROM drives (qemu-command.ts CDROM_DRIVES). */
export const MAX_ISOS = 2;

// Where a pool's files are (the default dir pool is the state directory itself).
export { poolPathOf };

/** Resolves guests' `disks` to host paths from the store (what drivers get as `ctx.volumes`). */
export function createVolumeResolver(deps: {
  store: KvStore;
  drivers: Record<PoolDriverName, PoolDriver>;
  stateDir: string;
}): VolumeResolver {
  return {
    async resolve(spec) {
      const out: AttachedVolume[] = [];
      for (const [device, disk] of Object.entries(spec.disks ?? {}).sort(([a], [b]) => a.localeCompare(b))) {
        const poolFound = await records.pool.at(disk.pool).get(deps.store);
        const volFound = await records.volume.at(disk.pool, disk.source).get(deps.store);
        if (!poolFound || !volFound) continue;
        const pool = poolFound.value;
        const vol = volFound.value;
        out.push({
          device,
          pool: pool.name,
          volume: vol.name,
          type: vol.type,
          hostPath: volumePath(poolPathOf(pool, deps.drivers, deps.stateDir), vol),
          ...(disk.path !== undefined && { path: disk.path }),
          sizeBytes: vol.sizeBytes,
        });
      }
      return out;
    },
  };
}

export function createVolumeService(deps: {
  store: KvStore;
  pools: Record<PoolDriverName, PoolDriver>;
  backend: VolumeBackend;
  stateDir: string;
  drivers: Partial<Record<Model, GuestDriver>>;
  /** Hot attach/detach per model; a model without one picks changes up at its next start. */
  live: Partial<Record<Model, GuestVolumes>>;
  events?: EventBus;
  /**
   * What a guest's image is: an ISO goes only into a vm guest that boots through its firmware
   * (a disk image or a blank disk); the kit's guests boot a kernel with no CD-ROM driver.
   */
  images?: Pick<ImageService, 'get'>;
  /** Operation claims of this member (default: this service's own, over `store`). */
  claims?: Claims;
  hostName?: string;
}): VolumeService {
  const { store, backend } = deps;
  const resolver = createVolumeResolver({ store, drivers: deps.pools, stateDir: deps.stateDir });
  // One change of a volume at a time, whichever member asks (decision 28): its checks (a block
  // volume in one guest only, nothing attached to a volume being deleted) read, then write.
  const member = deps.hostName ?? 'local';
  const claims = deps.claims ?? createClaims({ store, member });
  const holdingVolume = <T>(pool: string, name: string, action: string, work: () => Promise<T>) =>
    claims.holding(
      'volume',
      `${pool}/${name}`,
      {
        action,
        busy: (h: ClaimHolder) =>
          conflict(
            `Storage volume ${name} on pool ${pool} is being changed (${describeHolder(h)}): wait for it`,
          ),
      },
      work,
    );

  async function poolRecord(name: string): Promise<PoolRecord> {
    assertDnsLabel(name, 'pool name');
    const found = await records.pool.at(name).get(store);
    if (!found) throw notFound(`Storage pool ${name} not found`);
    return found.value;
  }

  const poolPath = (pool: PoolRecord) => poolPathOf(pool, deps.pools, deps.stateDir);

  /** A pool defined on every member holds volumes only on a member that made its instance (decision 0038). */
  async function assertMadeHere(pool: PoolRecord): Promise<void> {
    if (!pool.everyMember) return;
    const own = (await records.poolMemberStatus.at(pool.name, member).get(store))?.value;
    if (own?.state !== 'Created') {
      throw unavailable(
        `Storage pool ${pool.name} is not made on ${member}${own?.error ? ` (${own.error})` : ' yet'}: see trivisor storage info ${pool.name}`,
      );
    }
  }

  async function volumeAny(pool: string, name: string): Promise<{ pool: PoolRecord; vol: OwnedVolume }> {
    const p = await poolRecord(pool);
    assertVolumeName(name);
    const found = await records.volume.at(pool, name).get(store);
    if (!found) throw notFound(`Storage volume ${name} not found on pool ${pool}`);
    return { pool: p, vol: found.value };
  }

  /** What `quota` adds to a project when a volume of `sizeBytes` is made or grown by that much. */
  const diskOf = (sizeBytes: number) => ({ ...NO_USAGE, diskBytes: sizeBytes });

  async function allSpecs(): Promise<GuestSpec[]> {
    return valuesOf(await records.guest.list(store));
  }

  const attachmentsOf = (vol: VolumeRecord, specs: GuestSpec[]): VolumeAttachment[] =>
    specs.flatMap((s) =>
      Object.entries(s.disks ?? {})
        .filter(([, d]) => d.pool === vol.pool && d.source === vol.name)
        .map(([device, d]) => ({ guest: s.name, device, ...(d.path !== undefined && { path: d.path }) })),
    );

  async function show(pool: PoolRecord, vol: VolumeRecord, specs?: GuestSpec[]): Promise<StorageVolume> {
    const attachments = attachmentsOf(vol, specs ?? (await allSpecs()));
    const usage = await backend.usage(pool.driver, poolPath(pool), vol).catch(() => ({ usedBytes: null }));
    return {
      ...vol,
      project: projectOfRecord(vol as OwnedVolume),
      kind: 'custom',
      path: volumePath(poolPath(pool), vol),
      usedBy: [...new Set(attachments.map((a) => `/1.0/guests/${a.guest}`))],
      attachments,
      usedBytes: usage.usedBytes,
    };
  }

  async function guestSpec(name: string): Promise<{ spec: GuestSpec; modRevision: number }> {
    assertDnsLabel(name, 'guest name');
    const found = await records.guest.at(name).get(store);
    if (!found) throw notFound(`Guest ${name} not found`);
    if (found.value.deleting) throw failedPrecondition(`Guest ${name} is being deleted`);
    return { spec: found.value, modRevision: found.modRevision };
  }

  /** The guest's top process when it runs (or is frozen), checked against pid reuse by its driver. */
  async function runningPid(spec: GuestSpec): Promise<number | undefined> {
    const driver = deps.drivers[spec.model];
    if (!driver) return undefined;
    const status = (await records.guestStatus.at(spec.name).get(store))?.value;
    const rt = await driver.inspect(spec, status?.process).catch(() => ({ state: 'absent' as const }));
    return (rt.state === 'running' || rt.state === 'frozen') && 'process' in rt ? rt.process?.pid : undefined;
  }

  /** Writes the guest's disks (no generation bump: the controller has nothing to converge). */
  async function writeDisks(
    name: string,
    change: (disks: Record<string, DiskDevice>) => Record<string, DiskDevice>,
  ): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const { spec, modRevision } = await guestSpec(name);
      const disks = change({ ...(spec.disks ?? {}) });
      const next: GuestSpec = { ...spec };
      if (Object.keys(disks).length > 0) next.disks = disks;
      else delete next.disks;
      const ref = records.guest.at(name);
      const r = await store.txn({ compare: [ref.unchanged(modRevision)], success: [ref.putOp(next)] });
      if (r.succeeded) return;
    }
    throw conflict(`Guest ${name} kept changing: try again`);
  }

  const lifecycle = (action: string, vol: VolumeRecord, metadata: Record<string, unknown> = {}) =>
    deps.events?.publish({
      type: 'lifecycle',
      project: projectOfRecord(vol as OwnedVolume),
      action,
      source: `/1.0/storage-pools/${vol.pool}/volumes/custom/${vol.name}`,
      metadata: { pool: vol.pool, name: vol.name, ...metadata },
    });

  /** The device names of a guest's attached ISOs (they take CD-ROM drives, not disk ports). */
  async function isosOf(disks: Record<string, DiskDevice>): Promise<string[]> {
    const out: string[] = [];
    for (const [device, d] of Object.entries(disks)) {
      const found = await records.volume.at(d.pool, d.source).get(store);
      if (found?.value.type === 'iso') out.push(device);
    }
    return out;
  }

  /** An ISO goes into a guest that boots through its firmware: a disk image's or a blank disk's. */
  async function assertBootsFirmware(spec: GuestSpec, volume: string): Promise<void> {
    if (spec.image === '' || !deps.images) return;
    const image = await deps.images.get(spec.image).catch(() => undefined);
    if (image && image.type !== 'disk') {
      throw failedPrecondition(
        `Guest ${spec.name} boots Trivisor's kernel directly, which has no CD-ROM, so it cannot take ISO ${volume}: use a guest made from a disk image or with --empty`,
      );
    }
  }

  /** The service as one project sees it; `scope` undefined is the host's view. */
  function scoped(scope: string | undefined): VolumeService {
    const project = scope ?? DEFAULT_PROJECT;
    async function volumeRecord(pool: string, name: string): Promise<{ pool: PoolRecord; vol: OwnedVolume }> {
      const found = await volumeAny(pool, name);
      if (scope !== undefined && projectOfRecord(found.vol) !== scope) {
        throw notFound(`Storage volume ${name} not found on pool ${pool}`);
      }
      return found;
    }

    /** A guest to attach to or detach from: in the volume's project, or not found. */
    async function guestOf(name: string, vol: OwnedVolume) {
      const found = await guestSpec(name);
      if (projectOfRecord(found.spec) !== projectOfRecord(vol)) throw notFound(`Guest ${name} not found`);
      return found;
    }

    /**
     * Records a volume whose data `backend` has just made, if the project's quota still holds and
     * nobody took the name meanwhile; otherwise its data goes again and the refusal is thrown.
     */
    async function recordNewVolume(p: PoolRecord, vol: OwnedVolume): Promise<StorageVolume> {
      let r: Awaited<ReturnType<typeof guardedWrite>>;
      try {
        r = await guardedWrite(store, project, async (g) => {
          assertWithinLimits(project, g.spec.config, {
            before: g.usage,
            after: addUsage(g.usage, diskOf(vol.sizeBytes)),
          });
          const ref = records.volume.at(vol.pool, vol.name);
          return { compare: [ref.absent()], success: [ref.putOp(vol)] };
        });
      } catch (e) {
        // Refused after all (another create took the last of the quota): no volume is left behind.
        await backend.delete(p.driver, poolPath(p), vol);
        throw e;
      }
      if (!r.succeeded) {
        await backend.delete(p.driver, poolPath(p), vol);
        const now = await records.volume.at(vol.pool, vol.name).get(store);
        throw nameTaken(vol.name, vol.pool, now?.value, project);
      }
      lifecycle('storage-volume-created', vol);
      return show(p, vol);
    }

    return {
      inProject: (p) => scoped(p),

      async list(pool, options = {}) {
        const p = await poolRecord(pool);
        const listed = await records.volume.list(store, pool);
        const specs = await allSpecs();
        const vols = valuesOf(listed).filter(
          (v) => scope === undefined || options.allProjects || projectOfRecord(v) === scope,
        );
        return Promise.all(vols.map((v) => show(p, v, specs)));
      },

      async get(pool, name) {
        const { pool: p, vol } = await volumeRecord(pool, name);
        return show(p, vol);
      },

      async create(pool, request) {
        const p = await poolRecord(pool);
        assertVolumeName(request.name);
        const check = async () => {
          const type = parseVolumeType(request.type);
          const { sizeBytes } = checkVolumeConfig(request.config ?? {});
          const taken = await records.volume.at(pool, request.name).get(store);
          if (taken) throw nameTaken(request.name, pool, taken.value, project);
          const size = sizeBytes ?? DEFAULT_VOLUME_BYTES;
          // Checked before any file is made; checked again, race-free, when the record is written.
          const before = await readGuard(store, project);
          assertWithinLimits(project, before.spec.config, {
            before: before.usage,
            after: addUsage(before.usage, diskOf(size)),
          });
          await assertMadeHere(p);
          if (p.driver === 'btrfs' && !(await isMountPoint(poolPath(p)))) {
            throw unavailable(`Storage pool ${pool} is not mounted: restart the daemon or check the pool`);
          }
          return { type, size };
        };
        // What can be refused is refused before the claim (a refused request writes nothing), and again under it.
        await check();
        return holdingVolume(pool, request.name, 'create', async () => {
          const { type, size } = await check();
          const vol: OwnedVolume = {
            name: request.name,
            project,
            pool,
            type,
            sizeBytes: size,
            description: request.description ?? '',
            createdAt: new Date().toISOString(),
            location: p.location ?? member,
          };
          await backend.create(p.driver, poolPath(p), vol);
          return recordNewVolume(p, vol);
        });
      },

      async importIso(pool, request) {
        try {
          const p = await poolRecord(pool);
          assertVolumeName(request.name);
          const check = async () => {
            const importer = backend.importIso?.bind(backend);
            if (!importer) throw failedPrecondition('This daemon cannot keep ISO images on its pools');
            if (!(await isIsoImage(request.file).catch(() => false))) {
              throw invalidArgument(
                'The upload is not an ISO image (no ISO 9660 or UDF volume descriptor at sector 16): give an installer or live CD image',
              );
            }
            const taken = await records.volume.at(pool, request.name).get(store);
            if (taken) throw nameTaken(request.name, pool, taken.value, project);
            const size = (await stat(request.file)).size;
            const before = await readGuard(store, project);
            assertWithinLimits(project, before.spec.config, {
              before: before.usage,
              after: addUsage(before.usage, diskOf(size)),
            });
            await assertMadeHere(p);
            if (p.driver === 'btrfs' && !(await isMountPoint(poolPath(p)))) {
              throw unavailable(`Storage pool ${pool} is not mounted: restart the daemon or check the pool`);
            }
            return { importer, size };
          };
          // Refused before the claim (a refused request writes nothing), and checked again under it.
          await check();
          return await holdingVolume(pool, request.name, 'import', async () => {
            const { importer, size } = await check();
            const vol: OwnedVolume = {
              name: request.name,
              project,
              pool,
              type: 'iso',
              sizeBytes: size,
              description: request.description ?? '',
              createdAt: new Date().toISOString(),
              location: p.location ?? member,
            };
            await importer(p.driver, poolPath(p), vol, request.file);
            return recordNewVolume(p, vol);
          });
        } finally {
          await rm(request.file, { force: true });
        }
      },

      async update(pool, name, change) {
        const check = async () => {
          const found = await volumeRecord(pool, name);
          const { vol } = found;
          if (vol.type === 'iso') {
            throw invalidArgument(
              `Volume ${name} is an ISO image, which keeps the size it was uploaded with`,
            );
          }
          const { sizeBytes } = checkVolumeConfig(change.config ?? {});
          if (sizeBytes === undefined) throw invalidArgument('Nothing to change: give size, e.g. size=2GiB');
          checkGrow(vol, sizeBytes);
          const owner = projectOfRecord(vol);
          const g = await readGuard(store, owner);
          assertWithinLimits(owner, g.spec.config, {
            before: g.usage,
            after: addUsage(g.usage, diskOf(sizeBytes - vol.sizeBytes)),
          });
          return { ...found, sizeBytes };
        };
        const first = await check();
        if (first.sizeBytes === first.vol.sizeBytes) {
          return {
            volume: await show(first.pool, first.vol),
            applied: 'none',
            message: `Volume ${name} is already ${formatBytes(first.sizeBytes)}`,
          };
        }
        return holdingVolume(pool, name, 'resize', async () => {
          const { pool: p, vol, sizeBytes } = await check();
          if (sizeBytes === vol.sizeBytes) {
            return {
              volume: await show(p, vol),
              applied: 'none',
              message: `Volume ${name} is already ${formatBytes(sizeBytes)}`,
            };
          }
          const grown: OwnedVolume = { ...vol, sizeBytes };
          const owner = projectOfRecord(vol);
          // The new size is recorded (under the project's quota) before the file grows: a refused
          // resize changes nothing, and a failed one is taken back.
          const r = await guardedWrite(store, owner, async (g) => {
            assertWithinLimits(owner, g.spec.config, {
              before: g.usage,
              after: addUsage(g.usage, diskOf(sizeBytes - vol.sizeBytes)),
            });
            const ref = records.volume.at(pool, name);
            return {
              compare: [{ key: ref.key, target: 'value', op: '=', value: records.volume.encode(vol) }],
              success: [ref.putOp(grown)],
            };
          });
          if (!r.succeeded) throw conflict(`Storage volume ${name} was changed at the same time; retry`);
          try {
            await backend.resize(p.driver, poolPath(p), vol, sizeBytes);
          } catch (e) {
            await records.volume.at(pool, name).put(store, vol);
            throw e;
          }
          lifecycle('storage-volume-updated', grown, { sizeBytes });
          // Running guests that have it learn the new size where their engine can tell them.
          const specs = await allSpecs();
          const results: string[] = [];
          let applied = 'none' as VolumeChange['applied'];
          for (const a of attachmentsOf(grown, specs)) {
            const spec = specs.find((s) => s.name === a.guest);
            const pid = spec && (await runningPid(spec));
            if (!spec || pid === undefined) continue;
            const attached = (await resolver.resolve(spec)).find((v) => v.device === a.device);
            const live = deps.live[spec.model];
            if (!attached || !live) continue;
            const r = await live.resize(spec, attached, { pid });
            applied = r === 'next-start' || applied === 'next-start' ? 'next-start' : 'live';
            results.push(r === 'live' ? `${a.guest} sees it now` : `${a.guest} sees it after its next start`);
          }
          const tail = results.length > 0 ? ` (${results.join('; ')})` : '';
          return {
            volume: await show(p, grown, specs),
            applied,
            message: `Resized volume ${name} to ${formatBytes(sizeBytes)}${tail}`,
          };
        });
      },

      async delete(pool, name) {
        const check = async () => {
          const found = await volumeRecord(pool, name);
          const attachments = attachmentsOf(found.vol, await allSpecs());
          if (attachments.length > 0) {
            const guests = [...new Set(attachments.map((a) => a.guest))].join(', ');
            throw failedPrecondition(`Storage volume ${name} is attached to ${guests}: detach it first`);
          }
          return found;
        };
        await check();
        return holdingVolume(pool, name, 'delete', async () => {
          const { pool: p, vol } = await check();
          await backend.delete(p.driver, poolPath(p), vol);
          await store.delete(records.volume.key(pool, name));
          lifecycle('storage-volume-deleted', vol);
        });
      },

      async attach(pool, name, request) {
        const plan = async () => {
          const { pool: p, vol } = await volumeRecord(pool, name);
          const { spec } = await guestOf(request.guest, vol);
          // A volume's files are on its member's disks (no shared storage between members yet).
          const volumeAt = vol.location ?? member;
          if (deps.hostName !== undefined && volumeAt !== spec.location) {
            throw failedPrecondition(
              `Volume ${name} is on member ${volumeAt} and guest ${spec.name} on ${spec.location}: a volume attaches to guests of its own member`,
            );
          }
          const allowed = modelsFor(vol.type);
          if (!allowed.includes(spec.model)) {
            throw invalidArgument(
              vol.type === 'filesystem'
                ? `Volume ${name} is a filesystem volume, which only ct guests can mount; ${spec.name} is a ${spec.model} guest: use a block volume (--type block)`
                : vol.type === 'iso'
                  ? `Volume ${name} is an ISO image, which only vm guests read (as a CD-ROM); ${spec.name} is a ${spec.model} guest`
                  : `Volume ${name} is a block volume, which only vm and pvm guests can use; ${spec.name} is a ct guest: use a filesystem volume`,
            );
          }
          // An HA guest runs wherever its member dies to: its volumes must be where every member sees them (decision 0049).
          if (haEnabled(spec) && !p.shared) {
            throw invalidArgument(
              `Guest ${spec.name} has ha.enabled=true and volume ${name} is on pool ${pool}, which is not shared: put the volume on a shared pool, or unset ha.enabled first`,
            );
          }
          if (vol.type === 'iso') await assertBootsFirmware(spec, name);
          let path: string | undefined;
          if (vol.type === 'filesystem') {
            if (request.path === undefined || request.path === '') {
              throw invalidArgument(`Give the path where ${spec.name} mounts volume ${name}, e.g. /mnt/data`);
            }
            path = checkMountPath(request.path);
          } else if (request.path !== undefined) {
            throw invalidArgument(
              vol.type === 'iso'
                ? `An ISO has no mount path: it is the medium of a CD-ROM drive of ${spec.name}; leave the path out`
                : `A block volume has no mount path: it shows up as a disk (vdX or ubdX) in ${spec.name}; leave the path out`,
            );
          }
          const device = request.device ?? name;
          assertDnsLabel(device, 'device name');
          const disks = spec.disks ?? {};
          const specs = await allSpecs();
          const attachments = attachmentsOf(vol, specs);
          const here = attachments.find((a) => a.guest === spec.name);
          if (here) throw conflict(`Volume ${name} is already attached to ${spec.name} as ${here.device}`);
          if (disks[device] || spec.devices?.[device]) {
            throw conflict(
              `Guest ${spec.name} already has a device named ${device}: choose another with --device`,
            );
          }
          if (vol.type === 'block' && attachments.length > 0) {
            throw conflict(
              `Block volume ${name} is attached to ${attachments[0]?.guest}: a disk can be in one guest at a time; detach it there first`,
            );
          }
          if (path !== undefined && Object.values(disks).some((d) => d.path === path)) {
            throw conflict(`Guest ${spec.name} already has a volume at ${path}`);
          }
          if (vol.type === 'iso') {
            const isos = await isosOf(disks);
            if (isos.length >= MAX_ISOS) {
              throw failedPrecondition(
                `Guest ${spec.name} has ${MAX_ISOS} CD-ROM drives, both holding an ISO (${isos.join(', ')}): remove one first`,
              );
            }
          } else if (Object.keys(disks).length - (await isosOf(disks)).length >= MAX_VOLUMES[spec.model]) {
            throw failedPrecondition(
              `Guest ${spec.name} has ${MAX_VOLUMES[spec.model]} volumes, the most a ${spec.model} guest can have: detach one first`,
            );
          }
          const disk: DiskDevice = { type: 'disk', pool, source: name, ...(path !== undefined && { path }) };
          const attached: AttachedVolume = {
            device,
            pool,
            volume: name,
            type: vol.type,
            hostPath: volumePath(poolPath(p), vol),
            ...(path !== undefined && { path }),
            sizeBytes: vol.sizeBytes,
          };
          return { p, vol, spec, device, disk, attached, path };
        };
        // What can be refused is refused before the claim (a refused request writes nothing), and again under it.
        await plan();
        return holdingVolume(pool, name, 'attach', async () => {
          const { p, vol, spec, device, disk, attached, path } = await plan();
          // Recorded first: a daemon killed in the middle leaves an attachment that applies at the next start.
          // The guest's record is compared, not locked: a device another change added meanwhile is kept,
          // and one of the same name makes this attach the loser.
          await writeDisks(spec.name, (d) => {
            if (d[device]) {
              throw conflict(
                `Guest ${spec.name} got a device named ${device} at the same time: choose another`,
              );
            }
            return { ...d, [device]: disk };
          });
          let applied: VolumeChange['applied'] = 'none';
          const pid = await runningPid(spec);
          const live = deps.live[spec.model];
          if (pid !== undefined) {
            if (live) {
              try {
                applied = await live.attach(spec, attached, { pid });
              } catch (e) {
                await writeDisks(spec.name, (d) => {
                  delete d[device];
                  return d;
                }).catch(() => {});
                throw e;
              }
            } else applied = 'next-start';
          }
          lifecycle('storage-volume-attached', vol, { guest: spec.name, device });
          const where = path !== undefined ? ` at ${path}` : '';
          const how =
            applied === 'live'
              ? ' (live)'
              : applied === 'next-start'
                ? `; it applies when ${spec.name} starts next`
                : `; ${spec.name} gets it when it starts`;
          return {
            volume: await show(p, vol),
            guest: spec.name,
            device,
            applied,
            message: `Attached volume ${name} to ${spec.name} as ${device}${where}${how}`,
          };
        });
      },

      async detach(pool, name, request) {
        const plan = async () => {
          const { pool: p, vol } = await volumeRecord(pool, name);
          const { spec } = await guestOf(request.guest, vol);
          const mine = Object.entries(spec.disks ?? {}).filter(
            ([dev, d]) =>
              d.pool === pool &&
              d.source === name &&
              (request.device === undefined || dev === request.device),
          );
          const found = mine[0];
          if (!found) throw notFound(`Storage volume ${name} is not attached to guest ${spec.name}`);
          const [device, disk] = found;
          const attached: AttachedVolume = {
            device,
            pool,
            volume: name,
            type: vol.type,
            hostPath: volumePath(poolPath(p), vol),
            ...(disk.path !== undefined && { path: disk.path }),
            sizeBytes: vol.sizeBytes,
          };
          return { p, vol, spec, device, attached };
        };
        await plan();
        return holdingVolume(pool, name, 'detach', async () => {
          const { p, vol, spec, device, attached } = await plan();
          let applied: VolumeChange['applied'] = 'none';
          const pid = await runningPid(spec);
          const live = deps.live[spec.model];
          if (pid !== undefined) applied = live ? await live.detach(spec, attached, { pid }) : 'next-start';
          await writeDisks(spec.name, (d) => {
            delete d[device];
            return d;
          });
          lifecycle('storage-volume-detached', vol, { guest: spec.name, device });
          const how =
            applied === 'live'
              ? ' (live)'
              : applied === 'next-start'
                ? `; it goes when ${spec.name} stops`
                : '';
          return {
            volume: await show(p, vol),
            guest: spec.name,
            device,
            applied,
            message: `Detached volume ${name} from ${spec.name}${how}`,
          };
        });
      },

      async poolInUse(pool) {
        const { kvs } = await store.list(keys.storageVolumes(pool));
        if (kvs.length === 0) return undefined;
        const names = kvs.map((kv) => kv.key.slice(keys.storageVolumes(pool).length));
        return `Storage pool ${pool} holds volumes ${names.join(', ')}: delete them first`;
      },
    };
  }

  return scoped(undefined);
}

/** A volume name taken by another project's volume says only that (volume names are per pool on the host). */
function nameTaken(name: string, pool: string, other: OwnedVolume | undefined, project: string) {
  return other && projectOfRecord(other) !== project
    ? alreadyExists(
        `The name ${name} is taken on pool ${pool} by a volume of another project: volume names are unique per pool on this host, pick another`,
      )
    : alreadyExists(`Storage volume ${name} already exists on pool ${pool}`);
}
