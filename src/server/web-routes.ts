import { readdir } from 'node:fs/promises';
import path from 'node:path';
import fastifyStatic from '@fastify/static';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errorResponse, syncResponse } from '../api/envelopes.ts';
import { ErrorEnvelopeSchema, SyncEnvelope } from '../api/schemas.ts';
import { SessionSchema, type SignInBody, SignInBodySchema, WebLinkSchema } from '../api/web-schemas.ts';
import { ensureWebBuild, webDistOf } from '../build/web-bundle.ts';
import { invalidArgument, notFound, unauthenticated, unavailable } from '../core/errors.ts';
import type { AuthService } from '../services/auth-service.ts';
import { type AuthOptions, createBearerCheck } from './auth.ts';
import { SESSION_COOKIE, type WebSessions } from './web-sessions.ts';

/** What the web UI needs from buildServer (docs/decisions/0026-web-ui.md). */
export interface WebOptions {
  /** Browser sessions and login links, shared by every listener of the daemon. */
  sessions: WebSessions;
  /** Serve the UI's pages from this checkout's `web/` (HTTPS only: a browser reaches nothing else). */
  uiRoot?: string;
}

const errors = { '4xx': ErrorEnvelopeSchema, '5xx': ErrorEnvelopeSchema };

const cookieHeader = (value: string, maxAgeSeconds: number) =>
  `${SESSION_COOKIE}=${value}; Max-Age=${maxAgeSeconds}; Path=/; Secure; HttpOnly; SameSite=Strict`;

/**
 * `/1.0/auth/session` (sign in with a token or a login link's code, who am I, sign out) and
 * `/1.0/auth/web-links` (a host admin's one-time login link).
 */
export function registerWebSessionRoutes(
  app: FastifyInstance,
  options: { web: WebOptions | undefined; auth: AuthOptions; service: AuthService | undefined },
): void {
  const sessions = (): WebSessions => {
    if (!options.web) throw unavailable('This daemon keeps no web sessions');
    return options.web.sessions;
  };
  const bearerCheck = options.auth.type === 'token' ? createBearerCheck(options.auth, options.service) : null;

  app.post<{ Body: SignInBody }>(
    '/1.0/auth/session',
    {
      config: { access: 'public' },
      schema: {
        summary: 'Sign a browser in: a token or a login link’s code for a session cookie',
        description:
          'Answers the session and sets an HttpOnly, Secure, SameSite=Strict cookie. Every change made with the cookie must carry the session’s `csrfToken` as `X-Trivisor-CSRF`. HTTPS listener only.',
        body: SignInBodySchema,
        response: { 200: SyncEnvelope(SessionSchema), ...errors },
      },
    },
    async (request, reply) => {
      const { token, link } = request.body;
      if ((token === undefined) === (link === undefined)) {
        throw invalidArgument('Give either "token" or "link", not both and not neither');
      }
      if (!bearerCheck)
        throw invalidArgument('Sign in over the HTTPS listener: the unix socket needs no session');
      let opened: Awaited<ReturnType<WebSessions['open']>>;
      if (token !== undefined) {
        const found = await bearerCheck(token.trim());
        if (!found)
          throw unauthenticated('That token is not valid here: check it, or ask an admin for a new one');
        opened = await sessions().open(found.caller, found.credential);
      } else {
        const caller = await sessions().redeemLink(link!.trim());
        if (!caller) {
          throw unauthenticated(
            'That login link is not valid: it was used already or expired. Make a new one with trivisor admin web-link',
          );
        }
        opened = await sessions().open(caller, { type: 'link', by: caller.name });
      }
      const { secret, maxAgeSeconds, ...info } = opened;
      reply.header('set-cookie', cookieHeader(secret, maxAgeSeconds));
      reply.header('cache-control', 'no-store');
      return syncResponse(info);
    },
  );

  app.get(
    '/1.0/auth/session',
    {
      config: { access: 'authenticated' },
      schema: {
        summary: 'The browser session this request came with (its expiry and CSRF token)',
        response: { 200: SyncEnvelope(SessionSchema), ...errors },
      },
    },
    async (request, reply) => {
      const info = await sessions().describe(request);
      if (!info)
        throw notFound('This request came without a web session: sign in through POST /1.0/auth/session');
      reply.header('cache-control', 'no-store');
      return syncResponse(info);
    },
  );

  app.delete(
    '/1.0/auth/session',
    {
      config: { access: 'authenticated' },
      schema: {
        summary: 'Sign the browser out: its session ends and the cookie is cleared',
        response: { 200: SyncEnvelope(Type.Object({})), ...errors },
      },
    },
    async (request, reply) => {
      await sessions().close(request);
      reply.header('set-cookie', cookieHeader('', 0));
      return syncResponse({});
    },
  );

  app.post(
    '/1.0/auth/web-links',
    {
      config: { access: 'host-admin' },
      schema: {
        summary: 'A one-time login link for the web UI, as the host admin who asks',
        description:
          'Open `path` on the HTTPS listener (trivisor admin web-link prints the whole URL). The code is good once, for 10 minutes; the session it opens has the asker’s role.',
        response: { 200: SyncEnvelope(WebLinkSchema), ...errors },
      },
    },
    async (request) => {
      const { code, expiresInSeconds } = await sessions().createLink(request.caller!);
      return syncResponse({ code, expiresInSeconds, path: `/login#code=${code}` });
    },
  );
}

