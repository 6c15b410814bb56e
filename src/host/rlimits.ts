import { readFile } from 'node:fs/promises';

/** Hard resource limits by RLIMIT_* name; Infinity for unlimited. */
export type HardLimits = Record<string, number>;

const NAMES: Record<string, string> = {
  'Max cpu time': 'RLIMIT_CPU',
  'Max file size': 'RLIMIT_FSIZE',
  'Max data size': 'RLIMIT_DATA',
  'Max stack size': 'RLIMIT_STACK',
  'Max core file size': 'RLIMIT_CORE',
  'Max resident set': 'RLIMIT_RSS',
  'Max processes': 'RLIMIT_NPROC',
  'Max open files': 'RLIMIT_NOFILE',
  'Max locked memory': 'RLIMIT_MEMLOCK',
  'Max address space': 'RLIMIT_AS',
  'Max file locks': 'RLIMIT_LOCKS',
  'Max pending signals': 'RLIMIT_SIGPENDING',
  'Max msgqueue size': 'RLIMIT_MSGQUEUE',
  'Max nice priority': 'RLIMIT_NICE',
  'Max realtime priority': 'RLIMIT_RTPRIO',
  'Max realtime timeout': 'RLIMIT_RTTIME',
};

/** Parses the text of /proc/PID/limits into hard limits. */
export function parseHardLimits(text: string): HardLimits {
  const out: HardLimits = {};
  for (const line of text.split('\n')) {
    for (const [label, name] of Object.entries(NAMES)) {
      if (!line.startsWith(label)) continue;
      const fields = line.slice(label.length).trim().split(/\s+/);
      const hard = fields[1];
      if (hard === undefined) continue;
      out[name] = hard === 'unlimited' ? Number.POSITIVE_INFINITY : Number(hard);
    }
  }
  return out;
}

/**
 * The hard limits this process runs under. Node has no getrlimit; /proc/self/limits
 * tells the same. A container may not ask for more than these (setrlimit refuses).
 */
export async function readHardLimits(path = '/proc/self/limits'): Promise<HardLimits> {
  return parseHardLimits(await readFile(path, 'utf8'));
}
