import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { createGunzip } from 'node:zlib';
import { invalidArgument } from '../core/errors.ts';
import { parseBytes } from '../core/sizes.ts';
import type { Inventory, Workload } from './inventory.ts';

/**
 * CloudSim's PlanetLab setup (PlanetLabHelper.createVmList): four VM types of these MIPS,
 * assigned in four contiguous blocks of ⌈n/4⌉ in file order. The trace itself says only
 * "percent of the VM's own capacity", so the sizes must come from the same setup as the papers.
 */
export const PLANETLAB_VM_MIPS = [2500, 2000, 1000, 500] as const;
const PLANETLAB_INTERVAL_S = 300;
const BITBRAINS_INTERVAL_S = 300;

/** Our own CSV's header (docs/planner-inventory.md). */
export const TRIVISOR_CSV_HEADER = 'id,cpu,memory,timestamp,cpu_used,memory_used';

const bad = (file: string, line: number, what: string) => invalidArgument(`${file}:${line}: ${what}`);

/**
 * Calls `each` with every line of a file (gzip'd when it ends in .gz) and its 1-based number.
 * Streamed: a Bitbrains month is over 500 MB of text, more than one JavaScript string may hold.
 */
export async function forEachLine(file: string, each: (line: string, lineNo: number) => void): Promise<void> {
  const raw = createReadStream(file);
  const source = file.endsWith('.gz') ? raw.pipe(createGunzip()) : raw;
  // A gunzip error does not reach the read stream's consumer on its own.
  raw.on('error', (e) => source.destroy(e));
  source.setEncoding('utf8');
  let rest = '';
  let lineNo = 0;
  for await (const chunk of source as AsyncIterable<string>) {
    const text = rest + chunk;
    let start = 0;
    for (let nl = text.indexOf('\n', start); nl >= 0; nl = text.indexOf('\n', start)) {
      lineNo++;
      each(text.charCodeAt(nl - 1) === 13 ? text.slice(start, nl - 1) : text.slice(start, nl), lineNo);
      start = nl + 1;
    }
    rest = text.slice(start);
  }
  if (rest !== '') each(rest.endsWith('\r') ? rest.slice(0, -1) : rest, lineNo + 1);
}

/** A sample value: a finite number ≥ 0, or a one-line error naming file and line. */
function sample(text: string | undefined, file: string, line: number, what: string): number {
  if (text === undefined || text.trim() === '') throw bad(file, line, `${what} is missing`);
  const v = Number(text);
  if (!Number.isFinite(v)) throw bad(file, line, `${what} ${JSON.stringify(text)} is not a number`);
  if (v < 0) throw bad(file, line, `${what} ${text} is negative`);
  return v;
}

/**
 * Reads an inventory, its layout told by its first line: PlanetLab rows (`vm,t0,…`), Bitbrains
 * rows (`vm,timestamp_s,cpu_cores,…`) or our own CSV (`id,cpu,memory,timestamp,…`); a directory is
 * PlanetLab's original layout, one file a VM with one CPU % a line.
 */
export async function readInventory(file: string): Promise<Inventory> {
  const info = await stat(file).catch(() => {
    throw invalidArgument(`${file}: no such file or directory`);
  });
  if (info.isDirectory()) return readPlanetLabDirectory(file);
  let first = '';
  await forEachLine(file, (line, n) => {
    if (n === 1) first = line;
  }).catch((e: unknown) => {
    throw invalidArgument(`${file}: cannot be read (${e instanceof Error ? e.message : String(e)})`);
  });
  const header = first.replace(/^\uFEFF/, '').trim();
  if (/^vm,t0(,|$)/.test(header)) return readPlanetLabRows(file);
  if (header.startsWith('vm,timestamp_s,cpu_cores,')) return readBitbrains(file);
  if (header.startsWith('#') || header.startsWith('id,')) return readTrivisorCsv(file);
  throw bad(
    file,
    1,
    `the header ${JSON.stringify(header.slice(0, 60))} is none of the inventory layouts: PlanetLab (vm,t0,…), Bitbrains (vm,timestamp_s,cpu_cores,…) or ours (${TRIVISOR_CSV_HEADER})`,
  );
}

function planetLabInventory(
  rows: Array<{ id: string; pct: number[]; file: string; line: number }>,
): Inventory {
  const block = Math.ceil(rows.length / PLANETLAB_VM_MIPS.length);
  const workloads = rows.map((r, i): Workload => {
    const mips = PLANETLAB_VM_MIPS[Math.floor(i / block)] ?? 500;
    return {
      id: r.id,
      cpuCapacity: mips,
      cpu: Float64Array.from(r.pct, (p) => (p / 100) * mips),
      file: r.file,
      line: r.line,
    };
  });
  return {
    format: 'planetlab',
    cpuUnit: 'MIPS',
    intervalSeconds: PLANETLAB_INTERVAL_S,
    samples: rows[0]?.pct.length ?? 0,
    workloads,
  };
}

