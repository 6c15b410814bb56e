// Benchmark: what a short command costs a daemon that holds memory, run through hostRunner() (a
// fork of the whole Node process for each) and through helperRunner() (forked by the launcher's
// small perl helper; issue 16, decision 0097). The Node process first allocates and touches a
// Buffer of --mib MiB, as a daemon at a few thousand guests holds, then runs `ip link show lo`
// --count times through each runner, one at a time, in alternating rounds of 100 so that both
// see the same load. It reports the wall time of each runner's runs and how long the event loop
// was held (monitorEventLoopDelay) while each ran.
// Usage: node bench/runner-fork.ts [--count 1000] [--mib 500]
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { helperRunner } from '../src/host/helper-runner.ts';
import { createLauncher } from '../src/host/launcher.ts';
import { hostRunner, type ProcessRunner } from '../src/host/runner.ts';
import { ms, percentile, QUICK, writeResult } from './lib.ts';

const { values: opts } = parseArgs({
  options: {
    count: { type: 'string', default: QUICK ? '20' : '1000' },
    mib: { type: 'string', default: QUICK ? '50' : '500' },
  },
});
const COUNT = Number(opts.count);
const MIB = Number(opts.mib);
if (!Number.isInteger(COUNT) || COUNT < 1) throw new Error('--count takes a positive whole number');
if (!Number.isInteger(MIB) || MIB < 0) throw new Error('--mib takes a whole number');
const log = (s: string) => console.error(`${new Date().toISOString().slice(11, 19)} ${s}`);

// Touched, so that its pages are mapped and a fork copies their page tables.
const held = Buffer.allocUnsafe(MIB * 1024 * 1024);
held.fill(1);
log(`holding ${MIB} MiB, rss ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB`);

const host = hostRunner();
const launcher = createLauncher(host);
const runners: Record<'hostRunner' | 'helperRunner', ProcessRunner> = {
  hostRunner: host,
  helperRunner: helperRunner(launcher, host),
};
const argv = ['ip', 'link', 'show', 'lo'];
// Both warm: the helper started, the binary in the page cache.
for (const r of Object.values(runners)) await r.run(argv);

const samples: Record<keyof typeof runners, number[]> = { hostRunner: [], helperRunner: [] };
const loop: Record<keyof typeof runners, { maxMs: number; p99Ms: number[] }> = {
  hostRunner: { maxMs: 0, p99Ms: [] },
  helperRunner: { maxMs: 0, p99Ms: [] },
};
const ROUND = Math.min(100, COUNT);
for (let done = 0; done < COUNT; done += ROUND) {
  const n = Math.min(ROUND, COUNT - done);
  for (const name of Object.keys(runners) as Array<keyof typeof runners>) {
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint();
      const r = await runners[name].run(argv);
      samples[name].push(ms(process.hrtime.bigint() - t0));
      if (!r.stdout.includes('LOOPBACK')) throw new Error(`${name}: unexpected output ${r.stdout}`);
    }
    h.disable();
    loop[name].maxMs = Math.max(loop[name].maxMs, ms(h.max));
    loop[name].p99Ms.push(ms(h.percentile(99)));
  }
  log(`${done + n}/${COUNT}`);
}
launcher.close();

const round = (x: number) => Math.round(x * 100) / 100;
const summaryOf = (name: keyof typeof runners) => {
  const s = samples[name];
  const total = s.reduce((a, b) => a + b, 0);
  return {
    runs: s.length,
    totalMs: Math.round(total),
    p50Ms: round(percentile(s, 50)),
    p95Ms: round(percentile(s, 95)),
    meanMs: round(total / s.length),
    eventLoopDelayMaxMs: round(loop[name].maxMs),
    eventLoopDelayP99MsWorstRound: round(Math.max(...loop[name].p99Ms)),
  };
};
const summary = { hostRunner: summaryOf('hostRunner'), helperRunner: summaryOf('helperRunner') };
const ratio = round(summary.hostRunner.totalMs / summary.helperRunner.totalMs);
const file = writeResult('runner-fork', {
  command: argv.join(' '),
  count: COUNT,
  heldMiB: MIB,
  rssMiB: Math.round(process.memoryUsage().rss / 2 ** 20),
  ...summary,
  hostOverHelper: ratio,
});
log(
  `hostRunner ${summary.hostRunner.totalMs} ms, helperRunner ${summary.helperRunner.totalMs} ms, ratio ${ratio}`,
);
log(`wrote ${file}`);
// The held buffer is read once more, so that it is not collected before the end.
if (held[0] !== 1) throw new Error('unreachable');
