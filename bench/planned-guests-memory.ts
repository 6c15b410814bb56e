// What the rebalancer's watch of every guest of the cluster (decision 0087, part 3) keeps in the
// daemon's heap: N guest specs in a memory store, then the watch as rebalance-controller.ts builds
// it (watchSubset with plannedGuest as its pick), V8's heap used after full collections before it
// starts and once it has listed. For scale, the same watch keeping whole decoded specs.
//
// Usage: node --expose-gc bench/planned-guests-memory.ts [N=10000] [--quick]
//   --quick: N = 1000 (shows it still runs). Writes nothing; prints one line per case.
import { plannedGuest } from '../src/control/rebalance-controller.ts';
import { watchSubset } from '../src/control/watched-subset.ts';
import type { GuestSpec } from '../src/core/types.ts';
import { silentLogger } from '../src/host/logger.ts';
import type { KeyValue } from '../src/store/kv.ts';
import { createMemoryStore } from '../src/store/memory-store.ts';
import { records } from '../src/store/records.ts';
import { aGuestSpec } from '../test/fakes/guest-records.ts';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  process.stderr.write('Run with node --expose-gc\n');
  process.exit(2);
}
const quick = process.argv.includes('--quick');
const n = quick ? 1000 : Number(process.argv.find((a) => /^\d+$/.test(a)) ?? 10_000);

/** Heap used after full collections (twice: weak references and finalizers settle). */
async function heapUsed(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc?.();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return process.memoryUsage().heapUsed;
}

/** A guest of a 4-member cluster, as the bench's ct guests are made; `nic` adds one NIC as a networked guest has. */
function guest(i: number, nic: boolean): GuestSpec {
  return aGuestSpec({
    name: `ct-${String(i).padStart(5, '0')}`,
    location: `m${i % 4}`,
    config: { 'limits.memory': '64MiB', 'limits.cpu': '0.1' },
    ...(nic && {
      devices: {
        eth0: {
          type: 'nic',
          network: 'trivisor0',
          hwaddr: `00:16:3e:${[i >> 16, (i >> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, '0')).join(':')}`,
          'ipv4.address': `198.18.${(i >> 8) & 255}.${i & 255}`,
        },
      },
    }),
  });
}

const cases: Array<{ name: string; pick: (kv: KeyValue) => unknown }> = [
  { name: 'plannedGuest (the rebalancer)', pick: (kv) => plannedGuest(records.guest.decode(kv)) },
  { name: 'whole decoded spec', pick: (kv) => records.guest.decode(kv) },
];

// One case per process, so that nothing one case allocated or warmed is counted in another's.
const only = process.argv.find((a) => a.startsWith('--case='));
if (!only) {
  const { execFileSync } = await import('node:child_process');
  for (const nic of [false, true]) {
    for (let k = 0; k < cases.length; k++) {
      const args = [
        '--expose-gc',
        process.argv[1] ?? '',
        String(n),
        `--case=${k}`,
        ...(nic ? ['--nic'] : []),
      ];
      process.stdout.write(execFileSync(process.execPath, args, { encoding: 'utf8' }));
    }
  }
} else {
  const c = cases[Number(only.slice('--case='.length))];
  const nic = process.argv.includes('--nic');
  if (!c) throw new Error(`no case ${only}`);
  const store = createMemoryStore();
  for (let i = 0; i < n; i += 500) {
    const ops = [];
    for (let j = i; j < Math.min(n, i + 500); j++)
      ops.push(records.guest.at(guest(j, nic).name).putOp(guest(j, nic)));
    await store.txn({ compare: [], success: ops });
  }
  // The same watch keeping nothing first: what listing and watching cost by themselves (the
  // store's copies, the informer's machinery) is warmed and gone before the reading.
  const warm = watchSubset({
    store,
    prefix: records.guest.prefix,
    pick: () => undefined,
    log: silentLogger(),
  });
  await warm.ready();
  warm.stop();
  const before = await heapUsed();
  const watch = watchSubset({ store, prefix: records.guest.prefix, pick: c.pick, log: silentLogger() });
  await watch.ready();
  const after = await heapUsed();
  process.stdout.write(
    `${n} guests${nic ? ' with a NIC' : ''}, ${c.name}: ${watch.picked().size} kept, heap +${((after - before) / 2 ** 20).toFixed(2)} MiB, ${Math.round((after - before) / n)} bytes a guest\n`,
  );
  watch.stop();
  await store.close();
}
