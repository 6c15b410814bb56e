import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { copyFile, link, lstat, mkdir, readdir, realpath, rm } from 'node:fs/promises';
import { basename, isAbsolute, join, sep } from 'node:path';
import { cancelled, failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { isDnsLabel } from '../core/names.ts';
import type { Operation } from '../core/types.ts';
import {
  chainsOf,
  listShipped,
  parseShippedName,
  type ShippedBackup,
  shippedAmong,
} from '../storage/shipped-backups.ts';
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
    // Not named: the directory is under the state dir by default, which errors never show (threat model).
    throw notFound(
      `Backup ${name} not found: this host's backup directory does not exist (nothing was shipped here yet)`,
    );
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

/**
 * One archive of the backup directory, as `GET /1.0/backups?recursion=1` lists it (decision 0074):
 * what `import --from-backups GUEST/NAME` takes, and what it would restore.
 */
export interface BackupDirectoryArchive {
  /** The guest's folder in the directory. */
  guest: string;
  /** The archive's file name. */
  name: string;
  /** GUEST/NAME: what `POST /1.0/backups/import` takes as `source.archive`. */
  archive: string;
  sizeBytes: number;
  /** When it was taken (from its name in the scheduled backups' layout; else the file's mtime). */
  createdAt: string;
  /**
   * `full` or `incremental`: a link of a chain (decision 0062); `whole`: a whole archive of the
   * layout (before chains); `other`: a name outside the layout, imported as it is, alone.
   */
  kind: 'full' | 'incremental' | 'whole' | 'other';
  chain?: string;
  sequence?: number;
  /** An incremental's link before it in its chain (its file name), which an import applies first. */
  parent?: string;
  /** Whether an import of it can run: false for an incremental whose earlier links are not all there. */
  restorable: boolean;
  /** Why it cannot be restored, in one line. */
  problem?: string;
}

/**
 * The archives of the backup directory, by guest, oldest first. Only what an import would accept
 * is listed: regular files (no symbolic link, no dot file such as a shipping's temporary copy)
 * in a guest's folder whose real path is inside the directory. A missing directory lists nothing.
 */
export async function listBackupDirectory(
  directory: string,
  options: { guest?: string } = {},
): Promise<BackupDirectoryArchive[]> {
  const root = await realpath(directory).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (!root) return [];
  const guests = options.guest !== undefined ? [options.guest] : (await readdir(root)).sort();
  const found: BackupDirectoryArchive[] = [];
  for (const guest of guests) {
    if (!isDnsLabel(guest)) continue;
    const folder = await realpath(join(root, guest)).catch(() => undefined);
    if (!folder?.startsWith(root + sep)) continue;
    // The folder is read once: its entries' lstat serve both the listing and the chains.
    const names = await readdir(folder).catch(() => [] as string[]);
    const stats = new Map<string, Stats>();
    for (const name of names) {
      const st = await lstat(join(folder, name)).catch(() => undefined);
      if (st) stats.set(name, st);
    }
    const shipped = new Map((await shippedAmong(join(root, guest), names, stats)).map((b) => [b.name, b]));
    const chains = chainsOf([...shipped.values()]);
    const mine: BackupDirectoryArchive[] = [];
    for (const name of names) {
      if (name.startsWith('.')) continue;
      const st = stats.get(name);
      if (!st?.isFile()) continue;
      const b = shipped.get(name);
      const base = { guest, name, archive: `${guest}/${name}`, sizeBytes: st.size };
      if (!b) {
        mine.push({ ...base, createdAt: st.mtime.toISOString(), kind: 'other', restorable: true });
        continue;
      }
      const entry: BackupDirectoryArchive = {
        ...base,
        createdAt: b.takenAt.toISOString(),
        kind: b.link ? b.link.kind : 'whole',
        restorable: true,
      };
      if (b.link) {
        entry.chain = b.link.chain;
        entry.sequence = b.link.sequence;
        const chain = chains.find((c) => c.id === b.link?.chain);
        if (b.link.sequence > 0) {
          const before = chain?.links.find((l) => l.link?.sequence === (b.link?.sequence ?? 0) - 1);
          if (before) entry.parent = before.name;
        }
        if (!chain?.usable.some((l) => l.name === name)) {
          entry.restorable = false;
          entry.problem = chain?.broken ?? `The earlier links of chain ${b.link.chain} are missing`;
        }
      }
      mine.push(entry);
    }
    mine.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || (a.sequence ?? 0) - (b.sequence ?? 0));
    found.push(...mine);
  }
  return found;
}

/** One archive of the backup directory, named GUEST/NAME (refused as an import would refuse it). */
export async function getBackupDirectoryArchive(
  directory: string,
  archive: string,
): Promise<BackupDirectoryArchive> {
  const { guest, file } = await resolveBackupArchive(directory, archive);
  const found = (await listBackupDirectory(directory, { guest })).find((a) => a.name === file);
  if (!found) throw notFound(`Backup ${archive} not found in the backup directory`);
  return found;
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
    storage: Pick<StorageService, 'importBackup' | 'discardImport'>;
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
    mayCancel: true,
    async run(op) {
      // The guest the chain's full made: whatever refuses a later link removes it (decision 0082),
      // before or after that link's own operation starts, so that a refused chain leaves nothing.
      let made: string | undefined;
      let current: Operation | undefined;
      // A cancel of the chain cancels the link under way, which then removes what it made.
      const onAbort = () => {
        if (!current) return;
        try {
          deps.operations.cancel(current.id);
        } catch {
          // Already finished, or past the point where it can stop: the loop stops after it.
        }
      };
      op.signal.addEventListener('abort', onAbort, { once: true });
      try {
        for (const [i, l] of links.entries()) {
          if (op.signal.aborted) throw cancelled('The import was cancelled');
          op.progress(Math.round((100 * i) / links.length), `importing link ${i + 1} of ${links.length}`);
          const mine = await disposableLink(l, deps.workDir).catch((e: NodeJS.ErrnoException) => {
            if (e.code !== 'ENOENT') throw e;
            throw failedPrecondition(
              `Backup ${guest}/${basename(l)}, link ${i} of the chain, is no longer in the backup directory (removed while the chain was imported): import it again`,
            );
          });
          try {
            // Marked half-imported until its last link is in: a kill -9 between links leaves no guest
            // at an earlier point than the one asked for, and a failed link removes it.
            // The pool is the full's: an incremental goes onto the guest it made, where it is.
            current = await deps.storage.importBackup({
              archivePath: mine,
              ...(i === 0 ? opts : made !== undefined && { name: made }),
              chain: { link: i, last: i === links.length - 1 },
            });
          } catch (e) {
            await rm(mine, { force: true });
            throw e;
          }
          // A cancel that came while this link was being started reaches it too.
          if (op.signal.aborted) onAbort();
          const end = await succeeded(deps.operations, current);
          if (i === 0)
            made = typeof end.metadata.name === 'string' ? end.metadata.name : (request.name ?? guest);
        }
        return { name: made, links: links.length };
      } catch (e) {
        // Only a guest still marked as this import's is removed; should that fail, the marker
        // stays and the next start's sweep removes it.
        if (made !== undefined) await deps.storage.discardImport(made).catch(() => {});
        if (op.signal.aborted) throw cancelled('The import was cancelled');
        throw e;
      } finally {
        op.signal.removeEventListener('abort', onAbort);
      }
    },
  });
}
