import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { hostRunner } from '../../src/host/runner.ts';
import { hostSubnets } from '../../src/network/default-network.ts';
import { formatIpv4, overlaps, parseCidr } from '../../src/network/ipv4.ts';
import { type Daemon, sleep } from './harness.ts';

// Many ct guests with a NIC each on one managed network (issue 16 §4, decision 0068), for the
// CI-sized test (test/system/networked-density.test.ts) and the bench (bench/ct-density-net.ts).

const run = promisify(execFile);
const CLI = path.resolve(import.meta.dirname, '../../bin/trivisor');

/** The CLI of `d`, without blocking the event loop (many execs side by side). */
export async function cliAsync(
  d: Daemon,
  args: string[],
  timeoutMs = 60_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(CLI, args, {
      timeout: timeoutMs,
      env: {
        ...process.env,
        TRIVISOR_DIR: d.stateDir,
        TRIVISOR_CONFIG_DIR: path.join(d.stateDir, 'cli-config'),
      },
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string };
    return {
      code: typeof err.code === 'number' ? err.code : 1,
      stdout: err.stdout ?? '',
      stderr: err.stderr ?? String(e),
    };
  }
}

/**
 * A gateway CIDR (`.1` of the subnet) with this prefix in 198.19.0.0/16 that no host address,
 * route nor `taken` subnet overlaps (other tests' networks sit in 198.18.0.0/16 mostly).
 */
export async function freeGateway(prefix: number, taken: string[] = []): Promise<string> {
  const used = [...(await hostSubnets(hostRunner())), ...taken].flatMap((c) => {
    try {
      return [parseCidr(c)];
    } catch {
      return [];
    }
  });
  const base = parseCidr('198.19.0.0/16').network;
  const size = 2 ** (32 - prefix);
  // From the top down: the default network and most tests take the low /24s.
  for (let n = 2 ** 16 - size; n >= 0; n -= size) {
    const candidate = `${formatIpv4(base + n + 1)}/${prefix}`;
    if (!used.some((u) => overlaps(u, parseCidr(candidate)))) return candidate;
  }
  throw new Error(`no free /${prefix} in 198.19.0.0/16`);
}

/** Runs `fn` over `items`, `limit` at a time. */
export async function inPool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

/** Creates and starts one ct busybox guest with eth0 on `network`; throws with the API's error. */
export async function launchOnNetwork(d: Daemon, name: string, network: string): Promise<void> {
  const r = await d.api('POST', '/1.0/guests', {
    name,
    image: 'busybox',
    start: true,
    devices: { eth0: { type: 'nic', network } },
  });
  if (r.status !== 202) throw new Error(`create ${name}: ${r.status} ${r.body.error}`);
  const done = await d.api('GET', `${r.body.operation}/wait?timeout=600`);
  const op = done.body.metadata as { status: string; error: string | null };
  if (op.status !== 'Success') throw new Error(`create ${name}: ${op.status} ${op.error}`);
}

/** Force-deletes a guest and waits for it; one that does not exist is fine. */
export async function deleteGuest(d: Daemon, name: string): Promise<void> {
  const r = await d.api('DELETE', `/1.0/guests/${name}?force=true`);
  if (r.status === 404) return;
  if (r.status !== 202) throw new Error(`delete ${name}: ${r.status} ${r.body.error}`);
  const done = await d.api('GET', `${r.body.operation}/wait?timeout=600`);
  const op = done.body.metadata as { status: string; error: string | null };
  if (op.status !== 'Success') throw new Error(`delete ${name}: ${op.status} ${op.error}`);
}

/** Each guest's eth0: its MAC and reserved address, from the API. */
export async function nicsOf(d: Daemon): Promise<Map<string, { mac: string; ip: string }>> {
  const r = await d.api('GET', '/1.0/guests?recursion=1');
  const out = new Map<string, { mac: string; ip: string }>();
  for (const g of r.body.metadata as Array<{
    name: string;
    devices?: Record<string, { hwaddr?: string; 'ipv4.address'?: string }>;
  }>) {
    const eth0 = g.devices?.eth0;
    if (eth0?.hwaddr && eth0['ipv4.address']) out.set(g.name, { mac: eth0.hwaddr, ip: eth0['ipv4.address'] });
  }
  return out;
}

/** MAC → leased address, from the network's dnsmasq lease file. */
export function leaseFile(d: Daemon, network: string): Map<string, string> {
  const text = (() => {
    try {
      return readFileSync(path.join(d.stateDir, 'networks', network, 'dnsmasq.leases'), 'utf8');
    } catch {
      return '';
    }
  })();
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const [, mac, ip] = line.split(' ');
    if (mac && ip) out.set(mac.toLowerCase(), ip);
  }
  return out;
}

