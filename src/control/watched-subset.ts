import type { GuestSpec } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import type { KeyValue, KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';
import { createInformer, type Informer } from './informer.ts';

/**
 * The few records under a prefix that a periodic loop cares about (this member's guests with a
 * schedule, the snapshots that expire), kept current by a watch (decision 0080): the prefix is
 * listed once, at the first `ready()`, then only changes are read, so a pass costs what it picks,
 * not every record of the cluster. The informer under it lists again after a lost watch and every
 * few minutes (its resync), as every informer does.
 */
export interface WatchedSubset<T> {
  /** Lists and watches at the first call; later calls resolve at once. A failed list is tried again at the next call. */
  ready(): Promise<void>;
  /** The picked records, by key. */
  picked(): ReadonlyMap<string, T>;
  /** The store revision the subset reflects (0 before the first list). */
  revision(): number;
  stop(): void;
}

export function watchSubset<T>(o: {
  store: KvStore;
  prefix: string;
  /** What is kept of a record, or undefined for one the loop does not care about. May throw (logged, left out). */
  pick: (kv: KeyValue) => T | undefined;
  log: Logger;
}): WatchedSubset<T> {
  const picked = new Map<string, T>();
  let informer: Informer<T | undefined> | undefined;
  let starting: Promise<void> | undefined;
  let stopped = false;
  const keep = (key: string, value: T | undefined) => {
    if (value === undefined) picked.delete(key);
    else picked.set(key, value);
  };
  const start = async () => {
    const i = createInformer<T | undefined>({
      store: o.store,
      prefix: o.prefix,
      decode: o.pick,
      log: o.log,
      handlers: {
        onAdd: keep,
        onUpdate: keep,
        onDelete: (key) => void picked.delete(key),
      },
    });
    informer = i;
    try {
      await i.start();
    } catch (e) {
      i.stop();
      informer = undefined;
      picked.clear();
      throw e;
    }
    if (stopped) i.stop();
  };
  return {
    ready() {
      if (stopped) return Promise.resolve();
      starting ??= start().catch((e: unknown) => {
        starting = undefined;
        throw e;
      });
      return starting;
    },
    picked: () => picked,
    revision: () => informer?.revision() ?? 0,
    stop() {
      stopped = true;
      informer?.stop();
    },
  };
}

/** This member's guests whose config has the schedule key `key`, by spec key. */
export function scheduledGuests(
  store: KvStore,
  o: { hostName: string; key: 'snapshots.schedule' | 'backups.schedule'; log: Logger },
): WatchedSubset<GuestSpec> {
  return watchSubset({
    store,
    prefix: records.guest.prefix,
    pick: (kv) => {
      const spec = records.guest.decode(kv);
      return spec.location === o.hostName && spec.config[o.key] ? spec : undefined;
    },
    log: o.log,
  });
}
