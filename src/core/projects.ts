import { conflict, invalidArgument } from './errors.ts';
import { assertDnsLabel } from './names.ts';
import { formatBytes, parseBytes } from './sizes.ts';

/** The project every object without one belongs to; it always exists and cannot be deleted. */
export const DEFAULT_PROJECT = 'default';

/**
 * A project (Incus's project), stored at `keys.project(name)`. Guests, networks,
 * volumes, images and operations belong to one; object names stay unique per host
 * (docs/decisions/0021-projects.md). Every create in the project rewrites this record
 * in the same transaction, so that its `modRevision` is the guard two racing creates
 * compare against.
 */
export interface ProjectSpec {
  name: string;
  description: string;
  /** Incus's project keys: `limits.guests`, `limits.memory`, `limits.cpu`, `limits.disk`, `limits.networks`. */
  config: Record<string, string>;
  createdAt: string;
}

/** What a project's objects add up to, counted against its limits. */
export interface ProjectUsage {
  guests: number;
  /** Sum of the guests' `limits.memory`. */
  memoryBytes: number;
  /** Sum of the guests' `limits.cpu`. */
  cpus: number;
  /** Sum of the guests' `limits.disk` and the project's custom volumes' sizes. */
  diskBytes: number;
  networks: number;
}

/** A project as the API shows it, with what it uses against its limits. */
export interface Project extends ProjectSpec {
  usage: ProjectUsage;
  /** `/1.0/guests/NAME`, `/1.0/networks/NAME`… of what it holds. */
  usedBy: string[];
}

/** Objects that belong to a project; records written before projects existed have none. */
export interface ProjectOwned {
  project?: string;
}

/** The project of a stored object: `default` for one recorded before projects existed (no migration step). */
export function projectOfRecord(record: ProjectOwned): string {
  return record.project ?? DEFAULT_PROJECT;
}

export const PROJECT_LIMIT_KEYS = [
  'limits.guests',
  'limits.memory',
  'limits.cpu',
  'limits.disk',
  'limits.networks',
] as const;
export type ProjectLimitKey = (typeof PROJECT_LIMIT_KEYS)[number];

/** The guest keys a project limit sums (a guest must set it while the project has the limit, as in Incus). */
const GUEST_KEY_OF: Partial<Record<ProjectLimitKey, string>> = {
  'limits.memory': 'limits.memory',
  'limits.cpu': 'limits.cpu',
  'limits.disk': 'limits.disk',
};

export function assertProjectName(name: unknown): asserts name is string {
  assertDnsLabel(name, 'project name');
}

const COUNT = /^\d{1,9}$/;

/** Checks a project's config (only the limit keys, plus free-form `user.*`); returns it unchanged. */
export function validateProjectConfig(config: Record<string, string>): Record<string, string> {
  for (const [key, value] of Object.entries(config)) {
    if (key.startsWith('user.') && key.length > 'user.'.length) continue;
    if (!(PROJECT_LIMIT_KEYS as readonly string[]).includes(key)) {
      throw invalidArgument(
        `Unknown project configuration key ${JSON.stringify(key)}: use ${PROJECT_LIMIT_KEYS.join(', ')} or user.*`,
      );
    }
    if (typeof value !== 'string') throw invalidArgument(`The value of ${key} must be a string`);
    switch (key as ProjectLimitKey) {
      case 'limits.guests':
      case 'limits.networks':
        if (!COUNT.test(value))
          throw invalidArgument(`${key}=${JSON.stringify(value)} is not a whole number`);
        break;
      case 'limits.cpu':
        if (!/^\d+(\.\d+)?$/.test(value)) {
          throw invalidArgument(`${key}=${JSON.stringify(value)} is not a number of CPUs like 4 or 1.5`);
        }
        break;
      case 'limits.memory':
      case 'limits.disk':
        parseBytes(value, key);
        break;
    }
  }
  return config;
}

/** The numeric limits a project's config sets; absent keys are unlimited. */
export function limitsOf(config: Record<string, string>): Partial<Record<ProjectLimitKey, number>> {
  const out: Partial<Record<ProjectLimitKey, number>> = {};
  for (const key of PROJECT_LIMIT_KEYS) {
    const v = config[key];
    if (v === undefined) continue;
    out[key] = key === 'limits.memory' || key === 'limits.disk' ? parseBytes(v, key) : Number(v);
  }
  return out;
}

