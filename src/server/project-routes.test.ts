import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { BUSYBOX, makeProjectWorld, type ProjectWorld } from '../../test/fakes/project-world.ts';
import { createClient } from '../client/client.ts';
import { keys } from '../core/keys.ts';
import type { ImageRecord } from '../core/types.ts';
import { createAuthService } from '../services/auth-service.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { buildServer } from './build-server.ts';
import { listenUnix } from './listen.ts';

/**
 * Projects as an isolation boundary of the API: every route kind, asked from project b
 * about an object of project a, answers exactly what it answers for an object that does
 * not exist (404, the same words), and changes nothing.
 */
describe('project scoping of the API', () => {
  let w: ProjectWorld;
  let app: FastifyInstance;
  let opOfA = '';
  const A_IMAGE: ImageRecord = {
    ...BUSYBOX,
    fingerprint: 'cd'.repeat(32),
    project: 'a',
    aliases: ['a-image'],
  };

  type Call = { method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'; url: string; payload?: unknown };
  const call = (c: Call, project?: string) => {
    const sep = c.url.includes('?') ? '&' : '?';
    return app.inject({
      method: c.method,
      url: project ? `${c.url}${sep}project=${project}` : c.url,
      ...(c.payload !== undefined && { payload: c.payload as string }),
    });
  };

  before(async () => {
    w = await makeProjectWorld();
    app = await buildServer(w.services, { auth: { type: 'none' } });
    const ok = async (c: Call, project: string) => {
      const res = await call(c, project);
      assert.ok(res.statusCode < 300, `${c.method} ${c.url} in ${project}: ${res.statusCode} ${res.body}`);
      return res.json();
    };
    await ok({ method: 'POST', url: '/1.0/projects', payload: { name: 'a' } }, '');
    await ok({ method: 'POST', url: '/1.0/projects', payload: { name: 'b' } }, '');
    await ok(
      {
        method: 'POST',
        url: '/1.0/networks',
        payload: { name: 'na', config: { 'ipv4.address': '198.18.61.1/24' } },
      },
      'a',
    );
    await ok(
      {
        method: 'POST',
        url: '/1.0/networks',
        payload: { name: 'nb', config: { 'ipv4.address': '198.18.62.1/24' } },
      },
      'b',
    );
    const created = await ok(
      {
        method: 'POST',
        url: '/1.0/guests',
        payload: {
          name: 'ga',
          image: 'busybox',
          start: true,
          devices: { eth0: { type: 'nic', network: 'na' } },
        },
      },
      'a',
    );
    opOfA = created.metadata.id;
    await w.services.operations.wait(opOfA);
    await w.services.operations.wait(
      (
        await ok(
          { method: 'POST', url: '/1.0/guests', payload: { name: 'gb', image: 'busybox', start: true } },
          'b',
        )
      ).metadata.id,
    );
    await w.services.operations.wait(
      (await ok({ method: 'POST', url: '/1.0/guests/ga/snapshots', payload: { name: 's1' } }, 'a')).metadata
        .id,
    );
    await ok(
      {
        method: 'POST',
        url: '/1.0/storage-pools/default/volumes/custom',
        payload: { name: 'va', config: { size: '16MiB' } },
      },
      'a',
    );
    await ok(
      {
        method: 'POST',
        url: '/1.0/storage-pools/default/volumes/custom',
        payload: { name: 'vb', config: { size: '16MiB' } },
      },
      'b',
    );
    await ok(
      {
        method: 'POST',
        url: '/1.0/networks/na/forwards',
        payload: { listenAddress: '127.0.0.1', listenPort: 8080, target: 'ga', targetPort: 80 },
      },
      'a',
    );
    await ok(
      {
        method: 'POST',
        url: '/1.0/networks/na/acls',
        payload: { direction: 'egress', action: 'drop', destination: '198.18.0.9' },
      },
      'a',
    );
    await w.store.put(keys.image(A_IMAGE.fingerprint), JSON.stringify(A_IMAGE));
    await w.store.put(keys.imageAlias('a-image'), A_IMAGE.fingerprint);
  });
  after(async () => {
    await app.close();
    await w.stop();
  });

  /** Routes on one object of project a; `%N` is its name, replaced by a missing one for the comparison. */
  const routes: Array<{ what: string; missing: string; calls: Call[] }> = [
    {
      what: 'ga',
      missing: 'nobody',
      calls: [
        { method: 'GET', url: '/1.0/guests/%N' },
        { method: 'PATCH', url: '/1.0/guests/%N', payload: { config: { 'user.x': '1' } } },
        { method: 'DELETE', url: '/1.0/guests/%N?force=true' },
        { method: 'GET', url: '/1.0/guests/%N/state' },
        { method: 'PUT', url: '/1.0/guests/%N/state', payload: { action: 'stop' } },
        { method: 'POST', url: '/1.0/guests/%N/exec', payload: { command: ['true'], 'record-output': true } },
        { method: 'GET', url: '/1.0/guests/%N/console?type=log' },
        { method: 'POST', url: '/1.0/guests/%N/console', payload: {} },
        { method: 'GET', url: '/1.0/guests/%N/files?path=/etc/hostname' },
        { method: 'GET', url: '/1.0/guests/%N/snapshots' },
        { method: 'POST', url: '/1.0/guests/%N/snapshots', payload: { name: 's2' } },
        { method: 'GET', url: '/1.0/guests/%N/snapshots/s1' },
        { method: 'DELETE', url: '/1.0/guests/%N/snapshots/s1' },
        { method: 'PUT', url: '/1.0/guests/%N/snapshots/s1', payload: { restore: 's1' } },
        { method: 'POST', url: '/1.0/guests/%N/backups', payload: {} },
        { method: 'GET', url: '/1.0/guests/%N/backups/backup-0123456789abcdef/export' },
        { method: 'DELETE', url: '/1.0/guests/%N/backups/backup-0123456789abcdef' },
        {
          method: 'POST',
          url: '/1.0/guests',
          payload: { name: 'copy1', source: { type: 'copy', source: '%N' } },
        },
        // Cross-project references from b's own objects: a's guest as a target is not there either.
        { method: 'POST', url: '/1.0/networks/nb/attach', payload: { guest: '%N' } },
        {
          method: 'POST',
          url: '/1.0/networks/nb/forwards',
          payload: { listenAddress: '127.0.0.1', listenPort: 9090, target: '%N', targetPort: 80 },
        },
        {
          method: 'POST',
          url: '/1.0/storage-pools/default/volumes/custom/vb/attach',
          payload: { guest: '%N', path: '/mnt' },
        },
      ],
    },
    {
      what: 'na',
      missing: 'nonet',
      calls: [
        { method: 'GET', url: '/1.0/networks/%N' },
        { method: 'PATCH', url: '/1.0/networks/%N', payload: { config: { 'ipv4.nat': 'true' } } },
        { method: 'DELETE', url: '/1.0/networks/%N' },
        {
          method: 'POST',
          url: '/1.0/networks/%N/forwards',
          payload: { listenAddress: '127.0.0.1', listenPort: 8081, target: '198.18.61.9', targetPort: 80 },
        },
        { method: 'DELETE', url: '/1.0/networks/%N/forwards/127.0.0.1:8080' },
        { method: 'POST', url: '/1.0/networks/%N/acls', payload: { direction: 'egress', action: 'drop' } },
        { method: 'DELETE', url: '/1.0/networks/%N/acls/0' },
        { method: 'POST', url: '/1.0/networks/%N/attach', payload: { guest: 'gb' } },
        { method: 'POST', url: '/1.0/networks/%N/detach', payload: { guest: 'gb' } },
        {
          method: 'POST',
          url: '/1.0/guests',
          payload: { name: 'gb2', image: 'busybox', devices: { eth0: { type: 'nic', network: '%N' } } },
        },
      ],
    },
    {
      what: 'va',
      missing: 'novol',
      calls: [
        { method: 'GET', url: '/1.0/storage-pools/default/volumes/custom/%N' },
        {
          method: 'PATCH',
          url: '/1.0/storage-pools/default/volumes/custom/%N',
          payload: { config: { size: '32MiB' } },
        },
        { method: 'DELETE', url: '/1.0/storage-pools/default/volumes/custom/%N' },
        {
          method: 'POST',
          url: '/1.0/storage-pools/default/volumes/custom/%N/attach',
          payload: { guest: 'gb', path: '/mnt' },
        },
        {
          method: 'POST',
          url: '/1.0/storage-pools/default/volumes/custom/%N/detach',
          payload: { guest: 'gb' },
        },
      ],
    },
    {
      what: 'a-image',
      missing: 'no-image',
      calls: [
        { method: 'GET', url: '/1.0/images/%N' },
        { method: 'DELETE', url: '/1.0/images/%N' },
        { method: 'POST', url: '/1.0/guests', payload: { name: 'gb3', image: '%N' } },
      ],
    },
  ];

  test("every route kind answers b about a's object exactly as about one that does not exist, and changes nothing", async () => {
    const revision = await w.store.revision();
    for (const group of routes) {
      for (const c of group.calls) {
        const fill = (name: string): Call => ({
          ...c,
          url: c.url.replaceAll('%N', name),
          ...(c.payload !== undefined && {
            payload: JSON.parse(JSON.stringify(c.payload).replaceAll('%N', name)),
          }),
        });
        const real = await call(fill(group.what), 'b');
        const none = await call(fill(group.missing), 'b');
        const label = `${c.method} ${c.url} (${group.what})`;
        assert.equal(real.statusCode, 404, `${label}: ${real.body}`);
        assert.equal(none.statusCode, 404, `${label} (missing): ${none.body}`);
        assert.equal(
          real.json().error.replaceAll(group.what, 'X'),
          none.json().error.replaceAll(group.missing, 'X'),
          label,
        );
        assert.doesNotMatch(real.json().error, /project/i, label);
      }
    }
    assert.equal(await w.store.revision(), revision, 'a refused request wrote to the store');
  });

  test('the same routes work from a (the scoping is not just refusing everything)', async () => {
    for (const c of [
      { method: 'GET', url: '/1.0/guests/ga' },
      { method: 'GET', url: '/1.0/guests/ga/snapshots/s1' },
      { method: 'GET', url: '/1.0/networks/na' },
      { method: 'GET', url: '/1.0/storage-pools/default/volumes/custom/va' },
      { method: 'GET', url: '/1.0/images/a-image' },
      { method: 'GET', url: `/1.0/operations/${opOfA}` },
    ] as Call[]) {
      const res = await call(c, 'a');
      assert.equal(res.statusCode, 200, `${c.url}: ${res.body}`);
    }
  });

  test('an operation of a is not found from b: show, wait, cancel', async () => {
    for (const c of [
      { method: 'GET', url: `/1.0/operations/${opOfA}` },
      { method: 'GET', url: `/1.0/operations/${opOfA}/wait?timeout=0` },
      { method: 'DELETE', url: `/1.0/operations/${opOfA}` },
    ] as Call[]) {
      const res = await call(c, 'b');
      assert.equal(res.statusCode, 404, `${c.method} ${c.url}: ${res.body}`);
      assert.equal(res.json().error, `Operation ${opOfA} not found`);
    }
  });

  test("lists show only the project's objects; ?all-projects=true shows all, each with its project", async () => {
    const names = async (url: string, project?: string) =>
      (
        (await call({ method: 'GET', url }, project)).json().metadata as Array<{
          name?: string;
          fingerprint?: string;
          project: string;
        }>
      )
        .map((o) => `${o.project}/${o.name ?? o.fingerprint?.slice(0, 4)}`)
        .sort();
    assert.deepEqual(await names('/1.0/guests?recursion=1', 'b'), ['b/gb']);
    assert.deepEqual(await names('/1.0/guests?recursion=1', 'a'), ['a/ga']);
    assert.deepEqual(await names('/1.0/guests?recursion=1'), []);
    assert.deepEqual(await names('/1.0/guests?recursion=1&all-projects=true'), ['a/ga', 'b/gb']);
    assert.deepEqual(await names('/1.0/networks?recursion=1', 'b'), ['b/nb']);
    assert.deepEqual(await names('/1.0/networks?recursion=1&all-projects=true', 'b'), ['a/na', 'b/nb']);
    assert.deepEqual(await names('/1.0/storage-pools/default/volumes/custom?recursion=1', 'b'), ['b/vb']);
    assert.deepEqual(await names('/1.0/images?recursion=1', 'a'), ['a/cdcd']);
    assert.deepEqual(await names('/1.0/images?recursion=1', 'b'), []);
    const ops = (await call({ method: 'GET', url: '/1.0/operations?recursion=1' }, 'b')).json()
      .metadata as Array<{
      project: string;
    }>;
    assert.ok(ops.length > 0 && ops.every((o) => o.project === 'b'));
  });

  test('the list without recursion (names from the project index) names what recursion=1 lists, in every view; a caller of one project sees only its own', async () => {
    const urls = async (url: string, project?: string, authorization?: string) => {
      const sep = url.includes('?') ? '&' : '?';
      const res = await app.inject({
        method: 'GET',
        url: project ? `${url}${sep}project=${project}` : url,
        ...(authorization !== undefined && { headers: { authorization } }),
      });
      assert.equal(res.statusCode, 200, `${url} in ${project}: ${res.body}`);
      return res.json().metadata as unknown[];
    };
    const names = async (query: string, project?: string) =>
      ((await urls(`/1.0/guests?recursion=1${query}`, project)) as Array<{ name: string }>).map(
        (g) => `/1.0/guests/${g.name}`,
      );
    for (const project of [undefined, 'a', 'b']) {
      for (const query of ['', '&all-projects=true', '&target=nowhere']) {
        assert.deepEqual(
          await urls(`/1.0/guests?recursion=0${query}`, project),
          await names(query, project),
          `${project} ${query}`,
        );
      }
    }
    assert.deepEqual(await urls('/1.0/guests', 'a'), ['/1.0/guests/ga']);
    assert.deepEqual(await urls('/1.0/guests?all-projects=true', 'b'), ['/1.0/guests/ga', '/1.0/guests/gb']);
    // A viewer bound to project a, through the one access hook: its own project's names only.
    const auth = createAuthService({
      store: createMemoryStore(),
      assertProjectExists: (n) => w.services.projects.assertExists(n),
    });
    const viewer = await auth.createToken({ name: 'viewer-a', role: 'viewer', projects: ['a'] }, 'test');
    const guarded = await buildServer({ ...w.services, auth }, { auth: { type: 'token', token: 'admin-x' } });
    try {
      const ask = (url: string) =>
        guarded.inject({ method: 'GET', url, headers: { authorization: `Bearer ${viewer.secret}` } });
      const own = await ask('/1.0/guests?project=a');
      assert.equal(own.statusCode, 200, own.body);
      assert.deepEqual(own.json().metadata, ['/1.0/guests/ga']);
      for (const url of ['/1.0/guests?project=b', '/1.0/guests', '/1.0/guests?project=a&all-projects=true']) {
        const refused = await ask(url);
        assert.equal(refused.statusCode, 403, `${url}: ${refused.body}`);
        assert.doesNotMatch(refused.body, /\/1\.0\/guests\//, `${url} names no guest`);
      }
    } finally {
      await guarded.close();
    }
  });

  test('a project that does not exist is a 404; a malformed one a 400; neither changes anything', async () => {
    const revision = await w.store.revision();
    const missing = await call({ method: 'GET', url: '/1.0/guests' }, 'nope');
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json().error, 'Project nope not found: see trivisor project list');
    const bad = await call(
      { method: 'POST', url: '/1.0/guests', payload: { name: 'x', image: 'busybox' } },
      'Bad_Name',
    );
    assert.equal(bad.statusCode, 400);
    assert.match(bad.json().error, /project name "Bad_Name" is not a DNS label/);
    assert.equal(await w.store.revision(), revision);
  });

  test('a quota refusal is a 409 with one line, and nothing is created', async () => {
    const set = await call({
      method: 'PATCH',
      url: '/1.0/projects/b',
      payload: { config: { 'limits.guests': '1' } },
    });
    assert.equal(set.statusCode, 200, set.body);
    const revision = await w.store.revision();
    const res = await call(
      { method: 'POST', url: '/1.0/guests', payload: { name: 'gb9', image: 'busybox' } },
      'b',
    );
    assert.equal(res.statusCode, 409);
    assert.equal(
      res.json().error,
      'Project b would use 2 guests of limits.guests=1: delete something in it or raise the limit (trivisor project set b limits.guests=...)',
    );
    assert.equal(await w.store.revision(), revision);
    const info = (await call({ method: 'GET', url: '/1.0/projects/b' })).json().metadata;
    assert.deepEqual(info.usage, {
      guests: 1,
      memoryBytes: 0,
      cpus: 0,
      diskBytes: 16 * 2 ** 20,
      networks: 1,
    });
  });

  test("through the typed client: exec's WebSocket works in the guest's project, and each project's event stream carries its own events only", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'trivisor-projects-'));
    const server = await buildServer(w.services, { auth: { type: 'none' } });
    try {
      const socketPath = join(dir, 'api.sock');
      await listenUnix(server, socketPath);
      const a = createClient({ socketPath, project: 'a' });
      const b = createClient({ socketPath, project: 'b' });
      const handle = await a.exec('ga', { command: ['echo', 'hi'] });
      const chunks: Buffer[] = [];
      handle.stdout.on('data', (c: Buffer) => chunks.push(c));
      assert.equal(await handle.exit, 0);
      assert.equal(Buffer.concat(chunks).toString(), 'echo hi\n');
      await assert.rejects(b.exec('ga', { command: ['true'] }), /Guest ga not found/);
      const seen: Record<string, string[]> = { a: [], b: [] };
      const subs = await Promise.all(
        (['a', 'b'] as const).map((p) =>
          (p === 'a' ? a : b).events((e) => seen[p]?.push(String(e.metadata.tag)), { types: ['lifecycle'] }),
        ),
      );
      w.services.events.publish({ type: 'lifecycle', project: 'a', action: 'x', metadata: { tag: 'for-a' } });
      w.services.events.publish({ type: 'lifecycle', project: 'b', action: 'x', metadata: { tag: 'for-b' } });
      w.services.events.publish({ type: 'lifecycle', action: 'x', metadata: { tag: 'for-default' } });
      for (let i = 0; i < 100 && (seen.a?.length === 0 || seen.b?.length === 0); i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      await new Promise((r) => setTimeout(r, 50));
      for (const sub of subs) {
        sub.close();
        await sub.closed;
      }
      assert.deepEqual(seen, { a: ['for-a'], b: ['for-b'] });
    } finally {
      await server.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('GET /1.0/projects', () => {
  test('without recursion it answers from the names alone (no usage summed); with recursion=1 from one list of every project', async () => {
    const w = await makeProjectWorld();
    const asked: string[] = [];
    const { projects } = w.services;
    const app = await buildServer(
      {
        ...w.services,
        projects: {
          ...projects,
          list: () => {
            asked.push('list');
            return projects.list();
          },
          names: () => {
            asked.push('names');
            return projects.names();
          },
        },
      },
      { auth: { type: 'none' } },
    );
    try {
      await projects.create({ name: 'p1', config: { 'limits.guests': '3' } });
      const urls = await app.inject({ method: 'GET', url: '/1.0/projects' });
      assert.equal(urls.statusCode, 200, urls.body);
      assert.deepEqual(urls.json().metadata, ['/1.0/projects/default', '/1.0/projects/p1']);
      assert.deepEqual(asked, ['names']);
      const full = await app.inject({ method: 'GET', url: '/1.0/projects?recursion=1' });
      assert.equal(full.statusCode, 200, full.body);
      assert.deepEqual(
        full.json().metadata.map((p: { name: string; config: Record<string, string> }) => [p.name, p.config]),
        [
          ['default', {}],
          ['p1', { 'limits.guests': '3' }],
        ],
      );
      assert.deepEqual(asked, ['names', 'list']);
    } finally {
      await app.close();
      await w.stop();
    }
  });
});
