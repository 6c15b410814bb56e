// Benchmark: snapshot, restore and clone time of a ct guest against the size of its
// writable layer (10 MiB vs 1 GiB), on the default directory pool (cp --reflink=auto:
// a full copy on ext4) and on a btrfs pool on a loop file (copy-on-write: reflinks).
// Usage: node bench/storage-snapshot-clone.ts [reps=3]
import { spawnSync } from 'node:child_process';
import { statfsSync } from 'node:fs';
import path from 'node:path';
import { startDaemon } from '../test/system/harness.ts';
import { ms, percentile, QUICK, runOperation, settle, writeResult } from './lib.ts';

process.env.TRIVISOR_DEFAULT_NETWORK = 'none';
const reps = Number(process.argv[2] ?? 3);
const MiB = 2 ** 20;
const sizes = QUICK ? [2 * MiB] : [10 * MiB, 1024 * MiB];

const d = await startDaemon();
try {
  // findmnt names the file system (stat -f only knows the ext magic number, shared by ext2/3/4).
  const fsType = spawnSync('findmnt', ['-n', '-o', 'FSTYPE', '-T', d.stateDir], {
    encoding: 'utf8',
  }).stdout.trim();
  const made = await d.api('POST', '/1.0/storage-pools', {
    name: 'bench',
    driver: 'btrfs',
    config: { size: '6GiB' },
  });
  if (made.status !== 200) throw new Error(`cannot make the btrfs pool: ${made.text}`);
  const rows: Array<Record<string, unknown>> = [];
  for (const [storage, bytes] of [
    ['default', sizes[0]],
    ['default', sizes[1]],
    ['bench', sizes[0]],
    ['bench', sizes[1]],
  ] as const) {
    if (bytes === undefined) continue;
    const g = `s${bytes / MiB}-${storage}`;
    await runOperation(d, 'POST', '/1.0/guests', { name: g, image: 'busybox', start: true, storage });
    // Random data in 1 MiB files, written on the host into the guest's upper layer.
    const upper = path.join(d.stateDir, 'guests', g, 'upper', 'data');
    const r = spawnSync(
      'sh',
      [
        '-c',
        `mkdir -p ${upper} && for i in $(seq ${bytes / MiB}); do head -c 1048576 /dev/urandom > ${upper}/f$i; done`,
      ],
      { stdio: 'inherit' },
    );
    if (r.status !== 0) throw new Error('cannot write the data');
    spawnSync('sync');
    await settle();
    const time = async (fn: () => Promise<void>) => {
      const t = process.hrtime.bigint();
      await fn();
      return ms(process.hrtime.bigint() - t);
    };
    const snapshot: number[] = [];
    const restore: number[] = [];
    const clone: number[] = [];
    const del: number[] = [];
    for (let i = 0; i < reps; i++) {
      snapshot.push(
        await time(() => runOperation(d, 'POST', `/1.0/guests/${g}/snapshots`, { name: `b${i}` })),
      );
      spawnSync('sync');
      clone.push(
        await time(() =>
          runOperation(d, 'POST', '/1.0/guests', { name: `${g}-c${i}`, source: { type: 'copy', source: g } }),
        ),
      );
      spawnSync('sync');
      restore.push(await time(() => runOperation(d, 'PUT', `/1.0/guests/${g}`, { restore: `b${i}` })));
      del.push(await time(() => runOperation(d, 'DELETE', `/1.0/guests/${g}/snapshots/b${i}`)));
      await runOperation(d, 'DELETE', `/1.0/guests/${g}-c${i}`);
      spawnSync('sync');
    }
    const stats = (xs: number[]) => ({
      p50Ms: Math.round(percentile(xs, 50)),
      maxMs: Math.round(Math.max(...xs)),
    });
    const row = {
      pool: storage === 'default' ? `default (dir on ${fsType})` : 'btrfs (loop file)',
      writableBytes: bytes,
      snapshotRunning: stats(snapshot),
      restoreRunning: stats(restore),
      cloneRunning: stats(clone),
      deleteSnapshot: stats(del),
    };
    console.error(JSON.stringify(row));
    rows.push(row);
    await runOperation(d, 'DELETE', `/1.0/guests/${g}?force=true`);
  }
  const free = statfsSync(d.stateDir);
  const file = writeResult('storage-snapshot-clone', {
    freeBytes: free.bavail * free.bsize,
    reps,
    note: 'Times through the API, ms (operation start to end). Snapshot and clone freeze the running guest for the copy; restore includes stopping and starting it.',
    rows,
  });
  console.log(file);
} finally {
  await d.destroy();
}
