import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import { createFakeServices, type FakeServices } from '../../test/fakes/fake-services.ts';
import { type ActionClass, ALL_PROJECTS, type Role } from '../core/access.ts';
import { createAuditLog } from '../services/audit-log.ts';
import { createAuthService } from '../services/auth-service.ts';
import { createMemoryAuditStore } from '../store/audit-store.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { buildServer } from './build-server.ts';

/**
 * What each route is, decided here independently of the route's own declaration: a route
 * that is missing here (a new one) fails the walk below until someone decides its class.
 */
const EXPECTED: Record<string, ActionClass> = {
  'GET /1.0': 'public',
  'GET /1.0/metrics': 'host-read',
  'GET /1.0/openapi.json': 'authenticated',
  'POST /1.0/websocket-tickets': 'authenticated',
  'GET /1.0/events': 'read',
  'GET /1.0/guests': 'read',
  'POST /1.0/guests': 'operate',
  'GET /1.0/guests/:name': 'read',
  'PATCH /1.0/guests/:name': 'operate',
  'DELETE /1.0/guests/:name': 'operate',
  'POST /1.0/guests/:name': 'admin',
  'PUT /1.0/guests/:name': 'operate',
  'GET /1.0/guests/:name/state': 'read',
  'PUT /1.0/guests/:name/state': 'operate',
  'POST /1.0/guests/:name/exec': 'operate',
  // What a guest prints, and its files and backups, are its contents: an operator's to read.
  'GET /1.0/guests/:name/console': 'operate',
  'POST /1.0/guests/:name/console': 'operate',
  'GET /1.0/guests/:name/console/follow': 'operate',
  // A vm guest's screen and keyboard: as much as its console.
  'GET /1.0/guests/:name/console/screenshot': 'operate',
  'POST /1.0/guests/:name/console/keys': 'operate',
  'GET /1.0/guests/:name/files': 'operate',
  'POST /1.0/guests/:name/files': 'operate',
  'GET /1.0/guests/:name/snapshots': 'read',
  'POST /1.0/guests/:name/snapshots': 'operate',
  'GET /1.0/guests/:name/snapshots/:snapshot': 'read',
  'DELETE /1.0/guests/:name/snapshots/:snapshot': 'operate',
  'POST /1.0/guests/:name/backups': 'operate',
  'GET /1.0/guests/:name/backups/:backup/export': 'operate',
  'DELETE /1.0/guests/:name/backups/:backup': 'operate',
  'POST /1.0/backups': 'operate',
  'GET /1.0/images': 'read',
  'POST /1.0/images': 'operate',
  'GET /1.0/images/*': 'read',
  'DELETE /1.0/images/*': 'operate',
  'GET /1.0/operations': 'read',
  'GET /1.0/operations/:id': 'read',
  'GET /1.0/operations/:id/wait': 'read',
  'DELETE /1.0/operations/:id': 'operate',
  'GET /1.0/operations/:id/websocket': 'operate',
  'GET /1.0/networks': 'read',
  'POST /1.0/networks': 'operate',
  'GET /1.0/networks/:name': 'read',
  'PATCH /1.0/networks/:name': 'operate',
  'DELETE /1.0/networks/:name': 'operate',
  'POST /1.0/networks/:name/forwards': 'operate',
  'DELETE /1.0/networks/:name/forwards/:listen': 'operate',
  'POST /1.0/networks/:name/acls': 'operate',
  'DELETE /1.0/networks/:name/acls/:index': 'operate',
  'POST /1.0/networks/:name/attach': 'operate',
  'POST /1.0/networks/:name/detach': 'operate',
  'GET /1.0/storage-pools': 'host-read',
  'POST /1.0/storage-pools': 'host-admin',
  'GET /1.0/storage-pools/:name': 'host-read',
  'DELETE /1.0/storage-pools/:name': 'host-admin',
  'GET /1.0/storage-pools/:pool/volumes': 'read',
  'GET /1.0/storage-pools/:pool/volumes/custom': 'read',
  'POST /1.0/storage-pools/:pool/volumes/custom': 'operate',
  'GET /1.0/storage-pools/:pool/volumes/custom/:volume': 'read',
  'PATCH /1.0/storage-pools/:pool/volumes/custom/:volume': 'operate',
  'DELETE /1.0/storage-pools/:pool/volumes/custom/:volume': 'operate',
  'POST /1.0/storage-pools/:pool/volumes/custom/:volume/attach': 'operate',
  'POST /1.0/storage-pools/:pool/volumes/custom/:volume/detach': 'operate',
  'POST /1.0/admin/recover': 'host-admin',
  'POST /1.0/admin/recover/backups': 'host-admin',
  'POST /1.0/backups/import': 'host-admin',
  // The backup directory's names, sizes and times: read as pools are; restoring from it is host-admin.
  'GET /1.0/backups': 'host-read',
  'GET /1.0/backups/:guest/:archive': 'host-read',
  'GET /1.0/projects': 'host-read',
  'POST /1.0/projects': 'host-admin',
  // The project named in the path (here p1): its members may read it, quotas are the host's.
  'GET /1.0/projects/:name': 'read',
  'PATCH /1.0/projects/:name': 'host-admin',
  'DELETE /1.0/projects/:name': 'host-admin',
  'GET /1.0/auth/tokens': 'host-admin',
  'POST /1.0/auth/tokens': 'host-admin',
  'DELETE /1.0/auth/tokens/:name': 'host-admin',
  'GET /1.0/auth/certificates': 'host-admin',
  'POST /1.0/auth/certificates': 'host-admin',
  'DELETE /1.0/auth/certificates/:fingerprint': 'host-admin',
  // Without ?project= every project's entries and the host's: a host admin's (cases below too).
  'GET /1.0/audit': 'host-admin',
  // The metric history (decision 0027): a guest's is read in its project, the host's is the host's.
  'GET /1.0/guests/:name/metrics': 'read',
  'GET /1.0/metrics/history': 'host-read',
  'POST /1.0/plans/consolidate': 'read',
  'POST /1.0/plans/advise': 'read',
  // Web UI sessions (decision 0026): signing in is how a browser gets an identity at all.
  'POST /1.0/auth/session': 'public',
  'GET /1.0/auth/session': 'authenticated',
  'DELETE /1.0/auth/session': 'authenticated',
  'POST /1.0/auth/web-links': 'host-admin',
  // Cluster membership (decision 0032): a joining host proves itself with its token's secret.
  'GET /1.0/cluster': 'host-read',
  'GET /1.0/cluster/image-trees/:fingerprint': 'host-admin',
  'GET /1.0/cluster/image-disks/:fingerprint': 'host-admin',
  'POST /1.0/cluster/guest-moves/:name': 'host-admin',
  'POST /1.0/cluster/members/:name/state': 'host-admin',
  'DELETE /1.0/cluster/guest-moves/:name': 'host-admin',
  'POST /1.0/cluster/live-moves/:name': 'host-admin',
  'POST /1.0/cluster/live-moves/:name/finish': 'host-admin',
  'POST /1.0/cluster/bootstrap': 'host-admin',
  'POST /1.0/cluster/tokens': 'host-admin',
  'POST /1.0/cluster/join': 'host-admin',
  'GET /1.0/cluster/members': 'host-read',
  'POST /1.0/cluster/members': 'public',
  'GET /1.0/cluster/members/:name': 'host-read',
  'DELETE /1.0/cluster/members/:name': 'host-admin',
  'GET /1.0/cluster/config': 'host-read',
  'PATCH /1.0/cluster/config': 'host-admin',
  'GET /1.0/cluster/moves': 'host-read',
  'POST /1.0/cluster/rebalance': 'host-admin',
};

