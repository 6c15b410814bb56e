import { unavailable } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { GuestSpec } from '../core/types.ts';
import { compareByteOrder } from './key-order.ts';
import { countKeys, type KeyValue, type KvStore, readTogether, type TxnOp } from './kv.ts';
import { records } from './records.ts';

/**
 * The index of each project's guests (decision 0087): one empty key per guest under its project,
 * put in the transaction that makes the guest's spec and deleted in the one that removes it, so a
 * project's guests are read by prefix instead of among every guest of the store.
 */
export const projectGuestIndex = {
  putOp: (spec: Pick<GuestSpec, 'name' | 'project'>): TxnOp => ({
    type: 'put',
    key: keys.projectGuest(projectOfRecord(spec), spec.name),
    value: '',
  }),
  deleteOp: (spec: Pick<GuestSpec, 'name' | 'project'>): TxnOp => ({
    type: 'delete',
    key: keys.projectGuest(projectOfRecord(spec), spec.name),
  }),
};

/** Gets per transaction: etcd refuses more than 128 operations in one (`--max-txn-ops`). */
const CHUNK = 100;

/** Specs the `index` path reads in one request. */
export const SPECS_PER_READ = CHUNK;

/**
 * How a project's guests are read: `index`, the project's index keys then each spec by key (two
 * records a guest of the project, a round trip per 100 specs); `all`, every guest's spec in one
 * range read, filtered by project (one record a guest of the store, no round trip more).
 */
export type GuestReadPath = 'index' | 'all';

/**
 * The cheaper path for `project` (decision 0087): `all` when the store holds fewer guests than
 * twice the project's (a project with most of the host's guests, `default` most often), else
 * `index`. Decided on two counts, which read no record; taken before the caller's read, so a
 * count a little stale only picks the dearer path, never another answer: both read the same specs.
 */
export async function guestReadPath(store: Pick<KvStore, 'list'>, project: string): Promise<GuestReadPath> {
  const [mine, every] = await Promise.all([
    countKeys(store, keys.projectGuests(project)),
    countKeys(store, records.guest.prefix),
  ]);
  return pathFor(mine, every);
}

/** The cheaper path for a project of `mine` index keys among `every` guest specs. */
export const pathFor = (mine: number, every: number): GuestReadPath => (every < 2 * mine ? 'all' : 'index');

/**
 * The two counts `guestReadPath` takes, as reads to put into a transaction of the caller's own
 * (`readTogether`'s `counts`, in this order: the project's index keys, every guest spec): they
 * check a path chosen before, in the same request (decision 0087, amended).
 */
export const guestCountReads = (project: string) => [
  { key: keys.projectGuests(project), prefix: true, countOnly: true },
  { key: records.guest.prefix, prefix: true, countOnly: true },
];

/** What `projectGuestSpecs` takes: the index's mark and what the path read first. */
export interface GuestsRead {
  /** The index is complete (its mark was read). */
  indexed: boolean;
  path: GuestReadPath;
  /** `index`: the project's index keys; `all`: every guest's spec. */
  found: KeyValue[];
}

/**
 * The specs of a project's guests: on the `all` path, those read (every guest's; the caller keeps
 * its project's); else from the index when it is complete, by key, else from every guest of the
 * store. A spec deleted since its index key was read is left out; one of another project (a stale
 * key) is the caller's to leave out, as on the `all` path.
 */
export async function projectGuestSpecs(
  store: KvStore,
  project: string,
  read: GuestsRead,
): Promise<KeyValue[]> {
  if (read.path === 'all') return read.found;
  if (!read.indexed) return (await store.list(records.guest.prefix)).kvs;
  const prefix = keys.projectGuests(project);
  const names = read.found.map((kv) => kv.key.slice(prefix.length));
  const out: KeyValue[] = [];
  for (let i = 0; i < names.length; i += CHUNK) {
    const got = await readTogether(
      store,
      names.slice(i, i + CHUNK).map((name) => ({ key: records.guest.key(name) })),
    );
    for (const kvs of got.kvs) if (kvs[0]) out.push(kvs[0]);
  }
  return out;
}

