// Issue 17's benchmark: a vm guest that boots an OS of its own (the Debian 12 whole disk the vm
// tests build: GRUB in the MBR, Debian's kernel and initramfs, systemd) from the API call until its
// serial console shows the login prompt, against QEMU started by hand with the very argv the driver
// used (read from a running guest's /proc/PID/cmdline, paths moved to a scratch dir, bench/lib.ts)
// and timed to the same prompt. Interleaved (T, Q, then Q, T, …) in one run, since the machine is
// shared. vm runs under TCG here (no usable /dev/kvm): the accelerator is recorded in the result.
// The raw QEMU runs in a cgroup beside the guests' (RAW_CGROUP, under the daemon's parent, in the
// hierarchies the driver's launcher joins): under cgroups v1 a group competes with the root
// group's busy processes as one entity, so a raw QEMU left in the root group gets a larger share
// of a loaded host than any guest, and the difference would be the scheduler's, not Trivisor's.
// Usage: node bench/vm-os-boot.ts [iterations=3] [DISK.qcow2]
//   DISK: a disk buildDebianDisk made before (test/vm/boot-media.ts); built here (about two
//   minutes) when not given.
// Quick mode (TRIVISOR_BENCH_QUICK=1) times both sides to the kernel's first console line
// (`Linux version`, GRUB done) instead of the login prompt: the disk is still built and both
// sides still boot it through GRUB, in a fraction of the time; the template guest's boot (whose
// argv the raw side replays) is its one API sample, so the disk is booted twice, not three times.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  rmdirSync,
  rmSync,
  statSync,
} from 'node:fs';
import path from 'node:path';
import { cgroupParentOf } from '../src/drivers/guest-cgroup.ts';
import { hostRunner } from '../src/host/runner.ts';
import { type Daemon, sleep, startDaemon } from '../test/system/harness.ts';
import { buildDebianDisk, DEBIAN_HOSTNAME } from '../test/vm/boot-media.ts';
import { percentile, QUICK, qemuRootBacking, rawQemuArgv, runOperation, writeResult } from './lib.ts';

const iterations = Number(process.argv[2] ?? 3);
const givenDisk = process.argv[3];
const MARKER = QUICK ? 'Linux version' : `${DEBIAN_HOSTNAME} login:`;
const TIMEOUT_MS = 300_000;
/** A quick run of one iteration times the template guest's boot as its API sample (no second API boot). */
const shareBoots = QUICK && iterations === 1;
/** What the vm tests boot this disk with (test/vm/vm-disk-image.test.ts), one vCPU. */
const config = { 'limits.memory': '512MiB', 'limits.cpu': '1' };
const IMAGE = 'deb12';
/** The raw QEMU's cgroup name, a sibling of the guests' under the daemon's parent. */
const RAW_CGROUP = 'raw-bench';
/** The hierarchies the vm driver's launcher puts a guest's QEMU in (src/drivers/vm/vm-driver.ts). */
const HIERARCHIES = ['memory', 'cpu', 'cpuacct', 'pids', 'systemd', 'unified'];

/** The raw QEMU's cgroup dirs, made (mounted hierarchies only, as the driver does). */
function rawCgroups(stateDir: string): string[] {
  const dirs = HIERARCHIES.filter((h) => existsSync(`/sys/fs/cgroup/${h}/cgroup.procs`)).map(
    (h) => `/sys/fs/cgroup/${h}${cgroupParentOf(stateDir)}/${RAW_CGROUP}`,
  );
  for (const dir of dirs) mkdirSync(dir, { recursive: true });
  return dirs;
}

/**
 * Waits until `file` holds MARKER, reading only what was appended since the last look (the
 * console log of a systemd boot grows to tens of KiB; rereading it every few ms would load the
 * two cores the guests run on). Throws with `gone()`'s reason or on the timeout.
 */
async function untilMarker(file: string, t0: number, gone?: () => string | undefined): Promise<number> {
  let offset = 0;
  let carry = '';
  while (performance.now() - t0 < TIMEOUT_MS) {
    let size = 0;
    try {
      size = statSync(file).size;
    } catch {}
    if (size > offset) {
      const fd = openSync(file, 'r');
      try {
        const buf = Buffer.alloc(size - offset);
        const n = readSync(fd, buf, 0, buf.length, offset);
        offset += n;
        const text = carry + buf.subarray(0, n).toString('latin1');
        if (text.includes(MARKER)) return performance.now() - t0;
        carry = text.slice(-MARKER.length);
      } finally {
        closeSync(fd);
      }
    }
    const why = gone?.();
    if (why) throw new Error(`${file}: ${why}`);
    await sleep(20);
  }
  throw new Error(`no "${MARKER}" in ${file} after ${TIMEOUT_MS / 1000} s`);
}

