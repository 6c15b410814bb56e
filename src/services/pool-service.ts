import {
  chmod,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DEFAULT_POOL, keepPoolRecord, POOL_RECORD_FILE } from '../control/pool-controller.ts';
import {
  alreadyExists,
  conflict,
  failedPrecondition,
  invalidArgument,
  isErrorCode,
  notFound,
  notSupported,
  TrivisorError,
} from '../core/errors.ts';
import { assertDnsLabel } from '../core/names.ts';
import { DEFAULT_PROJECT, projectOfRecord } from '../core/projects.ts';
import { parseBytes } from '../core/sizes.ts';
import type { GuestSpec, Operation } from '../core/types.ts';
import type { ImageHandle } from '../drivers/guest-driver.ts';
import type { Logger } from '../host/logger.ts';
import { refusesOverlayUpper } from '../host/overlay-upper.ts';
import { isOnBtrfs } from '../host/reflink.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { DISK_IMAGE_NAME } from '../images/disk-image.ts';
import { BASE_DISK_NAME } from '../images/guest-kit.ts';
import {
  createSharedBases,
  newSharedMarker,
  removeSharedStructure,
  SHARED_BASES_DIR,
  SHARED_MARKER_FILE,
  writeSharedMarker,
} from '../storage/shared-pools.ts';
import {
  POOL_DRIVERS,
  type PoolDriver,
  type PoolDriverName,
  type PoolRecord,
  type PoolUsage,
} from '../storage/storage-pools.ts';
import type { KvStore } from '../store/kv.ts';
import { type GuestPoolRecord, records, valuesOf } from '../store/records.ts';
import { type ClaimHolder, type Claims, createClaims, describeHolder } from './claims.ts';
import { moveMarkOf } from './move-marks.ts';
import type { CreateGuestRequest, EventBus, GuestService, OperationService } from './types.ts';

/** A pool as the API shows it: its record, where it is mounted and its space. */
export interface StoragePool extends PoolRecord {
  path: string;
  usage: PoolUsage | null;
  /**
   * A pool defined on every member (decision 0038) is Created once every member made its
   * instance, Errored when one failed, Pending while one has not yet.
   */
  status: 'Created' | 'Unavailable' | 'Pending' | 'Errored';
  error?: string;
  /** A pool defined on every member: each member's instance (its own space is this answer's `usage`). */
  members?: PoolMemberState[];
  /** Guests on the pool with their space (btrfs: from their subvolume's qgroup; dir: du of their directory). */
  guests?: PoolGuestUsage[];
}

/** One member's instance of a pool defined on every member. */
export interface PoolMemberState {
  name: string;
  status: 'Created' | 'Errored' | 'Pending';
  error?: string;
}

/** One guest's space on a pool. */
export interface PoolGuestUsage {
  name: string;
  /** Bytes its subvolume references (shared extents included); on a dir pool the blocks of its directory. */
  usedBytes: number | null;
  /** Bytes only it holds (what deleting it frees); null on a dir pool. */
  exclusiveBytes: number | null;
  limitBytes: number | null;
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
  /** `guests: false` leaves out each guest's space (a du or qgroup walk): the metrics read only the pool's. */
  list(options?: { guests?: boolean }): Promise<StoragePool[]>;
  get(name: string): Promise<StoragePool>;
  /**
   * On a cluster without `target`, the pool is defined on every member (decision 0038); with it
   * (or on a single host) it is this member's, as the API routed it here.
   */
  create(request: CreatePoolRequest, options?: { target?: string }): Promise<StoragePool>;
  delete(name: string): Promise<void>;
  /**
   * Creates a guest whose directory is a subvolume of a btrfs pool or a
   * directory of a dir pool (linked at guests/NAME); a ct guest's `limits.disk`
   * is its subvolume's qgroup limit.
   */
  createGuest(
    pool: string,
    request: CreateGuestRequest,
    options?: Parameters<GuestService['create']>[1],
  ): Promise<Operation>;
  /** Removes a deleted guest's subvolume or directory on its pool, and its placement record. */
  releaseGuest(name: string): Promise<void>;
  /** The pool a guest was placed on with createGuest; undefined for the default pool. */
  poolOf(guest: string): Promise<string | undefined>;
  /**
   * After `admin recover` rebuilt a guest's records: when guests/NAME links into
   * a pool, records that pool again (from the copy kept on it) if it was lost
   * and the guest's place on it. Returns the pool's name, undefined for the default pool.
   */
  recoverGuest(spec: GuestSpec): Promise<string | undefined>;
  /** The shared pool a guest lives on (decision 0049), or undefined. */
  sharedPoolOf(guest: string): Promise<PoolRecord | undefined>;
  /**
   * Before a guest located on this member is made or started: when it lives on a shared pool and
   * this member has no `guests/NAME` link yet (an HA restart, a hand-over), makes it. Idempotent;
   * nothing for any other guest.
   */
  adoptShared(spec: GuestSpec): Promise<void>;
  /**
   * Before a live move of a guest on a shared pool to this member (decision 0061), while the
   * guest is still another member's: links its directory here for the destination's QEMU and
   * keeps the link from the sweep of guests located elsewhere until the guest is handed over or
   * the move given up (`dropShared`). False, and nothing done, for a guest not on a shared pool.
   * Its host uid is not re-owned (the source's QEMU runs as it): refused in one line when another
   * guest of this member has it.
   */
  linkIncoming(spec: GuestSpec): Promise<boolean>;
  /**
   * The image as a guest on a shared pool must see it: its base disk the pool's copy (made once),
   * which every member's copy-on-write layer of the guest can name. Other guests: `image` as is.
   */
  imageFor(spec: GuestSpec, image: ImageHandle): Promise<ImageHandle>;
  /**
   * Drops this member's hold on a guest that lives on a shared pool and is no longer located
   * here: its `guests/NAME` link and its id range claim. The guest's files (the pool's) stay.
   */
  dropShared(name: string): Promise<void>;
  /**
   * At start: drops this member's links to guests on shared pools that are located elsewhere now
   * (an HA restart while this member was away) or gone; their files stay.
   */
  sweepSharedLinks(): Promise<string[]>;
  /**
   * Called for a guest located on another member: drops this member's link to it if the guest
   * lives on a shared pool (an HA restart elsewhere, a hand-over). One lstat when there is none.
   * Nothing while a move of the guest from this member has its mark: the move drops the link at
   * its end, and keeps it when its hand-over fails and the records come back.
   */
  releaseShared(name: string): Promise<void>;
}

