import type { FastifyRequest } from 'fastify';
import { isForwarded } from './forward.ts';
import { projectOf, type RouteContext } from './route-context.ts';

/**
 * Which routes are answered on their guest's owner (decision 0028): every route under
 * `/1.0/guests/{name}` but the desired-state writes (state, config, delete), which any
 * member records and the owner's controller converges. The rest (exec, console, files,
 * display, snapshots and their restore (`PUT` of the guest), backups and their files,
 * metrics, a move, and the guest itself with its live usage) needs the owner's host.
 */
const DESIRED_STATE_WRITES = new Set([
  'PUT /1.0/guests/:name/state',
  'PATCH /1.0/guests/:name',
  'DELETE /1.0/guests/:name',
]);

/** The guest a request must run beside, or undefined when any member may answer it. */
export function ownerScopedGuest(
  method: string,
  url: string | undefined,
  params: unknown,
): string | undefined {
  if (url === undefined || !(url === '/1.0/guests/:name' || url.startsWith('/1.0/guests/:name/')))
    return undefined;
  if (DESIRED_STATE_WRITES.has(`${method} ${url}`)) return undefined;
  const name = (params as { name?: unknown } | undefined)?.name;
  return typeof name === 'string' ? name : undefined;
}

/**
 * Runs a request whose guest is named in its body (a NIC or volume attach or detach: the
 * live plug needs the guest's host) on that guest's owner; here when no routing is set up.
 * On a cluster member the request goes to the owner with its parsed body, and the owner's
 * sync answer is this one's (decision 0034).
 */
export async function onGuestOwner<T>(
  ctx: RouteContext,
  request: FastifyRequest,
  guest: string,
  work: () => Promise<T>,
): Promise<T> {
  const owner = ctx.services.owner;
  if (!owner) return work();
  const project = projectOf(request);
  const place = await owner.placeOf(guest, { project });
  if (place.here) return work();
  if (ctx.forward && !isForwarded(request)) return ctx.forward.json<T>(request, place.member);
  return owner.onOwner(guest, work, { project });
}

/**
 * The pool (and volume) a route changes or reads live, when its member must answer it
 * (decision 0034): a pool's info (its space), delete and update; a volume's create, info,
 * change and delete. Attach and detach go to the guest's member instead (onGuestOwner); lists
 * are the store's.
 */
export function storageScoped(
  method: string,
  url: string | undefined,
  params: unknown,
): { pool: string; volume?: string } | undefined {
  const p = (params ?? {}) as { name?: unknown; pool?: unknown; volume?: unknown };
  if (url === '/1.0/storage-pools/:name' && typeof p.name === 'string') return { pool: p.name };
  if (url === '/1.0/storage-pools/:pool/volumes/custom' && method === 'POST' && typeof p.pool === 'string')
    return { pool: p.pool };
  if (url === '/1.0/storage-pools/:pool/volumes/custom/:volume' && typeof p.pool === 'string')
    return typeof p.volume === 'string' ? { pool: p.pool, volume: p.volume } : { pool: p.pool };
  return undefined;
}

/**
 * Routes answered by the member `?target=` names, passed on before their body is read
 * (decisions 0034, 0077): an uploaded import and a new pool are made there, and the backup
 * directory is each member's own (its listing, one archive, an import from it). Without
 * `target`, or naming this member, they are answered here.
 */
const TARGET_ROUTES = new Set([
  'POST /1.0/backups',
  'POST /1.0/storage-pools',
  'GET /1.0/backups',
  'GET /1.0/backups/:guest/:archive',
  'POST /1.0/backups/import',
]);

/** Whether the request goes to the member its `?target=` names. */
export function targetScoped(method: string, url: string | undefined): boolean {
  return TARGET_ROUTES.has(`${method} ${url}`);
}
