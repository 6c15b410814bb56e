import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { fingerprintOfPeer } from '../api/certificates.ts';
import { ALL_PROJECTS, type Caller, UNIX_CALLER } from '../core/access.ts';
import { ADMIN_TOKEN_NAME, type AuthService } from '../services/auth-service.ts';
import { peerCertificateOf } from './access.ts';
import { FORWARDED_CALLER_HEADER } from './forward.ts';
import type { SessionCredential, WebSessions } from './web-sessions.ts';
import type { WebSocketTickets } from './websocket-tickets.ts';

/**
 * How callers prove who they are: nobody has to on the root-only unix socket (root, the
 * host's admin); on TCP a bearer token (the daemon's own, or one made with `auth token
 * create`) or a trusted client certificate.
 */
export type AuthOptions = { type: 'none' } | { type: 'token'; token: string };

/** What the check needs besides the daemon's token. */
export interface AuthCheckOptions {
  /** Tickets carry the caller who asked for them. */
  tickets: WebSocketTickets<Caller>;
  /** True for a route pattern (`/1.0/operations/:id/websocket`) that serves a WebSocket. */
  isWebSocketRoute: (routeUrl: string | undefined) => boolean;
  /** Issued tokens and trusted certificates; without it only the daemon's token is known. */
  service?: AuthService;
  /** Web UI sessions (cookies); without it a cookie proves nothing. */
  sessions?: WebSessions;
}

const digest = (text: string) => createHash('sha256').update(text).digest();

/**
 * Returns who sent a request, or undefined. Comparing fixed-length digests in constant time
 * leaks neither a token nor its length. A token is taken from the Authorization header only:
 * never from a URL, which proxies and browsers log. A client that cannot set headers (a
 * browser's WebSocket) asks for a ticket first (`POST /1.0/websocket-tickets`) and passes it
 * as `?ticket=`, which is accepted on WebSocket upgrades of WebSocket routes only, for the
 * path it was issued for, once, as the caller who asked for it. A client certificate counts
 * when no Authorization header is sent: a wrong token is refused, whatever came with it.
 */
export function createAuthenticator(
  auth: AuthOptions,
  options: AuthCheckOptions,
): (request: FastifyRequest) => Promise<Caller | undefined> {
  if (auth.type === 'none') return async () => UNIX_CALLER;
  const bearerCheck = createBearerCheck(auth, options.service);
  const service = options.service;
  return async (request) => {
    const header = request.headers.authorization;
    if (typeof header === 'string' && header.startsWith('Bearer ')) {
      return (await bearerCheck(header.slice('Bearer '.length).trim()))?.caller;
    }
    if (header !== undefined) return undefined;
    // A request another member passed on (decision 0034): its caller is in a header that only a
    // member's certificate may set; with any other certificate, or none, it counts for nothing.
    const forwarded = request.headers[FORWARDED_CALLER_HEADER];
    if (typeof forwarded === 'string') {
      const fingerprint = fingerprintOfPeer(peerCertificateOf(request) ?? {});
      if (!fingerprint || !service) return undefined;
      return service.authenticate({ certificateFingerprint: fingerprint, forwardedCaller: forwarded });
    }
    const upgrade = request.headers.upgrade?.toLowerCase() === 'websocket';
    if (request.method === 'GET' && upgrade && options.isWebSocketRoute(request.routeOptions.url)) {
      const ticket = (request.query as Record<string, unknown> | undefined)?.ticket;
      if (typeof ticket === 'string') return options.tickets.redeem(ticket, request.url.split('?')[0] ?? '');
    }
    // A cookie never opens a WebSocket (the UI asks for a ticket, with its CSRF token), and a
    // public route that changes something (signing in) does not look at it.
    const publicChange = request.routeOptions.config?.access === 'public' && request.method !== 'GET';
    if (options.sessions && !upgrade && !publicChange) {
      const caller = await options.sessions.authenticate(request);
      if (caller) return caller;
    }
    const fingerprint = fingerprintOfPeer(peerCertificateOf(request) ?? {});
    if (fingerprint && service) return service.authenticate({ certificateFingerprint: fingerprint });
    return undefined;
  };
}

/**
 * Who a bearer secret stands for (the daemon's own token or an issued one), and what a
 * browser session made from it must still find to last; undefined for an unknown secret.
 */
export function createBearerCheck(
  auth: { type: 'token'; token: string },
  service: AuthService | undefined,
): (bearer: string) => Promise<{ caller: Caller; credential: SessionCredential } | undefined> {
  if (auth.token.length === 0) throw new Error('The API token must not be empty');
  const expected = digest(auth.token);
  return async (bearer) => {
    if (timingSafeEqual(digest(bearer), expected)) {
      return {
        caller: { method: 'token', name: ADMIN_TOKEN_NAME, role: 'admin', projects: [ALL_PROJECTS] },
        credential: { type: 'daemon-token', sha256: expected.toString('hex') },
      };
    }
    const caller = await service?.authenticate({ bearer });
    return caller ? { caller, credential: { type: 'token', name: caller.name } } : undefined;
  };
}
