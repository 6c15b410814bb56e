import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConsecutiveBreaker, circuitBreaker, handleWhen, isBrokenCircuitError, noop } from 'cockatiel';
import {
  ClientClosedError,
  CompareResult,
  CompareTarget,
  castGrpcError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  GRPCDeadlineExceededError,
  GRPCInvalidArgumentError,
  GRPCNotFoundError,
  GRPCOutOfRangeError,
  GRPCResourceExhastedError,
  GRPCUnauthenticatedError,
  GRPCUnavailableError,
  type ICompare,
  type IEvent,
  type IKeyValue,
  type IRequestOp,
  type IResponseHeader,
  type IWatchRequest,
  type IWatchResponse,
  isRecoverableError,
  KVClient,
  LeaseClient,
} from 'etcd3';
import { ConnectionPool } from 'etcd3/lib/connection-pool.js';
import { failedPrecondition, internal, invalidArgument, notFound, TrivisorError } from '../core/errors.ts';
import type {
  Compare,
  KeyValue,
  KvStore,
  Lease,
  ListOptions,
  TxnOp,
  TxnOpResult,
  TxnRequest,
  TxnResponse,
  WatchEvent,
  Watcher,
  WatchOptions,
} from './kv.ts';
import { validateCompare, validateOps } from './kv-engine.ts';
import { CompactedError, type WatchLostError, watchCancelled } from './store-errors.ts';

/** Where the etcd cluster is and how to talk to it. */
export interface EtcdStoreOptions {
  /** Client URLs of the members, `http://127.0.0.1:2379` or `https://…` (all one scheme). */
  endpoints: string[];
  /** For https endpoints: the CA that signed the members' certificates, and this client's own (client-cert-auth). */
  tls?: { caFile: string; certFile?: string; keyFile?: string };
  /** How long one call may take, reconnecting to another member included (default 5000). */
  requestTimeoutMs?: number;
  /** Receives exceptions thrown by watch callbacks. */
  onError?: (error: unknown) => void;
}

/** The etcd backend, with the hooks its tests need. */
export interface EtcdStore extends KvStore {
  /**
   * Asks the server to cancel every watch of this store, behind the watches' backs: the
   * server's cancellation then arrives unasked, exactly as when etcd cancels a watch on
   * its own (the conformance suite's server-cancellation fault).
   */
  cancelWatchesOnServer(): Promise<void>;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
/** Lease ids we choose ourselves stay below this, so they are exact JavaScript numbers. */
const LEASE_ID_LIMIT = 2 ** 48;

/**
 * Opens a client of the etcd cluster at `endpoints` and reads its revision (so a watch
 * without `fromRevision` knows where "now" is); Unavailable when no member answers.
 *
 * Calls go through etcd3's RPC clients; watches do not use etcd3's watch manager, which
 * resumes from the revision in a response's header: etcd sends the current revision
 * there while a watcher is still catching up on older events, so a reconnect in that
 * window would skip events. Each watch here resumes from the revision after the last
 * one it delivered.
 */
export async function openEtcdStore(options: EtcdStoreOptions): Promise<EtcdStore> {
  const store = new EtcdKvStore(options);
  try {
    await store.revision();
  } catch (e) {
    await store.close();
    throw e;
  }
  return store;
}

interface Call {
  what: string;
  /** Whether running it twice is harmless: then any failure to reach etcd is retried, not only one before sending. */
  idempotent: boolean;
}

class EtcdKvStore implements EtcdStore {
  readonly #pool: ConnectionPool;
  readonly #kv: KVClient;
  readonly #lease: LeaseClient;
  readonly #endpoints: string;
  readonly #timeoutMs: number;
  readonly #onError: (error: unknown) => void;
  readonly #watches = new Set<EtcdWatch>();
  /** The highest revision any response has shown: where a watch without fromRevision starts. */
  #revision = 0;
  #closed = false;

