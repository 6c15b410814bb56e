// Benchmark: storage of vm and pvm guests (docs/decisions/0008-vm-and-pvm-storage.md).
// 1. Snapshot, clone, restore and snapshot delete of a running guest with 10 MiB vs 1 GiB
//    of random data written inside it, through the API.
// 2. Export and import (CLI) of the stopped 1 GiB guest against raw `qemu-img convert`
//    and `tar --zstd` of the same disk in the same run.
// 3. vm only: a full `export --incremental`, then 1% of the 1 GiB of data changed
//    (160 scattered 64 KiB writes) and the next incremental, against the full one.
// Export and import alternate with the raw tools for `reps` rounds (medians, load per run).
// Usage: node bench/storage-vm.ts [reps=3] [models=vm,pvm] [backups]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Daemon, startDaemon } from '../test/system/harness.ts';
import { ms, percentile, QUICK, runOperation, settle, writeResult } from './lib.ts';

process.env.TRIVISOR_DEFAULT_NETWORK = 'none';
const reps = Number(process.argv[2] ?? 3);
const models = (process.argv[3] ?? 'vm,pvm').split(',') as Array<'vm' | 'pvm'>;
// `backups`: only the export and import of the largest guest (no snapshot reps, no incrementals).
const backupsOnly = process.argv[4] === 'backups';
const backupRounds = Math.max(1, reps);
const MiB = 2 ** 20;
// Quick mode: one small guest per model, through every step (snapshots, backups, incrementals).
const sizesMiB = QUICK ? [4] : backupsOnly ? [1024] : [10, 1024];
// A 2 GiB root disk for both models, so that 1 GiB fits: vm's default; for pvm it makes a
// private sparse disk (root.img) instead of a COW file, since a COW file has its base disk's size.
const config = { 'limits.memory': '256MiB', 'limits.cpu': '1', 'limits.disk': '2GiB' };

