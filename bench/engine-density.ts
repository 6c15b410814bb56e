// Benchmarks of the vm and pvm issues: N guests started at once through the API; time until
// all are up, and host memory per guest (PSS of each guest's processes) once idle.
// Usage: node bench/engine-density.ts vm 10 128MiB | node bench/engine-density.ts pvm 50 64MiB
import { sleep, startDaemon } from '../test/system/harness.ts';
import { guestPss, pool, QUICK, runOperation, settle, writeResult } from './lib.ts';

const model = process.argv[2] === 'pvm' ? 'pvm' : 'vm';
const n = Number(process.argv[3] ?? 10);
const memory = process.argv[4] ?? '128MiB';
const d = await startDaemon();
try {
  const names = Array.from({ length: n }, (_, i) => `e${i}`);
  const t0 = performance.now();
  await pool(names, n, (name) =>
    runOperation(d, 'POST', '/1.0/guests', {
      name,
      image: 'busybox',
      model,
      start: true,
      config: { 'limits.memory': memory },
    }),
  );
  const allUpSeconds = (performance.now() - t0) / 1000;
  await settle();
  // Quick mode (issue 19): idle a second, as engine-boot.ts does; no figure of it is compared.
  await sleep(QUICK ? 1000 : 5000);
  const pss = names.map((name) => guestPss(d.stateDir, name) / 2 ** 20);
  const t1 = performance.now();
  await pool(names, n, (name) => runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`));
  const result = {
    benchmark: `${n} ${model} guests of ${memory} started at once`,
    model,
    guests: n,
    memory,
    allUpSeconds,
    hostMemoryPerGuestMiB: pss.reduce((a, b) => a + b, 0) / n,
    deleteAllSeconds: (performance.now() - t1) / 1000,
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult(`${model}-density-${n}`, result)}`);
} finally {
  await d.destroy();
}
