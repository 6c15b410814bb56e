import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { asTrivisorError, failedPrecondition } from '../core/errors.ts';
import { parseBytes } from '../core/sizes.ts';
import type { GuestSpec } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { isOnBtrfs } from '../host/reflink.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { checkSharedMarker } from '../storage/shared-pools.ts';
import type { PoolDriver, PoolDriverName, PoolRecord } from '../storage/storage-pools.ts';
import type { KvStore } from '../store/kv.ts';
import { records, stampLocations } from '../store/records.ts';
import { createInformer, type Informer } from './informer.ts';

/** A copy of the pool's record at its root, for `admin recover` after the store is lost. */
export const POOL_RECORD_FILE = '.trivisor-pool.json';

/** The pool every guest lives on unless told otherwise: the state dir's own guests/ directory. */
export const DEFAULT_POOL = 'default';

export interface PoolControllerDeps {
  store: KvStore;
  drivers: Record<PoolDriverName, PoolDriver>;
  /** Runs btrfs for the disk limits; without it limits.disk is not applied. */
  runner?: ProcessRunner;
  log: Logger;
  hostName: string;
}

/**
 * Keeps this member's pools and what its guests need of them in step with the store:
 * the default pool is recorded, every pool is mounted (after a reboot, or when it is
 * recorded) with a copy of its record at its root, and a ct guest's `limits.disk` is the
 * qgroup limit of its subvolume on a btrfs pool. Level-based: at start every pool and
 * guest is looked at, so what changed while the daemon was down is applied then.
 */
export interface PoolController {
  start(): Promise<void>;
  stop(): void;
}

/** Keeps a copy of a pool's record at its root (written through a temporary name). */
export async function keepPoolRecord(
  pool: PoolRecord,
  drivers: Record<PoolDriverName, PoolDriver>,
): Promise<void> {
  if (pool.name === DEFAULT_POOL) return;
  const file = join(drivers[pool.driver].mountPath(pool), POOL_RECORD_FILE);
  await writeFile(`${file}.tmp`, `${JSON.stringify(pool, null, 2)}\n`, { mode: 0o600 });
  await rename(`${file}.tmp`, file);
}