/** The reads `projectGuestSpecs` needs first on `path`, to put into a transaction of the caller's own. */
export const projectGuestReads = (project: string, path: GuestReadPath = 'index') => [
  { key: keys.projectGuestsIndexed },
  path === 'all'
    ? { key: records.guest.prefix, prefix: true }
    : { key: keys.projectGuests(project), prefix: true },
];

/** What `projectGuestSpecs` takes, from the answers to `projectGuestReads` (in their order). */
export const guestsRead = ([indexed, found]: KeyValue[][], path: GuestReadPath = 'index'): GuestsRead => ({
  indexed: (indexed?.length ?? 0) > 0,
  path,
  found: found ?? [],
});

/** A project's guests' specs, read on their own (the cheaper path, then the specs). */
export async function readProjectGuestSpecs(store: KvStore, project: string): Promise<KeyValue[]> {
  const path = await guestReadPath(store, project);
  const read = await readTogether(store, projectGuestReads(project, path));
  return projectGuestSpecs(store, project, guestsRead(read.kvs, path));
}

/**
 * The names of `project`'s guests (every project's when undefined) from the index alone, in the
 * order of their specs' keys (name order), no record decoded: what a list of those guests shows,
 * read in one request. Undefined when the index cannot say it exactly: not marked complete, or
 * its keys and the specs it could not index do not add up to the guest specs counted at the same
 * revision (a key left or missed by a member running a daemon from before the index, which the
 * periodic check repairs): the caller then reads the specs.
 */
export async function indexedGuestNames(
  store: Pick<KvStore, 'txn'>,
  project: string | undefined,
): Promise<string[] | undefined> {
  const read = await readTogether(store, [
    { key: keys.projectGuestsIndexed },
    { key: project === undefined ? keys.projectGuestPrefix : keys.projectGuests(project), prefix: true },
    { key: records.guest.prefix, prefix: true, countOnly: true },
    { key: keys.projectGuestPrefix, prefix: true, countOnly: true },
  ]);
  const mark = markOf(read.kvs[0]?.[0]);
  const [, , guests = 0, indexKeys = 0] = read.counts;
  if (!mark || indexKeys + mark.unindexable !== guests) return undefined;
  const names = (read.kvs[1] ?? []).map((kv) => kv.key.slice(kv.key.lastIndexOf('/') + 1));
  // Every project's keys come project by project; the specs' keys are in name order.
  return project === undefined ? names.sort(compareByteOrder) : names;
}

/** Keys per transaction of the backfill: a compare and a write each, under etcd's 128 operations. */
const BATCH = 60;

/** How many times a key of the backfill is tried against a guest that keeps changing. */
const ATTEMPTS = 5;

/** What `indexProjectGuests` found and did. */
export interface IndexCheck {
  added: number;
  dropped: number;
  /**
   * Why it indexed: `unmarked`, a store written before the index (or while a recount ran);
   * `short`, fewer keys than guests, so a guest was made without its key (by a member running a
   * daemon from before the index): the mark was dropped first, so readers read every guest until
   * the index was whole again. Absent when the index was complete (nothing read but the counts).
   */
  recount?: 'unmarked' | 'short';
  /** Guest specs and index keys counted at the check (one revision). */
  guests: number;
  keys: number;
}

/** The mark's value: when the index was made whole, and how many guest specs it could not index (they do not decode). */
interface IndexMark {
  at: string;
  unindexable: number;
}

function markOf(kv: KeyValue | undefined): IndexMark | undefined {
  if (!kv) return undefined;
  try {
    const v = JSON.parse(kv.value) as Partial<IndexMark>;
    return { at: String(v.at ?? ''), unindexable: Number(v.unindexable ?? 0) || 0 };
  } catch {
    // The first marks held the date alone.
    return { at: kv.value, unindexable: 0 };
  }
}

/**
 * Makes the index complete, then marks it so (decision 0087): for a store written before it,
 * and again whenever fewer index keys than guest specs are counted. Every member runs it at
 * start and every minute (main.ts): a complete index costs one request (the mark and two counts at
 * one revision). Each key is written or dropped on a compare with the guest's spec as read, so a
 * guest made or deleted meanwhile (whose own transaction keeps its key) is never indexed wrongly;
 * every member may run it at once. Throws when it cannot finish (readers then go on reading every
 * guest, and the next run tries again).
 */