async function readPlanetLabRows(file: string): Promise<Inventory> {
  const rows: Array<{ id: string; pct: number[]; file: string; line: number }> = [];
  let columns = 0;
  const seen = new Set<string>();
  await forEachLine(file, (line, n) => {
    if (n === 1) {
      columns = line.split(',').length;
      return;
    }
    if (line.trim() === '') return;
    const cells = line.split(',');
    if (cells.length !== columns) {
      throw bad(file, n, `${cells.length} columns where the header has ${columns}`);
    }
    const id = cells[0] ?? '';
    if (id === '') throw bad(file, n, 'the VM id is empty');
    if (seen.has(id)) throw bad(file, n, `VM ${id} appears twice`);
    seen.add(id);
    const pct: number[] = [];
    for (let c = 1; c < cells.length; c++) pct.push(sample(cells[c], file, n, `sample t${c - 1} of ${id}`));
    rows.push({ id, pct, file, line: n });
  });
  if (rows.length === 0) throw bad(file, 2, 'the inventory has no VM');
  return planetLabInventory(rows);
}

async function readPlanetLabDirectory(dir: string): Promise<Inventory> {
  // CloudSim lists the directory in the file system's order; sorted names make the blocks reproducible.
  const names = (await readdir(dir)).filter((n) => !n.startsWith('.')).sort();
  const rows: Array<{ id: string; pct: number[]; file: string; line: number }> = [];
  for (const name of names) {
    const file = path.join(dir, name);
    const lines = (await readFile(file, 'utf8')).split('\n');
    if (lines.at(-1) === '') lines.pop();
    const pct = lines.map((l, i) => sample(l, file, i + 1, 'the CPU sample'));
    const expected = rows[0]?.pct.length;
    if (expected !== undefined && pct.length !== expected) {
      throw bad(file, pct.length, `${pct.length} samples where ${rows[0]?.file} has ${expected}`);
    }
    if (pct.length === 0) throw bad(file, 1, 'the file has no sample');
    rows.push({ id: name, pct, file, line: 1 });
  }
  if (rows.length === 0) throw invalidArgument(`${dir}: the directory holds no VM file`);
  return planetLabInventory(rows);
}

/**
 * Rows per chunk of a VM's columns. A month of Bitbrains is 500 VMs × 8,900 rows: held as three
 * growable `number[]` a VM (up to 1.5× over-allocated by V8, then garbage when copied to the grid)
 * it peaked at 364 MiB of RSS to read July alone; in fixed chunks of typed arrays the waste is at
 * most one chunk a VM.
 */
export const ROWS_PER_CHUNK = 1024;

/** One VM's timestamped rows before they are put on the common grid: (t, cpu, mem) triples in chunks. */
interface Rows {
  line: number;
  cores: number;
  memCapacityBytes: number;
  count: number;
  chunks: Float64Array<ArrayBuffer>[];
  /** Sums over the rows of disk read, disk write and network (rx + tx), KB/s: their means for the advisor. */
  diskReadKBps: number;
  diskWriteKBps: number;
  netKBps: number;
}

function pushRow(r: Rows, t: number, cpu: number, mem: number): void {
  const k = r.count % ROWS_PER_CHUNK;
  if (k === 0) r.chunks.push(new Float64Array(3 * ROWS_PER_CHUNK));
  const c = r.chunks[r.chunks.length - 1] as Float64Array;
  c[3 * k] = t;
  c[3 * k + 1] = cpu;
  c[3 * k + 2] = mem;
  r.count++;
}

/** Calls `each` with every row (t, cpu, mem) of a VM, in the order read. */
function eachRow(r: Rows, each: (t: number, cpu: number, mem: number) => void): void {
  for (let i = 0; i < r.count; i++) {
    const c = r.chunks[Math.floor(i / ROWS_PER_CHUNK)] as Float64Array;
    const k = 3 * (i % ROWS_PER_CHUNK);
    each(c[k] as number, c[k + 1] as number, c[k + 2] as number);
  }
}

/**
 * Puts each workload's timestamped rows on one grid from the earliest timestamp of the file.
 * Bitbrains misses some intervals (8,500-8,900 of a month's 8,928): a gap repeats the last
 * value before it (the first value for a leading gap), two rows in one interval keep the larger.
 */