export function createPoolController(deps: PoolControllerDeps): PoolController {
  const { store, drivers, hostName } = deps;
  const log = deps.log.child({ component: 'pool-controller' });
  const informers: Array<Informer<unknown>> = [];

  async function mount(pool: PoolRecord): Promise<void> {
    if (pool.everyMember) return makeInstance(pool);
    // Another member's pool is on its disks (a loop file under its state dir, its block device).
    if (pool.name === DEFAULT_POOL || (pool.location !== undefined && pool.location !== hostName)) return;
    await drivers[pool.driver].mount(pool);
    await keepPoolRecord(pool, drivers);
  }

  /** One change of a pool's instance at a time on this member (its record's add, update, delete). */
  const chains = new Map<string, Promise<void>>();
  const inTurn = (name: string, work: () => Promise<void>): Promise<void> => {
    const next = (chains.get(name) ?? Promise.resolve()).then(work, work);
    chains.set(name, next);
    const done = () => {
      if (chains.get(name) === next) chains.delete(name);
    };
    next.then(done, done);
    return next;
  };

  /**
   * This member's instance of a pool defined on every member (decision 0038): made once (its
   * status says Created), mounted again after that; a failure is its status (Errored, with the
   * error), which the pool's info shows. A later change of the record tries again.
   */
  function makeInstance(pool: PoolRecord): Promise<void> {
    return inTurn(pool.name, async () => {
      const ref = records.poolMemberStatus.at(pool.name, hostName);
      const had = await ref.get(store);
      const driver = drivers[pool.driver];
      if (pool.shared) return checkShared(pool, had?.value.state);
      try {
        if (had?.value.state === 'Created') await driver.mount(pool);
        else await driver.create(pool);
        await keepPoolRecord(pool, drivers);
        // The record may be gone meanwhile (deleted while this was made): then nothing is kept.
        if (!(await records.pool.at(pool.name).get(store))) {
          await driver.delete(pool);
          return;
        }
        if (had?.value.state !== 'Created')
          await ref.put(store, {
            state: 'Created',
            driver: pool.driver,
            updatedAt: new Date().toISOString(),
          });
      } catch (e) {
        const error = asTrivisorError(e).message;
        await ref.put(store, {
          state: had?.value.state === 'Created' ? 'Created' : 'Errored',
          driver: pool.driver,
          error,
          updatedAt: new Date().toISOString(),
        });
        throw e;
      }
    });
  }

  /**
   * A shared pool (decision 0049) is no instance of this member's: the member that created it
   * wrote a marker at its root, and this member's status says whether it reads that marker
   * there (Created) or not (Errored, naming the member and the path). Checked whenever the pool
   * is looked at (its record changes, the daemon starts), so a directory mounted later counts.
   */
  async function checkShared(pool: PoolRecord, had: 'Created' | 'Errored' | undefined): Promise<void> {
    const ref = records.poolMemberStatus.at(pool.name, hostName);
    const error = await checkSharedMarker(pool, hostName);
    // Every member writes the same copy: one that loses a race with another's rename loses nothing.
    if (error === undefined) await keepPoolRecord(pool, drivers).catch(() => {});
    if (!(await records.pool.at(pool.name).get(store))) return;
    if (error === undefined && had === 'Created') return;
    await ref.put(store, {
      state: error === undefined ? 'Created' : 'Errored',
      driver: pool.driver,
      ...(error !== undefined && { error }),
      updatedAt: new Date().toISOString(),
    });
    if (error !== undefined) throw failedPrecondition(error);
  }

  /** Removes this member's instance of a pool defined on every member, and its status. */
  function removeInstance(name: string, driverName: PoolDriverName): Promise<void> {
    return inTurn(name, async () => {
      if (await records.pool.at(name).get(store)) return;
      const ref = records.poolMemberStatus.at(name, hostName);
      const pool: PoolRecord = { name, driver: driverName, description: '', config: {}, createdAt: '' };
      await drivers[driverName].delete(pool);
      await store.delete(ref.key);
    });
  }

  const removeIt = (_key: string, pool: PoolRecord) => {
    if (!pool.everyMember) return;
    void removeInstance(pool.name, pool.driver).catch((e) =>
      log.warn({ pool: pool.name, err: asTrivisorError(e).message }, 'cannot remove storage pool'),
    );
  };

  /** Instances of pools deleted while this daemon was down. */
  async function removeLeftInstances(): Promise<void> {
    for (const { key, value } of (await records.poolMemberStatus.list(store)).items) {
      const [name, member] = records.poolMemberStatus.nameOf(key).split('/');
      if (member !== hostName || name === undefined) continue;
      await removeInstance(name, value.driver).catch((e) =>
        log.warn({ pool: name, err: asTrivisorError(e).message }, 'cannot remove storage pool'),
      );
    }
  }

  /**
   * Applies a ct guest's limits.disk as the qgroup limit of its subvolume when it changed. For
   * vm and pvm guests limits.disk is the size of their disk, which bounds what they write
   * already; a qgroup limit would also count their snapshots and turn a full quota into I/O
   * errors inside the guest.
   */
  async function syncLimit(spec: GuestSpec): Promise<void> {
    if (spec.model !== 'ct' || spec.location !== hostName || spec.deleting) return;
    const placed = await records.guestPool.at(spec.name).get(store);
    if (!placed || !(await isOnBtrfs(placed.value.path))) return;
    const raw = spec.config['limits.disk'];
    const limitBytes = raw === undefined ? null : parseBytes(raw, 'limits.disk');
    if (limitBytes === placed.value.limitBytes) return;
    if (!deps.runner) throw failedPrecondition('This daemon cannot apply disk limits');
    await deps.runner.run([
      'btrfs',
      'qgroup',
      'limit',
      limitBytes === null ? 'none' : String(limitBytes),
      placed.value.path,
    ]);
    // Compared: a placement that changed meanwhile is looked at again with the next change.
    await records.guestPool
      .at(spec.name)
      .put(store, { ...placed.value, limitBytes }, { ifModRevision: placed.modRevision });
  }

  return {
    async start() {
      const ref = records.pool.at(DEFAULT_POOL);
      if (!(await store.get(ref.key))) {
        const pool: PoolRecord = {
          name: DEFAULT_POOL,
          driver: 'dir',
          description: 'Guests under the state directory',
          config: {},
          createdAt: new Date().toISOString(),
          location: hostName,
        };
        await store.txn({ compare: [ref.absent()], success: [ref.putOp(pool)] });
      }
      // Pools, volumes and placements recorded before owners were are this member's: only a
      // single-host store has any, and this is its member.
      const mine = () => hostName;
      const older = (e: unknown) =>
        log.warn({ err: asTrivisorError(e).message }, 'cannot record the owner of older records');
      // A pool defined on every member has no location (decision 0038).
      await stampLocations(store, records.pool, (p) => (p.everyMember ? undefined : hostName)).catch(older);
      await stampLocations(store, records.volume, mine).catch(older);
      await stampLocations(store, records.guestPool, mine).catch(older);
      // Pools are mounted before start returns: guests that start next live on them.
      const first: Array<Promise<void>> = [];
      let starting = true;
      const mountIt = (_key: string, pool: PoolRecord) => {
        const done = mount(pool).catch((e) =>
          log.warn({ pool: pool.name, err: asTrivisorError(e).message }, 'cannot mount storage pool'),
        );
        if (starting) first.push(done);
      };
      const limit = (_key: string, spec: GuestSpec) =>
        void syncLimit(spec).catch((e) =>
          log.warn({ guest: spec.name, err: asTrivisorError(e).message }, 'cannot apply limits.disk'),
        );
      const pools = createInformer<PoolRecord>({
        store,
        prefix: records.pool.prefix,
        decode: records.pool.decode,
        log,
        handlers: { onAdd: mountIt, onUpdate: mountIt, onDelete: removeIt },
      });
      const guests = createInformer<GuestSpec>({
        store,
        prefix: records.guest.prefix,
        decode: records.guest.decode,
        log,
        handlers: { onAdd: limit, onUpdate: limit },
      });
      informers.push(pools as Informer<unknown>, guests as Informer<unknown>);
      await pools.start();
      starting = false;
      await Promise.all(first);
      await removeLeftInstances();
      await guests.start();
    },
    stop() {
      for (const informer of informers.splice(0)) informer.stop();
    },
  };
}
