import { chmodSync, closeSync, constants, openSync } from 'node:fs';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { HISTORY_METRICS, type HistoryMetric, type HistoryRange } from '../api/web-schemas.ts';

/**
 * The metric history (issue 15; docs/decisions/0027-metric-history.md): per series (a guest,
 * a host) a ring of samples for each range, as an RRD keeps them. Every sample lands in each
 * range's current step, which keeps its average and maximum; a step nothing was recorded in
 * (a stopped guest) stays empty and reads as a gap. Fixed size: a series never holds more
 * than the rows of its rings, however long it lives. The autonomic controllers (issue 14) read
 * the same rings through `query` and `window`.
 */
export interface MetricsHistory {
  /** Adds one sample per series, taken at `atMs`; a metric left out is not known for it then. */
  record(samples: ReadonlyArray<{ series: string; values: MetricValues }>, atMs: number): void;
  /** A range of one series, oldest step first, ending with the step that holds `nowMs`. */
  query(series: string, range: HistoryRange, nowMs: number): HistoryPoints;
  /** Average and maximum of each metric over the last `seconds` (from the finest ring that covers it). */
  window(
    series: string,
    seconds: number,
    nowMs: number,
  ): Record<HistoryMetric, { average: number | null; maximum: number | null }>;
  /** Every series with history, or those that start with `prefix` (`guest/`). */
  series(prefix?: string): string[];
  /** Drops a series' history (a deleted guest). */
  forget(series: string): void;
  close(): void;
}

export type MetricValues = Partial<Record<HistoryMetric, number>>;

/** A range as `query` answers it. */
export interface HistoryPoints {
  stepSeconds: number;
  /** Start of each step (Unix seconds). */
  times: number[];
  metrics: Record<HistoryMetric, { average: Array<number | null>; maximum: Array<number | null> }>;
}

/** Each range's ring: its step and how many steps it keeps (Proxmox's RRD keeps about as many). */
export const HISTORY_RINGS: Record<HistoryRange, { stepSeconds: number; steps: number }> = {
  hour: { stepSeconds: 10, steps: 360 },
  day: { stepSeconds: 300, steps: 288 },
  week: { stepSeconds: 1800, steps: 336 },
  month: { stepSeconds: 7200, steps: 372 },
  year: { stepSeconds: 86_400, steps: 366 },
};

const RANGES = Object.keys(HISTORY_RINGS) as HistoryRange[];
const COLUMNS = HISTORY_METRICS.map((_, i) => [`n${i}`, `s${i}`, `x${i}`] as const);

const SCHEMA = `
CREATE TABLE IF NOT EXISTS rings (
  series TEXT NOT NULL,
  ring INTEGER NOT NULL,
  slot INTEGER NOT NULL,
  t INTEGER NOT NULL,
  ${COLUMNS.map(([n, s, x]) => `${n} INTEGER NOT NULL DEFAULT 0, ${s} REAL, ${x} REAL`).join(',\n  ')},
  PRIMARY KEY (series, ring, slot)
) WITHOUT ROWID;
`;

/**
 * Opens (or makes) the history in a SQLite file of its own (`metrics.db`, 0600), apart from the
 * store: ten-second samples of every guest would otherwise flood the desired state's revisions.
 * `:memory:` keeps it in memory (tests, the fixture backend).
 */
