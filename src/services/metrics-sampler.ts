import type { Guest } from '../core/types.ts';
import type { LastUsage } from './last-usage.ts';
import type { MetricsHistory, MetricValues } from './metrics-history.ts';

/** Cumulative counters of a host, as read at one moment. */
export interface HostCounters {
  /** CPU time spent busy, in CPU-seconds since boot. */
  cpuBusySeconds: number;
  memoryUsedBytes: number;
  netRxBytes: number;
  netTxBytes: number;
  diskReadBytes: number;
  diskWriteBytes: number;
}

/** Cumulative disk bytes of one guest (read, written), or undefined when they cannot be read. */
export type GuestIoReader = (guest: Guest) => { readBytes: number; writeBytes: number } | undefined;

/** Options of `createMetricsSampler`. */
export interface MetricsSamplerOptions {
  /**
   * This member's running guests with their usage, from memory (the guest controller's, through
   * `GuestService.withUsage`): a sample reads no store record (decision 0080). Listing every
   * guest of the cluster with usage every 10 s was four full range reads at 10,000 guests.
   */
  running: () => Promise<Guest[]>;
  /** The names of every guest that exists, read every ten minutes to drop the series of guests gone. */
  names: () => Promise<Set<string>>;
  history: MetricsHistory;
  /** This host's name: its series is `host/NAME`. */
  hostName: string;
  readHost: () => HostCounters;
  readGuestIo: GuestIoReader;
  /** Where each sample's guest usage is left for the guests list to answer from (decision 0099). */
  lastUsage?: Pick<LastUsage, 'replace'>;
  /** Default 10 s. */
  intervalMs?: number;
  now?: () => number;
  onError?: (e: unknown) => void;
}

/** The sampler: every interval, one sample of each running guest and of the host. */
export interface MetricsSampler {
  /** Takes one sample now (the timer calls it; tests call it with a fake clock). */
  sample(): Promise<void>;
  start(): void;
  stop(): void;
}

interface Previous {
  atMs: number;
  /** The guest's start time: a restart resets its counters, so no rate spans it. */
  startedAt: string | null;
  cpuSeconds: number | undefined;
  rx: number | undefined;
  tx: number | undefined;
  read: number | undefined;
  written: number | undefined;
}

export const guestSeries = (name: string): string => `guest/${name}`;
export const hostSeries = (name: string): string => `host/${name}`;

/**
 * Guests whose disk counters are read between two turns of the event loop: the reads are
 * synchronous (two small files a ct guest), and a whole pass at thousands of guests held the loop
 * for a request's worth of time (decision 0097: 10% of the daemon at 2,000 guests).
 */
export const IO_READ_BATCH = 32;

/** Series of guests that are gone are dropped this often. */
const FORGET_EVERY_MS = 10 * 60_000;

/**
 * Samples what guests and the host use into the history: CPU from cumulative CPU time,
 * network and disk as rates from cumulative bytes (the first sample after a start has none),
 * memory as it is. Only running guests are sampled, so a stopped guest's steps stay empty.
 */
export function createMetricsSampler(options: MetricsSamplerOptions): MetricsSampler {
  const now = options.now ?? Date.now;
  const intervalMs = options.intervalMs ?? 10_000;
  const previous = new Map<string, Previous>();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let lastForget = 0;

  const rate = (current: number | undefined, before: number | undefined, seconds: number) =>
    current === undefined || before === undefined || current < before || seconds <= 0
      ? undefined
      : (current - before) / seconds;

  const sampleOnce = async () => {
    const at = now();
    const samples: Array<{ series: string; values: MetricValues }> = [];
    const guests = await options.running();
    options.lastUsage?.replace(guests);
    const seen = new Set<string>();
    let ioReads = 0;
    for (const g of guests) {
      if (g.status !== 'Running' || !g.state.usage) continue;
      if (++ioReads % IO_READ_BATCH === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      const series = guestSeries(g.name);
      seen.add(series);
      let rx: number | undefined;
      let tx: number | undefined;
      for (const nic of Object.values(g.state.nics ?? {})) {
        if (!nic.counters) continue;
        rx = (rx ?? 0) + nic.counters.rxBytes;
        tx = (tx ?? 0) + nic.counters.txBytes;
      }
      const io = options.readGuestIo(g);
      const cur: Previous = {
        atMs: at,
        startedAt: g.state.startedAt,
        cpuSeconds: g.state.usage.cpuSeconds,
        rx,
        tx,
        read: io?.readBytes,
        written: io?.writeBytes,
      };
      const before = previous.get(series);
      const same = before !== undefined && before.startedAt === cur.startedAt;
      const seconds = same ? (at - before.atMs) / 1000 : 0;
      const values: MetricValues = { memoryBytes: g.state.usage.memoryBytes };
      if (same) {
        const put = (key: keyof MetricValues, value: number | undefined) => {
          if (value !== undefined) values[key] = value;
        };
        put('cpu', rate(cur.cpuSeconds, before.cpuSeconds, seconds));
        // NIC counters are the guest's view already (the backend swaps the host end's).
        put('netRxBytesPerSecond', rate(cur.rx, before.rx, seconds));
        put('netTxBytesPerSecond', rate(cur.tx, before.tx, seconds));
        put('diskReadBytesPerSecond', rate(cur.read, before.read, seconds));
        put('diskWriteBytesPerSecond', rate(cur.written, before.written, seconds));
      }
      previous.set(series, cur);
      samples.push({ series, values });
    }

    const host = options.readHost();
    const hostKey = hostSeries(options.hostName);
    const before = previous.get(hostKey);
    const seconds = before ? (at - before.atMs) / 1000 : 0;
    const hostValues: MetricValues = { memoryBytes: host.memoryUsedBytes };
    if (before) {
      const put = (key: keyof MetricValues, value: number | undefined) => {
        if (value !== undefined) hostValues[key] = value;
      };
      put('cpu', rate(host.cpuBusySeconds, before.cpuSeconds, seconds));
      put('netRxBytesPerSecond', rate(host.netRxBytes, before.rx, seconds));
      put('netTxBytesPerSecond', rate(host.netTxBytes, before.tx, seconds));
      put('diskReadBytesPerSecond', rate(host.diskReadBytes, before.read, seconds));
      put('diskWriteBytesPerSecond', rate(host.diskWriteBytes, before.written, seconds));
    }
    previous.set(hostKey, {
      atMs: at,
      startedAt: null,
      cpuSeconds: host.cpuBusySeconds,
      rx: host.netRxBytes,
      tx: host.netTxBytes,
      read: host.diskReadBytes,
      written: host.diskWriteBytes,
    });
    samples.push({ series: hostKey, values: hostValues });
    options.history.record(samples, at);

    // A guest not sampled now (stopped, gone) has no rate across the gap.
    for (const key of previous.keys()) if (key.startsWith('guest/') && !seen.has(key)) previous.delete(key);
    if (at - lastForget >= FORGET_EVERY_MS) {
      lastForget = at;
      const exists = await options.names();
      for (const series of options.history.series('guest/'))
        if (!exists.has(series.slice('guest/'.length))) options.history.forget(series);
    }
  };

  const sample = async () => {
    // One at a time: a slow sample (a thousand guests' usage) must not stack samples up.
    if (running) return running;
    running = sampleOnce().finally(() => {
      running = undefined;
    });
    return running;
  };

  return {
    sample,
    start() {
      if (timer) return;
      timer = setInterval(() => {
        sample().catch((e: unknown) => options.onError?.(e));
      }, intervalMs);
      timer.unref();
      sample().catch((e: unknown) => options.onError?.(e));
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
    },
  };
}
