import { mkdir, readdir, readFile, readlink, rename, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition } from '../../core/errors.ts';

/** Ids mapped into a user-namespaced guest: 0–65535, as Incus and Docker map. */
export const ID_RANGE_SIZE = 65_536;

/**
 * Guests' own ranges start this many blocks of 65536 above the id base. Block 0
 * is the shared range (`security.idmap.isolated=false`, and guests made before
 * decision 18), block 1 is left for vm guests' QEMU uids, block 2 holds the pvm
 * kernels' uids (src/drivers/pvm, `idmapBase + 131072 + n`), block 3 is spare.
 */
export const FIRST_OWN_BLOCK = 4;

/** Highest id a user namespace can map; (uid_t)-1 is "no id". */
const MAX_ID = 0xfffffffe;

/** The host ids one ct guest's user namespace maps: guest id n is host id `base + n`. */
export interface IdRange {
  base: number;
  size: number;
  /** Whether the range is the guest's own (false: the shared one at the id base). */
  own: boolean;
}

/** What `guests/NAME/idmap.json` holds. */
interface IdmapFile {
  base: number;
  size: number;
  slot?: number;
}

/** Number of guests' own ranges that fit below the highest id. */
export function ownRangeSlots(idmapBase: number): number {
  return Math.max(0, Math.floor((MAX_ID + 1 - idmapBase) / ID_RANGE_SIZE) - FIRST_OWN_BLOCK);
}

/** Host id base of own range `slot`. */
export function ownRangeBase(idmapBase: number, slot: number): number {
  return idmapBase + (FIRST_OWN_BLOCK + slot) * ID_RANGE_SIZE;
}

/**
 * Whether `id` can be the base of a range a guest's files were written under: 0
 * (a privileged guest), the shared base, or the base of an own range. A guest's
 * root can make its root directory owned by any id of its range but only the
 * first one is such a base, so this is how a tree says which range its ids are in.
 */
export function isRangeBase(idmapBase: number, id: number): boolean {
  if (id === 0 || id === idmapBase) return true;
  const offset = id - idmapBase;
  if (offset < FIRST_OWN_BLOCK * ID_RANGE_SIZE || offset % ID_RANGE_SIZE !== 0) return false;
  return offset / ID_RANGE_SIZE - FIRST_OWN_BLOCK < ownRangeSlots(idmapBase);
}

/** The range of a running process's user namespace, from its uid_map (`0 BASE SIZE`). */
export async function readIdRangeOf(pid: number): Promise<{ base: number; size: number }> {
  const text = await readFile(`/proc/${pid}/uid_map`, 'utf8');
  const first = text.trim().split('\n')[0]?.trim().split(/\s+/).map(Number) ?? [];
  const [inner, outer, size] = first;
  if (inner !== 0 || outer === undefined || size === undefined) {
    throw failedPrecondition(`Process ${pid} has no user namespace map starting at id 0.`);
  }
  return { base: outer, size };
}

/**
 * Per-guest id ranges of one state dir (Incus's `security.idmap.isolated`, on by
 * default here). A range is claimed by a symlink `idmap/<slot>` → guest name,
 * made with symlink(2), which fails if another guest holds the slot: claims are
 * atomic without a lock, and finding a free slot is one readdir, not a read of
 * every guest's files (10,000 guests on a host). The guest keeps its range in
 * `guests/NAME/idmap.json`, read at every start.
 */
export interface IdRanges {
  /** The range recorded for the guest, if any (`dir` is its real directory). */
  recorded(dir: string): Promise<IdRange | undefined>;
  /**
   * The guest's own range: the recorded one while its claim is still the guest's,
   * else a newly claimed one (recorded in `dir`). FailedPrecondition when all are taken.
   */
  own(name: string, dir: string): Promise<IdRange>;
  /** Records the shared range for the guest (and gives back an own range it held). */
  shared(name: string, dir: string): Promise<IdRange>;
  /** Gives back the guest's own range, if it holds one (before its directory goes: see delete). */
  release(name: string, dir: string): Promise<void>;
}

export function createIdRanges(stateDir: string, idmapBase: number): IdRanges {
  const claimsDir = join(stateDir, 'idmap');
  const slots = ownRangeSlots(idmapBase);
  const fileOf = (dir: string) => join(dir, 'idmap.json');

  const readFileRecord = async (dir: string): Promise<IdmapFile | undefined> => {
    try {
      const r = JSON.parse(await readFile(fileOf(dir), 'utf8')) as IdmapFile;
      return Number.isInteger(r.base) && Number.isInteger(r.size) ? r : undefined;
    } catch {
      return undefined;
    }
  };

  const write = async (dir: string, record: IdmapFile): Promise<void> => {
    const tmp = `${fileOf(dir)}.tmp`;
    await writeFile(tmp, `${JSON.stringify(record)}\n`, { mode: 0o644 });
    await rename(tmp, fileOf(dir));
  };

  const holderOf = async (slot: number): Promise<string | undefined> =>
    readlink(join(claimsDir, String(slot))).catch(() => undefined);

  /**
   * Claims the lowest free slot for the guest. The guest's record names the slot before the
   * claim is made: a daemon killed in between leaves a record whose slot is taken back at the
   * next start, never a claim that no record names (which would hold a range for ever).
   */
  const claim = async (name: string, dir: string): Promise<number> => {
    await mkdir(claimsDir, { recursive: true, mode: 0o700 });
    const taken = new Set((await readdir(claimsDir)).map(Number));
    for (let slot = 0; slot < slots; slot++) {
      if (taken.has(slot)) continue;
      await write(dir, { base: ownRangeBase(idmapBase, slot), size: ID_RANGE_SIZE, slot });
      try {
        await symlink(name, join(claimsDir, String(slot)));
        return slot;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    throw failedPrecondition(
      `All ${slots} id ranges of this host are taken: delete guests, or set security.idmap.isolated=false on some.`,
    );
  };

  const releaseSlot = async (name: string, slot: number | undefined): Promise<void> => {
    if (slot === undefined) return;
    if ((await holderOf(slot)) === name) await unlink(join(claimsDir, String(slot))).catch(() => {});
  };

  const ranges: IdRanges = {
    async recorded(dir) {
      const r = await readFileRecord(dir);
      return r && { base: r.base, size: r.size, own: r.slot !== undefined };
    },

    async own(name, dir) {
      const r = await readFileRecord(dir);
      if (r?.slot !== undefined && r.base === ownRangeBase(idmapBase, r.slot)) {
        const holder = await holderOf(r.slot);
        if (holder === name) return { base: r.base, size: r.size, own: true };
        // A state dir restored without its claims: take the same slot back if it is free.
        if (holder === undefined) {
          await mkdir(claimsDir, { recursive: true, mode: 0o700 });
          const ok = await symlink(name, join(claimsDir, String(r.slot))).then(
            () => true,
            () => false,
          );
          if (ok) return { base: r.base, size: r.size, own: true };
        }
      }
      const slot = await claim(name, dir);
      return { base: ownRangeBase(idmapBase, slot), size: ID_RANGE_SIZE, own: true };
    },

    async shared(name, dir) {
      const r = await readFileRecord(dir);
      const range = { base: idmapBase, size: ID_RANGE_SIZE };
      if (r?.base !== range.base || r.slot !== undefined) await write(dir, range);
      await releaseSlot(name, r?.slot);
      return { ...range, own: false };
    },

    async release(name, dir) {
      await releaseSlot(name, (await readFileRecord(dir))?.slot);
    },
  };
  return ranges;
}
