import { type Static, type TObject, type TProperties, type TSchema, Type } from '@sinclair/typebox';
import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler';
import { CertificateSchema, TokenSchema } from '../api/auth-schemas.ts';
import {
  type ClusterMove,
  ClusterMoveSchema,
  type MemberPower,
  MemberPowerSchema,
  MoveRecordSchema,
} from '../api/cluster-schemas.ts';
import {
  DiskDeviceSchema,
  ImageSchema,
  NetworkAclRuleSchema,
  NetworkForwardSchema,
  NicDeviceSchema,
} from '../api/schemas.ts';
import { conflict, internal } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { DEFAULT_PROJECT, type ProjectSpec } from '../core/projects.ts';
import type {
  GuestNetworkObservation,
  GuestSpec,
  GuestStatus,
  ImageRecord,
  NetworkAddressClaim,
  NetworkSpec,
  NetworkStatus,
} from '../core/types.ts';
import { EVACUATE_MODES } from '../core/types.ts';
import type { PoolRecord } from '../storage/storage-pools.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import type { VolumeRecord } from '../storage/volumes.ts';
import type { Compare, KeyValue, KvStore, TxnOp } from './kv.ts';

/*
 * The typed record layer (docs/decisions/0029): one entry per kind of stored record, with
 * its key, its prefix, its TypeBox schema, and a decode that migrates old shapes and
 * validates, so that nothing reads a stored record through a bare `JSON.parse(...) as X`.
 * A record that does not decode is Internal, naming its key: a corrupt or foreign record
 * is never taken for a valid one. Schemas accept fields they do not know (a newer version
 * may have added some); the wire schemas of src/api/ are reused where the stored shape is
 * the wire shape (NICs, disks, forwards, ACL rules, images, tokens, certificates).
 */

/** A decoded record with the store's facts about it. */
export interface Stored<T> {
  key: string;
  value: T;
  modRevision: number;
  createRevision: number;
}

/** What a list found: the decoded records, the revision they were read at, and what did not decode. */
export interface RecordList<T> {
  items: Array<Stored<T>>;
  revision: number;
  /** Keys under the prefix whose value is not a valid record, with why; left out of `items`. */
  malformed: Array<{ key: string; error: string }>;
}

/** One record at one key: typed reads, writes and the pieces of a transaction. */
export interface RecordRef<T> {
  readonly key: string;
  get(store: KvStore): Promise<Stored<T> | undefined>;
  /**
   * Writes the record. With `ifModRevision` it is a compare-and-swap (0: the key must not
   * exist): a lost race is Conflict and writes nothing.
   */
  put(store: KvStore, value: T, options?: { ifModRevision?: number; lease?: number }): Promise<number>;
  putOp(value: T, options?: { lease?: number }): TxnOp;
  deleteOp(): TxnOp;
  /** The key does not exist (create-if-absent). */
  absent(): Compare;
  /** The key still has this mod revision (0: it does not exist). */
  unchanged(modRevision: number): Compare;
}

/** A kind of stored record. `A`: what its key is made of; `P`: what narrows a list (a guest's snapshots). */
export interface RecordKind<T, A extends string[], P extends string[] = []> {
  /** For messages: `guest`, `snapshot`… */
  readonly kind: string;
  readonly prefix: string;
  key(...args: A): string;
  at(...args: A): RecordRef<T>;
  /** The record at a key under the prefix (one a list or a watch gave). */
  ref(key: string): RecordRef<T>;
  /** What follows the prefix: a guest's name, `POOL/NAME` of a volume. */
  nameOf(key: string): string;
  /** Parses, migrates and validates; Internal naming the key when the record is not valid. */
  decode(kv: Pick<KeyValue, 'key' | 'value'>): T;
  /** Migrates and validates a value already parsed (a copy kept in a file); `where` names it in errors. */
  check(value: unknown, where: string): T;
  encode(value: T): string;
  /** Every record under the prefix, or under the narrower prefix `scope` makes. */
  list(store: KvStore, ...scope: P | []): Promise<RecordList<T>>;
}

