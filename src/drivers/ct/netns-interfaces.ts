import { closeSync, openSync, readSync } from 'node:fs';
import type { GuestInterface } from '../guest-driver.ts';

/*
 * A ct guest's interfaces and IPv4 addresses, read from /proc/PID/net of its init:
 * those files show the network namespace of the process. Reading three small files
 * costs no process on the host, so every ct guest can be looked at every few seconds
 * (nsenter + ip per guest would be a fork and two execs each time). /proc has no
 * interface flags: whether the guest's end is up is told by the host's end of the
 * veth (a veth has carrier only while both ends are up).
 */

/** Addresses kept per interface (a guest may configure thousands). */
const MAX_ADDRESSES = 16;

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function ipv4Value(text: string): number | undefined {
  const m = IPV4.exec(text);
  if (!m) return undefined;
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) return undefined;
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

/** Interface names of `/proc/PID/net/dev`, loopback left out. */
export function parseNetDev(text: string): string[] {
  return text
    .split('\n')
    .slice(2)
    .map((line) => line.split(':')[0]?.trim() ?? '')
    .filter((name) => name !== '' && name !== 'lo');
}

/**
 * The local IPv4 addresses of `/proc/PID/net/fib_trie` (leaves with a `/32 host LOCAL`
 * entry), loopback's 127.0.0.0/8 left out, each once.
 */
export function parseFibTrieLocal(text: string): string[] {
  const out = new Set<string>();
  let leaf: string | undefined;
  for (const line of text.split('\n')) {
    const l = /^\s*\|--\s+(\S+)\s*$/.exec(line);
    if (l) {
      leaf = l[1];
      continue;
    }
    if (/^\s*\+--/.test(line) || !/\S/.test(line) || /^\S/.test(line)) {
      leaf = undefined;
      continue;
    }
    if (leaf && /^\s*\/32 host LOCAL\b/.test(line) && !leaf.startsWith('127.')) out.add(leaf);
  }
  return [...out];
}

/** A directly connected IPv4 route of `/proc/PID/net/route`. */
export interface LinkRoute {
  iface: string;
  /** Network and mask as unsigned 32-bit numbers (most significant byte first). */
  network: number;
  mask: number;
}

/** The kernel writes addresses in /proc/net/route as the bytes in memory: little-endian hex. */
const routeHex = (hex: string): number => Buffer.from(hex.padStart(8, '0'), 'hex').readUInt32LE(0);

/** Routes without a gateway that are up (RTF_UP): the prefix routes of the interfaces' addresses. */
export function parseLinkRoutes(text: string): LinkRoute[] {
  const out: LinkRoute[] = [];
  for (const line of text.split('\n').slice(1)) {
    const [iface, dest, gateway, flags, , , , mask] = line.trim().split(/\s+/);
    if (!iface || !dest || !gateway || !flags || !mask) continue;
    if (routeHex(gateway) !== 0 || (Number.parseInt(flags, 16) & 0x1) === 0) continue;
    out.push({ iface, network: routeHex(dest), mask: routeHex(mask) });
  }
  return out;
}

/**
 * Puts the local addresses on the interfaces whose prefix route holds them (the longest);
 * an address no route holds (a /32, or one on an interface that is down) goes to the only
 * interface when there is one, and is left out otherwise.
 */
export function netnsInterfaces(files: { dev: string; fibTrie: string; route: string }): GuestInterface[] {
  const names = parseNetDev(files.dev);
  const routes = parseLinkRoutes(files.route);
  const byName = new Map<string, GuestInterface>(names.map((name) => [name, { name, addresses: [] }]));
  for (const address of parseFibTrieLocal(files.fibTrie)) {
    const value = ipv4Value(address);
    if (value === undefined) continue;
    let best: LinkRoute | undefined;
    for (const r of routes) {
      if ((value & r.mask) >>> 0 !== r.network || !byName.has(r.iface)) continue;
      if (!best || r.mask >>> 0 > best.mask >>> 0) best = r;
    }
    const iface = best ? byName.get(best.iface) : names.length === 1 ? byName.get(names[0]!) : undefined;
    // What a guest configures goes into the store and every list: a guest gets a bounded say.
    if (iface && iface.addresses.length < MAX_ADDRESSES) iface.addresses.push(address);
  }
  return [...byName.values()];
}

/**
 * Reads the interfaces of process `pid`'s network namespace (throws when the process is gone).
 * Synchronous on purpose: /proc files are made in memory and never wait on a disk, and the three
 * reads take ~50 µs, where async reads cost a thread-pool round trip each (8 times the CPU).
 */
export function readNetnsInterfaces(pid: number, options: { procRoot?: string } = {}): GuestInterface[] {
  const dir = `${options.procRoot ?? '/proc'}/${pid}/net`;
  return netnsInterfaces({
    dev: readAtMost(`${dir}/dev`),
    fibTrie: readAtMost(`${dir}/fib_trie`),
    route: readAtMost(`${dir}/route`),
  });
}

/**
 * The first `max` bytes of a file: a guest may give its namespace thousands of addresses
 * and routes, and the daemon's event loop must not pay for reading them all.
 */
function readAtMost(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const buf = readBuffer;
    const max = buf.length;
    let n = 0;
    for (let r = 1; r > 0 && n < max; n += r) r = readSync(fd, buf, n, max - n, null);
    return buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** Enough for ~2,000 addresses in fib_trie; what is past it is not read. One buffer serves every read (they are synchronous). */
const readBuffer = Buffer.allocUnsafe(256 * 1024);
