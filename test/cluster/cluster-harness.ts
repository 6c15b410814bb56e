import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { claim, describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually, startDaemon } from '../system/harness.ts';

/*
 * A Trivisor cluster on one machine, as Incus tests its clustering (issue 12, section 6):
 * each member's daemon in a network namespace of its own (its own bridges, nftables and
 * guests' ports), joined by veths to a test bridge in a hub namespace of its own, on a
 * /24 of 198.18.0.0/15; each daemon with its own state directory and so its own cgroup
 * parent (test/leftovers.ts). Daemons enter only the network namespace
 * (`nsenter --net=/run/netns/NAME`): `ip netns exec` also remounts /sys, which hides
 * the cgroup mounts from runc. The etcd members are the daemons' own.
 *
 * Everything is claimed before it is made (namespaces on the cluster's run directory,
 * the rest is the daemons'), so a killed test run is swept: processes in the namespaces,
 * etcd by its data directory, guests by their cgroups, then the namespaces with the veths
 * and bridges inside them.
 */

/** One member host: its namespace, address and daemon. */
export interface MemberHost {
  name: string;
  netns: string;
  /** Its IP on the test bridge: IPv4, or IPv6 with `underlay: 'ipv6'` (its cluster address). */
  ip: string;
  /** Its IPv4 address on the test bridge (the same as `ip` unless the underlay is IPv6). */
  ip4: string;
  daemon: Daemon;
}

/** The cluster's hosts and how to reach into them. */
export interface TestCluster {
  /** 198.18.X (the /24's first three octets). */
  subnet: string;
  hosts: MemberHost[];
  /** Adds a host (namespace, veth, daemon) that is not a member yet. */
  addHost(name: string): Promise<MemberHost>;
  /**
   * Starts a plain etcd (no daemon) in a namespace of its own on the test bridge: an
   * existing etcd for `cluster bootstrap --etcd`. Its data is in the cluster's run
   * directory, which its command line names (a sweep kills it).
   */
  startEtcd(name: string): Promise<{ ip: string; url: string }>;
  /** Runs argv inside a host's network namespace (only it: see above). */
  inNetns(netns: string, argv: string[], input?: string): { code: number; stdout: string; stderr: string };
  /** Kills every daemon and removes everything: etcd, guests, namespaces. Throws if something stays. */
  destroy(): Promise<void>;
}

