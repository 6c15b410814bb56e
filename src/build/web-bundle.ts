import { createHash, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';
import type { Plugin } from 'esbuild';

/**
 * The web UI's build (docs/decisions/0026-web-ui.md): one esbuild run over `web/src/`,
 * written to a new directory under `web/dist/` with a manifest that records every input's
 * stamp, as the CLI's bundles do (0013). The daemon serves a build only while every input
 * still has the stamp recorded; otherwise it builds again first, so a stale UI is never served.
 */

/** Bumped when the manifest's shape changes: an older one is then stale. */
export const WEB_MANIFEST_FORMAT = 1;

/** `[size, mtimeMs, ctimeMs]` of an input as it was read for the build. */
type InputStamp = [number, number, number];

/** `web/dist/manifest.json`: the current build and what it was made from. */
export interface WebManifest {
  format: typeof WEB_MANIFEST_FORMAT;
  root: string;
  /** Directory under `web/dist/` holding this build's files. */
  dir: string;
  /** The page's entry script, relative to `dir` (its name carries a content hash). */
  entry: string;
  /** Every file the build read (path relative to `root`, or absolute outside it) → its stamp. */
  inputs: Record<string, InputStamp>;
  /** Gzipped bytes of the JavaScript the first page loads (the entry and its static imports). */
  initialGzipBytes: number;
}

/** Where a checkout's web builds live. */
export const webDistOf = (root: string): string => path.join(root, 'web', 'dist');

const stampOf = (s: { size: number; mtimeMs: number; ctimeMs: number }): InputStamp => [
  s.size,
  s.mtimeMs,
  s.ctimeMs,
];

/** Reads `web/dist/manifest.json`; null when there is none or it is unreadable. */
export async function readWebManifest(root: string): Promise<WebManifest | null> {
  try {
    return JSON.parse(await readFile(path.join(webDistOf(root), 'manifest.json'), 'utf8')) as WebManifest;
  } catch {
    return null;
  }
}

/** Inputs whose stamp differs from the manifest's, or that are gone; empty when the build is fresh. */
export function staleWebInputs(root: string, manifest: WebManifest | null): string[] {
  if (!manifest || manifest.format !== WEB_MANIFEST_FORMAT || manifest.root !== root) return ['(manifest)'];
  const stale: string[] = [];
  for (const [rel, [size, mtimeMs, ctimeMs]] of Object.entries(manifest.inputs)) {
    const s = statSync(path.resolve(root, rel), { throwIfNoEntry: false });
    if (!s || s.size !== size || s.mtimeMs !== mtimeMs || s.ctimeMs !== ctimeMs) stale.push(rel);
  }
  // A new source file changes nothing until something imports it, and then the importer's stamp changes.
  return stale;
}

/** Builds kept this long after they stopped being current (pages still open load lazy chunks from them). */
const KEEP_OLD_BUILDS_MS = 60 * 60_000;

/** Files whose content shapes the build without being imported. */
const SHAPING = ['package.json', 'src/build/web-bundle.ts', 'web/index.html'];

/**
 * Builds the UI of the checkout at `root` into a new directory under `web/dist/` and points
 * the manifest at it (a rename: readers see the old build or the new one, whole). One build
 * at a time per checkout (`web/dist/.lock`, a dead builder's is taken over).
 */
export async function buildWeb(root: string): Promise<WebManifest> {
  const dist = webDistOf(root);
  await mkdir(dist, { recursive: true });
  const unlock = await lock(dist);
  try {
    // Another builder may have just finished what this one was asked for.
    const current = await readWebManifest(root);
    if (current && staleWebInputs(root, current).length === 0) return current;
    return await buildUnlocked(root, dist);
  } finally {
    await unlock();
  }
}

/** The current build, made first when it is missing or stale. */
export async function ensureWebBuild(root: string): Promise<WebManifest> {
  const manifest = await readWebManifest(root);
  if (manifest && staleWebInputs(root, manifest).length === 0) return manifest;
  return buildWeb(root);
}

async function lock(dist: string): Promise<() => Promise<void>> {
  const file = path.join(dist, '.lock');
  for (;;) {
    try {
      await writeFile(file, `${process.pid}\n`, { flag: 'wx' });
      return () => rm(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (holder > 0 && holder !== process.pid && isAlive(holder)) await sleep(100);
    else await rm(file, { force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function buildUnlocked(root: string, dist: string): Promise<WebManifest> {
  // Loaded from node_modules at run time, not bundled into the daemon (its binary is found from
  // its own package), and only when a build is due.
  const esbuild = 'esbuild';
  const mod = (await import(esbuild)) as typeof import('esbuild') & { default?: typeof import('esbuild') };
  const build = mod.build ?? mod.default!.build;
  const inputs: Record<string, InputStamp> = {};
  const key = (file: string) => {
    const rel = path.relative(root, file);
    return rel.startsWith('..') ? file : rel;
  };
  for (const rel of SHAPING) {
    const s = await stat(path.join(root, rel)).catch(() => null);
    if (s) inputs[rel] = stampOf(s);
  }
  const dir = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const outdir = path.join(dist, dir);
  const result = await build({
    absWorkingDir: root,
    entryPoints: { main: 'web/src/main.tsx' },
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'browser',
    target: ['chrome120', 'firefox120', 'safari17'],
    minify: true,
    sourcemap: false,
    jsx: 'automatic',
    jsxImportSource: 'preact',
    entryNames: '[name]-[hash]',
    chunkNames: 'chunk-[hash]',
    assetNames: 'asset-[hash]',
    // Style sheets are text the module that needs them injects: the console's and the charts'
    // arrive with their code, when opened, and nothing blocks the first paint.
    loader: { '.css': 'text', '.woff2': 'file', '.svg': 'file' },
    legalComments: 'none',
    logLevel: 'silent',
    metafile: true,
    define: { 'process.env.NODE_ENV': '"production"' },
    plugins: [stamped((file, s) => (inputs[key(file)] ??= stampOf(s)))],
  });
  if (result.errors.length > 0) throw new Error(result.errors.map((e) => e.text).join('\n'));

  const outputs = result.metafile.outputs;
  const entryOut = Object.entries(outputs).find(([, o]) => o.entryPoint === 'web/src/main.tsx');
  if (!entryOut) throw new Error('esbuild wrote no entry script for web/src/main.tsx');
  // What the first page loads: the entry and its static imports, not the dynamic ones.
  const initial = new Set<string>();
  const visit = (out: string) => {
    if (initial.has(out)) return;
    initial.add(out);
    for (const i of outputs[out]?.imports ?? []) if (i.kind === 'import-statement') visit(i.path);
  };
  visit(entryOut[0]);
  let initialGzipBytes = 0;
  for (const out of initial) initialGzipBytes += gzipSync(await readFile(path.join(root, out))).length;

  const entry = path.relative(outdir, path.join(root, entryOut[0]));
  const template = await readFile(path.join(root, 'web/index.html'), 'utf8');
  const integrity = createHash('sha256')
    .update(await readFile(path.join(outdir, entry)))
    .digest('base64');
  await writeFile(
    path.join(outdir, 'index.html'),
    template.replace(
      '<!--entry-->',
      `<script type="module" src="/assets/${entry}" integrity="sha256-${integrity}"></script>`,
    ),
  );
  const manifest: WebManifest = {
    format: WEB_MANIFEST_FORMAT,
    root,
    dir,
    entry,
    inputs,
    initialGzipBytes,
  };
  const tmp = path.join(dist, `.manifest-${dir}.json`);
  await writeFile(tmp, `${JSON.stringify(manifest)}\n`);
  await rename(tmp, path.join(dist, 'manifest.json'));
  await removeOldBuilds(dist, dir);
  return manifest;
}

/** Records the stamp of each file as read (stat, read, stat again until both agree). */
function stamped(
  record: (file: string, s: { size: number; mtimeMs: number; ctimeMs: number }) => void,
): Plugin {
  return {
    name: 'stamped-web-sources',
    setup(b) {
      b.onLoad({ filter: /\.(tsx?|m?js|css)$/ }, async (args) => {
        for (;;) {
          const before = await stat(args.path);
          const contents = await readFile(args.path);
          const after = await stat(args.path);
          if (before.mtimeMs !== after.mtimeMs || before.size !== after.size) continue;
          record(args.path, before);
          const ext = path.extname(args.path);
          const loader = ext === '.css' ? 'text' : ext === '.tsx' ? 'tsx' : ext === '.ts' ? 'ts' : 'js';
          return { contents, loader };
        }
      });
    },
  };
}

async function removeOldBuilds(dist: string, current: string): Promise<void> {
  for (const name of await readdir(dist)) {
    if (name === current || name === 'manifest.json' || name.startsWith('.')) continue;
    const full = path.join(dist, name);
    const s = await stat(full).catch(() => null);
    if (s && Date.now() - s.mtimeMs > KEEP_OLD_BUILDS_MS) await rm(full, { recursive: true, force: true });
  }
}