export async function indexProjectGuests(store: KvStore): Promise<IndexCheck> {
  const counted = await readTogether(store, [
    { key: keys.projectGuestsIndexed },
    { key: records.guest.prefix, prefix: true, countOnly: true },
    { key: keys.projectGuestPrefix, prefix: true, countOnly: true },
  ]);
  const mark = markOf(counted.kvs[0]?.[0]);
  const [, guests = 0, indexKeys = 0] = counted.counts;
  // A guest made by new code has its key from the same transaction; a stale key (of a guest an
  // older daemon deleted) is harmless to readers and may hide a missing one: counts see the net.
  if (mark && indexKeys + mark.unindexable >= guests)
    return { added: 0, dropped: 0, guests, keys: indexKeys };
  const recount = mark ? 'short' : 'unmarked';
  // Readers read every guest again until the index is whole (never fewer than there are).
  if (mark) await store.delete(keys.projectGuestsIndexed);
  const read = await readTogether(store, [
    { key: records.guest.prefix, prefix: true },
    { key: keys.projectGuestPrefix, prefix: true },
  ]);
  /** Index key → the guest's name and its spec's revision as read. */
  const want = new Map<string, { name: string; modRevision: number }>();
  const specRevision = new Map<string, number>();
  let unindexable = 0;
  for (const kv of read.kvs[0] ?? []) {
    const name = records.guest.nameOf(kv.key);
    specRevision.set(name, kv.modRevision);
    const key = indexKeyOf(kv);
    if (key) want.set(key, { name, modRevision: kv.modRevision });
    else unindexable++;
  }
  const have = new Set((read.kvs[1] ?? []).map((kv) => kv.key));
  const todo: Array<{ key: string; name: string; modRevision: number; put: boolean }> = [];
  for (const [key, g] of want) if (!have.has(key)) todo.push({ key, ...g, put: true });
  for (const key of have) {
    if (want.has(key)) continue;
    const name = key.slice(key.lastIndexOf('/') + 1);
    todo.push({ key, name, modRevision: specRevision.get(name) ?? 0, put: false });
  }
  let added = 0;
  let dropped = 0;
  // In batches, each on a compare with every spec it indexes as read; a batch that fails (a guest
  // changed meanwhile) is done again key by key, each as its spec then says.
  for (let i = 0; i < todo.length; i += BATCH) {
    const batch = todo.slice(i, i + BATCH);
    const r = await store.txn({
      compare: batch.map((x) => records.guest.at(x.name).unchanged(x.modRevision)),
      success: batch.map(
        (x): TxnOp => (x.put ? { type: 'put', key: x.key, value: '' } : { type: 'delete', key: x.key }),
      ),
    });
    for (const x of batch) {
      const did = r.succeeded ? (x.put ? 'put' : 'dropped') : await settle(store, x.name, x.key);
      if (did === 'put') added++;
      else dropped++;
    }
  }
  const value: IndexMark = { at: new Date().toISOString(), unindexable };
  await store.put(keys.projectGuestsIndexed, JSON.stringify(value));
  return { added, dropped, recount, guests, keys: indexKeys };
}

/** The index key a guest's spec should have, or undefined for a record that does not decode. */
function indexKeyOf(kv: KeyValue): string | undefined {
  try {
    const spec = records.guest.decode(kv);
    return keys.projectGuest(projectOfRecord(spec), spec.name);
  } catch {
    return undefined;
  }
}

/**
 * Puts or drops the index key `key` of guest `name` as its spec now says (put when the spec is
 * there and `key` is its key, dropped otherwise), on a compare with that spec.
 */
async function settle(store: KvStore, name: string, key: string): Promise<'put' | 'dropped'> {
  for (let i = 0; i < ATTEMPTS; i++) {
    const kv = await store.get(records.guest.key(name));
    const belongs = kv !== undefined && indexKeyOf(kv) === key;
    const r = await store.txn({
      compare: [records.guest.at(name).unchanged(kv?.modRevision ?? 0)],
      success: [belongs ? { type: 'put', key, value: '' } : { type: 'delete', key }],
    });
    if (r.succeeded) return belongs ? 'put' : 'dropped';
  }
  throw unavailable(
    `Guest ${name} kept changing while its project's index was written: restart the daemon to try again`,
  );
}
