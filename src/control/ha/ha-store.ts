import { Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { configValue } from '../../core/config-keys.ts';
import { internal } from '../../core/errors.ts';
import type { GuestSpec, GuestStatus } from '../../core/types.ts';
import { type KeyValue, type KvStore, readTogether, type TxnOp, type TxnRequest } from '../../store/kv.ts';
import { records, type Stored } from '../../store/records.ts';
import {
  type CrmLockValue,
  type HaGuestRecord,
  type HaMemberRecord,
  type HaWrite,
  type HeartbeatValue,
  haKeys,
  type Read,
  type Token,
} from './types.ts';

/**
 * The HA records in the real store (decision 0052), as the state machines of decision 0044 see
 * them. An HA guest's record (`haKeys.guest`) keeps only what HA decides: its owner, the owner's
 * token, failed starts, a move or an error. What the administrator decides (whether it is HA, its
 * priority, whether it should run, its size) is read from the guest's spec at each look, so that
 * the two never disagree; the CRM keeps the record's owner and the spec's location equal, in the
 * same transaction when it gives a guest away.
 */

/** `ha.enabled=true` on a guest. */
export const isHaGuest = (spec: GuestSpec): boolean => spec.config['ha.enabled'] === 'true';
/** `ha.priority` (higher restarts first; 0 when unset). */
export const haPriorityOf = (spec: GuestSpec): number => {
  const n = Number(spec.config['ha.priority'] ?? 0);
  return Number.isFinite(n) ? n : 0;
};

const HaGuestRecordSchema = Type.Object({
  name: Type.String(),
  owner: Type.String(),
  token: Type.Number(),
  decidedAt: Type.Number(),
  failures: Type.Number(),
  failedOn: Type.Array(Type.String()),
  moving: Type.Optional(
    Type.Object({
      to: Type.String(),
      token: Type.Number(),
      reason: Type.String(),
      wasRunning: Type.Optional(Type.Boolean()),
    }),
  ),
  error: Type.Optional(Type.String()),
});
const checkHaGuest = TypeCompiler.Compile(HaGuestRecordSchema);
const HeartbeatSchema = Type.Object({
  member: Type.String(),
  memoryTotalBytes: Type.Optional(Type.Number()),
  cpus: Type.Optional(Type.Number()),
});
const checkHeartbeat = TypeCompiler.Compile(HeartbeatSchema);
const CrmLockSchema = Type.Object({ member: Type.String(), token: Type.Number() });
const checkCrmLock = TypeCompiler.Compile(CrmLockSchema);

function decode<T>(kv: KeyValue, check: { Check(v: unknown): boolean }, what: string): Read<T> {
  let value: unknown;
  try {
    value = JSON.parse(kv.value);
  } catch {
    value = undefined;
  }
  if (!check.Check(value))
    throw internal(`The stored ${what} ${kv.key} is not valid: the store holds a corrupt record`);
  // Checked against its schema just above.
  return { value: value as T, createRevision: kv.createRevision, modRevision: kv.modRevision };
}

/** What the store keeps of an HA guest's record (the rest is read from its spec). */
export type StoredHa = Pick<
  HaGuestRecord,
  'name' | 'owner' | 'token' | 'decidedAt' | 'failures' | 'failedOn' | 'moving' | 'error'
>;

/** One HA guest record as stored, checked against its schema (Internal when corrupt). */
export const decodeHaRecord = (kv: KeyValue): Read<StoredHa> =>
  decode<StoredHa>(kv, checkHaGuest, 'HA record');

/** The record as the machines see it: what HA decided, and what the spec says now. */
export function projectHaGuest(spec: GuestSpec, stored: StoredHa): HaGuestRecord {
  return {
    ...stored,
    name: spec.name,
    model: spec.model,
    memoryBytes: configValue.memoryBytes(spec.config) ?? 0,
    cpus: configValue.cpus(spec.config) ?? 1,
    ha: isHaGuest(spec),
    priority: haPriorityOf(spec),
    want: spec.desired === 'Stopped' ? 'stopped' : 'started',
  };
}

/** Everything HA reads, at one store revision. */
export interface HaWorld {
  revision: number;
  lock: Read<CrmLockValue> | undefined;
  heartbeats: Read<HeartbeatValue>[];
  /** Records whose guest still exists, projected with its spec. */
  guests: Read<HaGuestRecord>[];
  /** Every guest's spec, by name. */
  specs: Map<string, Stored<GuestSpec>>;
  /** Records whose guest is gone (deleted while its record stayed). */
  orphans: Read<{ name: string }>[];
}

/** A member's live token: the create revision of its heartbeat key (gone with its lease). */
export function tokenOf(world: Pick<HaWorld, 'heartbeats'>, member: string): Token | undefined {
  return world.heartbeats.find((h) => h.value.member === member)?.createRevision;
}

/**
 * Reads the election key, the heartbeats and the HA records in one transaction, then the specs of
 * the recorded guests (every write compares the spec it read).
 */
export async function readHaWorld(store: KvStore): Promise<HaWorld> {
  const r = await readTogether(store, [
    { key: haKeys.crm },
    { key: haKeys.heartbeatPrefix, prefix: true },
    { key: haKeys.guestPrefix, prefix: true },
  ]);
  const [lockKvs = [], beatKvs = [], haKvs = []] = r.kvs;
  const names = haKvs.map((kv) => kv.key.slice(haKeys.guestPrefix.length));
  const specKvs =
    names.length === 0
      ? []
      : (
          await readTogether(
            store,
            names.map((n) => ({ key: records.guest.at(n).key })),
          )
        ).kvs.flat();
  const specs = new Map<string, Stored<GuestSpec>>();
  for (const kv of specKvs) {
    const value = records.guest.decode(kv);
    specs.set(value.name, {
      key: kv.key,
      value,
      modRevision: kv.modRevision,
      createRevision: kv.createRevision,
    });
  }
  const guests: Read<HaGuestRecord>[] = [];
  const orphans: Read<{ name: string }>[] = [];
  for (const kv of haKvs) {
    const stored = decode<StoredHa>(kv, checkHaGuest, 'HA record');
    const spec = specs.get(stored.value.name);
    if (!spec) {
      orphans.push(stored);
      continue;
    }
    guests.push({ ...stored, value: projectHaGuest(spec.value, stored.value) });
  }
  const lockKv = lockKvs[0];
  return {
    revision: r.revision,
    lock: lockKv ? decode<CrmLockValue>(lockKv, checkCrmLock, 'HA election key') : undefined,
    heartbeats: beatKvs.map((kv) => decode<HeartbeatValue>(kv, checkHeartbeat, 'HA heartbeat')),
    guests,
    specs,
    orphans,
  };
}

/**
 * The members as the CRM places on them: memory and CPUs from each one's HA heartbeat (its agent
 * writes them with it), evacuated from its record. Two prefixes, one read: the CRM asks every
 * second, so this does not count every member's guests as `cluster list` does. A member without
 * an HA heartbeat is lost to HA anyway (nothing is placed on it).
 */
export async function readHaMembers(store: KvStore): Promise<HaMemberRecord[]> {
  const r = await readTogether(store, [
    { key: records.member.prefix, prefix: true },
    { key: haKeys.heartbeatPrefix, prefix: true },
  ]);
  const [memberKvs = [], beatKvs = []] = r.kvs;
  const beats = new Map(
    beatKvs.map((kv) => {
      const b = decode<HeartbeatValue>(kv, checkHeartbeat, 'HA heartbeat').value;
      return [b.member, b];
    }),
  );
  return memberKvs.map((kv) => {
    const m = records.member.decode(kv);
    const beat = beats.get(m.name);
    return {
      name: m.name,
      memoryTotalBytes: beat?.memoryTotalBytes ?? 0,
      cpus: beat?.cpus ?? 0,
      evacuated: m.evacuated,
    };
  });
}

/** What is kept of a record in the store: the spec's part is read from the spec. */
export function storedPart(g: StoredHa): StoredHa {
  return {
    name: g.name,
    owner: g.owner,
    token: g.token,
    decidedAt: g.decidedAt,
    failures: g.failures,
    failedOn: g.failedOn,
    ...(g.moving && { moving: g.moving }),
    ...(g.error !== undefined && { error: g.error }),
  };
}

/** A guest given to a member is on its disks there: provisioned, not running yet. */
function handedOverStatus(): GuestStatus {
  return {
    status: 'Stopped',
    observedGeneration: 0,
    observedRestartRequest: 0,
    restartCount: 0,
    provisioned: true,
    appliedConfig: {},
    pendingRestart: [],
  };
}

/**
 * One of the machines' writes as a store transaction. A guest record put that names another
 * owner than the guest's location (the CRM gave the guest away) also moves the guest's records
 * in the same transaction, compared on the spec as read: the spec names the new member, the
 * location key too, and the status says the guest is provisioned and stopped there (its disk is
 * on the shared pool); its desired state is kept, so the new owner's agent starts it, unless the
 * record wants it started and the spec says Stopped: a cold move stopped it and its source was
 * lost before the hand-over (decision 0108), and it runs again.
 */
/** The guest a write gives to another member, and to whom: its record names an owner other than its location. */
export function handOverOf(
  write: HaWrite,
  world: Pick<HaWorld, 'specs'>,
): { guest: string; to: string } | undefined {
  if (!write.put?.key.startsWith(haKeys.guestPrefix)) return undefined;
  const g = write.put.value as HaGuestRecord;
  const spec = world.specs.get(g.name);
  return spec && !g.moving && spec.value.location !== g.owner ? { guest: g.name, to: g.owner } : undefined;
}

/**
 * `also`: more writes for a hand-over (its snapshots' records, which name their guest's member
 * too, as a cold move hands them over).
 */
export function txnOf(
  write: HaWrite,
  world: Pick<HaWorld, 'specs'>,
  lease?: number,
  also: TxnOp[] = [],
): TxnRequest {
  const success: TxnOp[] = [];
  const compare = [...write.compare];
  if (write.put) {
    const { key, value } = write.put;
    const isGuest = key.startsWith(haKeys.guestPrefix);
    const stored = isGuest ? storedPart(value as HaGuestRecord) : value;
    success.push({
      type: 'put',
      key,
      value: JSON.stringify(stored),
      ...(write.put.lease === 'own' && lease !== undefined && { lease }),
    });
    if (isGuest) {
      const g = value as HaGuestRecord;
      const spec = world.specs.get(g.name);
      if (spec && !g.moving && spec.value.location !== g.owner) {
        const ref = records.guest.at(g.name);
        compare.push(ref.unchanged(spec.modRevision));
        success.push(
          ref.putOp({
            ...spec.value,
            location: g.owner,
            generation: spec.value.generation + 1,
            // A guest the CRM wants started though its spec says Stopped: a cold move stopped it,
            // and its source was lost before the hand-over (decision 0108).
            ...(g.want === 'started' && spec.value.desired === 'Stopped' && { desired: 'Running' as const }),
          }),
          records.guestLocation.at(g.name).putOp(g.owner),
          records.guestStatus.at(g.name).putOp(handedOverStatus()),
          ...also,
        );
      }
    }
  }
  if (write.delete) success.push({ type: 'delete', key: write.delete });
  return { compare, success };
}

/**
 * The elected CRM's bookkeeping between specs and records: a record for each HA guest (owned by
 * its location under that member's token), none for a guest gone or no longer HA, and the owner
 * brought to the location after a move made by the mover. Each write compares the election key,
 * so a CRM that lost its election writes nothing.
 */
export function recordUpkeep(world: HaWorld, lock: Read<CrmLockValue>): TxnRequest[] {
  const out: TxnRequest[] = [];
  const stillElected = {
    key: haKeys.crm,
    target: 'createRevision' as const,
    op: '=' as const,
    value: lock.createRevision,
  };
  const recorded = new Map(world.guests.map((g) => [g.value.name, g]));
  for (const { value: spec, modRevision } of world.specs.values()) {
    const rec = recorded.get(spec.name);
    const token = tokenOf(world, spec.location);
    if (!isHaGuest(spec) || spec.deleting) continue;
    if (!rec) {
      if (token === undefined) continue;
      out.push({
        compare: [
          stillElected,
          { key: haKeys.guest(spec.name), target: 'createRevision', op: '=', value: 0 },
          { key: haKeys.heartbeat(spec.location), target: 'createRevision', op: '=', value: token },
          records.guest.at(spec.name).unchanged(modRevision),
        ],
        success: [
          {
            type: 'put',
            key: haKeys.guest(spec.name),
            value: JSON.stringify({
              name: spec.name,
              owner: spec.location,
              token,
              decidedAt: world.revision,
              failures: 0,
              failedOn: [],
            } satisfies StoredHa),
          },
        ],
      });
    } else if (rec.value.owner !== spec.location && !rec.value.moving && token !== undefined) {
      out.push({
        compare: [
          stillElected,
          { key: haKeys.guest(spec.name), target: 'modRevision', op: '=', value: rec.modRevision },
          { key: haKeys.heartbeat(spec.location), target: 'createRevision', op: '=', value: token },
          records.guest.at(spec.name).unchanged(modRevision),
        ],
        success: [
          {
            type: 'put',
            key: haKeys.guest(spec.name),
            value: JSON.stringify(
              storedPart({
                ...rec.value,
                owner: spec.location,
                token,
                decidedAt: world.revision,
                failures: 0,
                failedOn: [],
              }),
            ),
          },
        ],
      });
    }
  }
  for (const g of [...world.guests, ...world.orphans]) {
    const spec = world.specs.get(g.value.name);
    if (spec && isHaGuest(spec.value) && !spec.value.deleting) continue;
    out.push({
      compare: [
        stillElected,
        { key: haKeys.guest(g.value.name), target: 'modRevision', op: '=', value: g.modRevision },
      ],
      success: [{ type: 'delete', key: haKeys.guest(g.value.name) }],
    });
  }
  return out;
}