interface Definition<S extends TSchema, A extends string[], P extends string[]> {
  kind: string;
  prefix: string;
  key: (...args: A) => string;
  scope?: (...args: P) => string;
  schema: S;
  /** Brings an old shape up to date in place, before validation (fields added later get their defaults). */
  migrate?: (raw: Record<string, unknown>) => void;
  /** The value is the bare string, not JSON (image aliases hold a fingerprint). */
  raw?: boolean;
}

/**
 * Defines a kind of record whose TypeScript type is `T`. The schema's static type must
 * accept every `T` (checked by the compiler), so that whatever the code writes decodes.
 */
function defineRecord<T>() {
  return <S extends TSchema, A extends string[], P extends string[] = []>(
    d: Definition<S, A, P> & ([T] extends [Static<S>] ? unknown : { schemaDoesNotAcceptType: never }),
  ): RecordKind<T, A, P> => {
    let compiled: TypeCheck<S> | undefined;
    const checker = () => {
      compiled ??= TypeCompiler.Compile(d.schema);
      return compiled;
    };
    const check = (value: unknown, where: string): T => {
      if (!d.raw && (typeof value !== 'object' || value === null || Array.isArray(value))) {
        throw internal(`The stored ${d.kind} ${where} is not an object: the store holds a corrupt record`);
      }
      if (d.migrate) d.migrate(value as Record<string, unknown>);
      const c = checker();
      if (!c.Check(value)) {
        const first = c.Errors(value).First();
        const why = first ? `${first.path || '/'}: ${first.message}` : 'invalid';
        throw internal(
          `The stored ${d.kind} ${where} is not valid (${why}): the store holds a corrupt record`,
        );
      }
      // Validated against a schema that accepts every T: the value is one.
      return value as T;
    };
    const decode = (kv: Pick<KeyValue, 'key' | 'value'>): T => {
      let value: unknown;
      try {
        value = d.raw ? kv.value : JSON.parse(kv.value);
      } catch {
        throw internal(`The stored ${d.kind} ${kv.key} is not JSON: the store holds a corrupt record`);
      }
      return check(value, kv.key);
    };
    const encode = (value: T): string => (d.raw ? String(value) : JSON.stringify(value));
    const ref = (key: string): RecordRef<T> => ({
      key,
      async get(store) {
        const kv = await store.get(key);
        if (!kv) return undefined;
        return { key, value: decode(kv), modRevision: kv.modRevision, createRevision: kv.createRevision };
      },
      async put(store, value, options = {}) {
        const lease = options.lease ? { lease: options.lease } : {};
        if (options.ifModRevision === undefined) return (await store.put(key, encode(value), lease)).revision;
        const r = await store.txn({
          compare: [{ key, target: 'modRevision', op: '=', value: options.ifModRevision }],
          success: [{ type: 'put', key, value: encode(value), ...lease }],
        });
        if (!r.succeeded) {
          throw conflict(`The ${d.kind} at ${key} was changed at the same time: read it again and retry`);
        }
        return r.revision;
      },
      putOp: (value, options = {}) => ({
        type: 'put',
        key,
        value: encode(value),
        ...(options.lease ? { lease: options.lease } : {}),
      }),
      deleteOp: () => ({ type: 'delete', key }),
      absent: () => ({ key, target: 'createRevision', op: '=', value: 0 }),
      unchanged: (modRevision) => ({ key, target: 'modRevision', op: '=', value: modRevision }),
    });
    return {
      kind: d.kind,
      prefix: d.prefix,
      key: d.key,
      at: (...args) => ref(d.key(...args)),
      ref: (key) => {
        if (!key.startsWith(d.prefix)) throw internal(`${key} is not the key of a ${d.kind}`);
        return ref(key);
      },
      nameOf: (key) => key.slice(d.prefix.length),
      decode,
      check,
      encode,
      async list(store, ...scope) {
        const prefix = d.scope && scope.length > 0 ? d.scope(...(scope as P)) : d.prefix;
        const { kvs, revision } = await store.list(prefix);
        const out: RecordList<T> = { items: [], revision, malformed: [] };
        for (const kv of kvs) {
          try {
            out.items.push({
              key: kv.key,
              value: decode(kv),
              modRevision: kv.modRevision,
              createRevision: kv.createRevision,
            });
          } catch (e) {
            out.malformed.push({ key: kv.key, error: (e as Error).message });
          }
        }
        return out;
      },
    };
  };
}

