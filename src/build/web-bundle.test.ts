import assert from 'node:assert/strict';
import {
  appendFileSync,
  cpSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { buildServer } from '../server/build-server.ts';
import { createWebSessions } from '../server/web-sessions.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { readWebManifest, staleWebInputs, webDistOf } from './web-bundle.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');

describe('the web UI build: made from the sources as they are, never served stale', () => {
  let root: string;
  let app: FastifyInstance;

  before(async () => {
    // A checkout of its own: the web sources, package.json and this checkout's node_modules.
    root = mkdtempSync(path.join(tmpdir(), 'trivisor-web-build-'));
    cpSync(path.join(ROOT, 'web'), path.join(root, 'web'), {
      recursive: true,
      filter: (src) => !src.includes(`${path.sep}dist`),
    });
    cpSync(path.join(ROOT, 'src'), path.join(root, 'src'), { recursive: true });
    cpSync(path.join(ROOT, 'package.json'), path.join(root, 'package.json'));
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(root, 'node_modules'));
    app = await buildServer(createFakeServices(), {
      auth: { type: 'token', token: 't' },
      limits: {},
      web: { sessions: createWebSessions({ store: createMemoryStore() }), uiRoot: root },
    });
    await app.ready();
  });
  after(async () => {
    await app?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const page = async () => {
    const res = await app.inject({ url: '/guests?q=x' });
    assert.equal(res.statusCode, 200, res.body);
    const entry = /src="\/assets\/(main-[A-Z0-9]+\.js)"/.exec(res.body)?.[1];
    assert.ok(entry, res.body);
    return { html: res.body, entry, headers: res.headers };
  };

  test('the first request builds the UI; the page names a content-hashed entry that is served for good', async () => {
    const first = await page();
    assert.match(String(first.headers['content-security-policy']), /default-src 'self'/);
    const manifest = await readWebManifest(root);
    assert.ok(manifest);
    assert.deepEqual(staleWebInputs(root, manifest), []);
    assert.ok(Object.keys(manifest.inputs).includes('web/src/main.tsx'));
    assert.ok(Object.keys(manifest.inputs).some((k) => k.includes('node_modules/preact/')));
    const script = await app.inject({ url: `/assets/${first.entry}` });
    assert.equal(script.statusCode, 200);
    assert.match(String(script.headers['cache-control']), /immutable/);
    assert.match(String(script.headers['content-type']), /javascript/);
    // The first page's JavaScript, gzipped, as the manifest counts it: the budget is 150 KB.
    const own = gzipSync(readFileSync(path.join(webDistOf(root), manifest.dir, first.entry))).length;
    assert.ok(
      manifest.initialGzipBytes >= own && manifest.initialGzipBytes <= 150 * 1024,
      String(manifest.initialGzipBytes),
    );
    // Nothing outside the build is reachable through /assets/.
    for (const bad of ['..%2Fmanifest.json', 'index.html', '.lock', '%2e%2e%2f%2e%2e%2fpackage.json']) {
      assert.equal((await app.inject({ url: `/assets/${bad}` })).statusCode, 404, bad);
    }
  });

  test('a changed source or page template is rebuilt before the next page is served', async () => {
    const before = await page();
    appendFileSync(path.join(root, 'web/src/main.tsx'), "\nconsole.info('trivisor-rebuilt-marker');\n");
    const template = path.join(root, 'web/index.html');
    writeFileSync(
      template,
      readFileSync(template, 'utf8').replace('<title>Trivisor</title>', '<title>Trivisor (new)</title>'),
    );
    const manifest = await readWebManifest(root);
    assert.ok(manifest && staleWebInputs(root, manifest).length >= 2, 'the build is stale now');
    const after = await page();
    assert.notEqual(after.entry, before.entry);
    assert.match(after.html, /<title>Trivisor \(new\)<\/title>/);
    const script = await app.inject({ url: `/assets/${after.entry}` });
    assert.match(script.body, /trivisor-rebuilt-marker/);
    // A page loaded before the rebuild still finds its own entry (kept an hour).
    assert.equal((await app.inject({ url: `/assets/${before.entry}` })).statusCode, 200);
  });

  test('a source that no longer builds is a 503 with one line, never the old page', async () => {
    appendFileSync(path.join(root, 'web/src/main.tsx'), '\nthis is not TypeScript (\n');
    const res = await app.inject({ url: '/' });
    assert.equal(res.statusCode, 503);
    assert.equal(res.body.trim().split('\n').length, 1);
    // API routes are not the page: an unknown one is still the API's 404 (401 without a token).
    assert.equal((await app.inject({ url: '/1.0/nosuch' })).statusCode, 401);
    const known = await app.inject({ url: '/1.0/nosuch', headers: { authorization: 'Bearer t' } });
    assert.equal(known.statusCode, 404);
    assert.equal(known.json().type, 'error');
  });
});
