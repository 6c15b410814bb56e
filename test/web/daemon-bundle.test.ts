import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, existsSync, readFileSync, symlinkSync } from 'node:fs';
import { request } from 'node:https';
import path from 'node:path';
import { test } from 'node:test';
import { buildBundles } from '../../src/build/bundles.ts';
import { readWebManifest } from '../../src/build/web-bundle.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { eventually } from '../system/harness.ts';

const REPO = path.resolve(import.meta.dirname, '../..');

const get = (url: string) =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(url, { rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });

/**
 * setup/start runs the daemon from its bundle (decision 0013), where the web build's code is
 * bundled too: it must still find esbuild and build a stale UI, and must not build at start.
 */
test('the daemon from its bundle builds the UI of the sources it is pointed at, when a page is asked for', async () => {
  await buildBundles(REPO);
  const run = await makeRunDir('web-bundle');
  // A checkout of the UI's own in the run dir, never built: the daemon must build it.
  const root = path.join(run, 'checkout');
  cpSync(path.join(REPO, 'web'), path.join(root, 'web'), {
    recursive: true,
    filter: (src) => !src.includes(`${path.sep}dist`),
  });
  cpSync(path.join(REPO, 'src'), path.join(root, 'src'), { recursive: true });
  cpSync(path.join(REPO, 'package.json'), path.join(root, 'package.json'));
  symlinkSync(path.join(REPO, 'node_modules'), path.join(root, 'node_modules'));
  const state = path.join(run, 'state');
  const child = spawn(process.execPath, [path.join(REPO, 'bin/trivisor.mjs'), 'daemon'], {
    env: {
      ...process.env,
      TRIVISOR_DIR: state,
      TRIVISOR_LISTEN: '127.0.0.1:0',
      TRIVISOR_DEFAULT_NETWORK: 'none',
      TRIVISOR_WEB_ROOT: root,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  try {
    const daemonJson = path.join(state, 'daemon.json');
    await eventually(
      'the daemon to be ready',
      () => {
        if (child.exitCode !== null) throw new Error(`the daemon exited: ${stderr}`);
        try {
          return JSON.parse(readFileSync(daemonJson, 'utf8')).url !== undefined;
        } catch {
          return false;
        }
      },
      60_000,
    );
    assert.ok(!existsSync(path.join(root, 'web/dist/manifest.json')), 'nothing is built at start');
    const { url } = JSON.parse(readFileSync(daemonJson, 'utf8')) as { url: string };
    const page = await get(`${url}/guests`);
    assert.equal(page.status, 200, page.body);
    const manifest = await readWebManifest(root);
    assert.ok(manifest, 'the first page request built the UI');
    assert.ok(page.body.includes(`/assets/${manifest.entry}`));
    assert.equal((await get(`${url}/assets/${manifest.entry}`)).status, 200);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    const report = await removeRunDir(run);
    assert.deepEqual(report.left, []);
  }
});