/** A compare that holds while `member` owns the guest: what every owner-only write adds to its transaction. */
export const ownedBy = (guest: string, member: string): Compare => ({
  key: keys.guestLocation(guest),
  target: 'value',
  op: '=',
  value: member,
});

/**
 * Gives records made before owners were recorded (decision 28) their owner: `ownerOf` says whose
 * a record is, or undefined to leave it. Each write compares the record as read, so one another
 * writer changed meanwhile is left as it is. Returns how many records were stamped.
 */
export async function stampLocations<T extends { location?: string }, A extends string[], P extends string[]>(
  store: KvStore,
  kind: RecordKind<T, A, P>,
  ownerOf: (value: T) => string | undefined,
): Promise<number> {
  let stamped = 0;
  for (const { key, value, modRevision } of (await kind.list(store)).items) {
    if (value.location !== undefined) continue;
    const location = ownerOf(value);
    if (location === undefined) continue;
    const ref = kind.ref(key);
    const r = await store.txn({
      compare: [ref.unchanged(modRevision)],
      success: [ref.putOp({ ...value, location })],
    });
    if (r.succeeded) stamped++;
  }
  return stamped;
}

/** The values of a list, in key order. */
export const valuesOf = <T>(list: RecordList<T>): T[] => list.items.map((i) => i.value);

const StringMap = Type.Record(Type.String(), Type.String());
const Model = Type.Union([Type.Literal('ct'), Type.Literal('pvm'), Type.Literal('vm')]);
const ProcessIdentity = Type.Object({ pid: Type.Integer(), startTime: Type.Number() });

/** Stored objects are read more leniently than request bodies: unknown fields pass (a newer version's). */
const lenient = <P extends TProperties>(schema: TObject<P>): TObject<P> => Type.Object(schema.properties);

/** Records written before projects have none: they are `default`'s (decision 21). */
const defaultProject = (raw: Record<string, unknown>) => {
  raw.project ??= DEFAULT_PROJECT;
};

/** Guest and network records named their owner `host` before owners were `location` everywhere. */
const hostIsLocation = (raw: Record<string, unknown>) => {
  if (raw.location === undefined && typeof raw.host === 'string') raw.location = raw.host;
  delete raw.host;
};

export const GuestSpecSchema = Type.Object({
  name: Type.String(),
  project: Type.String(),
  model: Model,
  image: Type.String(),
  imageAlias: Type.String(),
  config: StringMap,
  desired: Type.Union([Type.Literal('Running'), Type.Literal('Stopped'), Type.Literal('Frozen')]),
  generation: Type.Integer(),
  restartRequest: Type.Integer(),
  stopTimeoutMs: Type.Number(),
  stopForce: Type.Boolean(),
  deleting: Type.Boolean(),
  location: Type.String(),
  /** Why the scheduler put the guest on its member (decision 0033); absent on a single host. */
  placement: Type.Optional(Type.String()),
  createdAt: Type.String(),
  devices: Type.Optional(Type.Record(Type.String(), lenient(NicDeviceSchema))),
  disks: Type.Optional(Type.Record(Type.String(), lenient(DiskDeviceSchema))),
});

export const GuestStatusSchema = Type.Object({
  status: Type.Union([
    Type.Literal('Running'),
    Type.Literal('Stopped'),
    Type.Literal('Frozen'),
    Type.Literal('Error'),
  ]),
  observedGeneration: Type.Integer(),
  observedRestartRequest: Type.Integer(),
  process: Type.Optional(ProcessIdentity),
  startedAt: Type.Optional(Type.String()),
  error: Type.Optional(Type.String()),
  // Any string: a newer member may know codes this one does not (readers use isErrorCode).
  errorCode: Type.Optional(Type.String()),
  failedGeneration: Type.Optional(Type.Integer()),
  appliedConfig: StringMap,
  pendingRestart: Type.Array(Type.String()),
  restartCount: Type.Integer(),
  lastExitAt: Type.Optional(Type.String()),
  provisioned: Type.Boolean(),
});

/** A guest's last scheduled backup that failed (decision 0062): a warning on the guest until one succeeds. */
export const BackupFailureSchema = Type.Object({
  /** When the backup was due (its minute). */
  at: Type.String(),
  /** The member that tried it. */
  member: Type.String(),
  error: Type.String(),
});
export type BackupFailure = Static<typeof BackupFailureSchema>;

