import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import { notFound } from '../core/errors.ts';
import { isForwarded } from './forward.ts';
import type { RouteContext } from './route-context.ts';

/**
 * `?target=MEMBER` (Incus's `target`). What it does differs by route (a list's filter, the member a
 * request runs on, whose directory is read), so each route describes it in its own words.
 */
export function targetQuery(description: string) {
  return { target: Type.Optional(Type.String({ description, minLength: 1 })) };
}

/** NotFound in one line unless `target` names a member of the cluster (or this host, when it is not one). */
export async function assertTarget(ctx: RouteContext, target: string | undefined): Promise<void> {
  if (target === undefined) return;
  const cluster = ctx.services.cluster;
  const info = await cluster?.info();
  if (!cluster || !info) return;
  if (info.enabled) await cluster.get(target);
  else if (info.host !== undefined && target !== info.host)
    throw notFound(`Member ${target} not found: this host (${info.host}) is not in a cluster`);
}

/**
 * Fills in what only another member knows about its own objects in a list (live usage, NIC
 * counters: decision 0034): each member that holds some of them is asked for its own, once,
 * side by side. A member that does not answer leaves its objects as the store has them.
 */
export async function withMembersOwnView<T extends { name: string; location?: string }>(
  ctx: RouteContext,
  request: FastifyRequest,
  items: T[],
  listPath: (member: string) => string,
): Promise<T[]> {
  const forward = ctx.forward;
  if (!forward || isForwarded(request)) return items;
  const here = forward.here;
  const members = [...new Set(items.flatMap((i) => (i.location && i.location !== here ? [i.location] : [])))];
  if (members.length === 0) return items;
  const answers = await Promise.all(
    members.map((m) => forward.get<T[]>(request, m, listPath(m)).catch(() => [] as T[])),
  );
  const theirs = new Map<string, T>();
  for (const [i, list] of answers.entries()) {
    for (const item of list) if (item.location === members[i]) theirs.set(item.name, item);
  }
  return items.map((i) => theirs.get(i.name) ?? i);
}