/** What one guest adds to its project's usage (its config is already validated). */
export function guestUsage(config: Record<string, string>): ProjectUsage {
  const memory = config['limits.memory'];
  const disk = config['limits.disk'];
  const cpu = config['limits.cpu'];
  return {
    guests: 1,
    memoryBytes: memory === undefined ? 0 : parseBytes(memory, 'limits.memory'),
    cpus: cpu === undefined ? 0 : Number(cpu),
    diskBytes: disk === undefined ? 0 : parseBytes(disk, 'limits.disk'),
    networks: 0,
  };
}

export const NO_USAGE: ProjectUsage = { guests: 0, memoryBytes: 0, cpus: 0, diskBytes: 0, networks: 0 };

export function addUsage(a: ProjectUsage, b: ProjectUsage): ProjectUsage {
  return {
    guests: a.guests + b.guests,
    memoryBytes: a.memoryBytes + b.memoryBytes,
    // Tenths of CPUs are summed as integers: 0.1 + 0.2 must not come out above 0.3.
    cpus: Math.round((a.cpus + b.cpus) * 1000) / 1000,
    diskBytes: a.diskBytes + b.diskBytes,
    networks: a.networks + b.networks,
  };
}

export function subtractUsage(a: ProjectUsage, b: ProjectUsage): ProjectUsage {
  return addUsage(a, {
    guests: -b.guests,
    memoryBytes: -b.memoryBytes,
    cpus: -b.cpus,
    diskBytes: -b.diskBytes,
    networks: -b.networks,
  });
}

const USAGE_OF: Record<ProjectLimitKey, (u: ProjectUsage) => number> = {
  'limits.guests': (u) => u.guests,
  'limits.memory': (u) => u.memoryBytes,
  'limits.cpu': (u) => u.cpus,
  'limits.disk': (u) => u.diskBytes,
  'limits.networks': (u) => u.networks,
};

const NOUN: Record<ProjectLimitKey, (n: number) => string> = {
  'limits.guests': (n) => `${n} guest${n === 1 ? '' : 's'}`,
  'limits.memory': (n) => `${formatBytes(n)} of memory`,
  'limits.cpu': (n) => `${n} CPU${n === 1 ? '' : 's'}`,
  'limits.disk': (n) => `${formatBytes(n)} of disk`,
  'limits.networks': (n) => `${n} network${n === 1 ? '' : 's'}`,
};

/**
 * Throws Conflict (409) when `after` (the project's usage once the change is made) goes over
 * a limit of `config` that the change raises; a change that lowers or keeps a usage already
 * over its limit (one made before the limit) passes, so that cleaning up is never refused.
 */
export function assertWithinLimits(
  project: string,
  config: Record<string, string>,
  change: { before: ProjectUsage; after: ProjectUsage },
): void {
  const limits = limitsOf(config);
  for (const key of PROJECT_LIMIT_KEYS) {
    const limit = limits[key];
    if (limit === undefined) continue;
    const was = USAGE_OF[key](change.before);
    const will = USAGE_OF[key](change.after);
    if (will > limit && will > was) {
      throw conflict(
        `Project ${project} would use ${NOUN[key](will)} of ${key}=${config[key]}: delete something in it or raise the limit (trivisor project set ${project} ${key}=...)`,
      );
    }
  }
}

/**
 * A guest in a project with `limits.memory`, `limits.cpu` or `limits.disk` must set that key
 * itself (as Incus requires): an unlimited guest could not be counted against the project.
 */
export function assertGuestCountable(
  project: string,
  projectConfig: Record<string, string>,
  guestConfig: Record<string, string>,
): void {
  for (const [projectKey, guestKey] of Object.entries(GUEST_KEY_OF)) {
    if (projectConfig[projectKey] !== undefined && guestConfig[guestKey] === undefined) {
      throw invalidArgument(
        `Project ${project} has ${projectKey}=${projectConfig[projectKey]}: set ${guestKey} on the guest too`,
      );
    }
  }
}

/** Throws Conflict when a new limit would be below what the project already uses (Incus refuses that too). */
export function assertLimitsCover(
  project: string,
  config: Record<string, string>,
  usage: ProjectUsage,
): void {
  const limits = limitsOf(config);
  for (const key of PROJECT_LIMIT_KEYS) {
    const limit = limits[key];
    if (limit === undefined) continue;
    const used = USAGE_OF[key](usage);
    if (used > limit) {
      throw conflict(
        `Project ${project} already uses ${NOUN[key](used)}, more than ${key}=${config[key]}: delete something in it first`,
      );
    }
  }
}
