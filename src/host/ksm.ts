import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from './logger.ts';

/**
 * `off` in the daemon's environment: no KSM started, no pvm free pages released, and vm guests'
 * RAM not even marked mergeable (a host that must not take KSM's side channel, decision 0060).
 */
export const MEMORY_RECLAIM_ENV = 'TRIVISOR_MEMORY_RECLAIM';

/** Where the kernel exposes Kernel Samepage Merging (docs/decisions/0060-vm-pvm-density.md). */
export const KSM_SYSFS_DIR = '/sys/kernel/mm/ksm';

/**
 * What the daemon sets while vm guests run: 500 pages every 50 ms is 10,000 pages (39 MiB) a
 * second, so ten idle 128 MiB guests are scanned whole in about half a minute, for a few percent
 * of one core. The kernel's default (100 pages every 20 ms) takes twice as long.
 */
export const KSM_PAGES_TO_SCAN = 500;
export const KSM_SLEEP_MILLISECS = 50;

/** KSM as `trivisor info --host` reports it. */
export interface KsmStatus {
  /** False when the kernel has no KSM (no /sys/kernel/mm/ksm). */
  available: boolean;
  /** `run`: 0 stopped, 1 merging, 2 stopped and unmerged. */
  run: number;
  /** True while the run value is the daemon's (it started KSM for its vm guests and will put it back). */
  enabledByTrivisor: boolean;
  pagesToScan: number;
  sleepMillisecs: number;
  /** Distinct merged pages kept, and the page mappings that point at them (the saving). */
  pagesShared: number;
  pagesSharing: number;
  /** What sharing saves: pages_sharing pages of 4 KiB. */
  savedBytes: number;
}

/** What the daemon found before it started KSM, kept in the state dir so that a restarted daemon still puts it back. */
interface SavedKsm {
  run: number;
  pagesToScan: number;
  sleepMillisecs: number;
}

/** Starts KSM while this host runs vm guests, and puts back what it found once none do. */
export interface KsmControl {
  /**
   * Level-based: with `vmGuests` > 0 KSM runs (started with this daemon's scan rate unless it
   * already ran: then the administrator's settings stay); with none, what the daemon changed
   * goes back. Idempotent; errors are logged, never thrown (KSM only saves memory).
   */
  update(vmGuests: number): Promise<void>;
  status(): Promise<KsmStatus>;
}

const PAGE_BYTES = 4096;

/**
 * KSM through its sysfs files. `sysfsDir` is injected (tests give a plain directory); `stateFile`
 * remembers the values found before the daemon started KSM. Several daemons on one host (test
 * members) share the one KSM: one that finds KSM already running leaves it to whoever started it,
 * and the next update after that one stops it starts it again.
 */
export function createKsmControl(options: { sysfsDir?: string; stateFile: string; log: Logger }): KsmControl {
  const dir = options.sysfsDir ?? KSM_SYSFS_DIR;
  const { stateFile, log } = options;
  const readNumber = async (name: string): Promise<number> => {
    const text = (await readFile(join(dir, name), 'utf8')).trim();
    const n = Number(text);
    if (!Number.isFinite(n))
      throw new Error(`${join(dir, name)} holds ${JSON.stringify(text)}, not a number`);
    return n;
  };
  const write = (name: string, value: number) => writeFile(join(dir, name), `${value}\n`);
  const readSaved = async (): Promise<SavedKsm | undefined> => {
    try {
      return JSON.parse(await readFile(stateFile, 'utf8')) as SavedKsm;
    } catch {
      return undefined;
    }
  };
  const available = async (): Promise<boolean> => {
    try {
      await readNumber('run');
      return true;
    } catch {
      return false;
    }
  };
  // One update at a time: two overlapping ones could both find KSM stopped and save run=1 as the "before".
  let queue: Promise<void> = Promise.resolve();

  const apply = async (vmGuests: number): Promise<void> => {
    if (!(await available())) return;
    const run = await readNumber('run');
    const saved = await readSaved();
    if (vmGuests > 0) {
      if (run === 1) return;
      if (saved) {
        // Someone stopped it after the daemon started it: the host has vm guests, so it runs again.
        await write('run', 1);
        return;
      }
      const before: SavedKsm = {
        run,
        pagesToScan: await readNumber('pages_to_scan'),
        sleepMillisecs: await readNumber('sleep_millisecs'),
      };
      await writeFile(stateFile, `${JSON.stringify(before)}\n`);
      await write('pages_to_scan', KSM_PAGES_TO_SCAN);
      await write('sleep_millisecs', KSM_SLEEP_MILLISECS);
      await write('run', 1);
      log.info({ vmGuests, before }, 'KSM started for vm guests');
      return;
    }
    if (!saved) return;
    // The settings first: the run value last, so that a KSM left running is never left at our rate.
    await write('pages_to_scan', saved.pagesToScan);
    await write('sleep_millisecs', saved.sleepMillisecs);
    // Only a KSM that still runs is stopped: one someone stopped or unmerged (run=2) since stays so.
    if (run === 1) await write('run', saved.run);
    await rm(stateFile, { force: true });
    log.info({ restored: saved }, 'KSM put back as it was: no vm guest runs');
  };

  return {
    update(vmGuests) {
      const next = queue.then(() =>
        apply(vmGuests).catch((e: unknown) =>
          log.warn({ err: e instanceof Error ? e.message : String(e) }, 'cannot manage KSM'),
        ),
      );
      queue = next;
      return next;
    },
    async status() {
      if (!(await available())) {
        return {
          available: false,
          run: 0,
          enabledByTrivisor: false,
          pagesToScan: 0,
          sleepMillisecs: 0,
          pagesShared: 0,
          pagesSharing: 0,
          savedBytes: 0,
        };
      }
      const [run, pagesToScan, sleepMillisecs, pagesShared, pagesSharing] = await Promise.all(
        ['run', 'pages_to_scan', 'sleep_millisecs', 'pages_shared', 'pages_sharing'].map(readNumber),
      );
      return {
        available: true,
        run: run ?? 0,
        enabledByTrivisor: run === 1 && (await readSaved()) !== undefined,
        pagesToScan: pagesToScan ?? 0,
        sleepMillisecs: sleepMillisecs ?? 0,
        pagesShared: pagesShared ?? 0,
        pagesSharing: pagesSharing ?? 0,
        savedBytes: (pagesSharing ?? 0) * PAGE_BYTES,
      };
    },
  };
}