/** Requests that ask for more than the route's plain class. */
const EXTRA_CASES: Array<{ method: string; url: string; access: ActionClass }> = [
  { method: 'GET', url: '/1.0/events?type=audit&project=p1', access: 'admin' },
  { method: 'GET', url: '/1.0/events?type=lifecycle,audit&project=p1', access: 'admin' },
  { method: 'GET', url: '/1.0/audit?project=p1', access: 'admin' },
  { method: 'GET', url: '/1.0/audit?project=p1&all-projects=true', access: 'host-admin' },
  { method: 'GET', url: '/1.0/guests?all-projects=true', access: 'host-read' },
];

/** The spec, written out: may `role`, bound to `bound` ('p1' or '*'), do `access` in project p1? */
function allowed(role: Role, bound: 'p1' | 'p2' | '*', access: ActionClass): boolean {
  const rank = { viewer: 0, operator: 1, admin: 2 }[role];
  switch (access) {
    case 'public':
    case 'authenticated':
      return true;
    case 'read':
      return bound !== 'p2';
    case 'operate':
      return bound !== 'p2' && rank >= 1;
    case 'admin':
      return bound !== 'p2' && rank >= 2;
    case 'host-read':
      return bound === '*';
    case 'host-admin':
      return bound === '*' && rank >= 2;
  }
}

