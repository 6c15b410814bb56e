/**
 * Who may call what (issue 11; docs/decisions/0022-tls-roles-audit.md). Pure: the server's
 * one access hook asks `decideAccess` for every request, with the route's declared class.
 */

/** A role a token or certificate holds in the projects it is bound to, weakest first. */
export type Role = 'viewer' | 'operator' | 'admin';

export const ROLES: readonly Role[] = ['viewer', 'operator', 'admin'];

/** Bound to every project, the host included: an `admin` bound to it is the host's (and cluster's) admin. */
export const ALL_PROJECTS = '*';

/**
 * What a route does, declared beside it (`config: { access }`); the access hook refuses what
 * the caller's role and projects do not cover.
 * - `read`: reads objects of the request's project (`?project=`): any role in that project.
 * - `operate`: changes guests, networks, volumes, images (or reads what is inside a guest:
 *   files, console, backups) in the request's project: operator or admin in it.
 * - `admin`: administers the request's project (its audit log): admin in it.
 * - `host-read`: reads the host's own objects (pools, metrics): any role bound to `*`.
 * - `host-admin`: changes the host, pools, projects, quotas or auth: admin bound to `*`.
 * - `authenticated`: any caller who proved who it is (a WebSocket ticket for itself).
 * - `public`: anyone, even unauthenticated (`GET /1.0`, which then says only that).
 */
export type ActionClass =
  | 'read'
  | 'operate'
  | 'admin'
  | 'host-read'
  | 'host-admin'
  | 'authenticated'
  | 'public';

export const ACTION_CLASSES: readonly ActionClass[] = [
  'read',
  'operate',
  'admin',
  'host-read',
  'host-admin',
  'authenticated',
  'public',
];

/** How a caller proved who it is (`session`: a web UI session cookie, made from a token or a login link). */
export type AuthMethod = 'unix' | 'token' | 'certificate' | 'session';

/** An authenticated caller: who it is and what it is bound to. */
export interface Caller {
  method: AuthMethod;
  /** The token's name, the certificate's name, or `root` on the unix socket. */
  name: string;
  /** SHA-256 of a client certificate (hex), when that is how the caller authenticated. */
  fingerprint?: string;
  role: Role;
  /** Projects the role holds in; `*` for every one and the host. */
  projects: string[];
}

/** What the unix socket's caller is: root, the host's admin (the socket is mode 0600). */
export const UNIX_CALLER: Caller = { method: 'unix', name: 'root', role: 'admin', projects: [ALL_PROJECTS] };

/** Is `role` at least `needed`? */
export function roleCovers(role: Role, needed: Role): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

const NEEDED_ROLE: Partial<Record<ActionClass, Role>> = {
  read: 'viewer',
  operate: 'operator',
  admin: 'admin',
  'host-read': 'viewer',
  'host-admin': 'admin',
};

const ARTICLE: Record<Role, string> = { viewer: 'a viewer', operator: 'an operator', admin: 'an admin' };

/** The caller as one phrase: `token ci`, `certificate laptop (3fa2…)`, `root on the unix socket`. */
export function describeCaller(caller: Caller): string {
  if (caller.method === 'unix') return `${caller.name} on the unix socket`;
  if (caller.method === 'certificate')
    return `certificate ${caller.name} (${caller.fingerprint?.slice(0, 12)}…)`;
  if (caller.method === 'session') return `web session of ${caller.name}`;
  return `token ${caller.name}`;
}

/** Where the caller holds its role, e.g. `in project p1` or `in projects p1, p2` or `in every project`. */
function whereHeld(caller: Caller): string {
  if (caller.projects.includes(ALL_PROJECTS)) return 'in every project';
  return `in project${caller.projects.length === 1 ? '' : 's'} ${caller.projects.join(', ')}`;
}

/** The answer to one request: allowed, or why not in one line that says what would be needed. */
export type AccessDecision = { allowed: true } | { allowed: false; message: string };

/**
 * Whether `caller` may do `what` (`METHOD /route`, for the message) of class `access` in
 * `project` (`*` for a request over every project, `?all-projects=true`). A caller with no
 * identity gets `public` only; that refusal is the transport's 401, not decided here.
 */
export function decideAccess(
  caller: Caller,
  access: ActionClass,
  options: { project: string; what: string },
): AccessDecision {
  if (access === 'public' || access === 'authenticated') return { allowed: true };
  const needed = NEEDED_ROLE[access];
  if (!needed)
    return { allowed: false, message: `Permission denied: ${options.what} declares no access class` };
  const everywhere = caller.projects.includes(ALL_PROJECTS);
  const hostWide = access === 'host-read' || access === 'host-admin' || options.project === ALL_PROJECTS;
  const bound = hostWide ? everywhere : everywhere || caller.projects.includes(options.project);
  if (bound && roleCovers(caller.role, needed)) return { allowed: true };
  const neededWhere = hostWide ? 'bound to all projects (*)' : `in project ${options.project}`;
  return {
    allowed: false,
    message: `Permission denied: ${describeCaller(caller)} is ${ARTICLE[caller.role]} ${whereHeld(caller)}; ${options.what} needs ${ARTICLE[needed]} ${neededWhere}`,
  };
}