/** CPU time a process has used, user and system, all its threads (s; /proc/PID/stat in clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * What one boot took besides the wall clock, to tell a slower path from a busier host: QEMU's CPU
 * time at the prompt, and the guest kernel's own clock at its last line before it (which runs on
 * while QEMU waits for a CPU, so it follows the wall clock, not the work).
 */
interface BootDetail {
  ms: number;
  qemuCpuSeconds: number;
  guestClockSeconds: number | null;
  /** The daemon's CPU time during the boot (the Trivisor side only). */
  daemonCpuSeconds?: number;
}

function detailOf(ms: number, qemuPid: number, log: string): BootDetail {
  const qemuCpuSeconds = cpuSeconds(qemuPid);
  const text = readFileSync(log, 'latin1');
  const stamps = [...text.slice(0, text.indexOf(MARKER)).matchAll(/\[\s*(\d+\.\d+)\]/g)];
  const last = stamps.at(-1)?.[1];
  return { ms, qemuCpuSeconds, guestClockSeconds: last ? Number(last) : null };
}

/** One boot through the API: create and start in one call, timed to the marker on its console log. */
async function viaApi(d: Daemon, name: string): Promise<BootDetail> {
  const dir = path.join(d.stateDir, 'guests', name);
  const log = path.join(dir, 'console.log');
  const daemonPid = d.process.pid as number;
  const daemonBefore = cpuSeconds(daemonPid);
  const t0 = performance.now();
  const r = await d.api('POST', '/1.0/guests', { name, image: IMAGE, model: 'vm', start: true, config });
  if (r.status !== 202) throw new Error(`POST /1.0/guests: ${r.status} ${r.text}`);
  const ms = await untilMarker(log, t0);
  const pid = (
    JSON.parse(readFileSync(path.join(d.stateDir, 'run', 'vm', name, 'boot.json'), 'utf8')) as {
      identity: { pid: number };
    }
  ).identity.pid;
  const detail = { ...detailOf(ms, pid, log), daemonCpuSeconds: cpuSeconds(daemonPid) - daemonBefore };
  await d.api('GET', `${r.body.operation}/wait?timeout=120`);
  return detail;
}

/**
 * Starts the replayed argv in `dir` as the driver starts its QEMU (detached, output to a file),
 * its root a qcow2 over the same image, of the same virtual size as the guest's overlay.
 */
function startRaw(argv: string[], dir: string, rootBytes: number, cgroups: string[]): ChildProcess {
  const backing = qemuRootBacking(argv);
  execFileSync('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-F',
    backing.format,
    '-b',
    backing.file,
    path.join(dir, 'root.qcow2'),
    String(rootBytes),
  ]);
  const out = openSync(path.join(dir, 'qemu.log'), 'a');
  try {
    // A shell joins the cgroups and execs QEMU in its place (the same pid), as the launcher does.
    const join = 'for d in $RAW_CGROUPS; do echo $$ > "$d/cgroup.procs"; done; exec "$@"';
    const child = spawn('sh', ['-c', join, 'sh', ...argv], {
      stdio: ['ignore', out, out],
      detached: true,
      env: { ...process.env, RAW_CGROUPS: cgroups.join(' ') },
    });
    child.on('error', () => {});
    return child;
  } finally {
    closeSync(out);
  }
}

/** Ends a raw QEMU this script started (its own process group: it was spawned detached). */
async function stopRaw(child: ChildProcess | undefined): Promise<void> {
  if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {}
  await exited;
}

async function viaRaw(
  template: string[],
  dir: string,
  rootBytes: number,
  cgroups: string[],
): Promise<BootDetail> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const t0 = performance.now();
  const qemu = startRaw(template, dir, rootBytes, cgroups);
  try {
    const log = path.join(dir, 'console.log');
    const ms = await untilMarker(log, t0, () =>
      qemu.exitCode !== null || qemu.signalCode !== null
        ? `QEMU exited (${qemu.exitCode ?? qemu.signalCode}), see ${path.join(dir, 'qemu.log')}`
        : undefined,
    );
    return detailOf(ms, qemu.pid as number, log);
  } finally {
    await stopRaw(qemu);
  }
}

