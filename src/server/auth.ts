import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';

/** How callers prove who they are: nobody has to on the root-only unix socket; a bearer token on TCP. */
export type AuthOptions = { type: 'none' } | { type: 'token'; token: string };

const digest = (text: string) => createHash('sha256').update(text).digest();

/**
 * Returns a checker of requests. Comparing fixed-length digests in constant time
 * leaks neither the token nor its length.
 */
export function createAuthCheck(auth: AuthOptions): (request: FastifyRequest) => boolean {
  if (auth.type === 'none') return () => true;
  if (auth.token.length === 0) throw new Error('The API token must not be empty');
  const expected = digest(auth.token);
  return (request) => {
    let given: string | undefined;
    const header = request.headers.authorization;
    if (typeof header === 'string' && header.startsWith('Bearer ')) {
      given = header.slice('Bearer '.length).trim();
    } else if (request.headers.upgrade?.toLowerCase() === 'websocket') {
      // Browsers cannot set headers on WebSockets: accept ?token= there only.
      const token = (request.query as Record<string, unknown> | undefined)?.token;
      if (typeof token === 'string') given = token;
    }
    return given !== undefined && timingSafeEqual(digest(given), expected);
  };
}
