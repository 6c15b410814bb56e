// Runs the Trivisor CLI (and `trivisor daemon`) from the pre-compiled bundle under build/
// while that bundle is fresh, else rebuilds it, else runs the TypeScript sources.
// See docs/decisions/0013-fast-cli.md.
//
// Plain JavaScript on purpose: a .ts file here would make Node load its type stripper on
// every run, which is much of what the bundle saves. For the same reason it does only
// what each run needs: one JSON read and a stat per input of the command's bundle.
// It also runs under an old Node (whatever `node` the PATH has), to say what is wrong.
import { spawnSync } from 'node:child_process';
import { readFileSync, realpathSync, statSync } from 'node:fs';
import nodeModule from 'node:module';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const MIN_NODE_MAJOR = 24;
const root = dirname(dirname(fileURLToPath(import.meta.url)));
const buildDir = join(root, 'build');
const args = process.argv.slice(2);

if (Number(process.versions.node.split('.')[0]) < MIN_NODE_MAJOR) runWithNewerNode();

// Node 24 before 24.3 warned that type stripping (and node:sqlite) are experimental; the
// sources run here on purpose, so those warnings are noise. Others still print.
const [printWarning] = process.listeners('warning');
if (printWarning) {
  process.removeListener('warning', printWarning);
  process.on('warning', (w) => w.name === 'ExperimentalWarning' || printWarning(w));
}

// TRIVISOR_NO_BUNDLE=1 runs the sources (to debug, or to compare with the bundle).
const bundleDir = process.env.TRIVISOR_NO_BUNDLE ? null : await freshBundleDir();
let cli = pathToFileURL(join(root, 'src/cli/main.ts')).href;
if (bundleDir) {
  // V8's compiled code of the bundle, kept beside it (it goes when the build does).
  nodeModule.enableCompileCache?.(join(bundleDir, '.compile-cache'));
  cli = pathToFileURL(join(bundleDir, 'cli.mjs')).href;
}
const { runCli } = await import(cli);
await runCli(args);

/**
 * The current build's directory when the bundles this run needs (the CLI, plus the daemon
 * for `trivisor daemon`) were made from the sources as they are now; otherwise a new build's,
 * or null when none can be made (no esbuild, a read-only checkout, a syntax error).
 */
async function freshBundleDir() {
  const entries = args.includes('daemon') ? ['cli', 'daemon'] : ['cli'];
  const manifest = readManifest();
  if (manifest && entries.every((e) => isFresh(manifest, e))) return join(buildDir, manifest.dir);
  try {
    const { buildBundles } = await import(pathToFileURL(join(root, 'src/build/bundles.ts')).href);
    return join(buildDir, (await buildBundles(root, { wait: false })).dir);
  } catch {
    return null;
  }
}

function readManifest() {
  try {
    return JSON.parse(readFileSync(join(buildDir, 'manifest.json'), 'utf8'));
  } catch {
    return null;
  }
}

// Same check as staleInputs() in src/build/bundles.ts: size, mtime and ctime of every input.
// ctime cannot be set back, so a file copied in with an old mtime still counts as changed.
function isFresh(manifest, entry) {
  const inputs = manifest.format === 1 && manifest.root === root ? manifest.inputs?.[entry] : null;
  if (!inputs) return false;
  for (const rel in inputs) {
    const [size, mtimeMs, ctimeMs] = inputs[rel];
    const s = statSync(resolve(root, rel), { throwIfNoEntry: false });
    if (!s || s.size !== size || s.mtimeMs !== mtimeMs || s.ctimeMs !== ctimeMs) return false;
  }
  return true;
}

/** Re-runs this launcher with a Node >= 24 found elsewhere, or says none was found. */
function runWithNewerNode() {
  const self = realpathSync(process.execPath);
  const candidates = [
    process.env.TRIVISOR_NODE,
    '/opt/trivisor-node/bin/node',
    ...(process.env.PATH ?? '').split(delimiter).map((d) => d && join(d, 'node')),
  ];
  for (const node of candidates) {
    if (!node || safeRealpath(node) === self || safeRealpath(node) === null) continue;
    const v = spawnSync(node, ['-p', 'process.versions.node'], { encoding: 'utf8' });
    if (v.status !== 0 || Number(v.stdout.split('.')[0]) < MIN_NODE_MAJOR) continue;
    const r = spawnSync(node, [fileURLToPath(import.meta.url), ...args], { stdio: 'inherit' });
    if (r.signal) process.kill(process.pid, r.signal);
    process.exit(r.status ?? 1);
  }
  process.stderr.write(
    `Error: trivisor needs Node.js ${MIN_NODE_MAJOR} or newer (this is ${process.version} at ${process.execPath}): ` +
      'run setup/start, which installs it under /opt/trivisor-node, or put one on PATH\n',
  );
  process.exit(1);
}

function safeRealpath(file) {
  try {
    return realpathSync(file);
  } catch {
    return null;
  }
}
