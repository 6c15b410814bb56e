import { type ChildProcess, execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readlinkSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { overlayRootfsArgv } from '../src/drivers/ct/overlay-rootfs.ts';
import { cgroupParentOf } from '../src/drivers/guest-cgroup.ts';
import { type ApiResponse, type Daemon, sleep } from '../test/system/harness.ts';

const REPO = path.resolve(import.meta.dirname, '..');

/**
 * Where results go: bench/results, or TRIVISOR_BENCH_RESULTS (the quick run and its test write
 * elsewhere, so that a tiny run never replaces a measured figure).
 */
export const RESULTS_DIR = process.env.TRIVISOR_BENCH_RESULTS
  ? path.resolve(process.env.TRIVISOR_BENCH_RESULTS)
  : path.resolve(import.meta.dirname, 'results');

/**
 * Quick mode (`npm run bench -- --quick`, TRIVISOR_BENCH_QUICK=1): benchmarks whose sizes are not
 * arguments shrink them, so that every benchmark and its baseline still run end to end in seconds.
 */
export const QUICK = process.env.TRIVISOR_BENCH_QUICK === '1';

// Read when a benchmark starts (every one imports this module first), for its provenance.
const loadAtStart = os.loadavg();

/** The facts every result carries: the machine, its load around the run, the commit measured. */
export interface Provenance {
  kernel: string;
  cpus: number;
  cpuModel: string;
  memoryBytes: number;
  loadBefore: number[];
  loadAfter: number[];
  commit: string;
  /** Uncommitted changes under bench/ or src/ when measured: the figure is not exactly `commit`'s. */
  uncommittedChanges: boolean;
  quick: boolean;
}

function git(args: string[]): string {
  try {
    return execFileSync('git', ['-C', REPO, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return '';
  }
}

export function provenance(): Provenance {
  const cpus = os.cpus();
  return {
    kernel: os.release(),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryBytes: os.totalmem(),
    loadBefore: loadAtStart.map((x) => Math.round(x * 100) / 100),
    loadAfter: os.loadavg().map((x) => Math.round(x * 100) / 100),
    commit: git(['rev-parse', '--short=12', 'HEAD']) || 'unknown',
    uncommittedChanges: git(['status', '--porcelain', '--', 'bench', 'src']) !== '',
    quick: QUICK,
  };
}

/** Percentile of a sample (nearest rank). */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}

/** Runs an async API action that returns an operation and waits for it; throws on failure. */
export async function runOperation(
  d: Daemon,
  method: string,
  urlPath: string,
  body?: unknown,
): Promise<void> {
  const r = await d.api(method, urlPath, body);
  if (r.status !== 202) throw new Error(`${method} ${urlPath}: ${r.status} ${r.text}`);
  const done: ApiResponse = await d.api('GET', `${r.body.operation}/wait?timeout=600`);
  const op = done.body.metadata as { status: string; error: string | null };
  if (op.status !== 'Success') throw new Error(`${method} ${urlPath}: ${op.status} ${op.error}`);
}

/** Runs `fn` over items with at most `limit` in flight. */
export async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const item = items[next++] as T;
        await fn(item);
      }
    }),
  );
}

/** Host memory in use (MemTotal − MemAvailable), bytes. */
export function hostUsedBytes(): number {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  return (kb('MemTotal') - kb('MemAvailable')) * 1024;
}