export const GuestNetworkObservationSchema = Type.Object({
  process: ProcessIdentity,
  nics: Type.Record(
    Type.String(),
    Type.Object({
      addresses: Type.Array(Type.String()),
      source: Type.Union([Type.Literal('guest'), Type.Literal('lease'), Type.Literal('none')]),
      warning: Type.Optional(Type.String()),
    }),
  ),
  changedAt: Type.String(),
});

export const NetworkSpecSchema = Type.Object({
  name: Type.String(),
  // Optional in the type (records before projects); decode fills in `default`.
  project: Type.Optional(Type.String()),
  description: Type.String(),
  config: StringMap,
  generation: Type.Integer(),
  deleting: Type.Boolean(),
  location: Type.String(),
  createdAt: Type.String(),
  forwards: Type.Optional(Type.Array(lenient(NetworkForwardSchema))),
  acls: Type.Optional(Type.Array(lenient(NetworkAclRuleSchema))),
  vni: Type.Optional(Type.Integer({ minimum: 1, maximum: 16_777_215 })),
});

export const NetworkStatusSchema = Type.Object({
  status: Type.Union([Type.Literal('Created'), Type.Literal('Error')]),
  observedGeneration: Type.Integer(),
  error: Type.Optional(Type.String()),
  errorCode: Type.Optional(Type.String()),
  failedGeneration: Type.Optional(Type.Integer()),
  dnsmasq: Type.Optional(ProcessIdentity),
});

export const NetworkAddressClaimSchema = Type.Object({
  guest: Type.String(),
  nic: Type.String(),
  hwaddr: Type.String(),
});

export const PoolRecordSchema = Type.Object({
  name: Type.String(),
  driver: Type.Union([Type.Literal('dir'), Type.Literal('btrfs')]),
  description: Type.String(),
  config: StringMap,
  createdAt: Type.String(),
  location: Type.Optional(Type.String()),
  everyMember: Type.Optional(Type.Boolean()),
  shared: Type.Optional(Type.Boolean()),
  marker: Type.Optional(Type.String()),
});

/** A member's instance of a pool defined on every member (value of `keys.storagePoolMemberStatus`). */
export const PoolMemberStatusSchema = Type.Object({
  state: Type.Union([Type.Literal('Created'), Type.Literal('Errored')]),
  /** The pool's driver: what removes the instance when the pool is gone. */
  driver: Type.Union([Type.Literal('dir'), Type.Literal('btrfs')]),
  error: Type.Optional(Type.String()),
  updatedAt: Type.String(),
});
export type PoolMemberStatus = Static<typeof PoolMemberStatusSchema>;

export const VolumeRecordSchema = Type.Object({
  name: Type.String(),
  project: Type.String(),
  pool: Type.String(),
  type: Type.Union([Type.Literal('filesystem'), Type.Literal('block'), Type.Literal('iso')]),
  sizeBytes: Type.Number(),
  description: Type.String(),
  createdAt: Type.String(),
  location: Type.Optional(Type.String()),
});

export const ProjectSpecSchema = Type.Object({
  name: Type.String(),
  description: Type.String(),
  config: StringMap,
  createdAt: Type.String(),
});

export const SnapshotRecordSchema = Type.Object({
  name: Type.String(),
  guest: Type.String(),
  createdAt: Type.String(),
  wasRunning: Type.Boolean(),
  location: Type.Optional(Type.String()),
  /** When a scheduled snapshot is deleted (its guest's snapshots.expiry); never when absent. */
  expiresAt: Type.Optional(Type.String()),
});

/** What a storage-pending marker says: which kind of work made the guest (value of `keys.storagePending`). */
export const StoragePendingSchema = Type.Object({
  kind: Type.Union([Type.Literal('copy'), Type.Literal('import'), Type.Literal('live-import')]),
  /** A live restore's archive, which the guest's disk reads until the copy ends (decision 0063). */
  archive: Type.Optional(Type.String()),
});
export type StoragePending = Static<typeof StoragePendingSchema>;