const ADMIN_TOKEN = 'the-daemons-own-token';
const CALLERS: Array<{ role: Role; bound: 'p1' | 'p2' | '*' }> = [
  { role: 'viewer', bound: 'p1' },
  { role: 'operator', bound: 'p1' },
  { role: 'admin', bound: 'p1' },
  { role: 'operator', bound: 'p2' },
  { role: 'viewer', bound: '*' },
  { role: 'operator', bound: '*' },
  { role: 'admin', bound: '*' },
];

/**
 * A concrete URL of a route in project p1, with names that exist nowhere (an allowed request
 * is a 404 or a 400 and changes nothing), but for GET /1.0/projects/p1, whose class is about
 * the project in its path. /1.0/audit is asked without a project (all of them; cases below).
 */
function urlOf(method: string, pattern: string): string {
  const path = pattern
    .replace(':name', pattern.startsWith('/1.0/projects/') && method === 'GET' ? 'p1' : 'nosuch')
    .replace(':fingerprint', '0123456789abcdef')
    .replace(':index', '0')
    .replace(':listen', '198.18.0.1:80')
    .replace(/:[a-z]+/g, 'nosuch')
    .replace('*', 'nosuch-image');
  return pattern === '/1.0/audit' ? path : `${path}?project=p1`;
}

