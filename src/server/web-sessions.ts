import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { type Caller, describeCaller } from '../core/access.ts';
import { permissionDenied } from '../core/errors.ts';
import { authKeys } from '../services/auth-service.ts';
import type { KvStore } from '../store/kv.ts';

/**
 * Browser sessions of the web UI (docs/decisions/0026-web-ui.md): a browser trades a token, or
 * a one-time login link a host admin made (`trivisor admin web-link`), for an HttpOnly cookie.
 * A session is one more way to prove who the caller is, with the role and projects of what it
 * was made from; the access hook then decides as for a token. Sessions and links live in the
 * store (only their SHA-256), so that they survive a daemon restart and both listeners (the
 * unix socket makes links, HTTPS redeems them) see the same ones.
 */
export interface WebSessions {
  /** Opens a session for `caller`, who proved itself with `credential`; the cookie's value is in the answer only. */
  open(caller: Caller, credential: SessionCredential): Promise<OpenedSession>;
  /**
   * The caller a request's session cookie stands for, or undefined (no cookie, an unknown or
   * expired session, or the token it was made from revoked). Throws PermissionDenied for a
   * change (any method but GET, HEAD, OPTIONS) without the session's CSRF token in
   * `X-Trivisor-CSRF`, or from another site's page (`Origin`).
   */
  authenticate(request: FastifyRequest): Promise<Caller | undefined>;
  /** The session of a request's cookie, as the browser may see it (never the cookie's value). */
  describe(request: FastifyRequest): Promise<SessionInfo | undefined>;
  /** Ends the session of a request's cookie (nothing when there is none). */
  close(request: FastifyRequest): Promise<void>;
  /** A one-time login code for `caller` (a host admin), good once, for `linkTtlMs`. */
  createLink(caller: Caller): Promise<{ code: string; expiresInSeconds: number }>;
  /** The caller a login code was made for, once; undefined for an unknown, used or expired code. */
  redeemLink(code: string): Promise<Caller | undefined>;
}

/** What a session was made from: it lasts only while that still holds. */
export type SessionCredential =
  /** An issued token: the session ends when it is revoked. */
  | { type: 'token'; name: string }
  /** The daemon's own token: the session ends when the token file is replaced. */
  | { type: 'daemon-token'; sha256: string }
  /** A login link made by a host admin. */
  | { type: 'link'; by: string };

/** A session as the browser learns it. */
export interface SessionInfo {
  expiresAt: string;
  /** Sent back as `X-Trivisor-CSRF` on every change. */
  csrfToken: string;
  user: { name: string; method: string; role: string; projects: string[] };
}

export interface OpenedSession extends SessionInfo {
  /** The cookie's value (256 random bits). */
  secret: string;
  maxAgeSeconds: number;
}

interface SessionRecord {
  caller: Caller;
  credential: SessionCredential;
  csrfToken: string;
  createdAt: string;
  expiresAt: string;
}

interface LinkRecord {
  caller: Caller;
  by: string;
  expiresAt: string;
}

/** `__Host-`: the browser keeps it only when Secure, for `/`, and for this host alone (no Domain). */
export const SESSION_COOKIE = '__Host-trivisor_session';
export const CSRF_HEADER = 'x-trivisor-csrf';

export const webSessionKeys = {
  sessions: '/trivisor/web/sessions/',
  session: (digest: string): string => `/trivisor/web/sessions/${digest}`,
  links: '/trivisor/web/links/',
  link: (digest: string): string => `/trivisor/web/links/${digest}`,
} as const;