  constructor(options: EtcdStoreOptions) {
    if (options.endpoints.length === 0) throw invalidArgument('An etcd store needs at least one endpoint.');
    this.#endpoints = options.endpoints.join(',');
    this.#timeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#onError = options.onError ?? ((error) => process.emitWarning(`etcd store: ${String(error)}`));
    const tls = options.tls;
    this.#pool = new ConnectionPool({
      hosts: options.endpoints,
      ...(tls
        ? {
            credentials: {
              rootCertificate: readFileSync(tls.caFile),
              ...(tls.keyFile ? { privateKey: readFileSync(tls.keyFile) } : {}),
              ...(tls.certFile ? { certChain: readFileSync(tls.certFile) } : {}),
            },
          }
        : {}),
      grpcOptions: {
        // A big list or a watch catching up may exceed gRPC's 4 MiB default.
        'grpc.max_receive_message_length': -1,
        // A member that went away without closing the connection is noticed.
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 5000,
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 2000,
      },
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + this.#timeoutMs }),
      faultHandling: {
        // A member that fails twice is skipped for a second, so calls go to the others.
        host: () =>
          circuitBreaker(handleWhen(isRecoverableError), {
            halfOpenAfter: 1000,
            breaker: new ConsecutiveBreaker(2),
          }),
        // Retrying is ours to decide: etcd3 would retry a transaction that may have been applied.
        global: noop,
      },
    });
    this.#kv = new KVClient(this.#pool);
    this.#lease = new LeaseClient(this.#pool);
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.#call({ what: 'read', idempotent: true }, () =>
      this.#kv.range({ key: Buffer.from(key) }),
    );
    this.#saw(res.header);
    const kv = res.kvs[0];
    return kv && toKeyValue(kv);
  }

  async list(
    prefix: string,
    options: ListOptions = {},
  ): Promise<{ kvs: KeyValue[]; revision: number; count?: number }> {
    if (options.countOnly) {
      const res = await this.#call({ what: 'list', idempotent: true }, () =>
        this.#kv.range({ ...prefixRange(prefix), count_only: true }),
      );
      return { kvs: [], revision: this.#saw(res.header), count: Number(res.count) };
    }
    const limit = options.limit ?? 0;
    if (!Number.isInteger(limit) || limit < 0) {
      throw invalidArgument(`List limit must be a non-negative integer, got ${limit}.`);
    }
    const res = await this.#call({ what: 'list', idempotent: true }, () =>
      this.#kv.range({ ...prefixRange(prefix), limit }),
    );
    return { kvs: res.kvs.map(toKeyValue), revision: this.#saw(res.header) };
  }

  async put(
    key: string,
    value: string,
    options: { lease?: number } = {},
  ): Promise<{ revision: number; prevKv?: KeyValue }> {
    validateOps([{ type: 'put', key, value }]);
    // Retried like a read: a put lands the same value whether it ran once or twice (a member lost
    // mid-call must not fail a write the cluster can take). Only prevKv may then be our own first write.
    const res = await this.#call({ what: 'write', idempotent: true }, () =>
      this.#kv.put({
        key: Buffer.from(key),
        value: Buffer.from(value),
        lease: options.lease ?? 0,
        prev_kv: true,
      }),
    );
    const revision = this.#saw(res.header);
    return res.prev_kv ? { revision, prevKv: toKeyValue(res.prev_kv) } : { revision };
  }

  async delete(
    key: string,
    options: { prefix?: boolean } = {},
  ): Promise<{ revision: number; deleted: number }> {
    validateOps([{ type: 'delete', key, prefix: options.prefix ?? false }]);
    const range = options.prefix ? prefixRange(key) : { key: Buffer.from(key) };
    // Retried: deleting twice leaves the same state (a retry may count 0 deleted).
    const res = await this.#call({ what: 'delete', idempotent: true }, () => this.#kv.deleteRange(range));
    return { revision: this.#saw(res.header), deleted: Number(res.deleted) };
  }

  async txn(request: TxnRequest): Promise<TxnResponse> {
    for (const compare of request.compare) validateCompare(compare);
    validateOps(request.success);
    validateOps(request.failure ?? []);
    // A transaction that only reads may run twice: it is retried like a read.
    const readOnly = [...request.success, ...(request.failure ?? [])].every((op) => op.type === 'get');
    const res = await this.#call({ what: 'transaction', idempotent: readOnly }, () =>
      this.#kv.txn({
        compare: request.compare.map(toCompare),
        success: request.success.map(toRequestOp),
        failure: (request.failure ?? []).map(toRequestOp),
      }),
    );
    const ops = res.succeeded ? request.success : (request.failure ?? []);
    const results = ops.map((op, i): TxnOpResult => {
      const r = res.responses[i];
      if (op.type === 'put') return { type: 'put' };
      if (op.type === 'delete')
        return { type: 'delete', deleted: Number(r?.response_delete_range?.deleted ?? 0) };
      if (op.countOnly) return { type: 'get', kvs: [], count: Number(r?.response_range?.count ?? 0) };
      return { type: 'get', kvs: (r?.response_range?.kvs ?? []).map(toKeyValue) };
    });
    return { succeeded: res.succeeded, revision: this.#saw(res.header), results };
  }

  watch(
    key: string,
    options: WatchOptions,
    onEvents: (events: WatchEvent[], revision: number) => void,
  ): Watcher {
    this.#assertOpen();
    const watch = new EtcdWatch({
      pool: this.#pool,
      range: options.prefix === false ? { key: Buffer.from(key) } : prefixRange(key),
      // Every write that follows this call gets a revision above any seen so far.
      from: options.fromRevision ?? this.#revision + 1,
      onEvents,
      onLost: options.onLost,
      onError: this.#onError,
      saw: (header) => this.#saw(header),
      done: (w) => this.#watches.delete(w),
    });
    this.#watches.add(watch);
    watch.start();
    return { cancel: () => watch.cancel(), progress: () => watch.progress() };
  }

  async revision(): Promise<number> {
    // A range of one key nobody writes: its header carries the current revision.
    const res = await this.#call({ what: 'read', idempotent: true }, () =>
      this.#kv.range({ key: Buffer.from([0]) }),
    );
    return this.#saw(res.header);
  }

  async compact(revision: number): Promise<void> {
    if (!Number.isInteger(revision) || revision < 1) {
      throw invalidArgument(`Cannot compact at revision ${revision}: it must be a whole number from 1.`);
    }
    try {
      await this.#call({ what: 'compaction', idempotent: true }, () => this.#kv.compact({ revision }));
    } catch (e) {
      const cause = e instanceof TrivisorError ? e.cause : undefined;
      const message = cause instanceof Error ? cause.message : '';
      if (message.includes('required revision has been compacted')) return;
      if (message.includes('required revision is a future revision')) {
        throw invalidArgument(
          `Cannot compact at revision ${revision}: it is above the current revision ${await this.revision()}.`,
        );
      }
      throw e;
    }
  }

  async grantLease(ttlSeconds: number): Promise<Lease> {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) {
      throw invalidArgument(`Lease TTL must be a whole number of seconds >= 1, got ${ttlSeconds}.`);
    }
    // etcd picks 64-bit ids, which a JavaScript number cannot hold exactly: ask for one that fits.
    for (let attempt = 0; ; attempt++) {
      const id = randomInt(1, LEASE_ID_LIMIT);
      try {
        const res = await this.#call({ what: 'lease grant', idempotent: false }, () =>
          this.#lease.leaseGrant({ ID: id, TTL: ttlSeconds }),
        );
        this.#saw(res.header);
        // etcd raises a TTL below its minimum (about 2 s with default timings).
        return { id, ttlSeconds: Number(res.TTL) };
      } catch (e) {
        const message = e instanceof TrivisorError && e.cause instanceof Error ? e.cause.message : '';
        if (attempt < 3 && message.includes('lease already exist')) continue;
        throw e;
      }
    }
  }

  async keepAlive(leaseId: number): Promise<void> {
    const ttl = await this.#call({ what: 'lease keep-alive', idempotent: true }, () =>
      keepAliveOnce(this.#pool, leaseId, this.#timeoutMs),
    );
    // etcd answers TTL 0 at once for a lease that expired or was revoked: no waiting for 2×TTL.
    if (ttl <= 0) throw leaseNotFound(leaseId);
  }

  async revokeLease(leaseId: number): Promise<void> {
    try {
      const res = await this.#call({ what: 'lease revoke', idempotent: false }, () =>
        this.#lease.leaseRevoke({ ID: leaseId }),
      );
      this.#saw(res.header);
    } catch (e) {
      if (e instanceof TrivisorError && e.code === 'NotFound') throw leaseNotFound(leaseId);
      throw e;
    }
  }

  async cancelWatchesOnServer(): Promise<void> {
    for (const watch of this.#watches) watch.cancelOnServer();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const watch of this.#watches) watch.cancel();
    this.#pool.close();
  }

  #saw(header: IResponseHeader): number {
    const revision = Number(header.revision);
    if (revision > this.#revision) this.#revision = revision;
    return revision;
  }

  #assertOpen(): void {
    if (this.#closed) throw failedPrecondition('The etcd store is closed; open it again before using it.');
  }

  /**
   * Runs one call, trying again (on another member when there are several) while etcd
   * cannot be reached and time is left: always for a call that may run twice, and for
   * the others only when the failure shows the request was never sent.
   */
  async #call<T>(call: Call, fn: () => Promise<T>): Promise<T> {
    this.#assertOpen();
    const deadline = Date.now() + this.#timeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        const retry = unreachable(e) && (call.idempotent || notSent(e));
        const pause = Math.min(50 * 2 ** attempt, 500);
        if (retry && !this.#closed && Date.now() + pause < deadline) {
          await sleep(pause);
          continue;
        }
        throw this.#storeError(e, call);
      }
    }
  }

  #storeError(e: unknown, call: Call): TrivisorError {
    if (e instanceof TrivisorError) return e;
    const detail = oneLine(e);
    const made = (code: TrivisorError['code'], message: string) =>
      new TrivisorError(code, message, { cause: e });
    if (e instanceof ClientClosedError) {
      return made('FailedPrecondition', 'The etcd store is closed; open it again before using it.');
    }
    const tlsFailure = /(\w+ )*(alert|certificate|wrong version number)[\w ]*/i.exec(detail);
    if (tlsFailure && /SSL|TLS|certificate/i.test(detail)) {
      return made(
        'Unavailable',
        `The etcd cluster at ${this.#endpoints} refused the TLS connection (${tlsFailure[0].trim()}); check this client's certificate and key and the CA it trusts.`,
      );
    }
    if (unreachable(e)) {
      const applied =
        call.idempotent || notSent(e) ? '' : ' The change may or may not have been applied: read it back.';
      return made(
        'Unavailable',
        `The etcd cluster at ${this.#endpoints} cannot be reached for a ${call.what} (${detail}); check that its members run and retry.${applied}`,
      );
    }
    if (e instanceof EtcdLeaseInvalidError) {
      return made('NotFound', 'The lease does not exist or has expired; grant a new lease.');
    }
    if (e instanceof GRPCNotFoundError) return made('NotFound', `etcd: ${detail}.`);
    if (e instanceof GRPCInvalidArgumentError)
      return made('InvalidArgument', `etcd refused the ${call.what}: ${detail}.`);
    if (e instanceof GRPCOutOfRangeError)
      return made('FailedPrecondition', `etcd refused the ${call.what}: ${detail}.`);
    if (e instanceof EtcdPermissionDeniedError || e instanceof GRPCUnauthenticatedError) {
      return made(
        'Unavailable',
        `The etcd cluster at ${this.#endpoints} refused this client (${detail}); check its certificate and the cluster's CA.`,
      );
    }
    if (e instanceof GRPCResourceExhastedError) {
      return made('Unavailable', `The etcd cluster is out of room or overloaded (${detail}); retry later.`);
    }
    return internal(`etcd failed a ${call.what}: ${detail}.`, e);
  }
}

