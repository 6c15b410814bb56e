import { randomBytes } from 'node:crypto';
import { constants as fsConstants, statSync } from 'node:fs';
import { access, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import type { Loader, Plugin } from 'esbuild';

/**
 * The pre-compiled CLI and daemon (docs/decisions/0013-fast-cli.md): one esbuild run
 * over the TypeScript sources, written under `build/`, and a manifest that says
 * which files went in. `bin/trivisor.mjs` runs a bundle only while every input
 * still has the size, mtime and ctime recorded here; otherwise it rebuilds (or
 * runs the sources). The manifest format is read by that plain-JS launcher too.
 */

/** Entry points, by the name the launcher asks for. */
export const BUNDLE_ENTRIES = { cli: 'src/cli/main.ts', daemon: 'src/main.ts' } as const;

/** Bumped when the manifest's shape changes: an older launcher then treats it as stale. */
export const MANIFEST_FORMAT = 1;

/** `[size, mtimeMs, ctimeMs]` of an input as it was read for the build. */
export type InputStamp = [number, number, number];

/** `build/manifest.json`: where the current bundles are and what they were made from. */
export interface BundleManifest {
  format: typeof MANIFEST_FORMAT;
  /** The checkout the bundles were made from (absolute paths are baked into them). */
  root: string;
  /** Directory under `build/` holding this build's files. */
  dir: string;
  /** Entry name → file in `dir`. */
  entries: Record<keyof typeof BUNDLE_ENTRIES, string>;
  /** Per entry: each file it was made from (path relative to `root`) → its stamp when read. */
  inputs: Record<keyof typeof BUNDLE_ENTRIES, Record<string, InputStamp>>;
}

/**
 * How an input is named in the manifest: relative to the checkout, or absolute when it lies
 * outside it (a node_modules that is a symlink); `path.resolve(root, key)` finds it either way.
 */
const inputKey = (root: string, file: string): string => {
  const rel = path.relative(root, file);
  return rel.startsWith('..') ? file : rel;
};

/** Where the bundles of a checkout live. */
export const buildDirOf = (root: string): string => path.join(root, 'build');

const stampOf = (s: { size: number; mtimeMs: number; ctimeMs: number }): InputStamp => [
  s.size,
  s.mtimeMs,
  s.ctimeMs,
];

/**
 * Inputs of `entry` whose stamp differs from the manifest's (or that are gone); empty
 * when that bundle is fresh. `bin/trivisor.mjs` has the same check in plain JavaScript.
 */
export function staleInputs(
  root: string,
  manifest: BundleManifest,
  entry: keyof typeof BUNDLE_ENTRIES,
): string[] {
  const inputs =
    manifest.format === MANIFEST_FORMAT && manifest.root === root ? manifest.inputs[entry] : null;
  if (!inputs) return ['(manifest)'];
  const stale: string[] = [];
  for (const [rel, [size, mtimeMs, ctimeMs]] of Object.entries(inputs)) {
    const s = statSync(path.resolve(root, rel), { throwIfNoEntry: false });
    if (!s || s.size !== size || s.mtimeMs !== mtimeMs || s.ctimeMs !== ctimeMs) stale.push(rel);
  }
  return stale;
}

/** Reads `build/manifest.json`; null when there is none (or it is unreadable). */
export async function readManifest(root: string): Promise<BundleManifest | null> {
  try {
    return JSON.parse(await readFile(path.join(buildDirOf(root), 'manifest.json'), 'utf8')) as BundleManifest;
  } catch {
    return null;
  }
}

const LOADERS: Record<string, Loader> = {
  '.ts': 'ts',
  '.mts': 'ts',
  '.cts': 'ts',
  '.js': 'js',
  '.mjs': 'js',
  '.cjs': 'js',
  '.json': 'json',
};

/** Build directories not in use that are at least this old are removed by the next build. */
const KEEP_OLD_BUILDS_MS = 10 * 60_000;

/**
 * Bundles the CLI and the daemon of the checkout at `root` into a new directory under
 * `build/`, then points `build/manifest.json` at it (a rename, so a concurrent reader sees
 * the old build or the new one, whole). One build at a time: with `wait: false` (the
 * launcher) it gives up at once when another runs, and that command runs the sources
 * rather than queue behind it; many commands started at once on a stale bundle would
 * otherwise each run esbuild.
 */
export async function buildBundles(root: string, options: { wait?: boolean } = {}): Promise<BundleManifest> {
  const buildDir = buildDirOf(root);
  await mkdir(buildDir, { recursive: true });
  // Fail before the esbuild run when the checkout is read-only: the launcher then runs the sources.
  await access(buildDir, fsConstants.W_OK);
  const unlock = await lockBuilds(buildDir, options.wait ?? true);
  try {
    return await buildUnlocked(root, buildDir);
  } finally {
    await unlock();
  }
}

/**
 * Takes `build/.lock` (it holds the builder's pid; a dead builder's is taken over). It only
 * keeps builds from piling up: two that slip past it at once are still safe.
 */
async function lockBuilds(buildDir: string, wait: boolean): Promise<() => Promise<void>> {
  const lock = path.join(buildDir, '.lock');
  for (;;) {
    try {
      await writeFile(lock, `${process.pid}\n`, { flag: 'wx' });
      return () => rm(lock, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
    if (holder > 0 && isAlive(holder)) {
      if (!wait) throw new Error(`Another build of the bundles (pid ${holder}) is running`);
      await sleep(100);
    } else {
      await rm(lock, { force: true });
    }
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

async function buildUnlocked(root: string, buildDir: string): Promise<BundleManifest> {
  const { build } = await import('esbuild');

  const stamps: Record<string, InputStamp> = {};
  const record = (file: string, s: { size: number; mtimeMs: number; ctimeMs: number }) => {
    const key = inputKey(root, file);
    if (!(key in stamps)) stamps[key] = stampOf(s);
  };
  // Files that shape the output without being modules: stamped before the build, so an edit
  // made while it runs leaves a stamp that no longer matches.
  const shaping = ['package.json', 'tsconfig.json', 'src/build/bundles.ts'];
  for (const rel of shaping) {
    const s = await stat(path.join(root, rel)).catch(() => null);
    if (s) record(path.join(root, rel), s);
  }

  const dir = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const outdir = path.join(buildDir, dir);
  const result = await build({
    absWorkingDir: root,
    entryPoints: BUNDLE_ENTRIES,
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node24',
    outExtension: { '.js': '.mjs' },
    chunkNames: 'chunk-[hash]',
    // Readable output: a stack trace names real functions and the `// src/...` markers say
    // which file a line came from; minifying saved no measurable start-up time.
    legalComments: 'none',
    logLevel: 'silent',
    metafile: true,
    // esbuild's CommonJS helpers call `require`, which an ES module lacks.
    banner: {
      js: "import { createRequire as __trivisorRequire } from 'node:module';\nconst require = __trivisorRequire(import.meta.url);",
    },
    // etcd3 loads its .proto files from its own directory at run time (decision 0025).
    external: ['etcd3'],
    plugins: [builtinsByRequire(), stampedSources(root, record)],
  });
  if (result.errors.length > 0) throw new Error(result.errors.map((e) => e.text).join('\n'));

  // Each entry's inputs: those of its file and of every chunk it may load, statically or
  // later (ws for exec), but not another entry's: the CLI imports the daemon only for
  // `trivisor daemon`, and the launcher checks the daemon's inputs then. So `list` stats
  // about 130 files, not 800.
  const outputs = result.metafile.outputs;
  const entryFiles = new Set(
    Object.keys(BUNDLE_ENTRIES).map((e) => path.relative(root, path.join(outdir, `${e}.mjs`))),
  );
  const inputsOf = (entry: string): Record<string, InputStamp> => {
    const files = new Set(shaping);
    const seen = new Set<string>();
    const visit = (out: string) => {
      if (seen.has(out)) return;
      seen.add(out);
      const o = outputs[out];
      if (!o) return;
      for (const input of Object.keys(o.inputs)) files.add(inputKey(root, path.resolve(root, input)));
      for (const i of o.imports) if (!i.external && !entryFiles.has(i.path)) visit(i.path);
    };
    visit(path.relative(root, path.join(outdir, entry)));
    const own: Record<string, InputStamp> = {};
    for (const rel of files) {
      const stamp = stamps[rel];
      if (stamp) own[rel] = stamp;
    }
    return own;
  };
  // A package's package.json steers how its files resolve: a changed one must rebuild too.
  const packageJsonOf = (key: string): string | null => {
    const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(key);
    return m ? `${m[1]}/package.json` : null;
  };
  for (const key of Object.keys(stamps)) {
    const pkg = packageJsonOf(key);
    if (pkg && !(pkg in stamps)) {
      const s = await stat(path.resolve(root, pkg)).catch(() => null);
      if (s) record(path.resolve(root, pkg), s);
    }
  }
  const withPackages = (own: Record<string, InputStamp>): Record<string, InputStamp> => {
    for (const key of Object.keys(own)) {
      const pkg = packageJsonOf(key);
      const stamp = pkg ? stamps[pkg] : undefined;
      if (pkg && stamp) own[pkg] = stamp;
    }
    return own;
  };

  const manifest: BundleManifest = {
    format: MANIFEST_FORMAT,
    root,
    dir,
    entries: { cli: 'cli.mjs', daemon: 'daemon.mjs' },
    inputs: { cli: withPackages(inputsOf('cli.mjs')), daemon: withPackages(inputsOf('daemon.mjs')) },
  };
  const tmp = path.join(buildDir, `.manifest-${dir}.json`);
  await writeFile(tmp, `${JSON.stringify(manifest)}\n`);
  await rename(tmp, path.join(buildDir, 'manifest.json'));
  await removeOldBuilds(buildDir, dir);
  return manifest;
}

/**
 * Node's ES-module view of a builtin reads every export up front, and `node:http`'s
 * include lazy getters that load undici (about 80 internal modules, ~40 ms): the bundle
 * `require`s builtins instead, which reads only what the code uses.
 */
function builtinsByRequire(): Plugin {
  const names = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);
  return {
    name: 'builtins-by-require',
    setup(b) {
      b.onResolve({ filter: /^[a-z_:/]+$/ }, (args) => {
        if (!names.has(args.path) && !args.path.startsWith('node:')) return undefined;
        return args.kind === 'require-call'
          ? { path: args.path, external: true }
          : { path: args.path, namespace: 'builtin' };
      });
      b.onLoad({ filter: /.*/, namespace: 'builtin' }, (args) => ({
        contents: `module.exports = require(${JSON.stringify(args.path)});`,
        loader: 'js',
      }));
    },
  };
}

/**
 * Loads every module itself so that the stamp recorded is the one of the bytes bundled
 * (stat, read, stat again until both agree). In the sources, `import.meta.url` and
 * friends become the source file's own, so paths relative to a module keep pointing
 * into the checkout from inside a bundle.
 */
function stampedSources(
  root: string,
  record: (file: string, s: { size: number; mtimeMs: number; ctimeMs: number }) => void,
): Plugin {
  const srcDir = path.join(root, 'src') + path.sep;
  return {
    name: 'stamped-sources',
    setup(b) {
      b.onLoad({ filter: /\.(m|c)?(t|j)s$|\.json$/ }, async (args) => {
        const loader = LOADERS[path.extname(args.path)];
        if (!loader) return undefined;
        for (;;) {
          const before = await stat(args.path);
          let contents = await readFile(args.path, 'utf8');
          const after = await stat(args.path);
          if (before.mtimeMs !== after.mtimeMs || before.size !== after.size) continue;
          record(args.path, before);
          if (args.path.startsWith(srcDir)) contents = withOwnLocation(contents, args.path);
          return { contents, loader };
        }
      });
    },
  };
}

function withOwnLocation(contents: string, file: string): string {
  return contents
    .replaceAll('import.meta.url', JSON.stringify(pathToFileURL(file).href))
    .replaceAll('import.meta.filename', JSON.stringify(file))
    .replaceAll('import.meta.dirname', JSON.stringify(path.dirname(file)));
}

async function removeOldBuilds(buildDir: string, current: string): Promise<void> {
  for (const name of await readdir(buildDir)) {
    if (name === current || name === 'manifest.json' || name === '.lock') continue;
    const full = path.join(buildDir, name);
    const s = await stat(full).catch(() => null);
    // Recent ones may still be in use: a process started from one loads its chunks lazily.
    if (s && Date.now() - s.mtimeMs > KEEP_OLD_BUILDS_MS) await rm(full, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const root = path.resolve(import.meta.dirname, '../..');
  const manifest = await buildBundles(root);
  process.stdout.write(
    `Bundled ${Object.keys(manifest.inputs.daemon).length} files into ${path.join(buildDirOf(root), manifest.dir)}\n`,
  );
}
