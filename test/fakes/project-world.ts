import { createGuestController, type GuestController } from '../../src/control/guest-controller.ts';
import { createNetworkController, type NetworkController } from '../../src/control/network-controller.ts';
import { keys } from '../../src/core/keys.ts';
import type { GuestSpec, ImageRecord, ProcessIdentity } from '../../src/core/types.ts';
import type { GuestStorage } from '../../src/drivers/guest-storage.ts';
import { silentLogger } from '../../src/host/logger.ts';
import type { ImageFiles } from '../../src/images/image-files.ts';
import type { NetworkBackend } from '../../src/network/network-backend.ts';
import { createEventBus } from '../../src/services/event-bus.ts';
import { createGuestService } from '../../src/services/guest-service.ts';
import { createImageService } from '../../src/services/image-service.ts';
import { createNetworkService } from '../../src/services/network-service.ts';
import { createOperationService } from '../../src/services/operation-service.ts';
import { createProjectService } from '../../src/services/project-service.ts';
import { createStorageService } from '../../src/services/storage-service.ts';
import type { Services } from '../../src/services/types.ts';
import { createVolumeService } from '../../src/services/volume-service.ts';
import type { PoolRecord } from '../../src/storage/storage-pools.ts';
import type { VolumeBackend } from '../../src/storage/volumes.ts';
import type { KvStore } from '../../src/store/kv.ts';
import { createMemoryStore } from '../../src/store/memory-store.ts';
import { indexProjectGuests } from '../../src/store/project-guests.ts';
import { createFakeDriver, type FakeDriver } from './fake-driver.ts';
import { fakeRunner } from './fake-runner.ts';

/** The busybox image of the world, in project default (as the daemon makes it). */
export const BUSYBOX: ImageRecord = {
  fingerprint: 'ab'.repeat(32),
  project: 'default',
  aliases: ['busybox'],
  description: 'test',
  os: 'busybox',
  release: '1',
  architecture: 'x86_64',
  source: 'builtin',
  sizeBytes: 1,
  createdAt: new Date(0).toISOString(),
  properties: {},
};

/** Real services (guests, networks, volumes, images, snapshots, projects) over a memory store and fakes of the host. */
export interface ProjectWorld {
  store: KvStore;
  driver: FakeDriver;
  services: Services;
  /** What the volume backend was asked to make and remove, as `create NAME` / `delete NAME`. */
  volumeCalls: string[];
  stop(): Promise<void>;
}

/** A network backend whose bridges are entries of a set. */
function fakeNetworkBackend(): NetworkBackend {
  const bridges = new Set<string>();
  const pid: ProcessIdentity = { pid: 1, startTime: 1 };
  return {
    async ensure(def) {
      bridges.add(def.name);
      return pid;
    },
    async inspect(name) {
      return { bridge: bridges.has(name), dnsmasq: bridges.has(name) };
    },
    async remove(name) {
      bridges.delete(name);
    },
    async listOwned() {
      return [...bridges];
    },
    async plugVeth() {},
    async plugTap() {
      return { mtu: 1500 };
    },
    async unplug() {},
    async counters() {
      return undefined;
    },
    async portState() {
      return 'up' as const;
    },
    async leases() {
      return new Map<string, string>();
    },
  } as NetworkBackend;
}

/** Snapshots that are names in a set: enough for the storage routes' scoping. */
function fakeGuestStorage(): GuestStorage {
  const snaps = new Map<string, Set<string>>();
  const of = (spec: GuestSpec) => snaps.get(spec.name) ?? snaps.set(spec.name, new Set()).get(spec.name)!;
  return {
    async snapshot(spec, name) {
      of(spec).add(name);
    },
    async restoreSnapshot() {},
    async deleteSnapshot(spec, name) {
      of(spec).delete(name);
    },
    async listSnapshots(spec) {
      return [...of(spec)];
    },
    async copy() {},
    async exportTar() {},
    async importTar() {},
    async sweep() {},
  };
}

export async function makeProjectWorld(): Promise<ProjectWorld> {
  const store = createMemoryStore();
  // As the daemon does at start: its projects' guests are read through the index (decision 0087).
  await indexProjectGuests(store);
  const events = createEventBus();
  const operations = createOperationService(events);
  const driver = createFakeDriver('ct');
  const files = {
    async addBusybox() {
      return { fingerprint: BUSYBOX.fingerprint, metadata: BUSYBOX, sizeBytes: 1 };
    },
    rootfsPath: () => '/nonexistent',
    baseDisk: async () => '/nonexistent',
    async remove() {},
  } as unknown as ImageFiles;
  const images = createImageService({ store, files, operations, events });
  await images.ensureBusybox();
  const networks = createNetworkService({ store, hostName: 'h1', convergeWaitMs: 5000 });
  const guests = createGuestService({
    store,
    drivers: { ct: driver },
    images,
    operations,
    hostName: 'h1',
    capacity: { memoryBytes: 64 * 2 ** 30, cpus: 16 },
    networks,
    configWaitMs: 5000,
  });
  const guestController: GuestController = createGuestController({
    store,
    drivers: { ct: driver },
    images: {
      handle: async () => ({
        record: BUSYBOX,
        rootfs: '/x',
        shiftedRootfs: async () => '/y',
        baseDisk: async () => '/z',
      }),
    },
    events,
    log: silentLogger(),
    hostName: 'h1',
    livenessIntervalMs: 50,
  });
  const networkController: NetworkController = createNetworkController({
    store,
    backend: fakeNetworkBackend(),
    events,
    log: silentLogger(),
    hostName: 'h1',
    checkIntervalMs: 100,
  });
  await guestController.start();
  await networkController.start();
  const pool: PoolRecord = { name: 'default', driver: 'dir', description: '', config: {}, createdAt: '' };
  await store.put(keys.storagePool('default'), JSON.stringify(pool));
  const volumeCalls: string[] = [];
  const volumeBackend: VolumeBackend = {
    async create(_d, _p, v) {
      volumeCalls.push(`create ${v.name}`);
    },
    async resize(_d, _p, v, size) {
      volumeCalls.push(`resize ${v.name} ${size}`);
    },
    async usage() {
      return { usedBytes: 0 };
    },
    async delete(_d, _p, v) {
      volumeCalls.push(`delete ${v.name}`);
    },
  };
  const volumes = createVolumeService({
    store,
    pools: { dir: { mountPath: () => '/unused' }, btrfs: { mountPath: () => '/unused' } } as never,
    backend: volumeBackend,
    stateDir: '/nonexistent',
    drivers: { ct: driver },
    live: {},
    events,
  });
  const storage = createStorageService({
    store,
    storage: { ct: fakeGuestStorage() },
    guests,
    images,
    operations,
    events,
    runner: fakeRunner(),
    stateDir: '/nonexistent',
  });
  const services: Services = {
    guests,
    networks,
    images,
    operations,
    events,
    volumes,
    storage,
    projects: createProjectService({ store }),
    host: {
      async info() {
        throw new Error('not in this world');
      },
      async metrics() {
        return { contentType: 'text/plain', body: '' };
      },
    },
  };
  return {
    store,
    driver,
    services,
    volumeCalls,
    async stop() {
      await guestController.stop();
      await networkController.stop();
      await store.close();
    },
  };
}