/** What an etcd3 or gRPC error says, in one line without gRPC's status prefix and resolution notes. */
function oneLine(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text
    .replace(/^\d+ [A-Z_]+: /, '')
    .replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)\.?/g, '')
    .replace(/\s*Resolution note:.*$/s, '')
    .replace(/\s+/g, ' ')
    .trim();
}

/** Whether etcd could not be reached or did not answer in time. */
function unreachable(e: unknown): boolean {
  return (
    e instanceof GRPCUnavailableError ||
    e instanceof GRPCDeadlineExceededError ||
    isBrokenCircuitError(e) ||
    (e instanceof Error && /etcdserver: (no leader|leader changed|request timed out)/.test(e.message))
  );
}

/** Whether the failure shows that the request never left this process (so no member applied it). */
function notSent(e: unknown): boolean {
  return (
    isBrokenCircuitError(e) ||
    (e instanceof GRPCUnavailableError && /No connection established|ECONNREFUSED/.test(e.message)) ||
    (e instanceof Error && /etcdserver: no leader/.test(e.message))
  );
}

function leaseNotFound(leaseId: number): TrivisorError {
  return notFound(`Lease ${leaseId} does not exist or has expired; grant a new lease.`);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The gRPC keep-alive stream, as far as a renewal uses it. */
interface KeepAliveStream {
  on(event: 'data', fn: (res: { TTL: string | number }) => void): KeepAliveStream;
  on(event: 'error', fn: (err: Error) => void): KeepAliveStream;
  on(event: 'end', fn: () => void): KeepAliveStream;
  write(req: { ID: number }): void;
  cancel(): void;
}

/**
 * One renewal over a keep-alive stream of its own; resolves to the TTL etcd granted (0: no such
 * lease). The stream is opened on the pool's connection directly, not through etcd3's
 * `LeaseClient.leaseKeepAlive`: that one reports every error of its stream to the pool, the
 * CANCELLED of our own cancel() after the answer included, and the pool then closes every
 * client of the member (the next call reconnects, TLS and all) and counts a failure in its
 * circuit breaker; with a call that fails on the closed client, the breaker opened and every
 * call of the store waited a second (seen: a heartbeat put after each renewal took 1.26 s).
 */
async function keepAliveOnce(pool: ConnectionPool, leaseId: number, timeoutMs: number): Promise<number> {
  const stream = await pool.withConnection('Lease', ({ client, metadata }) =>
    (client as unknown as { leaseKeepAlive(md: unknown, options: unknown): KeepAliveStream }).leaseKeepAlive(
      metadata,
      { deadline: Date.now() + timeoutMs },
    ),
  );
  try {
    return await new Promise<number>((resolve, reject) => {
      stream.on('data', (res) => resolve(Number(res.TTL)));
      // Raw gRPC errors: typed like the calls' errors, so that an unreachable member is retried.
      stream.on('error', (e) => reject(castGrpcError(e)));
      stream.on('end', () =>
        reject(new GRPCUnavailableError('The keep-alive stream ended before an answer')),
      );
      stream.write({ ID: leaseId });
    });
  } finally {
    stream.cancel();
  }
}

/**
 * The byte range of every key starting with `prefix`: up to the prefix with its last
 * byte below 0xff incremented; the empty prefix (or only 0xff bytes) is every key, "\0".
 */
export function prefixRange(prefix: string): { key: Buffer; range_end: Buffer } {
  const key = Buffer.from(prefix);
  for (let i = key.length - 1; i >= 0; i--) {
    const byte = key[i]!;
    if (byte < 0xff) {
      const end = Buffer.from(key.subarray(0, i + 1));
      end[i] = byte + 1;
      return { key: key.length === 0 ? Buffer.from([0]) : key, range_end: end };
    }
  }
  return { key: key.length === 0 ? Buffer.from([0]) : key, range_end: Buffer.from([0]) };
}

function toKeyValue(kv: IKeyValue): KeyValue {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    version: Number(kv.version),
    lease: Number(kv.lease),
  };
}

