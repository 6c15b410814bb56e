import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { formatInjectedFile } from '../../src/core/guest-files.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { eventually } from '../system/harness.ts';
import type { MemberHost, TestCluster } from './cluster-harness.ts';

/*
 * Failures of HA members, shared by test/cluster/cluster-ha.test.ts and bench/ha-failover.ts
 * (decision 0052): a member's link cut (a partition: it fences itself) or the whole member killed,
 * and the guest found running elsewhere. The writer guest appends `BOOT UPTIME` to a log on its own
 * disk, on the shared pool, every 100 ms: every boot has its own random id, and the host's uptime
 * (one kernel for every member of the test cluster) orders all lines on one clock, so two boots
 * whose lines interleave ran at the same time.
 */

const WRITER = `#!/bin/sh
b=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n')
( while :; do read u _ < /proc/uptime; echo "$b $u" >> /root/ha.log; sleep 0.1; done ) &
`;

/** The config that makes a ct guest a writer: its boot script, injected at every start. */
export function writerConfig(): string[] {
  return [
    '-c',
    `files./etc/init.d/S90halog=${formatInjectedFile({ mode: 0o755, uid: 0, gid: 0, content: Buffer.from(WRITER) })}`,
  ];
}

/** Each boot's first and last line, on the host's uptime clock (seconds), in the order they began. */
export function bootsOf(log: string): Array<{ boot: string; from: number; to: number; lines: number }> {
  const boots = new Map<string, { boot: string; from: number; to: number; lines: number }>();
  for (const line of log.split('\n')) {
    const [boot, at] = line.trim().split(' ');
    const t = Number(at);
    if (!boot || !Number.isFinite(t)) continue;
    const b = boots.get(boot) ?? { boot, from: t, to: t, lines: 0 };
    b.from = Math.min(b.from, t);
    b.to = Math.max(b.to, t);
    b.lines++;
    boots.set(boot, b);
  }
  return [...boots.values()].sort((a, b) => a.from - b.from);
}

/** Pairs of boots that wrote at the same time: two writers at once. */
export function overlaps(log: string): string[] {
  const boots = bootsOf(log);
  const out: string[] = [];
  for (let i = 1; i < boots.length; i++) {
    const [a, b] = [boots[i - 1], boots[i]];
    if (a && b && b.from <= a.to)
      out.push(`${a.boot} [${a.from}, ${a.to}] and ${b.boot} [${b.from}, ${b.to}]`);
  }
  return out;
}

interface Listed {
  name: string;
  status: string;
  location?: string;
}

/** Where the guest is and its status, as `list` on `via` says. */
export function locate(via: MemberHost, name: string): Listed | undefined {
  const r = via.daemon.cli(['list', '--format', 'json']);
  if (r.code !== 0) return undefined;
  return (JSON.parse(r.stdout) as Listed[]).find((g) => g.name === name);
}

/** What each member's HA agent and daemon logged of HA (the last lines), for a failure's message. */
export function logsOf(hosts: MemberHost[]): string {
  const tail = (file: string, filter: (line: string) => boolean) => {
    try {
      return readFileSync(file, 'utf8').split('\n').filter(filter).slice(-30).join('\n');
    } catch {
      return `(no ${path.basename(file)})`;
    }
  };
  return hosts
    .map(
      (h) =>
        `--- ${h.name}'s HA agent:\n${tail(path.join(h.daemon.stateDir, 'ha', 'agent.log'), (l) => l.startsWith('{'))}\n` +
        `--- ${h.name}'s daemon:\n${tail(path.join(h.daemon.stateDir, 'daemon.log'), (l) => l.includes('HA'))}`,
    )
    .join('\n');
}

/** Cuts (or mends) a member's only link: its namespace's eth0 to the test bridge. */
export function setLink(cluster: TestCluster, host: MemberHost, up: boolean): void {
  const r = cluster.inNetns(host.netns, ['ip', 'link', 'set', 'eth0', up ? 'up' : 'down']);
  if (r.code !== 0) throw new Error(`cannot set ${host.name}'s link ${up ? 'up' : 'down'}: ${r.stderr}`);
}

/**
 * Kills every process of a member: those in its guests' cgroups, those that name its state dir
 * (etcd, the HA agent) and those whose environment does (the daemon: its command line does not).
 */
export function killMember(stateDir: string): number {
  const parent = cgroupParentOf(stateDir);
  let killed = 0;
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      if (
        cgroups.includes(`:${parent}/`) ||
        cgroups.includes(`:${parent}\n`) ||
        cmdline.includes(stateDir) ||
        environ.includes(`TRIVISOR_DIR=${stateDir}`)
      ) {
        process.kill(pid, 'SIGKILL');
        killed++;
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return killed;
}

/**
 * Waits until guest `name` runs on a member other than `lost`, asking the members in `via`;
 * resolves with the milliseconds since `since` and where it runs.
 */
export async function runningElsewhere(
  via: MemberHost[],
  name: string,
  lost: string,
  since: number,
  timeoutMs = 90_000,
): Promise<{ ms: number; on: string }> {
  let found: { ms: number; on: string } | undefined;
  await eventually(
    `${name} running elsewhere than ${lost}`,
    () => {
      for (const h of via) {
        const g = locate(h, name);
        if (g?.status === 'Running' && g.location && g.location !== lost) {
          found = { ms: Date.now() - since, on: g.location };
          return true;
        }
      }
      return false;
    },
    timeoutMs,
  );
  if (!found) throw new Error(`${name} was not found running elsewhere`);
  return found;
}

/** Waits until `host`'s HA agent holds its HA lease again (as `cluster list` on `via` says). */
export async function haLive(via: MemberHost, host: string, timeoutMs = 60_000): Promise<void> {
  await eventually(
    `${host}'s HA lease`,
    () => {
      const r = via.daemon.cli(['cluster', 'list', '--format', 'json']);
      if (r.code !== 0) return false;
      const m = (
        JSON.parse(r.stdout) as Array<{ name: string; status: string; ha?: { live: boolean } }>
      ).find((x) => x.name === host);
      return m?.status === 'Online' && m.ha?.live === true;
    },
    timeoutMs,
  );
}

/**
 * One partition: the member running `name` is cut off; the guest must run elsewhere; the link is
 * mended and the member's HA lease comes back. Resolves with the failover time and both members.
 */
export async function partitionOnce(
  cluster: TestCluster,
  name: string,
): Promise<{ ms: number; from: string; to: string }> {
  const hosts = cluster.hosts;
  const first = hosts[0];
  if (!first) throw new Error('no member');
  const where = locate(first, name) ?? locate(hosts[1] ?? first, name);
  const owner = hosts.find((h) => h.name === where?.location);
  if (!owner || where?.status !== 'Running') {
    throw new Error(`${name} is not running (${JSON.stringify(where)})\n${logsOf(cluster.hosts)}`);
  }
  const others = hosts.filter((h) => h !== owner);
  const cutAt = Date.now();
  setLink(cluster, owner, false);
  try {
    const { ms, on } = await runningElsewhere(others, name, owner.name, cutAt);
    return { ms, from: owner.name, to: on };
  } finally {
    setLink(cluster, owner, true);
    await haLive(others[0] ?? first, owner.name);
  }
}
