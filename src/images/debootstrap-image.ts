import { access, chmod, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArgument, unavailable } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { type ImageMetadata, initProperties, SH_INIT_ARGV } from './image-metadata.ts';
import { runStreamed } from './streamed-command.ts';
import { treeArchitecture } from './tree-inspection.ts';

/** Reports build progress: `percent` only ever rises. */
export type ProgressCallback = (percent: number, text: string) => void;

export const DEFAULT_DEBIAN_MIRROR = 'http://deb.debian.org/debian';
const CANDIDATE_SUITES = ['bookworm', 'trixie'];
const DEBOOTSTRAP_SCRIPTS = '/usr/share/debootstrap/scripts';

/** Image sources this host's debootstrap can build, e.g. `debian/bookworm`. */
export async function supportedDebootstrapSources(): Promise<string[]> {
  const sources: string[] = [];
  for (const suite of CANDIDATE_SUITES) {
    try {
      await access(join(DEBOOTSTRAP_SCRIPTS, suite));
      sources.push(`debian/${suite}`);
    } catch {
      // This debootstrap does not know the suite.
    }
  }
  return sources;
}

/** Validates a source such as `debian/bookworm` and returns its suite. */
export async function debootstrapSuite(source: string): Promise<string> {
  const supported = await supportedDebootstrapSources();
  if (!supported.includes(source)) {
    throw invalidArgument(
      `Image source '${source}' is not supported: use one of ${supported.join(', ') || '(none: install debootstrap)'}.`,
    );
  }
  return source.slice('debian/'.length);
}

/**
 * The Debian mirror the host's apt uses (one-line .list or deb822 .sources
 * files), so builds go wherever the host is allowed to reach; deb.debian.org
 * when the host names none.
 */
export async function hostDebianMirror(aptDir = '/etc/apt'): Promise<string> {
  const files = [join(aptDir, 'sources.list')];
  try {
    for (const name of (await readdir(join(aptDir, 'sources.list.d'))).sort()) {
      if (name.endsWith('.list') || name.endsWith('.sources'))
        files.push(join(aptDir, 'sources.list.d', name));
    }
  } catch {
    // No sources.list.d.
  }
  for (const file of files) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    const uris = file.endsWith('.sources') ? deb822Uris(text) : oneLineUris(text);
    const mirror = uris.find((u) => /^https?:\/\//.test(u) && !/security/.test(u) && /\/debian\/?$/.test(u));
    if (mirror) return mirror.replace(/\/$/, '');
  }
  return DEFAULT_DEBIAN_MIRROR;
}

function oneLineUris(text: string): string[] {
  const uris: string[] = [];
  for (const line of text.split('\n')) {
    const words = line
      .replace(/#.*/, '')
      .replace(/\[[^\]]*\]/, '')
      .trim()
      .split(/\s+/);
    if (words[0] === 'deb' && words[1]) uris.push(words[1]);
  }
  return uris;
}

function deb822Uris(text: string): string[] {
  const uris: string[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields: Record<string, string> = {};
    for (const line of stanza.split('\n')) {
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
      if (m?.[1] && m[2] !== undefined) fields[m[1].toLowerCase()] = m[2].trim();
    }
    if (!(fields.types ?? '').split(/\s+/).includes('deb') || fields.enabled === 'no') continue;
    uris.push(...(fields.uris ?? '').split(/\s+/).filter(Boolean));
  }
  return uris;
}

/**
 * Turns debootstrap's `I:` lines into a rising percentage. Package phases are
 * weighted by how long they take; the package count is known only once
 * retrieval ends, so retrieval creeps towards its end instead of jumping.
 */