const RESULT: Record<Compare['op'], CompareResult> = {
  '=': CompareResult.Equal,
  '!=': CompareResult.NotEqual,
  '<': CompareResult.Less,
  '>': CompareResult.Greater,
};

function toCompare(c: Compare): ICompare {
  const base = { key: Buffer.from(c.key), result: RESULT[c.op] };
  switch (c.target) {
    case 'value':
      return { ...base, target: CompareTarget.Value, value: Buffer.from(c.value as string) };
    case 'version':
      return { ...base, target: CompareTarget.Version, version: c.value as number };
    case 'createRevision':
      return { ...base, target: CompareTarget.Create, create_revision: c.value as number };
    case 'modRevision':
      return { ...base, target: CompareTarget.Mod, mod_revision: c.value as number };
  }
}

function toRequestOp(op: TxnOp): IRequestOp {
  switch (op.type) {
    case 'put':
      return {
        request_put: { key: Buffer.from(op.key), value: Buffer.from(op.value), lease: op.lease ?? 0 },
      };
    case 'delete':
      return { request_delete_range: op.prefix ? prefixRange(op.key) : { key: Buffer.from(op.key) } };
    case 'get':
      return {
        request_range: {
          ...(op.prefix ? prefixRange(op.key) : { key: Buffer.from(op.key) }),
          ...(op.countOnly && { count_only: true }),
        },
      };
  }
}

