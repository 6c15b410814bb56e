import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { failedPrecondition, invalidArgument, isTrivisorError, TrivisorError } from '../core/errors.ts';
import { parseBytes } from '../core/sizes.ts';
import {
  advise,
  GUEST_MODELS,
  type GuestModel,
  type ModelCosts,
  type ModelTable,
  type OperationCosts,
  type WorkloadProfile,
} from './advisor.ts';
import type { Inventory } from './inventory.ts';
import { readInventory, TRIVISOR_CSV_HEADER } from './inventory-readers.ts';

/** Where bench/models.ts writes its table in this tree, the advisor's default. */
export const DEFAULT_MEASUREMENTS = path.resolve(import.meta.dirname, '../../bench/results/models.json');
export const MEASURE_COMMAND = 'node bench/models.ts ct,pvm,vm 3';

// bench/models.ts reads /proc/uptime in 10 ms steps and counts a shorter run as one step; the same
// floor here keeps a native time of 0 from making every model infinitely slower.
const TICK_SECONDS = 0.01;
/** The bench's I/O operation: one 64 KiB write and an fsync. */
export const IO_OP_BYTES = 64 * 1024;

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads the three-model table bench/models.ts wrote (`bench/results/models.json`) and turns it into
 * costs per operation: seconds ÷ the operations each workload did, times each model's ratio.
 */
export async function readModelTable(file: string): Promise<ModelTable> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw failedPrecondition(
        `No three-model measurements at ${file}: measure this host with \`${MEASURE_COMMAND}\` (writes bench/results/models.json), or give --measurements FILE`,
      );
    throw invalidArgument(`Cannot read the measurements ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw invalidArgument(`The measurements ${file} are not JSON (${(e as Error).message})`);
  }
  const at = (dotted: string): number => {
    let v: unknown = doc;
    for (const part of dotted.split('.')) v = isObject(v) ? v[part] : undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      const older =
        dotted.startsWith('operations.') && v === undefined ? ' (written by an older bench/models.ts)' : '';
      throw invalidArgument(
        `The measurements ${file} have no usable ${dotted}${older}: measure again with \`${MEASURE_COMMAND}\``,
      );
    }
    return v;
  };
  const perOp = (workload: string): number =>
    Math.max(TICK_SECONDS, at(`seconds.native.${workload}`)) / Math.max(1, at(`operations.${workload}`));
  const native: OperationCosts = {
    computeRatio: 1,
    syscallSeconds: perOp('syscalls'),
    forkExecSeconds: perOp('forkExec'),
    ioOpSeconds: perOp('fileFsync'),
    // The memory workload's operations are MiB: seconds per byte copied.
    copyByteSeconds: perOp('memory') / 2 ** 20,
  };
  const row = (m: GuestModel): ModelCosts => {
    const ratio = (w: string) => {
      const r = at(`ratioToNative.${m}.${w}`);
      if (r === 0)
        throw invalidArgument(`The measurements ${file} have a ratio of 0 at ratioToNative.${m}.${w}`);
      return r;
    };
    return {
      computeRatio: ratio('cpu'),
      syscallSeconds: native.syscallSeconds * ratio('syscalls'),
      forkExecSeconds: native.forkExecSeconds * ratio('forkExec'),
      ioOpSeconds: native.ioOpSeconds * ratio('fileFsync'),
      copyByteSeconds: native.copyByteSeconds * ratio('memory'),
      bootMs: at(`bootToInitMs.${m}`),
      idleMemoryBytes: at(`idleHostMemoryMiB.${m}`) * 2 ** 20,
    };
  };
  const models = Object.fromEntries(GUEST_MODELS.map((m) => [m, row(m)])) as Record<GuestModel, ModelCosts>;
  const measuredAt = isObject(doc) && typeof doc.measuredAt === 'string' ? doc.measuredAt : undefined;
  // The host's cores, from the benchmark's provenance: the most a guest of any model can use here.
  const cpus = isObject(doc) && isObject(doc.provenance) ? doc.provenance.cpus : undefined;
  const hostCores = typeof cpus === 'number' && Number.isInteger(cpus) && cpus > 0 ? cpus : undefined;
  return {
    source: file,
    ...(measuredAt === undefined ? {} : { measuredAt }),
    ...(hostCores === undefined ? {} : { hostCores }),
    native,
    models,
  };
}

