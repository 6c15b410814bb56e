import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * The backup directory's layout (issue 13 part 5; decision 0046): scheduled backups shipped off
 * the member that holds the guest, to a directory that is, in production, an NFS mount (the same
 * on every member). One directory per guest (guest names are cluster-wide), one archive per
 * backup named by the minute it was taken, so that names sort as times:
 *
 *     <dir>/<guest>/20261205T030000Z.tar
 *
 * An archive is written beside its final name and renamed into place once it is whole and on
 * disk: a reader (a recovery, a person with `ls`) never sees half of one. Anything else in the
 * directory is left alone, and retention only ever removes archives of this layout.
 */
export interface ShippedBackup {
  /** `20261205T030000Z.tar` */
  name: string;
  path: string;
  takenAt: Date;
  sizeBytes: number;
}

const SHIPPED = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z\.tar$/;

/** The archive name of a backup taken at `at` (to the second, UTC). */
export function shippedName(at: Date): string {
  return `${at.toISOString().slice(0, 19).replace(/[-:]/g, '')}Z.tar`;
}

function takenAtOf(name: string): Date | undefined {
  const m = SHIPPED.exec(name);
  if (!m) return undefined;
  return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
}

/** Copies the archive at `archivePath` into `dir`'s directory of `guest`, durably, as the backup taken at `at`. */
export async function shipBackup(
  dir: string,
  guest: string,
  archivePath: string,
  at: Date,
): Promise<ShippedBackup> {
  const guestDir = join(dir, guest);
  await mkdir(guestDir, { recursive: true, mode: 0o700 });
  const name = shippedName(at);
  const path = join(guestDir, name);
  const tmp = join(guestDir, `.${name}.tmp-${randomBytes(4).toString('hex')}`);
  try {
    await copyFile(archivePath, tmp);
    // A guest's whole disk: root's alone, whatever the directory's own mode.
    await chmod(tmp, 0o600);
    await syncPath(tmp);
    await rename(tmp, path);
    await syncPath(guestDir);
  } finally {
    await rm(tmp, { force: true });
  }
  return { name, path, takenAt: takenAtOf(name) ?? at, sizeBytes: (await stat(path)).size };
}

async function syncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The shipped backups of `guest`, oldest first (none when its directory does not exist). */
export async function listShipped(dir: string, guest: string): Promise<ShippedBackup[]> {
  const guestDir = join(dir, guest);
  const names = await readdir(guestDir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    throw e;
  });
  const found: ShippedBackup[] = [];
  for (const name of names.sort()) {
    const takenAt = takenAtOf(name);
    if (!takenAt) continue;
    const st = await stat(join(guestDir, name)).catch(() => undefined);
    if (st?.isFile()) found.push({ name, path: join(guestDir, name), takenAt, sizeBytes: st.size });
  }
  return found;
}

/** Which of `backups` (oldest first) retention removes: beyond the newest `count`, and older than `maxAgeMs`; never the newest. */
export function expiredBackups<T extends { takenAt: Date }>(
  backups: readonly T[],
  keep: { count: number; maxAgeMs?: number },
  now: Date,
): T[] {
  const newestFirst = [...backups].sort((a, b) => b.takenAt.getTime() - a.takenAt.getTime());
  return newestFirst.filter(
    (b, i) =>
      i > 0 &&
      (i >= keep.count ||
        (keep.maxAgeMs !== undefined && now.getTime() - b.takenAt.getTime() > keep.maxAgeMs)),
  );
}

/** Removes the shipped backups of `guest` that retention no longer keeps; returns their names. */
export async function pruneShipped(
  dir: string,
  guest: string,
  keep: { count: number; maxAgeMs?: number },
  now: Date,
): Promise<string[]> {
  const expired = expiredBackups(await listShipped(dir, guest), keep, now);
  for (const b of expired) await rm(b.path, { force: true });
  return expired.map((b) => b.name);
}