function onGrid(
  all: Map<string, Rows>,
  intervalS: number,
): { samples: number; series: Map<string, { cpu: Float64Array; mem: Float64Array }> } {
  let t0 = Number.POSITIVE_INFINITY;
  let t1 = Number.NEGATIVE_INFINITY;
  for (const r of all.values())
    eachRow(r, (t) => {
      if (t < t0) t0 = t;
      if (t > t1) t1 = t;
    });
  const samples = Math.floor((t1 - t0) / intervalS) + 1;
  const series = new Map<string, { cpu: Float64Array; mem: Float64Array }>();
  // Every VM's CPU series a view of one buffer, memory of another: releaseInventory gives each back
  // in one piece (a month: 35 MB each).
  const bytes = samples * Float64Array.BYTES_PER_ELEMENT;
  const cpuBuffer = new ArrayBuffer(all.size * bytes);
  const memBuffer = new ArrayBuffer(all.size * bytes);
  let k = 0;
  for (const [id, r] of all) {
    const cpu = new Float64Array(cpuBuffer, k * bytes, samples).fill(-1);
    const mem = new Float64Array(memBuffer, k * bytes, samples).fill(-1);
    k++;
    eachRow(r, (t, c, m) => {
      const i = Math.floor((t - t0) / intervalS);
      cpu[i] = Math.max(cpu[i] as number, c);
      mem[i] = Math.max(mem[i] as number, m);
    });
    const firstI = cpu.findIndex((v) => v >= 0);
    for (let i = 0; i < samples; i++) {
      if ((cpu[i] as number) >= 0) continue;
      const from = i === 0 || i <= firstI ? firstI : i - 1;
      cpu[i] = cpu[from] as number;
      mem[i] = mem[from] as number;
    }
    series.set(id, { cpu, mem });
    // The rows are on the grid now: give their memory back before the next VM's grid is made, not
    // when the GC comes round (a month's rows are 107 MB).
    for (const c of r.chunks) c.buffer.transfer(0);
    r.chunks = [];
    r.count = 0;
  }
  return { samples, series };
}

async function readBitbrains(file: string): Promise<Inventory> {
  const all = new Map<string, Rows>();
  await forEachLine(file, (line, n) => {
    if (n === 1 || line === '') return;
    const c = line.split(',');
    if (c.length !== 11) throw bad(file, n, `${c.length} columns where Bitbrains rows have 11`);
    const id = c[0] as string;
    if (id === '') throw bad(file, n, 'the VM id is empty');
    const t = sample(c[1], file, n, 'timestamp_s');
    const cores = sample(c[2], file, n, 'cpu_cores');
    const capMhz = sample(c[3], file, n, 'cpu_capacity_mhz');
    const usedMhz = sample(c[4], file, n, 'cpu_usage_mhz');
    const memCapKb = sample(c[5], file, n, 'mem_capacity_kb');
    const memUsedKb = sample(c[6], file, n, 'mem_usage_kb');
    const diskRead = sample(c[7], file, n, 'disk_read_kbps');
    const diskWrite = sample(c[8], file, n, 'disk_write_kbps');
    const net = sample(c[9], file, n, 'net_rx_kbps') + sample(c[10], file, n, 'net_tx_kbps');
    let r = all.get(id);
    if (!r) {
      r = {
        line: n,
        cores,
        memCapacityBytes: memCapKb * 1024,
        count: 0,
        chunks: [],
        diskReadKBps: 0,
        diskWriteKBps: 0,
        netKBps: 0,
      };
      all.set(id, r);
    }
    r.diskReadKBps += diskRead;
    r.diskWriteKBps += diskWrite;
    r.netKBps += net;
    // Usage in MHz over the VM's total MHz, times its cores: cores busy, the unit of --host-size cpu=.
    pushRow(r, t, capMhz > 0 ? (usedMhz / capMhz) * cores : 0, memUsedKb * 1024);
  });
  if (all.size === 0) throw bad(file, 2, 'the inventory has no VM');
  // Means over the rows read (KB as the trace's memory columns: 1,024 bytes), before onGrid gives
  // the rows back.
  const io = new Map<string, Workload['io']>();
  for (const [id, r] of all) {
    const mean = (kbps: number) => (kbps * 1024) / Math.max(1, r.count);
    io.set(id, {
      diskReadBytesPerSecond: mean(r.diskReadKBps),
      diskWriteBytesPerSecond: mean(r.diskWriteKBps),
      networkBytesPerSecond: mean(r.netKBps),
    });
  }
  const { samples, series } = onGrid(all, BITBRAINS_INTERVAL_S);
  const workloads = [...all].map(([id, r]): Workload => {
    const s = series.get(id) as { cpu: Float64Array; mem: Float64Array };
    return {
      io: io.get(id) as NonNullable<Workload['io']>,
      id,
      cpuCapacity: r.cores,
      memoryCapacityBytes: r.memCapacityBytes,
      cpu: s.cpu,
      memoryBytes: s.mem,
      file,
      line: r.line,
    };
  });
  return { format: 'bitbrains', cpuUnit: 'cores', intervalSeconds: BITBRAINS_INTERVAL_S, samples, workloads };
}

