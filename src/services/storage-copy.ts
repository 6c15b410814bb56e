import { alreadyExists, failedPrecondition } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import {
  addUsage,
  assertGuestCountable,
  assertWithinLimits,
  guestUsage,
  projectOfRecord,
} from '../core/projects.ts';
import { records } from '../store/records.ts';
import { readGuard } from './project-service.ts';
import type { StorageView } from './storage-context.ts';
import type { StorageService } from './storage-service.ts';

/** Copies of a guest (or of one of its snapshots) into a new guest. */
export function copyMethods(view: StorageView): Pick<StorageService, 'copyGuest'> {
  const {
    deps,
    store,
    guests,
    storageFor,
    assertProvisioned,
    exclusive,
    finished,
    createOn,
    checkPool,
    discard,
  } = view.ctx;
  const { load } = view;
  return {
    async copyGuest(request) {
      assertDnsLabel(request.name, 'guest name');
      const { spec: source, status } = await load(request.source);
      // A pvm copy keeps its source's COW file, whose header names the source's base disk: on a
      // shared pool it would start on no other member (decision 0049). A flat import has no base.
      if (source.model === 'pvm' && request.storage !== undefined) {
        const into = (await records.pool.at(request.storage).get(store))?.value;
        const from = (await records.guestPool.at(request.source).get(store))?.value.pool;
        if (into?.shared && from !== request.storage) {
          throw failedPrecondition(
            `A pvm copy onto shared pool ${request.storage} would keep ${request.source}'s base disk, which other members do not have: export ${request.source} and import the archive with --storage ${request.storage} instead`,
          );
        }
      }
      const storage = storageFor(source);
      assertProvisioned(source, status);
      if (request.snapshot !== undefined) await view.self().getSnapshot(request.source, request.snapshot);
      const project = projectOfRecord(source);
      const taken = await records.guest.at(request.name).get(store);
      if (taken) {
        throw projectOfRecord(taken.value) === project
          ? alreadyExists(`Guest ${request.name} already exists`)
          : alreadyExists(
              `The name ${request.name} is taken by a guest of another project: guest names are unique on this host, pick another`,
            );
      }
      // The quota is refused here, before any work; the create in the operation checks it again, race-free.
      const p = await readGuard(store, project);
      assertGuestCountable(project, p.spec.config, source.config);
      assertWithinLimits(project, p.spec.config, {
        before: p.usage,
        after: addUsage(p.usage, guestUsage(source.config)),
      });
      await checkPool(request.storage);
      const what = request.snapshot ? `${request.source}/${request.snapshot}` : request.source;
      return exclusive(
        request.source,
        `Copying guest ${what} to ${request.name}`,
        async (ctx) => {
          const create = {
            name: request.name,
            project,
            image: source.image,
            model: source.model,
            config: { ...source.config },
          };
          const pool = request.storage ?? (await deps.pools?.()?.poolOf(request.source));
          // Marked in the create's own transaction: a refused create leaves no marker on another's guest.
          const made = await createOn(pool, create, { pending: { kind: 'copy' } });
          try {
            await finished(made);
            ctx.progress(null, 'copying');
            const target = (await load(request.name)).spec;
            await storage.copy(
              source,
              target,
              request.snapshot === undefined ? {} : { snapshot: request.snapshot },
            );
          } catch (e) {
            await discard(request.name);
            throw e;
          } finally {
            await store.delete(keys.storagePending(request.name));
          }
          if (request.start) await finished(await guests.changeState(request.name, { action: 'start' }));
          return undefined;
        },
        {
          project,
          resources: { guests: [`/1.0/guests/${request.source}`, `/1.0/guests/${request.name}`] },
        },
      );
    },
  };
}
