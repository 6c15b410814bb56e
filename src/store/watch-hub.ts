import type { WatchEvent, Watcher } from './kv.ts';
import type { WatchLostError } from './store-errors.ts';

/** All events of one revision. */
export interface RevisionEvents {
  revision: number;
  events: WatchEvent[];
}

type OnEvents = (events: WatchEvent[], revision: number) => void;
type OnLost = (error: WatchLostError) => void;

/** What a watcher of the hub asks for. */
export interface HubWatch {
  key: string;
  prefix: boolean;
  /** Live batches below this revision are not delivered (a watch from a future revision). */
  fromRevision: number;
  onEvents: OnEvents;
  onLost: OnLost;
}

/**
 * In-process watch delivery for backends with a single writer: each watcher has
 * its own queue drained on a microtask, so callbacks run after the write that
 * caused them returns, one revision per call, in order, and never inside
 * another callback of the same watcher (a callback that writes just queues).
 */
export class WatchHub {
  readonly #watchers = new Set<QueuedWatcher>();
  readonly #onError: (error: unknown) => void;

  readonly #revision: () => number;

  /** `revision` is the store's current revision (every batch up to it was published). */
  constructor(onError: (error: unknown) => void, revision: () => number) {
    this.#onError = onError;
    this.#revision = revision;
  }

  /** Registers a watcher; `replay` (already-committed history) is delivered first. */
  add(watch: HubWatch, replay: RevisionEvents[]): Watcher {
    const watcher = new QueuedWatcher(watch, this.#onError);
    this.#watchers.add(watcher);
    for (const batch of replay) watcher.offer(batch);
    return {
      cancel: () => {
        watcher.cancel();
        this.#watchers.delete(watcher);
      },
      // Publishing queues a watcher's events synchronously: with nothing queued, it has had every
      // event up to the store's revision; else every one before its oldest queued batch.
      progress: () => watcher.progress(this.#revision()),
    };
  }

  /** A watcher that is lost from the start (its history is compacted): told on a microtask. */
  lost(onLost: OnLost, error: WatchLostError): Watcher {
    let cancelled = false;
    queueMicrotask(() => {
      if (!cancelled) this.#report(onLost, error);
    });
    return {
      cancel: () => {
        cancelled = true;
      },
    };
  }

  publish(batch: RevisionEvents): void {
    for (const watcher of this.#watchers) watcher.offer(batch);
  }

  /** Ends every watch as lost (what a server's cancellation looks like to its owners). */
  loseAll(error: WatchLostError): void {
    for (const watcher of this.#watchers) {
      watcher.cancel();
      queueMicrotask(() => this.#report(watcher.onLost, error));
    }
    this.#watchers.clear();
  }

  closeAll(): void {
    for (const watcher of this.#watchers) watcher.cancel();
    this.#watchers.clear();
  }

  #report(onLost: OnLost, error: WatchLostError): void {
    try {
      onLost(error);
    } catch (e) {
      this.#onError(e);
    }
  }
}

class QueuedWatcher {
  readonly #watch: HubWatch;
  readonly #onError: (error: unknown) => void;
  readonly #queue: RevisionEvents[] = [];
  #scheduled = false;
  #draining = false;
  #cancelled = false;

  constructor(watch: HubWatch, onError: (error: unknown) => void) {
    this.#watch = watch;
    this.#onError = onError;
  }

  get onLost(): OnLost {
    return this.#watch.onLost;
  }

  offer(batch: RevisionEvents): void {
    if (this.#cancelled || batch.revision < this.#watch.fromRevision) return;
    const { key, prefix } = this.#watch;
    const events = batch.events.filter((e) => (prefix ? e.kv.key.startsWith(key) : e.kv.key === key));
    if (events.length === 0) return;
    this.#queue.push({ revision: batch.revision, events });
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.#drain());
    }
  }

  progress(current: number): number {
    const next = this.#queue[0];
    return next ? next.revision - 1 : current;
  }

  cancel(): void {
    this.#cancelled = true;
    this.#queue.length = 0;
  }

  #drain(): void {
    this.#scheduled = false;
    if (this.#draining) return;
    this.#draining = true;
    try {
      for (let batch = this.#queue.shift(); batch && !this.#cancelled; batch = this.#queue.shift()) {
        try {
          this.#watch.onEvents(batch.events, batch.revision);
        } catch (error) {
          // A failing consumer must not stop delivery to itself or to others.
          this.#onError(error);
        }
      }
    } finally {
      this.#draining = false;
    }
  }
}