/** Which pool a guest off the default pool lives on (value of `keys.guestPool`). */
export const GuestPoolRecordSchema = Type.Object({
  pool: Type.String(),
  path: Type.String(),
  limitBytes: Type.Union([Type.Number(), Type.Null()]),
  /** The member whose pool holds the guest's directory (its owner). */
  location: Type.Optional(Type.String()),
});
export type GuestPoolRecord = Static<typeof GuestPoolRecordSchema>;

/** A stored token: what is listed, plus the SHA-256 of its secret (the secret itself is never kept). */
export const TokenRecordSchema = Type.Composite([
  lenient(TokenSchema),
  Type.Object({ secretSha256: Type.String() }),
]);
export type TokenRecord = Static<typeof TokenRecordSchema>;

export const CertificateRecordSchema = lenient(CertificateSchema);
export type CertificateRecord = Static<typeof CertificateRecordSchema>;

// The wire's image always has a project; a stored one from before projects has none until decoded.
/**
 * An operation claim (docs/decisions/0028): which member holds an object while it changes it.
 * `incarnation` tells the daemon that made it from a later one of the same member.
 */
export const OperationClaimSchema = Type.Object({
  member: Type.String(),
  incarnation: Type.String(),
  action: Type.String(),
  since: Type.String(),
});
export type OperationClaim = Static<typeof OperationClaimSchema>;

/** How an evacuation handles a guest (core's EVACUATE_MODES). */
const EvacuateModeSchema = Type.Union(EVACUATE_MODES.map((m) => Type.Literal(m)));

/**
 * A cluster member (decision 0032): where its member API is reached (`IP:PORT`), its
 * etcd role (`etcd-voter` runs one of the etcd members, `etcd-client` only talks to
 * them), the fingerprint of the certificate the cluster CA signed for it (what its
 * peers accept it by), and whether it was evacuated.
 */
export const MemberRecordSchema = Type.Object({
  name: Type.String(),
  address: Type.String(),
  roles: Type.Array(Type.String()),
  /** A voter's etcd client URL. */
  etcdClientUrl: Type.Optional(Type.String()),
  certificateFingerprint: Type.String(),
  version: Type.String(),
  joinedAt: Type.String(),
  evacuated: Type.Boolean(),
  /** What an evacuation does with a guest that does not say (`cluster.evacuate`): auto when absent. */
  evacuateMode: Type.Optional(EvacuateModeSchema),
});
export type MemberRecord = Static<typeof MemberRecordSchema>;

/**
 * A guest an evacuation of `origin` moved away or stopped (decision 0041): a restore of
 * `origin` brings it back, or starts it again. `error` says why it could not be done; it is
 * tried again at the next evacuation.
 */
export const EvacuationRecordSchema = Type.Object({
  origin: Type.String(),
  action: Type.Union([Type.Literal('migrate'), Type.Literal('stop')]),
  at: Type.String(),
  /** Why the guest could not leave (or come back): final, it is not tried again until the next evacuation or restore. */
  error: Type.Optional(Type.String()),
  /** A move back that failed and is tried again at `at` (`tries` failed so far; `error`, the last one's reason). */
  retry: Type.Optional(Type.Object({ tries: Type.Integer(), at: Type.String(), error: Type.String() })),
});
export type EvacuationRecord = Static<typeof EvacuationRecordSchema>;

/** What a member measured of its host, published with its heartbeat. */
export const MemberUsageSchema = Type.Object({
  cpus: Type.Integer(),
  /** Share of all CPUs busy over the last interval, 0-100. */
  cpuUsedPercent: Type.Number(),
  memoryTotalBytes: Type.Number(),
  memoryAvailableBytes: Type.Number(),
  /** The default pool's file system (the state directory's), where guests go unless told otherwise. */
  diskTotalBytes: Type.Optional(Type.Number()),
  diskAvailableBytes: Type.Optional(Type.Number()),
  measuredAt: Type.String(),
});
export type MemberUsage = Static<typeof MemberUsageSchema>;

