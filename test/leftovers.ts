/**
 * Test runs and what they leave on the host (decision 0016).
 *
 * Every test run (a system test's daemon, a driver fixture, a temp dir a test
 * works in) lives in a directory `trivisor-test-KIND-XXXXXX` in the temp dir,
 * with a marker beside it (`DIR.run.json`) naming its owner: the test process,
 * by pid, start time and boot id. A run whose owner no longer exists is dead,
 * and whatever it left is swept: processes (its daemon, QEMU, UML, dnsmasq,
 * runc containers), mounts, loop devices, bridges and guest ports, nftables
 * tables, network namespaces, cgroups, then the directory and the marker. A
 * live run is never touched, nor anything that cannot be tied to a run.
 *
 * As a command:
 *   node test/leftovers.ts --check   lists what dead runs left; exits 1 if anything. With
 *                                    TRIVISOR_TEST_SESSION set (setup/test sets one), only
 *                                    that session's runs count, including those a sweep
 *                                    removed while the session ran
 *   node test/leftovers.ts --sweep   removes what dead runs left
 *   node test/leftovers.ts --list    lists every run and whether it is live
 */
import { spawnSync } from 'node:child_process';
import {
  appendFileSync,
  chmodSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmdirSync,
  rmSync,
  type Stats,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { cgroupParentOf } from '../src/drivers/guest-cgroup.ts';
import { listMountPoints } from '../src/host/mounts.ts';
import { parseProcStat } from '../src/host/proc-stat.ts';
import { hostPortName } from '../src/network/guest-networking.ts';
import { ifbOf, ownerAlias, ownerHash } from '../src/network/linux-network-backend.ts';
import { aclTable, legacyPortTable, networkTable, portsTable } from '../src/network/nft-rules.ts';

/** Every test run's directory name starts with this (the daemon's own files never do). */
export const RUN_PREFIX = 'trivisor-test-';
/** A run's marker is a file beside its directory, `DIR.run.json` (inside, it would show in the tests' listings). */
export const MARKER_SUFFIX = '.run.json';
/** Where the marker of the run in `dir` is. */
export const markerOf = (dir: string): string => `${dir}${MARKER_SUFFIX}`;
/** NIC names whose host port names are derived to find a run's taps and veths (with the bridges' ports). */
const NIC_NAMES = Array.from({ length: 8 }, (_, i) => `eth${i}`);
const CGROUP_ROOT = '/sys/fs/cgroup';

/** The process a run belongs to: it is live while this very process exists. */
export interface RunOwner {
  pid: number;
  /** Field 22 of /proc/PID/stat: a reused pid has another. */
  startTime: number;
  /** /proc/sys/kernel/random/boot_id: after a reboot no owner is alive. */
  bootId: string;
}

/** What a run's marker file holds. */
export interface RunMarker {
  owner: RunOwner;
  createdAt: string;
  /** TRIVISOR_TEST_SESSION of the owner, if set (setup/test sets one per suite). */
  session?: string;
  /** Daemon or driver state dirs in the run: cgroups, bridges and ports are named after them. */
  stateDirs: string[];
  /** Network namespaces (/run/netns names) the run made. */
  netns: string[];
  /** Host interfaces the run made outside its daemons (test veths and the like). */
  links: string[];
}

/** What a run's directory says about it. */
export interface RunFacts {
  dir: string;
  marker: RunMarker | undefined;
  /** The marker's state dirs; without a marker, the dir itself and its `state` subdir. */
  stateDirs: string[];
  /** Guest names per state dir (their ports' names derive from them). */
  guests: Record<string, string[]>;
  /** Network names per state dir. */
  networks: Record<string, string[]>;
  /** runc containers: the root each is listed in and its id. */
  runc: Array<{ root: string; id: string }>;
}

/** One process on the host, as far as the sweeper cares. */
export interface ProcessFacts {
  pid: number;
  ppid: number;
  startTime: number;
  comm: string;
  state: string;
  cmdline: string[];
  /** TRIVISOR_DIR of its environment. */
  trivisorDir: string | undefined;
  /** Whether its root directory is ours (a chroot's processes name paths of another tree). */
  sameRoot: boolean;
  /** Its cgroup paths, one per hierarchy (`/trivisor-ab12cd34/web1`). */
  cgroups: string[];
  /** readlink of /proc/PID/ns/net (`net:[4026531992]`). */
  netns: string | undefined;
}

/** A network interface on the host. */
export interface LinkFacts {
  name: string;
  alias?: string;
  master?: string;
  kind?: string;
}

/** A cgroup directory under a trivisor-* top-level cgroup. */
export interface CgroupFacts {
  hierarchy: string;
  /** Path inside the hierarchy, `/trivisor-ab12cd34` or `/trivisor-ab12cd34/web1`. */
  path: string;
}

/** The host's state the sweeper ties to runs. */
export interface HostFacts {
  processes: ProcessFacts[];
  mounts: string[];
  links: LinkFacts[];
  cgroups: CgroupFacts[];
  /** Loop devices; autoclear ones detach by themselves once nothing uses their file system. */
  loops: Array<{ device: string; backingFile: string; autoclear: boolean }>;
  netns: Array<{ name: string; id: string }>;
  nftTables: Array<{ family: string; name: string }>;
}

/** Something a run left on the host. */
export type Thing =
  | { kind: 'process'; pid: number; startTime: number; what: string; why: string }
  | { kind: 'runc'; root: string; id: string }
  | { kind: 'mount'; path: string }
  | { kind: 'loop'; device: string; backingFile: string; autoclear: boolean }
  | { kind: 'link'; name: string; type: string }
  | { kind: 'nft'; family: string; name: string }
  | { kind: 'netns'; name: string }
  | { kind: 'cgroup'; path: string; hierarchies: string[] }
  | { kind: 'dir'; path: string };

/** What one sweep found of a run and what it could not remove. */
export interface SweepReport {
  dir: string;
  found: Thing[];
  left: Thing[];
}

// ---------------------------------------------------------------------------
// Pure logic: which runs are dead, which things belong to which run.

/** Parses a marker; undefined when it is not one (a torn or foreign file). */
export function parseMarker(text: string): RunMarker | undefined {
  try {
    const m = JSON.parse(text) as Partial<RunMarker>;
    const o = m.owner;
    if (!o || !Number.isInteger(o.pid) || !Number.isInteger(o.startTime) || typeof o.bootId !== 'string') {
      return undefined;
    }
    const strings = (v: unknown): string[] =>
      Array.isArray(v) ? v.filter((s): s is string => typeof s === 'string') : [];
    return {
      owner: { pid: o.pid, startTime: o.startTime, bootId: o.bootId },
      createdAt: typeof m.createdAt === 'string' ? m.createdAt : '',
      ...(typeof m.session === 'string' ? { session: m.session } : {}),
      stateDirs: strings(m.stateDirs),
      netns: strings(m.netns),
      links: strings(m.links),
    };
  } catch {
    return undefined;
  }
}

/**
 * live: its owner runs; dead: it does not; unknown: no readable marker (a run being made, or
 * one killed between mkdtemp and writing its marker, which has had no time to make anything).
 * Only dead runs are swept.
 */
export type RunLiveness = 'live' | 'dead' | 'unknown';

/**
 * Whether a run is live. `ownerNow` is what /proc says of the marker's owner pid now
 * (undefined: no such process). A zombie owner is dead: it was killed and nobody reaped it yet.
 */
export function runLiveness(
  marker: RunMarker | undefined,
  facts: { bootId: string; ownerNow: { startTime: number; state: string } | undefined },
): RunLiveness {
  if (!marker) return 'unknown';
  const now = facts.ownerNow;
  const same =
    marker.owner.bootId === facts.bootId &&
    now !== undefined &&
    now.state !== 'Z' &&
    now.state !== 'X' &&
    now.startTime === marker.owner.startTime;
  return same ? 'live' : 'dead';
}

const PATH_CHAR = /[A-Za-z0-9._/-]/;
const NAME_CHAR = /[A-Za-z0-9._-]/;

/** Whether `text` names `dir` or a path inside it (not a longer name, nor the same path in another tree). */
export function mentionsDir(text: string, dir: string): boolean {
  for (let i = text.indexOf(dir); i >= 0; i = text.indexOf(dir, i + 1)) {
    const before = i === 0 ? undefined : text[i - 1];
    const after = text[i + dir.length];
    if (before !== undefined && PATH_CHAR.test(before)) continue;
    if (after !== undefined && NAME_CHAR.test(after)) continue;
    return true;
  }
  return false;
}

const inside = (path: string, dir: string) => path === dir || path.startsWith(`${dir}/`);

/** The daemon and the CLI are node processes (Node 24 names its main thread MainThread). */
const isNode = (p: ProcessFacts) =>
  p.comm === 'node' || p.comm === 'MainThread' || basename(p.cmdline[0] ?? '') === 'node';

/**
 * Everything on the host that belongs to one run. A process belongs to it when
 * it sits in one of the run's cgroups or network namespaces, or (in our own
 * root) names the run's directory on its command line, or is a node process
 * (a daemon, the CLI) whose TRIVISOR_DIR is inside it. Interfaces belong to it
 * by their bridge's owner alias, by being ports of such a bridge, by a port
 * name derived from one of its guests, or by being claimed in its marker.
 * `protectedPids` (the sweeper itself, its ancestors) are never listed.
 */
export function thingsOf(
  run: RunFacts,
  host: HostFacts,
  protectedPids: ReadonlySet<number> = new Set(),
): Thing[] {
  const things: Thing[] = [];
  const cgroupParents = run.stateDirs.map(cgroupParentOf);
  const inRunCgroup = (cg: string) => cgroupParents.some((p) => inside(cg, p));
  const netnsIds = new Set(host.netns.filter((n) => run.marker?.netns.includes(n.name)).map((n) => n.id));

  for (const p of host.processes) {
    if (protectedPids.has(p.pid) || p.pid <= 2 || p.ppid === 2 || p.state === 'Z') continue;
    let why: string | undefined;
    if (p.cgroups.some(inRunCgroup)) why = 'in its cgroup';
    else if (p.netns !== undefined && netnsIds.has(p.netns)) why = 'in its network namespace';
    else if (p.sameRoot && p.cmdline.some((a) => mentionsDir(a, run.dir))) why = 'names its directory';
    else if (p.sameRoot && isNode(p) && p.trivisorDir !== undefined && inside(p.trivisorDir, run.dir)) {
      why = 'its TRIVISOR_DIR';
    }
    if (why) {
      things.push({
        kind: 'process',
        pid: p.pid,
        startTime: p.startTime,
        what: `${p.comm}: ${p.cmdline.join(' ').slice(0, 120)}`,
        why,
      });
    }
  }

  for (const c of run.runc) things.push({ kind: 'runc', root: c.root, id: c.id });

  for (const m of [...new Set(host.mounts.filter((m) => inside(m, run.dir)))].sort(deepestFirst)) {
    things.push({ kind: 'mount', path: m });
  }
  for (const l of host.loops) {
    if (inside(l.backingFile, run.dir)) things.push({ kind: 'loop', ...l });
  }

  const aliases = new Set(run.stateDirs.map(ownerAlias));
  // Networks' bridges and their leaf bridges (`ALIAS:leaf:NETWORK`, decision 0068).
  const ownedBy = (alias: string) => aliases.has(alias) || aliases.has(alias.split(':leaf:')[0] ?? '');
  const bridges = new Set(host.links.filter((l) => l.alias && ownedBy(l.alias)).map((l) => l.name));
  const portNames = new Set<string>();
  for (const sd of run.stateDirs) {
    for (const g of run.guests[sd] ?? []) {
      for (const nic of NIC_NAMES) portNames.add(hostPortName(sd, g, nic));
    }
  }
  const claimed = new Set(run.marker?.links ?? []);
  // A port, its ifb (egress shaping) or its veth peer when that never left the host.
  const isPortName = (name: string) => {
    const base = name.slice(0, -1);
    return portNames.has(name) || (portNames.has(base) && (name === ifbOf(base) || name === `${base}p`));
  };
  const ports = new Set<string>();
  for (const l of host.links) {
    if (bridges.has(l.name)) continue;
    if ((l.master && bridges.has(l.master)) || isPortName(l.name) || claimed.has(l.name)) {
      things.push({ kind: 'link', name: l.name, type: l.kind ?? 'link' });
      ports.add(l.name);
    }
  }
  for (const b of bridges) things.push({ kind: 'link', name: b, type: 'bridge' });

  const foreignLinks = new Set(host.links.filter((l) => !bridges.has(l.name)).map((l) => l.name));
  const networks = new Set([...bridges, ...run.stateDirs.flatMap((sd) => run.networks[sd] ?? [])]);
  const tables = new Set<string>();
  for (const n of networks) {
    // A network of the same name whose bridge is another daemon's keeps its tables.
    if (foreignLinks.has(n)) continue;
    tables.add(`ip ${networkTable(n)}`);
    tables.add(`bridge ${aclTable(n)}`);
  }
  for (const p of [...portNames, ...ports]) tables.add(`bridge ${legacyPortTable(p)}`);
  for (const sd of run.stateDirs) tables.add(`bridge ${portsTable(ownerHash(sd))}`);
  for (const t of host.nftTables) {
    if (tables.has(`${t.family} ${t.name}`)) things.push({ kind: 'nft', family: t.family, name: t.name });
  }

  for (const n of host.netns) {
    if (run.marker?.netns.includes(n.name)) things.push({ kind: 'netns', name: n.name });
  }

  const cgroups = new Map<string, string[]>();
  for (const c of host.cgroups) {
    if (!cgroupParents.some((p) => inside(c.path, p))) continue;
    cgroups.set(c.path, [...(cgroups.get(c.path) ?? []), c.hierarchy]);
  }
  for (const path of [...cgroups.keys()].sort(deepestFirst)) {
    things.push({ kind: 'cgroup', path, hierarchies: cgroups.get(path) ?? [] });
  }
  return things;
}

function deepestFirst(a: string, b: string): number {
  return b.split('/').length - a.split('/').length || b.localeCompare(a);
}

/** One line per thing, for people. */
export function describeThing(t: Thing): string {
  switch (t.kind) {
    case 'process':
      return `process ${t.pid} (${t.why}) ${t.what}`;
    case 'runc':
      return `runc container ${t.id} (root ${t.root})`;
    case 'mount':
      return `mount ${t.path}`;
    case 'loop':
      return `loop device ${t.device} on ${t.backingFile}`;
    case 'link':
      return `${t.type} ${t.name}`;
    case 'nft':
      return `nftables table ${t.family} ${t.name}`;
    case 'netns':
      return `network namespace ${t.name}`;
    case 'cgroup':
      return `cgroup ${t.path} (${t.hierarchies.join(', ')})`;
    case 'dir':
      return `directory ${t.path}`;
  }
}

/** Whether a thing counts as something a test left behind, rather than housekeeping (a bare cgroup parent). */
export function isGuestLeftover(t: Thing, stateDirs: string[]): boolean {
  if (t.kind === 'dir') return false;
  if (t.kind === 'cgroup') return !stateDirs.map(cgroupParentOf).includes(t.path);
  return true;
}

// ---------------------------------------------------------------------------
// Reading the host.

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function readLink(path: string): string | undefined {
  try {
    return readlinkSync(path);
  } catch {
    return undefined;
  }
}

function bootId(): string {
  return (readText('/proc/sys/kernel/random/boot_id') ?? '').trim();
}

function procStat(pid: number): { startTime: number; state: string; ppid: number; comm: string } | undefined {
  const text = readText(`/proc/${pid}/stat`);
  if (!text) return undefined;
  try {
    return parseProcStat(text);
  } catch {
    return undefined;
  }
}

/** This process as a run owner. */
export function selfOwner(): RunOwner {
  const stat = procStat(process.pid);
  if (!stat) throw new Error('Cannot read /proc/self/stat: test runs need a Linux /proc');
  return { pid: process.pid, startTime: stat.startTime, bootId: bootId() };
}

function readProcesses(): ProcessFacts[] {
  // By identity, not by name: a process that pivot_root'ed into another tree (CI's fresh root)
  // reads as "/" through readlink like ours, but its root is another directory.
  const rootId = (pid: number | 'self') => {
    try {
      const s = statSync(`/proc/${pid}/root`);
      return `${s.dev}:${s.ino}`;
    } catch {
      return undefined;
    }
  };
  const ourRoot = rootId('self');
  const out: ProcessFacts[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    const stat = procStat(pid);
    if (!stat) continue;
    const cmdline = (readText(`/proc/${pid}/cmdline`) ?? '').split('\0').filter(Boolean);
    const environ = readText(`/proc/${pid}/environ`) ?? '';
    const dirVar = environ.split('\0').find((e) => e.startsWith('TRIVISOR_DIR='));
    const cgroups = (readText(`/proc/${pid}/cgroup`) ?? '')
      .split('\n')
      .map((l) => l.split(':').slice(2).join(':'))
      .filter((p) => p.startsWith('/trivisor-'));
    out.push({
      pid,
      ppid: stat.ppid,
      startTime: stat.startTime,
      comm: stat.comm,
      state: stat.state,
      cmdline,
      trivisorDir: dirVar?.slice('TRIVISOR_DIR='.length),
      sameRoot: ourRoot !== undefined && rootId(pid) === ourRoot,
      cgroups,
      netns: readLink(`/proc/${pid}/ns/net`),
    });
  }
  return out;
}

function readLinks(): LinkFacts[] {
  const r = spawnSync('ip', ['-json', '-details', 'link', 'show'], { encoding: 'utf8' });
  if (r.status !== 0) return [];
  const links = JSON.parse(r.stdout || '[]') as Array<{
    ifname: string;
    ifalias?: string;
    master?: string;
    linkinfo?: { info_kind?: string };
  }>;
  return links.map((l) => ({
    name: l.ifname,
    ...(l.ifalias ? { alias: l.ifalias } : {}),
    ...(l.master ? { master: l.master } : {}),
    ...(l.linkinfo?.info_kind ? { kind: l.linkinfo.info_kind } : {}),
  }));
}

function readCgroups(): CgroupFacts[] {
  const out: CgroupFacts[] = [];
  const walk = (hierarchy: string, rel: string) => {
    out.push({ hierarchy, path: rel });
    let entries: string[] = [];
    try {
      entries = readdirSync(join(CGROUP_ROOT, hierarchy, rel), { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name);
    } catch {
      return;
    }
    for (const e of entries) walk(hierarchy, `${rel}/${e}`);
  };
  let hierarchies: string[] = [];
  try {
    hierarchies = readdirSync(CGROUP_ROOT, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return out;
  }
  for (const h of hierarchies) {
    let top: string[] = [];
    try {
      top = readdirSync(join(CGROUP_ROOT, h)).filter((n) => n.startsWith('trivisor-'));
    } catch {
      continue;
    }
    for (const t of top) walk(h, `/${t}`);
  }
  return out;
}

function readLoops(): HostFacts['loops'] {
  const out: HostFacts['loops'] = [];
  let names: string[] = [];
  try {
    names = readdirSync('/sys/block').filter((n) => n.startsWith('loop'));
  } catch {
    return out;
  }
  for (const n of names) {
    const file = readText(`/sys/block/${n}/loop/backing_file`)?.trim();
    if (!file) continue;
    out.push({
      device: `/dev/${n}`,
      backingFile: file.replace(/ \(deleted\)$/, ''),
      autoclear: readText(`/sys/block/${n}/loop/autoclear`)?.trim() === '1',
    });
  }
  return out;
}

function readNetns(): HostFacts['netns'] {
  let names: string[] = [];
  try {
    names = readdirSync('/run/netns');
  } catch {
    return [];
  }
  return names.flatMap((name) => {
    try {
      return [{ name, id: `net:[${statSync(join('/run/netns', name)).ino}]` }];
    } catch {
      return [];
    }
  });
}

function readNftTables(): HostFacts['nftTables'] {
  const r = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' });
  if (r.status !== 0) return [];
  return r.stdout
    .split('\n')
    .map((l) => /^table (\S+) (trivisor-\S+)$/.exec(l.trim()))
    .flatMap((m) => (m?.[1] && m[2] ? [{ family: m[1], name: m[2] }] : []));
}

/** Reads everything the sweeper ties to runs. */
export async function readHostFacts(): Promise<HostFacts> {
  return {
    processes: readProcesses(),
    mounts: await listMountPoints(),
    links: readLinks(),
    cgroups: readCgroups(),
    loops: readLoops(),
    netns: readNetns(),
    nftTables: readNftTables(),
  };
}

const listDir = (dir: string): string[] => {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
};

/** What a run's directory says: its marker, state dirs, guests, networks, runc containers. */
export function readRunFacts(dir: string): RunFacts {
  const marker = parseMarker(readText(markerOf(dir)) ?? '');
  const stateDirs = marker?.stateDirs.length ? marker.stateDirs : [dir, join(dir, 'state')];
  const guests: Record<string, string[]> = {};
  const networks: Record<string, string[]> = {};
  const runc: RunFacts['runc'] = [];
  for (const sd of stateDirs) {
    guests[sd] = listDir(join(sd, 'guests'));
    networks[sd] = listDir(join(sd, 'networks'));
    const root = join(sd, 'runc');
    for (const id of listDir(root)) runc.push({ root, id });
  }
  return { dir, marker, stateDirs, guests, networks, runc };
}

/** The temp dirs runs are made in (TMPDIR may differ between the processes of one machine). */
function runParents(): string[] {
  return [...new Set([tmpdir(), '/tmp'])];
}

/**
 * Every run on the host with its liveness: a directory, its marker, or both (a run whose
 * directory is gone may still have claimed things).
 */
export function listRuns(): Array<{ facts: RunFacts; liveness: RunLiveness }> {
  const boot = bootId();
  const out: Array<{ facts: RunFacts; liveness: RunLiveness }> = [];
  for (const parent of runParents()) {
    const dirs = new Set<string>();
    for (const name of listDir(parent)) {
      if (!name.startsWith(RUN_PREFIX)) continue;
      if (name.endsWith(MARKER_SUFFIX)) dirs.add(join(parent, name.slice(0, -MARKER_SUFFIX.length)));
      else if (lstatOf(join(parent, name))?.isDirectory()) dirs.add(join(parent, name));
    }
    for (const dir of dirs) {
      const facts = readRunFacts(dir);
      const ownerNow = facts.marker ? procStat(facts.marker.owner.pid) : undefined;
      out.push({ facts, liveness: runLiveness(facts.marker, { bootId: boot, ownerNow }) });
    }
  }
  return out;
}

function lstatOf(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/** This process and its ancestors: never killed by a sweep, whatever they name. */
function protectedPids(): Set<number> {
  const pids = new Set<number>([1, 2]);
  for (let pid = process.pid; pid > 1 && !pids.has(pid); ) {
    pids.add(pid);
    pid = procStat(pid)?.ppid ?? 0;
  }
  return pids;
}

// ---------------------------------------------------------------------------
// Sweeping.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function kill(t: Extract<Thing, { kind: 'process' }>): void {
  // The same process still, not a reused pid.
  if (procStat(t.pid)?.startTime !== t.startTime) return;
  try {
    process.kill(t.pid, 'SIGKILL');
  } catch {
    // Gone meanwhile.
  }
}

/** Frozen tasks do not die: thaw every freezer cgroup of the runs first. */
function thaw(things: Thing[]): void {
  for (const t of things) {
    if (t.kind !== 'cgroup' || !t.hierarchies.includes('freezer')) continue;
    try {
      writeFileSync(join(CGROUP_ROOT, 'freezer', t.path, 'freezer.state'), 'THAWED');
    } catch {
      // Gone, or the root cgroup of the hierarchy.
    }
  }
}

const run = (argv: string[], timeoutMs = 10_000) =>
  spawnSync(argv[0]!, argv.slice(1), { stdio: 'ignore', timeout: timeoutMs });

/**
 * Removes what the given runs left, in an order that works: processes first (the
 * daemon, which would restart guests, with them), runc's state, mounts deepest first,
 * loop devices, interfaces, nft tables, network namespaces, cgroups; the directory
 * only once nothing else of the run is left.
 */
export async function sweepRuns(
  runs: RunFacts[],
  options: { timeoutMs?: number } = {},
): Promise<SweepReport[]> {
  if (runs.length === 0) return [];
  const guard = protectedPids();
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  let host = await readHostFacts();
  const found = new Map(runs.map((r) => [r.dir, thingsOf(r, host, guard)]));
  const all = () => [...found.values()].flat();

  thaw(all());
  // Kill until nothing of the runs runs; a daemon may start a guest between two looks.
  for (let round = 0; ; round++) {
    const procs = runs.flatMap((r) => thingsOf(r, host, guard)).filter((t) => t.kind === 'process');
    for (const p of procs) kill(p);
    if (round === 0) {
      for (const r of runs) {
        for (const c of r.runc) run(['runc', '--root', c.root, 'delete', '--force', c.id]);
      }
    }
    if (procs.length === 0 || Date.now() > deadline) break;
    await sleep(100);
    host = { ...host, processes: readProcesses() };
  }

  host = await readHostFacts();
  for (const r of runs) {
    const things = thingsOf(r, host, guard);
    // A plain umount first: it lets go of a loop-backed file system at once, a lazy one may not.
    for (const t of things) {
      if (t.kind === 'mount' && run(['umount', t.path]).status !== 0) run(['umount', '--lazy', t.path]);
    }
    for (const t of things) if (t.kind === 'loop') run(['losetup', '-d', t.device]);
    // Ports before their bridges (thingsOf lists them in that order).
    for (const t of things) if (t.kind === 'link') run(['ip', 'link', 'del', 'dev', t.name]);
    for (const t of things) if (t.kind === 'nft') run(['nft', 'delete', 'table', t.family, t.name]);
    for (const t of things) if (t.kind === 'netns') run(['ip', 'netns', 'del', t.name]);
  }
  // A loop device whose file system was let go is detached when the kernel is done with it; a
  // copy of the mount in another mount namespace (a process that unshared while it was mounted)
  // holds it until that process ends, so the wait is short (autoclear detaches it then).
  const loopDeadline = Math.min(deadline, Date.now() + 3000);
  for (;;) {
    host = { ...host, mounts: await listMountPoints(), loops: readLoops() };
    const busy = runs.flatMap((r) => thingsOf(r, host, guard)).filter((t) => t.kind === 'loop');
    if (busy.length === 0 || Date.now() > loopDeadline) break;
    for (const t of busy) run(['losetup', '-d', t.device]);
    await sleep(100);
  }
  // A task that was just killed still counts for a moment: rmdir says EBUSY until it does not.
  for (;;) {
    host = { ...host, cgroups: readCgroups() };
    let busy = false;
    for (const r of runs) {
      for (const t of thingsOf(r, host, guard)) {
        if (t.kind !== 'cgroup') continue;
        for (const h of t.hierarchies) {
          try {
            rmdirSync(join(CGROUP_ROOT, h, t.path));
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'ENOENT') busy = true;
          }
        }
      }
    }
    if (!busy || Date.now() > deadline) break;
    await sleep(50);
  }

  host = await readHostFacts();
  const reports: SweepReport[] = [];
  for (const r of runs) {
    let left = thingsOf({ ...r, runc: r.runc.filter((c) => existsSync(join(c.root, c.id))) }, host, guard)
      // Unmounted here and set to autoclear: it goes when its last user elsewhere does.
      .filter((t) => !(t.kind === 'loop' && t.autoclear));
    if (left.length === 0 && existsSync(r.dir)) {
      // Mounts were checked just now: removing cannot reach into another file system.
      rmSync(r.dir, { recursive: true, force: true, maxRetries: 3 });
    }
    if (existsSync(r.dir)) left = [...left, { kind: 'dir', path: r.dir }];
    // The marker goes last: it is what ties whatever is left to the run.
    else if (left.length === 0) rmSync(markerOf(r.dir), { force: true });
    reports.push({ dir: r.dir, found: found.get(r.dir) ?? [], left });
  }
  return reports;
}

/** Sweeps every dead run on the host. Live runs and runs without a marker are left alone. */
export async function sweepDeadRuns(options: { timeoutMs?: number } = {}): Promise<SweepReport[]> {
  const dead = listRuns()
    .filter((r) => r.liveness === 'dead')
    .map((r) => r.facts);
  // Notes of sessions nobody checked (a suite killed before its check) go after a day.
  for (const parent of runParents()) {
    for (const name of listDir(parent)) {
      const file = join(parent, name);
      const st = name.startsWith(`${RUN_PREFIX}swept-`) ? lstatOf(file) : undefined;
      if (st?.isFile() && Date.now() - st.mtimeMs > 86_400_000) rmSync(file, { force: true });
    }
  }
  const hadDir = new Set(dead.filter((r) => existsSync(r.dir)).map((r) => r.dir));
  const reports = await sweepRuns(dead, options);
  // A suite's own dead runs are often swept by its next test file: the end-of-suite check
  // must still hear of them.
  for (const [i, r] of reports.entries()) {
    const facts = dead[i];
    const session = facts?.marker?.session;
    if (!facts || !session) continue;
    const things = r.found.filter((t) => isGuestLeftover(t, facts.stateDirs)).map(describeThing);
    if (hadDir.has(r.dir)) things.push(`directory ${r.dir}`);
    if (things.length === 0) continue;
    appendFileSync(sessionLogOf(session), `${JSON.stringify({ dir: r.dir, things })}\n`, { mode: 0o644 });
  }
  return reports;
}

/** Where sweeps note what they removed of a session's dead runs (read and removed by `--check`). */
export function sessionLogOf(session: string): string {
  return join(tmpdir(), `${RUN_PREFIX}swept-${session.replace(/[^A-Za-z0-9._-]/g, '_')}.log`);
}

let sweptOnce: Promise<void> | undefined;

/**
 * Sweeps dead runs once per process (the first run a test file makes pays for it).
 * Cheap when there are none: one readdir of the temp dir and a stat per run.
 */
export function sweepDeadRunsOnce(): Promise<void> {
  sweptOnce ??= sweepDeadRuns()
    .then((reports) => {
      for (const r of reports) {
        if (r.found.length === 0 && r.left.length === 0) continue;
        const removed = r.found.map(describeThing).join('; ');
        const left = r.left.map(describeThing).join('; ');
        process.stderr.write(
          `# swept a dead test run ${r.dir}: ${removed || 'files only'}${left ? ` (left: ${left})` : ''}\n`,
        );
      }
    })
    .catch((e: unknown) => {
      process.stderr.write(`# sweeping dead test runs failed: ${(e as Error).message}\n`);
    });
  return sweptOnce;
}

function writeMarker(dir: string, marker: RunMarker): void {
  const file = markerOf(dir);
  // Whole or not at all: a sweeper never reads half a marker.
  writeFileSync(`${file}.tmp`, `${JSON.stringify(marker)}\n`, { mode: 0o644 });
  renameSync(`${file}.tmp`, file);
}

/** Options of a new run directory. */
export interface RunDirOptions {
  /** A state dir inside the run dir (relative, e.g. `state`); the run dir itself when not given. */
  stateDir?: string;
  /** Mode of the run dir (mkdtemp makes it 0700). */
  mode?: number;
}

/**
 * Makes a run directory owned by this process, without sweeping first (for
 * synchronous callers; makeRunDir sweeps).
 */
export function makeRunDirSync(kind: string, options: RunDirOptions = {}): string {
  if (!/^[a-z0-9-]+$/.test(kind))
    throw new Error(`Run kind ${kind} must be lower-case letters, digits, dashes`);
  const dir = mkdtempSync(join(tmpdir(), `${RUN_PREFIX}${kind}-`));
  if (options.mode !== undefined) chmodSync(dir, options.mode);
  const session = process.env.TRIVISOR_TEST_SESSION;
  writeMarker(dir, {
    owner: selfOwner(),
    createdAt: new Date().toISOString(),
    ...(session ? { session } : {}),
    stateDirs: [options.stateDir ? join(dir, options.stateDir) : dir],
    netns: [],
    links: [],
  });
  return dir;
}

/**
 * Makes a run directory `trivisor-test-KIND-XXXXXX` in the temp dir, owned by this
 * process; sweeps what dead runs left first (once per process).
 */
export async function makeRunDir(kind: string, options: RunDirOptions = {}): Promise<string> {
  await sweepDeadRunsOnce();
  return makeRunDirSync(kind, options);
}

/**
 * Records host objects a run makes outside its daemons (a test's network namespace or
 * veth), so that a sweep removes them if the run dies. Claim before making them.
 */
export function claim(dir: string, things: { netns?: string[]; links?: string[] }): void {
  const marker = parseMarker(readText(markerOf(dir)) ?? '');
  if (!marker) throw new Error(`${dir} is not a test run directory (no ${markerOf(dir)})`);
  writeMarker(dir, {
    ...marker,
    netns: [...new Set([...marker.netns, ...(things.netns ?? [])])],
    links: [...new Set([...marker.links, ...(things.links ?? [])])],
  });
}

/**
 * Removes a run of this process with everything it left (a test's cleanup).
 * Returns what it found and what it could not remove.
 */
export async function removeRunDir(dir: string, options: { timeoutMs?: number } = {}): Promise<SweepReport> {
  const [report] = await sweepRuns([readRunFacts(dir)], options);
  return report ?? { dir, found: [], left: [] };
}

/**
 * removeRunDir for a fixture's cleanup: says what the tests left behind (guests'
 * processes, mounts, cgroups, ports…), after removing it; throws if something stays.
 */
export async function cleanUpRun(dir: string): Promise<string[]> {
  const { stateDirs } = readRunFacts(dir);
  const report = await removeRunDir(dir);
  if (report.left.length > 0) {
    throw new Error(`Could not remove what tests left: ${report.left.map(describeThing).join('; ')}`);
  }
  return report.found.filter((t) => isGuestLeftover(t, stateDirs)).map(describeThing);
}

// ---------------------------------------------------------------------------
// The command.

function printRun(dir: string, things: Thing[], note = ''): void {
  console.log(`${dir}${note}`);
  for (const t of things) console.log(`  ${describeThing(t)}`);
}

async function main(args: string[]): Promise<number> {
  const mode = args[0];
  if (mode === '--list') {
    for (const r of listRuns()) {
      const o = r.facts.marker?.owner;
      console.log(`${r.liveness.padEnd(5)} ${r.facts.dir}${o ? ` (owner pid ${o.pid})` : ' (no marker)'}`);
    }
    return 0;
  }
  if (mode === '--check') {
    const session = process.env.TRIVISOR_TEST_SESSION;
    const runs = listRuns();
    const dead = runs.filter((r) => r.liveness === 'dead');
    const host = dead.length > 0 ? await readHostFacts() : undefined;
    const guard = protectedPids();
    let counted = 0;
    for (const r of dead) {
      const things = host ? thingsOf(r.facts, host, guard) : [];
      if (existsSync(r.facts.dir)) things.push({ kind: 'dir', path: r.facts.dir });
      // A marker alone (its test removed the directory itself) is no leftover.
      if (things.length === 0) continue;
      const ours = !session || r.facts.marker?.session === session;
      if (ours) counted++;
      printRun(r.facts.dir, things, ours ? ' (dead run)' : ' (dead run of another session: not counted)');
    }
    if (session) {
      const log = sessionLogOf(session);
      // Two test files starting at once may both have swept a run: one entry per run.
      const swept = new Map<string, Set<string>>();
      for (const line of (readText(log) ?? '').split('\n').filter(Boolean)) {
        const entry = JSON.parse(line) as { dir: string; things: string[] };
        swept.set(entry.dir, new Set([...(swept.get(entry.dir) ?? []), ...entry.things]));
      }
      for (const [dir, things] of swept) {
        counted++;
        console.log(`${dir} (dead run of this session, swept by a later test file)`);
        for (const t of things) console.log(`  ${t}`);
      }
      rmSync(log, { force: true });
    }
    const live = runs.length - dead.length;
    if (counted > 0) {
      console.log(
        `Error: ${counted} dead test run(s) left things behind; remove them with: node test/leftovers.ts --sweep`,
      );
      return 1;
    }
    console.log(`No leftovers of dead test runs${live > 0 ? ` (${live} live run(s) left alone)` : ''}`);
    return 0;
  }
  if (mode === '--sweep') {
    const reports = await sweepDeadRuns();
    let failed = 0;
    for (const r of reports) {
      printRun(r.dir, r.found, ' (dead run, swept)');
      for (const t of r.left) console.log(`  NOT REMOVED: ${describeThing(t)}`);
      if (r.left.length > 0) failed++;
    }
    console.log(`Swept ${reports.length} dead test run(s)${failed ? `; ${failed} not fully removed` : ''}`);
    return failed > 0 ? 1 : 0;
  }
  console.error('Usage: node test/leftovers.ts --check | --sweep | --list');
  return 2;
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
