import { createHash, randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Model } from '../core/types.ts';
import type { PortableChainState } from '../drivers/guest-storage.ts';

/**
 * A guest's backup chain state as a file beside the archive of the link it follows (decision 0062,
 * amended): written by the export beside its archive, shipped beside the archive into the backup
 * directory, and read by the scheduler of whichever member holds the guest next, so that the
 * first backup after a move or a recovery can be that chain's next link. Only models whose state
 * another member can check have one (pvm: block checksums; ct: a manifest of its layer; vm: the
 * name of the disk's bitmap of that link, which the disk carries when it moves).
 *
 *     <dir>/<guest>/20261205T040000Z-incr-3f9a1c2b4d5e6f70-1.tar
 *     <dir>/<guest>/20261205T040000Z-incr-3f9a1c2b4d5e6f70-1.chain.json   the state after it
 *
 * The file names its guest, model and link and carries the sha256 of its data: one that does not
 * say exactly that (damaged, renamed, of another guest) is no state, and the next backup is full.
 */
const FORMAT = 'trivisor-chain-state/1';
const SUFFIX = '.chain.json';

interface ChainStateFile {
  format: typeof FORMAT;
  guest: string;
  model: Model;
  chain: string;
  sequence: number;
  sha256: string;
  data: string;
}

/** The chain state file of the archive at `archivePath` (`….tar` → `….chain.json`). */
export const chainStateFileOf = (archivePath: string): string => archivePath.replace(/\.tar$/, '') + SUFFIX;

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Writes `state` of guest `guest` to `path`, whole or not at all (written beside it, then renamed). */
export async function writeChainState(
  path: string,
  about: { guest: string; model: Model },
  state: PortableChainState,
): Promise<void> {
  const file: ChainStateFile = {
    format: FORMAT,
    guest: about.guest,
    model: about.model,
    chain: state.chain,
    sequence: state.sequence,
    sha256: sha256(state.data),
    data: state.data.toString('base64'),
  };
  // '.tmp-' first: the daemon's sweep at start removes what a crash left (storage-recovery.ts).
  const tmp = join(dirname(path), `.tmp-${basename(path)}-${randomBytes(4).toString('hex')}`);
  try {
    await writeFile(tmp, `${JSON.stringify(file)}\n`, { mode: 0o600 });
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * The state in `path` when it is the one of `expected`'s link of guest `expected.guest`, of its
 * model, with its data whole; undefined otherwise (no file, damaged, another guest's or link's).
 */
export async function readChainState(
  path: string,
  expected: { guest: string; model: Model; chain: string; sequence: number },
): Promise<PortableChainState | undefined> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Partial<ChainStateFile>;
    if (
      v.format !== FORMAT ||
      v.guest !== expected.guest ||
      v.model !== expected.model ||
      v.chain !== expected.chain ||
      v.sequence !== expected.sequence ||
      typeof v.data !== 'string' ||
      typeof v.sha256 !== 'string'
    ) {
      return undefined;
    }
    const data = Buffer.from(v.data, 'base64');
    if (sha256(data) !== v.sha256) return undefined;
    return { chain: v.chain, sequence: v.sequence, data };
  } catch {
    return undefined;
  }
}

/**
 * Ships the state file `from` (beside a local archive) as the state of the archive about to be
 * shipped at `shippedPath`, durably. Shipped before its archive: the newest link in the directory
 * then always has its state, even when a member dies between the two copies (a state whose archive
 * never came is never asked for, and goes at the next shipping: pruneChainStates).
 */
export async function shipChainState(shippedPath: string, from: string): Promise<void> {
  const guestDir = dirname(shippedPath);
  const target = chainStateFileOf(shippedPath);
  await mkdir(guestDir, { recursive: true, mode: 0o700 });
  const tmp = join(guestDir, `.${basename(target)}.tmp-${randomBytes(4).toString('hex')}`);
  try {
    await copyFile(from, tmp);
    await chmod(tmp, 0o600);
    const handle = await open(tmp, 'r');
    await handle.sync().finally(() => handle.close());
    await rename(tmp, target);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Removes the guest's chain states but the one of the archive at `shippedPath`: only the newest link's is continued from. */
export async function pruneChainStates(shippedPath: string): Promise<void> {
  const guestDir = dirname(shippedPath);
  const keep = chainStateFileOf(shippedPath);
  for (const name of await readdir(guestDir).catch(() => [] as string[])) {
    if (name.endsWith(SUFFIX) && !name.startsWith('.') && join(guestDir, name) !== keep) {
      await rm(join(guestDir, name), { force: true });
    }
  }
}
