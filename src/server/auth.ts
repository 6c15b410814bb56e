import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import type { WebSocketTickets } from './websocket-tickets.ts';

/** How callers prove who they are: nobody has to on the root-only unix socket; a bearer token on TCP. */
export type AuthOptions = { type: 'none' } | { type: 'token'; token: string };

/** What the check needs besides the token: the tickets, and which routes are WebSockets. */
export interface AuthCheckOptions {
  tickets: WebSocketTickets;
  /** True for a route pattern (`/1.0/operations/:id/websocket`) that serves a WebSocket. */
  isWebSocketRoute: (routeUrl: string | undefined) => boolean;
}

const digest = (text: string) => createHash('sha256').update(text).digest();

/**
 * Returns a checker of requests. Comparing fixed-length digests in constant time
 * leaks neither the token nor its length. The token is taken from the
 * Authorization header only: never from a URL, which proxies and browsers log.
 * A client that cannot set headers (a browser's WebSocket) asks for a ticket
 * first (`POST /1.0/websocket-tickets`) and passes it as `?ticket=`, which
 * is accepted on WebSocket upgrades of WebSocket routes only, for the path it
 * was issued for, once.
 */
export function createAuthCheck(
  auth: AuthOptions,
  options: AuthCheckOptions,
): (request: FastifyRequest) => boolean {
  if (auth.type === 'none') return () => true;
  if (auth.token.length === 0) throw new Error('The API token must not be empty');
  const expected = digest(auth.token);
  return (request) => {
    const header = request.headers.authorization;
    if (typeof header === 'string' && header.startsWith('Bearer ')) {
      return timingSafeEqual(digest(header.slice('Bearer '.length).trim()), expected);
    }
    if (
      request.method === 'GET' &&
      request.headers.upgrade?.toLowerCase() === 'websocket' &&
      options.isWebSocketRoute(request.routeOptions.url)
    ) {
      const ticket = (request.query as Record<string, unknown> | undefined)?.ticket;
      if (typeof ticket === 'string') return options.tickets.redeem(ticket, request.url.split('?')[0] ?? '');
    }
    return false;
  };
}
