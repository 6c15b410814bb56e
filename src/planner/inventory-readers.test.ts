import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { ROWS_PER_CHUNK, readInventory } from './inventory-readers.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'trivisor-planner-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const REPO = path.resolve(import.meta.dirname, '../..');
const FIXTURE = path.join(REPO, 'test/fixtures/planner/day-night.csv');
const GIB = 1024 ** 3;

let n = 0;
function file(text: string, ext = '.csv'): string {
  const f = path.join(dir, `inv${n++}${ext}`);
  writeFileSync(f, ext.endsWith('.gz') ? gzipSync(text) : text);
  return f;
}

const HEADER = 'id,cpu,memory,timestamp,cpu_used,memory_used';

/** Rejects with an InvalidArgument whose one-line message starts with FILE:LINE and matches `what`. */
async function refused(f: string, line: number, what: RegExp): Promise<void> {
  await assert.rejects(readInventory(f), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'InvalidArgument');
    assert.ok(e.message.startsWith(`${f}:${line}: `), e.message);
    assert.match(e.message, what);
    assert.ok(!e.message.includes('\n'));
    return true;
  });
}

describe('inventory readers', () => {
  test('our CSV: ISO or Unix timestamps, sizes with units, one series per workload on a common grid', async () => {
    const inv = await readInventory(FIXTURE);
    assert.equal(inv.format, 'trivisor');
    assert.equal(inv.samples, 8);
    assert.equal(inv.intervalSeconds, 300);
    assert.deepEqual(
      inv.workloads.map((w) => w.id),
      ['web1', 'web2', 'batch1', 'batch2'],
    );
    const web1 = inv.workloads[0];
    assert.deepEqual([...(web1?.cpu ?? [])], [3, 3, 3, 3, 0.5, 0.5, 0.5, 0.5]);
    assert.equal(web1?.memoryBytes?.[0], 3 * GIB);
    assert.equal(web1?.memoryCapacityBytes, 8 * GIB);
    const cpuOnly = await readInventory(file(`${HEADER}\na,2,,1000,1,\na,2,,1300,1.5,\n`));
    assert.equal(cpuOnly.workloads[0]?.memoryBytes, undefined);
    assert.deepEqual([...(cpuOnly.workloads[0]?.cpu ?? [])], [1, 1.5]);
  });

  test('our CSV: malformed rows, negative and missing samples each name the file and line', async () => {
    await refused(
      file(`${HEADER}\na,2,1GiB,1000,1,1GiB\na,2,1GiB,1300,1\n`),
      3,
      /5 columns where the header has 6/,
    );
    await refused(file(`${HEADER}\na,2,1GiB,1000,-1,1GiB\n`), 2, /cpu_used of a -1 is negative/);
    await refused(file(`${HEADER}\na,2,1GiB,1000,,1GiB\n`), 2, /cpu_used of a is missing/);
    await refused(file(`${HEADER}\na,2,1GiB,1000,x,1GiB\n`), 2, /"x" is not a number/);
    await refused(file(`${HEADER}\na,2,1GiB,1000,1,-5\n`), 2, /memory_used of a -5 is negative/);
    await refused(file(`${HEADER}\na,2,1GiB,yesterday,1,1GiB\n`), 2, /neither ISO 8601 nor Unix seconds/);
    // b has no sample at 1300: reported at b's first line.
    await refused(
      file(`${HEADER}\na,2,1GiB,1000,1,1GiB\na,2,1GiB,1300,1,1GiB\nb,2,1GiB,1000,1,1GiB\n`),
      4,
      /b has no sample at 1970-01-01T00:21:40\.000Z/,
    );
    await refused(file(`${HEADER}\na,2,1GiB,1000,1,1GiB\na,2,1GiB,1000,1,1GiB\n`), 3, /second sample/);
    await refused(file('id,cpu\na,2\n'), 1, /the header must be/);
    await refused(file('time,value\n1,2\n'), 1, /none of the inventory layouts/);
  });

  test('PlanetLab rows: CloudSim sizes in four contiguous blocks, CPU % turned into MIPS', async () => {
    const rows = Array.from({ length: 8 }, (_, i) => `vm${i},50,100,0`);
    const inv = await readInventory(file(`vm,t0,t1,t2\n${rows.join('\n')}\n`, '.csv.gz'));
    assert.equal(inv.format, 'planetlab');
    assert.equal(inv.cpuUnit, 'MIPS');
    assert.deepEqual(
      inv.workloads.map((w) => w.cpuCapacity),
      [2500, 2500, 2000, 2000, 1000, 1000, 500, 500],
    );
    assert.deepEqual([...(inv.workloads[2]?.cpu ?? [])], [1000, 2000, 0]);
    await refused(file('vm,t0,t1\na,1,2\nb,1\n'), 3, /2 columns where the header has 3/);
    await refused(file('vm,t0,t1\na,1,-2\n'), 2, /sample t1 of a -2 is negative/);
    await refused(file('vm,t0,t1\na,1,\n'), 2, /sample t1 of a is missing/);
  });

  test('PlanetLab directory: one file a VM, one CPU % a line', async () => {
    const d = path.join(dir, 'planetlab');
    mkdirSync(d);
    writeFileSync(path.join(d, 'b'), '10\n20\n');
    writeFileSync(path.join(d, 'a'), '30\n40\n');
    const inv = await readInventory(d);
    // Two VMs: blocks of one, 2500 and 2000 MIPS in name order.
    assert.deepEqual(
      inv.workloads.map((w) => [w.id, [...w.cpu]]),
      [
        ['a', [750, 1000]],
        ['b', [200, 400]],
      ],
    );
    writeFileSync(path.join(d, 'c'), '10\n\n');
    await assert.rejects(readInventory(d), new RegExp(`${path.join(d, 'c')}:2: the CPU sample is missing`));
  });

  test('Bitbrains rows: cores busy from MHz, memory from kB, a missing interval repeats the one before', async () => {
    const head =
      'vm,timestamp_s,cpu_cores,cpu_capacity_mhz,cpu_usage_mhz,mem_capacity_kb,mem_usage_kb,disk_read_kbps,disk_write_kbps,net_rx_kbps,net_tx_kbps';
    const row = (vm: number, t: number, mhz: number, kb: number) =>
      `${vm},${t},2,4000,${mhz},8388608,${kb},0,0,0,0`;
    const inv = await readInventory(
      file(
        `${head}\n${row(1, 0, 2000, 1024)}\n${row(1, 600, 4000, 2048)}\n${row(2, 0, 0, 0)}\n${row(2, 300, 1000, 0)}\n${row(2, 600, 0, 0)}\n`,
      ),
    );
    assert.equal(inv.format, 'bitbrains');
    assert.equal(inv.samples, 3);
    assert.deepEqual([...(inv.workloads[0]?.cpu ?? [])], [1, 1, 2]);
    assert.deepEqual([...(inv.workloads[0]?.memoryBytes ?? [])], [1024 ** 2, 1024 ** 2, 2 * 1024 ** 2]);
    assert.deepEqual([...(inv.workloads[1]?.cpu ?? [])], [0, 0.5, 0]);
    // Disk and network: means over the rows read (KB of 1,024 bytes), for the model advisor.
    const io = await readInventory(
      file(`${head}\n1,0,2,4000,0,8388608,0,10,20,1,2\n1,300,2,4000,0,8388608,0,30,40,3,4\n`),
    );
    assert.deepEqual(io.workloads[0]?.io, {
      diskReadBytesPerSecond: 20 * 1024,
      diskWriteBytesPerSecond: 30 * 1024,
      networkBytesPerSecond: 5 * 1024,
    });
    await refused(file(`${head}\n1,0,2,4000,5,8388608,0,0,0,-1,0\n`), 2, /net_rx_kbps -1 is negative/);
    await refused(file(`${head}\n1,0,2,4000,-5,8388608,0,0,0,0,0\n`), 2, /cpu_usage_mhz -5 is negative/);
    await refused(file(`${head}\n1,0,2,4000\n`), 2, /4 columns where Bitbrains rows have 11/);
  });
});

