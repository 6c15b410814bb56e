// Benchmark (API fuzz, issue 11): the CI fuzz suite's requests (test/fuzz/api-fuzz.ts) for longer and
// with a random seed, against a real daemon with real ct guests. Prints the seed first: a run that
// finds something is replayed with the same seed (`node bench/fuzz-api.ts RUNS RAW SEED`), or with
// TRIVISOR_FUZZ_SEED=SEED in the CI suite. Writes bench/results/fuzz-api.json; docs/benchmarks.md
// has the section. Usage: node bench/fuzz-api.ts [requests=20000] [raw=2000] [seed=random]
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { routesOf, runFuzz } from '../test/fuzz/api-fuzz.ts';
import { makeFuzzFixtures } from '../test/fuzz/fuzz-fixtures.ts';
import { makeRunDir, removeRunDir } from '../test/leftovers.ts';
import { startDaemon } from '../test/system/harness.ts';
import { writeResult } from './lib.ts';

const requests = Number(process.argv[2] ?? 20_000);
const raw = Number(process.argv[3] ?? 2_000);
const seed = process.argv[4] !== undefined ? Number(process.argv[4]) : Math.floor(Math.random() * 2 ** 31);
process.stdout.write(`seed ${seed}: ${requests} requests, ${raw} raw payloads\n`);

const routes = routesOf(
  JSON.parse(readFileSync(path.resolve(import.meta.dirname, '../docs/openapi.json'), 'utf8')),
);
const d = await startDaemon();
const scratch = await makeRunDir('fuzz');
let failed = false;
try {
  const fixtures = await makeFuzzFixtures(d, scratch);
  let shown = 0;
  const report = await runFuzz({
    socketPath: d.socket,
    seed,
    numRuns: requests,
    rawRuns: raw,
    routes,
    fixtures,
    hostPaths: [d.stateDir, '/var/lib/trivisor', scratch],
    onProgress(done, total) {
      if (done === total || done - shown >= 1000) {
        shown = done;
        process.stdout.write(`  ${done}/${total}\n`);
      }
    },
  });
  const alive = d.process.exitCode === null && d.ok(['exec', 'keeper', '--', 'hostname']).trim() === 'keeper';
  const result = {
    seed,
    requests: report.requests,
    raw: report.raw,
    routes: routes.length,
    routesHit: report.routesHit,
    byStatus: report.byStatus,
    stateChecks: report.stateChecks,
    failures: report.failures.length,
    hangs: report.hangs.length,
    changes: report.changes.length,
    examples: [...report.failures, ...report.hangs, ...report.changes].slice(0, 20),
    slowestMs: Math.round(report.slowestMs),
    requestsPerSecond: Math.round(((report.requests + report.raw) / report.durationMs) * 1000),
    durationSeconds: Math.round(report.durationMs / 1000),
    daemonAlive: alive,
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`written to ${writeResult('fuzz-api', result)}\n`);
  failed = !alive || result.failures + result.hangs + result.changes > 0;
} finally {
  await d.destroy();
  await removeRunDir(scratch);
}
if (failed) {
  process.stdout.write(
    `FOUND PROBLEMS with seed ${seed}: replay with node bench/fuzz-api.ts ${requests} ${raw} ${seed}\n`,
  );
  process.exitCode = 1;
}