/**
 * The UI's pages: `/assets/*` (content-hashed, cached for good) and every other GET outside
 * `/1.0/` answered with the app's page, whose script routes by the URL. The page is served
 * from a build made from the sources as they are now: a stale one is rebuilt first.
 */
export async function registerWebUi(app: FastifyInstance, root: string): Promise<void> {
  const dist = webDistOf(root);
  await app.register(fastifyStatic, { root: dist, serve: false, decorateReply: true });

  const page = async (request: FastifyRequest, reply: FastifyReply) => {
    const url = request.url.split('?')[0] ?? '';
    if (url === '/1.0' || url.startsWith('/1.0/')) {
      // As before the UI existed: a stranger learns nothing but 401, a caller that no such route exists.
      if (!request.caller) {
        return reply
          .code(401)
          .header('www-authenticate', 'Bearer')
          .type('application/json; charset=utf-8')
          .send(errorResponse('Not authorized: send a token as "Authorization: Bearer <token>"', 401));
      }
      return reply
        .code(404)
        .type('application/json; charset=utf-8')
        .send(errorResponse(`No such endpoint: ${request.method} ${url}`, 404));
    }
    let manifest: Awaited<ReturnType<typeof ensureWebBuild>>;
    try {
      manifest = await ensureWebBuild(root);
    } catch (e) {
      request.log.error({ err: e }, 'cannot build the web UI');
      return reply
        .code(503)
        .type('text/plain; charset=utf-8')
        .send('The web UI could not be built from its sources: the daemon’s log says why.\n');
    }
    return reply
      .header('cache-control', 'no-cache')
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('x-frame-options', 'DENY')
      .header(
        'content-security-policy',
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
      )
      .sendFile('index.html', path.join(dist, manifest.dir), { cacheControl: false });
  };

  app.get('/', { config: { access: 'public' }, schema: { hide: true } }, page);

  app.get<{ Params: { '*': string } }>(
    '/assets/*',
    { config: { access: 'public' }, schema: { hide: true } },
    async (request, reply) => {
      const file = request.params['*'];
      if (!/^[A-Za-z0-9_.-]+$/.test(file) || file.startsWith('.')) {
        throw notFound(`No such file: /assets/${file.slice(0, 100)}`);
      }
      // Names carry their content's hash: a page loaded before a rebuild still finds its lazy
      // chunks in the build it came from, kept for an hour.
      const manifest = await ensureWebBuild(root).catch(() => null);
      const dirs = [
        ...(manifest ? [manifest.dir] : []),
        ...(await readdir(dist).catch(() => [])).filter((d) => !d.startsWith('.') && d !== manifest?.dir),
      ];
      for (const dir of dirs) {
        const found = await readdir(path.join(dist, dir)).catch(() => [] as string[]);
        if (found.includes(file) && file !== 'index.html') {
          return reply
            .header('x-content-type-options', 'nosniff')
            .sendFile(file, path.join(dist, dir), { maxAge: 365 * 24 * 3600_000, immutable: true });
        }
      }
      throw notFound(`No such file: /assets/${file}`);
    },
  );

  app.get('/*', { config: { access: 'public' }, schema: { hide: true } }, page);
}
