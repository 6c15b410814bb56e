import { alreadyExists, notFound } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import { records, valuesOf } from '../store/records.ts';
import { diskFull, type StorageView } from './storage-context.ts';
import type { StorageService } from './storage-service.ts';

/** Snapshots of a guest: list, read, take, delete, restore. */
export function snapshotMethods(
  view: StorageView,
): Pick<
  StorageService,
  'listSnapshots' | 'getSnapshot' | 'createSnapshot' | 'deleteSnapshot' | 'restoreSnapshot'
> {
  const { store, guests, storageFor, assertProvisioned, readSnapshot, exclusive, finished, guestUp } =
    view.ctx;
  const { load } = view;
  return {
    async listSnapshots(guest) {
      await load(guest);
      return valuesOf(await records.snapshot.list(store, guest)).sort((a, b) =>
        a.createdAt.localeCompare(b.createdAt),
      );
    },

    async getSnapshot(guest, snapshot) {
      await load(guest);
      assertDnsLabel(snapshot, 'snapshot name');
      const record = await readSnapshot(guest, snapshot);
      if (!record) throw notFound(`Guest ${guest} has no snapshot ${snapshot}`);
      return record;
    },

    async createSnapshot(guest, snapshot, options = {}) {
      const { spec, status } = await load(guest);
      assertDnsLabel(snapshot, 'snapshot name');
      const storage = storageFor(spec);
      assertProvisioned(spec, status);
      if (await readSnapshot(guest, snapshot)) {
        throw alreadyExists(`Guest ${guest} already has a snapshot ${snapshot}: pick another name`);
      }
      const own = { project: projectOfRecord(spec) };
      return exclusive(
        guest,
        `Snapshotting guest ${guest} as ${snapshot}`,
        async () => {
          const record: SnapshotRecord = {
            name: snapshot,
            guest,
            createdAt: new Date().toISOString(),
            wasRunning: guestUp(status),
            location: spec.location,
            ...(options.expiresAt !== undefined && { expiresAt: options.expiresAt }),
          };
          await storage.snapshot(spec, snapshot).catch((e: unknown) => {
            throw diskFull(e, `Cannot snapshot guest ${guest} as ${snapshot}`);
          });
          const ref = records.snapshot.at(guest, snapshot);
          const r = await store.txn({ compare: [ref.absent()], success: [ref.putOp(record)] });
          if (!r.succeeded) {
            await storage.deleteSnapshot(spec, snapshot);
            throw alreadyExists(`Guest ${guest} already has a snapshot ${snapshot}: pick another name`);
          }
          return { snapshot: record };
        },
        own,
      );
    },

    async deleteSnapshot(guest, snapshot) {
      const record = await view.self().getSnapshot(guest, snapshot);
      const { spec } = await load(guest);
      const storage = storageFor(spec);
      return exclusive(
        guest,
        `Deleting snapshot ${snapshot} of guest ${guest}`,
        async () => {
          // Record first: a crash in between leaves a directory that sweep() removes, never a dangling record.
          await store.delete(keys.snapshot(guest, record.name));
          await storage.deleteSnapshot(spec, record.name);
          return undefined;
        },
        { project: projectOfRecord(spec) },
      );
    },

    async restoreSnapshot(guest, snapshot) {
      await view.self().getSnapshot(guest, snapshot);
      const { spec, status } = await load(guest);
      const storage = storageFor(spec);
      assertProvisioned(spec, status);
      return exclusive(
        guest,
        `Restoring guest ${guest} to snapshot ${snapshot}`,
        async (ctx) => {
          const wasUp = guestUp(status);
          if (wasUp) {
            ctx.progress(null, 'stopping');
            await finished(await guests.changeState(guest, { action: 'stop' }));
          }
          ctx.progress(null, 'restoring');
          const now = await load(guest);
          await storage.restoreSnapshot(now.spec, snapshot);
          if (wasUp) {
            ctx.progress(null, 'starting');
            await finished(await guests.changeState(guest, { action: 'start' }));
          }
          return undefined;
        },
        { project: projectOfRecord(spec) },
      );
    },
  };
}