/** A workload's fields as text (flags, CSV cells) or JSON values, before they are checked. */
export type ProfileFields = Partial<Record<ProfileField, unknown>>;
export const PROFILE_FIELDS = [
  'id',
  'os',
  'kernel',
  'isolation',
  'cpu',
  'syscalls',
  'forks',
  'io',
  'net',
  'memory',
  'cores',
] as const;
export type ProfileField = (typeof PROFILE_FIELDS)[number];

const CHOICES = {
  os: ['linux', 'other'],
  kernel: ['any', 'own'],
  isolation: ['shared-kernel-ok', 'own-kernel'],
} as const;

function choice<K extends keyof typeof CHOICES>(key: K, v: unknown): (typeof CHOICES)[K][number] {
  const options: readonly string[] = CHOICES[key];
  if (v === undefined || v === '') return options[0] as (typeof CHOICES)[K][number];
  if (typeof v !== 'string' || !options.includes(v))
    throw invalidArgument(`${key} ${JSON.stringify(v)} is not one of ${options.join(', ')}`);
  return v as (typeof CHOICES)[K][number];
}

/** A rate ≥ 0: a number, or text such as `1500`, `250k`, `1.2M`. Absent is 0. */
function rate(key: string, v: unknown): number {
  if (v === undefined || v === '') return 0;
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string') {
    const m = /^\s*(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([kKM]?)\s*$/.exec(v);
    n = m ? Number(m[1]) * (m[2] === 'M' ? 1e6 : m[2] === '' ? 1 : 1e3) : Number.NaN;
  } else n = Number.NaN;
  if (!Number.isFinite(n)) throw invalidArgument(`${key} ${JSON.stringify(v)} is not a number`);
  if (n < 0) throw invalidArgument(`${key} ${JSON.stringify(v)} is negative`);
  return n;
}

/** CPU in cores: `0.5` or `50%` (of one core). */
function cpuCores(v: unknown): number {
  if (typeof v === 'string' && v.trim().endsWith('%')) return rate('cpu', v.trim().slice(0, -1)) / 100;
  return rate('cpu', v);
}

const IO_UNITS: Record<string, number> = {
  B: 1,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  kB: 1000,
  KB: 1000,
  MB: 1000 ** 2,
  GB: 1000 ** 3,
};

/** I/O as 64 KiB operations per second, from `20MiB/s`, `300iops` or 0. */
function ioOps(v: unknown): number {
  if (v === undefined || v === '' || v === 0 || v === '0') return 0;
  const text = typeof v === 'string' ? v.trim() : '';
  const m = /^(-?\d+(?:\.\d+)?)\s*(iops|IOPS|([a-zA-Z]+)\/s)$/.exec(text);
  const unit = m?.[3] === undefined ? undefined : IO_UNITS[m[3]];
  if (!m || (m[3] !== undefined && unit === undefined))
    throw invalidArgument(`io ${JSON.stringify(v)} is not a rate: write e.g. 20MiB/s or 300iops`);
  const n = Number(m[1]);
  if (n < 0) throw invalidArgument(`io ${JSON.stringify(v)} is negative`);
  return unit === undefined ? n : (n * unit) / IO_OP_BYTES;
}

/** Network traffic in bytes per second, from `20MiB/s`, `800kB/s`, a number of bytes a second, or 0. */
function networkBytes(v: unknown): number {
  if (v === undefined || v === '' || v === 0 || v === '0') return 0;
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0)
      throw invalidArgument(`net ${v} is ${v < 0 ? 'negative' : 'not a number'}`);
    return v;
  }
  const text = typeof v === 'string' ? v.trim() : '';
  const m = /^(-?\d+(?:\.\d+)?)\s*([a-zA-Z]+)\/s$/.exec(text);
  const unit = m?.[2] === undefined ? undefined : IO_UNITS[m[2]];
  if (!m || unit === undefined)
    throw invalidArgument(`net ${JSON.stringify(v)} is not a rate: write e.g. 20MiB/s or 800kB/s`);
  const n = Number(m[1]);
  if (n < 0) throw invalidArgument(`net ${JSON.stringify(v)} is negative`);
  return n * unit;
}

/** The guest's CPUs: a number above 0 (`2`, `0.5`); absent, as many as the host has. */
function guestCores(v: unknown): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = rate('cores', v);
  if (n === 0)
    throw invalidArgument('cores 0 leaves the guest no CPU: give at least a fraction of one (0.5)');
  return n;
}

function memory(v: unknown): number {
  if (v === undefined || v === '' || v === 0 || v === '0') return 0;
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) throw invalidArgument(`memory ${v} is negative`);
    return v;
  }
  if (typeof v === 'string' && /^\s*-/.test(v))
    throw invalidArgument(`memory ${JSON.stringify(v)} is negative`);
  return parseBytes(String(v), 'memory');
}

