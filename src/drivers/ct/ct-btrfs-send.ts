import { once } from 'node:events';
import { chmod, lstat, mkdir, readdir, rm, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition, invalidArgument } from '../../core/errors.ts';
import { BTRFS_MAGIC } from '../../host/reflink.ts';
import { childEnded, type ProcessRunner } from '../../host/runner.ts';
import { checkSendStream, type ExpectedStream } from './btrfs-stream-check.ts';

/**
 * ct backups by `btrfs send -p` (docs/decisions/0067-btrfs-send-and-block-incrementals.md):
 * a guest whose directory is a subvolume of a btrfs pool keeps, in `backup-snapshots/`, the
 * read-only snapshot of its last backup (named CHAIN-SEQUENCE), which the next backup is sent
 * against. A guest restored from such a chain keeps, in `backup-received/`, the subvolume its
 * last link was received into: the parent `btrfs receive` finds the next link's against.
 */
export const BACKUP_SNAPSHOTS = 'backup-snapshots';
export const BACKUP_RECEIVED = 'backup-received';
/** What a link's manifest says when its payload is a zstd-compressed btrfs send stream. */
export const BTRFS_SEND = 'btrfs-send' as const;
/** The inode number of every btrfs subvolume's root directory. */
const SUBVOLUME_ROOT_INO = 256n;
/** The one entry of a guest's directory a backup snapshot keeps: the overlay's upper layer. */
const KEPT = 'upper';

/** A subvolume's name for a link: its chain and sequence. */
export const snapshotNameOf = (link: { chain: string; sequence: number }): string =>
  `${link.chain}-${link.sequence}`;

/** Whether `path` is the root of a btrfs subvolume. */
export async function isSubvolume(path: string): Promise<boolean> {
  const st = await lstat(path, { bigint: true }).catch(() => undefined);
  if (!st?.isDirectory() || st.ino !== SUBVOLUME_ROOT_INO) return false;
  return (await statfs(path).catch(() => undefined))?.type === BTRFS_MAGIC;
}

/**
 * Removes `path`: a subvolume (read-only ones cannot be emptied by rm) is deleted as one,
 * after the backup subvolumes nested in it; a directory loses the subvolumes directly in it
 * and then the rest by rm. Idempotent.
 */
export async function removeWithSubvolumes(runner: ProcessRunner, path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (await isSubvolume(path)) {
    // Only real subvolumes in it are deleted first: its other files go with it (and a
    // read-only one cannot lose them one by one).
    for (const name of [BACKUP_SNAPSHOTS, BACKUP_RECEIVED])
      await deleteSubvolumesIn(runner, join(path, name));
    await runner.run(['btrfs', 'subvolume', 'delete', path]);
    return;
  }
  if (st.isDirectory()) await deleteSubvolumesIn(runner, path);
  await rm(path, { recursive: true, force: true });
}

/** Deletes the subvolumes directly in `dir`, leaving its other entries. */
async function deleteSubvolumesIn(runner: ProcessRunner, dir: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const entry = join(dir, name);
    if (await isSubvolume(entry)) await removeWithSubvolumes(runner, entry);
  }
}

/** Deletes the backup subvolumes a guest's subvolume holds, and their directories. */
async function removeNestedSubvolumes(runner: ProcessRunner, subvolume: string): Promise<void> {
  for (const name of [BACKUP_SNAPSHOTS, BACKUP_RECEIVED]) {
    await removeWithSubvolumes(runner, join(subvolume, name));
  }
}

/** Removes a guest's backup and received snapshots (its layer was replaced, or it is deleted). */
export async function removeBackupSubvolumes(runner: ProcessRunner, guestDir: string): Promise<void> {
  await removeNestedSubvolumes(runner, guestDir);
}

/**
 * Removes every subvolume a guest's directory holds besides itself (backup snapshots, received
 * ones, a receive cut short), so that the directory can be removed by rm or deleted as a subvolume.
 */
export async function removeGuestSubvolumes(runner: ProcessRunner, guestDir: string): Promise<void> {
  await removeNestedSubvolumes(runner, guestDir);
}

/** Removes the subvolumes in `dir` other than `keep`. */
export async function pruneSubvolumes(runner: ProcessRunner, dir: string, keep?: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name !== keep) await removeWithSubvolumes(runner, join(dir, name));
  }
}

