import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { buildServer } from '../../src/server/build-server.ts';
import { createWebSessions } from '../../src/server/web-sessions.ts';
import { createMemoryStore } from '../../src/store/memory-store.ts';
import { createFakeServices } from '../fakes/fake-services.ts';

const REPO = path.resolve(import.meta.dirname, '../..');
const WEB = path.join(REPO, 'web/src');

/**
 * Mutating routes the UI does not offer, each with its reason (docs/decisions/0026-web-ui.md).
 * A new mutating route fails the test below until the UI offers it or it is listed here.
 */
const NOT_IN_THE_UI: Record<string, string> = {
  'POST /1.0/guests/:name/console/keys': 'the noVNC view types through RFB, key by key, instead',
  'POST /1.0/cluster/members':
    "a joining host's request to a member (member to member, proven by the token's secret): the UI's join is POST /1.0/cluster/join",
  'POST /1.0/cluster/guest-moves/:name':
    "a moved guest's archive, sent by the member that moves it to the destination (member to member): the UI's move is POST /1.0/guests/:name",
  'DELETE /1.0/cluster/guest-moves/:name':
    'the member that moved a guest asks the destination to drop its copy of an undone move (member to member)',
  'POST /1.0/cluster/live-moves/:name':
    "the member that moves a guest live asks the destination to start its QEMU waiting for the migration (member to member): the UI's move is POST /1.0/guests/:name",
  'POST /1.0/cluster/live-moves/:name/finish':
    'the member that moved a guest live tells the destination to run it after the switch-over (member to member)',
};

/** `/1.0/guests/:name/x` as a pattern that matches concrete paths. */
const matcher = (url: string) =>
  new RegExp(
    `^${url
      .replace(/[.]/g, '\\.')
      .replace(/:[^/]+/g, '[^/]+')
      .replace(/\*/g, '.+')}$`,
  );

test('every mutating API route is reachable from the UI, or is in the short list of documented exceptions', async () => {
  const app = await buildServer(createFakeServices(), {
    auth: { type: 'none' },
    web: { sessions: createWebSessions({ store: createMemoryStore() }) },
  });
  await app.ready();
  const mutating = app.accessTable
    .filter((r) => !['GET', 'HEAD', 'OPTIONS'].includes(r.method))
    .map((r) => ({
      key: `${r.method} ${r.url}`,
      method: r.method,
      re: matcher(r.url),
      wildcard: r.url.includes('*'),
    }));
  await app.close();

  // The client methods the UI's views and state call.
  const sources = readdirSync(WEB)
    .filter((f) => /\.tsx?$/.test(f) && f !== 'api.ts')
    .map((f) => readFileSync(path.join(WEB, f), 'utf8'))
    .join('\n');
  const used = [...new Set([...sources.matchAll(/\bapi\.([a-zA-Z]+)\(/g)].map((m) => m[1]!))];

  // Each of them called once through the real browser client, against a recording fetch.
  const requests: Array<{ method: string; path: string }> = [];
  const g = globalThis as Record<string, unknown>;
  const saved = { fetch: g.fetch, XMLHttpRequest: g.XMLHttpRequest, location: g.location };
  g.location = new URL('https://trivisor.test/');
  g.fetch = async (url: string, init: { method?: string }) => {
    requests.push({ method: init.method ?? 'GET', path: new URL(url, 'https://trivisor.test').pathname });
    return new Response(JSON.stringify({ type: 'sync', metadata: { ticket: 't', status: 'Success' } }), {
      headers: { 'content-type': 'application/json' },
    });
  };
  g.XMLHttpRequest = class {
    method = '';
    upload = {};
    open(method: string, url: string) {
      this.method = method;
      requests.push({ method, path: new URL(url, 'https://trivisor.test').pathname });
    }
    setRequestHeader() {}
    send() {}
  };
  try {
    // Loaded by path: web/ is type-checked with the DOM's library (web/tsconfig.json), not here.
    const modulePath = path.join(WEB, 'api.ts');
    const { createWebApi } = (await import(modulePath)) as {
      createWebApi(o: object): Record<string, (...args: unknown[]) => unknown>;
    };
    const api = createWebApi({ project: () => 'default', csrf: () => 'c', onUnauthenticated: () => {} });
    for (const name of used) {
      const method = api[name];
      assert.equal(typeof method, 'function', `the UI calls api.${name}, which the client lacks`);
      // An upload answers through the XMLHttpRequest's events, which the stub never fires: not awaited.
      await Promise.race([
        Promise.resolve(method!('x', 'y', 'z')).catch(() => {}),
        new Promise((resolve) => setTimeout(resolve, 20)),
      ]);
    }
  } finally {
    Object.assign(g, saved);
  }

  const reached = new Set<string>();
  for (const r of requests) {
    // The most specific route that matches, as the router picks: a wildcard only when nothing else does.
    const candidates = mutating.filter((m) => m.method === r.method && m.re.test(r.path));
    const best = candidates.find((m) => !m.wildcard) ?? candidates[0];
    if (best) reached.add(best.key);
  }
  const missing = mutating.map((m) => m.key).filter((k) => !reached.has(k) && !(k in NOT_IN_THE_UI));
  assert.deepEqual(
    missing,
    [],
    'mutating routes the UI cannot reach: offer them, or list them in NOT_IN_THE_UI with why',
  );
  const stale = Object.keys(NOT_IN_THE_UI).filter(
    (k) => !mutating.some((m) => m.key === k) || reached.has(k),
  );
  assert.deepEqual(stale, [], 'NOT_IN_THE_UI names routes that are gone or that the UI reaches now');
});
