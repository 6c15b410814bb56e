import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { chmod, copyFile, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackupChainLink } from '../drivers/guest-storage.ts';
import { chainStateFileOf } from './chain-state-file.ts';

/**
 * The backup directory's layout (issue 13 part 5; decisions 0046 and 0062): scheduled backups
 * shipped off the member that holds the guest, to a directory that is, in production, an NFS
 * mount (the same on every member). One directory per guest (guest names are cluster-wide), one
 * archive per backup named by the minute it was taken, so that names sort as times, and by the
 * link of its incremental chain it is (decision 0048), so that chains are known from the names:
 *
 *     <dir>/<guest>/20261205T030000Z-full-3f9a1c2b4d5e6f70.tar        a chain's full backup
 *     <dir>/<guest>/20261205T031000Z-incr-3f9a1c2b4d5e6f70-1.tar      its first incremental
 *     <dir>/<guest>/20261204T030000Z.tar                              a whole archive (before 0062)
 *
 * An archive is written beside its final name and renamed into place once it is whole and on
 * disk: a reader (a recovery, a person with `ls`) never sees half of one. Anything else in the
 * directory is left alone, and retention only ever removes archives of this layout, a chain only
 * whole (its incrementals first, its full last).
 */
export interface ShippedBackup {
  /** `20261205T030000Z-full-3f9a1c2b4d5e6f70.tar` */
  name: string;
  path: string;
  takenAt: Date;
  sizeBytes: number;
  /** The link it is; absent for a whole archive, which is a chain of its own. */
  link?: BackupChainLink;
}

const SHIPPED =
  /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z(?:-full-([0-9a-f]{8,64})|-incr-([0-9a-f]{8,64})-([1-9]\d{0,5}))?\.tar$/;

/** The archive name of a backup taken at `at` (to the second, UTC), as link `link` of its chain. */
export function shippedName(at: Date, link?: BackupChainLink): string {
  const time = `${at.toISOString().slice(0, 19).replace(/[-:]/g, '')}Z`;
  if (!link) return `${time}.tar`;
  return link.sequence === 0
    ? `${time}-full-${link.chain}.tar`
    : `${time}-incr-${link.chain}-${link.sequence}.tar`;
}

/** When a shipped archive was taken and which link it is, from its name; undefined for any other name. */
export function parseShippedName(name: string): { takenAt: Date; link?: BackupChainLink } | undefined {
  const m = SHIPPED.exec(name);
  if (!m) return undefined;
  const takenAt = new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
  if (m[7]) return { takenAt, link: { chain: m[7], sequence: 0, kind: 'full' } };
  if (m[8]) return { takenAt, link: { chain: m[8], sequence: Number(m[9]), kind: 'incremental' } };
  return { takenAt };
}

/** Copies the archive at `archivePath` into `dir`'s directory of `guest`, durably, as the backup taken at `at`. */
export async function shipBackup(
  dir: string,
  guest: string,
  archivePath: string,
  at: Date,
  link?: BackupChainLink,
): Promise<ShippedBackup> {
  const guestDir = join(dir, guest);
  await mkdir(guestDir, { recursive: true, mode: 0o700 });
  const name = shippedName(at, link);
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
  return {
    name,
    path,
    takenAt: parseShippedName(name)?.takenAt ?? at,
    sizeBytes: (await stat(path)).size,
    ...(link && { link }),
  };
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
  return shippedAmong(guestDir, names);
}

/**
 * The archives of the layout among `names`, entries of `guestDir` already read, oldest first. A
 * name whose `lstat` the caller has (`known`) and that is a regular file is not looked at again;
 * any other is `stat`ed, so that a symbolic link to a file counts, as it always has.
 */
export async function shippedAmong(
  guestDir: string,
  names: readonly string[],
  known: ReadonlyMap<string, Stats> = new Map(),
): Promise<ShippedBackup[]> {
  const found: ShippedBackup[] = [];
  for (const name of [...names].sort()) {
    const parsed = parseShippedName(name);
    if (!parsed) continue;
    const had = known.get(name);
    const st = had?.isFile() ? had : await stat(join(guestDir, name)).catch(() => undefined);
    if (st?.isFile()) found.push({ name, path: join(guestDir, name), sizeBytes: st.size, ...parsed });
  }
  return found.sort(byTime);
}

/** Oldest first; links of one minute (none are made so) by their place in the chain. */
function byTime(a: ShippedBackup, b: ShippedBackup): number {
  return a.takenAt.getTime() - b.takenAt.getTime() || (a.link?.sequence ?? 0) - (b.link?.sequence ?? 0);
}

/** The shipped links of one chain, in order; a whole archive is a chain of its own. */
export interface ShippedChain {
  id: string;
  links: ShippedBackup[];
  /** The full backup and the incrementals that follow it without a gap: what can be restored. */
  usable: ShippedBackup[];
  /** Why the chain is not whole, naming the first missing link; absent when it is. */
  broken?: string;
}

