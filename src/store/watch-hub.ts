import type { WatchEvent, Watcher } from './kv.ts';

/** All events of one revision. */
export interface RevisionEvents {
  revision: number;
  events: WatchEvent[];
}

type OnEvents = (events: WatchEvent[], revision: number) => void;

/**
 * In-process watch delivery for backends with a single writer: each watcher has
 * its own queue drained on a microtask, so callbacks run after the write that
 * caused them returns, one revision per call, in order, and never inside
 * another callback of the same watcher (a callback that writes just queues).
 */
export class WatchHub {
  readonly #watchers = new Set<QueuedWatcher>();
  readonly #onError: (error: unknown) => void;

  constructor(onError: (error: unknown) => void) {
    this.#onError = onError;
  }

  /** Registers a watcher; `replay` (already-committed history) is delivered first. */
  add(key: string, prefix: boolean, replay: RevisionEvents[], onEvents: OnEvents): Watcher {
    const watcher = new QueuedWatcher(key, prefix, onEvents, this.#onError);
    this.#watchers.add(watcher);
    for (const batch of replay) watcher.offer(batch);
    return {
      cancel: () => {
        watcher.cancel();
        this.#watchers.delete(watcher);
      },
    };
  }

  publish(batch: RevisionEvents): void {
    for (const watcher of this.#watchers) watcher.offer(batch);
  }

  closeAll(): void {
    for (const watcher of this.#watchers) watcher.cancel();
    this.#watchers.clear();
  }
}

class QueuedWatcher {
  readonly #key: string;
  readonly #prefix: boolean;
  readonly #onEvents: OnEvents;
  readonly #onError: (error: unknown) => void;
  readonly #queue: RevisionEvents[] = [];
  #scheduled = false;
  #draining = false;
  #cancelled = false;

  constructor(key: string, prefix: boolean, onEvents: OnEvents, onError: (error: unknown) => void) {
    this.#key = key;
    this.#prefix = prefix;
    this.#onEvents = onEvents;
    this.#onError = onError;
  }

  offer(batch: RevisionEvents): void {
    if (this.#cancelled) return;
    const events = batch.events.filter((e) =>
      this.#prefix ? e.kv.key.startsWith(this.#key) : e.kv.key === this.#key,
    );
    if (events.length === 0) return;
    this.#queue.push({ revision: batch.revision, events });
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.#drain());
    }
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
          this.#onEvents(batch.events, batch.revision);
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
