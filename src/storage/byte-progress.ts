import { formatBytes } from '../core/sizes.ts';

/** What an operation's progress is told: a percentage (null when the total is unknown) and a line. */
export type ProgressSink = (percent: number | null, text: string) => void;

/**
 * Counts the bytes of a backup's export or import and tells them, with the
 * rate and (when the total is known) the time left, at most every `everyMs`:
 * "root file system: 312MiB of 1.0GiB, 180MiB/s, 4s left". The operation
 * carries the line (progressText) and the percentage; the CLI shows both.
 */
export function byteProgress(
  sink: ProgressSink,
  options: { total?: number; everyMs?: number; now?: () => number } = {},
) {
  const now = options.now ?? Date.now;
  const everyMs = options.everyMs ?? 500;
  const started = now();
  let done = 0;
  let told = Number.NEGATIVE_INFINITY;
  let stage = '';
  const tell = () => {
    const seconds = (now() - started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const parts = [
      options.total === undefined
        ? formatBytes(done)
        : `${formatBytes(done)} of ${formatBytes(options.total)}`,
    ];
    if (rate > 0) parts.push(`${formatBytes(rate)}/s`);
    if (options.total !== undefined && rate > 0) {
      parts.push(`${Math.max(0, Math.ceil((options.total - done) / rate))}s left`);
    }
    const percent =
      options.total === undefined || options.total === 0
        ? null
        : Math.min(99, Math.floor((done / options.total) * 100));
    sink(percent, `${stage}: ${parts.join(', ')}`);
  };
  return {
    /** Starts a stage (its name leads the line) and tells at once. */
    stage(name: string): void {
      stage = name;
      told = now();
      tell();
    },
    add(bytes: number): void {
      done += bytes;
      if (now() - told < everyMs) return;
      told = now();
      tell();
    },
    get done(): number {
      return done;
    },
  };
}
