// What the staged density bench reads of the host to name the limit a failed start hit: each
// resource's use beside its kernel limit, and the error text's own words.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** One host resource that a ct guest uses, its use now and the kernel's limit on it. */
export interface ResourceUse {
  resource: string;
  used: number;
  limit: number;
  /** The sysctl (or file) that sets the limit. */
  setting: string;
}

function num(file: string): number {
  try {
    return Number(readFileSync(file, 'utf8').trim().split(/\s+/)[0]);
  } catch {
    return Number.NaN;
  }
}

function countInotifyInstances(): number {
  let n = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) === 'anon_inode:inotify') n++;
      } catch {}
    }
  }
  return n;
}

/**
 * Reads the host's use of every resource a ct guest holds. Cheap enough to run once per stage
 * and once at a failure (the inotify count walks every process's descriptors: `full` only).
 */
export function readResourceUse(options: { full?: boolean } = {}): ResourceUse[] {
  const fileNr = readFileSync('/proc/sys/fs/file-nr', 'utf8').trim().split(/\s+/).map(Number);
  const pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).length;
  // Threads take pids too: /proc/loadavg's fourth field is running/total scheduling entities.
  const threads = Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[3]?.split('/')[1]);
  const rootKeys = /^\s*0:\s+\d+\s+\d+\/\d+\s+(\d+)\/(\d+)/m.exec(readFileSync('/proc/key-users', 'utf8'));
  const cgroups = readFileSync('/proc/cgroups', 'utf8')
    .split('\n')
    .filter((l) => /^pids\s/.test(l))
    .map((l) => Number(l.split(/\s+/)[2]))[0];
  const uses: ResourceUse[] = [
    { resource: 'processes', used: pids, limit: Number.POSITIVE_INFINITY, setting: 'kernel.pid_max' },
    { resource: 'pids', used: threads, limit: num('/proc/sys/kernel/pid_max'), setting: 'kernel.pid_max' },
    {
      resource: 'threads',
      used: threads,
      limit: num('/proc/sys/kernel/threads-max'),
      setting: 'kernel.threads-max',
    },
    {
      resource: 'ptys',
      used: num('/proc/sys/kernel/pty/nr'),
      limit: num('/proc/sys/kernel/pty/max'),
      setting: 'kernel.pty.max',
    },
    {
      resource: 'file descriptors',
      used: fileNr[0] ?? Number.NaN,
      limit: fileNr[2] ?? Number.NaN,
      setting: 'fs.file-max',
    },
    {
      resource: 'mounts (host namespace)',
      used: readFileSync('/proc/self/mountinfo', 'utf8').split('\n').length - 1,
      limit: num('/proc/sys/fs/mount-max'),
      setting: 'fs.mount-max',
    },
    {
      resource: 'keys (root)',
      used: Number(rootKeys?.[1] ?? Number.NaN),
      limit: Number(rootKeys?.[2] ?? Number.NaN),
      setting: 'kernel.keys.root_maxkeys',
    },
    {
      resource: 'cgroups (pids hierarchy)',
      used: cgroups ?? Number.NaN,
      limit: 65_535,
      setting: 'cgroup v1 (no limit but memory)',
    },
    {
      resource: 'aio contexts',
      used: num('/proc/sys/fs/aio-nr'),
      limit: num('/proc/sys/fs/aio-max-nr'),
      setting: 'fs.aio-max-nr',
    },
  ];
  if (options.full) {
    uses.push({
      resource: 'inotify instances',
      used: countInotifyInstances(),
      limit: num('/proc/sys/fs/inotify/max_user_instances'),
      setting: 'fs.inotify.max_user_instances',
    });
  }
  return uses;
}

/** Words in an error that name the resource it ran out of (runc, the kernel and Node say these). */
const ERROR_WORDS: Array<[RegExp, string]> = [
  [/inotify/i, 'inotify instances'],
  [/\/dev\/pts|ptmx|pty/i, 'ptys'],
  [/too many open files|EMFILE|ENFILE/i, 'file descriptors'],
  [/disk quota exceeded|EDQUOT|keyring|keyctl/i, 'keys (root)'],
  [/resource temporarily unavailable|EAGAIN|fork|clone/i, 'pids'],
  [/no space left on device|ENOSPC/i, 'mounts (host namespace)'],
  [/cannot allocate memory|ENOMEM|out of memory/i, 'memory'],
];

/**
 * Names the limit a failed start hit: the resource the error names (when one is also near its
 * limit, or when none is), else the resource nearest its limit, else "unknown". The error is
 * always quoted beside it: the name is a reading, the error is the evidence.
 */
export function nameLimit(
  error: string,
  uses: ResourceUse[],
): { resource: string; setting: string | null; used: number | null; limit: number | null; error: string } {
  const near = uses
    .filter((u) => Number.isFinite(u.used) && Number.isFinite(u.limit) && u.limit > 0)
    .map((u) => ({ u, ratio: u.used / u.limit }))
    .sort((a, b) => b.ratio - a.ratio);
  const byWords = ERROR_WORDS.find(([re]) => re.test(error))?.[1];
  const full = near.find((x) => x.ratio >= 0.9)?.u;
  const named = full ?? (byWords ? uses.find((u) => u.resource === byWords) : undefined);
  if (named) {
    return { resource: named.resource, setting: named.setting, used: named.used, limit: named.limit, error };
  }
  return { resource: byWords ?? 'unknown', setting: null, used: null, limit: null, error };
}
