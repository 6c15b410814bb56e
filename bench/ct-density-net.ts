// Benchmark: networked ct density (issue 16 §4, decision 0068). N busybox ct guests with a NIC each
// on one managed network (a subnet sized for N), started through the API `concurrency` at a time;
// each must lease its reserved address by DHCP (dnsmasq's lease file, and what eth0 holds in the
// guest) and ping the gateway from inside; anti-spoofing is checked on a sample (a guest that takes
// a foreign address or MAC reaches nothing, and works again with its own). Baseline, in the same
// run: N veth pairs on bare bridges made by hand in a network namespace of the run's own (no DHCP,
// no filters, no guests), what the kernel's side of the ports costs at least.
// Traffic stays between this run's guests, bridges and namespace, in 198.19.0.0/16.
// Usage: node bench/ct-density-net.ts [N=2000] [concurrency=4] [--launch-minutes M]
//   --launch-minutes: stop starting guests after M minutes (a shared machine), check those that run,
//   and say so in the result (`requested` N, `guests` started, `stoppedEarly`).
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { formatIpv4, parseCidr, prefixFor } from '../src/network/ipv4.ts';
import { leafAlias, PORTS_PER_BRIDGE } from '../src/network/leaf-bridges.ts';
import { ownerAlias, ownerHash } from '../src/network/linux-network-backend.ts';
import { parsePortsTable, portsTable } from '../src/network/nft-rules.ts';
import { claim, makeRunDir, removeRunDir } from '../test/leftovers.ts';
import { startDaemon } from '../test/system/harness.ts';
import {
  awaitLeases,
  checkFromInside,
  deleteGuest,
  freeGateway,
  inPool,
  launchOnNetwork,
  nicsOf,
  spoofing,
} from '../test/system/networked-guests.ts';
import { hostUsedBytes, ms, QUICK, rssBytes, settle, writeResult } from './lib.ts';

const { values: opts, positionals } = parseArgs({
  options: { 'launch-minutes': { type: 'string' } },
  allowPositionals: true,
});
const requested = Number(positionals[0] ?? (QUICK ? 8 : 2000));
const concurrency = Number(positionals[1] ?? (QUICK ? 2 : 4));
const launchMs = opts['launch-minutes'] === undefined ? Infinity : Number(opts['launch-minutes']) * 60_000;
if (
  !Number.isInteger(requested) ||
  requested < 1 ||
  !Number.isInteger(concurrency) ||
  concurrency < 1 ||
  !(launchMs > 0)
) {
  throw new Error(
    'usage: node bench/ct-density-net.ts [N] [concurrency] [--launch-minutes M]: positive numbers',
  );
}
let n = requested;
const MiB = 2 ** 20;
const sfx = String(process.pid % 10000);
const NET = `tbd${sfx}`;
const RAW_NS = `tvbnd${sfx}`;
const log = (s: string) => console.error(`${new Date().toISOString().slice(11, 19)} ${s}`);
const since = (t: bigint) => ms(process.hrtime.bigint() - t) / 1000;

