// Benchmark (issue 13 part 6): a cold move of a ct and a pvm guest between two members, against
// copying the same guest's files by hand, in one run. Two daemons in network namespaces of their
// own (test/cluster/cluster-harness.ts), bootstrapped and joined. For each model a running guest
// on m1 writes N MiB from /dev/urandom (incompressible, so zstd cannot shrink it away). Each
// round, on the member that holds the guest: first the baseline, an administrator's copy of the
// guest's directory in that member's state dir to a scratch directory, once with
// `tar | zstd | zstd -d | tar` and once with `cp -a` (the guest left running: a copy by hand
// does not stop it; --one-file-system/-x keep out the ct's mounted rootfs, which is the image's
// layer seen through the overlay, not the guest's files; --sparse because the pvm's disk is a
// sparse file, which cp -a keeps sparse by itself); then `POST /1.0/guests/NAME?target=`
// with `{migration: true}` to the other member, timed to the end of its operation (the guest
// running there). Then the same back. The operation is polled meanwhile (every 50 ms) for its
// progress line, which names each step of guest-move.ts: the breakdown.
// Usage: node bench/cluster-move.ts [rounds=3] [ctMiB=256] [pvmMiB=128]
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { loadavg, release } from 'node:os';
import path from 'node:path';
import { type MemberHost, makeTestCluster, waitForStatus } from '../test/cluster/cluster-harness.ts';
import { makeRunDir, removeRunDir } from '../test/leftovers.ts';
import { sleep } from '../test/system/harness.ts';
import { percentile, writeResult } from './lib.ts';

const rounds = Number(process.argv[2] ?? 3);
const sizes: Record<'ct' | 'pvm', number> = {
  ct: Number(process.argv[3] ?? 256),
  pvm: Number(process.argv[4] ?? 128),
};
const loadAtStart = loadavg();

