// Benchmark (decision 0084): what one guarded guest create reads and decodes to check its project's
// quotas, with N guest records in the store, on the memory and the SQLite store. No daemon: it
// drives `guardedWrite` as `GuestService.create` does (the quota check on the guard's read, then
// the guest's put in the guarded transaction) through a store that counts the records it returns.
// Four cases: a create in `default` with no limit, a create in a project with `limits.guests`
// holding the N guests, one with `limits.memory` (every guest sets `limits.memory`), and one with
// `limits.guests` holding 10 of the N guests (the rest in `default`). The store is written as the
// daemon writes it since decision 0087: each guest with its project's index key, and the index's
// mark, so a guard reads the project's guests through the index (or every spec in one range read
// when the project holds most of them); before, it had no mark and measured the full read.
// Per case: records read per create, the median and p90 of a guarded create (ms), and the median
// of the same store reads alone (`readTogether` of what the guard read, nothing decoded), so that
// the decode's share shows as the difference. Prints a table; writes nothing.
// Usage: node bench/project-guard.ts [N...=1000 10000] [--creates=40]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { keys } from '../src/core/keys.ts';
import { addUsage, assertWithinLimits, guestUsage, type ProjectSpec } from '../src/core/projects.ts';
import { guardedWrite } from '../src/services/project-service.ts';
import { countKeys, type KvStore, readTogether, type TxnOp } from '../src/store/kv.ts';
import { createMemoryStore } from '../src/store/memory-store.ts';
import { projectGuestIndex } from '../src/store/project-guests.ts';
import { records } from '../src/store/records.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { countingStore } from '../test/fakes/counting-store.ts';
import { aGuestSpec } from '../test/fakes/guest-records.ts';
import { percentile } from './lib.ts';

const args = process.argv.slice(2);
const sizes = args.filter((a) => /^\d+$/.test(a)).map(Number);
const creates = Number(args.find((a) => a.startsWith('--creates='))?.slice('--creates='.length) ?? 40);
if (sizes.length === 0) sizes.push(1000, 10_000);

interface Case {
  name: string;
  project: string;
  /** The project's record, or none for an unrecorded `default`. */
  spec?: ProjectSpec;
  guestConfig: Record<string, string>;
  /** How many of the N guests are the project's (default: all); the rest are `default`'s. */
  own?: number;
}

const cases = (n: number): Case[] => [
  { name: 'default, no limit', project: 'default', guestConfig: {} },
  {
    name: 'limits.guests',
    project: 'p1',
    spec: {
      name: 'p1',
      description: '',
      config: { 'limits.guests': String(n * 2) },
      createdAt: new Date(0).toISOString(),
    },
    guestConfig: {},
  },
  {
    name: 'limits.memory',
    project: 'p1',
    spec: {
      name: 'p1',
      description: '',
      config: { 'limits.memory': `${n * 2 * 64}MiB` },
      createdAt: new Date(0).toISOString(),
    },
    guestConfig: { 'limits.memory': '64MiB' },
  },
  {
    name: 'limits.guests, 10 of N',
    project: 'p1',
    spec: {
      name: 'p1',
      description: '',
      config: { 'limits.guests': String(n * 2) },
      createdAt: new Date(0).toISOString(),
    },
    guestConfig: {},
    own: 10,
  },
];

async function fill(store: KvStore, n: number, c: Case): Promise<void> {
  const ops: TxnOp[] = [];
  for (let i = 0; i < n; i++) {
    const spec = aGuestSpec({
      name: `g${i}`,
      project: i < (c.own ?? n) ? c.project : 'default',
      config: c.guestConfig,
      desired: 'Stopped',
    });
    ops.push(records.guest.at(spec.name).putOp(spec), projectGuestIndex.putOp(spec));
  }
  if (c.spec) ops.push(records.project.at(c.project).putOp(c.spec));
  ops.push({ type: 'put', key: keys.projectGuestsIndexed, value: new Date(0).toISOString() });
  for (let i = 0; i < ops.length; i += 1000) {
    await store.txn({ compare: [], success: ops.slice(i, i + 1000) });
  }
}

const dir = mkdtempSync(path.join(tmpdir(), 'bench-project-guard-'));
const rows: string[][] = [];
try {
  for (const n of sizes) {
    for (const backend of ['memory', 'sqlite'] as const) {
      for (const c of cases(n)) {
        const inner =
          backend === 'memory'
            ? createMemoryStore()
            : openSqliteStore(path.join(dir, `${n}-${c.name.replace(/\W+/g, '-')}.db`));
        const counting = countingStore(inner);
        // The reads the guard made (gets, and a transaction's gets), to time the same reads alone;
        // the prefixes it counted (decision 0087's choice of path), counted again with them.
        const reads = new Map<string, { key: string; prefix?: boolean }>();
        const counted = new Set<string>();
        const store: KvStore = {
          ...counting,
          get: (key) => {
            reads.set(key, { key });
            return counting.get(key);
          },
          list: (prefix, options) => {
            if (options?.countOnly) counted.add(prefix);
            else reads.set(prefix, { key: prefix, prefix: true });
            return counting.list(prefix, options);
          },
          txn: (request) => {
            for (const op of request.success) {
              if (op.type === 'get') reads.set(op.key, { key: op.key, ...(op.prefix && { prefix: true }) });
            }
            return counting.txn(request);
          },
        };
        try {
          await fill(inner, n, c);
          const took: number[] = [];
          const readOnly: number[] = [];
          let recordsRead = 0;
          for (let i = 0; i < creates; i++) {
            const name = `new${i}`;
            counting.reset();
            reads.clear();
            counted.clear();
            const t0 = performance.now();
            const r = await guardedWrite(store, c.project, async (p) => {
              assertWithinLimits(c.project, p.spec.config, {
                before: p.usage,
                after: addUsage(p.usage, guestUsage(c.guestConfig)),
              });
              const spec = aGuestSpec({ name, project: c.project, config: c.guestConfig });
              return {
                compare: [records.guest.at(name).absent()],
                success: [records.guest.at(name).putOp(spec), projectGuestIndex.putOp(spec)],
              };
            });
            took.push(performance.now() - t0);
            if (!r.succeeded) throw new Error(`create ${name} failed its guard`);
            recordsRead = counting.reads.records;
            // The same store reads with nothing decoded: what the guard's read costs the store.
            const t1 = performance.now();
            await Promise.all([...counted].map((prefix) => countKeys(inner, prefix)));
            await readTogether(inner, [...reads.values()]);
            readOnly.push(performance.now() - t1);
          }
          rows.push([
            String(n),
            backend,
            c.name,
            String(recordsRead),
            percentile(took, 50).toFixed(2),
            percentile(took, 90).toFixed(2),
            percentile(readOnly, 50).toFixed(2),
          ]);
        } finally {
          await inner.close();
        }
      }
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const head = ['N', 'store', 'case', 'records read', 'create p50 ms', 'p90 ms', 'store read p50 ms'];
const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
for (const r of [head, ...rows]) console.log(r.map((x, i) => x.padEnd(width[i] ?? 0)).join('  '));