/** A member's heartbeat: on its lease, so it is gone once the member stops renewing (Offline). */
export const MemberHeartbeatSchema = Type.Object({
  /** Which daemon life wrote it (a restarted daemon has a new one). */
  incarnation: Type.String(),
  /**
   * Which boot of its host it runs in (the kernel's boot id, or TRIVISOR_BOOT_ID_FILE's): power
   * management takes a member as back on when it changed (decision 0055). Absent from older daemons.
   */
  bootId: Type.Optional(Type.String()),
  version: Type.String(),
  startedAt: Type.String(),
  usage: MemberUsageSchema,
});
export type MemberHeartbeat = Static<typeof MemberHeartbeatSchema>;

/** A join token as stored: the SHA-256 of its secret (never the secret), when it expires, whether it was used. */
export const JoinTokenRecordSchema = Type.Object({
  name: Type.String(),
  secretSha256: Type.String(),
  createdAt: Type.String(),
  expiresAt: Type.String(),
  createdBy: Type.String(),
  usedAt: Type.Optional(Type.String()),
  usedFrom: Type.Optional(Type.String()),
});
export type JoinTokenRecord = Static<typeof JoinTokenRecordSchema>;

/**
 * The cluster: its CA (certificate and key: every member signs joiners' certificates with
 * it, and every member can read the store anyway) and how its etcd is reached — managed
 * (members run it: the voters' client URLs are in their member records) or an existing
 * one (`--etcd URL,...`, with the client credentials it wants).
 */
export const ClusterRecordSchema = Type.Object({
  createdAt: Type.String(),
  ca: Type.Object({ cert: Type.String(), key: Type.String(), fingerprint: Type.String() }),
  etcd: Type.Object({
    managed: Type.Boolean(),
    endpoints: Type.Array(Type.String()),
    tls: Type.Optional(
      Type.Object({
        ca: Type.String(),
        cert: Type.Optional(Type.String()),
        key: Type.Optional(Type.String()),
      }),
    ),
  }),
});
export type ClusterRecord = Static<typeof ClusterRecordSchema>;

/**
 * A member's measured load of the guests it runs, published for the rebalancer (decision 0053):
 * per guest the maximum of each step of its metric history over the recent window, oldest first,
 * the last step the one that holds `endAt`; null where nothing was sampled.
 */
export const MemberLoadSchema = Type.Object({
  stepSeconds: Type.Integer({ minimum: 1 }),
  /** Start of the last step, Unix seconds. */
  endAt: Type.Integer(),
  publishedAt: Type.String(),
  /** Steps of the window in which the member sampled itself: how much of it it has measured. */
  measuredSteps: Type.Optional(Type.Integer({ minimum: 0 })),
  guests: Type.Record(
    Type.String(),
    Type.Object({
      model: Model,
      cpu: Type.Array(Type.Union([Type.Number(), Type.Null()])),
      memoryBytes: Type.Array(Type.Union([Type.Number(), Type.Null()])),
    }),
  ),
});
export type MemberLoad = Static<typeof MemberLoadSchema>;

/**
 * The bandwidth of the link from a member to another as finished moves measured it (bytes
 * copied over the seconds the copy took), a moving average over the moves (issue 14 §2).
 */
export const MoveBandwidthSchema = Type.Object({
  bytesPerSecond: Type.Number({ exclusiveMinimum: 0 }),
  moves: Type.Integer({ minimum: 1 }),
  lastAt: Type.String(),
});
export type MoveBandwidth = Static<typeof MoveBandwidthSchema>;

/** A move the rebalancer asked of the guest's owner, which carries it out (decision 0053). */
export const RebalanceRequestSchema = Type.Object({
  move: MoveRecordSchema,
  requestedBy: Type.String(),
  at: Type.String(),
});
export type RebalanceRequest = Static<typeof RebalanceRequestSchema>;

export type { ClusterMove };

export const ImageRecordSchema = Type.Composite([
  Type.Omit(lenient(ImageSchema), ['project']),
  Type.Object({ project: Type.Optional(Type.String()) }),
]);

