import { cronSchedule } from '../core/config-keys.ts';
import { asTrivisorError } from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';

/**
 * The clock of the schedules kept in guests' keys (`snapshots.schedule`, `backups.schedule`):
 * one pass at each minute's start, a few seconds in, so that the minute a pass judges is never
 * the one before. A pass that outlasts its minute delays the next one; runs missed while the
 * daemon was down are not made up.
 */
export interface MinuteClock {
  start(): void;
  /** Stops the clock and waits for a pass under way. */
  stop(): Promise<void>;
}

export const MINUTE_MS = 60_000;

/** The start of the minute that holds `at`. */
export const minuteOf = (at: Date): Date => new Date(Math.floor(at.getTime() / MINUTE_MS) * MINUTE_MS);

/** Whether `schedule` (the value of key `key`) fires in the minute that starts at `minute`. */
export function firesIn(schedule: string, minute: Date, key = 'snapshots.schedule'): boolean {
  const next = cronSchedule(schedule, key).nextRun(new Date(minute.getTime() - 1));
  return next !== null && next.getTime() === minute.getTime();
}

export function everyMinute(o: {
  pass: (at: Date) => Promise<void>;
  now: () => Date;
  log: Logger;
  /** What the passes do, for the log of one that failed. */
  what: string;
}): MinuteClock {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  const schedule = () => {
    if (stopped) return;
    const t = o.now().getTime();
    const wait = MINUTE_MS - (t % MINUTE_MS) + 2000;
    timer = setTimeout(() => {
      running = o
        .pass(o.now())
        .catch((e: unknown) => o.log.error({ err: asTrivisorError(e).message }, `${o.what} pass failed`))
        .finally(() => {
          running = undefined;
          schedule();
        });
    }, wait);
    timer.unref();
  };
  return {
    start: schedule,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
