import { alreadyExists, asTrivisorError, conflict, failedPrecondition } from '../core/errors.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { Model } from '../core/types.ts';
import type { BackupManifest } from '../storage/storage-records.ts';
import { records } from '../store/records.ts';
import { type ClaimHolder, describeHolder } from './claims.ts';
import type { StorageContext } from './storage-context.ts';

/**
 * What a whole import and a live one (decision 0063) both do before and when they make the
 * archive's guest: the same refusals, the same claim on the name, the same creation.
 */

/** Refuses, in one line, a name already taken or an image this host does not have. */
export async function assertArchiveGuestFits(
  ctx: Pick<StorageContext, 'store' | 'deps'>,
  project: string,
  name: string,
  manifest: BackupManifest,
): Promise<void> {
  const taken = await records.guest.at(name).get(ctx.store);
  if (taken) {
    throw projectOfRecord(taken.value) === project
      ? alreadyExists(`Guest ${name} already exists: give the import another name`)
      : alreadyExists(
          `The name ${name} is taken by a guest of another project: guest names are unique on this host, give the import another name`,
        );
  }
  if (manifest.image.fingerprint === '') return;
  await ctx.deps.images.get(manifest.image.fingerprint).catch((e: unknown) => {
    if (asTrivisorError(e).code !== 'NotFound') throw e;
    throw failedPrecondition(
      `The image ${manifest.image.alias || manifest.image.fingerprint} (fingerprint ${manifest.image.fingerprint}) the backup was made from is not on this host: import or build it first`,
    );
  });
}

/** The claim an import holds on its guest's name while it makes the guest. */
export function importingClaim(name: string) {
  return {
    action: 'import',
    busy: (h: ClaimHolder) =>
      conflict(`Guest ${name} is being imported already (${describeHolder(h)}): wait for it`),
  };
}

/**
 * Makes the archive's guest, marked pending an import until its files are in. `onMade` is called
 * once the guest is recorded as the import's: from then on a failure must remove it. The marker is
 * written in the create's own transaction (decision 0082, amended): a name taken meanwhile (a guest
 * created between the check and here) is refused with nothing made and no marker written, and a
 * daemon killed around the create leaves either the import's guest with its marker or neither, so
 * that neither the import's cleanup nor the next start's sweep removes a guest the import did not make.
 */
export async function createArchiveGuest(
  ctx: Pick<StorageContext, 'finished' | 'createOn'>,
  target: { pool: string | undefined; project: string; name: string; onMade: () => void },
  manifest: BackupManifest,
): Promise<void> {
  const { pool, project, name } = target;
  const op = await ctx
    .createOn(
      pool,
      {
        name,
        project,
        image: manifest.image.fingerprint,
        model: manifest.guest.model as Model,
        config: manifest.guest.config,
      },
      { pending: { kind: 'import' } },
    )
    .catch(async (e: unknown) => {
      if (asTrivisorError(e).code === 'AlreadyExists') throw e;
      // Anything else may have left a record of the import's: the caller's cleanup removes it.
      target.onMade();
      throw e;
    });
  target.onMade();
  await ctx.finished(op);
}
