import type { GuestSpec, Model, ProcessIdentity } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { KsmControl } from '../host/ksm.ts';
import type { Logger } from '../host/logger.ts';

/** How often the loop looks at this member's guests. */
export const MEMORY_RECLAIM_INTERVAL_MS = 10_000;
/** How long a guest runs before its first release: its boot's allocations are freed by then. */
export const FIRST_RELEASE_AFTER_MS = 20_000;
/** How often a running guest's free memory is given back after that. */
export const RELEASE_EVERY_MS = 5 * 60_000;

/** One running guest of this member. */
export interface RunningGuest {
  spec: GuestSpec;
  /** ISO time of its start (its status' startedAt); unknown: as if it started at the first pass. */
  startedAt?: string;
  /** The run its status knows (the driver's start answer); unknown: its memory is left alone. */
  process?: ProcessIdentity;
}

/** What the loop needs (main.ts injects the store's view and the drivers). */
export interface MemoryReclaimOptions {
  /** This member's running guests. */
  runningGuests: () => Promise<RunningGuest[]>;
  drivers: Partial<Record<Model, GuestDriver>>;
  /** KSM, run while vm guests do (host/ksm.ts); none: left alone. */
  ksm?: KsmControl;
  log: Logger;
  now?: () => number;
  intervalMs?: number;
  firstReleaseAfterMs?: number;
  releaseEveryMs?: number;
}

/** The loop: `pass()` is one look (tests call it with a fake clock); start/stop run it on a timer. */
export interface MemoryReclaim {
  pass(): Promise<void>;
  start(): void;
  stop(): Promise<void>;
}

/**
 * Host memory of idle guests given back (docs/decisions/0060-vm-pvm-density.md), level-based:
 * each pass counts this member's running vm guests for KSM, and gives back the free memory of
 * each guest whose driver keeps it (pvm) once it has run a while, then every few minutes. One
 * guest at a time: a release costs a few mconsole round trips, never a burst of them.
 */
export function createMemoryReclaim(o: MemoryReclaimOptions): MemoryReclaim {
  const now = o.now ?? Date.now;
  const intervalMs = o.intervalMs ?? MEMORY_RECLAIM_INTERVAL_MS;
  const firstAfterMs = o.firstReleaseAfterMs ?? FIRST_RELEASE_AFTER_MS;
  const everyMs = o.releaseEveryMs ?? RELEASE_EVERY_MS;
  /** By guest name and start: the next time its memory is given back. */
  const due = new Map<string, { startedAt: string; atMs: number }>();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  const pass = async (): Promise<void> => {
    const guests = await o.runningGuests();
    await o.ksm?.update(guests.filter((g) => g.spec.model === 'vm').length);
    const seen = new Set<string>();
    for (const g of guests) {
      const driver = o.drivers[g.spec.model];
      // No run known: the guest is not started yet as far as the controller knows.
      if (!driver?.releaseFreeMemory || !g.process) continue;
      seen.add(g.spec.name);
      const startedAt = g.startedAt ?? '';
      let next = due.get(g.spec.name);
      if (!next || next.startedAt !== startedAt) {
        const startMs = Date.parse(startedAt);
        next = { startedAt, atMs: (Number.isFinite(startMs) ? startMs : now()) + firstAfterMs };
        due.set(g.spec.name, next);
      }
      if (now() < next.atMs || stopped) continue;
      next.atMs = now() + everyMs;
      try {
        const bytes = await driver.releaseFreeMemory(g.spec, g.process);
        o.log.debug({ guest: g.spec.name, releasedBytes: bytes }, 'free guest memory given back to the host');
      } catch (e) {
        o.log.warn(
          { guest: g.spec.name, err: e instanceof Error ? e.message : String(e) },
          'cannot give back the free memory of a guest',
        );
      }
    }
    for (const name of due.keys()) if (!seen.has(name)) due.delete(name);
  };

  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = pass()
        .catch((e: unknown) =>
          o.log.warn({ err: e instanceof Error ? e.message : String(e) }, 'memory reclaim pass failed'),
        )
        .finally(() => {
          running = undefined;
          schedule();
        });
    }, intervalMs);
    timer.unref();
  };

  return {
    pass,
    start() {
      // The first pass at once: KSM is set right (or put back) as soon as the daemon runs.
      running = pass()
        .catch((e: unknown) =>
          o.log.warn({ err: e instanceof Error ? e.message : String(e) }, 'memory reclaim pass failed'),
        )
        .finally(() => {
          running = undefined;
          schedule();
        });
    },
    async stop() {
      const wasStarted = timer !== undefined || running !== undefined;
      stopped = true;
      clearTimeout(timer);
      await running;
      // A daemon stopped right after its last vm guest puts KSM back now: its next pass may be long
      // in coming. Guests outlive the daemon, so with vm guests still running KSM stays on.
      if (!wasStarted || !o.ksm) return;
      try {
        await o.ksm.update((await o.runningGuests()).filter((g) => g.spec.model === 'vm').length);
      } catch (e) {
        o.log.warn({ err: e instanceof Error ? e.message : String(e) }, 'cannot put KSM back at shutdown');
      }
    },
  };
}
