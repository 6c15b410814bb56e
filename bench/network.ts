// Benchmark (network): TCP throughput and round-trip time between guests of every model pair on one
// managed network (ct: veth, vm: tap + virtio-net under QEMU, pvm: tap + UML's tuntap transport;
// anti-spoofing filters on) and from each model to the host, against a plain veth pair between two
// network namespaces (measured at the start and at the end of the run), all with busybox nc and ping.
// Traffic stays between this run's guests, bridge and namespaces, in 198.18.0.0/15.
// Usage: node bench/network.ts [MiB=256] [pings=50]   (a vm or pvm sender moves MiB/2: it is slow, so
// the receiver's start-up, when the first data waits in its socket buffer, counts for little there)
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { claim } from '../test/leftovers.ts';
import { type Daemon, eventually, sleep, startDaemon } from '../test/system/harness.ts';
import { QUICK, writeResult } from './lib.ts';

const mib = Number(process.argv[2] ?? 256);
const pings = Number(process.argv[3] ?? 50);
const sfx = String(process.pid % 10000);
const NET = `tbn${sfx}`;
const NS = [`tvbns${sfx}a`, `tvbns${sfx}b`];

const run = (argv: string[]) => {
  // Bounded: a transfer that stalls must end the run (and its clean-up), not hang it.
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8', timeout: 300_000 });
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
  size: number,
): Promise<number> {
  to(
    `rm -f /tmp/tvb-t-${port}; ${bb}nc -l -p ${port} -e sh -c "time cat > /dev/null" </dev/null >/dev/null 2>/tmp/tvb-t-${port} &`,
  );
  await sleep(300);
  from(`dd if=/dev/zero bs=1M count=${size} 2>/dev/null | ${bb}nc ${toAddress} ${port}`);
  let seconds = Number.NaN;
  await eventually('the receiver timed it', () => {
    seconds = secondsOf(to(`cat /tmp/tvb-t-${port} 2>/dev/null || true`));
    return Number.isFinite(seconds);
  });
  return (size * 8 * 1.048576) / seconds;
}

// Two runs at once would put the same subnets on two bridges (and routes) of the host.
for (const subnet of ['198.18.205.0/24', '198.18.206.0/24']) {
  if (run(['ip', '-4', 'route', 'show', 'match', subnet]).includes(subnet)) {
    throw new Error(
      `${subnet} is routed on this host already (another run of this benchmark?): try again later`,
    );
  }
}
const d = await startDaemon();
const results: Record<string, { mib: number; mbitPerSecond: number; rttMs: number }> = {};
const loadAtStart = loadavg();
const slowMib = Math.max(QUICK ? 1 : 16, Math.round(mib / 2));
const baselines: Array<{ mbitPerSecond: number; rttMs: number }> = [];
try {
  // Baseline: a veth pair between two namespaces.
  // Claimed first: a run killed before its finally (run-all's SIGTERM at a timeout) is swept.
  claim(d.stateDir, { netns: NS });
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
  const baseline = async () => {
    baselines.push({
      mbitPerSecond: await throughput(nsA, nsB, '198.18.205.2', 5201, 'busybox ', mib),
      rttMs: rttOf(nsA(`busybox ping -c ${pings} -i 0.05 198.18.205.2`)),
    });
  };
  await baseline();

  d.ok(['network', 'create', NET, 'ipv4.address=198.18.206.1/24']);
  const guests = { ct: 'g1', ct2: 'g2', vm: 'v1', pvm: 'p1' } as const;
  d.ok(['launch', 'busybox', guests.ct, '-n', NET]);
  d.ok(['launch', 'busybox', guests.ct2, '-n', NET]);
  d.ok(['launch', 'busybox', guests.vm, '--model', 'vm', '-n', NET]);
  d.ok(['launch', 'busybox', guests.pvm, '--model', 'pvm', '-n', NET]);
  const shells = Object.fromEntries(Object.entries(guests).map(([k, g]) => [k, inGuest(d, g)])) as Record<
    keyof typeof guests,
    Shell
  >;
  const addresses = {} as Record<keyof typeof guests, string>;
  for (const k of Object.keys(guests) as Array<keyof typeof guests>) {
    // DHCP: the guest's own view of its address (vm and pvm may still be asking).
    await eventually(
      `${guests[k]} has its address`,
      () => {
        addresses[k] = /inet (\S+)\//.exec(shells[k]('ip -4 addr show dev eth0'))?.[1] ?? '';
        return addresses[k] !== '';
      },
      60_000,
    );
  }
  const label = (k: keyof typeof guests) => (k === 'ct2' ? 'ct' : k);
  let port = 5210;
  const pairs: Array<[keyof typeof guests, keyof typeof guests]> = [
    ['ct', 'ct2'],
    ['ct', 'vm'],
    ['vm', 'ct'],
    ['ct', 'pvm'],
    ['pvm', 'ct'],
    ['vm', 'pvm'],
    ['pvm', 'vm'],
  ];
  for (const [from, to] of pairs) {
    const size = from === 'vm' || from === 'pvm' ? slowMib : mib;
    results[`${label(from)} → ${label(to)}`] = {
      mib: size,
      mbitPerSecond: await throughput(shells[from], shells[to], addresses[to], port++, '', size),
      rttMs: rttOf(shells[from](`ping -c ${pings} -i 0.05 ${addresses[to]}`)),
    };
  }
  // The host listens (on every address; the guest reaches it through the bridge's).
  const host = inNs(null);
  for (const from of ['ct', 'vm', 'pvm'] as const) {
    const size = from === 'ct' ? mib : slowMib;
    results[`${from} → host`] = {
      mib: size,
      mbitPerSecond: await throughput(shells[from], host, '198.18.206.1', port++, 'busybox ', size),
      rttMs: rttOf(shells[from](`ping -c ${pings} -i 0.05 198.18.206.1`)),
    };
  }
  await baseline();
} finally {
  d.cli(['delete', '--force', 'g1', 'g2', 'v1', 'p1']);
  d.cli(['network', 'delete', NET]);
  for (const ns of NS) spawnSync('ip', ['netns', 'del', ns]);
  spawnSync('sh', ['-c', 'rm -f /tmp/tvb-t-*']);
  await d.destroy();
}
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const base = {
  mib,
  mbitPerSecond: mean(baselines.map((b) => b.mbitPerSecond)),
  rttMs: mean(baselines.map((b) => b.rttMs)),
};
const rows = [['veth pair (baseline)', base] as const, ...Object.entries(results)].map(([path, r]) => ({
  path,
  ...r,
  throughputRatio: r.mbitPerSecond / base.mbitPerSecond,
  rttRatio: r.rttMs / base.rttMs,
}));
console.table(rows);
console.log(
  writeResult('network', {
    mib,
    pings,
    tool: 'busybox nc and ping',
    baselines,
    loadAverage: { start: loadAtStart, end: loadavg() },
    note: process.env.BENCH_NOTE ?? '',
    rows,
  }),
);