/** The steps of a move, as its progress line names them (src/services/guest-move.ts). */
const STEPS = [
  ['stop', /^stopping the guest/],
  ['archive', /^writing the guest/],
  ['handOver', /^handing the guest over|makes the guest's files/],
  ['sendApply', /^sending \d+ bytes/],
  ['start', /^starting the guest/],
] as const;
/** `request`: from the POST to the first step seen (the checks, the operation's start, one poll). */
type Step = (typeof STEPS)[number][0] | 'request';

function sh(script: string): void {
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${script}: exit ${r.status}: ${r.stderr.trim()}`);
}
function timed(script: string): number {
  const t0 = performance.now();
  sh(script);
  return performance.now() - t0;
}
/** Bytes on disk under `dir` (a sparse disk image counts for what it holds), its own file system only. */
const duBytes = (dir: string): number =>
  Number(spawnSync('du', ['-sx', '--block-size=1', dir], { encoding: 'utf8' }).stdout.split('\t')[0]);

interface MoveSample {
  from: string;
  to: string;
  ms: number;
  archiveBytes: number;
  steps: Partial<Record<Step, number>>;
}

/** Moves `name` from `from` to `to` through `from`'s API; times it and its steps. */
async function move(name: string, from: MemberHost, to: MemberHost): Promise<MoveSample> {
  const t0 = performance.now();
  const r = await from.daemon.api('POST', `/1.0/guests/${name}?target=${to.name}`, { migration: true });
  if (r.status !== 202) throw new Error(`move ${name} to ${to.name}: ${r.status} ${r.text}`);
  const url = String(r.body.operation);
  const seen: Array<[Step, number]> = [];
  let archiveBytes = 0;
  let done = false;
  const ended = from.daemon.api('GET', `${url}/wait?timeout=600`).then((w) => {
    done = true;
    return { w, at: performance.now() };
  });
  while (!done) {
    const now = await from.daemon.api('GET', url);
    const text = String((now.body.metadata as { progressText?: string | null })?.progressText ?? '');
    const at = performance.now();
    const step = STEPS.find(([, re]) => re.test(text))?.[0];
    if (step && seen.at(-1)?.[0] !== step && !seen.some(([s]) => s === step)) seen.push([step, at]);
    archiveBytes ||= Number(/^sending (\d+) bytes/.exec(text)?.[1] ?? 0);
    await Promise.race([sleep(50), ended]);
  }
  const { w, at: end } = await ended;
  const op = w.body.metadata as { status: string; err?: string | null; error?: string | null };
  if (op.status !== 'Success')
    throw new Error(`move ${name} to ${to.name}: ${op.status} ${op.err ?? op.error}`);
  const g = await to.daemon.api('GET', `/1.0/guests/${name}`);
  const meta = g.body.metadata as { location?: string; status?: string };
  if (meta.location !== to.name || meta.status !== 'Running') {
    throw new Error(
      `after its move ${name} is ${meta.status} on ${meta.location}, not Running on ${to.name}`,
    );
  }
  // Each step lasts from its first sighting to the next one's; the last to the operation's end
  // (so `start` includes removing the source's files, which has no progress line of its own).
  const steps: Partial<Record<Step, number>> = { request: (seen[0]?.[1] ?? end) - t0 };
  seen.forEach(([s, at], i) => {
    steps[s] = (seen[i + 1]?.[1] ?? end) - at;
  });
  return { from: from.name, to: to.name, ms: end - t0, archiveBytes, steps };
}

const cluster = await makeTestCluster(['m1', 'm2']);
const scratchRun = await makeRunDir('bench-move');
try {
  const [m1, m2] = cluster.hosts;
  if (!m1 || !m2) throw new Error('hosts missing');
  m1.daemon.ok(['cluster', 'bootstrap', '--address', m1.ip]);
  const token = m1.daemon.ok(['cluster', 'add', m2.name]).trim();
  m2.daemon.ok(['cluster', 'join', token, '--address', m2.ip]);
  for (const h of [m1, m2]) await waitForStatus(h.daemon, m2.name, 'Online');

  const models = [
    { model: 'ct' as const, args: [] as string[] },
    { model: 'pvm' as const, args: ['-c', 'limits.memory=64MiB'] },
  ];
  const results = [];
  for (const { model, args } of models) {
    const name = `bm-${model}`;
    const mib = sizes[model];
    m1.daemon.ok(['launch', 'busybox', name, '--model', model, '--target', m1.name, ...args]);
    const wrote = m1.daemon.cli(
      [
        'exec',
        name,
        '--',
        'sh',
        '-c',
        `dd if=/dev/urandom of=/root/data bs=1048576 count=${mib} 2>&1 && sync`,
      ],
      { timeoutMs: 600_000 },
    );
    if (wrote.code !== 0) throw new Error(`writing ${mib} MiB in ${name}: ${wrote.stderr}${wrote.stdout}`);
    const guestDirBytes = duBytes(path.join(m1.daemon.stateDir, 'guests', name));
    if (guestDirBytes < mib * 2 ** 20) {
      throw new Error(`${name}'s directory holds ${guestDirBytes} bytes, less than the ${mib} MiB it wrote`);
    }
    const moves: MoveSample[] = [];
    const tar: number[] = [];
    const cp: number[] = [];
    let holder = m1;
    for (let i = 0; i < rounds; i++) {
      for (const other of [m2, m1]) {
        const dir = path.join(holder.daemon.stateDir, 'guests', name);
        const dest = path.join(scratchRun, 'copy');
        for (const [samples, script] of [
          [
            tar,
            // tar's exit 1 is "file changed as we read it": a running pvm writes its COW file.
            `(tar --sparse --one-file-system --warning=no-file-changed --warning=no-file-ignored -C ${dir} -cf - . || [ $? -eq 1 ]) | zstd -q | (zstd -q -d | tar -C ${dest} -xf -)`,
          ],
          [cp, `cp -ax ${dir}/. ${dest}/`],
        ] as const) {
          rmSync(dest, { recursive: true, force: true });
          mkdirSync(dest);
          await sleep(300);
          samples.push(timed(script));
        }
        rmSync(dest, { recursive: true, force: true });
        await sleep(300);
        moves.push(await move(name, holder, other));
        holder = other;
      }
    }
    const p50 = percentile(
      moves.map((m) => m.ms),
      50,
    );
    const stepNames: Step[] = ['request', 'stop', 'archive', 'handOver', 'sendApply', 'start'];
    results.push({
      model,
      dataMiB: mib,
      guestDirBytes,
      // From the progress line of a move whose sending step a poll saw.
      archiveBytes: Math.max(...moves.map((m) => m.archiveBytes)),
      move: {
        p50Ms: p50,
        p95Ms: percentile(
          moves.map((m) => m.ms),
          95,
        ),
        samples: moves,
      },
      tarZstd: { p50Ms: percentile(tar, 50), samples: tar },
      cpA: { p50Ms: percentile(cp, 50), samples: cp },
      ratioToTarP50: p50 / percentile(tar, 50),
      ratioToCpP50: p50 / percentile(cp, 50),
      stepsP50Ms: Object.fromEntries(
        stepNames.map((s) => [
          s,
          percentile(
            moves.map((m) => m.steps[s] ?? 0),
            50,
          ),
        ]),
      ),
    });
    m1.daemon.ok(['delete', '--force', name]);
  }
  const result = {
    rounds,
    movesPerModel: 2 * rounds,
    models: results,
    kernel: release(),
    loadAverage: { start: loadAtStart, end: loadavg() },
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('cluster-move', result)}`);
} finally {
  await removeRunDir(scratchRun);
  await cluster.destroy();
}