export function openMetricsHistory(path: string): MetricsHistory {
  if (path !== ':memory:') {
    closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600));
    chmodSync(path, 0o600);
  }
  const db = new DatabaseSync(path, { timeout: 5000 });
  if (path !== ':memory:') {
    db.exec('PRAGMA journal_mode = WAL');
    // A sample lost to a power cut is a 10 s gap: not worth a sync per write.
    db.exec('PRAGMA synchronous = OFF');
  }
  db.exec(SCHEMA);

  // One statement does the ring's arithmetic: a row of an older period in the slot starts over.
  const values = COLUMNS.map(() => '?, ?, ?').join(', ');
  const updates = COLUMNS.map(
    ([n, s, x]) =>
      `${n} = CASE WHEN t = excluded.t THEN ${n} + excluded.${n} ELSE excluded.${n} END, ` +
      `${s} = CASE WHEN t = excluded.t THEN (CASE WHEN excluded.${s} IS NULL THEN ${s} WHEN ${s} IS NULL THEN excluded.${s} ELSE ${s} + excluded.${s} END) ELSE excluded.${s} END, ` +
      `${x} = CASE WHEN t = excluded.t THEN (CASE WHEN excluded.${x} IS NULL THEN ${x} WHEN ${x} IS NULL THEN excluded.${x} ELSE max(${x}, excluded.${x}) END) ELSE excluded.${x} END`,
  ).join(',\n ');
  const upsert = db.prepare(
    `INSERT INTO rings (series, ring, slot, t, ${COLUMNS.flat().join(', ')}) VALUES (?, ?, ?, ?, ${values})
     ON CONFLICT (series, ring, slot) DO UPDATE SET ${updates}, t = excluded.t`,
  );
  const select = db.prepare('SELECT * FROM rings WHERE series = ? AND ring = ? AND t >= ? AND t <= ?');
  const seriesAll = db.prepare('SELECT DISTINCT series FROM rings WHERE ring = 0');
  const seriesPrefix = db.prepare(
    'SELECT DISTINCT series FROM rings WHERE ring = 0 AND series >= ? AND series < ?',
  );
  const drop = db.prepare('DELETE FROM rings WHERE series = ?');

  const run = (statement: StatementSync, args: Array<string | number | null>) => statement.run(...args);

  const points = (series: string, range: HistoryRange, nowMs: number): HistoryPoints => {
    const { stepSeconds, steps } = HISTORY_RINGS[range];
    const last = Math.floor(nowMs / 1000 / stepSeconds) * stepSeconds;
    const first = last - (steps - 1) * stepSeconds;
    const rows = new Map<number, Record<string, number | null>>();
    for (const row of select.all(series, RANGES.indexOf(range), first, last)) {
      const r = row as Record<string, number | null>;
      rows.set(Number(r.t), r);
    }
    const times: number[] = [];
    for (let t = first; t <= last; t += stepSeconds) times.push(t);
    const metrics = {} as HistoryPoints['metrics'];
    HISTORY_METRICS.forEach((metric, i) => {
      const [n, s, x] = COLUMNS[i]!;
      metrics[metric] = {
        average: times.map((t) => {
          const r = rows.get(t);
          const count = Number(r?.[n] ?? 0);
          return r && count > 0 && r[s] !== null && r[s] !== undefined ? Number(r[s]) / count : null;
        }),
        maximum: times.map((t) => {
          const r = rows.get(t);
          return r && Number(r[n] ?? 0) > 0 && r[x] !== null && r[x] !== undefined ? Number(r[x]) : null;
        }),
      };
    });
    return { stepSeconds, times, metrics };
  };

  return {
    record(samples, atMs) {
      const at = Math.floor(atMs / 1000);
      db.exec('BEGIN');
      try {
        for (const { series, values: v } of samples) {
          RANGES.forEach((range, ring) => {
            const { stepSeconds, steps } = HISTORY_RINGS[range];
            const t = Math.floor(at / stepSeconds) * stepSeconds;
            const args: Array<string | number | null> = [series, ring, (t / stepSeconds) % steps, t];
            for (const metric of HISTORY_METRICS) {
              const value = v[metric];
              const known = value !== undefined && Number.isFinite(value);
              args.push(known ? 1 : 0, known ? value : null, known ? value : null);
            }
            run(upsert, args);
          });
        }
        db.exec('COMMIT');
      } catch (e) {
        db.exec('ROLLBACK');
        throw e;
      }
    },
    query: points,
    window(series, seconds, nowMs) {
      const range =
        RANGES.find((r) => HISTORY_RINGS[r].stepSeconds * HISTORY_RINGS[r].steps >= seconds) ?? 'year';
      const p = points(series, range, nowMs);
      const from = nowMs / 1000 - seconds;
      const out = {} as Record<HistoryMetric, { average: number | null; maximum: number | null }>;
      for (const metric of HISTORY_METRICS) {
        let sum = 0;
        let count = 0;
        let max: number | null = null;
        p.times.forEach((t, i) => {
          if (t + p.stepSeconds <= from) return;
          const a = p.metrics[metric].average[i];
          const m = p.metrics[metric].maximum[i];
          if (a !== null && a !== undefined) {
            sum += a;
            count++;
          }
          if (m !== null && m !== undefined) max = max === null ? m : Math.max(max, m);
        });
        out[metric] = { average: count > 0 ? sum / count : null, maximum: max };
      }
      return out;
    },
    series(prefix) {
      const rows = prefix === undefined ? seriesAll.all() : seriesPrefix.all(prefix, `${prefix}\u{10ffff}`);
      return rows.map((r) => String((r as { series: string }).series));
    },
    forget(series) {
      drop.run(series);
    },
    close() {
      db.close();
    },
  };
}
