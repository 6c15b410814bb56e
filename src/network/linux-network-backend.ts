import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { failedPrecondition, internal } from '../core/errors.ts';
import type { ProcessIdentity } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { isSameProcess, readProcessIdentity } from '../host/proc-stat.ts';
import type { ProcessRunner } from '../host/runner.ts';
import {
  activeLeases,
  dhcpHostsFile,
  dnsmasqArgv,
  dnsmasqPaths,
  hostsFile,
  leasesWithoutConflicts,
} from './dnsmasq-config.ts';
import { stableMac } from './ipv4.ts';
import { leafAlias, leafBridgeName, leafUplink, PORTS_PER_BRIDGE, pickBridge } from './leaf-bridges.ts';
import type {
  NetworkBackend,
  NetworkDefinition,
  NicCounters,
  PortDefinition,
  PortState,
} from './network-backend.ts';
import {
  aclRuleset,
  deleteNetworkRuleset,
  deletePortRuleset,
  deletePortsTable,
  networkRuleset,
  type PortFilter,
  parsePortsTable,
  portRuleset,
  portsTable,
  portsTableRuleset,
} from './nft-rules.ts';
import {
  deleteTunnelRuleset,
  fdbChanges,
  floodDestinations,
  gatewayMac,
  spannedMtu,
  tunnelRuleset,
  UNDERLAY_MTU,
  VXLAN_PORT,
  vxlanDevice,
} from './vxlan.ts';

/** What the Linux backend is built with. */
export interface LinuxNetworkBackendOptions {
  runner: ProcessRunner;
  log: Logger;
  stateDir: string;
  /** Where per-interface counters are read (tests point it elsewhere). */
  sysClassNet?: string;
  procRoot?: string;
  /** Guest ports a bridge takes before the next leaf bridge is used (decision 0068; tests lower it). */
  portsPerBridge?: number;
}

/** The fixed MAC of a network's bridge. */
export const bridgeMac = (stateDir: string, name: string): string => stableMac(`bridge\0${stateDir}`, name);

/** The ifb that shapes what a guest port sends (port names are 12 characters, so this fits in 15). */
export const ifbOf = (port: string): string => `${port}i`;

/** The alias a bridge carries to say which state dir made it (so nothing else is ever touched). */
export function ownerAlias(stateDir: string): string {
  return `trivisor:${ownerHash(stateDir)}`;
}

/** 12 hex of the state dir: names what one daemon made (its bridges' alias, its ports table). */
export function ownerHash(stateDir: string): string {
  return createHash('sha256').update(stateDir).digest('hex').slice(0, 12);
}

