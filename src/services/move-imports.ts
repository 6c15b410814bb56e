import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { asTrivisorError } from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';
import type { KvStore } from '../store/kv.ts';
import { listMoveMarks, type MoveMark } from './move-marks.ts';

/**
 * What the destination's side of a move leaves in the daemon's `imports/` directory, and its sweep
 * (issue 13 §1; decision 0088, amended):
 *
 * - `move-snapshots-NAME.tar`: a live move's snapshots, sent ahead and kept until the move's
 *   prepare writes them into the new disk (the prepare and a discard remove it). A destination
 *   that died between the two, or a source that never asked for the prepare, left it there.
 * - `.move-NAME-XXXXXX/`: the FIFOs' directory of a receive or of a prepare's fill, removed when
 *   it ends; a daemon that died during one left it.
 *
 * A part is stale when no live move of its guest to this member is journaled at `started` (the
 * only phase a prepare follows; the source's move mark is its journal, decision 0079), or when it
 * is older than `maxAgeMs` (the prepare follows its part within seconds; a source dead since then
 * undoes its move at its resume, which never reuses the part). A work directory is stale once no
 * receive or prepare of its guest runs in this daemon. Neither is ever taken while this daemon
 * receives or prepares that guest (`busy`). Other files of `imports/` (an import's `.tmp-`, a live
 * restore's `live-`, a recovery's `.recover-`, a live move's `move-incoming-` below) are their own
 * sweeps'.
 */
export const STAGED_PREFIX = 'move-snapshots-';
/** The file a live move's snapshots of guest `guest` wait in, in `imports/` (decision 0088). */
export const stagedPartName = (guest: string) => `${STAGED_PREFIX}${guest}.tar`;
/**
 * `move-incoming-NAME`: this member's copy of guest NAME was made by a live move's prepare and has
 * not been run here (decision 0042, amended 2026-12-07). The prepare writes it before it makes
 * anything (never over a copy that was here before); running the guest here (finishLive) or
 * discarding the copy removes it. One left names a copy that a source which gave up could not
 * have discarded (this member's daemon was dead): the receiver's sweep discards it once no move of
 * the guest to this member is journaled.
 */
export const INCOMING_PREFIX = 'move-incoming-';
/** The file that says guest `guest`'s copy here is a live move's, not run here yet. */
export const incomingMarkName = (guest: string) => `${INCOMING_PREFIX}${guest}`;
/** The prefix of a receive's or a fill's work directory, `mkdtemp`'s six characters after it. */
export const workDirPrefix = (guest: string) => `.move-${guest}-`;
/** The member route's upload of a moved guest's archive, in the daemon's upload directory. */
export const UPLOAD_PREFIX = 'trivisor-move-';
/** How long a staged part may wait for its prepare (default of `maxAgeMs`). */
export const STAGED_MAX_AGE_MS = 10 * 60_000;
/** How often a daemon sweeps (default of `sweepEvery`). */
export const SWEEP_EVERY_MS = 5 * 60_000;

/** What a sweep reads and removes. */
export interface MoveImportsSweepDeps {
  store: KvStore;
  /** This member's name: the destination the parts it keeps are for. */
  hostName: string;
  /** The `imports/` directory. */
  dir: string;
  /** Whether this daemon receives or prepares guest `guest` now: its files are in use. */
  busy: (guest: string) => boolean;
  log: Logger;
  /** How long a staged part may wait for its prepare (default 10 min). */
  maxAgeMs?: number;
  /** The clock the age is measured on (default `Date.now`). */
  now?: () => number;
}

/** What a sweep removed (names in `imports/`, or in the upload directory), and why. */
export interface MoveImportsSwept {
  removed: Array<{ name: string; why: string }>;
}

/**
 * Removes the stale move files of `imports/` (above). `uploadDir`, given at the daemon's start
 * only (before its member API serves: no upload can be under way), also loses the uploads of moved
 * guests' archives that a daemon dying during one left there. Never throws: what cannot be read or
 * removed is logged and left for the next sweep.
 */
export async function sweepMoveImports(
  deps: MoveImportsSweepDeps,
  options: { uploadDir?: string } = {},
): Promise<MoveImportsSwept> {
  const now = deps.now ?? Date.now;
  const maxAgeMs = deps.maxAgeMs ?? STAGED_MAX_AGE_MS;
  const removed: MoveImportsSwept['removed'] = [];
  const remove = async (dir: string, name: string, why: string) => {
    try {
      await rm(join(dir, name), { recursive: true, force: true });
      removed.push({ name, why });
    } catch (e) {
      deps.log.warn({ file: join(dir, name), err: asTrivisorError(e).message }, 'a move file is left');
    }
  };
  const names = await readdir(deps.dir).catch(() => [] as string[]);
  // Each part is looked at before the marks are read: a part sent for a move begun since has its
  // move's mark written before it (the source journals, then sends), so the marks read after it
  // name that move; a part replaced after the look (another inode) is left for the next sweep.
  const staged: Array<{ name: string; guest: string; ino: number; mtimeMs: number }> = [];
  for (const name of names) {
    if (!name.startsWith(STAGED_PREFIX) || !name.endsWith('.tar')) continue;
    const st = await stat(join(deps.dir, name)).catch(() => undefined);
    if (st) {
      const guest = name.slice(STAGED_PREFIX.length, -'.tar'.length);
      staged.push({ name, guest, ino: st.ino, mtimeMs: st.mtimeMs });
    }
  }
  // A store that does not answer leaves the age alone to judge by.
  let marks: MoveMark[] | undefined;
  if (staged.length > 0) {
    marks = await listMoveMarks(deps.store).catch((e: unknown) => {
      deps.log.warn(
        { err: asTrivisorError(e).message },
        'the move marks were not read: staged parts judged by their age',
      );
      return undefined;
    });
  }
  const awaited = (guest: string) =>
    marks === undefined ||
    marks.some(
      (m) =>
        m.guest === guest &&
        m.to === deps.hostName &&
        m.kind === 'live' &&
        (m.phase ?? 'started') === 'started',
    );
  for (const part of staged) {
    const ageMs = now() - part.mtimeMs;
    const why = !awaited(part.guest)
      ? `no live move of guest ${part.guest} to ${deps.hostName} is journaled`
      : ageMs > maxAgeMs
        ? `it waited ${Math.round(ageMs / 1000)} s for its move's prepare`
        : undefined;
    if (why === undefined || deps.busy(part.guest)) continue;
    const again = await stat(join(deps.dir, part.name)).catch(() => undefined);
    if (again?.ino === part.ino) await remove(deps.dir, part.name, why);
  }
  for (const name of names) {
    if (!name.startsWith('.move-')) continue;
    // `.move-NAME-` and mkdtemp's six characters: NAME is a DNS label, which may hold dashes.
    const guest = name.slice('.move-'.length, -7);
    if (guest === '' || name.at(-7) !== '-' || deps.busy(guest)) continue;
    await remove(deps.dir, name, `no receive of guest ${guest} runs`);
  }
  if (options.uploadDir !== undefined) {
    for (const name of await readdir(options.uploadDir).catch(() => [] as string[])) {
      if (name.startsWith(UPLOAD_PREFIX) && name.endsWith('.tar')) {
        await remove(options.uploadDir, name, 'an upload that a daemon dying left');
      }
    }
  }
  if (removed.length > 0) deps.log.info({ removed }, 'stale move files removed');
  return { removed };
}