// The default pool, the pool record copies and mounting are the pool controller's (src/control/).
export { DEFAULT_POOL, POOL_RECORD_FILE } from '../control/pool-controller.ts';

/**
 * Whether a pool asked for is shared (`shared=true`, decision 0049): one directory every member
 * sees at the same path, so only a dir pool with a source, and only on a cluster, without a
 * target. InvalidArgument in one line otherwise.
 */
export function sharedFlag(
  value: string | undefined,
  driver: string,
  source: string | undefined,
  where: { cluster: boolean; target: string | undefined },
): boolean {
  if (value === undefined || value === 'false') return false;
  if (value !== 'true') throw invalidArgument(`shared must be true or false, got ${JSON.stringify(value)}`);
  if (driver !== 'dir') {
    throw invalidArgument(
      `shared=true needs the dir driver (a directory every member mounts at the same path), not ${driver}`,
    );
  }
  if (source === undefined) {
    throw invalidArgument(
      'shared=true needs source=/path: the directory every member sees at that path (NFS or a cluster file system)',
    );
  }
  if (!where.cluster) {
    throw invalidArgument(
      'shared=true needs a cluster: a single host has no other member to share the pool with',
    );
  }
  if (where.target !== undefined) {
    throw invalidArgument(`A shared pool is every member's: leave out --target ${where.target}`);
  }
  return true;
}

