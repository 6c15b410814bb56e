import { createHash, randomBytes } from 'node:crypto';
import { lstat, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackupChainLink } from '../guest-storage.ts';
import { isManifestName, removeManifests } from './ct-chain-carry.ts';

/**
 * Per guest: the chain its last incremental backup belongs to, that backup's
 * number, and the GNU tar snapshot file (`--listed-incremental`) that the
 * next one continues from (docs/decisions/0048-ct-incremental-backups.md).
 */
export const CT_CHAIN_FILE = 'backup-chain.json';
/** Per guest: which backup of which chain its upper layer was last restored to, and the layer's stamp then. */
export const CT_RESTORED_CHAIN_FILE = 'restored-chain.json';
/** Snapshot files are named after their link, so that a new one is written beside the one in use. */
const SNAR_PREFIX = 'backup-chain-';
const SNAR_NAME = /^backup-chain-[0-9a-f]{16}-\d+\.snar$/;
const CHAIN_ID = /^[0-9a-f]{16}$/;

/**
 * The state of a guest's own backup chain: its last link, the tar snapshot file after it and the
 * manifest of what it archived (decision 0062, amended 2026-12-07). A chain taken over from
 * another member has the manifest alone: its next link is made from it (ct-chain-carry.ts).
 */
export interface CtChainState {
  chain: string;
  sequence: number;
  /** File name (in the guest's dir) of the tar snapshot file written by that backup. */
  snar?: string;
  /** File name (in the guest's dir) of the link's manifest (ct-chain-carry.ts), where one was made. */
  manifest?: string;
  /**
   * 'btrfs-send': that backup was a `btrfs send` of its snapshot in backup-snapshots/ (decision
   * 0067), which the next one is sent against while it exists; tar's snapshot file is kept too.
   */
  method?: 'btrfs-send';
}

/** What a guest restored from a chain was last brought to, with the upper layer's stamp at that moment. */
export interface CtRestoredState {
  chain: string;
  sequence: number;
  stamp: string;
}

/** The link the next backup makes: the one after `state`, or a new chain (a full backup) without one. */
export function nextLink(state: CtChainState | undefined, newChain: () => string): BackupChainLink {
  return state
    ? { chain: state.chain, sequence: state.sequence + 1, kind: 'incremental' }
    : { chain: newChain(), sequence: 0, kind: 'full' };
}

/** A new chain's id: 16 hex digits, as vm chains have. */
export const newChainId = (): string => randomBytes(8).toString('hex');

/** The snapshot file name of a link. */
export const snarNameOf = (link: { chain: string; sequence: number }): string =>
  `${SNAR_PREFIX}${link.chain}-${link.sequence}.snar`;

/**
 * Parses a guest's chain record; anything else than what commitChain wrote
 * (a hand-edited or damaged file) counts as no chain, so the next backup is full.
 */
export function parseChainState(text: string): CtChainState | undefined {
  try {
    const v = JSON.parse(text) as Partial<CtChainState>;
    if (
      typeof v.chain === 'string' &&
      CHAIN_ID.test(v.chain) &&
      Number.isSafeInteger(v.sequence) &&
      (v.sequence ?? -1) >= 0 &&
      (v.snar === undefined || (typeof v.snar === 'string' && SNAR_NAME.test(v.snar))) &&
      (v.manifest === undefined || (typeof v.manifest === 'string' && isManifestName(v.manifest))) &&
      (v.snar !== undefined || v.manifest !== undefined)
    ) {
      return {
        chain: v.chain,
        sequence: v.sequence as number,
        ...(v.snar !== undefined && { snar: v.snar }),
        ...(v.manifest !== undefined && { manifest: v.manifest }),
        ...(v.method === 'btrfs-send' && { method: v.method }),
      };
    }
  } catch {
    // Not JSON: no chain.
  }
  return undefined;
}

/** The guest's chain, if it has one whose snapshot file (or, taken over, manifest) is present. */
export async function readChain(dir: string): Promise<CtChainState | undefined> {
  const state = parseChainState(await readFile(join(dir, CT_CHAIN_FILE), 'utf8').catch(() => ''));
  if (!state) return undefined;
  const isFile = async (name: string) =>
    (await lstat(join(dir, name)).catch(() => undefined))?.isFile() === true;
  if (state.snar !== undefined) {
    if (!(await isFile(state.snar))) return undefined;
    // A manifest that is gone only means that this chain cannot be carried: it goes on here.
    if (state.manifest !== undefined && !(await isFile(state.manifest))) delete state.manifest;
    return state;
  }
  return state.manifest !== undefined && (await isFile(state.manifest)) ? state : undefined;
}

/**
 * Makes `state` the guest's chain: its record is replaced in one rename (the
 * moment the new link counts), then snapshot files of earlier links go.
 */
export async function commitChain(dir: string, state: CtChainState): Promise<void> {
  await writeAtomically(join(dir, CT_CHAIN_FILE), state);
  await removeSnars(dir, state.snar);
  await removeManifests(dir, state.manifest);
}

/** Forgets the guest's own chain and any chain it was restored from: its upper layer is new. */
export async function forgetChains(dir: string): Promise<void> {
  await rm(join(dir, CT_CHAIN_FILE), { force: true });
  await rm(join(dir, CT_RESTORED_CHAIN_FILE), { force: true });
  await removeSnars(dir);
  await removeManifests(dir);
}

export async function readRestored(dir: string): Promise<CtRestoredState | undefined> {
  const text = await readFile(join(dir, CT_RESTORED_CHAIN_FILE), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Partial<CtRestoredState>;
    if (typeof v.chain === 'string' && typeof v.sequence === 'number' && typeof v.stamp === 'string') {
      return { chain: v.chain, sequence: v.sequence, stamp: v.stamp };
    }
  } catch {
    // Damaged: as if the guest had been restored from no chain.
  }
  return undefined;
}

export async function writeRestored(dir: string, state: CtRestoredState): Promise<void> {
  await writeAtomically(join(dir, CT_RESTORED_CHAIN_FILE), state);
}

/**
 * A stamp of a tree that changes with any change in it: a hash of every
 * entry's path, inode, type and mode, owner, size and status change time
 * (ctime). Writing, creating, renaming, deleting (the parent's ctime), chown,
 * chmod and xattrs all set a ctime to the present. An incremental tar applied
 * onto a layer the guest changed since would mix two histories, so the import
 * compares this before applying one.
 */
export async function treeStamp(root: string): Promise<string> {
  const hash = createHash('sha256');
  const stack = ['.'];
  while (stack.length > 0) {
    const rel = stack.pop() as string;
    const path = join(root, rel);
    const st = await lstat(path, { bigint: true });
    hash.update(`${rel}\0${st.ino}:${st.mode}:${st.uid}:${st.gid}:${st.size}:${st.ctimeNs}\n`);
    if (st.isDirectory()) for (const name of (await readdir(path)).sort()) stack.push(join(rel, name));
  }
  return hash.digest('hex');
}

async function removeSnars(dir: string, keep?: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith(SNAR_PREFIX) && name.endsWith('.snar') && name !== keep) {
      await rm(join(dir, name), { force: true });
    }
  }
}

async function writeAtomically(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value)}\n`, { mode: 0o600 });
  await rename(tmp, path);
}
