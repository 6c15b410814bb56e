import type { FastifyRequest } from 'fastify';
import type { Forwarder, MemberForwarding } from './forward.ts';

/** The operation a route is about (`/1.0/operations/:id` and below), or undefined. */
export function operationOf(url: string | undefined, params: unknown): string | undefined {
  if (url === undefined || !(url === '/1.0/operations/:id' || url.startsWith('/1.0/operations/:id/')))
    return undefined;
  const id = (params as { id?: unknown } | undefined)?.id;
  return typeof id === 'string' ? id : undefined;
}

/** How many operations' members are remembered (the last asked about). */
const REMEMBERED = 1000;

/**
 * Which member runs an operation this member does not (decision 0034). Operations live in
 * the memory of the daemon that runs them, as in Incus; a client that got one from any
 * member (a forwarded exec, say) asks about it on the member it talks to, which asks the
 * others once and remembers the answer.
 */
export function createOperationPlaces() {
  const places = new Map<string, string>();
  const remember = (id: string, member: string) => {
    places.delete(id);
    places.set(id, member);
    if (places.size > REMEMBERED) places.delete(places.keys().next().value as string);
  };
  return {
    /** The member that runs `id`, or undefined when none does (the request then answers NotFound here). */
    async locate(
      id: string,
      forwarder: Forwarder,
      request: FastifyRequest,
      forwarding: MemberForwarding,
    ): Promise<string | undefined> {
      const known = places.get(id);
      if (known !== undefined) return known;
      const path = `/1.0/operations/${encodeURIComponent(id)}`;
      const members = await forwarding.others();
      const found = await Promise.any(
        members.map(async (member) => {
          await forwarder.get(request, member, path);
          return member;
        }),
      ).catch(() => undefined);
      if (found !== undefined) remember(id, found);
      return found;
    },
  };
}
