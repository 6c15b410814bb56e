import { invalidArgument } from './errors.ts';

const UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  kB: 1000,
  KB: 1000,
  MB: 1000 ** 2,
  GB: 1000 ** 3,
  TB: 1000 ** 4,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  TiB: 1024 ** 4,
};

/** Parses `256MiB`, `1GiB`, `1.5GB`, `1048576` into bytes; throws InvalidArgument on anything else. */
export function parseBytes(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m?.[2] ?? '';
  const factor = UNITS[unit];
  if (!m || factor === undefined) {
    throw invalidArgument(
      `The ${what} ${JSON.stringify(text)} is not a size: write a number with a unit such as 256MiB or 1GiB`,
    );
  }
  const bytes = Math.floor(Number(m[1]) * factor);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw invalidArgument(`The ${what} ${JSON.stringify(text)} must be a positive size`);
  }
  return bytes;
}

/** Formats bytes for people: 268435456 → `256MiB`. */
export function formatBytes(bytes: number): string {
  const steps = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < steps.length - 1) {
    v /= 1024;
    i++;
  }
  const text = v >= 100 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(1);
  return `${text}${steps[i]}`;
}

/** Parses a duration such as `30s`, `500ms`, `2m` or a bare number of seconds into milliseconds. */
export function parseDurationMs(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m)
    throw invalidArgument(`The ${what} ${JSON.stringify(text)} is not a duration: write e.g. 30s or 500ms`);
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * factor);
}
