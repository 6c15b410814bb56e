import { constants } from 'node:os';

/**
 * glibc's SIGRTMIN (the kernel's is 32; glibc keeps two for its threads): what an image's
 * `SIGRTMIN+n` means, systemd's power-off `SIGRTMIN+3` being 37 (as pvm-agent.ts reads it).
 */
const GLIBC_SIGRTMIN = 34;
const SIGRTMAX = 64;

/**
 * The number of an image's stop signal (`SIGUSR2`, `TERM`, `15`, `SIGRTMIN+3`, `RTMAX-2`), so
 * that the daemon can send it with kill(2) instead of spawning `runc kill` (docs/decisions/0091);
 * undefined when it names no signal this host has. Names are read as runc reads them (case
 * ignored, `SIG` optional); runc 1.1 knows no real-time names, which the daemon reads as glibc
 * numbers them.
 */
export function stopSignalNumber(signal: string): number | undefined {
  const text = signal.trim().toUpperCase();
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    return n >= 1 && n <= SIGRTMAX ? n : undefined;
  }
  const name = text.startsWith('SIG') ? text.slice(3) : text;
  const rt = /^RT(MIN|MAX)(?:([+-])(\d{1,2}))?$/.exec(name);
  if (rt) {
    const offset = Number(rt[3] ?? 0);
    if (rt[1] === 'MIN' && rt[2] !== '-') return checkedRealTime(GLIBC_SIGRTMIN + offset);
    if (rt[1] === 'MAX' && rt[2] !== '+') return checkedRealTime(SIGRTMAX - offset);
    return undefined;
  }
  const n = (constants.signals as Record<string, number | undefined>)[`SIG${name}`];
  return n !== undefined && n >= 1 ? n : undefined;
}

function checkedRealTime(n: number): number | undefined {
  return n >= GLIBC_SIGRTMIN && n <= SIGRTMAX ? n : undefined;
}
