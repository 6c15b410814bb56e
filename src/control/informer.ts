import { asTrivisorError } from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';
import type { KeyValue, KvStore, WatchEvent, Watcher } from '../store/kv.ts';
import type { WatchLostError } from '../store/store-errors.ts';

/**
 * What an informer tells its owner, in revision order, one call at a time. Handlers are
 * synchronous: queue slow work (a reconcile) rather than await it here. One that throws
 * is logged; the informer goes on.
 */
export interface InformerHandlers<T> {
  /** A key appeared; also every key of the first list. */
  onAdd?(key: string, value: T): void;
  onUpdate?(key: string, value: T, previous: T): void;
  /** A key is gone: deleted, or found missing by a re-list (a delete the watch never saw). */
  onDelete?(key: string, last: T): void;
  /** The cache is complete: after the first list and after each re-list. */
  onSynced?(revision: number): void;
}

/** What an informer watches and how it turns records into values. */
export interface InformerOptions<T> {
  store: KvStore;
  /** Every key under this prefix. */
  prefix: string;
  /** Turns a stored record into the cached value; a record it throws on is logged and left out. */
  decode: (kv: KeyValue) => T;
  handlers: InformerHandlers<T>;
  log: Logger;
  /** First pause before a failed re-list is tried again (default 200 ms); doubles up to `relistMaxMs`. */
  relistBackoffMs?: number;
  /** Longest pause between re-list attempts (default 10 s). */
  relistMaxMs?: number;
  /**
   * Ends the watch and opens a new one this often, from where the cache stands (default 5 min;
   * 0: never). A watch that stalls without an error (a stream that stops delivering) would
   * otherwise leave the cache, and every controller acting on it, behind for good; the new watch
   * replays what the old one missed from the store's history, as handler calls, each change once.
   * Nothing is listed (decision 0087): only when that history is compacted does the new watch
   * report itself lost, and the informer lists again as after any lost watch.
   */
  resyncMs?: number;
}

/**
 * A cache of every record under a prefix that stays current: it lists the prefix, then
 * watches from the list's revision + 1, and calls its handlers for every change. When
 * the watch is lost (its history compacted, or the store cancelled it) it lists again
 * and calls the handlers for the difference, deletes included, so its owner misses
 * nothing (Kubernetes' list-then-watch informer, over our store). Every `resyncMs` it opens a
 * new watch from its cache's revision (no list), in case a watch stalls without saying so.
 */
export interface Informer<T> {
  /** Lists (calling onAdd for every key), then watches; rejects when the first list fails. */
  start(): Promise<void>;
  /** Stops watching; no handler is called after it returns. */
  stop(): void;
  get(key: string): T | undefined;
  /** Cached keys and values. */
  entries(): Array<[string, T]>;
  values(): T[];
  /** The store revision the cache reflects. */
  revision(): number;
  /** How many times the watch was lost and the prefix listed again. */
  relists(): number;
  /** How many periodic re-watches (`resyncMs`) ran. */
  resyncs(): number;
}

interface Cached<T> {
  value: T;
  modRevision: number;
}

