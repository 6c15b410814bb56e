import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildBundles, readManifest, staleInputs } from './bundles.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DESCRIPTION = 'Trivisor: vm, pvm and ct guests from one control plane';

/** Runs bin/trivisor.mjs of `root` with this process's Node (>= 24). */
function launch(root: string, args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [path.join(root, 'bin/trivisor.mjs'), ...args], {
    encoding: 'utf8',
    env: { ...process.env, TRIVISOR_DIR: path.join(root, 'no-daemon'), ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('the bundle in this checkout', () => {
  test('bin/trivisor leaves a bundle made from the sources as they are, and it prints what the sources print', async () => {
    const bundled = launch(ROOT, ['--help']);
    assert.equal(bundled.code, 0, bundled.stderr);
    const manifest = await readManifest(ROOT);
    assert.ok(manifest, 'bin/trivisor made no build/manifest.json: is esbuild installed (npm install)?');
    assert.deepEqual(staleInputs(ROOT, manifest, 'cli'), []);
    const sources = launch(ROOT, ['--help'], { TRIVISOR_NO_BUNDLE: '1' });
    assert.equal(sources.code, 0, sources.stderr);
    assert.equal(bundled.stdout, sources.stdout);
    assert.match(bundled.stdout, new RegExp(DESCRIPTION));
  });

  test("the CLI's inputs include what it loads only later (ws, for exec), not the daemon's", async () => {
    launch(ROOT, ['--help']);
    const manifest = await readManifest(ROOT);
    assert.ok(manifest);
    const cli = Object.keys(manifest.inputs.cli);
    assert.ok(
      cli.some((k) => k.endsWith('node_modules/ws/lib/websocket.js')),
      'ws is among the inputs',
    );
    assert.ok(cli.includes('src/client/transport.ts'));
    assert.ok(!cli.includes('src/main.ts') && !cli.some((k) => k.includes('node_modules/fastify/')));
    assert.ok(Object.keys(manifest.inputs.daemon).includes('src/main.ts'));
  });

  test('`trivisor daemon` checks (and makes) the daemon bundle too', async () => {
    const run = launch(ROOT, ['daemon', '--help']);
    assert.equal(run.code, 0, run.stderr);
    const manifest = await readManifest(ROOT);
    assert.ok(manifest);
    assert.deepEqual(staleInputs(ROOT, manifest, 'daemon'), []);
  });
});

describe('a copy of the checkout whose sources change', () => {
  let root: string;

  before(async () => {
    root = mkdtempSync(path.join(tmpdir(), 'trivisor-bundle-'));
    for (const entry of ['src', 'bin', 'package.json', 'tsconfig.json']) {
      cpSync(path.join(ROOT, entry), path.join(root, entry), { recursive: true });
    }
    mkdirSync(path.join(root, 'node_modules'));
    for (const name of readdirSync(path.join(ROOT, 'node_modules'))) {
      symlinkSync(path.join(ROOT, 'node_modules', name), path.join(root, 'node_modules', name));
    }
    await buildBundles(root);
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  const mainTs = () => path.join(root, 'src/cli/main.ts');

  test('an edit that keeps the size and the mtime still counts: the launcher rebuilds and runs the edit', async () => {
    const before = await readManifest(root);
    assert.ok(before);
    assert.deepEqual(staleInputs(root, before, 'cli'), []);
    assert.match(launch(root, ['--help']).stdout, new RegExp(DESCRIPTION));

    // Same length, mtime set back: only the ctime tells (as after `cp -p` or `tar x` of older files).
    const { mtime, atime } = statSync(mainTs());
    const edited = DESCRIPTION.replace('one control plane', 'one CONTROL PLANE');
    writeFileSync(mainTs(), readFileSync(mainTs(), 'utf8').replace(DESCRIPTION, edited));
    utimesSync(mainTs(), atime, mtime);
    assert.deepEqual(staleInputs(root, before, 'cli'), ['src/cli/main.ts']);

    const run = launch(root, ['--help']);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /one CONTROL PLANE/);
    const rebuilt = await readManifest(root);
    assert.ok(rebuilt);
    assert.notEqual(rebuilt.dir, before.dir);
    assert.deepEqual(staleInputs(root, rebuilt, 'cli'), []);
  });

  test('a change only the daemon uses leaves the CLI bundle fresh and the daemon bundle stale', async () => {
    const manifest = await readManifest(root);
    assert.ok(manifest);
    const daemonOnly = path.join(root, 'src/store/sqlite-store.ts');
    writeFileSync(daemonOnly, `${readFileSync(daemonOnly, 'utf8')}\n`);
    assert.deepEqual(staleInputs(root, manifest, 'cli'), []);
    assert.deepEqual(staleInputs(root, manifest, 'daemon'), ['src/store/sqlite-store.ts']);
  });

  test('when no bundle can be made (no esbuild), a stale one is not run: the sources are', async () => {
    const before = await readManifest(root);
    assert.ok(before);
    rmSync(path.join(root, 'node_modules/esbuild'));
    writeFileSync(mainTs(), readFileSync(mainTs(), 'utf8').replace('one CONTROL PLANE', 'the sources ran'));

    const run = launch(root, ['--help']);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /the sources ran/);
    assert.equal((await readManifest(root))?.dir, before.dir);
  });
});
