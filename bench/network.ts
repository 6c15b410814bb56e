// Benchmark (network): TCP throughput and round-trip time of ct guests on one managed network
// (guest↔guest and guest↔host through the bridge, with the anti-spoofing filters on), against a
// plain veth pair between two network namespaces, all with busybox nc and ping, in one run.
// Traffic stays between this run's guests, bridge and namespaces, in 198.18.0.0/15.
// Usage: node bench/network.ts [MiB=256] [pings=50]
import { spawnSync } from 'node:child_process';
import { type Daemon, eventually, sleep, startDaemon } from '../test/system/harness.ts';
import { writeResult } from './lib.ts';

const mib = Number(process.argv[2] ?? 256);
const pings = Number(process.argv[3] ?? 50);
const sfx = String(process.pid % 10000);
const NET = `tbn${sfx}`;
const NS = [`tvbns${sfx}a`, `tvbns${sfx}b`];

const run = (argv: string[]) => {
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const rttOf = (out: string) => Number(/= [\d.]+\/([\d.]+)\//.exec(out)?.[1]);
const secondsOf = (out: string) => {
  const m = /real\s+(?:(\d+)m\s*)?([\d.]+)s/.exec(out);
  return m ? Number(m[1] ?? 0) * 60 + Number(m[2]) : Number.NaN;
};

/** Runs `sh -c` in a guest (via the CLI) or in a namespace. */
type Shell = (script: string) => string;
const inGuest =
  (d: Daemon, name: string): Shell =>
  (script) =>
    d.ok(['exec', name, '--', 'sh', '-c', script]);
const inNs =
  (ns: string | null): Shell =>
  (script) =>
    run(ns ? ['ip', 'netns', 'exec', ns, 'busybox', 'sh', '-c', script] : ['busybox', 'sh', '-c', script]);

/** Receiver-timed transfer of `mib` MiB from one side to the other; Mbit/s. */
async function throughput(
  from: Shell,
  to: Shell,
  toAddress: string,
  port: number,
  bb: string,
): Promise<number> {
  to(
    `rm -f /tmp/tvb-t-${port}; ${bb}nc -l -p ${port} -e sh -c "time cat > /dev/null" </dev/null >/dev/null 2>/tmp/tvb-t-${port} &`,
  );
  await sleep(300);
  from(`dd if=/dev/zero bs=1M count=${mib} 2>/dev/null | ${bb}nc ${toAddress} ${port}`);
  let seconds = Number.NaN;
  await eventually('the receiver timed it', () => {
    seconds = secondsOf(to(`cat /tmp/tvb-t-${port} 2>/dev/null || true`));
    return Number.isFinite(seconds);
  });
  return (mib * 8 * 1.048576) / seconds;
}

const d = await startDaemon();
const results: Record<string, { mbitPerSecond: number; rttMs: number }> = {};
try {
  // Baseline: a veth pair between two namespaces.
  for (const ns of NS) run(['ip', 'netns', 'add', ns]);
  run([
    'ip',
    'link',
    'add',
    `tvb${sfx}a`,
    'netns',
    NS[0] as string,
    'type',
    'veth',
    'peer',
    'name',
    `tvb${sfx}b`,
    'netns',
    NS[1] as string,
  ]);
  run(['ip', '-n', NS[0] as string, 'addr', 'add', '198.18.205.1/24', 'dev', `tvb${sfx}a`]);
  run(['ip', '-n', NS[1] as string, 'addr', 'add', '198.18.205.2/24', 'dev', `tvb${sfx}b`]);
  for (const [ns, dev] of [
    [NS[0], `tvb${sfx}a`],
    [NS[1], `tvb${sfx}b`],
  ] as const) {
    run(['ip', '-n', ns as string, 'link', 'set', dev, 'up']);
    run(['ip', '-n', ns as string, 'link', 'set', 'lo', 'up']);
  }
  const nsA = inNs(NS[0] as string);
  const nsB = inNs(NS[1] as string);
  results['veth pair (baseline)'] = {
    mbitPerSecond: await throughput(nsA, nsB, '198.18.205.2', 5201, 'busybox '),
    rttMs: rttOf(nsA(`busybox ping -c ${pings} -i 0.05 198.18.205.2`)),
  };

  d.ok(['network', 'create', NET, 'ipv4.address=198.18.206.1/24']);
  d.ok(['launch', 'busybox', 'g1', '-n', NET]);
  d.ok(['launch', 'busybox', 'g2', '-n', NET]);
  const g1 = inGuest(d, 'g1');
  const g2 = inGuest(d, 'g2');
  const g2Address = /inet (\S+)\//.exec(g2('ip -4 addr show dev eth0'))?.[1] ?? '';
  results['ct ↔ ct'] = {
    mbitPerSecond: await throughput(g1, g2, g2Address, 5202, ''),
    rttMs: rttOf(g1(`ping -c ${pings} -i 0.05 ${g2Address}`)),
  };
  // The host listens (on every address; the guest reaches it through the bridge's).
  const host = inNs(null);
  results['ct → host'] = {
    mbitPerSecond: await throughput(g1, host, '198.18.206.1', 5203, 'busybox '),
    rttMs: rttOf(g1(`ping -c ${pings} -i 0.05 198.18.206.1`)),
  };
} finally {
  d.cli(['delete', '--force', 'g1', 'g2']);
  d.cli(['network', 'delete', NET]);
  for (const ns of NS) spawnSync('ip', ['netns', 'del', ns]);
  for (const port of [5201, 5203]) spawnSync('rm', ['-f', `/tmp/tvb-t-${port}`]);
  await d.destroy();
}
const base = results['veth pair (baseline)'];
const rows = Object.entries(results).map(([path, r]) => ({
  path,
  ...r,
  throughputRatio: base ? r.mbitPerSecond / base.mbitPerSecond : null,
  rttRatio: base ? r.rttMs / base.rttMs : null,
}));
console.table(rows);
console.log(writeResult('network', { mib, pings, tool: 'busybox nc and ping', rows }));
