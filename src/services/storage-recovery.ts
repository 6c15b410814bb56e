import { randomBytes } from 'node:crypto';
import { readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { GUEST_CONFIG_FILE } from '../control/guest-storage-controller.ts';
import { asTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus } from '../core/types.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import type { KvStore } from '../store/kv.ts';
import { projectGuestIndex } from '../store/project-guests.ts';
import { records, valuesOf } from '../store/records.ts';
import { BLANK_IMAGE } from './image-service.ts';
import type { StorageContext } from './storage-context.ts';
import { resumeLiveImports } from './storage-live-import.ts';
import type { RecoverReport, StorageService } from './storage-service.ts';

/** What an interrupted daemon or a lost store left: half-made work swept away, lost records rebuilt. */
export function recoveryMethods(ctx: StorageContext): Pick<StorageService, 'recover' | 'sweep'> {
  const { deps, store, guests, operations, backupsDir, importsDir, guestsDir } = ctx;
  return {
    async recover() {
      const report: RecoverReport = { recovered: [], skipped: [] };
      const entries = await readdir(guestsDir).catch(() => [] as string[]);
      for (const name of entries.sort()) {
        if (name.startsWith('.')) continue;
        const skip = (reason: string) => report.skipped.push({ name, reason });
        let spec: GuestSpec;
        const file = join(guestsDir, name, GUEST_CONFIG_FILE);
        try {
          const kept = JSON.parse(await readFile(file, 'utf8')) as { spec?: unknown };
          spec = records.guest.check(kept.spec, file);
        } catch {
          skip(`no readable ${GUEST_CONFIG_FILE}`);
          continue;
        }
        if (spec.name !== name) {
          skip(`${GUEST_CONFIG_FILE} names another guest (${spec.name})`);
          continue;
        }
        if (await store.get(records.guest.key(name))) {
          skip('its records exist');
          continue;
        }
        const driver = deps.drivers?.[spec.model];
        if (!driver) {
          skip(`the ${spec.model} model is not available on this host`);
          continue;
        }
        const image =
          spec.image === '' ? BLANK_IMAGE.record : await deps.images.get(spec.image).catch(() => undefined);
        if (!image) {
          skip(`its image ${spec.imageAlias || spec.image} (fingerprint ${spec.image}) is not on this host`);
          continue;
        }
        const rt = await driver.inspect(spec, undefined).catch(() => ({ state: 'absent' as const }));
        if (rt.state === 'absent') {
          skip('its driver finds nothing of it on disk');
          continue;
        }
        // The desired state follows what runs: recovery adopts, it does not start or stop anything.
        const desired = rt.state === 'running' ? 'Running' : rt.state === 'frozen' ? 'Frozen' : 'Stopped';
        const next: GuestSpec = {
          ...spec,
          desired,
          deleting: false,
          stopForce: false,
          location: deps.hostName ?? spec.location,
        };
        const status: GuestStatus = {
          status: desired,
          observedGeneration: next.generation,
          observedRestartRequest: next.restartRequest,
          restartCount: 0,
          provisioned: true,
          appliedConfig: { ...next.config },
          pendingRestart: [],
        };
        if ('process' in rt && rt.process) status.process = rt.process;
        const storage = deps.storage[spec.model];
        const snapshots = storage ? await storage.listSnapshots(spec).catch(() => [] as string[]) : [];
        const ops: Parameters<KvStore['txn']>[0]['success'] = [
          records.guestStatus.at(name).putOp(status),
          records.guestLocation.at(name).putOp(next.location),
          records.guest.at(name).putOp(next),
          projectGuestIndex.putOp(next),
        ];
        for (const snap of snapshots) {
          const st = await stat(join(guestsDir, name, 'snapshots', snap)).catch(() => undefined);
          const record: SnapshotRecord = {
            name: snap,
            guest: name,
            createdAt: (st?.mtime ?? new Date()).toISOString(),
            wasRunning: false,
            location: next.location,
          };
          ops.push(records.snapshot.at(name, snap).putOp(record));
        }
        const r = await store.txn({ compare: [records.guest.at(name).absent()], success: ops });
        if (!r.succeeded) {
          skip('its records were made meanwhile');
          continue;
        }
        // A guest on a pool other than the default one is recorded there again, with the pool if it was lost too.
        const pool = await deps
          .pools?.()
          ?.recoverGuest(next)
          .catch((e: unknown) => {
            report.skipped.push({ name, reason: `its pool: ${asTrivisorError(e).message}` });
            return undefined;
          });
        report.recovered.push({
          name,
          model: spec.model,
          status: desired,
          snapshots,
          ...(pool && { pool }),
        });
      }
      return report;
    },

    async sweep() {
      // A live restore's guest runs on its archive: its copy is finished, never the guest deleted (decision 0063).
      await resumeLiveImports(ctx);
      // Guests a crash left half-copied or half-imported are deleted (by the controller, once it runs).
      for (const kv of (await store.list(records.storagePending.prefix)).kvs) {
        const name = records.storagePending.nameOf(kv.key);
        const marker = await records.storagePending
          .at(name)
          .get(store)
          .catch(() => undefined);
        if (marker?.value.kind === 'live-import') continue;
        const op = await guests.delete(name, { force: true }).catch(() => undefined);
        if (op) void operations.wait(op.id).catch(() => {});
        await store.delete(kv.key);
      }
      for (const name of await readdir(deps.stateDir).catch(() => [] as string[])) {
        if (name.startsWith('trivisor-import-')) await rm(join(deps.stateDir, name), { force: true });
      }
      for (const dir of [backupsDir, importsDir]) {
        await sweepTmp(dir);
        for (const sub of await readdir(dir).catch(() => [] as string[])) await sweepTmp(join(dir, sub));
      }
      // Snapshot records of guests that are gone are the guest storage controller's to drop.
      for (const spec of valuesOf(await records.guest.list(store))) {
        // Only this member's guests: another's have no files here, or (on a shared pool, decision
        // 0049) files another member uses, and their snapshot records are that member's.
        if (spec.location !== undefined && deps.hostName !== undefined && spec.location !== deps.hostName)
          continue;
        const storage = deps.storage[spec.model];
        if (!storage) continue;
        await storage.sweep(spec).catch(() => {});
        // A snapshot is real only when both its record and its directory exist.
        const onDisk = new Set(await storage.listSnapshots(spec).catch(() => [] as string[]));
        const recorded = await store.list(keys.snapshots(spec.name));
        for (const r of recorded.kvs) {
          const name = r.key.slice(keys.snapshots(spec.name).length);
          if (!onDisk.has(name)) await store.delete(r.key);
          onDisk.delete(name);
        }
        for (const name of onDisk) await storage.deleteSnapshot(spec, name).catch(() => {});
      }
    },
  };
}

async function sweepTmp(dir: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith('.tmp-')) await removeDebris(join(dir, name));
  }
}

/**
 * Removes a half-made tree. A copy started by a daemon that was killed may still be
 * writing into it: renaming it first makes that copy fail instead of refilling it.
 */
export async function removeDebris(path: string): Promise<void> {
  const trash = `${path}.trash-${randomBytes(4).toString('hex')}`;
  await rename(path, trash).catch(() => {});
  await rm(trash, { recursive: true, force: true, maxRetries: 3 });
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}