export function debootstrapProgress(onProgress: ProgressCallback | undefined): (line: string) => void {
  const phases = {
    Retrieving: [5, 45],
    Validating: [5, 45],
    Extracting: [45, 55],
    Unpacking: [55, 75],
    Configuring: [75, 98],
  } as const;
  let percent = 0;
  let retrieved = 0;
  let total = 0;
  const counts: Record<string, number> = {};
  const report = (p: number, text: string): void => {
    percent = Math.max(percent, Math.min(100, Math.floor(p)));
    onProgress?.(percent, text);
  };
  return (line) => {
    const m = /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (\S+)/.exec(line);
    if (m?.[1] && m[2]) {
      const phase = m[1] as keyof typeof phases;
      const what = m[2].replace(/\.\.\.$/, '');
      if (what === 'InRelease' || what === 'Release' || what === 'Packages')
        return report(percent + 1, line.slice(3));
      if (what === 'required' || what === 'base') return report(percent, line.slice(3));
      const [from, to] = phases[phase];
      if (phase === 'Retrieving' || phase === 'Validating') {
        if (phase === 'Validating') retrieved++;
        // ~90 packages in minbase; approach the phase end without reaching it.
        return report(from + (to - from) * (1 - Math.exp(-retrieved / 60)), line.slice(3));
      }
      total = Math.max(total, retrieved, 1);
      counts[phase] = (counts[phase] ?? 0) + 1;
      return report(from + ((to - from) * Math.min(counts[phase] ?? 0, total)) / total, line.slice(3));
    }
    if (line.startsWith('I: Base system installed successfully')) return report(98, line.slice(3));
    if (line.startsWith('I: ')) return report(percent, line.slice(3));
  };
}

/**
 * Builds a Debian minbase tree with debootstrap into `targetDir` (must not
 * exist or be empty), then makes it fit to be a guest template: its own
 * hostname and hosts file, no copy of the host's resolv.conf, no package cache.
 */
export async function buildDebootstrapRootfs(
  targetDir: string,
  options: {
    runner: ProcessRunner;
    source: string;
    mirror?: string;
    onProgress?: ProgressCallback;
    signal?: AbortSignal;
  },
): Promise<ImageMetadata> {
  const suite = await debootstrapSuite(options.source);
  const mirror = options.mirror ?? (await hostDebianMirror());
  const onLine = debootstrapProgress(options.onProgress);
  options.onProgress?.(0, `Bootstrapping Debian ${suite} from ${mirror}`);
  await runStreamed(options.runner, ['debootstrap', '--variant=minbase', suite, targetDir, mirror], {
    onLine,
    ...(options.signal ? { signal: options.signal } : {}),
    env: { DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' },
    onFailure: ({ code, tail }) =>
      unavailable(
        `debootstrap of Debian ${suite} from ${mirror} failed (exit ${code}): ${tail.split('\n').slice(-2).join(' ')}; check that the Debian archive is reachable and retry.`,
      ),
  });
  options.signal?.throwIfAborted();

  const hostname = 'debian';
  await writeEtc(targetDir, 'hostname', `${hostname}\n`);
  await writeEtc(
    targetDir,
    'hosts',
    `127.0.0.1 localhost\n127.0.1.1 ${hostname}\n::1 localhost ip6-localhost ip6-loopback\n`,
  );
  // debootstrap copies the host's resolv.conf: guests get theirs from their network, not ours.
  await writeEtc(targetDir, 'resolv.conf', '');
  for (const dir of ['var/cache/apt/archives', 'var/lib/apt/lists']) {
    const path = join(targetDir, dir);
    for (const name of await readdir(path).catch(() => [] as string[])) {
      if (name !== 'partial' && name !== 'lock') await rm(join(path, name), { recursive: true, force: true });
    }
  }
  options.onProgress?.(99, 'Tidying the tree');

  return {
    description: `Debian ${suite} (minbase)`,
    os: 'debian',
    release: suite,
    architecture: await treeArchitecture(targetDir),
    source: 'debootstrap',
    properties: initProperties(SH_INIT_ARGV, 'SIGTERM'),
  };
}

async function writeEtc(root: string, name: string, content: string): Promise<void> {
  const path = join(root, 'etc', name);
  await rm(path, { force: true });
  await writeFile(path, content);
  await chmod(path, 0o644);
}