/** The gRPC watch stream, as far as a watch uses it. */
interface WatchStream {
  on(event: 'data', fn: (res: IWatchResponse) => void): WatchStream;
  on(event: 'error', fn: (err: Error) => void): WatchStream;
  on(event: 'end', fn: () => void): WatchStream;
  write(req: IWatchRequest): void;
  cancel(): void;
}

interface WatchSetup {
  pool: ConnectionPool;
  range: { key: Buffer; range_end?: Buffer };
  from: number;
  onEvents: (events: WatchEvent[], revision: number) => void;
  onLost: (error: WatchLostError) => void;
  onError: (error: unknown) => void;
  saw: (header: IResponseHeader) => void;
  done: (watch: EtcdWatch) => void;
}

/**
 * One watch on a gRPC stream of its own. It remembers the revision after the last one it
 * delivered and, when the stream breaks (a member restarts or goes away), opens a new
 * stream from there, on whichever member answers: nothing is skipped, nothing delivered
 * twice. Only etcd's cancellation ends it (with compact_revision when the history it
 * needs is compacted), and that is reported through onLost.
 */
class EtcdWatch {
  readonly #setup: WatchSetup;
  /** The first revision not yet delivered: where a new stream starts. */
  #next: number;
  #stream: WatchStream | undefined;
  #watchId: string | undefined;
  #attempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #ended = false;