describe('roles on every route (one access hook, classes declared beside the routes)', () => {
  let app: FastifyInstance;
  let fake: FakeServices;
  const secrets = new Map<string, string>();

  before(async () => {
    fake = createFakeServices();
    await fake.projects.create({ name: 'p1' });
    await fake.projects.create({ name: 'p2' });
    fake.auth = createAuthService({
      store: createMemoryStore(),
      assertProjectExists: (n) => fake.projects.assertExists(n),
    });
    fake.audit = createAuditLog({
      store: createMemoryAuditStore(),
      events: fake.events,
      hostName: 'fakehost',
    });
    for (const c of CALLERS) {
      const name = `${c.role}-${c.bound === '*' ? 'all' : c.bound}`;
      const made = await fake.auth.createToken({ name, role: c.role, projects: [c.bound] }, 'test');
      secrets.set(name, made.secret);
    }
    app = await buildServer(fake, { auth: { type: 'token', token: ADMIN_TOKEN }, limits: {} });
    await app.ready();
  });
  after(async () => {
    await app?.close();
    fake?.audit?.close();
  });

  const bearer = (c: { role: Role; bound: string }) =>
    `Bearer ${secrets.get(`${c.role}-${c.bound === '*' ? 'all' : c.bound}`)}`;

  test('every route declares a class, and every route of the OpenAPI document is among them', () => {
    const declared = app.accessTable.map((r) => `${r.method} ${r.url}`);
    const undecided = declared.filter((r) => !(r in EXPECTED));
    assert.deepEqual(
      undecided,
      [],
      'routes without an expected class: decide theirs and add them to EXPECTED',
    );
    assert.deepEqual(
      Object.keys(EXPECTED).filter((r) => !declared.includes(r)),
      [],
      'EXPECTED names routes that do not exist',
    );
    const doc = app.swagger() as { paths: Record<string, Record<string, unknown>> };
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const method of Object.keys(methods)) {
        // finishOpenApi writes fastify's wildcard `/1.0/images/*` as `/1.0/images/{ref}`.
        const pattern = path.replace('/1.0/images/{ref}', '/1.0/images/*').replace(/\{([^}]+)\}/g, ':$1');
        assert.ok(
          declared.includes(`${method.toUpperCase()} ${pattern}`),
          `${method} ${path} in the access table`,
        );
      }
    }
  });

  test('a route registered without a class is refused when the server is built', async () => {
    const other = await buildServer(createFakeServices(), { auth: { type: 'none' } });
    assert.throws(
      () => other.get('/1.0/new-thing', async () => 'x'),
      /Route GET \/1\.0\/new-thing declares no access class/,
    );
    await other.close();
  });

  test('each role on each route: allowed or 403, as the roles say', async () => {
    const wrong: string[] = [];
    const cases = [
      ...app.accessTable.map((r) => ({
        method: r.method,
        url: urlOf(r.method, r.url),
        access: EXPECTED[`${r.method} ${r.url}`]!,
      })),
      ...EXTRA_CASES,
    ];
    for (const c of cases) {
      for (const who of CALLERS) {
        const res = await app.inject({
          method: c.method as 'GET',
          url: c.url,
          headers: { authorization: bearer(who) },
          ...(['POST', 'PUT', 'PATCH'].includes(c.method) && { payload: {} }),
        });
        const expected = allowed(who.role, who.bound, c.access);
        const denied = res.statusCode === 403;
        if (res.statusCode === 401 || denied === expected) {
          wrong.push(
            `${who.role}@${who.bound} ${c.method} ${c.url}: ${res.statusCode} ${res.body.slice(0, 160)}`,
          );
        }
        if (
          denied &&
          !/^Permission denied: token [a-z0-9-]+ is an? (viewer|operator|admin) in .*; .* needs an? /.test(
            res.json().error,
          )
        ) {
          wrong.push(`unclear refusal: ${res.json().error}`);
        }
      }
    }
    assert.deepEqual(wrong, []);
  });

  test("the daemon's own token is the host's admin; no token is a 401 everywhere but GET /1.0, signing in and joining", async () => {
    for (const r of app.accessTable) {
      const anon = await app.inject({ method: r.method as 'GET', url: urlOf(r.method, r.url) });
      // Joining a cluster is how a host becomes a member: its token's secret, in the body, is its proof.
      const signIn =
        r.method === 'POST' && (r.url === '/1.0/auth/session' || r.url === '/1.0/cluster/members');
      if (r.url === '/1.0') assert.equal(anon.statusCode, 200);
      // Signing in is how a browser becomes a caller: its own refusals are 400 and 401 with their reasons.
      else if (signIn) assert.equal(anon.statusCode, 400, `${r.method} ${r.url}: ${anon.body}`);
      else assert.equal(anon.statusCode, 401, `${r.method} ${r.url}: ${anon.body}`);
      // Nothing of the request is read before the caller is known: a malformed project is still a 401.
      const odd = await app.inject({
        method: r.method as 'GET',
        url: `${r.url.replace(/[:*][a-z]*/g, 'x')}?project=Bad%20Name`,
      });
      assert.equal(
        odd.statusCode,
        r.url === '/1.0' ? 200 : signIn ? 400 : 401,
        `${r.method} ${r.url}?project=Bad Name: ${odd.body}`,
      );
      const admin = await app.inject({
        method: r.method as 'GET',
        url: urlOf(r.method, r.url),
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      assert.ok(![401, 403].includes(admin.statusCode), `${r.method} ${r.url}: ${admin.body}`);
    }
  });

  test('GET /1.0 tells a caller who it is and what it holds', async () => {
    const res = await app.inject({
      url: '/1.0',
      headers: { authorization: bearer({ role: 'operator', bound: 'p1' }) },
    });
    const info = res.json().metadata;
    assert.equal(info.auth, 'trusted');
    assert.equal(info.auth_user_name, 'operator-p1');
    assert.equal(info.auth_user_method, 'token');
    assert.equal(info.auth_role, 'operator');
    assert.deepEqual(info.auth_projects, ['p1']);
  });

  test('a revoked token is refused at its next request', async () => {
    const made = await fake.auth!.createToken(
      { name: 'shortlived', role: 'viewer', projects: ['p1'] },
      'test',
    );
    const get = () =>
      app.inject({ url: '/1.0/guests?project=p1', headers: { authorization: `Bearer ${made.secret}` } });
    assert.equal((await get()).statusCode, 200);
    await fake.auth!.revokeToken('shortlived');
    assert.equal((await get()).statusCode, 401);
  });

  test('a ticket opens a WebSocket as the caller who asked for it, with its role', async () => {
    const listening = await buildServer(fake, { auth: { type: 'token', token: ADMIN_TOKEN }, limits: {} });
    await listening.listen({ host: '127.0.0.1', port: 0 });
    const { port } = listening.server.address() as { port: number };
    const ticketFor = async (who: { role: Role; bound: string }) => {
      const res = await listening.inject({
        method: 'POST',
        url: '/1.0/websocket-tickets',
        headers: { authorization: bearer(who) },
        payload: { path: '/1.0/events' },
      });
      assert.equal(res.statusCode, 200, res.body);
      return res.json().metadata.ticket as string;
    };
    const open = (query: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/1.0/events?${query}`);
        ws.once('open', () => {
          ws.close();
          resolve(101);
        });
        ws.once('unexpected-response', (req, res) => {
          req.destroy();
          resolve(res.statusCode ?? 0);
        });
        ws.once('error', () => {});
      });
    try {
      const viewer = { role: 'viewer' as Role, bound: 'p1' };
      assert.equal(await open(`project=p1&ticket=${await ticketFor(viewer)}`), 101);
      assert.equal(await open(`type=audit&project=p1&ticket=${await ticketFor(viewer)}`), 403);
      assert.equal(await open(`project=p2&ticket=${await ticketFor(viewer)}`), 403);
      const admin = { role: 'admin' as Role, bound: 'p1' };
      assert.equal(await open(`type=audit&project=p1&ticket=${await ticketFor(admin)}`), 101);
    } finally {
      await listening.close();
    }
  });
});

test("logging events (the daemon's warnings) reach host readers only, not a reader of the default project alone", async () => {
  const fake = createFakeServices();
  fake.auth = createAuthService({ store: createMemoryStore() });
  const app = await buildServer(fake, { auth: { type: 'token', token: ADMIN_TOKEN }, limits: {} });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as { port: number };
  const secretOf = async (name: string, projects: string[]) =>
    (await fake.auth!.createToken({ name, role: 'viewer', projects }, 'test')).secret;
  const listen = async (secret: string) => {
    const res = await app.inject({
      method: 'POST',
      url: '/1.0/websocket-tickets',
      headers: { authorization: `Bearer ${secret}` },
      payload: { path: '/1.0/events' },
    });
    assert.equal(res.statusCode, 200, res.body);
    const ws = new WebSocket(`ws://127.0.0.1:${port}/1.0/events?ticket=${res.json().metadata.ticket}`);
    const got: string[] = [];
    ws.on('message', (m) => got.push((JSON.parse(String(m)) as { type: string }).type));
    await new Promise((resolve) => ws.once('open', resolve));
    return { got, close: () => ws.close() };
  };
  try {
    const project = await listen(await secretOf('default-viewer', ['default']));
    const host = await listen(await secretOf('host-viewer', ['*']));
    fake.events.publish({
      type: 'logging',
      metadata: { message: 'backup failed', level: 'warn', context: {} },
    });
    fake.events.publish({ type: 'lifecycle', action: 'guest-started', metadata: {} });
    for (let i = 0; i < 100 && host.got.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(host.got, ['logging', 'lifecycle']);
    assert.deepEqual(project.got, ['lifecycle']);
    project.close();
    host.close();
  } finally {
    await app.close();
  }
});

describe('the audit log of the API', () => {
  let app: FastifyInstance;
  let fake: FakeServices;
  let operator: string;
  let viewer: string;

  before(async () => {
    fake = createFakeServices();
    await fake.projects.create({ name: 'p1' });
    fake.auth = createAuthService({ store: createMemoryStore() });
    fake.audit = createAuditLog({
      store: createMemoryAuditStore(),
      events: fake.events,
      hostName: 'fakehost',
    });
    operator = (await fake.auth.createToken({ name: 'ops', role: 'operator', projects: ['default'] }, 'test'))
      .secret;
    viewer = (await fake.auth.createToken({ name: 'watcher', role: 'viewer', projects: ['default'] }, 'test'))
      .secret;
    app = await buildServer(fake, { auth: { type: 'token', token: ADMIN_TOKEN }, limits: {} });
  });
  after(async () => {
    await app?.close();
    fake?.audit?.close();
  });

  const entries = () => fake.audit!.query();

  test('a change records who, from where, what, the result and the operation; reads are not recorded', async () => {
    const before = entries().length;
    await app.inject({ url: '/1.0/guests', headers: { authorization: `Bearer ${operator}` } });
    const created = await app.inject({
      method: 'POST',
      url: '/1.0/guests',
      headers: { authorization: `Bearer ${operator}` },
      payload: { name: 'aud1', image: 'busybox', config: { 'environment.DB_PASSWORD': 'hunter2-secret' } },
      remoteAddress: '198.18.7.7',
    });
    assert.equal(created.statusCode, 202, created.body);
    const all = entries();
    assert.equal(all.length, before + 1, 'one entry: the GET is not one');
    const e = all.at(-1)!;
    assert.deepEqual(e.actor, { method: 'token', name: 'ops' });
    assert.equal(e.source, '198.18.7.7');
    assert.deepEqual(e.request, {
      method: 'POST',
      route: '/1.0/guests',
      path: '/1.0/guests',
      project: 'default',
      object: 'aud1',
    });
    assert.deepEqual(e.result, { status: 202 });
    assert.equal(e.operation, created.json().metadata.id);
    assert.equal(e.host, 'fakehost');
  });

  test('refusals are recorded with their status and error code; nobody is not recorded', async () => {
    const before = entries().length;
    const denied = await app.inject({
      method: 'DELETE',
      url: '/1.0/guests/web1',
      headers: { authorization: `Bearer ${viewer}` },
    });
    assert.equal(denied.statusCode, 403);
    const missing = await app.inject({
      method: 'DELETE',
      url: '/1.0/guests/nosuch',
      headers: { authorization: `Bearer ${operator}` },
    });
    assert.equal(missing.statusCode, 404);
    const anon = await app.inject({ method: 'DELETE', url: '/1.0/guests/web1' });
    assert.equal(anon.statusCode, 401);
    const added = entries().slice(before);
    assert.deepEqual(
      added.map((e) => [e.actor.name, e.request.object, e.result.status, e.result.error]),
      [
        ['watcher', 'web1', 403, 'PermissionDenied'],
        ['ops', 'nosuch', 404, 'NotFound'],
      ],
    );
  });

  test('no secret reaches the log: token secrets, environment values, file contents', async () => {
    const made = await app.inject({
      method: 'POST',
      url: '/1.0/auth/tokens',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      payload: { name: 'ci', role: 'viewer', projects: ['default'] },
    });
    assert.equal(made.statusCode, 200, made.body);
    const secret = made.json().metadata.secret as string;
    await app.inject({
      method: 'PATCH',
      url: '/1.0/guests/web1',
      headers: { authorization: `Bearer ${operator}` },
      payload: { config: { 'environment.API_KEY': 'sk-live-very-secret' } },
    });
    await app.inject({
      method: 'POST',
      url: '/1.0/guests/web1/exec',
      headers: { authorization: `Bearer ${operator}` },
      payload: { command: ['echo', 'x'], environment: { TOKEN: 'exec-env-secret' } },
    });
    await app.inject({
      method: 'POST',
      url: '/1.0/guests/web1/files?path=/etc/secret',
      headers: { authorization: `Bearer ${operator}`, 'content-type': 'application/octet-stream' },
      payload: Buffer.from('file-content-secret'),
    });
    const text = JSON.stringify(entries());
    for (const s of [
      secret,
      'sk-live-very-secret',
      'exec-env-secret',
      'file-content-secret',
      ADMIN_TOKEN,
      operator,
    ]) {
      assert.ok(!text.includes(s), `${s.slice(0, 12)}… is not in the log`);
    }
    assert.match(text, /"route":"\/1\.0\/auth\/tokens".*"object":"ci"/);
  });

  test('entries are streamed as audit events, in their project', async () => {
    const seen: Array<{ type: string; project?: string; metadata: Record<string, unknown> }> = [];
    const stop = fake.events.subscribe((e) => seen.push(e), ['audit']);
    await app.inject({
      method: 'PUT',
      url: '/1.0/guests/web1/state',
      headers: { authorization: `Bearer ${operator}` },
      payload: { action: 'stop' },
    });
    stop();
    assert.equal(seen.length, 1);
    assert.equal(seen[0]?.type, 'audit');
    assert.equal(seen[0]?.project, 'default');
    assert.equal((seen[0]!.metadata.request as { route: string }).route, '/1.0/guests/:name/state');
  });

  test('GET /1.0/audit answers entries since a time, of a project, for admins only', async () => {
    const all = await app.inject({ url: '/1.0/audit', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(all.statusCode, 200);
    assert.ok(all.json().metadata.length >= 3);
    const recent = await app.inject({
      url: '/1.0/audit?since=1h&project=default',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    assert.ok(
      recent.json().metadata.every((e: { request: { project: string } }) => e.request.project === 'default'),
    );
    const future = await app.inject({
      url: `/1.0/audit?since=${new Date(Date.now() + 60_000).toISOString()}`,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    assert.deepEqual(future.json().metadata, []);
    const bad = await app.inject({
      url: '/1.0/audit?since=yesterday',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    assert.equal(bad.statusCode, 400);
    assert.match(bad.json().error, /is neither a duration/);
    const op = await app.inject({ url: '/1.0/audit', headers: { authorization: `Bearer ${operator}` } });
    assert.equal(op.statusCode, 403);
    assert.ok(ALL_PROJECTS);
  });
});
