import { invalidArgument } from './errors.ts';

const UNIT_MS: Record<string, number> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
};

/** `90s`, `15m`, `2h`, `30d`, `1w` (one number, one unit) in milliseconds; InvalidArgument otherwise. */
export function parseDurationMs(text: string, what = 'duration'): number {
  const m = /^(\d{1,9})([smhdw])$/.exec(text.trim());
  if (!m) {
    throw invalidArgument(
      `The ${what} ${JSON.stringify(text.slice(0, 40))} is not a duration: write e.g. 90s, 15m, 2h, 30d or 1w`,
    );
  }
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}

/**
 * A point in time given as a duration back from `now` (`2h`) or as a date and time
 * (`2026-12-04T10:00:00Z`, `2026-12-04`); InvalidArgument for anything else.
 */
export function parseSince(text: string, now: Date = new Date()): Date {
  const trimmed = text.trim();
  if (/^\d+[smhdw]$/.test(trimmed)) return new Date(now.getTime() - parseDurationMs(trimmed, 'since'));
  const ms = /^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(trimmed)
    ? Date.parse(trimmed)
    : NaN;
  if (Number.isNaN(ms)) {
    throw invalidArgument(
      `since ${JSON.stringify(trimmed.slice(0, 40))} is neither a duration (2h, 30d) nor a time (2026-12-04T10:00:00Z)`,
    );
  }
  return new Date(ms);
}
