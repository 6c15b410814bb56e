// Benchmark (b): density. Starts N busybox ct guests through the API and reports the
// total time, host memory per guest beyond the guest's own processes, daemon RSS and
// list latency at N. Usage: node bench/ct-density.ts [N=1000] [concurrency=4]
import { startDaemon } from '../test/system/harness.ts';
import {
  hostUsedBytes,
  ms,
  percentile,
  pool,
  pssBytes,
  rssBytes,
  runOperation,
  settle,
  writeResult,
} from './lib.ts';

const n = Number(process.argv[2] ?? 1000);
const concurrency = Number(process.argv[3] ?? 4);
const d = await startDaemon();
const MiB = 2 ** 20;
try {
  const daemonPid = d.process.pid!;
  await settle();
  const usedBefore = hostUsedBytes();
  const rssBefore = rssBytes(daemonPid);
  const names = Array.from({ length: n }, (_, i) => `d${i}`);
  const t0 = process.hrtime.bigint();
  let done = 0;
  await pool(names, concurrency, async (name) => {
    await runOperation(d, 'POST', '/1.0/guests', { name, image: 'busybox', start: true });
    if (++done % 100 === 0) console.error(`${done}/${n} guests running`);
  });
  const startSeconds = ms(process.hrtime.bigint() - t0) / 1000;

  const time = async (path: string, times: number) => {
    const samples: number[] = [];
    for (let i = 0; i < times; i++) {
      const s = process.hrtime.bigint();
      const r = await d.api('GET', path);
      if (r.status !== 200) throw new Error(`${path}: ${r.status}`);
      samples.push(ms(process.hrtime.bigint() - s));
    }
    return { p50Ms: percentile(samples, 50), p95Ms: percentile(samples, 95) };
  };
  const listUrls = await time('/1.0/guests', 20);
  const listFull = await time('/1.0/guests?recursion=1', 20);
  const listUsage = await time('/1.0/guests?recursion=2', 5);
  const cliStart = process.hrtime.bigint();
  d.ok(['list', '--format', 'json']);
  const cliListMs = ms(process.hrtime.bigint() - cliStart);

  const guests = (await d.api('GET', '/1.0/guests?recursion=1')).body.metadata as Array<{
    status: string;
    state: { pid: number };
  }>;
  const running = guests.filter((g) => g.status === 'Running').length;
  await settle();
  const usedAfter = hostUsedBytes();
  const guestRss = guests.reduce((sum, g) => sum + pssBytes(g.state.pid), 0);
  const daemonRss = rssBytes(daemonPid);
  const perGuestTotal = (usedAfter - usedBefore) / n;
  const perGuestBeyond = (usedAfter - usedBefore - guestRss - (daemonRss - rssBefore)) / n;

  const t1 = process.hrtime.bigint();
  await pool(names, concurrency, async (name) => runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`));
  const deleteSeconds = ms(process.hrtime.bigint() - t1) / 1000;

  const result = {
    benchmark: 'ct density',
    guests: n,
    concurrency,
    running,
    startAllSeconds: startSeconds,
    startPerGuestMs: (startSeconds * 1000) / n,
    deleteAllSeconds: deleteSeconds,
    hostMemoryPerGuestMiB: perGuestTotal / MiB,
    guestProcessPssPerGuestMiB: guestRss / n / MiB,
    hostMemoryPerGuestBeyondOwnProcessesMiB: perGuestBeyond / MiB,
    daemonRssMiB: daemonRss / MiB,
    daemonRssBeforeMiB: rssBefore / MiB,
    listUrls,
    listFull,
    listWithUsage: listUsage,
    cliListJsonMs: cliListMs,
    targets: { daemonRssMiB: '<= 300', listMs: '<= 100 (GET /1.0/guests at 1000 guests)' },
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult(`ct-density-${n}`, result)}`);
} finally {
  await d.destroy();
}