function timestampOf(text: string, file: string, line: number): number {
  const s = text.trim();
  if (s === '') throw bad(file, line, 'the timestamp is missing');
  const seconds = /^\d+(\.\d+)?$/.test(s) ? Number(s) : Date.parse(s) / 1000;
  if (!Number.isFinite(seconds)) {
    throw bad(file, line, `the timestamp ${JSON.stringify(s)} is neither ISO 8601 nor Unix seconds`);
  }
  return seconds;
}

const sizeOf = (text: string | undefined, file: string, line: number, what: string): number => {
  const s = (text ?? '').trim();
  if (s === '') throw bad(file, line, `${what} is missing`);
  if (s.startsWith('-')) throw bad(file, line, `${what} ${s} is negative`);
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  try {
    return parseBytes(s, what);
  } catch {
    throw bad(
      file,
      line,
      `${what} ${JSON.stringify(s)} is not a size (bytes, or a number with a unit such as 8GiB)`,
    );
  }
};

/** Our own CSV (docs/planner-inventory.md): one row per workload and timestamp. */
async function readTrivisorCsv(file: string): Promise<Inventory> {
  type Row = {
    line: number;
    cpu: number;
    mem: number | undefined;
    used: Map<number, { cpu: number; mem: number | undefined; line: number }>;
  };
  const all = new Map<string, Row>();
  const stamps = new Set<number>();
  let headerSeen = false;
  let withMemory: boolean | undefined;
  await forEachLine(file, (raw, n) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    if (!headerSeen) {
      if (line !== TRIVISOR_CSV_HEADER) {
        throw bad(file, n, `the header must be ${TRIVISOR_CSV_HEADER}`);
      }
      headerSeen = true;
      return;
    }
    const c = line.split(',');
    if (c.length !== 6) throw bad(file, n, `${c.length} columns where the header has 6`);
    const id = (c[0] as string).trim();
    if (id === '') throw bad(file, n, 'the workload id is empty');
    const hasMem = (c[2] as string).trim() !== '' || (c[5] as string).trim() !== '';
    if (withMemory === undefined) withMemory = hasMem;
    if (hasMem !== withMemory) {
      throw bad(
        file,
        n,
        'memory and memory_used must be given on every row or on none (a CPU-only inventory)',
      );
    }
    const cpu = sample(c[1], file, n, 'cpu');
    if (cpu === 0) throw bad(file, n, 'cpu (the capacity) must be above 0');
    const mem = withMemory ? sizeOf(c[2], file, n, 'memory') : undefined;
    const t = timestampOf(c[3] as string, file, n);
    const usedCpu = sample(c[4], file, n, `cpu_used of ${id}`);
    const usedMem = withMemory ? sizeOf(c[5], file, n, `memory_used of ${id}`) : undefined;
    let r = all.get(id);
    if (!r) {
      r = { line: n, cpu, mem, used: new Map() };
      all.set(id, r);
    } else if (r.cpu !== cpu || r.mem !== mem) {
      throw bad(file, n, `${id}'s cpu or memory differ from its first row (line ${r.line})`);
    }
    if (r.used.has(t)) throw bad(file, n, `${id} has a second sample at ${c[3]?.trim()}`);
    r.used.set(t, { cpu: usedCpu, mem: usedMem, line: n });
    stamps.add(t);
  });
  if (!headerSeen) throw bad(file, 1, `the header ${TRIVISOR_CSV_HEADER} is missing`);
  if (all.size === 0) throw bad(file, 2, 'the inventory has no workload');
  const grid = [...stamps].sort((a, b) => a - b);
  const steps = grid.slice(1).map((t, i) => t - (grid[i] as number));
  const intervalSeconds = steps.length > 0 ? Math.min(...steps) : 300;
  const workloads = [...all].map(([id, r]): Workload => {
    const cpu = new Float64Array(grid.length);
    const memoryBytes = new Float64Array(grid.length);
    grid.forEach((t, i) => {
      const s = r.used.get(t);
      if (!s) {
        throw bad(
          file,
          r.line,
          `${id} has no sample at ${new Date(t * 1000).toISOString()} (every workload needs one at each timestamp of the file)`,
        );
      }
      cpu[i] = s.cpu;
      memoryBytes[i] = s.mem ?? 0;
    });
    const w: Workload = { id, cpuCapacity: r.cpu, cpu, file, line: r.line };
    if (r.mem !== undefined) {
      w.memoryCapacityBytes = r.mem;
      w.memoryBytes = memoryBytes;
    }
    return w;
  });
  return { format: 'trivisor', cpuUnit: 'cores', intervalSeconds, samples: grid.length, workloads };
}