/** Options of `createWebSessions`. */
export interface WebSessionOptions {
  store: KvStore;
  /** How long a session lasts (default 12 h; TRIVISOR_WEB_SESSION_TTL seconds in the daemon). */
  sessionTtlMs?: number;
  /** How long a login link is good for (default 10 min). */
  linkTtlMs?: number;
  /** SHA-256 (hex) of the daemon's own token now: sessions made from an older one end. */
  daemonTokenSha256?: () => string | undefined;
  now?: () => number;
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
/** Base64url of 32 random bytes: anything else is not one of ours, and is not looked up. */
const SECRET = /^[A-Za-z0-9_-]{43}$/;

/** The value of cookie `name` in a Cookie header, or undefined. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

const equal = (a: string, b: string): boolean =>
  a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

export function createWebSessions(options: WebSessionOptions): WebSessions {
  const { store } = options;
  const now = options.now ?? Date.now;
  const sessionTtlMs = options.sessionTtlMs ?? 12 * 3600_000;
  const linkTtlMs = options.linkTtlMs ?? 10 * 60_000;

  const load = async <T>(key: string): Promise<T | undefined> => {
    const kv = await store.get(key);
    return kv ? (JSON.parse(kv.value) as T) : undefined;
  };

  const recordOf = async (
    request: FastifyRequest,
  ): Promise<{ key: string; record: SessionRecord } | undefined> => {
    const secret = cookieValue(request.headers.cookie, SESSION_COOKIE);
    if (!secret || !SECRET.test(secret)) return undefined;
    const key = webSessionKeys.session(sha256(secret));
    const record = await load<SessionRecord>(key);
    if (!record) return undefined;
    if (Date.parse(record.expiresAt) <= now() || !(await credentialHolds(record.credential))) {
      await store.delete(key).catch(() => {});
      return undefined;
    }
    return { key, record };
  };

  const credentialHolds = async (credential: SessionCredential): Promise<boolean> => {
    switch (credential.type) {
      case 'token':
        return (await store.get(authKeys.token(credential.name))) !== undefined;
      case 'daemon-token': {
        const current = options.daemonTokenSha256?.();
        return current !== undefined && equal(current, credential.sha256);
      }
      case 'link':
        return true;
    }
  };

  const infoOf = (record: SessionRecord): SessionInfo => ({
    expiresAt: record.expiresAt,
    csrfToken: record.csrfToken,
    user: {
      name: record.caller.name,
      method: record.credential.type === 'link' ? `login link (${record.credential.by})` : 'token',
      role: record.caller.role,
      projects: record.caller.projects,
    },
  });

  const sweep = async () => {
    const { kvs } = await store.list(webSessionKeys.sessions);
    for (const kv of kvs) {
      const r = JSON.parse(kv.value) as SessionRecord;
      if (Date.parse(r.expiresAt) <= now()) await store.delete(kv.key).catch(() => {});
    }
    const links = await store.list(webSessionKeys.links);
    for (const kv of links.kvs) {
      const r = JSON.parse(kv.value) as LinkRecord;
      if (Date.parse(r.expiresAt) <= now()) await store.delete(kv.key).catch(() => {});
    }
  };

  return {
    async open(caller, credential) {
      await sweep();
      const secret = randomBytes(32).toString('base64url');
      const record: SessionRecord = {
        // The session's caller says how it got in: the audit log shows a session of token X.
        caller: { ...caller, method: 'session' },
        credential,
        csrfToken: randomBytes(32).toString('base64url'),
        createdAt: new Date(now()).toISOString(),
        expiresAt: new Date(now() + sessionTtlMs).toISOString(),
      };
      await store.put(webSessionKeys.session(sha256(secret)), JSON.stringify(record));
      return { ...infoOf(record), secret, maxAgeSeconds: Math.floor(sessionTtlMs / 1000) };
    },

    async authenticate(request) {
      const found = await recordOf(request);
      if (!found) return undefined;
      const { record } = found;
      if (!SAFE_METHODS.has(request.method)) {
        // SameSite=Strict keeps other sites' requests from carrying the cookie at all; the
        // header is the second lock, for browsers or proxies that do not honour it.
        const sent = request.headers[CSRF_HEADER];
        if (typeof sent !== 'string' || !equal(sent, record.csrfToken)) {
          throw permissionDenied(
            `Permission denied: a change made with a browser session needs its CSRF token in the ${CSRF_HEADER} header (the web UI sends it; reload the page)`,
          );
        }
      }
      const origin = request.headers.origin;
      if (typeof origin === 'string' && origin !== 'null') {
        let host: string | undefined;
        try {
          host = new URL(origin).host;
        } catch {
          host = undefined;
        }
        if (host !== request.headers.host) {
          throw permissionDenied(
            `Permission denied: a browser session is good on this daemon's own pages only, not from ${origin.slice(0, 100)}`,
          );
        }
      }
      return record.caller;
    },

    async describe(request) {
      const found = await recordOf(request);
      return found ? infoOf(found.record) : undefined;
    },

    async close(request) {
      const found = await recordOf(request);
      if (found) await store.delete(found.key);
    },

    async createLink(caller) {
      await sweep();
      const code = randomBytes(32).toString('base64url');
      const record: LinkRecord = {
        caller,
        by: describeCaller(caller),
        expiresAt: new Date(now() + linkTtlMs).toISOString(),
      };
      await store.put(webSessionKeys.link(sha256(code)), JSON.stringify(record));
      return { code, expiresInSeconds: Math.round(linkTtlMs / 1000) };
    },

    async redeemLink(code) {
      if (!SECRET.test(code)) return undefined;
      const key = webSessionKeys.link(sha256(code));
      const kv = await store.get(key);
      if (!kv) return undefined;
      // Once: of two browsers racing with the same link, the delete of one wins.
      const { succeeded } = await store.txn({
        compare: [{ key, target: 'modRevision', op: '=', value: kv.modRevision }],
        success: [{ type: 'delete', key }],
      });
      if (!succeeded) return undefined;
      const record = JSON.parse(kv.value) as LinkRecord;
      if (Date.parse(record.expiresAt) <= now()) return undefined;
      return record.caller;
    },
  };
}