/** The kinds of stored records. */
export const records = {
  guest: defineRecord<GuestSpec>()({
    kind: 'guest',
    prefix: keys.guestPrefix,
    key: (name: string) => keys.guest(name),
    schema: GuestSpecSchema,
    migrate: (raw) => {
      defaultProject(raw);
      hostIsLocation(raw);
    },
  }),
  guestStatus: defineRecord<GuestStatus>()({
    kind: 'guest status',
    prefix: keys.guestStatusPrefix,
    key: (name: string) => keys.guestStatus(name),
    schema: GuestStatusSchema,
  }),
  /** The owner of a guest, as a bare member name (compared by status writes: decision 28). */
  guestLocation: defineRecord<string>()({
    kind: 'guest location',
    prefix: keys.guestLocationPrefix,
    key: (name: string) => keys.guestLocation(name),
    schema: Type.String({ minLength: 1 }),
    raw: true,
  }),
  backupFailure: defineRecord<BackupFailure>()({
    kind: 'backup failure',
    prefix: keys.backupFailurePrefix,
    key: (name: string) => keys.backupFailure(name),
    schema: BackupFailureSchema,
  }),
  guestNetwork: defineRecord<GuestNetworkObservation>()({
    kind: 'guest network observation',
    prefix: keys.guestNetworkPrefix,
    key: (name: string) => keys.guestNetwork(name),
    schema: GuestNetworkObservationSchema,
  }),
  network: defineRecord<NetworkSpec>()({
    kind: 'network',
    prefix: keys.networkPrefix,
    key: (name: string) => keys.network(name),
    schema: NetworkSpecSchema,
    migrate: (raw) => {
      defaultProject(raw);
      hostIsLocation(raw);
    },
  }),
  networkStatus: defineRecord<NetworkStatus>()({
    kind: 'network status',
    prefix: keys.networkStatusPrefix,
    key: (name: string) => keys.networkStatus(name),
    schema: NetworkStatusSchema,
  }),
  networkMemberStatus: defineRecord<NetworkStatus>()({
    kind: 'network status of a member',
    prefix: keys.networkMemberStatusPrefix,
    key: (network: string, member: string) => keys.networkMemberStatus(network, member),
    scope: (network: string) => keys.networkMemberStatuses(network),
    schema: NetworkStatusSchema,
  }),
  networkAddress: defineRecord<NetworkAddressClaim>()({
    kind: 'network address claim',
    prefix: keys.networkAddressPrefix,
    key: (network: string, ip: string) => keys.networkAddress(network, ip),
    scope: (network: string) => keys.networkAddresses(network),
    schema: NetworkAddressClaimSchema,
  }),
  /** A VNI taken by a network (decision 0050): its value is the network's name, as a bare string. */
  networkVni: defineRecord<string>()({
    kind: 'network VNI',
    prefix: keys.networkVniPrefix,
    key: (vni: string) => keys.networkVni(vni),
    schema: Type.String({ minLength: 1 }),
    raw: true,
  }),
  image: defineRecord<ImageRecord>()({
    kind: 'image',
    prefix: keys.imagePrefix,
    key: (fingerprint: string) => keys.image(fingerprint),
    schema: ImageRecordSchema,
    migrate: defaultProject,
  }),
  /** An alias's value is the fingerprint of its image, as a bare string. */
  imageAlias: defineRecord<string>()({
    kind: 'image alias',
    prefix: keys.imageAliasPrefix,
    key: (alias: string) => keys.imageAlias(alias),
    schema: Type.String({ minLength: 1 }),
    raw: true,
  }),
  pool: defineRecord<PoolRecord>()({
    kind: 'storage pool',
    prefix: keys.storagePoolPrefix,
    key: (name: string) => keys.storagePool(name),
    schema: PoolRecordSchema,
  }),
  poolMemberStatus: defineRecord<PoolMemberStatus>()({
    kind: 'storage pool status of a member',
    prefix: keys.storagePoolMemberStatusPrefix,
    key: (pool: string, member: string) => keys.storagePoolMemberStatus(pool, member),
    scope: (pool: string) => keys.storagePoolMemberStatuses(pool),
    schema: PoolMemberStatusSchema,
  }),
  volume: defineRecord<VolumeRecord & { project: string }>()({
    kind: 'storage volume',
    prefix: keys.storageVolumePrefix,
    key: (pool: string, name: string) => keys.storageVolume(pool, name),
    scope: (pool: string) => keys.storageVolumes(pool),
    schema: VolumeRecordSchema,
    migrate: defaultProject,
  }),
  guestPool: defineRecord<GuestPoolRecord>()({
    kind: 'guest placement',
    prefix: keys.guestPoolPrefix,
    key: (guest: string) => keys.guestPool(guest),
    schema: GuestPoolRecordSchema,
  }),
  snapshot: defineRecord<SnapshotRecord>()({
    kind: 'snapshot',
    prefix: keys.snapshotPrefix,
    key: (guest: string, name: string) => keys.snapshot(guest, name),
    scope: (guest: string) => keys.snapshots(guest),
    schema: SnapshotRecordSchema,
  }),
  evacuation: defineRecord<EvacuationRecord>()({
    kind: 'evacuation record',
    prefix: keys.evacuationPrefix,
    key: (guest: string) => keys.evacuation(guest),
    schema: EvacuationRecordSchema,
  }),
  storagePending: defineRecord<StoragePending>()({
    kind: 'storage-pending marker',
    prefix: keys.storagePendingPrefix,
    key: (guest: string) => keys.storagePending(guest),
    schema: StoragePendingSchema,
  }),
  project: defineRecord<ProjectSpec>()({
    kind: 'project',
    prefix: keys.projectPrefix,
    key: (name: string) => keys.project(name),
    schema: ProjectSpecSchema,
  }),
  token: defineRecord<TokenRecord>()({
    kind: 'token',
    prefix: keys.tokenPrefix,
    key: (name: string) => keys.token(name),
    schema: TokenRecordSchema,
  }),
  claim: defineRecord<OperationClaim>()({
    kind: 'operation claim',
    prefix: keys.claimPrefix,
    key: (kind: string, name: string) => keys.claim(kind, name),
    schema: OperationClaimSchema,
  }),
  cluster: defineRecord<ClusterRecord>()({
    kind: 'cluster record',
    prefix: keys.cluster,
    key: () => keys.cluster,
    schema: ClusterRecordSchema,
  }),
  member: defineRecord<MemberRecord>()({
    kind: 'cluster member',
    prefix: keys.memberPrefix,
    key: (name: string) => keys.member(name),
    schema: MemberRecordSchema,
  }),
  memberHeartbeat: defineRecord<MemberHeartbeat>()({
    kind: 'member heartbeat',
    prefix: keys.memberHeartbeatPrefix,
    key: (name: string) => keys.memberHeartbeat(name),
    schema: MemberHeartbeatSchema,
  }),
  joinToken: defineRecord<JoinTokenRecord>()({
    kind: 'join token',
    prefix: keys.joinTokenPrefix,
    key: (name: string) => keys.joinToken(name),
    schema: JoinTokenRecordSchema,
  }),
  clusterSettings: defineRecord<Record<string, string>>()({
    kind: 'cluster settings',
    prefix: keys.clusterSettings,
    key: () => keys.clusterSettings,
    schema: StringMap,
  }),
  memberLoad: defineRecord<MemberLoad>()({
    kind: 'member load',
    prefix: keys.memberLoadPrefix,
    key: (member: string) => keys.memberLoad(member),
    schema: MemberLoadSchema,
  }),
  rebalanceRequest: defineRecord<RebalanceRequest>()({
    kind: 'rebalance request',
    prefix: keys.rebalanceRequestPrefix,
    key: (guest: string) => keys.rebalanceRequest(guest),
    schema: RebalanceRequestSchema,
  }),
  moveBandwidth: defineRecord<MoveBandwidth>()({
    kind: 'move bandwidth',
    prefix: keys.moveBandwidthPrefix,
    key: (from: string, to: string) => keys.moveBandwidth(from, to),
    schema: MoveBandwidthSchema,
  }),
  memberPower: defineRecord<MemberPower>()({
    kind: 'member power',
    prefix: keys.memberPowerPrefix,
    key: (member: string) => keys.memberPower(member),
    schema: MemberPowerSchema,
  }),
  clusterMove: defineRecord<ClusterMove>()({
    kind: 'cluster move',
    prefix: keys.clusterMovePrefix,
    key: (id: string) => keys.clusterMove(id),
    schema: ClusterMoveSchema,
  }),
  certificate: defineRecord<CertificateRecord>()({
    kind: 'trusted certificate',
    prefix: keys.certificatePrefix,
    key: (fingerprint: string) => keys.certificate(fingerprint),
    schema: CertificateRecordSchema,
  }),
} as const;