function run(argv: string[]): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr.trim()}`);
}

/** Makes the hub and `names.length` hosts, each with a single-host daemon running (nothing joined yet). */
export async function makeTestCluster(
  names: string[],
  options: {
    /**
     * More environment of every member's daemon (a shared TRIVISOR_BACKUP_DIR, say), or of each by
     * its name (a boot id file of its own, TRIVISOR_BOOT_ID_FILE).
     */
    env?: Record<string, string> | ((host: string) => Record<string, string>);
    /**
     * The members' cluster addresses: IPv4 on a /24 of 198.18.0.0/15 (the default), or IPv6 on
     * a /64 of fd42::/16 (ULA; each host keeps its IPv4 address too, unused by the cluster).
     */
    underlay?: 'ipv4' | 'ipv6';
  } = {},
): Promise<TestCluster> {
  const dir = await makeRunDir('cluster');
  const id = randomBytes(3).toString('hex');
  const subnet = `198.18.${100 + (randomBytes(1)[0]! % 150)}`;
  // Written as `ip` prints it (no leading zeros), so tests compare it with what the kernel shows.
  const v6prefix = `fd42:${(Number.parseInt(id.slice(0, 4), 16) | 0x1000).toString(16)}:${(Number.parseInt(id.slice(4), 16) | 0x100).toString(16)}::`;
  const hub = `trvc-${id}-hub`;
  const hosts: MemberHost[] = [];
  claim(dir, { netns: [hub] });
  run(['ip', 'netns', 'add', hub]);
  run(['ip', '-n', hub, 'link', 'set', 'lo', 'up']);
  run(['ip', '-n', hub, 'link', 'add', 'br0', 'type', 'bridge']);
  run(['ip', '-n', hub, 'link', 'set', 'br0', 'up']);

  const inNetns: TestCluster['inNetns'] = (netns, argv, input) => {
    const r = spawnSync('nsenter', [`--net=/run/netns/${netns}`, ...argv], {
      encoding: 'utf8',
      input: input ?? '',
      timeout: 60_000,
    });
    return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
  };

  let made = 0;
  /** A namespace on the test bridge with `ip` on its eth0. */
  const plug = (name: string): { netns: string; ip: string; ip4: string } => {
    made++;
    const netns = `trvc-${id}-${name}`;
    const ip = `${subnet}.${10 + made}`;
    claim(dir, { netns: [netns] });
    run(['ip', 'netns', 'add', netns]);
    run(['ip', '-n', netns, 'link', 'set', 'lo', 'up']);
    // The hub's end is named after the host; the host's end is its eth0.
    run(['ip', '-n', hub, 'link', 'add', name, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    run(['ip', '-n', hub, 'link', 'set', name, 'master', 'br0', 'up']);
    run(['ip', '-n', netns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    if (options.underlay !== 'ipv6') {
      run(['ip', '-n', netns, 'link', 'set', 'eth0', 'up']);
      return { netns, ip, ip4: ip };
    }
    // nodad: usable at once, not after duplicate address detection's second or so.
    const ip6 = `${v6prefix}${10 + made}`;
    run(['ip', '-n', netns, 'addr', 'add', `${ip6}/64`, 'dev', 'eth0', 'nodad']);
    run(['ip', '-n', netns, 'link', 'set', 'eth0', 'up']);
    return { netns, ip: ip6, ip4: ip };
  };

  const addHost = async (name: string): Promise<MemberHost> => {
    const { netns, ip, ip4 } = plug(name);
    const daemon = await startDaemon({
      netns,
      hostname: name,
      env: {
        TRIVISOR_LOG_LEVEL: 'info',
        ...(typeof options.env === 'function' ? options.env(name) : options.env),
      },
    });
    const host = { name, netns, ip, ip4, daemon };
    hosts.push(host);
    return host;
  };

  const children: ChildProcess[] = [];
  const startEtcd = async (name: string) => {
    const { netns, ip } = plug(name);
    const h = ip.includes(':') ? `[${ip}]` : ip;
    const url = `http://${h}:2379`;
    const peer = `http://${h}:2380`;
    const child = spawn(
      'nsenter',
      [
        `--net=/run/netns/${netns}`,
        'etcd',
        `--name=${name}`,
        `--data-dir=${path.join(dir, `${name}-data`)}`,
        `--listen-client-urls=${url}`,
        `--advertise-client-urls=${url}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=${name}=${peer}`,
        '--logger=zap',
        '--log-level=warn',
      ],
      { stdio: 'ignore' },
    );
    children.push(child);
    await eventually(`etcd ${name} serving`, () =>
      inNetns(netns, ['curl', '-sf', '--max-time', '2', `${url}/health`]).stdout.includes('"health":"true"'),
    );
    return { ip, url };
  };

  const cluster: TestCluster = {
    subnet,
    hosts,
    addHost,
    startEtcd,
    inNetns,
    async destroy() {
      const left: string[] = [];
      // Killed, not stopped: destroy() would otherwise delete every member's guests through each one.
      for (const h of hosts) {
        await h.daemon.kill9().catch(() => {});
      }
      for (const c of children) c.kill('SIGKILL');
      for (const h of hosts) {
        await h.daemon.destroy().catch((e: unknown) => left.push((e as Error).message));
      }
      const report = await removeRunDir(dir);
      left.push(...report.left.map(describeThing));
      if (left.length > 0) throw new Error(`The cluster test left things behind: ${left.join('; ')}`);
    },
  };
  try {
    for (const name of names) await addHost(name);
  } catch (e) {
    await cluster.destroy().catch(() => {});
    throw e;
  }
  return cluster;
}

/** The members as `cluster list --format json` on `daemon` shows them. */
export function membersOf(daemon: Daemon): Array<{
  name: string;
  address: string;
  status: string;
  roles: string[];
  guests: number;
  version: string;
  cpu: { cpus: number; used: number; free: number } | null;
  memory: { totalBytes: number; usedBytes: number; freeBytes: number } | null;
}> {
  return JSON.parse(daemon.ok(['cluster', 'list', '--format', 'json']));
}

/** Waits until `daemon` lists member `name` with `status`; returns how long it took. */
/**
 * Bootstraps the cluster on the first host and joins the others to it, each with the address the
 * test bridge gives it; resolves once every host sees the last one Online. A failed step fails
 * the test with the CLI's error and the end of that daemon's log.
 */
export async function formCluster(cluster: TestCluster): Promise<void> {
  const [first, ...others] = cluster.hosts;
  assert.ok(first, 'a cluster of at least one host');
  const step = (host: MemberHost, args: string[]) => {
    const r = host.daemon.cli(args, { timeoutMs: 180_000 });
    assert.equal(
      r.code,
      0,
      `${args.slice(0, 2).join(' ')} on ${host.name}: ${r.stderr}\n${host.daemon.stderr().slice(-3000)}`,
    );
    return r.stdout;
  };
  step(first, ['cluster', 'bootstrap', '--address', first.ip]);
  for (const host of others) {
    const token = step(first, ['cluster', 'add', host.name]).trim();
    step(host, ['cluster', 'join', token, '--address', host.ip]);
  }
  const last = cluster.hosts.at(-1)?.name ?? first.name;
  for (const host of cluster.hosts) await waitForStatus(host.daemon, last, 'Online');
}

export async function waitForStatus(
  daemon: Daemon,
  name: string,
  status: string,
  timeoutMs = 30_000,
): Promise<number> {
  const started = Date.now();
  await eventually(
    `member ${name} ${status}`,
    () => {
      const r = daemon.cli(['cluster', 'list', '--format', 'json']);
      if (r.code !== 0) return false;
      return (JSON.parse(r.stdout) as Array<{ name: string; status: string }>).some(
        (m) => m.name === name && m.status === status,
      );
    },
    timeoutMs,
  );
  return Date.now() - started;
}