const virtualSize = (file: string): number =>
  (
    JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', file], { encoding: 'utf8' })) as {
      'virtual-size': number;
    }
  )['virtual-size'];

const wall = (xs: BootDetail[]) => xs.map((x) => x.ms);
const summary = (xs: BootDetail[]) => ({
  p50Ms: percentile(wall(xs), 50),
  p95Ms: percentile(wall(xs), 95),
  samples: wall(xs),
  qemuCpuSecondsP50: percentile(
    xs.map((x) => x.qemuCpuSeconds),
    50,
  ),
  details: xs,
});

const d = await startDaemon();
const media = path.join(d.stateDir, 'bench-media');
const rawDir = path.join(d.stateDir, 'raw');
const api: BootDetail[] = [];
const raw: BootDetail[] = [];
let cgroups: string[] = [];
try {
  cgroups = rawCgroups(d.stateDir);
  mkdirSync(media, { recursive: true });
  const built = Date.now();
  const disk = givenDisk ?? (await buildDebianDisk(media, { runner: hostRunner() })).qcow2;
  const buildSeconds = givenDisk ? null : (Date.now() - built) / 1000;
  d.ok(['image', 'import', disk, '--alias', IMAGE]);
  // The template: a guest of the same image and config, started through the API; its QEMU's argv.
  // A quick run of one iteration (issue 19) times that start as its API sample: one boot fewer.
  const firstBoot = shareBoots ? await viaApi(d, 'tpl') : undefined;
  if (!firstBoot)
    await runOperation(d, 'POST', '/1.0/guests', {
      name: 'tpl',
      image: IMAGE,
      model: 'vm',
      start: true,
      config,
    });
  const pid = (JSON.parse(d.ok(['info', 'tpl', '--format', 'json'])) as { state: { pid: number } }).state.pid;
  const guestDir = path.join(d.stateDir, 'guests', 'tpl');
  const template = rawQemuArgv(pid, guestDir, rawDir);
  const rootBytes = virtualSize(path.join(guestDir, 'root.qcow2'));
  await runOperation(d, 'DELETE', '/1.0/guests/tpl?force=true');
  const accel = template[template.indexOf('-accel') + 1] ?? 'unknown';
  for (let i = 0; i < iterations; i++) {
    const order = i % 2 === 0 ? ['api', 'raw'] : ['raw', 'api'];
    for (const which of order) {
      if (which === 'api' && i === 0 && firstBoot) {
        api.push(firstBoot);
        console.log(`${i} ${which} (the template's start): ${JSON.stringify(firstBoot)}`);
        continue;
      }
      await sleep(1000);
      if (which === 'api') {
        api.push(await viaApi(d, `b${i}`));
        await runOperation(d, 'DELETE', `/1.0/guests/b${i}?force=true`);
      } else raw.push(await viaRaw(template, rawDir, rootBytes, cgroups));
      console.log(`${i} ${which}: ${JSON.stringify((which === 'api' ? api : raw).at(-1))}`);
    }
  }
  const result = {
    benchmark: `vm guest of a GRUB-booted Debian 12 disk: API call to "${MARKER}" on the serial console vs raw qemu-system-x86_64 with the same argv`,
    marker: MARKER,
    accelerator: accel,
    iterations,
    guest: config,
    disk: { virtualBytes: virtualSize(disk), buildSeconds },
    trivisor: summary(api),
    raw: summary(raw),
    ratioP50: percentile(wall(api), 50) / percentile(wall(raw), 50),
    target: 'ratio <= 1.05',
    rawCgroup: `${cgroupParentOf(d.stateDir)}/${RAW_CGROUP}`,
    rawArgv: template,
  };
  console.log(JSON.stringify({ ...result, rawArgv: undefined }, null, 2));
  console.log(`wrote ${writeResult('vm-os-boot', result)}`);
} finally {
  rmSync(rawDir, { recursive: true, force: true });
  for (const dir of cgroups) {
    try {
      rmdirSync(dir);
    } catch {}
  }
  await d.destroy();
}
