import type { MconsoleClient } from './uml-mconsole.ts';

/**
 * Giving the host back what a UML guest freed (docs/decisions/0060-vm-pvm-density.md).
 *
 * UML's RAM is a file on the jail's tmpfs, mapped shared: a page the guest once touched stays
 * in the host's memory after the guest frees it (shmem, and the host has no swap). UML has no
 * free-page reporting, but its mconsole has memory unplugging: `config mem=-N` takes N of free
 * guest pages out of the guest's allocator and punches them out of the file (madvise
 * MADV_REMOVE), and `config mem=+N` hands them back, as holes that cost the host nothing until
 * the guest touches them again. One unplug and plug of the guest's free pages is free-page
 * reporting done from outside: the guest keeps its whole memory.
 */

/** Free memory left in the guest through the unplug: a burst of allocations meanwhile still finds some. */
export const RESERVE_MIN_KIB = 8 * 1024;
/** The reserve as a share of the guest's memory, when that is more than the minimum. */
export const RESERVE_SHARE = 0.1;

/** What `proc meminfo` says, in KiB. */
export interface UmlMeminfo {
  memTotalKiB: number;
  memFreeKiB: number;
}

/** Reads MemTotal and MemFree from the text of /proc/meminfo; undefined when either is missing. */
export function parseMeminfo(text: string): UmlMeminfo | undefined {
  const total = /^MemTotal:\s+(\d+) kB/m.exec(text)?.[1];
  const free = /^MemFree:\s+(\d+) kB/m.exec(text)?.[1];
  if (total === undefined || free === undefined) return undefined;
  return { memTotalKiB: Number(total), memFreeKiB: Number(free) };
}

/** How much of the guest's free memory one cycle unplugs, KiB (whole pages; 0: not worth it). */
export function unplugKiB(info: UmlMeminfo): number {
  const reserve = Math.max(RESERVE_MIN_KIB, Math.round(info.memTotalKiB * RESERVE_SHARE));
  const kib = Math.floor((info.memFreeKiB - reserve) / 4) * 4;
  return kib >= 1024 ? kib : 0;
}

/** What one cycle did. */
export interface FreePagesResult {
  /** Free memory unplugged and plugged back (its host pages punched out), KiB. */
  releasedKiB: number;
  /** Why nothing was released (the kernel's answer), when so. */
  error?: string;
}

/**
 * One unplug-and-plug cycle through the guest's mconsole. The plug back is sent whatever the
 * unplug answered: an unplug that stopped half-way (no more free pages) keeps what it took, and
 * `config mem=+` returns at most what is unplugged.
 */
export async function releaseFreePages(mconsole: MconsoleClient): Promise<FreePagesResult> {
  const meminfo = await mconsole.request('proc meminfo');
  const info = meminfo.ok ? parseMeminfo(meminfo.text) : undefined;
  if (!info) return { releasedKiB: 0, error: `proc meminfo: ${meminfo.text || 'no answer'}` };
  const kib = unplugKiB(info);
  if (kib === 0) return { releasedKiB: 0 };
  const unplug = await mconsole.request(`config mem=-${kib}K`);
  let plug = await mconsole.request(`config mem=+${kib}K`);
  // Once more: a guest left without the unplugged memory would run short of it until its next cycle.
  if (!plug.ok) plug = await mconsole.request(`config mem=+${kib}K`);
  if (!unplug.ok) return { releasedKiB: 0, error: `config mem=-${kib}K: ${unplug.text}` };
  if (!plug.ok) return { releasedKiB: kib, error: `config mem=+${kib}K: ${plug.text}` };
  return { releasedKiB: kib };
}
