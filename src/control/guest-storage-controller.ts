import { chown, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { asTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import type { PoolDriver, PoolDriverName, PoolRecord } from '../storage/storage-pools.ts';
import { volumePath } from '../storage/volumes.ts';
import type { KvStore } from '../store/kv.ts';
import { records, stampLocations, valuesOf } from '../store/records.ts';
import { createInformer, type Informer } from './informer.ts';

/** Name of the spec copy in each guest's directory (Incus's backup.yaml), read by `admin recover`. */
export const GUEST_CONFIG_FILE = 'guest.json';

/** Where a pool's files are: the default dir pool is the state directory itself. */
export function poolPathOf(
  pool: PoolRecord,
  drivers: Record<PoolDriverName, PoolDriver>,
  stateDir: string,
): string {
  return pool.name === 'default' && pool.driver === 'dir' ? stateDir : drivers[pool.driver].mountPath(pool);
}

export interface GuestStorageControllerDeps {
  store: KvStore;
  log: Logger;
  hostName: string;
  stateDir: string;
  pools: Record<PoolDriverName, PoolDriver>;
}

/**
 * Keeps what this member's guests leave on storage in step with their records:
 * - a copy of each guest's spec in `guests/NAME/guest.json`, once its directory exists
 *   (for `admin recover` after the store is lost);
 * - snapshot records go when their guest's record goes (its directory, snapshots
 *   included, is gone already);
 * - block volumes no guest has are root's again (a pvm guest's host uid owns its disks,
 *   and a later guest may get the same uid).
 * Level-based: each rule is applied to everything at start and to what changes after.
 */
export interface GuestStorageController {
  start(): Promise<void>;
  stop(): void;
}

export function createGuestStorageController(deps: GuestStorageControllerDeps): GuestStorageController {
  const { store, hostName } = deps;
  const log = deps.log.child({ component: 'guest-storage-controller' });
  const guestsDir = join(deps.stateDir, 'guests');
  const informers: Array<Informer<unknown>> = [];
  let guests: Informer<GuestSpec> | undefined;

  /** Writes the spec copy if the guest's directory exists (it does not until the driver made it). */
  async function keepConfig(spec: GuestSpec): Promise<void> {
    if (spec.location !== hostName || spec.deleting) return;
    const dir = join(guestsDir, spec.name);
    if (!(await stat(dir).catch(() => undefined))) return;
    const file = join(dir, GUEST_CONFIG_FILE);
    await writeFile(`${file}.tmp`, `${JSON.stringify({ spec }, null, 2)}\n`, { mode: 0o600 });
    await rename(`${file}.tmp`, file);
  }

  /**
   * Snapshot records of guests that have no record (a guest's go with it). At start every guest's;
   * when a guest is deleted only that guest's, its absence read from the informer's cache: a
   * delete reads nothing of the other guests (deleting N guests listed them N times before).
   */
  async function dropOrphanSnapshots(deleted?: string): Promise<void> {
    if (deleted !== undefined && guests?.get(records.guest.key(deleted))) return;
    const guestKeys =
      deleted === undefined
        ? new Set((await store.list(records.guest.prefix)).kvs.map((kv) => records.guest.nameOf(kv.key)))
        : new Set<string>();
    const listed = deleted === undefined ? records.snapshot.prefix : keys.snapshots(deleted);
    for (const kv of (await store.list(listed)).kvs) {
      const guest = records.snapshot.nameOf(kv.key).split('/')[0] ?? '';
      if (guestKeys.has(guest)) continue;
      const ref = records.snapshot.ref(kv.key);
      await store.txn({ compare: [ref.unchanged(kv.modRevision)], success: [ref.deleteOp()] });
    }
  }

  /**
   * Gives block volumes that no guest has back to root. Idempotent. When a guest is deleted, only
   * the volumes it had, checked against the informer's cache: a guest without disks costs nothing.
   */
  async function reclaimVolumes(deleted?: GuestSpec): Promise<void> {
    const had = deleted && new Set(Object.values(deleted.disks ?? {}).map((d) => `${d.pool}/${d.source}`));
    if (had?.size === 0) return;
    const specs = had && guests ? guests.values() : valuesOf(await records.guest.list(store));
    const attached = new Set(
      specs.flatMap((s) => Object.values(s.disks ?? {}).map((d) => `${d.pool}/${d.source}`)),
    );
    for (const vol of valuesOf(await records.volume.list(store))) {
      if (vol.type !== 'block' || attached.has(`${vol.pool}/${vol.name}`)) continue;
      if (had && !had.has(`${vol.pool}/${vol.name}`)) continue;
      const pool = await records.pool.at(vol.pool).get(store);
      if (!pool) continue;
      const file = volumePath(poolPathOf(pool.value, deps.pools, deps.stateDir), vol);
      const s = await stat(file).catch(() => undefined);
      if (s && (s.uid !== 0 || s.gid !== 0)) await chown(file, 0, 0).catch(() => {});
    }
  }

  const warn = (what: string) => (e: unknown) => log.warn({ err: asTrivisorError(e).message }, what);

  return {
    async start() {
      const first: Array<Promise<void>> = [];
      let starting = true;
      const keep = (_key: string, spec: GuestSpec) => {
        const done = keepConfig(spec).catch(warn(`cannot keep ${GUEST_CONFIG_FILE}`));
        if (starting) first.push(done);
      };
      guests = createInformer<GuestSpec>({
        store,
        prefix: records.guest.prefix,
        decode: records.guest.decode,
        log,
        handlers: {
          onAdd: keep,
          onUpdate: keep,
          // Also a delete only a re-list found.
          onDelete: (key, last) => {
            if (starting) return;
            const name = records.guest.nameOf(key);
            void dropOrphanSnapshots(name).catch(warn('cannot drop snapshot records'));
            void reclaimVolumes(last).catch(warn('cannot give volumes back to root'));
          },
        },
      });
      // The first copy can be written only once the driver has made the guest's directory,
      // which its status then says (provisioned).
      const provisioned = (statusKey: string) => {
        const spec = guests?.get(records.guest.key(records.guestStatus.nameOf(statusKey)));
        if (spec) void keepConfig(spec).catch(warn(`cannot keep ${GUEST_CONFIG_FILE}`));
      };
      const statuses = createInformer<GuestStatus>({
        store,
        prefix: records.guestStatus.prefix,
        decode: records.guestStatus.decode,
        log,
        handlers: {
          onAdd: (key, status) => {
            if (!starting && status.provisioned) provisioned(key);
          },
          onUpdate: (key, status, previous) => {
            if (status.provisioned && !previous.provisioned) provisioned(key);
          },
        },
      });
      informers.push(guests as Informer<unknown>, statuses as Informer<unknown>);
      await guests.start();
      await statuses.start();
      starting = false;
      await Promise.all(first);
      await dropOrphanSnapshots().catch(warn('cannot drop snapshot records'));
      // Snapshots recorded before owners were are their guest's owner's.
      const ownerOf = (s: { guest: string }) => guests?.get(records.guest.key(s.guest))?.location;
      await stampLocations(store, records.snapshot, ownerOf).catch(
        warn('cannot record the owner of older snapshots'),
      );
      await reclaimVolumes().catch(warn('cannot give volumes back to root'));
    },
    stop() {
      for (const informer of informers.splice(0)) informer.stop();
    },
  };
}
