// Benchmark: export and import throughput of a ct guest's backup archive against raw
// `tar | zstd` of the same data in the same run. The writable layer holds a copy of
// /usr/share (compressible) plus 128 MiB of random data. Usage: node bench/storage-backup.ts
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startDaemon } from '../test/system/harness.ts';
import { ms, QUICK, runOperation, settle, writeResult } from './lib.ts';

process.env.TRIVISOR_DEFAULT_NETWORK = 'none';
const d = await startDaemon();
const work = mkdtempSync(path.join(os.tmpdir(), 'trivisor-bench-backup-'));
const sh = (script: string) => {
  const r = spawnSync('sh', ['-c', script], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`failed: ${script}`);
};
const timed = (fn: () => void) => {
  const t = process.hrtime.bigint();
  fn();
  return ms(process.hrtime.bigint() - t);
};
try {
  await runOperation(d, 'POST', '/1.0/guests', { name: 'b1', image: 'busybox' });
  const upper = path.join(d.stateDir, 'guests/b1/upper');
  // Quick mode: a small compressible tree and 4 MiB of random data, through the same steps.
  const tree = QUICK ? '/usr/share/common-licenses' : '/usr/share';
  const randomMiB = QUICK ? 4 : 128;
  sh(
    `cp -a ${tree} ${upper}/share && head -c ${randomMiB * 2 ** 20} /dev/urandom > ${upper}/random.bin && sync`,
  );
  const bytes = Number(spawnSync('du', ['-sb', upper], { encoding: 'utf8' }).stdout.split('\t')[0]);
  await settle();
  const archive = path.join(work, 'b1.tar.zst');
  const exportMs = timed(() => d.ok(['export', 'b1', archive]));
  const archiveBytes = statSync(archive).size;
  sh('sync');
  const importMs = timed(() => d.ok(['import', archive, 'b2']));
  sh('sync');
  // Baselines on the same data: what the archive's payload costs with nothing else around it.
  const raw = path.join(work, 'raw.tar.zst');
  const rawPackMs = timed(() => sh(`tar -C ${upper} -cf - . | zstd -q -o ${raw}`));
  const rawPackParallelMs = timed(() => sh(`tar -C ${upper} -cf - . | zstd -q -T0 -f -o ${raw}`));
  sh(`mkdir ${work}/x && sync`);
  const rawUnpackMs = timed(() => sh(`zstd -q -dc ${raw} | tar -C ${work}/x -xf -`));
  const mibps = (msValue: number) => Math.round((bytes / 2 ** 20 / (msValue / 1000)) * 10) / 10;
  const result = {
    writableBytes: bytes,
    archiveBytes,
    export: { ms: Math.round(exportMs), mibPerSecond: mibps(exportMs) },
    import: { ms: Math.round(importMs), mibPerSecond: mibps(importMs) },
    rawTarZstd: { ms: Math.round(rawPackMs), mibPerSecond: mibps(rawPackMs) },
    rawTarZstdAllCores: { ms: Math.round(rawPackParallelMs), mibPerSecond: mibps(rawPackParallelMs) },
    rawUnzstdUntar: { ms: Math.round(rawUnpackMs), mibPerSecond: mibps(rawUnpackMs) },
    note: 'export = CLI export (daemon: tar --zstd of the writable layer, sha256, outer tar; then download and delete); import = CLI import (upload, unpack, verify, create, extract). Both write the compressed data about three times (payload, archive, download or upload).',
  };
  console.error(JSON.stringify(result, null, 2));
  console.log(writeResult('storage-backup', result));
} finally {
  await d.destroy();
  rmSync(work, { recursive: true, force: true });
}