/** Checks one workload's fields and gives its profile; `id` defaults to `fallbackId`. */
export function parseProfile(fields: ProfileFields, fallbackId: string): WorkloadProfile {
  for (const key of Object.keys(fields)) {
    if (!(PROFILE_FIELDS as readonly string[]).includes(key))
      throw invalidArgument(`Unknown field ${JSON.stringify(key)}: use ${PROFILE_FIELDS.join(', ')}`);
  }
  const id = fields.id === undefined || fields.id === '' ? fallbackId : fields.id;
  const cores = guestCores(fields.cores);
  if (typeof id !== 'string' || id.trim() === '')
    throw invalidArgument(`id ${JSON.stringify(id)} is not a name`);
  return {
    id,
    os: choice('os', fields.os),
    kernel: choice('kernel', fields.kernel),
    isolation: choice('isolation', fields.isolation),
    cpuCores: cpuCores(fields.cpu),
    syscallsPerSecond: rate('syscalls', fields.syscalls),
    forkExecsPerSecond: rate('forks', fields.forks),
    ioOpsPerSecond: ioOps(fields.io),
    networkBytesPerSecond: networkBytes(fields.net),
    memoryBytes: memory(fields.memory),
    ...(cores === undefined ? {} : { cores }),
  };
}

/** Prefixes a parse error with where it was found, keeping its code. */
export function located<T>(where: string, fn: () => T, separator = ': '): T {
  try {
    return fn();
  } catch (e) {
    if (isTrivisorError(e)) throw new TrivisorError(e.code, `${where}${separator}${e.message}`);
    throw e;
  }
}

/** What an inventory does not say about its workloads, the same for all of them (flags). */
export type AssumedFields = Pick<ProfileFields, 'os' | 'kernel' | 'isolation'>;

const mean = (xs: Float64Array | undefined) => {
  if (xs === undefined || xs.length === 0) return 0;
  let sum = 0;
  for (const x of xs) sum += x;
  return sum / xs.length;
};

/**
 * Profiles of an inventory's workloads (issue 14 §4's model per workload, from the traces): each
 * one's mean busy cores and memory over the inventory, its mean disk writes (counted as synchronous
 * 64 KiB writes, as `io` is: pessimistic for buffered writes) and network traffic where the
 * inventory measures them (Bitbrains), and its configured cores as the guest's (contention). The
 * traces give no system-call or process-start rate: their CPU counts as computation. No OS either:
 * Linux on any kernel unless `assume` says otherwise, for all of them.
 */
export function profilesFromInventory(inv: Inventory, assume: AssumedFields = {}): WorkloadProfile[] {
  if (inv.cpuUnit !== 'cores') {
    throw invalidArgument(
      `A ${inv.format} inventory measures CPU in ${inv.cpuUnit}, not cores busy: it gives no workload profile (use a profile file, docs/advisor-profile.md)`,
    );
  }
  const base = parseProfile({ ...assume }, 'workload');
  return inv.workloads.map((w) => ({
    ...base,
    id: w.id,
    cpuCores: mean(w.cpu),
    ioOpsPerSecond: (w.io?.diskWriteBytesPerSecond ?? 0) / IO_OP_BYTES,
    networkBytesPerSecond: w.io?.networkBytesPerSecond ?? 0,
    memoryBytes: mean(w.memoryBytes),
    ...(w.cpuCapacity > 0 ? { cores: w.cpuCapacity } : {}),
  }));
}

/** The first bytes of a file, enough for its header line. */
async function head(file: string): Promise<string> {
  const f = await open(file, 'r');
  try {
    const { buffer, bytesRead } = await f.read({ buffer: Buffer.alloc(256), position: 0 });
    return buffer.subarray(0, bytesRead).toString('utf8');
  } finally {
    await f.close();
  }
}

/** Whether a file is an inventory of measured servers (`plan consolidate`'s input) rather than profiles. */
async function isInventory(file: string): Promise<boolean> {
  if (file.endsWith('.gz')) return true;
  const first =
    (await head(file))
      .replace(/^\uFEFF/, '')
      .split(/\r?\n/)[0]
      ?.trim() ?? '';
  return (
    first.startsWith('vm,') || first.startsWith(`${TRIVISOR_CSV_HEADER.split(',').slice(0, 4).join(',')},`)
  );
}