/** Resident memory of a process, bytes (0 if gone). */
export function rssBytes(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/**
 * Lets the kernel settle (reclaim, RCU) before a memory reading. Not in quick mode: its readings
 * are no measurement, and dropping the whole host's caches slows every other run on the machine.
 */
export async function settle(): Promise<void> {
  if (QUICK) return;
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  await sleep(1500);
}

export function writeResult(name: string, result: Record<string, unknown>): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${name}.json`);
  const stamped = { ...result, provenance: provenance(), measuredAt: new Date().toISOString() };
  writeFileSync(file, `${JSON.stringify(stamped, null, 2)}\n`);
  return file;
}

export const ms = (ns: bigint | number): number => Number(ns) / 1e6;

/**
 * Proportional set size of a process, bytes (0 if gone): shared pages (the busybox
 * binary every guest maps) are divided among their users, so sums over guests add up.
 */
export function pssBytes(pid: number): number {
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    return Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/**
 * PSS of every process in the guest's pids cgroup (ct, pvm and vm guests each run in one).
 * Processes that share one address space (UML's kernel and its I/O helper, made with CLONE_VM)
 * report the same smaps_rollup: each such address space is counted once (before 2026-12-05 a
 * pvm guest's kernel was counted twice).
 */
export function guestPss(stateDir: string, guest: string): number {
  const procs = readFileSync(`/sys/fs/cgroup/pids${cgroupParentOf(stateDir)}/${guest}/cgroup.procs`, 'utf8');
  const seen = new Set<string>();
  let sum = 0;
  for (const pid of procs.split('\n').filter(Boolean)) {
    let rollup: string;
    try {
      rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    } catch {
      continue;
    }
    if (seen.has(rollup)) continue;
    seen.add(rollup);
    sum += Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0) * 1024;
  }
  return sum;
}

/**
 * Bytes of a running pvm guest's RAM file the host holds: the used space of the UML jail's
 * memory tmpfs (uml-jail.ts), seen through a jailed process' root. 0 when no process shows it.
 */
export function umlRamBytes(stateDir: string, guest: string): number {
  const procs = readFileSync(`/sys/fs/cgroup/pids${cgroupParentOf(stateDir)}/${guest}/cgroup.procs`, 'utf8');
  for (const pid of procs.split('\n').filter(Boolean)) {
    try {
      const s = statfsSync(`/proc/${pid}/root/.uml/memory`);
      return (s.blocks - s.bfree) * s.bsize;
    } catch {
      // bwrap's own process is outside the jail: the next one.
    }
  }
  return 0;
}

/** The busybox image's base disk (the one disk-*.ext4 the run made). */
export function baseDiskOf(daemon: Daemon): string {
  const images = path.join(daemon.stateDir, 'images');
  const found = execFileSync('find', [images, '-name', 'disk*.ext4'], { encoding: 'utf8' })
    .trim()
    .split('\n')[0];
  if (!found) throw new Error('no base disk found');
  return found;
}

/**
 * A vm guest's QEMU argv (read from its /proc/PID/cmdline), made runnable by hand in `dir`. Since
 * decision 0019 QEMU opens nothing of the state dir by name: it inherits every file and listening
 * socket as a descriptor, which a replay does not have. Each is named again by path: an fd set
 * (`-add-fd fd=N,set=S,opaque=PATH`, used as /dev/fdset/S) by its file, a listening socket by a path
 * in `dir`, /proc/self/fd/N (the kernel and initramfs) by the file the guest's QEMU holds there;
 * the guest's own dir becomes `dir`. The raw QEMU runs as root without the launcher: the engine alone.
 */
export function rawQemuArgv(pid: number, guestDir: string, dir: string): string[] {
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  return replayableQemuArgv(argv, { guestDir, dir, fdTarget: (fd) => readlinkSync(`/proc/${pid}/fd/${fd}`) });
}

/** rawQemuArgv on a given argv; `fdTarget` names the file the guest's QEMU holds as descriptor N. */
export function replayableQemuArgv(
  argv: string[],
  options: { guestDir: string; dir: string; fdTarget: (fd: string) => string },
): string[] {
  const { guestDir, dir } = options;
  const sets = new Map<string, string>();
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '-add-fd') {
      const spec = argv[++i] ?? '';
      const set = /(?:^|,)set=(\d+)/.exec(spec)?.[1];
      const opaque = /(?:^|,)opaque=(.+)$/.exec(spec)?.[1];
      if (!set || !opaque) throw new Error(`cannot replay -add-fd ${spec}: no set or opaque path`);
      sets.set(set, opaque);
    } else kept.push(a);
  }
  return kept.map((a) => {
    let s = a
      .replace(/\/dev\/fdset\/(\d+)/g, (_, set: string) => {
        const file = sets.get(set);
        if (!file) throw new Error(`cannot replay ${a}: no -add-fd for fd set ${set}`);
        return file;
      })
      .replace(/\/proc\/self\/fd\/(\d+)/g, (_, fd: string) => options.fdTarget(fd));
    if (s.startsWith('socket,') && /(?:^|,)fd=\d+/.test(s)) {
      const id = /(?:^|,)id=([^,]+)/.exec(s)?.[1] ?? 'socket';
      s = s.replace(/(^|,)fd=\d+/, `$1path=${guestDir}/raw-${id}.sock`);
    }
    if (/(?:^|[,=])fd=\d+/.test(s)) throw new Error(`cannot replay ${a}: it names an inherited descriptor`);
    return s.replaceAll(guestDir, dir);
  });
}

/** The backing file and format of the root disk in a QEMU argv (`-blockdev` with node-name root). */
export function qemuRootBacking(argv: string[]): { file: string; format: string } {
  for (let i = 0; i < argv.length - 1; i++) {
    if (argv[i] !== '-blockdev' || !argv[i + 1]?.startsWith('{')) continue;
    const node = JSON.parse(argv[i + 1] as string) as {
      'node-name'?: string;
      backing?: { driver?: string; file?: { filename?: string } } | null;
    };
    const file = node.backing?.file?.filename;
    if (node['node-name'] === 'root' && file) return { file, format: node.backing?.driver ?? 'raw' };
  }
  throw new Error('no root -blockdev with a backing file in the QEMU argv');
}

/**
 * Starts a replayed QEMU in `dir` (its root disk made first, a qcow2 over the same backing file),
 * detached as the driver's launcher starts it; its own output goes to dir/qemu.log.
 */
export function startRawQemu(argv: string[], dir: string): ChildProcess {
  const backing = qemuRootBacking(argv);
  execFileSync('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-F',
    backing.format,
    '-b',
    backing.file,
    path.join(dir, 'root.qcow2'),
    '2G',
  ]);
  const out = openSync(path.join(dir, 'qemu.log'), 'a');
  try {
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', out, out], detached: true });
    child.on('error', () => {});
    child.unref();
    return child;
  } finally {
    closeSync(out);
  }
}

/** Why a raw QEMU ended before its guest's init: the end of its own output. */
export function rawQemuFailure(dir: string): string {
  const log = path.join(dir, 'qemu.log');
  const text = existsSync(log) ? readFileSync(log, 'utf8').trim() : '';
  return `QEMU exited: ${text.split('\n').at(-1) || 'no output'}`;
}

/**
 * What a raw runc baseline starts from (bench/ct-latency.ts, bench/ct-density-stages.ts): the
 * exact bundle Trivisor generated for a busybox guest, the image's tree it overlays and the
 * guest's id range. The template guest is deleted again.
 */
export async function rawRuncTemplate(d: Daemon): Promise<{
  /** The OCI config as runc reads it, cloned and edited per container. */
  template: ReturnType<typeof JSON.parse>;
  tree: string;
  mapping: { hostID: number; size: number } | undefined;
  idBase: number;
}> {
  await runOperation(d, 'POST', '/1.0/guests', { name: 'template', image: 'busybox', start: true });
  const template = JSON.parse(
    readFileSync(path.join(d.stateDir, 'guests/template/bundle/config.json'), 'utf8'),
  );
  // The image's tree: the guest's overlay shows it through an idmapped staging mount
  // (decision 0018), detached once the overlay holds it, so /proc/mounts cannot name it.
  const tree = spawnSync(
    'find',
    [path.join(d.stateDir, 'images'), '-maxdepth', '3', '-type', 'd', '-name', 'rootfs'],
    { encoding: 'utf8' },
  ).stdout.split('\n')[0];
  if (!tree) throw new Error('cannot find the image tree');
  const mapping = template.linux?.uidMappings?.[0] as { hostID: number; size: number } | undefined;
  await runOperation(d, 'DELETE', '/1.0/guests/template?force=true');
  return { template, tree, mapping, idBase: mapping?.hostID ?? 0 };
}

type RawRunc = Awaited<ReturnType<typeof rawRuncTemplate>>;

/** A raw runc container's dirs under `dir`, made as the driver makes them; returns the overlay's mount argv. */
export function rawRuncDirs(raw: RawRunc, dir: string): string[] {
  const { tree, mapping, idBase } = raw;
  for (const sub of ['upper', 'work', 'rootfs', 'bundle'])
    mkdirSync(path.join(dir, sub), { recursive: true });
  mkdirSync(path.join(dir, 'staging'), { mode: 0o700 });
  chownSync(path.join(dir, 'upper'), idBase, idBase);
  chownSync(path.join(dir, 'work'), idBase, idBase);
  // The same mount as the driver's (the image tree idmapped to the guest's range, then the overlay).
  return overlayRootfsArgv({
    tree,
    staging: `${dir}/staging`,
    upper: `${dir}/upper`,
    work: `${dir}/work`,
    target: `${dir}/rootfs`,
    ...(mapping && { idmap: { base: mapping.hostID, size: mapping.size } }),
  });
}

/** Writes the container's bundle (the template's config on its rootfs); returns `runc run -d`'s argv. */
export function rawRuncBundle(
  raw: RawRunc,
  o: { root: string; dir: string; name: string; cgroupsPath: string },
): string[] {
  const { dir, name } = o;
  const spec = structuredClone(raw.template);
  spec.root.path = `${dir}/rootfs`;
  spec.hostname = name;
  spec.linux.cgroupsPath = o.cgroupsPath;
  writeFileSync(`${dir}/bundle/config.json`, JSON.stringify(spec));
  return [
    '--root',
    o.root,
    'run',
    '-d',
    '--no-new-keyring',
    '--pid-file',
    `${dir}/pid`,
    '--bundle',
    `${dir}/bundle`,
    name,
  ];
}

/**
 * One raw runc container from a rawRuncTemplate(): the guest's overlay (the image tree idmapped
 * to its range, as the driver mounts it) under `dir`, then `runc run -d` with `cgroupsPath`.
 */
export async function startRawRunc(
  raw: RawRunc,
  o: { root: string; dir: string; name: string; cgroupsPath: string },
): Promise<void> {
  const [cmd, ...args] = rawRuncDirs(raw, o.dir);
  await promisify(execFile)(cmd as string, args);
  const argv = rawRuncBundle(raw, o);
  // Not execFile: the container's init inherits runc's stdout and stderr and keeps them open.
  await new Promise<void>((resolve, reject) => {
    const c = spawn('runc', argv, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let err = '';
    c.stderr.on('data', (b: Buffer) => {
      err += b.toString();
    });
    c.once('error', reject);
    c.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`runc run ${o.name}: ${err.trim()}`)),
    );
  });
}
