/**
 * Failpoints for fault tests (etcd's gofail, TiKV's fail-rs; decision 0107): a named point in the
 * daemon's work where a test wants it to die, at a moment no outside signal can hit. A point
 * named in TRIVISOR_FAILPOINTS (comma-separated) stops the daemon there with SIGSTOP; the test
 * sees it stopped (state T in /proc/PID/stat) and kills it -9, as a host that dies just then.
 * Unset, a failpoint is one lookup in an empty set. Only the names in FAILPOINTS exist.
 */

import type { Logger } from './logger.ts';

/** Every failpoint, and where it is. */
export const FAILPOINTS = {
  /** A cold move's destination: the guest's files made from the archive, before it answers the source. */
  'move.receive.files-made': 'a cold move destination, once it made the guest files',
  /** A cold move over a shared pool: the source, once it stopped the guest, before the hand-over. */
  'move.shared.stopped': 'a shared-pool move source, once it stopped the guest',
  /** A cold move over a shared pool: the source, once it handed the guest over, before it started it there. */
  'move.shared.handed-over': 'a shared-pool move source, once it handed the guest over',
} as const;

export type Failpoint = keyof typeof FAILPOINTS;

/** The failpoints `value` arms, and the names in it that are none (for a warning at start). */
export function parseFailpoints(value: string | undefined): { armed: Set<Failpoint>; unknown: string[] } {
  const armed = new Set<Failpoint>();
  const unknown: string[] = [];
  for (const name of (value ?? '').split(',').map((s) => s.trim())) {
    if (name === '') continue;
    if (Object.hasOwn(FAILPOINTS, name)) armed.add(name as Failpoint);
    else unknown.push(name);
  }
  return { armed, unknown };
}

const { armed } = parseFailpoints(process.env.TRIVISOR_FAILPOINTS);

/**
 * Stops this process (SIGSTOP) if `name` is armed, after a warning naming it and `fields` (the
 * caller's logger: pino writes synchronously to its file, so the line is there before the stop);
 * it goes on only if continued (SIGCONT).
 */
export function failpoint(name: Failpoint, log: Pick<Logger, 'warn'>, fields: object = {}): void {
  if (!armed.has(name)) return;
  log.warn({ ...fields, failpoint: name }, 'failpoint reached: stopping');
  process.kill(process.pid, 'SIGSTOP');
}