export function createPoolService(deps: {
  store: KvStore;
  drivers: Record<PoolDriverName, PoolDriver>;
  log: Logger;
  stateDir: string;
  runner?: ProcessRunner;
  guests?: GuestService;
  operations?: OperationService;
  events?: EventBus;
  /** Why a pool cannot be deleted yet (it holds custom volumes), or undefined. */
  inUse?: (pool: string) => Promise<string | undefined>;
  /** Operation claims of this member (default: this service's own, over `store`). */
  claims?: Claims;
  hostName?: string;
  /** A cluster member's daemon: a pool created without a target is defined on every member. */
  cluster?: boolean;
  /** How long create and delete of a pool on every member wait for the members (default 60 s). */
  membersWaitMs?: number;
  /**
   * The host uids each model's guests run as on this member (decision 17, 19): a guest adopted
   * from a shared pool whose uid another guest here has gets a free one (its files follow).
   */
  uidBlocks?: Partial<Record<'vm' | 'pvm', { base: number; slots: number }>>;
}): PoolService {
  const { store, drivers } = deps;

  // One change of a pool at a time, whichever member asks: a claim in the store (decision 28).
  const member = deps.hostName ?? 'local';
  const claims = deps.claims ?? createClaims({ store, member });

  const run = (argv: string[]) => {
    if (!deps.runner) throw failedPrecondition('This daemon cannot place guests on pools');
    return deps.runner.run(argv);
  };
  const sharedBase = createSharedBases({ run: (argv) => run([...argv]) });

  /** The cluster's members (a single host: this one), by name. */
  async function memberNames(): Promise<string[]> {
    if (!deps.cluster) return [member];
    return (await records.member.list(store)).items.map((m) => records.member.nameOf(m.key)).sort();
  }

  /** The members whose heartbeat is on its lease (Online): those a pool's create and delete wait for. */
  async function onlineMembers(): Promise<string[]> {
    if (!deps.cluster) return [member];
    return (await records.memberHeartbeat.list(store)).items.map((m) =>
      records.memberHeartbeat.nameOf(m.key),
    );
  }

  /** Each member's instance of a pool defined on every member (decision 0038). */
  async function memberStates(pool: string): Promise<PoolMemberState[]> {
    const statuses = new Map(
      (await records.poolMemberStatus.list(store, pool)).items.map(
        (i) => [records.poolMemberStatus.nameOf(i.key).slice(pool.length + 1), i.value] as const,
      ),
    );
    return (await memberNames()).map((name): PoolMemberState => {
      const st = statuses.get(name);
      if (!st) return { name, status: 'Pending' };
      return { name, status: st.state, ...(st.error !== undefined && { error: st.error }) };
    });
  }

  /** Polls `done` until it holds or the members' wait is over (their controllers answer through the store). */
  async function waitForMembers(done: () => Promise<boolean>): Promise<void> {
    const until = Date.now() + (deps.membersWaitMs ?? 60_000);
    while (!(await done()) && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
  }

  async function sharedPoolOf(guest: string): Promise<PoolRecord | undefined> {
    const placed = await records.guestPool.at(guest).get(store);
    if (!placed) return undefined;
    const pool = (await records.pool.at(placed.value.pool).get(store))?.value;
    return pool?.shared ? pool : undefined;
  }

  /**
   * A vm or pvm guest's host uid is in its directory (`uid`, src/drivers/guest-uids.ts), handed
   * out by the member that made it. Adopted on a member where another guest of this member has
   * that uid, the guest gets the lowest free one of its model's block, and its files owned by the
   * old uid (a pvm guest's disk and run dirs) are given to the new one, before it is linked here.
   */
  async function ownUid(
    name: string,
    dir: string,
    block: { base: number; slots: number } | undefined,
  ): Promise<void> {
    if (!block) return;
    const file = join(dir, 'uid');
    const uid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(uid) || uid <= 0) return;
    const guestsDir = join(deps.stateDir, 'guests');
    const taken = new Set<number>();
    for (const other of await readdir(guestsDir).catch(() => [] as string[])) {
      if (other === name) continue;
      const text = await readFile(join(guestsDir, other, 'uid'), 'utf8').catch(() => '');
      if (text.trim() !== '') taken.add(Number(text.trim()));
    }
    if (!taken.has(uid)) return;
    let next = block.base;
    while (next < block.base + block.slots && taken.has(next)) next++;
    if (next >= block.base + block.slots) {
      throw failedPrecondition(
        `Guest ${name}'s host uid ${uid} is another guest's on ${member}, and no other is free: delete unused guests`,
      );
    }
    await run(['chown', '-R', '--from', String(uid), String(next), dir]);
    await run(['chown', '-R', '--from', `:${uid}`, `:${next}`, dir]);
    await writeFile(`${file}.tmp`, `${next}\n`, { mode: 0o644 });
    await rename(`${file}.tmp`, file);
    deps.log.info({ guest: name, from: uid, to: next }, "gave the adopted guest a host uid of this member's");
  }

  /** Guests on a shared pool coming here by a live move: linked, not yet handed over (decision 0061). */
  const incoming = new Set<string>();
  /** How many times linkIncoming linked each guest here: a release compares it before and after. */
  const linkEpochs = new Map<string, number>();
  const linkEpochOf = (name: string) => linkEpochs.get(name) ?? 0;

  /** Drops this member's link and id range claim of a guest on a shared pool (its files stay). */
  async function dropShared(name: string, since?: { epoch: number; target: string }): Promise<void> {
    // A release (`since`) never ends an incoming move: one begun after its check is not its to end.
    if (!since) incoming.delete(name);
    const link = join(deps.stateDir, 'guests', name);
    if ((await lstat(link).catch(() => undefined))?.isSymbolicLink()) await unlink(link).catch(() => {});
    if (since && linkEpochOf(name) !== since.epoch) {
      // A live move into this member linked the guest while the release read and unlinked: its
      // QEMU needs the link (its own symlink may have met the old one and kept it): put it back.
      await symlink(since.target, link).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
      return;
    }
    // A ct guest's id range claim here (src/drivers/ct/id-ranges.ts: idmap/SLOT -> NAME); its
    // idmap.json stays with its files, and the member it runs on claims a range of its own.
    const claimsDir = join(deps.stateDir, 'idmap');
    for (const slot of await readdir(claimsDir).catch(() => [] as string[])) {
      const holder = await readlink(join(claimsDir, slot)).catch(() => undefined);
      if (holder === name) await unlink(join(claimsDir, slot)).catch(() => {});
    }
  }

  /** Removes what createGuest made for a guest that is gone (or never came). */
  async function releaseGuest(name: string): Promise<void> {
    const found = await records.guestPool.at(name).get(store);
    if (!found) return;
    const rec = found.value;
    const link = join(deps.stateDir, 'guests', name);
    if ((await lstat(link).catch(() => undefined))?.isSymbolicLink()) await rm(link, { force: true });
    if (await lstat(rec.path).catch(() => undefined)) {
      if (await isOnBtrfs(rec.path)) {
        await run(['btrfs', 'subvolume', 'delete', rec.path]).catch(async () => {
          await rm(rec.path, { recursive: true, force: true });
        });
      } else {
        await rm(rec.path, { recursive: true, force: true });
      }
    }
    await store.delete(found.key);
  }

  /**
   * The pool whose root is `root`, from the copy of its record kept there, or,
   * for a pool made before those copies, from where it is: a loop-file btrfs
   * pool (mounted again if it is not) or a dir pool.
   */
  async function poolAt(root: string): Promise<PoolRecord | undefined> {
    const read = async (): Promise<PoolRecord | null> => {
      const file = join(root, POOL_RECORD_FILE);
      const text = await readFile(file, 'utf8').catch(() => undefined);
      if (text === undefined) return null;
      try {
        return records.pool.check(JSON.parse(text), file);
      } catch {
        return null;
      }
    };
    const poolsDir = join(deps.stateDir, 'storage-pools');
    const name = root.startsWith(`${poolsDir}/`) ? root.slice(poolsDir.length + 1) : undefined;
    const loopFile =
      name !== undefined && (await lstat(join(poolsDir, `${name}.img`)).catch(() => undefined));
    if (name !== undefined && loopFile) {
      const guess: PoolRecord = {
        name,
        driver: 'btrfs',
        description: '',
        config: {},
        createdAt: new Date().toISOString(),
      };
      await drivers.btrfs.mount(guess).catch(() => {});
      return (await read()) ?? guess;
    }
    const kept = await read();
    if (kept || name === undefined || !(await lstat(root).catch(() => undefined))) return kept ?? undefined;
    return {
      name,
      driver: (await isOnBtrfs(root)) ? 'btrfs' : 'dir',
      description: '',
      config: {},
      createdAt: new Date().toISOString(),
    };
  }

  async function record(name: string): Promise<PoolRecord> {
    assertDnsLabel(name, 'pool name');
    const found = await records.pool.at(name).get(store);
    if (!found) throw notFound(`Storage pool ${name} not found`);
    return found.value;
  }

  const poolBusy = (name: string, action: string) => ({
    action,
    busy: (h: ClaimHolder) =>
      conflict(`Storage pool ${name} is being changed (${describeHolder(h)}): wait for that`),
  });

  /**
   * Space of the guests on a dir pool: the allocated blocks of each guest's
   * directory (`du -x`: a running ct guest's mounted root file system is another
   * file system and not counted; sparse disks count what they hold), in one `du`
   * for the whole pool. The default pool holds every guest without a pool record.
   */
  async function guestsOnDir(pool: PoolRecord): Promise<PoolGuestUsage[]> {
    const placed = (await records.guestPool.list(store)).items
      .filter((p) => onThisMember(p.value))
      .map((p) => [records.guestPool.nameOf(p.key), p.value] as const);
    const dirs = new Map<string, string>();
    if (pool.name === DEFAULT_POOL) {
      const elsewhere = new Set(placed.map(([name]) => name));
      for (const kv of (await store.list(records.guest.prefix)).kvs) {
        const name = records.guest.nameOf(kv.key);
        if (!elsewhere.has(name)) dirs.set(name, join(deps.stateDir, 'guests', name));
      }
    } else {
      for (const [name, rec] of placed) if (rec.pool === pool.name) dirs.set(name, rec.path);
    }
    const used = new Map<string, number>();
    if (dirs.size > 0 && deps.runner) {
      const r = await deps.runner
        .run(['du', '-s', '-x', '-B1', '--', ...dirs.values()], { allowFailure: true })
        .catch(() => undefined);
      for (const line of r?.stdout.split('\n') ?? []) {
        const m = /^(\d+)\t(.+)$/.exec(line);
        if (m?.[1] !== undefined && m[2] !== undefined) used.set(m[2], Number(m[1]));
      }
    }
    return [...dirs]
      .map(([name, dir]) => ({
        name,
        usedBytes: used.get(dir) ?? null,
        exclusiveBytes: null,
        limitBytes: null,
      }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** A pool defined on every member holds each member's guests on its instance: only this one's are measured here. */
  const onThisMember = (rec: GuestPoolRecord) => rec.location === undefined || rec.location === member;

  /** Space of the guests placed on a btrfs pool, from their qgroups. */
  async function guestsOn(pool: PoolRecord): Promise<PoolGuestUsage[]> {
    if (pool.driver === 'dir') return guestsOnDir(pool);
    const out: PoolGuestUsage[] = [];
    for (const { key, value: rec } of (await records.guestPool.list(store)).items) {
      if (rec.pool !== pool.name || !onThisMember(rec)) continue;
      const name = records.guestPool.nameOf(key);
      const shown = await deps.runner
        ?.run(['btrfs', 'qgroup', 'show', '--raw', '-f', rec.path], { allowFailure: true })
        .catch(() => undefined);
      // The last line is the subvolume's own qgroup: "0/257  referenced  exclusive  path".
      const fields =
        shown?.code === 0 ? (shown.stdout.trim().split('\n').pop() ?? '').trim().split(/\s+/) : [];
      const num = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : null);
      out.push({
        name,
        usedBytes: num(fields[1]),
        exclusiveBytes: num(fields[2]),
        limitBytes: rec.limitBytes,
      });
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async function show(pool: PoolRecord, options: { guests?: boolean } = {}): Promise<StoragePool> {
    const driver = drivers[pool.driver];
    const path = pool.name === DEFAULT_POOL && pool.driver === 'dir' ? deps.stateDir : driver.mountPath(pool);
    if (pool.everyMember) {
      // This member's instance (another's: ?target=, answered there) and every member's state.
      const members = await memberStates(pool.name);
      const status = members.some((m) => m.status === 'Errored')
        ? 'Errored'
        : members.every((m) => m.status === 'Created')
          ? 'Created'
          : 'Pending';
      const own = members.find((m) => m.name === member);
      const base = { ...pool, path, status, members } as const;
      if (own?.status !== 'Created') return { ...base, usage: null };
      try {
        const usage = await driver.usage(pool);
        if (options.guests === false) return { ...base, usage };
        return { ...base, usage, guests: await guestsOn(pool) };
      } catch (e) {
        return { ...base, usage: null, error: (e as Error).message };
      }
    }
    // Another member's pool: its space is on that member (GET of the pool is answered there).
    if (pool.name !== DEFAULT_POOL && pool.location !== undefined && pool.location !== member) {
      return { ...pool, path, usage: null, status: 'Created' };
    }
    try {
      const usage = await driver.usage({ ...pool, config: { ...pool.config, source: path } });
      if (options.guests === false) return { ...pool, path, usage, status: 'Created' };
      return { ...pool, path, usage, status: 'Created', guests: await guestsOn(pool) };
    } catch (e) {
      return { ...pool, path, usage: null, status: 'Unavailable', error: (e as Error).message };
    }
  }

  return {
    releaseGuest,

    async list(options) {
      return Promise.all(valuesOf(await records.pool.list(store)).map((pool) => show(pool, options)));
    },

    async get(name) {
      return show(await record(name));
    },

    async create(request, options = {}) {
      assertDnsLabel(request.name, 'pool name');
      // On a cluster a pool asked for without a member is every member's (decision 0038).
      const everyMember = deps.cluster === true && options.target === undefined;
      if (!POOL_DRIVERS.includes(request.driver as PoolDriverName)) {
        throw invalidArgument(`Unknown storage driver ${JSON.stringify(request.driver)}: use dir or btrfs`);
      }
      const { shared: sharedValue, ...config } = request.config ?? {};
      const shared = sharedFlag(sharedValue, request.driver, config.source, {
        cluster: deps.cluster === true,
        target: options.target,
      });
      const pool: PoolRecord = {
        name: request.name,
        driver: request.driver as PoolDriverName,
        description: request.description ?? '',
        config,
        createdAt: new Date().toISOString(),
        ...(everyMember ? { everyMember: true } : { location: member }),
        ...(shared && { shared: true, marker: newSharedMarker() }),
      };
      const driver = drivers[pool.driver];
      driver.validate(pool);
      if (shared) {
        const taken = valuesOf(await records.pool.list(store)).find(
          (p) => p.config.source !== undefined && p.config.source === pool.config.source,
        );
        if (taken) {
          throw conflict(
            `Storage pool ${taken.name} has source ${pool.config.source} already: pick another directory`,
          );
        }
      }
      if (everyMember && !shared && pool.config.source !== undefined) {
        throw invalidArgument(
          "A pool on every member makes its own file system under each member's state directory: leave out source, or give --target MEMBER for a pool on that member's source",
        );
      }
      const exists = () => alreadyExists(`Storage pool ${pool.name} already exists`);
      const ref = records.pool.at(pool.name);
      if (await store.get(ref.key)) throw exists();
      const creating = {
        action: 'create',
        busy: (h: ClaimHolder) =>
          alreadyExists(
            `Storage pool ${pool.name} is being created (${describeHolder(h)}): pick another name`,
          ),
      };
      await claims.holding('pool', pool.name, creating, async () => {
        // Checked again under the claim: another member may have made it since the check above.
        if (await store.get(ref.key)) throw exists();
        if (shared) {
          // The marker first: every member's controller proves it sees this directory by reading it.
          const root = pool.config.source ?? '';
          await writeSharedMarker(root, pool.marker ?? '');
          const r = await store.txn({ compare: [ref.absent()], success: [ref.putOp(pool)] });
          if (!r.succeeded) {
            await rm(join(root, SHARED_MARKER_FILE), { force: true });
            throw exists();
          }
          return;
        }
        if (everyMember) {
          // Each member's pool controller makes its own instance (this one's too) and says so.
          const r = await store.txn({ compare: [ref.absent()], success: [ref.putOp(pool)] });
          if (!r.succeeded) throw exists();
          return;
        }
        await driver.create(pool);
        const r = await store.txn({ compare: [ref.absent()], success: [ref.putOp(pool)] });
        if (!r.succeeded) {
          await driver.delete(pool);
          throw exists();
        }
        await keepPoolRecord(pool, drivers).catch((e) =>
          deps.log.warn({ pool: pool.name, err: String(e) }, 'cannot keep a copy of the pool record'),
        );
      });
      if (everyMember) {
        // Answered once every Online member made its instance (or failed to), as far as the wait goes.
        await waitForMembers(async () => {
          const made = new Set(
            (await records.poolMemberStatus.list(store, pool.name)).items.map((i) =>
              records.poolMemberStatus.nameOf(i.key).slice(pool.name.length + 1),
            ),
          );
          return (await onlineMembers()).every((m) => made.has(m));
        });
      }
      return show(pool);
    },

    async delete(name) {
      const pool = await record(name);
      if (name === DEFAULT_POOL)
        throw failedPrecondition('The default pool holds the guests directory: it cannot be deleted');
      const assertEmpty = async () => {
        const used = await deps.inUse?.(name);
        if (used !== undefined) throw failedPrecondition(used);
        const held = (await records.guestPool.list(store)).items
          .filter((p) => p.value.pool === name)
          .map((p) => records.guestPool.nameOf(p.key));
        if (held.length > 0) {
          throw failedPrecondition(
            `Storage pool ${name} holds guests ${held.join(', ')}: delete them or copy them to another pool first`,
          );
        }
      };
      // Refused before the claim (a refused request writes nothing), and checked again under it.
      await assertEmpty();
      await claims.holding('pool', name, poolBusy(name, 'delete'), async () => {
        await assertEmpty();
        // A pool on every member: each member's controller removes its instance once the record is gone.
        if (!pool.everyMember) await drivers[pool.driver].delete(pool);
        // A shared pool's directory is one for all: what Trivisor made there goes once, here.
        if (pool.shared) await removeSharedStructure(pool, POOL_RECORD_FILE);
        await store.delete(records.pool.key(name));
      });
      if (pool.everyMember) {
        await waitForMembers(async () => {
          const online = new Set(await onlineMembers());
          return (await records.poolMemberStatus.list(store, name)).items.every(
            (i) => !online.has(records.poolMemberStatus.nameOf(i.key).slice(name.length + 1)),
          );
        });
      }
    },

    async createGuest(poolName, request, options) {
      const pool = await record(poolName);
      assertDnsLabel(request.name, 'guest name');
      const { guests, operations } = deps;
      if (!guests || !operations) throw failedPrecondition('This daemon cannot place guests on pools');
      const model = request.model ?? 'ct';
      if (pool.everyMember) {
        const own = (await records.poolMemberStatus.at(poolName, member).get(store))?.value;
        if (own?.state !== 'Created') {
          throw failedPrecondition(
            `Storage pool ${poolName} is not made on ${member}${own?.error ? ` (${own.error})` : ' yet'}: see trivisor storage info ${poolName}`,
          );
        }
      }
      // A pool's guests live where the pool is: this member (pools are per member, decision 0033).
      if (request.target !== undefined && request.target !== member) {
        throw failedPrecondition(
          `Storage pool ${poolName} is on ${member}, not ${request.target}: leave out --target or pick a pool of ${request.target}`,
        );
      }
      // On a network file system a ct guest's layer is an image, which limits.disk sizes (decision 0094).
      const layerImage =
        model === 'ct' &&
        pool.driver !== 'btrfs' &&
        refusesOverlayUpper(drivers[pool.driver].mountPath(pool));
      if (
        model === 'ct' &&
        pool.driver !== 'btrfs' &&
        !layerImage &&
        request.config?.['limits.disk'] !== undefined
      ) {
        throw notSupported(
          `limits.disk needs a btrfs storage pool; ${poolName} is a ${pool.driver} pool on a local file system: pick a btrfs pool (or one on NFS) or remove the key.`,
        );
      }
      const taken = await records.guest.at(request.name).get(store);
      if (taken) {
        // Names are the host's (decision 21): another project's guest is named as such, and no more.
        const other = projectOfRecord(taken.value) !== (request.project ?? DEFAULT_PROJECT);
        throw alreadyExists(
          other
            ? `The name ${request.name} is taken by a guest of another project: guest names are unique on this host, pick another`
            : `Guest ${request.name} already exists`,
        );
      }
      const link = join(deps.stateDir, 'guests', request.name);
      if (await lstat(link).catch(() => undefined)) {
        throw conflict(`${link} exists from an earlier guest: delete it or pick another name`);
      }
      if (request.config?.['limits.disk'] !== undefined)
        parseBytes(request.config['limits.disk'], 'limits.disk');
      const parent = join(drivers[pool.driver].mountPath(pool), 'guests');
      const path = join(parent, request.name);
      // The placement is recorded first, if no other create placed the name meanwhile: two creates of
      // one name on two pools do not both make a subvolume, and the loser releases nothing of the winner's.
      const rec: GuestPoolRecord = { pool: poolName, path, limitBytes: null, location: member };
      const placement = records.guestPool.at(request.name);
      const placed = await store.txn({ compare: [placement.absent()], success: [placement.putOp(rec)] });
      if (!placed.succeeded) throw alreadyExists(`Guest ${request.name} is being created already`);
      let op: Operation;
      try {
        await mkdir(parent, { recursive: true, mode: 0o711 });
        if (pool.driver === 'btrfs') await run(['btrfs', 'subvolume', 'create', path]);
        else await mkdir(path, { mode: 0o711 });
        // The mode each driver gives the directory it makes: runc walks to rootfs/ from inside
        // the guest's user namespace (search permission only); QEMU's disk and sockets are root's
        // alone; a pvm guest's uid reaches its own subdirectories.
        await chmod(path, model === 'vm' ? 0o700 : model === 'pvm' ? 0o755 : 0o711);
        await mkdir(join(deps.stateDir, 'guests'), { recursive: true, mode: 0o711 });
        await symlink(path, link);
        const limit = request.config?.['limits.disk'];
        if (limit !== undefined && model === 'ct' && pool.driver === 'btrfs') {
          const limitBytes = parseBytes(limit, 'limits.disk');
          await run(['btrfs', 'qgroup', 'limit', String(limitBytes), path]);
          await placement.put(store, { ...rec, limitBytes });
        } else if (limit !== undefined && layerImage) {
          await placement.put(store, { ...rec, limitBytes: parseBytes(limit, 'limits.disk') });
        }
        op = await guests.create(
          { ...request, ...(deps.hostName !== undefined && { target: deps.hostName }) },
          options,
        );
      } catch (e) {
        await releaseGuest(request.name);
        throw e;
      }
      return operations.start({
        description: `${op.description} on storage pool ${poolName}`,
        resources: {
          guests: [`/1.0/guests/${request.name}`],
          storage_pools: [`/1.0/storage-pools/${poolName}`],
        },
        async run() {
          const end = await operations.wait(op.id);
          if (end.status !== 'Success') {
            // The guest service deleted the half-made guest; its subvolume goes with it.
            await releaseGuest(request.name).catch(() => {});
            const code = isErrorCode(end.metadata.errorCode) ? end.metadata.errorCode : 'Internal';
            throw new TrivisorError(code, end.error ?? `${end.description} ended ${end.status}`);
          }
          return undefined;
        },
      });
    },

    sharedPoolOf,

    async adoptShared(spec) {
      if (spec.location !== member || spec.deleting) return;
      incoming.delete(spec.name);
      // Every reconcile asks: a guest whose directory (or link) is here costs one lstat, no store read.
      const link = join(deps.stateDir, 'guests', spec.name);
      if (await lstat(link).catch(() => undefined)) return;
      const placed = await records.guestPool.at(spec.name).get(store);
      if (!placed) return;
      const pool = (await records.pool.at(placed.value.pool).get(store))?.value;
      if (!pool?.shared) return;
      const own = (await records.poolMemberStatus.at(pool.name, member).get(store))?.value;
      if (own?.state !== 'Created') {
        throw failedPrecondition(
          `Guest ${spec.name} lives on shared pool ${pool.name}, which ${member} does not see${own?.error ? ` (${own.error})` : ' yet'}: see trivisor storage info ${pool.name}`,
        );
      }
      const path = placed.value.path;
      if (!(await lstat(path).catch(() => undefined))?.isDirectory()) {
        throw failedPrecondition(
          `Guest ${spec.name}'s directory ${path} is not on shared pool ${pool.name} as ${member} sees it: check the pool's mount`,
        );
      }
      if (spec.model === 'vm' || spec.model === 'pvm')
        await ownUid(spec.name, path, deps.uidBlocks?.[spec.model]);
      await mkdir(join(deps.stateDir, 'guests'), { recursive: true, mode: 0o711 });
      await symlink(path, link).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
      deps.log.info({ guest: spec.name, pool: pool.name }, 'linked the guest on the shared pool here');
      if (placed.value.location !== member) {
        // Its placement names its member, for the pool's per-member usage; compared, as a write may race.
        await records.guestPool
          .at(spec.name)
          .put(store, { ...placed.value, location: member }, { ifModRevision: placed.modRevision })
          .catch(() => {});
      }
    },

    async linkIncoming(spec) {
      const placed = await records.guestPool.at(spec.name).get(store);
      const pool = placed && (await records.pool.at(placed.value.pool).get(store))?.value;
      if (!placed || !pool?.shared) return false;
      const own = (await records.poolMemberStatus.at(pool.name, member).get(store))?.value;
      if (own?.state !== 'Created') {
        throw failedPrecondition(
          `Guest ${spec.name} lives on shared pool ${pool.name}, which ${member} does not see${own?.error ? ` (${own.error})` : ' yet'}: see trivisor storage info ${pool.name}`,
        );
      }
      const path = placed.value.path;
      if (!(await lstat(path).catch(() => undefined))?.isDirectory()) {
        throw failedPrecondition(
          `Guest ${spec.name}'s directory ${path} is not on shared pool ${pool.name} as ${member} sees it: check the pool's mount`,
        );
      }
      const uid = (await readFile(join(path, 'uid'), 'utf8').catch(() => '')).trim();
      const guestsDir = join(deps.stateDir, 'guests');
      for (const other of await readdir(guestsDir).catch(() => [] as string[])) {
        if (other === spec.name || uid === '') continue;
        if ((await readFile(join(guestsDir, other, 'uid'), 'utf8').catch(() => '')).trim() === uid) {
          throw failedPrecondition(
            `Guest ${spec.name}'s host uid ${uid} is guest ${other}'s on ${member}, and a live move cannot give it another while it runs: move it without --live`,
          );
        }
      }
      incoming.add(spec.name);
      linkEpochs.set(spec.name, linkEpochOf(spec.name) + 1);
      await mkdir(guestsDir, { recursive: true, mode: 0o711 });
      const link = join(guestsDir, spec.name);
      await symlink(path, link).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
      return true;
    },

    async imageFor(spec, image) {
      if (spec.model === 'ct' || image.blank) return image;
      const pool = await sharedPoolOf(spec.name);
      if (!pool) return image;
      const fingerprint = image.record.fingerprint;
      // The copy another member published is used as it is: an HA restart here need not build
      // this member's own base disk of the image first (mkfs.ext4 of its whole tree).
      const name = image.record.type === 'disk' ? DISK_IMAGE_NAME : BASE_DISK_NAME;
      const published = join(pool.config.source ?? '', SHARED_BASES_DIR, `${fingerprint}-${name}`);
      return {
        ...image,
        baseDisk: async () =>
          (await lstat(published).catch(() => undefined))?.isFile()
            ? published
            : sharedBase(pool, fingerprint, await image.baseDisk()),
      };
    },

    dropShared,

    async releaseShared(name) {
      // Coming here by a live move: the records still name the source until the hand-over.
      if (incoming.has(name)) return;
      // A live move into this member may begin while this reads (a guest moved away and straight
      // back): linkIncoming counts its links, and a release that saw none drops nothing of it.
      const epoch = linkEpochOf(name);
      const link = join(deps.stateDir, 'guests', name);
      if (!(await lstat(link).catch(() => undefined))?.isSymbolicLink()) return;
      const spec = (await records.guest.at(name).get(store))?.value;
      if (spec?.location === member) return;
      // A move of the guest from this member is not over until its mark goes: its mover drops the
      // link itself at its end (or its journal's resume does), and a hand-over that fails after
      // the records named the destination gives them back here, where the guest then runs on
      // and needs its link (decision 0042, issue 13).
      if ((await moveMarkOf(store, name))?.from === member) return;
      const target = await readlink(link).catch(() => undefined);
      const shared = valuesOf(await records.pool.list(store)).some(
        (p) => p.shared && target !== undefined && dirname(target) === join(p.config.source ?? '', 'guests'),
      );
      if (!shared || target === undefined) return;
      if (incoming.has(name) || linkEpochOf(name) !== epoch) return;
      await dropShared(name, { epoch, target });
      if (linkEpochOf(name) !== epoch) return;
      deps.log.info(
        { guest: name, location: spec?.location },
        "dropped the link of a shared pool's guest that runs elsewhere",
      );
    },

    async sweepSharedLinks() {
      const roots = valuesOf(await records.pool.list(store))
        .filter((p) => p.shared && p.config.source !== undefined)
        .map((p) => join(p.config.source ?? '', 'guests'));
      if (roots.length === 0) return [];
      const dropped: string[] = [];
      const guestsDir = join(deps.stateDir, 'guests');
      for (const name of await readdir(guestsDir).catch(() => [] as string[])) {
        const target = await readlink(join(guestsDir, name)).catch(() => undefined);
        if (target === undefined || !roots.some((r) => dirname(target) === r)) continue;
        const spec = (await records.guest.at(name).get(store))?.value;
        if (spec?.location === member) continue;
        await dropShared(name);
        dropped.push(name);
      }
      if (dropped.length > 0)
        deps.log.info({ guests: dropped }, 'dropped the links of guests on shared pools that run elsewhere');
      return dropped;
    },

    async poolOf(guest) {
      return (await records.guestPool.at(guest).get(store))?.value.pool;
    },

    async recoverGuest(spec) {
      const link = join(deps.stateDir, 'guests', spec.name);
      if (!(await lstat(link).catch(() => undefined))?.isSymbolicLink()) return undefined;
      const path = await readlink(link);
      // createGuest links guests/NAME to POOL/guests/NAME.
      const pool = await poolAt(dirname(dirname(path)));
      if (!pool) {
        throw failedPrecondition(
          `The storage pool that holds ${path} cannot be found: mount it and recover again`,
        );
      }
      await store.txn({
        compare: [records.pool.at(pool.name).absent()],
        // A pool on every member (a shared one too) has no member of its own.
        success: [records.pool.at(pool.name).putOp(pool.everyMember ? pool : { ...pool, location: member })],
      });
      // A qgroup limit lives in the file system: it is still the one limits.disk set.
      const raw = spec.config['limits.disk'];
      const limited = spec.model === 'ct' && pool.driver === 'btrfs' && raw !== undefined;
      const rec: GuestPoolRecord = {
        pool: pool.name,
        path,
        limitBytes: limited ? parseBytes(raw, 'limits.disk') : null,
        location: member,
      };
      await records.guestPool.at(spec.name).put(store, rec);
      return pool.name;
    },
  };
}