/**
 * Makes `backup-snapshots/NAME`: a snapshot of the guest's subvolume taken inside `freeze`
 * (with the guest's processes frozen), then emptied of everything but `upper/` and made
 * read-only, as `btrfs send` wants it. The snapshot itself is instant; what is removed
 * afterwards (logs, work/, the ct snapshots' reflinked copies) only drops shared references.
 */
export async function makeBackupSnapshot(
  runner: ProcessRunner,
  guestDir: string,
  options: { name: string; freeze: (work: () => Promise<void>) => Promise<void> },
): Promise<string> {
  const dir = join(guestDir, BACKUP_SNAPSHOTS);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const snap = join(dir, options.name);
  await removeWithSubvolumes(runner, snap);
  try {
    await options.freeze(async () => {
      await runner.run(['btrfs', 'subvolume', 'snapshot', guestDir, snap]);
    });
    // Nested subvolumes (earlier backup snapshots) appear in a snapshot as empty directories.
    for (const name of await readdir(snap)) {
      if (name !== KEPT) await rm(join(snap, name), { recursive: true, force: true });
    }
    await runner.run(['btrfs', 'property', 'set', '-ts', snap, 'ro', 'true']);
    return snap;
  } catch (e) {
    await removeWithSubvolumes(runner, snap).catch(() => {});
    throw e;
  }
}

/** Writes `btrfs send [-p parent] snap`, compressed with zstd on every core, to `out` (a FIFO or file). */
export async function sendSnapshot(
  runner: ProcessRunner,
  snap: string,
  options: { parent?: string; out: string; signal?: AbortSignal },
): Promise<void> {
  const parent = options.parent ? ['-p', options.parent] : [];
  await runner.run(
    [
      'bash',
      '-c',
      'set -o pipefail; out=$1; shift; btrfs send -q "$@" | zstd -q -T0 -c > "$out"',
      'btrfs-send',
      options.out,
      ...parent,
      snap,
    ],
    { ...(options.signal && { signal: options.signal }) },
  );
}

/** The fields `btrfs subvolume show` prints for a subvolume (UUID, Parent UUID, Received UUID…). */
async function subvolumeFields(runner: ProcessRunner, path: string): Promise<Map<string, string>> {
  const { stdout } = await runner.run(['btrfs', 'subvolume', 'show', path]);
  const fields = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const m = /^\t([A-Za-z ()]+):\s*(.*)$/.exec(line);
    if (m?.[1] && m[2] !== undefined) fields.set(m[1].trim(), m[2].trim());
  }
  return fields;
}

/** A UUID field as 32 hex digits, or undefined when the subvolume has none (`-`). */
const uuidField = (fields: Map<string, string>, name: string): string | undefined => {
  const v = fields.get(name)?.replaceAll('-', '').toLowerCase();
  return v && /^[0-9a-f]{32}$/.test(v) ? v : undefined;
};

/**
 * `zstd -d < from | btrfs receive -C -e into`, with the stream checked on its way
 * (btrfs-stream-check.ts): receive is given each command only once it passed, so a stream that
 * reaches outside its subvolume or into another's data is refused before receive applies that
 * command. The payload comes through a FIFO, read once: it is checked as it is applied.
 */