/** The Linux implementation: iproute2 bridges and veths, dnsmasq, nftables, all through the runner. */
export function createLinuxNetworkBackend(options: LinuxNetworkBackendOptions): NetworkBackend {
  const { runner, stateDir } = options;
  const log = options.log.child({ component: 'network-backend' });
  const sysClassNet = options.sysClassNet ?? '/sys/class/net';
  const procRoot = options.procRoot ?? '/proc';
  const alias = ownerAlias(stateDir);
  const owner = ownerHash(stateDir);
  const portsPerBridge = options.portsPerBridge ?? PORTS_PER_BRIDGE;

  /** `ip -details -json link show` of one device; undefined when it does not exist. */
  const linkInfo = async (
    name: string,
  ): Promise<{ ifalias?: string; address?: string; flags?: string[] } | undefined> => {
    const r = await runner.run(['ip', '-json', 'link', 'show', 'dev', name], { allowFailure: true });
    if (r.code !== 0) return undefined;
    return (JSON.parse(r.stdout || '[]') as Array<{ ifalias?: string }>)[0];
  };

  const nft = (script: string) => runner.run(['nft', '-f', '-'], { input: script });

  /**
   * The network tables' script this daemon last applied, by network, with how nft listed the
   * tables it makes right after: a reconcile that would apply the same text again skips it while
   * the listing is the same (a table or chain deleted, flushed or changed under the daemon is
   * written again). One `nft list table` a table the text makes (the ip table; the ACL table when
   * there are ACLs), each a few lines.
   */
  const appliedTables = new Map<string, { script: string; listing: string }>();
  const listTables = async (script: string): Promise<string | undefined> => {
    let out = '';
    for (const m of script.matchAll(/^table (\S+) (\S+) \{$/gm)) {
      const r = await runner.run(['nft', 'list', 'table', m[1] ?? '', m[2] ?? ''], { allowFailure: true });
      if (r.code !== 0) return undefined;
      out += r.stdout;
    }
    return out;
  };

  /**
   * What the ports table filters (decision 0068, amended 2026-12-07), read from the kernel once:
   * a table that is missing, damaged or of the layout before (a chain per port behind a verdict
   * map) is rewritten whole in one transaction, with the ports it filtered (adoption). Kept up to
   * date with each port's change after that; forgotten when the table is removed or a change fails.
   */
  let portsState: Promise<Map<string, PortFilter>> | undefined;
  const readPorts = async (): Promise<Map<string, PortFilter>> => {
    const r = await runner.run(['nft', '-j', 'list', 'table', 'bridge', portsTable(owner)], {
      allowFailure: true,
    });
    const found = parsePortsTable(r.code === 0 ? r.stdout : '');
    if (found.layout === 'rewrite') {
      log.info({ ports: found.ports.length }, 'rewriting the ports table in its current layout');
    }
    if (found.layout !== 'current') await nft(portsTableRuleset(owner, found.ports));
    return new Map(found.ports.map((p) => [p.port, p]));
  };
  const loadPorts = (): Promise<Map<string, PortFilter>> => {
    if (!portsState) {
      const p = readPorts();
      portsState = p;
      p.catch(() => {
        if (portsState === p) portsState = undefined;
      });
    }
    return portsState;
  };
  /**
   * One port's element changes in one transaction. When it fails (the table changed under the
   * daemon: deleted, or an element it deletes is gone), the table is read again, rewritten if it
   * is not whole, and the change made once more from what it holds.
   */
  const changePorts = async (
    script: (ports: Map<string, PortFilter>) => string,
    done: (ports: Map<string, PortFilter>) => void,
  ): Promise<void> => {
    const before = loadPorts();
    let ports = await before;
    try {
      await nft(script(ports));
    } catch (e) {
      log.warn({ err: e }, 'a change of the ports table failed; reading it again');
      if (portsState === before) portsState = undefined;
      ports = await loadPorts();
      await nft(script(ports));
    }
    done(ports);
    // Read again meanwhile (another change failed): the map read holds this change too, or gets it.
    const now = await portsState?.catch(() => undefined);
    if (now && now !== ports) done(now);
  };

  /** `ip -details -json link show` of a VXLAN device; undefined when it does not exist. */
  const vxlanInfo = async (dev: string) => {
    const r = await runner.run(['ip', '-details', '-json', 'link', 'show', 'dev', dev], {
      allowFailure: true,
    });
    if (r.code !== 0) return undefined;
    return (
      JSON.parse(r.stdout || '[]') as Array<{
        ifalias?: string;
        linkinfo?: {
          info_kind?: string;
          // `local6` when the tunnel is over IPv6 (decision 0101).
          info_data?: { id?: number; local?: string; local6?: string; port?: number };
        };
      }>
    )[0];
  };

  /**
   * Networks whose last ensure() built a tunnel, with its MTU (1450 over IPv4, 1430 over IPv6):
   * inspect() says a bridge without it needs repair.
   */
  const tunnelled = new Map<string, number>();

  /** Removes a network's VXLAN device; its table too unless the caller's transaction deletes it. */
  const removeTunnel = async (name: string, { table = true } = {}): Promise<void> => {
    tunnelled.delete(name);
    const dev = vxlanDevice(stateDir, name);
    const info = await vxlanInfo(dev);
    if (info?.ifalias === alias) await runner.run(['ip', 'link', 'del', 'dev', dev]);
    if (table) await nft(deleteTunnelRuleset(name));
  };

  /**
   * Joins the bridge to the other members' bridges (decision 0050): a VXLAN device with the
   * network's VNI from this member's cluster address, one all-zero FDB entry per other member
   * (unicast head-end replication; MACs are learned), its filters loaded before it is on the bridge.
   */
  const ensureTunnel = async (def: NetworkDefinition): Promise<void> => {
    const t = def.tunnel;
    if (!t) return removeTunnel(def.name);
    const dev = vxlanDevice(stateDir, def.name);
    let info = await vxlanInfo(dev);
    if (info && info.ifalias !== alias) {
      throw failedPrecondition(
        `A host interface named ${dev} exists and is not this daemon's VXLAN device: remove it.`,
      );
    }
    const data = info?.linkinfo?.info_data;
    const local = data?.local ?? data?.local6;
    if (info && (data?.id !== t.vni || local !== t.local || data.port !== VXLAN_PORT)) {
      await runner.run(['ip', 'link', 'del', 'dev', dev]);
      info = undefined;
    }
    const mtu = spannedMtu(t.local);
    await nft(
      tunnelRuleset({ network: def.name, device: dev, gateway: def.gateway.address, hosts: def.hosts, mtu }),
    );
    if (!info) {
      await runner.run([
        ...['ip', 'link', 'add', 'name', dev, 'type', 'vxlan', 'id', String(t.vni)],
        ...['local', t.local, 'dstport', String(VXLAN_PORT)],
      ]);
      await runner.run(['ip', 'link', 'set', 'dev', dev, 'alias', alias]);
    }
    const fdb = await runner.run(['bridge', '-json', 'fdb', 'show', 'dev', dev]);
    const { add, remove } = fdbChanges(floodDestinations(fdb.stdout), t.remotes);
    for (const ip of remove) {
      await runner.run(['bridge', 'fdb', 'del', '00:00:00:00:00:00', 'dev', dev, 'dst', ip], {
        allowFailure: true,
      });
    }
    for (const ip of add) {
      await runner.run(['bridge', 'fdb', 'append', '00:00:00:00:00:00', 'dev', dev, 'dst', ip]);
    }
    await runner.run([
      ...['ip', 'link', 'set', 'dev', dev, 'mtu', String(mtu)],
      ...['master', def.name, 'up'],
    ]);
    // Isolated guests of other members are isolated from these too: the tunnel is one more isolated port.
    await runner.run(['bridge', 'link', 'set', 'dev', dev, 'isolated', def.isolated ? 'on' : 'off']);
    tunnelled.set(def.name, mtu);
  };

  const dnsmasqRuns = async (known: ProcessIdentity | undefined): Promise<boolean> => {
    if (!known || !(await isSameProcess(known, procRoot))) return false;
    const comm = await readFile(`${procRoot}/${known.pid}/comm`, 'utf8').catch(() => '');
    return comm.trim() === 'dnsmasq';
  };

  /** The dnsmasq recorded in the pid file, if it is still that process. */
  const adoptDnsmasq = async (name: string, known: ProcessIdentity | undefined) => {
    if (await dnsmasqRuns(known)) return known;
    const pid = Number((await readFile(dnsmasqPaths(stateDir, name).pidFile, 'utf8').catch(() => '')).trim());
    if (!pid) return undefined;
    const identity = await readProcessIdentity(pid, procRoot);
    return identity && (await dnsmasqRuns(identity)) ? identity : undefined;
  };

  const cmdlineOf = async (pid: number): Promise<string[]> =>
    (await readFile(`${procRoot}/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean);

  const killDnsmasq = async (identity: ProcessIdentity | undefined) => {
    if (!identity || !(await dnsmasqRuns(identity))) return;
    try {
      process.kill(identity.pid, 'SIGTERM');
    } catch {
      return;
    }
    for (let i = 0; i < 100 && (await isSameProcess(identity, procRoot)); i++) await sleep(20);
  };

  /** Writes a file only when its content changed; says whether it did. */
  const writeIfChanged = async (path: string, content: string): Promise<boolean> => {
    const old = await readFile(path, 'utf8').catch(() => undefined);
    if (old === content) return false;
    await writeFile(path, content, { mode: 0o644 });
    return true;
  };

  /** Names of a bridge's ports from sysfs; undefined when there is no such bridge. */
  const bridgePorts = (bridge: string): string[] | undefined => {
    try {
      return readdirSync(join(sysClassNet, bridge, 'brif'));
    } catch {
      return undefined;
    }
  };
  /** Guest ports (`tv…`; not uplinks, not the VXLAN device) a bridge holds. */
  const guestPortCount = (bridge: string): number | undefined =>
    bridgePorts(bridge)?.filter((p) => p.startsWith('tv')).length;

  /** The network's leaf bridges that exist, by index from 1 (decision 0068). */
  const leavesOf = (network: string): string[] => {
    const out: string[] = [];
    for (let i = 1; ; i++) {
      const leaf = leafBridgeName(stateDir, network, i);
      if (!existsSync(join(sysClassNet, leaf))) return out;
      out.push(leaf);
    }
  };

  /** Hangs a leaf off the network's bridge (uplink isolated on an isolated network). */
  const linkLeaf = async (network: string, leaf: string, isolated: boolean): Promise<void> => {
    const { bridgeEnd } = leafUplink(leaf);
    await runner.run(['ip', 'link', 'set', 'dev', bridgeEnd, 'master', network, 'up']);
    // Isolated guests reach the gateway (the bridge itself), never each other: a guest's port is
    // isolated on its leaf, and the leaves' uplinks are isolated from each other on the bridge.
    await runner.run(['bridge', 'link', 'set', 'dev', bridgeEnd, 'isolated', isolated ? 'on' : 'off']);
  };

  /**
   * A leaf is a host interface too, and the host answers ARP for its addresses on every interface:
   * the leaf answered for the gateway with its own MAC (every broadcast reaches it through its
   * uplink), and a guest that took that answer sent to the leaf, where nothing replied (seen at
   * 2,000 guests: most first pings of the gateway lost). It answers no ARP at all (arp_ignore 8).
   */
  const quietLeaf = async (leaf: string): Promise<void> => {
    const now = await readFile(`${procRoot}/sys/net/ipv4/conf/${leaf}/arp_ignore`, 'utf8').catch(() => '');
    if (now.trim() !== '8') await runner.run(['sysctl', '-q', '-w', `net.ipv4.conf.${leaf}.arp_ignore=8`]);
  };

  const creatingLeaf = new Map<string, Promise<void>>();
  const createLeaf = (network: string, leaf: string, isolated: boolean): Promise<void> => {
    const busy = creatingLeaf.get(leaf);
    if (busy) return busy;
    const { leafEnd, bridgeEnd } = leafUplink(leaf);
    const p = (async () => {
      if (existsSync(join(sysClassNet, leaf))) return;
      log.info({ network, leaf }, 'the network bridge is full; adding a leaf bridge');
      await runner.run(['ip', 'link', 'add', 'name', leaf, 'type', 'bridge', 'stp_state', '0']);
      await runner.run(['ip', 'link', 'set', 'dev', leaf, 'alias', leafAlias(alias, network)]);
      await quietLeaf(leaf);
      await runner.run(['ip', 'link', 'add', 'name', leafEnd, 'type', 'veth', 'peer', 'name', bridgeEnd]);
      await runner.run(['ip', 'link', 'set', 'dev', leafEnd, 'master', leaf, 'up']);
      await linkLeaf(network, leaf, isolated);
      await runner.run(['ip', 'link', 'set', 'dev', leaf, 'up']);
    })().finally(() => creatingLeaf.delete(leaf));
    creatingLeaf.set(leaf, p);
    return p;
  };

  /**
   * Places picked on a bridge whose port is not enslaved yet: attaches run side by side, and each
   * counts the others' picks, so that no bridge takes more than its share (the CI saw 65 of 64).
   */
  const reserved = new Map<string, number>();
  const reserve = (bridge: string, delta: number) => {
    const n = (reserved.get(bridge) ?? 0) + delta;
    if (n > 0) reserved.set(bridge, n);
    else reserved.delete(bridge);
  };

  /**
   * Runs `join(bridge)`, which puts a port on the bridge of `network` it goes on: the network's
   * own, or a leaf with room. The place is reserved from the pick until `join` is done.
   */
  const onBridge = async <T>(network: string, isolated: boolean, join: (bridge: string) => Promise<T>) => {
    for (;;) {
      const busy = [...creatingLeaf.values()];
      if (busy.length === 0) break;
      await Promise.allSettled(busy);
    }
    const { bridge, create } = pickBridge(network, {
      leafName: (i) => leafBridgeName(stateDir, network, i),
      ports: (b) => {
        const n = guestPortCount(b);
        return n === undefined ? undefined : n + (reserved.get(b) ?? 0);
      },
      perBridge: portsPerBridge,
    });
    reserve(bridge, 1);
    try {
      if (create) await createLeaf(network, bridge, isolated);
      return await join(bridge);
    } finally {
      reserve(bridge, -1);
    }
  };

  /** Enslaves an existing port (a tap, a port found off its bridge) to the bridge it goes on. */
  const enslave = (network: string, isolated: boolean, port: string, allowFailure = false) =>
    onBridge(network, isolated, (bridge) =>
      runner.run(['ip', 'link', 'set', 'dev', port, 'master', bridge, 'up'], { allowFailure }),
    );

  /**
   * A recreated bridge gets back the ports of running guests (they kept their veths) and its
   * leaves. Read from sysfs: `ip link show` of every interface is megabytes at thousands of ports.
   */
  const reattachPorts = async (def: NetworkDefinition): Promise<void> => {
    const leaves = leavesOf(def.name);
    for (const leaf of leaves) {
      // Leaves made before they were kept quiet.
      await quietLeaf(leaf);
      if (!bridgePorts(def.name)?.includes(leafUplink(leaf).bridgeEnd)) {
        await linkLeaf(def.name, leaf, def.isolated).catch(() => {});
      }
    }
    const wanted = def.hosts.flatMap((h) => (h.port ? [h.port] : []));
    if (wanted.length === 0) return;
    const attached = new Set([def.name, ...leaves].flatMap((b) => bridgePorts(b) ?? []));
    for (const port of wanted) {
      if (attached.has(port) || !existsSync(join(sysClassNet, port))) continue;
      await enslave(def.name, def.isolated, port, true);
      if (def.isolated) {
        await runner.run(['bridge', 'link', 'set', 'dev', port, 'isolated', 'on'], {
          allowFailure: true,
        });
      }
    }
  };

  /** tbf on a device's egress: a burst of 10 ms at the rate, at least one jumbo frame. */
  const shape = (dev: string, bitsPerSecond: number) =>
    runner.run([
      ...['tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${bitsPerSecond}bit`],
      ...['burst', String(Math.max(15_000, Math.round(bitsPerSecond / 8 / 100))), 'latency', '50ms'],
    ]);

  /** Bandwidth limits of a guest's host-side port, which is on its bridge. */
  const shapePort = async (def: PortDefinition): Promise<void> => {
    if (def.ingressBitsPerSecond) await shape(def.port, def.ingressBitsPerSecond);
    if (def.egressBitsPerSecond) {
      // What the guest sends arrives on the host end: redirect it through an ifb to shape it there
      // (this kernel has no tc police action).
      const ifb = ifbOf(def.port);
      await runner.run(['ip', 'link', 'add', 'name', ifb, 'type', 'ifb']);
      await runner.run(['ip', 'link', 'set', 'dev', ifb, 'up']);
      await shape(ifb, def.egressBitsPerSecond);
      await runner.run(['tc', 'qdisc', 'add', 'dev', def.port, 'handle', 'ffff:', 'ingress']);
      await runner.run([
        ...['tc', 'filter', 'add', 'dev', def.port, 'parent', 'ffff:', 'protocol', 'all'],
        ...['u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', ifb],
      ]);
    }
  };

  /** Filters, enslaves, isolates and shapes a tap (its filters are loaded before it is on the bridge). */
  const attachTap = async (def: PortDefinition): Promise<void> => {
    await filterPort(def);
    await enslave(def.bridge, def.isolated, def.port);
    if (def.isolated) await runner.run(['bridge', 'link', 'set', 'dev', def.port, 'isolated', 'on']);
    await shapePort(def);
  };

  /**
   * Ports whose links and filters this daemon removed and has not plugged since: unplugging them
   * again (the ct driver's clean-up before each start, the plug's own) runs nothing. Forgotten at
   * a restart, when anything may be left.
   */
  const unplugged = new Set<string>();
  const filterPort = async (def: PortDefinition): Promise<void> => {
    unplugged.delete(def.port);
    const filter: PortFilter = { port: def.port, mac: def.mac, ip: def.ip };
    const same = (p: PortFilter | undefined) => p?.mac === filter.mac && p.ip === filter.ip;
    if (same((await loadPorts()).get(def.port))) return;
    await changePorts(
      (ports) => portRuleset(owner, filter, ports.get(def.port)),
      (ports) => ports.set(def.port, filter),
    );
  };

  /**
   * Deletes a port and its ifb in one process (`-force`: either may be missing). Whether the
   * port is there cannot be read from sysfs: a daemon in a network namespace of its own (a
   * cluster member in the tests) sees the host's interfaces there.
   */
  const removeLinks = (port: string) =>
    runner.run(['ip', '-force', '-batch', '-'], {
      input: `link del dev ${port}\nlink del dev ${ifbOf(port)}\n`,
      allowFailure: true,
    });

  const backend: NetworkBackend = {
    async ensure(def, known) {
      const info = await linkInfo(def.name);
      if (info && info.ifalias !== alias) {
        throw failedPrecondition(
          `A host interface named ${def.name} exists and is not this daemon's bridge: pick another network name.`,
        );
      }
      if (!info) {
        await runner.run(['ip', 'link', 'add', 'name', def.name, 'type', 'bridge', 'stp_state', '0']);
        await runner.run(['ip', 'link', 'set', 'dev', def.name, 'alias', alias]);
      }
      const cidr = `${def.gateway.address}/${def.gateway.prefixLength}`;
      const addrs = await runner.run(['ip', '-json', '-4', 'addr', 'show', 'dev', def.name]);
      const present = (
        JSON.parse(addrs.stdout || '[]') as Array<{ addr_info?: Array<{ local: string; prefixlen: number }> }>
      )
        .flatMap((l) => l.addr_info ?? [])
        .map((a) => `${a.local}/${a.prefixlen}`);
      if (present.length !== 1 || present[0] !== cidr) {
        await runner.run(['ip', '-4', 'addr', 'flush', 'dev', def.name]);
        await runner.run(['ip', 'addr', 'add', cidr, 'dev', def.name]);
      }
      // A bridge takes the lowest MAC of its ports unless given one: guests would lose the
      // gateway (stale ARP) whenever a guest's port comes or goes. With a VNI it is the same on
      // every member (a distributed gateway, decision 0050): a guest that moves keeps its ARP entry.
      const mac = def.vni !== undefined ? gatewayMac(def.name, def.vni) : bridgeMac(stateDir, def.name);
      if (info?.address !== mac || !info.flags?.includes('UP')) {
        await runner.run(['ip', 'link', 'set', 'dev', def.name, 'address', mac, 'up']);
      }
      await reattachPorts(def);

      if (def.nat) await runner.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
      // One transaction for the tables (a reconcile runs at every NIC's create and delete); a
      // network on one host drops a tunnel's table in it too.
      // Written at the daemon's first reconcile of the network and when it changes; skipped when
      // this daemon applied the same text last and the tables still list as they did then.
      const tables =
        networkRuleset(def) + aclRuleset(def) + (def.tunnel ? '' : deleteTunnelRuleset(def.name));
      const applied = appliedTables.get(def.name);
      if (applied?.script !== tables || (await listTables(tables)) !== applied.listing) {
        appliedTables.delete(def.name);
        await nft(tables);
        const listing = await listTables(tables);
        if (listing !== undefined) appliedTables.set(def.name, { script: tables, listing });
      }
      // The ports table, read (and an older layout adopted) once.
      await loadPorts();
      if (def.tunnel) await ensureTunnel(def);
      else await removeTunnel(def.name, { table: false });

      const paths = dnsmasqPaths(stateDir, def.name);
      // dnsmasq drops to its own user and re-reads the hosts files on SIGHUP: they must stay reachable.
      const mode = (await stat(stateDir)).mode;
      if ((mode & 0o001) === 0) await chmod(stateDir, (mode & 0o7777) | 0o001);
      await mkdir(paths.dir, { recursive: true, mode: 0o755 });
      await chmod(join(stateDir, 'networks'), 0o755);
      const dhcpChanged = await writeIfChanged(paths.dhcpHosts, dhcpHostsFile(def));
      const hostsChanged = (await writeIfChanged(paths.hosts, hostsFile(def))) || dhcpChanged;

      const argv = dnsmasqArgv(def, paths);
      let running = await adoptDnsmasq(def.name, known);
      // A dnsmasq that outlived its bridge holds sockets bound to the old interface: start afresh.
      if (running && !info) {
        await killDnsmasq(running);
        running = undefined;
      }
      if (running && (await cmdlineOf(running.pid)).join('\0') !== argv.join('\0')) {
        log.info({ network: def.name }, 'dnsmasq arguments changed; restarting it');
        await killDnsmasq(running);
        running = undefined;
      }
      // dnsmasq never hands out an address leased to another MAC until that lease ends: a deleted
      // guest's lease would keep its address from the next guest given it. Such leases are dropped,
      // which takes a restart (dnsmasq reads its lease file only at start).
      const leases = await readFile(paths.leases, 'utf8').catch(() => '');
      const kept = leasesWithoutConflicts(leases, def.hosts);
      if (running && kept !== leases) {
        log.info({ network: def.name }, 'dnsmasq holds leases of reassigned addresses; restarting it');
        await killDnsmasq(running);
        running = undefined;
      }
      if (running) {
        if (hostsChanged) process.kill(running.pid, 'SIGHUP');
        return running;
      }
      if (kept !== leases) await writeFile(paths.leases, kept, { mode: 0o644 });
      await rm(paths.pidFile, { force: true });
      await runner.run(argv, { timeoutMs: 10_000 });
      const pid = Number((await readFile(paths.pidFile, 'utf8').catch(() => '')).trim());
      const identity = pid ? await readProcessIdentity(pid, procRoot) : undefined;
      if (!identity) throw internal(`dnsmasq for network ${def.name} did not start: see ${paths.log}.`);
      log.info({ network: def.name, pid }, 'dnsmasq started');
      return identity;
    },

    async inspect(name, known) {
      const info = await linkInfo(name);
      // A VXLAN device deleted under a spanned network is a broken bridge too: the repair rebuilds it.
      const tunnel = !tunnelled.has(name) || (await linkInfo(vxlanDevice(stateDir, name)))?.ifalias === alias;
      return {
        bridge: info?.ifalias === alias && tunnel,
        dnsmasq: (await adoptDnsmasq(name, known)) !== undefined,
      };
    },

    async remove(name, known) {
      await killDnsmasq(await adoptDnsmasq(name, known));
      const info = await linkInfo(name);
      if (info?.ifalias === alias) await runner.run(['ip', 'link', 'del', 'dev', name]);
      // Its leaf bridges (decision 0068), found by their alias; their uplinks go with them.
      const bridges = await runner.run(['ip', '-json', 'link', 'show', 'type', 'bridge'], {
        allowFailure: true,
      });
      for (const l of JSON.parse(bridges.stdout || '[]') as Array<{ ifname: string; ifalias?: string }>) {
        if (l.ifalias !== leafAlias(alias, name)) continue;
        await runner.run(['ip', 'link', 'del', 'dev', leafUplink(l.ifname).bridgeEnd], {
          allowFailure: true,
        });
        await runner.run(['ip', 'link', 'del', 'dev', l.ifname], { allowFailure: true });
      }
      // The ports table goes with the last network: no port is left without a bridge.
      const others = (JSON.parse(bridges.stdout || '[]') as Array<{ ifname: string; ifalias?: string }>).some(
        (l) => l.ifalias === alias && l.ifname !== name,
      );
      if (!others) {
        portsState = undefined;
        await nft(deletePortsTable(owner));
        portsState = undefined;
      }
      appliedTables.delete(name);
      await nft(deleteNetworkRuleset(name));
      await nft(aclRuleset({ name, hosts: [] }));
      await removeTunnel(name);
      await rm(dnsmasqPaths(stateDir, name).dir, { recursive: true, force: true });
    },

    async listOwned() {
      const r = await runner.run(['ip', '-json', 'link', 'show', 'type', 'bridge']);
      return (JSON.parse(r.stdout || '[]') as Array<{ ifname: string; ifalias?: string }>)
        .filter((l) => l.ifalias === alias)
        .map((l) => l.ifname);
    },

    async plugVeth(def, { netnsPid, ifname, address }) {
      const netns = `${procRoot}/${netnsPid}/ns/net`;
      if (!unplugged.has(def.port)) await removeLinks(def.port);
      try {
        // Filters first: the chain matches the port by name, before it exists.
        await filterPort(def);
        // One command makes the pair, puts the host end on its bridge, up, and makes the guest
        // end in the guest's namespace under its name with the NIC's MAC (and, on a spanned
        // network, the tunnel's MTU, whatever its DHCP client does: a hot-plugged NIC gets no
        // lease). The guest end comes up last, so nothing passes before the port is isolated.
        await onBridge(def.bridge, def.isolated, (bridge) =>
          runner.run([
            ...['ip', 'link', 'add', 'name', def.port, 'master', bridge, 'up', 'type', 'veth'],
            ...['peer', 'name', ifname, 'address', def.mac],
            ...(tunnelled.has(def.bridge) ? ['mtu', String(tunnelled.get(def.bridge))] : []),
            ...['netns', netns],
          ]),
        );
        if (def.isolated) await runner.run(['bridge', 'link', 'set', 'dev', def.port, 'isolated', 'on']);
        await shapePort(def);
        // The guest end must come up in its namespace: a veth peer made up from here is refused.
        if (address === undefined) {
          await runner.run(['nsenter', `--net=${netns}`, 'ip', 'link', 'set', 'dev', ifname, 'up']);
        } else {
          await runner.run(['nsenter', `--net=${netns}`, 'ip', '-batch', '-'], {
            input: `link set dev ${ifname} up\naddr replace ${address} dev ${ifname}\n`,
          });
        }
      } catch (e) {
        await backend.unplug(def.port);
        throw e;
      }
    },

    async plugTap(def, options = {}) {
      await backend.unplug(def.port);
      try {
        await runner.run([
          ...['ip', 'tuntap', 'add', 'dev', def.port, 'mode', 'tap'],
          ...(options.user !== undefined ? ['user', String(options.user)] : []),
        ]);
        // The host end at the tunnel's MTU too, as a ct guest's veth: the guest end is QEMU's or
        // UML's, which the driver sets in the guest from the MTU returned.
        const mtu = tunnelled.get(def.bridge);
        if (mtu !== undefined) {
          await runner.run(['ip', 'link', 'set', 'dev', def.port, 'mtu', String(mtu)]);
        }
        await attachTap(def);
      } catch (e) {
        await backend.unplug(def.port);
        throw e;
      }
      return { mtu: tunnelled.get(def.bridge) ?? UNDERLAY_MTU };
    },

    async unplug(port) {
      if (unplugged.has(port)) return;
      await removeLinks(port);
      await changePorts(
        (ports) => deletePortRuleset(owner, port, ports.get(port)),
        (ports) => ports.delete(port),
      );
      // Bounded: the ports of deleted guests stay in it until it is cleared.
      if (unplugged.size >= 100_000) unplugged.clear();
      unplugged.add(port);
    },

    async counters(port): Promise<NicCounters | undefined> {
      const read = async (f: string) =>
        Number((await readFile(join(sysClassNet, port, 'statistics', f), 'utf8')).trim());
      try {
        // The host end's receive is the guest's transmit.
        return {
          rxBytes: await read('tx_bytes'),
          txBytes: await read('rx_bytes'),
          rxPackets: await read('tx_packets'),
          txPackets: await read('rx_packets'),
          rxErrors: await read('tx_errors'),
          txErrors: await read('rx_errors'),
          rxDropped: await read('tx_dropped'),
          txDropped: await read('rx_dropped'),
        };
      } catch {
        return undefined;
      }
    },

    async portState(port): Promise<PortState> {
      // Synchronous: sysfs never waits on a disk, and every running guest's ports are read every few
      // seconds (an async read costs a thread-pool round trip). carrier reads EINVAL while the
      // interface is administratively down: no carrier either.
      try {
        return readFileSync(join(sysClassNet, port, 'carrier'), 'utf8').trim() === '1' ? 'up' : 'no-carrier';
      } catch (e) {
        return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'no-carrier';
      }
    },

    async leases(network) {
      const text = await readFile(dnsmasqPaths(stateDir, network).leases, 'utf8').catch(() => '');
      return activeLeases(text, Math.floor(Date.now() / 1000));
    },
  };
  return backend;
}