export function createInformer<T>(options: InformerOptions<T>): Informer<T> {
  const { store, prefix, decode, handlers } = options;
  const log = options.log.child({ component: 'informer', prefix });
  const backoffMs = options.relistBackoffMs ?? 200;
  const maxMs = options.relistMaxMs ?? 10_000;
  let cache = new Map<string, Cached<T>>();
  let watcher: Watcher | undefined;
  let revision = 0;
  let relists = 0;
  let resyncs = 0;
  /** The current watch's number: events of a watch cancelled for a re-list are not applied. */
  let watchGeneration = 0;
  /** A re-list is under way (or waiting to be retried): a resync then has nothing to add. */
  let relisting = false;
  let resyncTimer: NodeJS.Timeout | undefined;
  let started = false;
  let stopped = false;
  let retryTimer: NodeJS.Timeout | undefined;

  const call = (what: string, fn: () => void) => {
    try {
      fn();
    } catch (e) {
      log.error({ err: asTrivisorError(e).message }, `informer ${what} handler failed`);
    }
  };

  /** The decoded value of a record, or undefined (logged) when it cannot be decoded. */
  const decoded = (kv: KeyValue): Cached<T> | undefined => {
    try {
      return { value: decode(kv), modRevision: kv.modRevision };
    } catch (e) {
      log.warn({ key: kv.key, err: asTrivisorError(e).message }, 'record cannot be decoded; ignored');
      return undefined;
    }
  };

  const put = (key: string, next: Cached<T>) => {
    const previous = cache.get(key);
    cache.set(key, next);
    if (previous) call('update', () => handlers.onUpdate?.(key, next.value, previous.value));
    else call('add', () => handlers.onAdd?.(key, next.value));
  };

  const remove = (key: string) => {
    const last = cache.get(key);
    if (!last) return;
    cache.delete(key);
    call('delete', () => handlers.onDelete?.(key, last.value));
  };

  const onEvents = (events: WatchEvent[], at: number) => {
    if (stopped) return;
    for (const ev of events) {
      if (ev.type === 'delete') {
        remove(ev.kv.key);
        continue;
      }
      const next = decoded(ev.kv);
      if (next) put(ev.kv.key, next);
    }
    revision = at;
  };

  const watch = () => {
    const mine = ++watchGeneration;
    watcher = store.watch(
      prefix,
      {
        fromRevision: revision + 1,
        onLost: (error) => {
          if (mine === watchGeneration) onLost(error);
        },
      },
      (events, at) => {
        if (mine === watchGeneration) onEvents(events, at);
      },
    );
  };

  function onLost(error: WatchLostError): void {
    watcher = undefined;
    if (stopped) return;
    log.info({ reason: error.reason, revision, err: error.message }, 'watch lost; listing again');
    relists++;
    void relist(0);
  }

  /**
   * The periodic re-watch: the watch is replaced by one from the revision up to which it delivered
   * everything (its progress, which moves on with quiet revisions where the store can tell, so
   * the replay is what changed since; else the last revision it delivered). What a stalled watch
   * missed is replayed by the new one; events of the old one still in flight are dropped (its
   * generation), and are replayed too. A compacted history makes the new watch lost: re-listed.
   */
  const resync = () => {
    if (stopped || relisting || !watcher) return;
    const progressed = watcher.progress?.();
    watchGeneration++;
    watcher.cancel();
    watcher = undefined;
    resyncs++;
    if (progressed !== undefined && progressed > revision) revision = progressed;
    watch();
  };

  /** Lists again and turns the difference with the cache into handler calls, then watches on. */
  async function relist(attempt: number): Promise<void> {
    relisting = true;
    let listed: { kvs: KeyValue[]; revision: number };
    try {
      listed = await store.list(prefix);
    } catch (e) {
      if (stopped) return;
      const pause = Math.min(backoffMs * 2 ** attempt, maxMs);
      log.warn({ err: asTrivisorError(e).message, retryInMs: pause }, 'cannot list again; retrying');
      retryTimer = setTimeout(() => void relist(attempt + 1), pause);
      retryTimer.unref();
      return;
    }
    if (stopped) return;
    const seen = new Set<string>();
    for (const kv of listed.kvs) {
      seen.add(kv.key);
      const before = cache.get(kv.key);
      if (before && before.modRevision === kv.modRevision) continue;
      const next = decoded(kv);
      if (next) put(kv.key, next);
    }
    for (const key of [...cache.keys()]) if (!seen.has(key)) remove(key);
    revision = listed.revision;
    relisting = false;
    watch();
    call('synced', () => handlers.onSynced?.(revision));
  }

  return {
    async start() {
      if (started) throw new Error(`The informer of ${prefix} is already started`);
      started = true;
      const listed = await store.list(prefix);
      if (stopped) return;
      cache = new Map();
      for (const kv of listed.kvs) {
        const next = decoded(kv);
        if (next) put(kv.key, next);
      }
      revision = listed.revision;
      watch();
      call('synced', () => handlers.onSynced?.(revision));
      const every = options.resyncMs ?? 5 * 60_000;
      if (every > 0) {
        resyncTimer = setInterval(resync, every);
        resyncTimer.unref();
      }
    },
    stop() {
      stopped = true;
      clearTimeout(retryTimer);
      clearInterval(resyncTimer);
      watcher?.cancel();
      watcher = undefined;
    },
    get: (key) => cache.get(key)?.value,
    entries: () => [...cache].map(([key, c]) => [key, c.value]),
    values: () => [...cache.values()].map((c) => c.value),
    revision: () => revision,
    relists: () => relists,
    resyncs: () => resyncs,
  };
}