/** Waits until every guest holds a lease of its reserved address; the guests still without one. */
export async function awaitLeases(
  d: Daemon,
  network: string,
  nics: Map<string, { mac: string; ip: string }>,
  timeoutMs: number,
): Promise<string[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const leases = leaseFile(d, network);
    const missing = [...nics].filter(([, n]) => leases.get(n.mac.toLowerCase()) !== n.ip).map(([g]) => g);
    if (missing.length === 0 || Date.now() > end) return missing;
    await sleep(500);
  }
}

/**
 * Runs a command in a guest through the API with `record-output` (no CLI process a call: at
 * thousands of guests one node process per exec was most of the check's CPU); its exit code and
 * output, or code -1 and the API's error.
 */
export async function execRecorded(
  d: Daemon,
  name: string,
  command: string[],
  timeoutS = 60,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await d.api('POST', `/1.0/guests/${name}/exec`, { command, 'record-output': true });
  if (r.status !== 202)
    return { code: -1, stdout: '', stderr: `exec in ${name}: ${r.status} ${r.body.error}` };
  const done = await d.api('GET', `${r.body.operation}/wait?timeout=${timeoutS}`);
  const op = done.body.metadata as {
    status: string;
    error: string | null;
    metadata: { return?: number; stdout?: string; stderr?: string };
  };
  if (op.status !== 'Success')
    return { code: -1, stdout: '', stderr: `exec in ${name}: ${op.status} ${op.error}` };
  return {
    code: op.metadata.return ?? -1,
    stdout: op.metadata.stdout ?? '',
    stderr: op.metadata.stderr ?? '',
  };
}

/**
 * The address eth0 holds in a guest and whether it pings `gateway` (a second ping if the first
 * waited on ARP under load), in one exec: what the density test and bench check in every guest.
 */
export async function checkFromInside(
  d: Daemon,
  name: string,
  gateway: string,
): Promise<{ held: string | undefined; reached: boolean; error: string }> {
  const r = await execRecorded(d, name, [
    ...['sh', '-c'],
    `ip -4 addr show dev eth0; ping -c1 -W3 ${gateway} >/dev/null || ping -c1 -W3 ${gateway} >/dev/null && echo reached`,
  ]);
  return {
    held: /inet (\d+\.\d+\.\d+\.\d+)\//.exec(r.stdout)?.[1],
    reached: /reached/.test(r.stdout),
    error: r.stderr,
  };
}

/** The address eth0 holds in the guest (what its DHCP client took), or undefined. */
export async function addressInGuest(d: Daemon, name: string): Promise<string | undefined> {
  const r = await cliAsync(d, ['exec', name, '--', 'ip', '-4', 'addr', 'show', 'dev', 'eth0']);
  return /inet (\d+\.\d+\.\d+\.\d+)\//.exec(r.stdout)?.[1];
}

/** Whether the guest reaches `address` (a second try: the first ping may wait on ARP under load). */
export async function pingsFrom(d: Daemon, name: string, address: string): Promise<boolean> {
  for (let i = 0; i < 2; i++) {
    if ((await cliAsync(d, ['exec', name, '--', 'ping', '-c1', '-W3', address])).code === 0) return true;
  }
  return false;
}

/**
 * Anti-spoofing on a guest's port: with a foreign address, then with a foreign MAC, the guest
 * cannot reach `target`; with its own back, it can. Each dropped check says whether it held.
 */
export async function spoofing(
  d: Daemon,
  name: string,
  options: { target: string; foreignIp: string; prefix: number },
): Promise<{ foreignIpDropped: boolean; foreignMacDropped: boolean; worksAgain: boolean }> {
  const sh = (script: string) => cliAsync(d, ['exec', name, '--', 'sh', '-c', script]);
  const { target, foreignIp, prefix } = options;
  const ip = await sh(
    `ip addr add ${foreignIp}/${prefix} dev eth0 && ping -c2 -W2 -I ${foreignIp} ${target}; r=$?; ip addr del ${foreignIp}/${prefix} dev eth0; exit $r`,
  );
  const mac = (await sh('cat /sys/class/net/eth0/address')).stdout.trim();
  const foreignMac = await sh(
    `ip link set eth0 address 02:00:00:00:00:99 && ping -c2 -W2 ${target}; r=$?; ip link set eth0 address ${mac}; exit $r`,
  );
  return {
    foreignIpDropped: ip.code !== 0,
    foreignMacDropped: foreignMac.code !== 0,
    worksAgain: await pingsFrom(d, name, target),
  };
}
