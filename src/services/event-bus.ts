import type { TrivisorEvent } from '../core/types.ts';
import type { EventBus } from './types.ts';

/** In-process fan-out; a throwing listener never disturbs the others or the publisher. */
export function createEventBus(clock: () => Date = () => new Date()): EventBus {
  const listeners = new Set<{ fn: (e: TrivisorEvent) => void; types: Set<string> | null }>();
  return {
    publish(event) {
      const full: TrivisorEvent = { ...event, timestamp: clock().toISOString() };
      for (const l of listeners) {
        if (l.types && !l.types.has(full.type)) continue;
        try {
          l.fn(full);
        } catch {
          // A broken subscriber (e.g. a closed socket) must not break lifecycle handling.
        }
      }
    },
    subscribe(fn, types) {
      const entry = { fn, types: types && types.length > 0 ? new Set<string>(types) : null };
      listeners.add(entry);
      return () => listeners.delete(entry);
    },
  };
}