async function checkedReceive(
  runner: ProcessRunner,
  from: string,
  options: { into: string; expect: ExpectedStream; guest: string; signal?: AbortSignal },
): Promise<void> {
  const { into, expect, guest, signal } = options;
  const zstd = runner.spawn(['zstd', '-q', '-d', '-c', '--', from], { stdio: ['ignore', 'pipe', 'pipe'] });
  const receive = runner.spawn(['btrfs', 'receive', '-q', '-C', '-e', into], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  const zstdExit = childEnded(zstd);
  const receiveExit = childEnded(receive);
  const stopAll = () => {
    zstd.kill('SIGKILL');
    receive.kill('SIGKILL');
  };
  signal?.addEventListener('abort', stopAll, { once: true });
  const input = receive.stdin;
  // receive may end early (its own refusal): writes then fail, and its exit says why.
  let inputGone = false;
  input?.on('error', () => {
    inputGone = true;
  });
  const receiveEnded = receiveExit.then(() => {
    inputGone = true;
  });
  const forward = async (bytes: Buffer) => {
    if (!input || inputGone) return;
    if (!input.write(bytes)) await Promise.race([once(input, 'drain').catch(() => {}), receiveEnded]);
  };
  try {
    const stdout = zstd.stdout;
    if (!stdout) throw new Error('zstd has no output');
    const refused = await checkSendStream(stdout, expect, forward).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (refused) stopAll();
    else input?.end();
    const [zstdEnd, receiveEnd] = await Promise.all([zstdExit, receiveExit]);
    signal?.throwIfAborted();
    if (refused) throw refused;
    if (zstdEnd.code !== 0) {
      const line = zstdEnd.stderr.trim().split('\n')[0] ?? '';
      throw invalidArgument(
        `The backup cannot be applied to guest ${guest} (${line.replace(/^zstd: /, '') || 'it does not decompress'}): it is damaged.`,
      );
    }
    if (receiveEnd.code !== 0) {
      const stderr = receiveEnd.stderr.trim();
      if (/No space left/i.test(stderr)) throw new Error(stderr);
      const line = stderr.split('\n').find((l) => l.startsWith('ERROR')) ?? stderr.split('\n')[0] ?? '';
      throw invalidArgument(
        `The backup cannot be applied to guest ${guest} (${line.replace(/^ERROR: /, '')}): it is damaged, or not the next link of the chain applied.`,
      );
    }
  } finally {
    signal?.removeEventListener('abort', stopAll);
  }
}

/**
 * Receives the zstd-compressed send stream at `from` into the guest's `backup-received/` (on
 * its btrfs pool: an incremental stream finds its parent there by UUID; a received subvolume,
 * read-only, cannot be moved to another directory afterwards) and returns the subvolume made,
 * which must be `name`. A stream that does not decompress or that btrfs receive refuses (its
 * commands carry CRCs) is refused in one line, and whatever it made is removed. The stream is
 * checked command by command before receive gets each (decision 0090): one subvolume, a snapshot only of `parent` (the guest's
 * previous link), clones only from itself or `parent`, no path out of it; and a received
 * snapshot must have `parent` itself as its source, not another subvolume with its received UUID.
 */
export async function receiveStream(
  runner: ProcessRunner,
  from: string,
  options: { guestDir: string; name: string; guest: string; parent?: string; signal?: AbortSignal },
): Promise<string> {
  const { guestDir, name, guest, signal } = options;
  const into = join(guestDir, BACKUP_RECEIVED);
  await mkdir(into, { recursive: true, mode: 0o700 });
  const path = join(into, name);
  await removeWithSubvolumes(runner, path);
  let parent: { uuid: string; receivedUuid: string } | undefined;
  if (options.parent !== undefined) {
    const fields = await subvolumeFields(runner, options.parent);
    const uuid = uuidField(fields, 'UUID');
    const receivedUuid = uuidField(fields, 'Received UUID');
    if (!uuid || !receivedUuid) {
      throw failedPrecondition(
        `Guest ${guest}'s previous link (${options.parent}) is not a received subvolume: import the chain again from its full backup.`,
      );
    }
    parent = { uuid, receivedUuid };
  }
  const earlier = new Set(await readdir(into));
  const made = async () => (await readdir(into)).filter((n) => !earlier.has(n));
  try {
    await checkedReceive(runner, from, {
      into,
      expect: { name, ...(parent && { parentReceivedUuid: parent.receivedUuid, parentUuid: parent.uuid }) },
      guest,
      ...(signal && { signal }),
    });
    const names = await made();
    if (names.length !== 1 || names[0] !== name || !(await isSubvolume(path))) {
      throw invalidArgument(
        `The backup's btrfs stream holds ${names.join(', ') || 'nothing'}, not snapshot ${name}: it was not made by a ct export.`,
      );
    }
    if (!(await stat(join(path, KEPT)).catch(() => undefined))?.isDirectory()) {
      throw invalidArgument(`The backup's btrfs stream holds no ${KEPT}/: it was not made by a ct export.`);
    }
    // receive finds the parent by its received UUID among every subvolume of the pool: it must
    // have taken the guest's own previous link, not another subvolume that claims the same UUID.
    if (parent && uuidField(await subvolumeFields(runner, path), 'Parent UUID') !== parent.uuid) {
      throw invalidArgument(
        `The backup's btrfs stream was applied onto a subvolume other than guest ${guest}'s previous link: refused, nothing kept.`,
      );
    }
    // A stream's symbolic link followed by a later command can reach the directory received into
    // (receive is chrooted there, decision 0067): its mode is put back.
    await chmod(into, 0o700);
    return path;
  } catch (e) {
    for (const n of await made().catch(() => [] as string[])) {
      await removeWithSubvolumes(runner, join(into, n)).catch(() => {});
    }
    throw e;
  }
}