const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const loadBefore = load();
const work = mkdtempSync(path.join(os.tmpdir(), 'trivisor-bench-vm-storage-'));
const sh = (script: string) => {
  const r = spawnSync('sh', ['-c', script], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`failed: ${script}`);
};
const timedSync = (fn: () => void) => {
  const t = process.hrtime.bigint();
  fn();
  return ms(process.hrtime.bigint() - t);
};
const timed = async (fn: () => Promise<void>) => {
  const t = process.hrtime.bigint();
  await fn();
  return ms(process.hrtime.bigint() - t);
};
const ok = (d: Daemon, args: string[]) => {
  const r = d.cli(args, { timeoutMs: 900_000 });
  if (r.code !== 0) throw new Error(`trivisor ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const stats = (xs: number[]) => ({
  p50Ms: Math.round(percentile(xs, 50)),
  maxMs: Math.round(Math.max(...xs)),
});
const mibps = (bytes: number, msValue: number) => Math.round((bytes / MiB / (msValue / 1000)) * 10) / 10;
/** The guest's writable disk file: vm root.qcow2, pvm root.img or root.cow. */
const diskOf = (d: Daemon, model: string, g: string) => {
  if (model === 'vm') return path.join(d.stateDir, 'guests', g, 'root.qcow2');
  const dir = path.join(d.stateDir, 'guests', g, 'disk');
  const f = readdirSync(dir).find((n) => n === 'root.img' || n === 'root.cow');
  if (!f) throw new Error(`no disk file in ${dir}`);
  return path.join(dir, f);
};
const allocated = (file: string) => statSync(file).blocks * 512;

const d = await startDaemon();
const snapshotRows: Array<Record<string, unknown>> = [];
const backupRows: Array<Record<string, unknown>> = [];
let incremental: Record<string, unknown> | undefined;
try {
  for (const model of models) {
    for (const sizeMiB of sizesMiB) {
      const g = `${model}-${sizeMiB}`;
      await runOperation(d, 'POST', '/1.0/guests', { name: g, image: 'busybox', model, start: true, config });
      // Random data written by the guest itself (so it is in the disk as the guest's file system wrote it).
      ok(d, [
        'exec',
        g,
        '--',
        'sh',
        '-c',
        `mkdir -p /data && dd if=/dev/urandom of=/data/blob bs=1M count=${sizeMiB} 2>/dev/null && sync`,
      ]);
      const diskFile = diskOf(d, model, g);
      await settle();
      const snapshot: number[] = [];
      const clone: number[] = [];
      const restore: number[] = [];
      const del: number[] = [];
      for (let i = 0; i < (backupsOnly ? 0 : reps); i++) {
        snapshot.push(
          await timed(() => runOperation(d, 'POST', `/1.0/guests/${g}/snapshots`, { name: `b${i}` })),
        );
        sh('sync');
        clone.push(
          await timed(() =>
            runOperation(d, 'POST', '/1.0/guests', {
              name: `${g}-c${i}`,
              source: { type: 'copy', source: g },
            }),
          ),
        );
        sh('sync');
        restore.push(await timed(() => runOperation(d, 'PUT', `/1.0/guests/${g}`, { restore: `b${i}` })));
        del.push(await timed(() => runOperation(d, 'DELETE', `/1.0/guests/${g}/snapshots/b${i}`)));
        await runOperation(d, 'DELETE', `/1.0/guests/${g}-c${i}?force=true`);
        sh('sync');
      }
      const row = {
        model,
        writtenBytes: sizeMiB * MiB,
        diskFile: path.basename(diskFile),
        diskAllocatedBytes: allocated(diskFile),
        snapshotRunning: stats(snapshot),
        cloneRunning: stats(clone),
        restoreRunning: stats(restore),
        deleteSnapshot: stats(del),
      };
      console.error(JSON.stringify(row));
      if (!backupsOnly) snapshotRows.push(row);
      if (sizeMiB !== sizesMiB.at(-1)) {
        await runOperation(d, 'DELETE', `/1.0/guests/${g}?force=true`);
        continue;
      }

      if (model === 'vm' && !backupsOnly) {
        const changedBlocks = QUICK ? 1 : 160;
        // Incremental backups of the running guest: full, then 1% of the data changed.
        const full = path.join(work, 'full.backup');
        const inc = path.join(work, 'inc1.backup');
        const fullMs = timedSync(() => ok(d, ['export', g, full, '--incremental']));
        ok(d, [
          'exec',
          g,
          '--',
          'sh',
          '-c',
          // 160 x 64 KiB = 10 MiB, spread over the whole 1 GiB file (16384 blocks of 64 KiB).
          `i=0; while [ $i -lt ${changedBlocks} ]; do dd if=/dev/urandom of=/data/blob bs=64k count=1 seek=$((i*${Math.floor((sizeMiB * 16) / changedBlocks)})) conv=notrunc 2>/dev/null; i=$((i+1)); done; sync`,
        ]);
        const incMs = timedSync(() => ok(d, ['export', g, inc, '--incremental']));
        incremental = {
          model,
          writtenBytes: sizeMiB * MiB,
          changedBytes: changedBlocks * 64 * 1024,
          full: { ms: Math.round(fullMs), archiveBytes: statSync(full).size },
          incremental: { ms: Math.round(incMs), archiveBytes: statSync(inc).size },
        };
        console.error(JSON.stringify(incremental));
        rmSync(full);
        rmSync(inc);
      }

      // Export and import of the stopped guest against the raw tools on the same disk.
      await runOperation(d, 'PUT', `/1.0/guests/${g}/state`, { action: 'stop', timeout: 60 });
      sh('sync');
      await settle();
      // Trivisor and the raw tools alternate, round by round, on a machine others load too: each figure is
      // the median of its rounds, with the 1-minute load average read before each run.
      const archive = path.join(work, `${g}.backup`);
      const flat = path.join(work, 'flat.qcow2');
      const flatTar = path.join(work, 'flat.tar.zst');
      const diskTar = path.join(work, 'disk.tar.zst');
      const fmt = model === 'vm' ? 'qcow2' : 'raw';
      sh(`qemu-img convert -f ${fmt} -O qcow2 ${diskFile} ${flat}`);
      const flatBytes = statSync(flat).size;
      rmSync(flat);
      const runs: Record<string, Array<{ ms: number; load1: number }>> = {};
      const measure = (what: string, fn: () => void) => {
        const load1 = Number(load().split(' ')[0]);
        const msValue = timedSync(fn);
        runs[what] = [...(runs[what] ?? []), { ms: Math.round(msValue), load1 }];
        sh('sync');
      };
      let archiveBytes = 0;
      for (let round = 0; round < backupRounds; round++) {
        rmSync(archive, { force: true });
        measure('export', () => ok(d, ['export', g, archive]));
        archiveBytes = statSync(archive).size;
        measure('rawTarZstdOfDiskFile', () =>
          sh(`tar --zstd --sparse -C ${path.dirname(diskFile)} -cf ${diskTar} ${path.basename(diskFile)}`),
        );
        measure('rawQemuImgConvertFlat', () => sh(`qemu-img convert -f ${fmt} -O qcow2 ${diskFile} ${flat}`));
        measure('rawTarZstdOfFlat', () => sh(`tar --zstd --sparse -C ${work} -cf ${flatTar} flat.qcow2`));
        rmSync(flat);
        measure('import', () => ok(d, ['import', archive, `${g}-i`]));
        await runOperation(d, 'DELETE', `/1.0/guests/${g}-i?force=true`);
        sh(`rm -rf ${work}/x; mkdir -p ${work}/x`);
        measure('rawUntarZstdOfDiskFile', () => sh(`tar --zstd -C ${work}/x -xf ${diskTar}`));
        measure('rawUntarZstdOfFlat', () => sh(`tar --zstd -C ${work}/x -xf ${flatTar}`));
        measure('rawQemuImgConvertBack', () =>
          sh(`qemu-img convert -f qcow2 -O ${fmt} ${work}/x/flat.qcow2 ${work}/x/back.img`),
        );
        sh(`rm -rf ${work}/x ${flatTar} ${diskTar}`);
      }
      rmSync(archive, { force: true });
      const summary = (what: string) => {
        const xs = runs[what] ?? [];
        const median = percentile(
          xs.map((x) => x.ms),
          50,
        );
        return { ms: Math.round(median), mibPerSecond: mibps(flatBytes, median), runs: xs };
      };
      const exp = summary('export');
      const imp = summary('import');
      const rawTar = summary('rawTarZstdOfDiskFile');
      const rawUntar = summary('rawUntarZstdOfDiskFile');
      const brow = {
        model,
        writtenBytes: sizeMiB * MiB,
        flatQcow2Bytes: flatBytes,
        archiveBytes,
        rounds: backupRounds,
        export: exp,
        import: imp,
        rawQemuImgConvertFlat: summary('rawQemuImgConvertFlat'),
        rawTarZstdOfFlat: summary('rawTarZstdOfFlat'),
        rawTarZstdOfDiskFile: rawTar,
        rawUntarZstdOfDiskFile: rawUntar,
        rawUntarZstd: summary('rawUntarZstdOfFlat'),
        rawQemuImgConvertBack: summary('rawQemuImgConvertBack'),
        exportOverRawTarZstdOfDiskFile: Math.round((exp.ms / rawTar.ms) * 100) / 100,
        importOverRawUntarOfDiskFile: Math.round((imp.ms / rawUntar.ms) * 100) / 100,
      };
      console.error(JSON.stringify(brow));
      backupRows.push(brow);
      await runOperation(d, 'DELETE', `/1.0/guests/${g}?force=true`);
    }
  }
  const loadAfter = load();
  const qemuImgVersion = execFileSync('qemu-img', ['--version'], { encoding: 'utf8' }).split('\n')[0];
  const file = writeResult('storage-vm', {
    reps,
    models,
    config,
    loadBefore,
    loadAfter,
    qemuImgVersion,
    note: 'Times through the API (snapshots, clones, restores) and the CLI (exports, imports), ms. MiB/s are of the flat qcow2 of the disk (base disk and written data).',
    snapshots: snapshotRows,
    backups: backupRows,
    incremental,
  });
  console.log(file);
} finally {
  await d.destroy();
  rmSync(work, { recursive: true, force: true });
}
