import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import { createFakeServices, type FakeServices } from '../../test/fakes/fake-services.ts';
import { createAuthService } from '../services/auth-service.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { buildServer } from './build-server.ts';
import { createWebSessions, SESSION_COOKIE, type WebSessions } from './web-sessions.ts';

const ADMIN_TOKEN = 'the-daemons-own-token';

describe('web UI sessions: a cookie is one more way to prove who the caller is', () => {
  let tcp: FastifyInstance;
  let unix: FastifyInstance;
  let fake: FakeServices;
  let sessions: WebSessions;
  let clock = Date.parse('2026-12-01T10:00:00Z');
  let viewerSecret = '';
  let operatorSecret = '';
  let daemonTokenSha256: string | undefined;

  before(async () => {
    fake = createFakeServices();
    const store = createMemoryStore();
    fake.auth = createAuthService({ store, assertProjectExists: (n) => fake.projects.assertExists(n) });
    viewerSecret = (await fake.auth.createToken({ name: 'viewer', role: 'viewer', projects: ['*'] }, 'test'))
      .secret;
    operatorSecret = (
      await fake.auth.createToken({ name: 'operator', role: 'operator', projects: ['*'] }, 'test')
    ).secret;
    const { createHash } = await import('node:crypto');
    daemonTokenSha256 = createHash('sha256').update(ADMIN_TOKEN).digest('hex');
    sessions = createWebSessions({
      store,
      sessionTtlMs: 3600_000,
      linkTtlMs: 600_000,
      daemonTokenSha256: () => daemonTokenSha256,
      now: () => clock,
    });
    tcp = await buildServer(fake, {
      auth: { type: 'token', token: ADMIN_TOKEN },
      limits: {},
      web: { sessions },
    });
    unix = await buildServer(fake, { auth: { type: 'none' }, limits: {}, web: { sessions } });
    await tcp.listen({ host: '127.0.0.1', port: 0 });
    await unix.ready();
  });
  after(async () => {
    await tcp?.close();
    await unix?.close();
  });

  const signIn = async (body: Record<string, string>) => {
    const res = await tcp.inject({ method: 'POST', url: '/1.0/auth/session', payload: body });
    const setCookie = String(res.headers['set-cookie'] ?? '');
    const cookie = setCookie.split(';')[0] ?? '';
    return { res, setCookie, cookie, csrf: res.statusCode === 200 ? res.json().metadata.csrfToken : '' };
  };
  const whoAmI = async (cookie: string) => {
    const res = await tcp.inject({ url: '/1.0', headers: { cookie } });
    return res.json().metadata as { auth: string; auth_user_name?: string; auth_user_method?: string };
  };

  test('a token buys an HttpOnly, Secure, SameSite=Strict __Host- cookie with an expiry; the cookie then stands for the token', async () => {
    const { res, setCookie, cookie } = await signIn({ token: ADMIN_TOKEN });
    assert.equal(res.statusCode, 200, res.body);
    assert.match(setCookie, new RegExp(`^${SESSION_COOKIE}=[A-Za-z0-9_-]{43};`));
    for (const attribute of ['HttpOnly', 'Secure', 'SameSite=Strict', 'Path=/', 'Max-Age=3600']) {
      assert.ok(setCookie.includes(attribute), `${attribute} in ${setCookie}`);
    }
    assert.equal(res.json().metadata.user.role, 'admin');
    assert.equal(Date.parse(res.json().metadata.expiresAt), clock + 3600_000);
    // The token itself is not in the answer, nor is the cookie's value in the body.
    assert.ok(!res.body.includes(ADMIN_TOKEN) && !res.body.includes(cookie.split('=')[1]!));
    const me = await whoAmI(cookie);
    assert.equal(me.auth, 'trusted');
    assert.equal(me.auth_user_method, 'session');
    const session = await tcp.inject({ url: '/1.0/auth/session', headers: { cookie } });
    assert.equal(session.statusCode, 200);
    assert.equal(session.json().metadata.csrfToken, res.json().metadata.csrfToken);
  });

  test('a wrong token or link is a 401 with one line and sets no cookie; giving both or neither is a 400', async () => {
    for (const body of [{ token: 'nope' }, { link: 'x'.repeat(43) }]) {
      const { res, setCookie } = await signIn(body);
      assert.equal(res.statusCode, 401, res.body);
      assert.equal(setCookie, '');
      assert.ok(!res.json().error.includes('\n'));
    }
    assert.equal((await signIn({})).res.statusCode, 400);
    assert.equal((await signIn({ token: ADMIN_TOKEN, link: 'x' })).res.statusCode, 400);
    // The unix socket needs no session: refused there with the reason.
    const res = await unix.inject({
      method: 'POST',
      url: '/1.0/auth/session',
      payload: { token: ADMIN_TOKEN },
    });
    assert.equal(res.statusCode, 400);
  });

  test('a change made with the cookie needs the CSRF header and a same-site Origin; without them nothing changes (403)', async () => {
    const { cookie, csrf } = await signIn({ token: ADMIN_TOKEN });
    const patch = (headers: Record<string, string>) =>
      tcp.inject({
        method: 'PATCH',
        url: '/1.0/guests/web1',
        headers: { cookie, ...headers },
        payload: { config: { 'user.note': String(Math.random()) } },
      });
    const before = fake.guestMap.get('web1')!.config['user.note'];
    for (const headers of [
      {},
      { 'x-trivisor-csrf': 'wrong' },
      { 'x-trivisor-csrf': csrf, origin: 'https://evil.example' },
    ]) {
      const res = await patch(headers);
      assert.equal(res.statusCode, 403, res.body);
      assert.match(res.json().error, /^Permission denied: /);
      assert.equal(fake.guestMap.get('web1')!.config['user.note'], before, 'nothing changed');
    }
    const host = `127.0.0.1:${(tcp.server.address() as { port: number }).port}`;
    const ok = await patch({ 'x-trivisor-csrf': csrf, origin: `https://${host}`, host });
    assert.equal(ok.statusCode, 200, ok.body);
    // Reads need no header: a cross-site page cannot read the answers (no CORS), and SameSite=Strict sends no cookie.
    assert.equal((await tcp.inject({ url: '/1.0/guests/web1', headers: { cookie } })).statusCode, 200);
  });

  test("a session has its token's role: a viewer's session is refused a change (403)", async () => {
    const { cookie, csrf } = await signIn({ token: viewerSecret });
    const res = await tcp.inject({
      method: 'PUT',
      url: '/1.0/guests/web1/state',
      headers: { cookie, 'x-trivisor-csrf': csrf },
      payload: { action: 'stop' },
    });
    assert.equal(res.statusCode, 403, res.body);
    assert.match(res.json().error, /web session of viewer is a viewer/);
  });

  test('the cookie never opens a WebSocket; a ticket asked for with it (and its CSRF token) does', async () => {
    const { cookie, csrf } = await signIn({ token: ADMIN_TOKEN });
    const port = (tcp.server.address() as { port: number }).port;
    const open = (url: string, headers: Record<string, string>) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(url, { headers });
        ws.once('open', () => {
          ws.close();
          resolve(101);
        });
        ws.once('unexpected-response', (req, res) => {
          req.destroy();
          resolve(res.statusCode ?? 0);
        });
        ws.once('error', () => resolve(0));
      });
    assert.equal(await open(`ws://127.0.0.1:${port}/1.0/events`, { cookie }), 401);
    const ticket = await tcp.inject({
      method: 'POST',
      url: '/1.0/websocket-tickets',
      headers: { cookie, 'x-trivisor-csrf': csrf },
      payload: { path: '/1.0/events' },
    });
    assert.equal(ticket.statusCode, 200, ticket.body);
    const url = `ws://127.0.0.1:${port}/1.0/events?ticket=${ticket.json().metadata.ticket}`;
    assert.equal(await open(url, {}), 101);
  });

  test('a session ends at its expiry, when its token is revoked, and when the daemon token is replaced', async () => {
    const admin = await signIn({ token: ADMIN_TOKEN });
    const operator = await signIn({ token: operatorSecret });
    assert.equal((await whoAmI(operator.cookie)).auth, 'trusted');
    await fake.auth!.revokeToken('operator');
    assert.equal((await whoAmI(operator.cookie)).auth, 'untrusted');
    const guests = await tcp.inject({ url: '/1.0/guests', headers: { cookie: operator.cookie } });
    assert.equal(guests.statusCode, 401);

    daemonTokenSha256 = 'another';
    assert.equal((await whoAmI(admin.cookie)).auth, 'untrusted');
    daemonTokenSha256 = (await import('node:crypto')).createHash('sha256').update(ADMIN_TOKEN).digest('hex');

    const fresh = await signIn({ token: ADMIN_TOKEN });
    clock += 3600_000 - 1000;
    assert.equal((await whoAmI(fresh.cookie)).auth, 'trusted');
    clock += 2000;
    assert.equal((await whoAmI(fresh.cookie)).auth, 'untrusted');
    assert.equal(
      (await tcp.inject({ url: '/1.0/guests', headers: { cookie: fresh.cookie } })).statusCode,
      401,
    );
  });

  test('a login link from the unix socket (a host admin) opens one session, once, within its time', async () => {
    const made = await unix.inject({ method: 'POST', url: '/1.0/auth/web-links' });
    assert.equal(made.statusCode, 200, made.body);
    const { code, path } = made.json().metadata as { code: string; path: string };
    assert.equal(path, `/login#code=${code}`);
    const first = await signIn({ link: code });
    assert.equal(first.res.statusCode, 200, first.res.body);
    assert.equal(first.res.json().metadata.user.role, 'admin');
    assert.equal((await whoAmI(first.cookie)).auth, 'trusted');
    const again = await signIn({ link: code });
    assert.equal(again.res.statusCode, 401);
    assert.match(again.res.json().error, /used already or expired/);

    const late = (await unix.inject({ method: 'POST', url: '/1.0/auth/web-links' })).json().metadata.code;
    clock += 600_001;
    assert.equal((await signIn({ link: late })).res.statusCode, 401);
    // Only a host admin makes links: a viewer's token is refused.
    const viewer = await tcp.inject({
      method: 'POST',
      url: '/1.0/auth/web-links',
      headers: { authorization: `Bearer ${viewerSecret}` },
    });
    assert.equal(viewer.statusCode, 403);
  });

  test('signing out ends the session and clears the cookie', async () => {
    const { cookie, csrf } = await signIn({ token: ADMIN_TOKEN });
    const out = await tcp.inject({
      method: 'DELETE',
      url: '/1.0/auth/session',
      headers: { cookie, 'x-trivisor-csrf': csrf },
    });
    assert.equal(out.statusCode, 200, out.body);
    assert.match(String(out.headers['set-cookie']), /Max-Age=0/);
    assert.equal((await whoAmI(cookie)).auth, 'untrusted');
  });
});
