import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import { Server as TlsServer } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { errorResponse } from '../api/envelopes.ts';

/**
 * Limits on the API itself (issue 11), so that one client cannot starve the others:
 * a request rate per client (a token bucket per remote address) and connection counts,
 * per client and in all. A client over a limit gets a 429 in the error envelope with
 * Retry-After; nothing of its request runs. Undefined fields mean no limit of that kind.
 */
export interface ApiLimits {
  /** Sustained requests per second one client may send. */
  requestsPerSecond?: number;
  /** Requests one client may send at once before the sustained rate applies. */
  requestBurst?: number;
  /** Open connections one client may hold (WebSockets and waits included). */
  connectionsPerClient?: number;
  /** Open connections of all clients together. */
  connections?: number;
}

/**
 * TCP (token holders, possibly remote): enough for scripts, the CLI and a web UI;
 * far from what one client needs to crowd out the rest on a 2-core host.
 */
export const TCP_API_LIMITS: Required<ApiLimits> = {
  requestsPerSecond: 100,
  requestBurst: 200,
  connectionsPerClient: 64,
  connections: 512,
};

/**
 * The unix socket is root's (mode 0600): root can stop the daemon anyway, and a rate limit
 * would only break its scripts, so there is none; the connection cap keeps descriptors for
 * the guests' own needs (the daemon's RLIMIT_NOFILE is shared with every QMP and agent socket).
 */
export const UNIX_API_LIMITS: ApiLimits = { connections: 1024 };

/** One client's bucket of requests. */
interface Bucket {
  tokens: number;
  at: number;
}

/** Token buckets per client key; `take` spends one request. */
export interface RequestLimiter {
  /** 0 when the request may go; otherwise the seconds after which one will be allowed. */
  take(key: string): number;
  /** How many clients are tracked (bounded). */
  size(): number;
}

/** Most clients tracked at once: buckets that are full again are dropped first. */
const MAX_TRACKED_CLIENTS = 10_000;

export function createRequestLimiter(
  options: { requestsPerSecond: number; burst: number },
  now: () => number = Date.now,
): RequestLimiter {
  const { requestsPerSecond: rate, burst } = options;
  const buckets = new Map<string, Bucket>();
  const refill = (b: Bucket, t: number) => {
    b.tokens = Math.min(burst, b.tokens + ((t - b.at) / 1000) * rate);
    b.at = t;
  };
  return {
    take(key) {
      const t = now();
      if (buckets.size >= MAX_TRACKED_CLIENTS && !buckets.has(key)) {
        for (const [k, b] of buckets) {
          refill(b, t);
          if (b.tokens >= burst) buckets.delete(k);
        }
        // Still full of active clients: the oldest entry goes (it is tracked afresh when it returns).
        if (buckets.size >= MAX_TRACKED_CLIENTS) {
          const oldest = buckets.keys().next().value;
          if (oldest !== undefined) buckets.delete(oldest);
        }
      }
      let b = buckets.get(key);
      if (!b) {
        b = { tokens: burst, at: t };
        buckets.set(key, b);
      }
      refill(b, t);
      if (b.tokens >= 1) {
        b.tokens -= 1;
        return 0;
      }
      return Math.max(1, Math.ceil((1 - b.tokens) / rate));
    },
    size: () => buckets.size,
  };
}

/** The body of a 429, written raw on a connection refused before HTTP parsing. */
function rawTooMany(message: string): string {
  const body = JSON.stringify(errorResponse(message, 429));
  return [
    'HTTP/1.1 429 Too Many Requests',
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Retry-After: 1',
    'Connection: close',
    '',
    body,
  ].join('\r\n');
}

/** Who a connection or request is from: its remote address (`unix` on the unix socket). */
const clientOf = (socket: Socket): string => socket.remoteAddress ?? 'unix';

/** Installs the limits on `app` (before its routes: the hook runs before authentication). */
export function installApiLimits(app: FastifyInstance, limits: ApiLimits): void {
  const server = app.server as Server;
  if (limits.connections !== undefined || limits.connectionsPerClient !== undefined) {
    const perClient = new Map<string, number>();
    let total = 0;
    // Over TLS a refusal is written once the handshake is done: raw HTTP on a socket that is
    // still negotiating would reach the client as a TLS error instead of the 429 that says why.
    const event = server instanceof TlsServer ? 'secureConnection' : 'connection';
    server.on(event, (socket: Socket) => {
      const client = clientOf(socket);
      const mine = perClient.get(client) ?? 0;
      let refusal: string | undefined;
      if (limits.connections !== undefined && total >= limits.connections) {
        refusal = `Too many connections to the daemon (at most ${limits.connections}): retry later`;
      } else if (limits.connectionsPerClient !== undefined && mine >= limits.connectionsPerClient) {
        refusal = `Too many connections from ${client} (at most ${limits.connectionsPerClient} at once): close some or retry later`;
      }
      if (refusal) {
        // Said in HTTP so that the client reads why; the socket is closed once written.
        socket.on('error', () => {});
        socket.end(rawTooMany(refusal));
        setTimeout(() => socket.destroy(), 1000).unref();
        return;
      }
      total++;
      perClient.set(client, mine + 1);
      socket.once('close', () => {
        total--;
        const left = (perClient.get(client) ?? 1) - 1;
        if (left <= 0) perClient.delete(client);
        else perClient.set(client, left);
      });
    });
  }
  if (limits.requestsPerSecond !== undefined) {
    const rate = limits.requestsPerSecond;
    const burst = limits.requestBurst ?? rate;
    const limiter = createRequestLimiter({ requestsPerSecond: rate, burst });
    app.addHook('onRequest', async (request, reply) => {
      const client = clientOf(request.raw.socket);
      const retryAfter = limiter.take(client);
      if (retryAfter === 0) return;
      reply
        .code(429)
        .type('application/json; charset=utf-8')
        .header('retry-after', String(retryAfter))
        .send(
          errorResponse(
            `Too many requests from ${client}: at most ${rate} a second (bursts of ${burst}); retry in ${retryAfter} s`,
            429,
          ),
        );
      return reply;
    });
  }
}