/** The kernel's own memory (slab, stacks, page tables), bytes: what ports cost beyond pages. */
function kernelBytes(): number {
  const info = readFileSync('/proc/meminfo', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  return (kb('Slab') + kb('KernelStack') + kb('PageTables')) * 1024;
}

/** CPU seconds (user + system) a process has used, from /proc (clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  try {
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** Baseline: N veth pairs on bare bridges (1,000 a bridge, as the product) in a namespace of the run. */
async function rawBaseline(): Promise<{ ports: number; createSeconds: number; kernelPerPortMiB: number }> {
  const ip = (args: string[]) => {
    const r = spawnSync('ip', ['-n', RAW_NS, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  };
  // In a run dir of its own, claimed first: a run killed before its finally (run-all's SIGTERM at
  // a timeout) leaves the namespace to the next run's sweep. No daemon runs yet to hold it.
  const runDir = await makeRunDir('bench-net');
  claim(runDir, { netns: [RAW_NS] });
  const batch = path.join(os.tmpdir(), `${RAW_NS}.batch`);
  try {
    const add = spawnSync('ip', ['netns', 'add', RAW_NS], { encoding: 'utf8' });
    if (add.status !== 0) throw new Error(`ip netns add: ${add.stderr}`);
    await settle();
    const kernelBefore = kernelBytes();
    const t0 = process.hrtime.bigint();
    const lines = ['link add br0 type bridge', 'link set br0 up'];
    for (let i = 0; i < n; i++) {
      const bridge = `br${Math.floor(i / PORTS_PER_BRIDGE)}`;
      if (i > 0 && i % PORTS_PER_BRIDGE === 0) {
        lines.push(`link add ${bridge} type bridge`, `link add ${bridge}u type veth peer name ${bridge}d`);
        lines.push(
          `link set ${bridge}u master ${bridge} up`,
          `link set ${bridge}d master br0 up`,
          `link set ${bridge} up`,
        );
      }
      lines.push(
        `link add h${i} type veth peer name g${i}`,
        `link set h${i} master ${bridge} up`,
        `link set g${i} up`,
      );
    }
    writeFileSync(batch, `${lines.join('\n')}\n`);
    ip(['-batch', batch]);
    const createSeconds = since(t0);
    await settle();
    const kernelPerPortMiB = (kernelBytes() - kernelBefore) / n / MiB;
    return { ports: n, createSeconds, kernelPerPortMiB };
  } finally {
    rmSync(batch, { force: true });
    spawnSync('ip', ['netns', 'del', RAW_NS]);
    await removeRunDir(runDir);
  }
}

log(`raw baseline: ${n} veth pairs on bare bridges`);
const raw = await rawBaseline();
log(`raw: ${JSON.stringify(raw)}`);

const d = await startDaemon();
let names = Array.from({ length: requested }, (_, i) => `nd${i}`);
const all = names;
try {
  const daemonPid = d.process.pid as number;
  const prefix = prefixFor(n);
  const cidr = await freeGateway(prefix);
  const gateway = cidr.split('/')[0] as string;
  d.ok(['network', 'create', NET, `ipv4.address=${cidr}`]);
  await settle();
  const usedBefore = hostUsedBytes();
  const kernelBefore = kernelBytes();
  const rssBefore = rssBytes(daemonPid);

  const t0 = process.hrtime.bigint();
  let started = 0;
  const failures: string[] = [];
  const launched: string[] = [];
  await inPool(names, concurrency, async (name) => {
    if (since(t0) * 1000 > launchMs) return;
    try {
      await launchOnNetwork(d, name, NET);
      launched.push(name);
    } catch (e) {
      failures.push(String(e));
    }
    if (++started % 100 === 0) log(`${started}/${n} guests started`);
  });
  const startAllSeconds = since(t0);
  const stoppedEarly = launched.length + failures.length < requested;
  if (stoppedEarly) {
    log(`stopped starting after ${launchMs / 60_000} min: ${launched.length} of ${requested} started`);
    names = launched;
    n = launched.length;
  }
  if (failures.length > 0) throw new Error(`${failures.length} guests did not start; first: ${failures[0]}`);
  const nics = await nicsOf(d);
  const missing = await awaitLeases(d, NET, nics, 600_000);
  const allLeasedSeconds = since(t0);
  log(`${n - missing.length}/${n} leased ${allLeasedSeconds.toFixed(1)} s after the first start`);

  // From inside every guest: the address eth0 holds, and a ping of the gateway.
  const t1 = process.hrtime.bigint();
  const wrong: string[] = [];
  let checked = 0;
  await inPool(names, concurrency, async (name) => {
    const r = await checkFromInside(d, name, gateway);
    if (r.held !== nics.get(name)?.ip)
      wrong.push(`${name} holds ${r.held}, not ${nics.get(name)?.ip}: ${r.error}`);
    else if (!r.reached) wrong.push(`${name} does not reach the gateway: ${r.error}`);
    if (++checked % 100 === 0) log(`${checked}/${n} guests checked from inside`);
  });
  const checkAllSeconds = since(t1);

  const c = parseCidr(cidr);
  const sample = [...new Set([names[0], names[Math.floor(n / 2)], names[n - 1]])] as string[];
  const spoof: Record<string, unknown> = {};
  for (const name of sample) {
    spoof[name] = await spoofing(d, name, {
      target: gateway,
      foreignIp: formatIpv4(c.broadcast - 1),
      prefix: c.prefixLength,
    });
  }
  const spoofHeld = Object.values(spoof).every(
    (r) =>
      JSON.stringify(r) ===
      JSON.stringify({ foreignIpDropped: true, foreignMacDropped: true, worksAgain: true }),
  );

  const bridges = JSON.parse(
    spawnSync('ip', ['-json', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' }).stdout,
  ) as Array<{ ifalias?: string }>;
  const leafBridges = bridges.filter((b) => b.ifalias === leafAlias(ownerAlias(d.stateDir), NET)).length;
  const tableName = portsTable(ownerHash(d.stateDir));
  const t3 = process.hrtime.bigint();
  const table = spawnSync('nft', ['list', 'table', 'bridge', tableName], { encoding: 'utf8' }).stdout;
  const nftListSeconds = since(t3);
  const listed =
    spawnSync('nft', ['-j', 'list', 'table', 'bridge', tableName], {
      encoding: 'utf8',
      maxBuffer: 256 * MiB,
    }).stdout || '{"nftables":[]}';
  const rules = (JSON.parse(listed) as { nftables: Array<Record<string, unknown>> }).nftables.filter(
    (o) => 'rule' in o,
  ).length;
  // Ports with their elements in the ports table's sets (decision 0068, amended 2026-12-07: no
  // chain per port since).
  const filteredPorts = parsePortsTable(listed).ports.length;
  const dnsmasqPid = Number(
    readFileSync(path.join(d.stateDir, 'networks', NET, 'dnsmasq.pid'), 'utf8').trim(),
  );
  await settle();
  const result = {
    benchmark: 'ct density on one network',
    guests: n,
    requested,
    stoppedEarly,
    concurrency,
    subnet: cidr,
    trivisor: {
      started: n - failures.length,
      leased: n - missing.length,
      reachedGateway: n - wrong.length,
      startAllSeconds,
      startPerGuestMs: (startAllSeconds * 1000) / n,
      allLeasedSeconds,
      checkAllSeconds,
      hostMemoryPerGuestMiB: (hostUsedBytes() - usedBefore) / n / MiB,
      kernelPerGuestMiB: (kernelBytes() - kernelBefore) / n / MiB,
      daemonRssMiB: rssBytes(daemonPid) / MiB,
      daemonRssGrowthMiB: (rssBytes(daemonPid) - rssBefore) / MiB,
      dnsmasqRssMiB: rssBytes(dnsmasqPid) / MiB,
      // dnsmasq binds dynamically: it looks at the host's interfaces again as ports come and go.
      dnsmasqCpuSeconds: cpuSeconds(dnsmasqPid),
      daemonCpuSeconds: cpuSeconds(daemonPid),
      leafBridges,
      portChains: table.match(/^\s+chain port-/gm)?.length ?? 0,
      filteredPorts,
      baseChainsOnPrerouting: table.match(/hook prerouting/g)?.length ?? 0,
      portsTableRules: rules,
      nftListSeconds,
      spoofingSample: spoof,
      spoofingHeld: spoofHeld,
      notReached: wrong.slice(0, 20),
      notLeased: missing.slice(0, 20),
    },
    raw,
    ratioKernelPerPort: 0,
    deleteAllSeconds: 0,
  };
  result.ratioKernelPerPort = result.trivisor.kernelPerGuestMiB / raw.kernelPerPortMiB;
  // Written before the deletes too: a run stopped while it deletes keeps its figures.
  writeResult(`ct-density-net-${requested}`, result);
  const t2 = process.hrtime.bigint();
  await inPool(names, concurrency, (name) => deleteGuest(d, name));
  result.deleteAllSeconds = since(t2);
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult(`ct-density-net-${requested}`, result)}`);
  if (wrong.length > 0 || missing.length > 0 || !spoofHeld) {
    throw new Error(
      `${missing.length} guests without a lease, ${wrong.length} not reaching the gateway, anti-spoofing ${spoofHeld ? 'held' : 'FAILED'}`,
    );
  }
} finally {
  await inPool(all, concurrency, (name) => deleteGuest(d, name).catch(() => {}));
  d.cli(['network', 'delete', NET], { timeoutMs: 120_000 });
  await d.destroy();
}
