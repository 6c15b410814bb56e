// The vm issue's two "measure it" choices, in one run: the boot kit's own initramfs
// against Debian's (initramfs-tools, /boot/initrd.img-*), and the machine type (q35,
// the default, against pc and microvm). Each variant is the argv of a guest the daemon
// started (read from /proc/PID/cmdline, paths moved to a scratch dir) with one thing
// changed, booted by hand and timed to the guest kit's "trivisor: init" console line,
// variants alternating. A variant that does not reach the line in time is reported as
// such with the tail of its console.
// Usage: node bench/vm-variants.ts [iterations=3]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { sleep, startDaemon } from '../test/system/harness.ts';
import { percentile, rawQemuArgv, rawQemuFailure, runOperation, startRawQemu, writeResult } from './lib.ts';

const iterations = Number(process.argv[2] ?? 3);
const MARKER = 'trivisor: init';
const TIMEOUT_MS = 60_000;
const config = { 'limits.memory': '128MiB', 'limits.cpu': '1' };

type Variant = { name: string; what: string; argv: (template: string[]) => string[] };

const after = (argv: string[], flag: string): number => {
  const i = argv.indexOf(flag);
  if (i < 0) throw new Error(`no ${flag} in the guest's argv`);
  return i + 1;
};
const replaced = (argv: string[], flag: string, value: string): string[] => {
  const out = [...argv];
  out[after(argv, flag)] = value;
  return out;
};

function debianInitrd(): string | undefined {
  const found = readdirSync('/boot').find((f) => /^initrd\.img-.*-cloud-amd64$/.test(f));
  return found ? path.join('/boot', found) : undefined;
}

/** The argv without q35's PCI Express root ports (pc and microvm have no pcie.0 bus). */
const withoutRootPorts = (argv: string[]): string[] =>
  argv.filter(
    (a, i) =>
      !a.startsWith('pcie-root-port') && !(a === '-device' && argv[i + 1]?.startsWith('pcie-root-port')),
  );

const variants: Variant[] = [
  { name: 'q35-own', what: 'q35, own initramfs (the default)', argv: (t) => t },
  {
    name: 'q35-debian',
    what: "q35, Debian's initramfs-tools initrd",
    argv: (t) => replaced(t, '-initrd', debianInitrd() ?? '/nonexistent'),
  },
  {
    name: 'q35-own-256',
    what: 'q35, own initramfs, 256 MiB',
    argv: (t) => replaced(t, '-m', '256'),
  },
  {
    name: 'q35-debian-256',
    what: "q35, Debian's initrd, 256 MiB",
    argv: (t) => replaced(replaced(t, '-initrd', debianInitrd() ?? '/nonexistent'), '-m', '256'),
  },
  {
    name: 'pc-own',
    what: 'pc (i440fx), own initramfs',
    argv: (t) => replaced(withoutRootPorts(t), '-machine', 'pc'),
  },
  {
    name: 'microvm',
    what: 'microvm (virtio-mmio; PIT, PIC and RTC on), own initramfs',
    argv: (t) =>
      replaced(withoutRootPorts(t), '-machine', 'microvm,isa-serial=on,rtc=on,pit=on,pic=on').map((a) =>
        /^virtio-[a-z]+-pci/.test(a) ? a.replace(/-pci/, '-device') : a,
      ),
  },
];

async function boot(argv: string[], dir: string): Promise<number | string> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const log = path.join(dir, 'console.log');
  const t0 = performance.now();
  const qemu = startRawQemu(argv, dir);
  while (performance.now() - t0 < TIMEOUT_MS) {
    if (existsSync(log) && readFileSync(log, 'utf8').includes(MARKER)) return performance.now() - t0;
    if (qemu.exitCode !== null || qemu.signalCode !== null) return rawQemuFailure(dir);
    await sleep(5);
  }
  const tail = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').slice(-12).join(' | ') : '';
  return `no "${MARKER}" in ${TIMEOUT_MS / 1000} s; console ends: ${tail.slice(0, 1500)}`;
}

const killAll = (dir: string): void => void spawnSync('pkill', ['-KILL', '-f', dir]);

const d = await startDaemon();
const scratch = path.join(d.stateDir, 'variants');
const samples: Record<string, number[]> = {};
const failures: Record<string, string> = {};
try {
  await runOperation(d, 'POST', '/1.0/guests', {
    name: 'tpl',
    image: 'busybox',
    model: 'vm',
    start: true,
    config,
  });
  const pid = (JSON.parse(d.ok(['info', 'tpl', '--format', 'json'])) as { state: { pid: number } }).state.pid;
  const guestDir = path.join(d.stateDir, 'guests', 'tpl');
  const template = rawQemuArgv(pid, guestDir, scratch);
  await runOperation(d, 'DELETE', '/1.0/guests/tpl?force=true');
  if (!debianInitrd()) {
    for (const v of ['q35-debian', 'q35-debian-256'])
      failures[v] = 'no /boot/initrd.img-*-cloud-amd64 on this host';
  }
  const only = process.env.VARIANTS?.split(',');
  const chosen = only ? variants.filter((v) => only.includes(v.name)) : variants;
  for (let i = 0; i < iterations; i++) {
    const order = i % 2 === 0 ? chosen : [...chosen].reverse();
    for (const v of order) {
      if (failures[v.name]) continue;
      await sleep(500);
      const result = await boot(v.argv(template), scratch);
      killAll(scratch);
      if (typeof result === 'string') failures[v.name] = result;
      else samples[v.name] = [...(samples[v.name] ?? []), result];
    }
  }
  const base50 = percentile(samples['q35-own'] ?? [], 50);
  const result = {
    benchmark: 'vm boot to init: own initramfs vs Debian initrd; q35 vs pc vs microvm',
    accelerator: template[after(template, '-accel')],
    iterations,
    guest: config,
    variants: chosen.map((v) => {
      const s = samples[v.name] ?? [];
      return {
        name: v.name,
        what: v.what,
        ...(failures[v.name]
          ? { failed: failures[v.name] }
          : { p50Ms: percentile(s, 50), samples: s, ratioToDefault: percentile(s, 50) / base50 }),
      };
    }),
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`wrote ${writeResult('vm-variants', result)}`);
} finally {
  killAll(scratch);
  await d.destroy();
}
