import { randomBytes } from 'node:crypto';
import { copyFile, link, lstat, mkdir, realpath, rm } from 'node:fs/promises';
import { isAbsolute, join, sep } from 'node:path';
import { failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { isDnsLabel } from '../core/names.ts';
import type { Operation } from '../core/types.ts';
import { chainsOf, listShipped, parseShippedName, type ShippedBackup } from '../storage/shipped-backups.ts';
import { succeeded } from './operation-service.ts';
import type { StorageService } from './storage-service.ts';
import type { OperationService } from './types.ts';

/**
 * Import from the daemon's backup directory (docs/decisions/0070-restore-from-the-backup-directory.md):
 * an archive named relative to the directory, `GUEST/ARCHIVE`, resolved inside it only, restored
 * as an upload would be but without one. The import is given a hard link to the archive (a copy
 * only when the link cannot be made, another file system): a live restore keeps reading that
 * inode however retention removes the directory's entry, and a restarted daemon finds it where
 * the live restore's marker says.
 */

/**
 * The archive `name` names inside `directory`: exactly GUEST/FILE, no `..`, not absolute, not a
 * symlink, a regular file whose real path is inside the directory. Each refusal is one line.
 */
export async function resolveBackupArchive(
  directory: string,
  name: string,
): Promise<{ guest: string; file: string; path: string }> {
  if (name === '' || isAbsolute(name)) {
    throw invalidArgument(
      `Backup ${JSON.stringify(name)} must be named relative to the backup directory, as GUEST/ARCHIVE`,
    );
  }
  const parts = name.split('/');
  if (parts.length !== 2 || parts.some((p) => p === '' || p === '.' || p === '..' || p.includes('\\'))) {
    throw invalidArgument(
      `Backup ${JSON.stringify(name)} is not GUEST/ARCHIVE inside the backup directory (no "..", no other folders)`,
    );
  }
  const [guest, file] = parts as [string, string];
  if (!isDnsLabel(guest))
    throw invalidArgument(`Backup ${JSON.stringify(name)}: ${guest} is not a guest name`);
  const root = await realpath(directory).catch(() => {
    throw notFound(`The backup directory ${directory} does not exist on this host`);
  });
  const path = join(root, guest, file);
  const st = await lstat(path).catch(() => undefined);
  if (!st) throw notFound(`Backup ${name} not found in the backup directory`);
  if (st.isSymbolicLink())
    throw invalidArgument(`Backup ${name} is a symbolic link, which is not restored from`);
  if (!st.isFile()) throw invalidArgument(`Backup ${name} is not a regular file`);
  // The guest's folder itself may be a link out of the directory.
  const real = await realpath(path);
  if (!real.startsWith(root + sep)) throw invalidArgument(`Backup ${name} is outside the backup directory`);
  return { guest, file, path: real };
}

/** The links to import, in order, to restore `file` of `guest`: itself, or its chain up to it. */
export async function linksUpTo(
  directory: string,
  guest: string,
  file: string,
  path: string,
): Promise<string[]> {
  const parsed = parseShippedName(file);
  if (!parsed?.link || parsed.link.sequence === 0) return [path];
  const chain = chainsOf(await listShipped(directory, guest)).find((c) => c.id === parsed.link?.chain);
  const upTo: ShippedBackup[] = (chain?.usable ?? []).slice(0, parsed.link.sequence + 1);
  if (upTo.at(-1)?.name !== file) {
    throw failedPrecondition(
      `Backup ${guest}/${file} is link ${parsed.link.sequence} of chain ${parsed.link.chain}, whose earlier links are not all in the backup directory: ${chain?.broken ?? 'its full backup is missing'}`,
    );
  }
  return upTo.map((l) => l.path);
}

/** A file beside `workDir` the import may remove: a hard link to `path`, else a copy. */
async function disposableLink(path: string, workDir: string): Promise<string> {
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  const to = join(workDir, `trivisor-import-${randomBytes(8).toString('hex')}.tar`);
  await link(path, to).catch(async () => {
    await copyFile(path, to);
  });
  return to;
}

export interface BackupDirectoryImport {
  /** GUEST/ARCHIVE relative to the backup directory. */
  archive: string;
  name?: string;
  storage?: string;
  live?: boolean;
}

/** Starts the import of `request.archive`: one operation, the chain's links imported in order. */
export async function importFromBackupDirectory(
  deps: {
    directory: string;
    workDir: string;
    storage: Pick<StorageService, 'importBackup'>;
    operations: OperationService;
    project: string;
  },
  request: BackupDirectoryImport,
): Promise<Operation> {
  const { guest, file, path } = await resolveBackupArchive(deps.directory, request.archive);
  const links = await linksUpTo(deps.directory, guest, file, path);
  if (request.live && links.length > 1) {
    throw failedPrecondition(
      `Backup ${request.archive} is an incremental link, which is restored link by link: import it without --live`,
    );
  }
  const opts = {
    ...(request.name !== undefined && { name: request.name }),
    ...(request.storage !== undefined && { storage: request.storage }),
  };
  if (links.length === 1) {
    const mine = await disposableLink(links[0] as string, deps.workDir);
    try {
      return await deps.storage.importBackup({
        archivePath: mine,
        ...opts,
        ...(request.live && { live: true }),
      });
    } catch (e) {
      await rm(mine, { force: true });
      throw e;
    }
  }
  return deps.operations.start({
    project: deps.project,
    description: `Importing backup chain of ${request.archive}`,
    async run(op) {
      for (const [i, l] of links.entries()) {
        op.progress(Math.round((100 * i) / links.length), `importing link ${i + 1} of ${links.length}`);
        const mine = await disposableLink(l, deps.workDir);
        let started: Operation;
        try {
          started = await deps.storage.importBackup({ archivePath: mine, ...opts });
        } catch (e) {
          await rm(mine, { force: true });
          throw e;
        }
        await succeeded(deps.operations, started);
      }
      return { name: request.name ?? guest, links: links.length };
    },
  });
}
