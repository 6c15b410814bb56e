// Benchmark: what the kernel holds for each idle busybox ct guest, one thing varied at a time
// (issue 16 §2, decision 0093). For each variant, N raw runc containers are started from the exact
// bundle a Trivisor guest gets (its root mounted in a mount namespace of the start's own, as the
// daemon does), and the kernel's memory is read before and after: every slab cache, KernelStack,
// PageTables, Percpu and VmallocUsed. Then they are killed and deleted, and the next variant runs.
// Usage: node bench/ct-kernel-memory.ts [--guests 200] [--variants baseline,shared-memcg,...]
import { execFile, spawn } from 'node:child_process';
import { chownSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { privateRootArgv } from '../src/drivers/ct/overlay-rootfs.ts';
import { sleep, startDaemon } from '../test/system/harness.ts';
import { pool, QUICK, rawRuncTemplate, writeResult } from './lib.ts';

const run = promisify(execFile);
const { values: opts } = parseArgs({
  options: {
    guests: { type: 'string', default: QUICK ? '4' : '200' },
    variants: { type: 'string' },
  },
});
const N = Number(opts.guests);
if (!Number.isInteger(N) || N < 1) throw new Error('--guests takes a positive whole number');
const log = (s: string) => console.error(`${new Date().toISOString().slice(11, 19)} ${s}`);
const KiB = 1024;
const CGROUPS = '/sys/fs/cgroup';
const PARENT = '/trivisor-bench-kmem';

type Spec = ReturnType<typeof JSON.parse>;
interface Variant {
  /** Edits the container's config.json. */
  edit?: (spec: Spec) => void;
  /** v1 hierarchies unmounted in the start's namespace, so that runc makes no cgroup there. */
  hide?: string[];
  /** The guest joins one memory cgroup shared by all of them (decision 0093). */
  sharedMemory?: boolean;
  /** No user namespace (a privileged guest). */
  privileged?: boolean;
}
const dropMount = (dest: string) => (spec: Spec) => {
  spec.mounts = spec.mounts.filter((m: { destination: string }) => m.destination !== dest);
};
const VARIANTS: Record<string, Variant> = {
  baseline: {},
  'no-netns': {
    edit: (s) => {
      s.linux.namespaces = s.linux.namespaces.filter((n: { type: string }) => n.type !== 'network');
      dropMount('/sys')(s); // sysfs cannot be mounted in the host's network namespace from a user namespace
      dropMount('/sys/fs/cgroup')(s);
    },
  },
  'no-sys': {
    edit: (s) => {
      dropMount('/sys')(s);
      dropMount('/sys/fs/cgroup')(s);
    },
  },
  'no-cgroup-mount': { edit: dropMount('/sys/fs/cgroup') },
  'no-mqueue': { edit: dropMount('/dev/mqueue') },
  'no-shm': { edit: dropMount('/dev/shm') },
  'no-userns': { privileged: true },
  'shared-memcg': { sharedMemory: true },
  'cgroups-only-devices-freezer-pids': {
    hide: ['cpu', 'cpuacct', 'cpuset', 'blkio', 'systemd'],
    sharedMemory: true,
  },
  'shared-memcg-no-sys': {
    sharedMemory: true,
    edit: (s) => {
      dropMount('/sys')(s);
      dropMount('/sys/fs/cgroup')(s);
    },
  },
};
const chosen = (opts.variants ?? Object.keys(VARIANTS).join(',')).split(',');
for (const v of chosen) if (!VARIANTS[v]) throw new Error(`unknown variant ${v}`);

/** Bytes held by each slab cache (active objects × object size) and the memory lines that are not slab. */
function kernelReading(): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of readFileSync('/proc/slabinfo', 'utf8').split('\n').slice(2)) {
    const f = line.split(/\s+/);
    if (f.length > 4) out.set(`slab:${f[0]}`, Number(f[1]) * Number(f[3]));
  }
  const info = readFileSync('/proc/meminfo', 'utf8');
  for (const k of ['Slab', 'KernelStack', 'PageTables', 'Percpu', 'VmallocUsed']) {
    out.set(k, Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? 0) * KiB);
  }
  const memcgs = /^memory\s+\d+\s+(\d+)/m.exec(readFileSync('/proc/cgroups', 'utf8'))?.[1];
  out.set('memcgs', Number(memcgs ?? 0));
  return out;
}

async function quiet(): Promise<void> {
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  await sleep(QUICK ? 200 : 3000);
}