  constructor(setup: WatchSetup) {
    this.#setup = setup;
    this.#next = setup.from;
  }

  start(): void {
    void this.#open();
  }

  cancel(): void {
    if (this.#ended) return;
    this.#end();
  }

  /** Every event up to here was delivered, or etcd said there was none (a progress notification). */
  progress(): number {
    return this.#next - 1;
  }

  cancelOnServer(): void {
    if (this.#watchId !== undefined) this.#stream?.write({ cancel_request: { watch_id: this.#watchId } });
  }

  async #open(): Promise<void> {
    let stream: WatchStream;
    try {
      stream = await this.#setup.pool.withConnection('Watch', ({ client, metadata }) => {
        const md = metadata.clone();
        // A member cut off from its leader ends the stream instead of going quiet, so the
        // watch moves to a member that still gets the cluster's writes.
        md.set('hasleader', 'true');
        return (client as unknown as { watch(md: unknown): WatchStream }).watch(md);
      });
    } catch (e) {
      this.#broken(e);
      return;
    }
    if (this.#ended) {
      stream.on('error', () => {});
      stream.cancel();
      return;
    }
    this.#stream = stream;
    this.#watchId = undefined;
    stream.on('data', (res) => {
      if (this.#stream === stream) this.#received(res);
    });
    stream.on('error', (e) => {
      // Stream errors come raw from gRPC: typed like the calls' errors before judging them.
      if (this.#stream === stream) this.#broken(castGrpcError(e));
    });
    stream.on('end', () => {
      if (this.#stream === stream) this.#broken(new Error('the watch stream ended'));
    });
    stream.write({
      create_request: {
        ...this.#setup.range,
        start_revision: this.#next,
        prev_kv: true,
        progress_notify: true,
      },
    });
  }

  #received(res: IWatchResponse): void {
    if (this.#ended) return;
    if (Number(res.header.revision) > 0) this.#setup.saw(res.header);
    if (res.canceled) {
      const compacted = Number(res.compact_revision);
      this.#lose(
        compacted > 0
          ? new CompactedError(this.#next, compacted - 1)
          : watchCancelled(res.cancel_reason || 'etcd gave no reason'),
      );
      return;
    }
    if (res.created) {
      this.#watchId = res.watch_id;
      this.#attempt = 0;
      return;
    }
    if (res.events.length === 0) {
      // A progress notification: etcd sends them only to a watch that has caught up.
      this.#next = Math.max(this.#next, Number(res.header.revision) + 1);
      return;
    }
    for (const batch of byRevision(res.events)) {
      // After a reconnect etcd starts at #next: anything older was delivered already.
      if (batch.revision < this.#next) continue;
      this.#next = batch.revision + 1;
      try {
        this.#setup.onEvents(batch.events, batch.revision);
      } catch (error) {
        this.#setup.onError(error);
      }
      if (this.#ended) return;
    }
  }

  #broken(error: unknown): void {
    if (this.#ended) return;
    this.#dropStream();
    if (!unreachable(error) && !(error instanceof Error && /stream ended|CANCELLED/.test(error.message))) {
      this.#lose(watchCancelled(oneLine(error)));
      return;
    }
    const pause = Math.min(100 * 2 ** this.#attempt, 3000) * (0.75 + Math.random() / 2);
    this.#attempt++;
    this.#timer = setTimeout(() => void this.#open(), pause);
    this.#timer.unref();
  }

  #lose(error: WatchLostError): void {
    this.#end();
    try {
      this.#setup.onLost(error);
    } catch (e) {
      this.#setup.onError(e);
    }
  }

  #end(): void {
    this.#ended = true;
    clearTimeout(this.#timer);
    this.#dropStream();
    this.#setup.done(this);
  }

  #dropStream(): void {
    const stream = this.#stream;
    this.#stream = undefined;
    this.#watchId = undefined;
    if (stream) {
      stream.on('error', () => {});
      stream.cancel();
    }
  }
}

/** A response's events split into one batch per revision (a transaction's events share one). */
function byRevision(events: IEvent[]): Array<{ revision: number; events: WatchEvent[] }> {
  const batches: Array<{ revision: number; events: WatchEvent[] }> = [];
  for (const ev of events) {
    const revision = Number(ev.kv.mod_revision);
    let batch = batches.at(-1);
    if (batch?.revision !== revision) {
      batch = { revision, events: [] };
      batches.push(batch);
    }
    const kv = toKeyValue(ev.kv);
    batch.events.push({
      // The proto loader hands enums over by their proto names (DELETE), not etcd3's typings' (Delete).
      type: String(ev.type).toUpperCase() === 'DELETE' ? 'delete' : 'put',
      kv,
      ...(ev.prev_kv ? { prevKv: toKeyValue(ev.prev_kv) } : {}),
    });
  }
  return batches;
}
