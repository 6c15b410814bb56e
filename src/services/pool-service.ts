import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import type { Logger } from '../host/logger.ts';
import {
  POOL_DRIVERS,
  type PoolDriver,
  type PoolDriverName,
  type PoolRecord,
  type PoolUsage,
  poolKeys,
} from '../storage/storage-pools.ts';
import type { KvStore } from '../store/kv.ts';

/** A pool as the API shows it: its record, where it is mounted and its space. */
export interface StoragePool extends PoolRecord {
  path: string;
  usage: PoolUsage | null;
  status: 'Created' | 'Unavailable';
  error?: string;
}

/** Body of `POST /1.0/storage-pools`. */
export interface CreatePoolRequest {
  name: string;
  driver: string;
  description?: string;
  config?: Record<string, string>;
}

/** Storage pools (`trivisor storage`), as in Incus's /1.0/storage-pools. */
export interface PoolService {
  list(): Promise<StoragePool[]>;
  get(name: string): Promise<StoragePool>;
  create(request: CreatePoolRequest): Promise<StoragePool>;
  delete(name: string): Promise<void>;
  /** Records the `default` dir pool on first start and mounts every pool again. */
  start(): Promise<void>;
}

/** The pool every guest lives on unless told otherwise: the state dir's own guests/ directory. */
export const DEFAULT_POOL = 'default';

export function createPoolService(deps: {
  store: KvStore;
  drivers: Record<PoolDriverName, PoolDriver>;
  log: Logger;
  stateDir: string;
}): PoolService {
  const { store, drivers } = deps;
  /** Pools being made or removed: no second change meanwhile. */
  const busy = new Set<string>();

  async function record(name: string): Promise<PoolRecord> {
    assertDnsLabel(name, 'pool name');
    const kv = await store.get(poolKeys.pool(name));
    if (!kv) throw notFound(`Storage pool ${name} not found`);
    return JSON.parse(kv.value) as PoolRecord;
  }

  async function show(pool: PoolRecord): Promise<StoragePool> {
    const driver = drivers[pool.driver];
    const path = pool.name === DEFAULT_POOL && pool.driver === 'dir' ? deps.stateDir : driver.mountPath(pool);
    try {
      const usage = await driver.usage({ ...pool, config: { ...pool.config, source: path } });
      return { ...pool, path, usage, status: 'Created' };
    } catch (e) {
      return { ...pool, path, usage: null, status: 'Unavailable', error: (e as Error).message };
    }
  }

  return {
    async list() {
      const { kvs } = await store.list(poolKeys.poolPrefix);
      return Promise.all(kvs.map((kv) => show(JSON.parse(kv.value) as PoolRecord)));
    },

    async get(name) {
      return show(await record(name));
    },

    async create(request) {
      assertDnsLabel(request.name, 'pool name');
      if (!POOL_DRIVERS.includes(request.driver as PoolDriverName)) {
        throw invalidArgument(`Unknown storage driver ${JSON.stringify(request.driver)}: use dir or btrfs`);
      }
      const pool: PoolRecord = {
        name: request.name,
        driver: request.driver as PoolDriverName,
        description: request.description ?? '',
        config: { ...(request.config ?? {}) },
        createdAt: new Date().toISOString(),
      };
      const driver = drivers[pool.driver];
      driver.validate(pool);
      if (busy.has(pool.name) || (await store.get(poolKeys.pool(pool.name)))) {
        throw alreadyExists(`Storage pool ${pool.name} already exists`);
      }
      busy.add(pool.name);
      try {
        await driver.create(pool);
        const r = await store.txn({
          compare: [{ key: poolKeys.pool(pool.name), target: 'createRevision', op: '=', value: 0 }],
          success: [{ type: 'put', key: poolKeys.pool(pool.name), value: JSON.stringify(pool) }],
        });
        if (!r.succeeded) {
          await driver.delete(pool);
          throw alreadyExists(`Storage pool ${pool.name} already exists`);
        }
      } finally {
        busy.delete(pool.name);
      }
      return show(pool);
    },

    async delete(name) {
      const pool = await record(name);
      if (name === DEFAULT_POOL)
        throw failedPrecondition('The default pool holds the guests directory: it cannot be deleted');
      if (busy.has(name)) throw failedPrecondition(`Storage pool ${name} is being changed: wait for that`);
      busy.add(name);
      try {
        await drivers[pool.driver].delete(pool);
        await store.delete(poolKeys.pool(name));
      } finally {
        busy.delete(name);
      }
    },

    async start() {
      if (!(await store.get(poolKeys.pool(DEFAULT_POOL)))) {
        const pool: PoolRecord = {
          name: DEFAULT_POOL,
          driver: 'dir',
          description: 'Guests under the state directory',
          config: {},
          createdAt: new Date().toISOString(),
        };
        await store.txn({
          compare: [{ key: poolKeys.pool(DEFAULT_POOL), target: 'createRevision', op: '=', value: 0 }],
          success: [{ type: 'put', key: poolKeys.pool(DEFAULT_POOL), value: JSON.stringify(pool) }],
        });
      }
      const { kvs } = await store.list(poolKeys.poolPrefix);
      for (const kv of kvs) {
        const pool = JSON.parse(kv.value) as PoolRecord;
        if (pool.name === DEFAULT_POOL) continue;
        await drivers[pool.driver]
          .mount(pool)
          .catch((e) => deps.log.warn({ pool: pool.name, err: String(e) }, 'cannot mount storage pool'));
      }
    },
  };
}