const d = await startDaemon();
const dir = path.join(d.stateDir, 'kmem');
const runcRoot = path.join(dir, 'runc');
const results: Record<string, unknown> = { benchmark: 'ct kernel memory per guest', guests: N };
try {
  const { template, tree, mapping, idBase } = await rawRuncTemplate(d);
  const variants: Record<string, unknown> = {};
  for (const name of chosen) {
    const v = VARIANTS[name] as Variant;
    mkdirSync(runcRoot, { recursive: true });
    const pids: number[] = [];
    const startOne = async (i: number) => {
      const g = path.join(dir, `k${i}`);
      for (const sub of ['upper', 'work', 'rootfs', 'bundle'])
        mkdirSync(path.join(g, sub), { recursive: true });
      mkdirSync(path.join(g, 'staging'), { mode: 0o700 });
      const base = v.privileged ? 0 : idBase;
      chownSync(path.join(g, 'upper'), base, base);
      chownSync(path.join(g, 'work'), base, base);
      const spec = structuredClone(template);
      spec.root.path = `${g}/rootfs`;
      spec.hostname = `k${i}`;
      spec.linux.cgroupsPath = `${PARENT}/k${i}`;
      if (v.privileged) {
        spec.linux.namespaces = spec.linux.namespaces.filter((n: { type: string }) => n.type !== 'user');
        delete spec.linux.uidMappings;
        delete spec.linux.gidMappings;
      }
      v.edit?.(spec);
      writeFileSync(`${g}/bundle/config.json`, JSON.stringify(spec));
      const runcArgv = [
        'runc',
        '--root',
        runcRoot,
        'run',
        '-d',
        '--no-new-keyring',
        '--pid-file',
        `${g}/pid`,
      ];
      let argv = privateRootArgv(
        {
          tree,
          staging: `${g}/staging`,
          upper: `${g}/upper`,
          work: `${g}/work`,
          target: `${g}/rootfs`,
          ...(mapping && !v.privileged && { idmap: { base: mapping.hostID, size: mapping.size } }),
        },
        [...runcArgv, '--bundle', `${g}/bundle`, `k${i}`],
        {
          ...(v.sharedMemory && {
            sharedMemory: { mount: `${CGROUPS}/memory`, dir: `${CGROUPS}/memory${PARENT}` },
          }),
        },
      );
      if (v.hide) {
        const umounts = v.hide.map((h) => `umount -l ${CGROUPS}/${h}`).join(' && ');
        argv = [
          'unshare',
          '-m',
          '--propagation',
          'private',
          'sh',
          '-c',
          `${umounts} && exec "$@"`,
          'sh',
          ...argv,
        ];
      }
      await new Promise<void>((resolve, reject) => {
        const c = spawn(argv[0] as string, argv.slice(1), {
          // As the daemon spawns the helper: PATH alone.
          env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
          stdio: ['ignore', 'ignore', 'pipe'],
          detached: true,
        });
        let err = '';
        c.stderr.on('data', (b: Buffer) => {
          err += b.toString();
        });
        c.once('error', reject);
        c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`k${i}: ${err.trim()}`))));
      });
      pids.push(Number(readFileSync(`${g}/pid`, 'utf8')));
    };
    await quiet();
    const before = kernelReading();
    const t0 = Date.now();
    try {
      await pool(
        Array.from({ length: N }, (_, i) => i),
        4,
        startOne,
      );
      await quiet();
      const after = kernelReading();
      const perGuest = (k: string) => ((after.get(k) ?? 0) - (before.get(k) ?? 0)) / N / KiB;
      const caches = [...after.keys()]
        .filter((k) => k.startsWith('slab:'))
        .map((k) => [k.slice(5), perGuest(k)] as const)
        .filter(([, kib]) => Math.abs(kib) >= 2)
        .sort((a, b) => b[1] - a[1]);
      const row = {
        slabKiB: perGuest('Slab'),
        kernelStackKiB: perGuest('KernelStack'),
        pageTablesKiB: perGuest('PageTables'),
        percpuKiB: perGuest('Percpu'),
        vmallocKiB: perGuest('VmallocUsed'),
        kernelKiB: perGuest('Slab') + perGuest('KernelStack') + perGuest('PageTables') + perGuest('Percpu'),
        memcgsPerGuest: ((after.get('memcgs') ?? 0) - (before.get('memcgs') ?? 0)) / N,
        memcgsBefore: before.get('memcgs'),
        caches: Object.fromEntries(caches.map(([k, kib]) => [k, Math.round(kib * 10) / 10])),
        startSeconds: (Date.now() - t0) / 1000,
      };
      variants[name] = row;
      log(
        `${name}: kernel ${row.kernelKiB.toFixed(0)} KiB/guest (slab ${row.slabKiB.toFixed(0)}, stacks ${row.kernelStackKiB.toFixed(0)}, page tables ${row.pageTablesKiB.toFixed(0)}, percpu ${row.percpuKiB.toFixed(0)}, vmalloc ${row.vmallocKiB.toFixed(0)}); memcgs/guest ${row.memcgsPerGuest}; top: ${caches
          .slice(0, 8)
          .map(([k, kib]) => `${k} ${kib.toFixed(0)}`)
          .join(', ')}`,
      );
    } finally {
      await clean(pids);
    }
  }
  results.variants = variants;
  writeResult(QUICK ? 'ct-kernel-memory-quick' : 'ct-kernel-memory', results);
} finally {
  await d.destroy();
}

/** Kills every container's init (each leads its pid namespace), deletes it with runc, removes its cgroups and files. */
async function clean(pids: number[]): Promise<void> {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  await sleep(500);
  const listed = (await run('runc', ['--root', runcRoot, 'list', '-q']).catch(() => ({ stdout: '' }))).stdout
    .split('\n')
    .filter(Boolean);
  await pool(listed, 4, async (c) => {
    await run('runc', ['--root', runcRoot, 'delete', '--force', c]).catch(() => {});
  });
  await run('sh', [
    '-c',
    `cat ${CGROUPS}/pids${PARENT}/*/cgroup.procs ${CGROUPS}/memory${PARENT}/cgroup.procs 2>/dev/null | xargs -r kill -9; sleep 0.5; for c in ${CGROUPS}/*${PARENT}; do find $c -mindepth 1 -depth -type d -delete 2>/dev/null; rmdir $c; done 2>/dev/null; true`,
  ]);
  rmSync(dir, { recursive: true, force: true });
}
