import { lstat, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import type { ProcessRunner } from '../../host/runner.ts';

/**
 * A ct backup chain that goes on across a move (decision 0062, amended 2026-12-07): the state a
 * link leaves is a manifest of the upper layer as that link archived it, about content and not
 * about this host's inodes, so that another member can make the chain's next link from it.
 *
 * Each entry: path (relative to upper/, '.' first), type, permission bits, numeric owner, size,
 * mtime in ns, a content digest (sha256 of a regular file, a symlink's target, a device's number)
 * and a digest of every xattr (name and value). Locally (the member that made the link) an entry
 * also holds its inode, ctime and (directories) device, so that the next link hashes only files
 * whose inode or ctime changed; another member's copy has them removed.
 */
export interface ManifestEntry {
  /** Path relative to the upper layer, '.' for its root. */
  p: string;
  /** f file, d directory, l symlink, c/b device, p fifo, s socket. */
  t: string;
  /** Permission bits (mode & 07777). */
  m: number;
  u: number;
  g: number;
  /** Size in bytes (regular files; 0 otherwise). */
  s: number;
  /** mtime, ns since the epoch, as a decimal string. */
  mt: string;
  /** Content: sha256 of a file, target of a symlink, a device's number; '' otherwise. */
  h: string;
  /** sha256 of the entry's xattrs (sorted `name=hexvalue`, NUL-joined), '' without any. */
  a: string;
  /** Local only: inode, ctime (ns) and device (directories), as decimal strings. */
  i?: string;
  c?: string;
  d?: string;
}

const TYPES = new Set(['f', 'd', 'l', 'c', 'b', 'p', 's']);
/** A manifest is at most this big uncompressed: a layer of about two million files. */
const MAX_MANIFEST_BYTES = 512 * 1024 * 1024;
/** The manifest files a guest keeps, one per link, named after it. */
const MANIFEST_PREFIX = 'backup-manifest-';
const MANIFEST_NAME = /^backup-manifest-[0-9a-f]{16}-\d+\.json\.gz$/;

export const manifestNameOf = (link: { chain: string; sequence: number }): string =>
  `${MANIFEST_PREFIX}${link.chain}-${link.sequence}.json.gz`;
export const isManifestName = (name: string): boolean => MANIFEST_NAME.test(name);

/**
 * Perl reads what Node has no call for: every xattr (llistxattr, lgetxattr), and hashes files
 * (Digest::SHA, in C). Paths come NUL-separated on stdin, relative to its working directory; for
 * each it prints one line, `CONTENT XATTRS`: the file's sha256 (or '-' for `t` not a file), the
 * xattrs' digest (or '-' without any), or `!` and the error.
 */
const DIGEST_SCRIPT = String.raw`
require 'syscall.ph';
use Digest::SHA qw(sha256_hex);
$/ = "\0";
while (defined(my $line = <STDIN>)) {
  chomp $line;
  my ($kind, $p) = (substr($line, 0, 1), substr($line, 1));
  my $content = '-';
  if ($kind eq 'f') {
    my $sha = Digest::SHA->new(256);
    if (!eval { $sha->addfile($p, 'b'); 1 }) { print "!cannot read $p\n"; next; }
    $content = $sha->hexdigest;
  }
  my $size = syscall(&SYS_llistxattr, $p, 0, 0);
  if ($size < 0) { print "!$p: $!\n"; next; }
  my @out;
  if ($size > 0) {
    my $list = "\0" x $size;
    $size = syscall(&SYS_llistxattr, $p, $list, $size);
    if ($size < 0) { print "!$p: $!\n"; next; }
    for my $name (sort grep { length } split /\0/, substr($list, 0, $size)) {
      my $n = syscall(&SYS_lgetxattr, $p, $name, 0, 0);
      if ($n < 0) { @out = ("!$p: $!"); last; }
      my $v = "\0" x ($n || 1);
      $n = syscall(&SYS_lgetxattr, $p, $name, $v, $n) if $n > 0;
      if ($n < 0) { @out = ("!$p: $!"); last; }
      push @out, $name . '=' . unpack('H*', substr($v, 0, $n));
    }
  }
  if (@out && $out[0] =~ /^!/) { print "$out[0]\n"; next; }
  print $content, ' ', (@out ? sha256_hex(join("\0", @out)) : '-'), "\n";
}
`;

/**
 * What `find -printf` prints of each entry, NUL after each field: type, permission bits (octal),
 * numeric owner and group, size, mtime and ctime as `seconds.nanoseconds` (the seconds floored,
 * the fraction never negative), inode, the file system's device, the path relative to the root
 * ('' for the root itself) and a symlink's target. One C process walks the tree: the walk through
 * Node's promise fs (an lstat and a readdir each a trip through libuv's pool) took 2.5-3.5 s of the
 * daemon's CPU for the 56,220 entries of a copy of /usr/share; find takes 0.4 s in a process of its
 * own, and reading its listing 0.5-0.7 s of the daemon's (the same manifest, byte for byte).
 */
const FIND_FIELDS = 11;
const FIND_FORMAT = `${['%y', '%m', '%U', '%G', '%s', '%T@', '%C@', '%i', '%D', '%P', '%l'].join('\\0')}\\0`;

/** `seconds.fraction` as find prints a timestamp (seconds floored, fraction never negative), in ns. */
function findTimeNs(text: string): string {
  const dot = text.indexOf('.');
  const sec = dot < 0 ? text : text.slice(0, dot);
  const frac = (dot < 0 ? '' : text.slice(dot + 1, dot + 10)).padEnd(9, '0');
  if (!/^-?\d+$/.test(sec) || !/^\d{9}$/.test(frac))
    throw new Error(`find printed ${JSON.stringify(text)} for a time`);
  // Positive seconds: the digits side by side, without leading zeros (as BigInt's toString).
  if (sec[0] !== '-' && sec !== '0') return `${sec}${frac}`;
  return (BigInt(sec) * 1_000_000_000n + BigInt(frac)).toString();
}

/**
 * The manifest of the tree at `root` (the guest frozen or stopped), in the order of a walk that
 * visits each directory before its entries and these by name. An entry of `previous` (this
 * member's manifest of the last link) with the same inode, ctime, type, size and mtime lends its
 * digests: a write, a chmod, a chown, an xattr set all change a ctime, so only what changed since
 * is read. Throws on anything it cannot read: no manifest is better than a wrong one; an abort of
 * `signal` kills its commands.
 */
export async function buildManifest(
  runner: ProcessRunner,
  root: string,
  options?: { previous?: ManifestEntry[] | undefined; signal?: AbortSignal | undefined },
): Promise<ManifestEntry[]> {
  const signal = options?.signal;
  const cache = new Map((options?.previous ?? []).filter((e) => e.i !== undefined).map((e) => [e.p, e]));
  // find exits non-zero (the runner throws) on a directory or entry it cannot read.
  const { stdout } = await runner.run(['find', root, '-printf', FIND_FORMAT], { ...(signal && { signal }) });
  const fields = stdout.split('\0');
  const count = Math.floor(fields.length / FIND_FIELDS);
  if (fields.length !== count * FIND_FIELDS + 1 || fields[fields.length - 1] !== '') {
    throw new Error(`cannot list ${root} for the backup manifest: find's output is cut short`);
  }
  // Each directory's entries, by the directory's path; a walk over them, not over paths put together.
  const children = new Map<string, Array<{ name: string; entry: ManifestEntry }>>();
  let top: ManifestEntry | undefined;
  for (let at = 0; at < count * FIND_FIELDS; at += FIND_FIELDS) {
    const rel = fields[at + 9] as string;
    const y = fields[at] as string;
    const t = TYPES.has(y) ? y : 's';
    const entry: ManifestEntry = {
      p: rel === '' ? '.' : rel,
      t,
      m: Number.parseInt(fields[at + 1] as string, 8) & 0o7777,
      u: Number(fields[at + 2]),
      g: Number(fields[at + 3]),
      s: t === 'f' ? Number(fields[at + 4]) : 0,
      mt: findTimeNs(fields[at + 5] as string),
      h: t === 'l' ? (fields[at + 10] as string) : '',
      a: '',
      i: fields[at + 7] as string,
      c: findTimeNs(fields[at + 6] as string),
    };
    if (t === 'd') entry.d = fields[at + 8] as string;
    // A name that is not UTF-8 comes back changed (U+FFFD): the lstat fails on it, as a walk in Node would.
    if (t === 'c' || t === 'b' || rel.includes('\uFFFD')) {
      const st = await lstat(join(root, entry.p), { bigint: true });
      if (t === 'c' || t === 'b') entry.h = st.rdev.toString();
    }
    if (rel === '') {
      top = entry;
      continue;
    }
    const slash = rel.lastIndexOf('/');
    const parent = slash < 0 ? '.' : rel.slice(0, slash);
    const item = { name: rel.slice(slash + 1), entry };
    const list = children.get(parent);
    if (list) list.push(item);
    else children.set(parent, [item]);
  }
  if (!top) throw new Error(`cannot list ${root} for the backup manifest: find did not list it`);
  const entries: ManifestEntry[] = [];
  const unread: ManifestEntry[] = [];
  const byName = (x: { name: string }, y: { name: string }) =>
    x.name < y.name ? 1 : x.name > y.name ? -1 : 0;
  const stack = [top];
  while (stack.length > 0) {
    const entry = stack.pop() as ManifestEntry;
    const known = cache.get(entry.p);
    if (
      known &&
      known.i === entry.i &&
      known.c === entry.c &&
      known.t === entry.t &&
      known.s === entry.s &&
      known.mt === entry.mt
    ) {
      if (entry.t === 'f') entry.h = known.h;
      entry.a = known.a;
    } else if (entry.t !== 'd') unread.push(entry);
    entries.push(entry);
    if (entry.t === 'd') {
      // Pushed last name first: popped by name, as sort() orders strings.
      for (const item of (children.get(entry.p) ?? []).sort(byName)) stack.push(item.entry);
    }
  }
  if (entries.length !== count) {
    throw new Error(`cannot list ${root} for the backup manifest: find listed entries outside it`);
  }
  if (unread.length > 0) {
    const input = Buffer.concat(unread.map((e) => Buffer.from(`${e.t === 'f' ? 'f' : 'o'}./${e.p}\0`)));
    const { stdout } = await runner.run(['perl', '-e', DIGEST_SCRIPT], {
      input,
      cwd: root,
      ...(signal && { signal }),
    });
    const lines = stdout.split('\n');
    for (const [n, entry] of unread.entries()) {
      const line = lines[n] ?? '';
      const [content, xattrs] = line.split(' ');
      if (line.startsWith('!') || content === undefined || xattrs === undefined) {
        throw new Error(`cannot read ${entry.p} for the backup manifest: ${line.slice(1) || 'no answer'}`);
      }
      if (entry.t === 'f') entry.h = content;
      entry.a = xattrs === '-' ? '' : xattrs;
    }
  }
  return entries;
}

/** The manifest as the bytes a link leaves: gzip'd JSON. `portable` drops what only this host knows. */
export function encodeManifest(entries: ManifestEntry[], options?: { portable?: boolean }): Buffer {
  const list = options?.portable ? entries.map(({ i: _i, c: _c, d: _d, ...rest }) => rest) : entries;
  return gzipSync(JSON.stringify({ format: 'trivisor-ct-manifest/1', entries: list }));
}

const isId = (v: unknown): v is number =>
  Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;

/**
 * The manifest in `data`, or undefined when it is not one that encodeManifest made: damaged,
 * truncated, a path that leaves the layer or comes twice, a type or id out of range.
 */
export function decodeManifest(data: Buffer): ManifestEntry[] | undefined {
  try {
    const v = JSON.parse(gunzipSync(data, { maxOutputLength: MAX_MANIFEST_BYTES }).toString('utf8')) as {
      format?: unknown;
      entries?: unknown;
    };
    if (v.format !== 'trivisor-ct-manifest/1' || !Array.isArray(v.entries)) return undefined;
    const seen = new Set<string>();
    const entries: ManifestEntry[] = [];
    for (const raw of v.entries as Array<Partial<ManifestEntry>>) {
      const { p, t, m, u, g, s, mt, h, a } = raw ?? {};
      if (
        typeof p !== 'string' ||
        !validPath(p) ||
        seen.has(p) ||
        typeof t !== 'string' ||
        !TYPES.has(t) ||
        !Number.isSafeInteger(m) ||
        (m as number) < 0 ||
        (m as number) > 0o7777 ||
        !isId(u) ||
        !isId(g) ||
        !Number.isSafeInteger(s) ||
        (s as number) < 0 ||
        typeof mt !== 'string' ||
        !/^-?\d+$/.test(mt) ||
        typeof h !== 'string' ||
        typeof a !== 'string'
      ) {
        return undefined;
      }
      seen.add(p);
      const entry: ManifestEntry = { p, t, m: m as number, u, g, s: s as number, mt, h, a };
      for (const key of ['i', 'c', 'd'] as const) {
        const local = raw[key];
        if (typeof local === 'string' && /^\d+$/.test(local)) entry[key] = local;
      }
      entries.push(entry);
    }
    if (entries[0]?.p !== '.' || entries[0].t !== 'd') return undefined;
    // Every entry's parent is a directory of the manifest.
    const dirs = new Set(entries.filter((e) => e.t === 'd').map((e) => e.p));
    if (entries.slice(1).some((e) => !dirs.has(posix.dirname(e.p)))) return undefined;
    return entries;
  } catch {
    return undefined;
  }
}

function validPath(p: string): boolean {
  if (p === '.') return true;
  if (p.length === 0 || p.includes('\0') || p.startsWith('/') || p.endsWith('/')) return false;
  return p.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/** Whether `now` is `then` in every way the manifest tells (digests included). */
export function sameEntry(then: ManifestEntry | undefined, now: ManifestEntry): boolean {
  return (
    then !== undefined &&
    then.t === now.t &&
    then.m === now.m &&
    then.u === now.u &&
    then.g === now.g &&
    then.s === now.s &&
    then.mt === now.mt &&
    then.h === now.h &&
    then.a === now.a
  );
}

/** Snapshot-file time that no file of the layer reaches (year 5138): tar then dumps by name only. */
const NEVER = '99999999999';

/**
 * A GNU tar snapshot file (format 2, tar's "Snapshot Files" appendix) for the tree whose manifest
 * is `current` (this host's inodes), made so that `tar --listed-incremental` over it archives
 * exactly what differs from the link's manifest `link`. Every directory of the tree is listed
 * with its own inode, so none is taken as new or renamed; each one's previous listing holds the
 * names of its entries that are unchanged since the link (files the same in every way, and
 * directories that were directories then). tar dumps an entry that its directory's previous
 * listing lacks and, for the others, only what is newer than the snapshot's time, which is set
 * beyond any file's. The archive also carries, as every incremental does, each directory (its
 * metadata and xattrs) with the names it holds now: the restore deletes what is not listed.
 */
export function carriedSnapshotFile(current: ManifestEntry[], link: ManifestEntry[]): Buffer {
  const then = new Map(link.map((e) => [e.p, e]));
  const kept = new Map<string, string[]>();
  for (const e of current) if (e.t === 'd') kept.set(e.p, []);
  for (const e of current.slice(1)) {
    const parent = kept.get(posix.dirname(e.p));
    const name = posix.basename(e.p);
    if (e.t === 'd') {
      if (then.get(e.p)?.t === 'd') parent?.push(`D${name}`);
    } else if (sameEntry(then.get(e.p), e)) parent?.push(`Y${name}`);
  }
  const parts: Buffer[] = [Buffer.from(`GNU tar-1.34-2\n${NEVER}\u00000\u0000`)];
  for (const e of current) {
    if (e.t !== 'd') continue;
    if (e.i === undefined || e.d === undefined) throw new Error(`no inode of ${e.p} to list`);
    const mt = BigInt(e.mt);
    const sec = mt / 1_000_000_000n - (mt < 0n && mt % 1_000_000_000n !== 0n ? 1n : 0n);
    const nsec = mt - sec * 1_000_000_000n;
    const name = e.p === '.' ? '.' : `./${e.p}`;
    const listing = (kept.get(e.p) ?? []).map((n) => `${n}\0`).join('');
    parts.push(Buffer.from(`0\0${sec}\0${nsec}\0${e.d}\0${e.i}\0${name}\0${listing}\0\0`));
  }
  return Buffer.concat(parts);
}

/** The non-directory entries of `current` a carried link archives: new or changed since `link`. */
export function changedSince(current: ManifestEntry[], link: ManifestEntry[]): string[] {
  const then = new Map(link.map((e) => [e.p, e]));
  return current.filter((e) => e.t !== 'd' && !sameEntry(then.get(e.p), e)).map((e) => e.p);
}

/** Reads manifest file `name` of the guest's dir; undefined when missing or damaged. */
export async function readManifest(dir: string, name: string): Promise<ManifestEntry[] | undefined> {
  if (!isManifestName(name)) return undefined;
  const data = await readFile(join(dir, name)).catch(() => undefined);
  return data && decodeManifest(data);
}

/** Writes manifest bytes as file `name` of the guest's dir, whole or not at all. */
export async function writeManifest(dir: string, name: string, data: Buffer): Promise<void> {
  const tmp = join(dir, `${name}.tmp`);
  await writeFile(tmp, data, { mode: 0o600 });
  await rename(tmp, join(dir, name));
}

/** Removes the guest's manifest files but `keep`. */
export async function removeManifests(dir: string, keep?: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith(MANIFEST_PREFIX) && name !== keep) await rm(join(dir, name), { force: true });
  }
}