/**
 * Reads workloads from a profile file: JSON (one object or an array of them) or CSV with a header
 * naming its columns (docs/advisor-profile.md), or from an inventory of measured servers (Bitbrains
 * rows or our CSV, `plan consolidate`'s input: {@link profilesFromInventory}, with `assume` for
 * what it does not say). Every error names the file and the line or entry.
 */
export async function readProfiles(file: string, assume: AssumedFields = {}): Promise<WorkloadProfile[]> {
  if (await isInventory(file).catch(() => false)) {
    const inv = await readInventory(file);
    return located(file, () => profilesFromInventory(inv, assume));
  }
  if (Object.keys(assume).length > 0) {
    throw invalidArgument(
      `--${Object.keys(assume)[0]} applies to an inventory's workloads; ${file} is a profile file: give it there`,
    );
  }
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw invalidArgument(
      `Cannot read the workload profile ${file}: ${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)}`,
    );
  }
  const profiles = /^\s*[[{]/.test(text) ? fromJson(file, text) : fromCsv(file, text);
  if (profiles.length === 0) throw invalidArgument(`${file} holds no workload`);
  const seen = new Set<string>();
  for (const p of profiles) {
    if (seen.has(p.id)) throw invalidArgument(`${file}: workload ${JSON.stringify(p.id)} appears twice`);
    seen.add(p.id);
  }
  return profiles;
}

function fromJson(file: string, text: string): WorkloadProfile[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw invalidArgument(`${file} is not valid JSON (${(e as Error).message})`);
  }
  const entries = Array.isArray(doc) ? doc : [doc];
  return entries.map((entry, i) =>
    located(`${file}: workload ${i + 1}`, () => {
      if (!isObject(entry)) throw invalidArgument('is not an object');
      return parseProfile(entry as ProfileFields, `workload${i + 1}`);
    }),
  );
}

function fromCsv(file: string, text: string): WorkloadProfile[] {
  let header: string[] | undefined;
  const profiles: WorkloadProfile[] = [];
  const lines = text.split(/\r?\n/);
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const cells = line.split(',').map((c) => c.trim());
    located(`${file}:${i + 1}`, () => {
      if (header === undefined) {
        for (const c of cells) {
          if (!(PROFILE_FIELDS as readonly string[]).includes(c))
            throw invalidArgument(
              `the header has an unknown column ${JSON.stringify(c)}: use ${PROFILE_FIELDS.join(', ')}`,
            );
        }
        if (new Set(cells).size !== cells.length) throw invalidArgument('the header names a column twice');
        header = cells;
        return;
      }
      const names = header;
      if (cells.length !== names.length)
        throw invalidArgument(`${cells.length} columns where the header has ${names.length}`);
      const fields = Object.fromEntries(names.map((name, k) => [name, cells[k]]));
      profiles.push(parseProfile(fields, `line${i + 1}`));
    });
  }
  return profiles;
}

/** The model per workload of a consolidation's inventory (issue 14 §4), or why there is none. */
export interface InventoryModels {
  /** The three-model table the advice comes from. */
  measurements?: { file: string; measuredAt: string | null };
  advice: Array<{ id: string; model: GuestModel; reason: string }>;
  /** How many workloads each model gets. */
  counts: Record<GuestModel, number>;
  /** Why no workload was advised (no measurements on this host, an inventory in MIPS); absent when advised. */
  unavailable?: string;
}

/**
 * Advises a model for every workload of an inventory (`plan consolidate`'s output): their profiles
 * from {@link profilesFromInventory}, this host's table from `measurementsFile`. Missing measurements
 * or an inventory without cores busy are not errors of the plan: the answer says why there is no
 * advice, in one line, and the plan goes on.
 */
export async function adviseInventory(
  inv: Inventory,
  options: { measurementsFile: string; assume?: AssumedFields },
): Promise<InventoryModels> {
  const counts: Record<GuestModel, number> = { ct: 0, pvm: 0, vm: 0 };
  let profiles: WorkloadProfile[];
  let table: ModelTable;
  try {
    profiles = profilesFromInventory(inv, options.assume ?? {});
    table = await readModelTable(options.measurementsFile);
  } catch (e) {
    if (isTrivisorError(e)) return { advice: [], counts, unavailable: e.message };
    throw e;
  }
  const advice = profiles.map((p) => {
    const a = advise(p, table);
    counts[a.model]++;
    return { id: a.id, model: a.model, reason: a.reason };
  });
  return { measurements: { file: table.source, measuredAt: table.measuredAt ?? null }, advice, counts };
}