describe('inventory readers, Bitbrains in chunks', () => {
  test('rows past one chunk, two VMs interleaved and out of order, land on the grid as read', async () => {
    const head =
      'vm,timestamp_s,cpu_cores,cpu_capacity_mhz,cpu_usage_mhz,mem_capacity_kb,mem_usage_kb,disk_read_kbps,disk_write_kbps,net_rx_kbps,net_tx_kbps';
    // 2.5 chunks of intervals; VM 1 at every interval but the ones divisible by 7 (gaps repeat the
    // value before), VM 2 at every interval; rows of both interleaved, then in reverse order.
    const samples = Math.floor(2.5 * ROWS_PER_CHUNK);
    const rows: string[] = [];
    for (let i = 0; i < samples; i++) {
      if (i % 7 !== 0 || i === 0) rows.push(`1,${i * 300},4,4000,${(i % 50) * 40},8388608,${i},0,0,0,0`);
      rows.push(`2,${i * 300},1,1000,${(i * 13) % 1000},8388608,${2 * i},0,0,0,0`);
    }
    rows.reverse();
    const inv = await readInventory(file(`${head}\n${rows.join('\n')}\n`, '.csv.gz'));
    assert.equal(inv.samples, samples);
    assert.deepEqual(
      inv.workloads.map((w) => w.id),
      ['2', '1'],
    );
    const [two, one] = inv.workloads;
    for (let i = 0; i < samples; i++) {
      const j = i % 7 === 0 && i > 0 ? i - 1 : i;
      assert.equal(one?.cpu[i], ((j % 50) * 40 * 4) / 4000, `VM 1 cpu at ${i}`);
      assert.equal(one?.memoryBytes?.[i], j * 1024, `VM 1 memory at ${i}`);
      assert.equal(two?.cpu[i], ((i * 13) % 1000) / 1000, `VM 2 cpu at ${i}`);
      assert.equal(two?.memoryBytes?.[i], 2 * i * 1024, `VM 2 memory at ${i}`);
    }
  });
});

