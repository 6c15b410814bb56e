import { join } from 'node:path';
import {
  asTrivisorError,
  conflict,
  failedPrecondition,
  notFound,
  notSupported,
  type TrivisorError,
} from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import type { GuestSpec, GuestStatus, Operation } from '../core/types.ts';
import type { GuestStorage } from '../drivers/guest-storage.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import { records } from '../store/records.ts';
import { type ClaimHolder, createClaims, describeHolder } from './claims.ts';
import { succeeded } from './operation-service.ts';
import { DEFAULT_POOL } from './pool-service.ts';
import type { StorageService, StorageServiceDeps } from './storage-service.ts';
import type { GuestService, OperationService } from './types.ts';

/** What every part of the storage service shares: its dependencies and the helpers over them. */
export type StorageContext = ReturnType<typeof createStorageContext>;

/** One project's view of the service, as the parts of `createStorageService` see it. */
export interface StorageView {
  ctx: StorageContext;
  /** The project whose guests are seen; undefined is the host's view. */
  scope: string | undefined;
  /** Another project's guest is NotFound, as one that does not exist. */
  load(name: string): Promise<{ spec: GuestSpec; status: GuestStatus | undefined }>;
  /** The whole service of this view, for one part calling another's method. */
  self(): StorageService;
}

export function createStorageContext(deps: StorageServiceDeps) {
  const { store, operations, guests, runner } = deps;
  const backupsDir = join(deps.stateDir, 'backups');
  const importsDir = join(deps.stateDir, 'imports');
  // One storage action at a time per guest, whichever member asks: a claim in the store (decision 28).
  const claims = deps.claims ?? createClaims({ store, member: deps.hostName ?? 'local' });
  const guestBusy = (guest: string) => ({
    action: 'storage',
    busy: (h: ClaimHolder) =>
      conflict(`Guest ${guest} has a snapshot, copy or backup under way (${describeHolder(h)}): wait for it`),
  });

  async function loadAny(name: string): Promise<{ spec: GuestSpec; status: GuestStatus | undefined }> {
    assertDnsLabel(name, 'guest name');
    const [s, st] = await Promise.all([
      records.guest.at(name).get(store),
      records.guestStatus.at(name).get(store),
    ]);
    if (!s) throw notFound(`Guest ${name} not found`);
    if (s.value.deleting) throw conflict(`Guest ${name} is being deleted`);
    return { spec: s.value, status: st?.value };
  }

  const storageFor = (spec: GuestSpec): GuestStorage => {
    const s = deps.storage[spec.model];
    if (!s)
      throw notSupported(`Snapshots, copies and backups are not supported for ${spec.model} guests yet`);
    return s;
  };

  const assertProvisioned = (spec: GuestSpec, status: GuestStatus | undefined) => {
    if (!status?.provisioned) {
      throw conflict(`Guest ${spec.name} is still being created: wait for its operation to finish`);
    }
  };

  async function readSnapshot(guest: string, snapshot: string): Promise<SnapshotRecord | undefined> {
    return (await records.snapshot.at(guest, snapshot).get(store))?.value;
  }

  /**
   * Runs `work` as an operation holding the guest's storage claim: taken before the operation
   * starts (a second action is a 409 at once), released when it ends.
   */
  async function exclusive(
    guest: string,
    description: string,
    work: Parameters<OperationService['start']>[0]['run'],
    extra: { project: string; mayCancel?: boolean; resources?: Record<string, string[]> },
  ): Promise<Operation> {
    const held = await claims.acquire('guest', guest, guestBusy(guest));
    try {
      return operations.start({
        project: extra.project,
        description,
        resources: extra.resources ?? { guests: [`/1.0/guests/${guest}`] },
        mayCancel: extra.mayCancel ?? false,
        async run(ctx) {
          try {
            return await work(ctx);
          } finally {
            await held.release().catch(() => {});
          }
        },
      });
    } catch (e) {
      await held.release().catch(() => {});
      throw e;
    }
  }

  /** Waits for an operation started by another service; throws its error when it failed. */
  async function finished(op: Operation): Promise<void> {
    await succeeded(operations, op);
  }

  const guestUp = (status: GuestStatus | undefined) =>
    status?.status === 'Running' || status?.status === 'Frozen';

  /** Creates a guest on `pool` (the default pool when undefined or "default"). */
  /**
   * Creates the guest a copy or an import fills: on this member, whose disks its files are made
   * on (decision 0034), never where the scheduler would put a new guest.
   */
  async function createOn(
    pool: string | undefined,
    request: Parameters<GuestService['create']>[0],
    options?: Parameters<GuestService['create']>[1],
  ) {
    if (pool === undefined || pool === DEFAULT_POOL)
      return guests.create(
        { ...request, ...(deps.hostName !== undefined && { target: deps.hostName }) },
        options,
      );
    const pools = deps.pools?.();
    if (!pools) throw notSupported('This daemon has no storage pools: leave out the storage pool');
    return pools.createGuest(pool, request, options);
  }

  /** Fails early, before any work, on a pool that does not exist. */
  async function checkPool(pool: string | undefined): Promise<void> {
    if (pool === undefined || pool === DEFAULT_POOL) return;
    const pools = deps.pools?.();
    if (!pools) throw notSupported('This daemon has no storage pools: leave out the storage pool');
    await pools.get(pool);
  }

  /** Deletes a guest made by a failed copy or import, with its records. */
  async function discard(name: string): Promise<void> {
    const op = await guests.delete(name, { force: true }).catch(() => undefined);
    if (op) await operations.wait(op.id).catch(() => {});
    await store.delete(keys.snapshots(name), { prefix: true }).catch(() => {});
  }

  const guestsDir = join(deps.stateDir, 'guests');

  return {
    deps,
    store,
    operations,
    guests,
    runner,
    backupsDir,
    importsDir,
    guestsDir,
    claims,
    guestBusy,
    loadAny,
    storageFor,
    assertProvisioned,
    readSnapshot,
    exclusive,
    finished,
    guestUp,
    createOn,
    checkPool,
    discard,
  };
}

/** Turns ENOSPC (from Node or from tar/cp output) into a clear FailedPrecondition. */
export function diskFull(e: unknown, what: string): TrivisorError {
  const err = asTrivisorError(e);
  const text = `${err.message} ${(e as { stderr?: string }).stderr ?? ''} ${(e as { code?: string }).code ?? ''}`;
  // GNU tar reports a short write ("Wrote only 8192 of 10240 bytes") rather than ENOSPC.
  if (/ENOSPC|No space left on device|Wrote only \d+ of \d+ bytes/i.test(text)) {
    return failedPrecondition(`${what}: the disk is full; free some space and try again`);
  }
  return err;
}
