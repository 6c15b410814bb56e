import { randomBytes } from 'node:crypto';

/**
 * Short-lived, single-use tickets that open one WebSocket URL without the token in the
 * URL (issue 11, finding 9). Browsers cannot set an Authorization header on a WebSocket,
 * and a token in a query string ends up in proxies' and browsers' histories; a ticket
 * that is good for one path, once, for a few seconds is worth little to whoever sees it.
 */
export interface WebSocketTickets<Holder = true> {
  /** A new ticket for the WebSocket at `path` (a path without a query), good for whoever asked (`holder`). */
  issue(path: string, holder: Holder): { ticket: string; expiresInSeconds: number };
  /**
   * The holder, once, for a ticket issued for `path` and not yet expired (undefined otherwise);
   * the ticket is gone after any attempt. The socket then opens as its holder, with its role.
   */
  redeem(ticket: string, path: string): Holder | undefined;
}

/** Options of `createWebSocketTickets`. */
export interface WebSocketTicketOptions {
  /** How long a ticket is good for (default 10 s). */
  ttlMs?: number;
  /** Most tickets outstanding; the oldest go first when more are issued (default 1024). */
  maxOutstanding?: number;
  now?: () => number;
}

export function createWebSocketTickets<Holder = true>(
  options: WebSocketTicketOptions = {},
): WebSocketTickets<Holder> {
  const ttlMs = options.ttlMs ?? 10_000;
  const max = options.maxOutstanding ?? 1024;
  const now = options.now ?? Date.now;
  // Insertion order is issue order: the first entries are the oldest.
  const tickets = new Map<string, { path: string; expiresAt: number; holder: Holder }>();

  const sweep = () => {
    const t = now();
    for (const [ticket, entry] of tickets) {
      if (entry.expiresAt > t && tickets.size < max) break;
      tickets.delete(ticket);
    }
  };

  return {
    issue(path, holder) {
      sweep();
      const ticket = randomBytes(32).toString('base64url');
      tickets.set(ticket, { path, expiresAt: now() + ttlMs, holder });
      return { ticket, expiresInSeconds: Math.round(ttlMs / 1000) };
    },
    redeem(ticket, path) {
      const entry = tickets.get(ticket);
      if (!entry) return undefined;
      tickets.delete(ticket);
      return entry.path === path && entry.expiresAt > now() ? entry.holder : undefined;
    },
  };
}