/** The chains of a guest's shipped backups, oldest first (by their newest link). */
export function chainsOf(backups: readonly ShippedBackup[]): ShippedChain[] {
  const byId = new Map<string, ShippedBackup[]>();
  for (const b of [...backups].sort(byTime)) {
    const id = b.link?.chain ?? b.name;
    byId.set(id, [...(byId.get(id) ?? []), b]);
  }
  const chains: ShippedChain[] = [];
  for (const [id, links] of byId) {
    links.sort((a, b) => (a.link?.sequence ?? 0) - (b.link?.sequence ?? 0));
    const usable: ShippedBackup[] = [];
    for (const l of links) {
      if ((l.link?.sequence ?? 0) !== usable.length) break;
      usable.push(l);
    }
    const chain: ShippedChain = { id, links, usable };
    if (usable.length < links.length) {
      chain.broken =
        usable.length === 0
          ? `The full backup of chain ${id} is missing: ${links.map((l) => l.name).join(', ')} cannot be restored`
          : `Link ${usable.length} of chain ${id} is missing: the chain ends at ${usable.at(-1)?.name}`;
    }
    chains.push(chain);
  }
  const newest = (c: ShippedChain) => Math.max(...c.links.map((l) => l.takenAt.getTime()));
  return chains.sort((a, b) => newest(a) - newest(b));
}

/**
 * What a recovery restores: the newest point a full backup and the incrementals after it reach
 * without a gap, and, for each newer link that cannot be reached, why (one line each). A chain
 * with a missing link falls back to its links before the gap, which are newer than any older
 * chain; a chain without its full falls back to the chain before it. `unusable` names links
 * found damaged (their checksums), which count as missing.
 */
export function restorePoint(
  backups: readonly ShippedBackup[],
  unusable: ReadonlySet<string> = new Set(),
): { links: ShippedBackup[]; problems: string[] } {
  const problems: string[] = [];
  const chains = chainsOf(backups.filter((b) => !unusable.has(b.name)));
  for (const chain of chains.reverse()) {
    if (chain.broken) problems.push(chain.broken);
    if (chain.usable.length > 0) return { links: chain.usable, problems };
  }
  return { links: [], problems };
}

/**
 * Which of `backups` retention removes, in the order to remove them. A backup is past its
 * retention beyond the newest `count`, or older than `maxAgeMs`; a chain goes only once every
 * link of it is past (a full is needed by every incremental after it), its incrementals newest
 * first and its full last, so that a removal cut short leaves a chain that can still be restored.
 * The chain of the newest point that can be restored is always kept, however old: a guest whose
 * schedule stopped keeps its last backup, and a broken newer chain never leaves it without one.
 */
export function expiredBackups(
  backups: readonly ShippedBackup[],
  keep: { count: number; maxAgeMs?: number },
  now: Date,
): ShippedBackup[] {
  const newestFirst = [...backups].sort(byTime).reverse();
  const past = new Set(
    newestFirst
      .filter(
        (b, i) =>
          i >= keep.count ||
          (keep.maxAgeMs !== undefined && now.getTime() - b.takenAt.getTime() > keep.maxAgeMs),
      )
      .map((b) => b.name),
  );
  const kept = restorePoint(backups).links[0];
  const keptChain = kept && (kept.link?.chain ?? kept.name);
  return chainsOf(backups)
    .filter((c) => c.id !== keptChain && c.links.every((l) => past.has(l.name)))
    .flatMap((c) => [...c.links].reverse());
}

/** Removes the shipped backups of `guest` that retention no longer keeps; returns their names. */
export async function pruneShipped(
  dir: string,
  guest: string,
  keep: { count: number; maxAgeMs?: number },
  now: Date,
): Promise<string[]> {
  const expired = expiredBackups(await listShipped(dir, guest), keep, now);
  for (const b of expired) {
    await rm(b.path, { force: true });
    await rm(chainStateFileOf(b.path), { force: true });
  }
  return expired.map((b) => b.name);
}

/**
 * The link the next scheduled backup of a guest should be, from what is shipped: the next of
 * the newest chain when that chain is whole up to its newest link and shorter than `fullEvery`
 * links, else a new chain (a full backup). An incremental is only worth shipping after links
 * that are all there.
 */
export function nextShippedLink(
  backups: readonly ShippedBackup[],
  fullEvery: number,
): { newChain: true } | { newChain: false; after: BackupChainLink } {
  const newest = chainsOf(backups).at(-1);
  const last = newest?.links.at(-1);
  if (!newest || !last?.link || newest.broken || newest.links.length >= fullEvery) return { newChain: true };
  return { newChain: false, after: last.link };
}