describe('trivisor plan consolidate', () => {
  const cli = (args: string[]) =>
    spawnSync(process.execPath, [path.join(REPO, 'src/cli/main.ts'), ...args], {
      encoding: 'utf8',
      env: { ...process.env, TRIVISOR_DIR: path.join(dir, 'no-daemon') },
    });

  test('plans a fixture file in the CLI process and prints the plan as JSON, with an SVG', () => {
    const svg = path.join(dir, 'hosts.svg');
    const r = cli([
      'plan',
      'consolidate',
      FIXTURE,
      '--host-size',
      'cpu=4,memory=8GiB',
      '--format',
      'json',
      '--svg',
      svg,
    ]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      hostSize: { cpu: number; memoryBytes: number };
      hosts: Array<{ name: string; workloads: string[] }>;
      lowerBound: number;
      replay: { overloadFraction: number; hostIntervalsOver100: number };
    };
    assert.deepEqual(out.hostSize, { cpu: 4, memoryBytes: 8 * GIB });
    assert.equal(out.hosts.length, 2);
    assert.equal(out.lowerBound, 2);
    for (const h of out.hosts) {
      assert.deepEqual(h.workloads.map((id) => id.replace(/\d$/, '')).sort(), ['batch', 'web']);
    }
    assert.deepEqual(out.replay, { ...out.replay, overloadFraction: 0, hostIntervalsOver100: 0 });
    const picture = spawnSync('grep', ['-c', '<polyline', svg], { encoding: 'utf8' });
    assert.equal(picture.stdout.trim(), '2');
  });

  test('--replay replays the plan on another period by workload id; a workload missing there is one Error: line', () => {
    const text = readFileSync(FIXTURE, 'utf8');
    // The busy half of every workload at 4 cores instead of 3: each host of 4 is over all the time.
    const busier = file(text.replaceAll(',3,3GiB', ',4,3GiB'));
    const r = cli(['plan', 'consolidate', FIXTURE, '--host-size', 'cpu=4,memory=8GiB', '--replay', busier]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stdout,
      /^4 workloads \(trivisor, 8 samples of 300 s\), hosts of cpu=4,memory=8GiB \(cores\)$/m,
    );
    assert.match(
      r.stdout,
      /predicted \(the planning inventory replayed\): headroom 12\.5 points, 0\.00% of host-intervals over 100%/,
    );
    assert.match(
      r.stdout,
      new RegExp(`replayed on ${busier}: headroom -12\\.5 points, 100\\.00% of host-intervals over 100%`),
    );
    const json = cli([
      'plan',
      'consolidate',
      FIXTURE,
      '--host-size',
      'cpu=4,memory=8GiB',
      '--replay',
      busier,
      '-f',
      'json',
    ]);
    const out = JSON.parse(json.stdout) as {
      predicted: { hostIntervalsOver100: number };
      replay: { hostIntervalsOver100: number };
      hosts: Array<{ intervalsOver100: number }>;
    };
    assert.equal(out.predicted.hostIntervalsOver100, 0);
    assert.equal(out.replay.hostIntervalsOver100, 16);
    assert.deepEqual(
      out.hosts.map((h) => h.intervalsOver100),
      [8, 8],
    );
    const without = file(
      text
        .split('\n')
        .filter((l) => !l.startsWith('batch2,'))
        .join('\n'),
    );
    const r2 = cli(['plan', 'consolidate', FIXTURE, '--host-size', 'cpu=4,memory=8GiB', '--replay', without]);
    assert.equal(r2.status, 1);
    assert.equal(r2.stdout, '');
    assert.match(r2.stderr, /^Error: Workload batch2 of host\d+ is not in the inventory replayed\n$/);
  });

  test('bad input is one Error: line naming the file and line, exit 1', () => {
    const r = cli(['plan', 'consolidate', FIXTURE, '--host-size', 'cpu=2,memory=8GiB']);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(
      r.stderr,
      /^Error: .*day-night\.csv:3: web1 needs cpu 3 cores at its 99th percentile, more than a whole host \(cpu=2\): give a larger --host-size\n$/,
    );
    const bad = file(`${HEADER}\na,2,1GiB,1000,-1,1GiB\n`);
    const r2 = cli(['plan', 'consolidate', bad, '--host-size', 'cpu=4']);
    assert.equal(r2.status, 1);
    assert.equal(r2.stderr, `Error: ${bad}:2: cpu_used of a -1 is negative\n`);
  });
});
