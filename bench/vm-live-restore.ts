// Benchmark: live restore of a vm guest (docs/decisions/0063-vm-live-restore.md) against the
// full import. A running busybox guest writes SIZE MiB of random data; it is exported twice
// (`--uncompressed` for the live restore, the default zstd archive for the full import) and
// deleted. Then, `reps` times each, alternating:
// - full: `trivisor import ARCHIVE NAME` then `trivisor start NAME`: time to Running (CLI);
// - live: `trivisor import ARCHIVE NAME --live`: time until the guest is Running (polled) and
//   until the import has ended (the disk copied, no backing file);
// - from the backup directory (decision 0070): the uncompressed archive placed in the daemon's
//   backup directory, `trivisor import --from-backups src/plain.tar NAME --live` (no upload):
//   time from the call until Running and until the copy has ended, against the full import of
//   the same archive from there (`import --from-backups` then `start`).
// Usage: node bench/vm-live-restore.ts [reps=1] [sizeMiB=512]  (TRIVISOR_BENCH_QUICK=1: 1 rep, 8 MiB)
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Daemon, startDaemon } from '../test/system/harness.ts';
import { percentile, QUICK, settle, writeResult } from './lib.ts';

process.env.TRIVISOR_DEFAULT_NETWORK = 'none';
const reps = QUICK ? 1 : Number(process.argv[2] ?? 1);
const sizeMiB = QUICK ? 8 : Number(process.argv[3] ?? 512);
const config = { 'limits.memory': '256MiB', 'limits.cpu': '1', 'limits.disk': '2GiB' };
const CLI = path.resolve(import.meta.dirname, '../bin/trivisor');

const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const work = mkdtempSync(path.join(os.tmpdir(), 'trivisor-bench-live-restore-'));
const ok = (d: Daemon, args: string[]) => {
  const r = d.cli(args, { timeoutMs: 900_000 });
  if (r.code !== 0) throw new Error(`trivisor ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const status = (d: Daemon, name: string): string | undefined => {
  const r = d.cli(['info', name, '--format', 'json']);
  return r.code === 0 ? (JSON.parse(r.stdout) as { status: string }).status : undefined;
};
const sleep = (msValue: number) => new Promise((r) => setTimeout(r, msValue));
const backing = (d: Daemon, name: string) => {
  const r = spawnSync(
    'qemu-img',
    ['info', '-U', '--output=json', path.join(d.stateDir, 'guests', name, 'root.qcow2')],
    {
      encoding: 'utf8',
    },
  );
  return (JSON.parse(r.stdout) as { 'backing-filename'?: string })['backing-filename'];
};

const loadBefore = load();
const d = await startDaemon();
const full: number[] = [];
const liveRunning: number[] = [];
const liveComplete: number[] = [];
const dirFull: number[] = [];
const dirRunning: number[] = [];
const dirComplete: number[] = [];
try {
  ok(d, [
    'launch',
    'busybox',
    'src',
    '--model',
    'vm',
    ...Object.entries(config).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
  ]);
  ok(d, [
    'exec',
    'src',
    '--',
    'sh',
    '-c',
    `dd if=/dev/urandom of=/blob bs=1M count=${sizeMiB} 2>/dev/null && sync`,
  ]);
  const plain = path.join(work, 'plain.tar');
  const zst = path.join(work, 'zst.tar');
  ok(d, ['export', 'src', plain, '--uncompressed']);
  ok(d, ['export', 'src', zst]);
  ok(d, ['delete', '--force', 'src']);
  // The daemon's backup directory (default STATE/shipped-backups), as a scheduled backup would be.
  const dirArchive = path.join(d.stateDir, 'shipped-backups', 'src', 'plain.tar');
  mkdirSync(path.dirname(dirArchive), { recursive: true });
  copyFileSync(plain, dirArchive);
  /** Runs `import ARGS` in the background: ms until NAME is Running, and until the import ended. */
  const liveImport = async (args: string[], name: string) => {
    const t = Date.now();
    const p = spawn(CLI, ['import', ...args], {
      env: {
        ...process.env,
        TRIVISOR_DIR: d.stateDir,
        TRIVISOR_CONFIG_DIR: path.join(d.stateDir, 'cli-config'),
      },
      stdio: 'ignore',
    });
    const ended = once(p, 'exit');
    let running: number | undefined;
    while (p.exitCode === null && running === undefined) {
      if (status(d, name) === 'Running') running = Date.now() - t;
      else await sleep(100);
    }
    const [code] = (await ended) as [number | null];
    if (code !== 0) throw new Error(`import ${args.join(' ')} exited ${code}`);
    const complete = Date.now() - t;
    if (backing(d, name) !== undefined) throw new Error('the disk still has a backing file');
    return { running: running ?? complete, complete };
  };
  for (let i = 0; i < reps; i++) {
    await settle();
    let t = Date.now();
    ok(d, ['import', zst, `full${i}`]);
    ok(d, ['start', `full${i}`]);
    full.push(Date.now() - t);
    ok(d, ['delete', '--force', `full${i}`]);
    await settle();
    t = Date.now();
    const p = spawn(CLI, ['import', plain, `live${i}`, '--live'], {
      env: {
        ...process.env,
        TRIVISOR_DIR: d.stateDir,
        TRIVISOR_CONFIG_DIR: path.join(d.stateDir, 'cli-config'),
      },
      stdio: 'ignore',
    });
    const ended = once(p, 'exit');
    let running: number | undefined;
    while (p.exitCode === null && running === undefined) {
      if (status(d, `live${i}`) === 'Running') running = Date.now() - t;
      else await sleep(100);
    }
    const [code] = (await ended) as [number | null];
    if (code !== 0) throw new Error(`import --live exited ${code}`);
    liveComplete.push(Date.now() - t);
    if (backing(d, `live${i}`) !== undefined) throw new Error('the disk still has a backing file');
    liveRunning.push(running ?? Date.now() - t);
    ok(d, ['delete', '--force', `live${i}`]);
    await settle();
    t = Date.now();
    ok(d, ['import', '--from-backups', 'src/plain.tar', `dirfull${i}`]);
    ok(d, ['start', `dirfull${i}`]);
    dirFull.push(Date.now() - t);
    ok(d, ['delete', '--force', `dirfull${i}`]);
    await settle();
    const dir = await liveImport(['--from-backups', 'src/plain.tar', `dirlive${i}`, '--live'], `dirlive${i}`);
    dirRunning.push(dir.running);
    dirComplete.push(dir.complete);
    ok(d, ['delete', '--force', `dirlive${i}`]);
  }
  const med = (xs: number[]) => Math.round(percentile(xs, 50));
  const row = {
    writtenBytes: sizeMiB * 2 ** 20,
    plainArchiveBytes: statSync(plain).size,
    zstdArchiveBytes: statSync(zst).size,
    fullImportAndStartMs: med(full),
    liveTimeToRunningMs: med(liveRunning),
    liveTimeToCompleteMs: med(liveComplete),
    fromBackupDirectory: {
      fullImportAndStartMs: med(dirFull),
      liveTimeToRunningMs: med(dirRunning),
      liveTimeToCompleteMs: med(dirComplete),
    },
    runs: { full, liveRunning, liveComplete, dirFull, dirRunning, dirComplete },
  };
  console.error(JSON.stringify(row));
  console.log(
    writeResult('vm-live-restore', {
      reps,
      config,
      loadBefore,
      loadAfter: load(),
      note: 'CLI times, ms',
      ...row,
    }),
  );
} finally {
  await d.destroy();
  rmSync(work, { recursive: true, force: true });
}
