import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArgument } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import { type BootKit, PROBE_MARKER } from './boot-kit.ts';
import { launcherArgv, qemuFds } from './qemu-fds.ts';

/** The accelerators QEMU can run a `vm` guest with here. */
export type Accelerator = 'kvm' | 'tcg';

/** A per-host choice: `auto` probes, the others force. */
export type AcceleratorSetting = Accelerator | 'auto';

/** Which accelerator vm guests use, and why (shown by `trivisor info --host` through probe()). */
export interface AcceleratorVerdict {
  accelerator: Accelerator;
  reason: string;
  /** ISO time of the test boot, absent when forced or when no test boot was needed. */
  probedAt?: string;
  /** What the verdict depends on: host kernel, QEMU and guest kernel; a change re-probes. */
  key: string;
}

/** Environment variable that forces the accelerator on a host (kvm, tcg or auto). */
export const ACCELERATOR_ENV = 'TRIVISOR_VM_ACCELERATOR';

/** How long a KVM test boot may take: a working KVM boots to the initramfs in well under a second. */
export const DEFAULT_PROBE_TIMEOUT_MS = 15_000;

/** Parses a per-host setting; undefined and '' mean auto. */
export function parseAcceleratorSetting(value: string | undefined): AcceleratorSetting {
  if (value === undefined || value === '' || value === 'auto') return 'auto';
  if (value === 'kvm' || value === 'tcg') return value;
  throw invalidArgument(
    `Accelerator ${JSON.stringify(value)} is not kvm, tcg or auto: fix ${ACCELERATOR_ENV}.`,
  );
}

/**
 * Whether QEMU, running as an unprivileged uid, can open the KVM device (it opens it by name
 * and takes no descriptor): yes when the device is open to everyone, or to a group other
 * than root's (Debian's udev rule: 0660, group kvm), which QEMU then gets as its only
 * supplementary group. The device's modes are the administrator's: they are never changed.
 */
export async function kvmAccess(device = '/dev/kvm'): Promise<{ groups: number[] } | { refused: string }> {
  const st = await stat(device).catch(() => undefined);
  if (!st) return { refused: `${device} is missing` };
  const mode = st.mode & 0o777;
  if ((mode & 0o006) === 0o006) return { groups: [] };
  if ((mode & 0o060) === 0o060 && st.gid !== 0) return { groups: [st.gid] };
  return {
    refused: `${device} is mode ${mode.toString(8).padStart(4, '0')} (owner ${st.uid}, group ${st.gid}), which an unprivileged QEMU cannot open; Debian's udev rule makes it 0660 with group kvm`,
  };
}

/** The QEMU argv of a test boot: the kit's kernel and initramfs, which power off at once in probe mode. */
export function probeArgv(
  kit: BootKit,
  accelerator: Accelerator,
  files = { kernel: kit.kernelPath, initrd: kit.initramfsPath },
): string[] {
  return [
    'qemu-system-x86_64',
    '-machine',
    `q35,accel=${accelerator}`,
    '-cpu',
    accelerator === 'kvm' ? 'host' : 'max',
    '-m',
    '128',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-serial',
    'stdio',
    '-nic',
    'none',
    '-kernel',
    files.kernel,
    '-initrd',
    files.initrd,
    '-append',
    'console=ttyS0 quiet panic=-1 trivisor.probe=1',
  ];
}

const verdicts = new Map<string, Promise<AcceleratorVerdict>>();

/** Options of chooseAccelerator. */
export interface ChooseAcceleratorOptions {
  runner: ProcessRunner;
  kit: BootKit;
  setting?: AcceleratorSetting;
  timeoutMs?: number;
  /** The KVM device (tests point it elsewhere). */
  kvmDevice?: string;
  /**
   * The unprivileged uid (and gid) the test boot's QEMU runs as, as guests' do, with the
   * kvm group; without it the test boot runs as root (tests of the probe itself).
   */
  runAs?: number;
}

/** QEMU's version by the runner that asked, kept while the binary on PATH is the same file. */
const qemuVersions = new WeakMap<ProcessRunner, { stamp: string; version: string }>();

/** The file `name` runs as, found on PATH, with what changes when it is replaced; undefined if none. */
async function binaryStamp(name: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (!dir) continue;
    const st = await stat(join(dir, name)).catch(() => undefined);
    if (st?.isFile()) return `${join(dir, name)} ${st.dev}:${st.ino} ${st.size} ${st.mtimeMs}`;
  }
  return undefined;
}

/**
 * `qemu-system-x86_64 --version`, asked once while the binary stays the same file: every vm start
 * needs it for the verdict's key, and starting QEMU only to print its version cost a start about
 * as much as a QEMU process start (bench/engine-boot.ts, decision 0069).
 */
async function qemuVersionOf(runner: ProcessRunner): Promise<string> {
  const stamp = await binaryStamp('qemu-system-x86_64');
  const known = qemuVersions.get(runner);
  if (stamp && known?.stamp === stamp) return known.version;
  const qemu = await runner
    .run(['qemu-system-x86_64', '--version'], { allowFailure: true })
    .catch(() => undefined);
  const version = /version (\S+)/.exec(qemu?.stdout ?? '')?.[1] ?? 'unknown';
  if (stamp && version !== 'unknown') qemuVersions.set(runner, { stamp, version });
  return version;
}

/**
 * Picks the accelerator for vm guests. KVM is used only when a timed test boot
 * under it reaches the initramfs: on hosts with incomplete nested
 * virtualization /dev/kvm exists but guests hang or abort, so the boot is
 * killed after `timeoutMs` and TCG is used. The verdict is cached in
 * `${stateDir}/vm/accelerator.json` until the host kernel, QEMU or the guest
 * kernel changes; callers in one process share one probe.
 */
export async function chooseAccelerator(
  stateDir: string,
  options: ChooseAcceleratorOptions,
): Promise<AcceleratorVerdict> {
  const { runner, kit } = options;
  const setting = options.setting ?? 'auto';
  const hostRelease = (await readFile('/proc/sys/kernel/osrelease', 'utf8').catch(() => '?')).trim();
  const qemuVersion = await qemuVersionOf(runner);
  // Who may open the KVM device is part of the verdict: a changed mode or group re-probes.
  const device = options.kvmDevice ?? '/dev/kvm';
  const kvm = await kvmAccess(device);
  const access = 'refused' in kvm ? 'refused' : `groups ${kvm.groups.join(',') || 'none'}`;
  const key = `host ${hostRelease}, qemu ${qemuVersion}, guest ${kit.kernelRelease}, unprivileged kvm ${access}`;
  if (setting !== 'auto')
    return { accelerator: setting, reason: `forced to ${setting} by the host setting`, key };

  const cachePath = join(stateDir, 'vm', 'accelerator.json');
  const cached = await readFile(cachePath, 'utf8')
    .then((t) => JSON.parse(t) as AcceleratorVerdict)
    .catch(() => undefined);
  if (cached && cached.key === key) return cached;

  let job = verdicts.get(cachePath);
  if (!job) {
    job = probe(options, key).then(async (verdict) => {
      await mkdir(join(stateDir, 'vm'), { recursive: true });
      const temp = `${cachePath}.${process.pid}.tmp`;
      await writeFile(temp, `${JSON.stringify(verdict, null, 2)}\n`);
      await rename(temp, cachePath);
      return verdict;
    });
    job.finally(() => verdicts.delete(cachePath)).catch(() => {});
    verdicts.set(cachePath, job);
  }
  return job;
}

async function probe(options: ChooseAcceleratorOptions, key: string): Promise<AcceleratorVerdict> {
  const device = options.kvmDevice ?? '/dev/kvm';
  const timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const kvm = await kvmAccess(device);
  if ('refused' in kvm) return { accelerator: 'tcg', reason: kvm.refused, key };
  const started = Date.now();
  const probedAt = new Date(started).toISOString();
  let argv = probeArgv(options.kit, 'kvm');
  if (options.runAs !== undefined) {
    // As a guest's QEMU runs: its uid, the kvm group, the kit's files handed over.
    const fds = qemuFds();
    const files = {
      kernel: `/proc/self/fd/${fds.fd({ kind: 'file', path: options.kit.kernelPath, access: 'read' })}`,
      initrd: `/proc/self/fd/${fds.fd({ kind: 'file', path: options.kit.initramfsPath, access: 'read' })}`,
    };
    argv = launcherArgv({
      fds,
      identity: { uid: options.runAs, gid: options.runAs, groups: kvm.groups },
      command: probeArgv(options.kit, 'kvm', files),
    });
  }
  const result = await options.runner.run(argv, { allowFailure: true, timeoutMs });
  const tookMs = Date.now() - started;
  if (result.stdout.includes(PROBE_MARKER)) {
    return {
      accelerator: 'kvm',
      reason: `a KVM test boot reached its initramfs in ${tookMs}ms`,
      probedAt,
      key,
    };
  }
  const why =
    tookMs >= timeoutMs
      ? `a KVM test boot hung (no sign of life within ${timeoutMs}ms)`
      : `a KVM test boot failed (exit ${result.code}: ${result.stderr.trim().split('\n').at(-1)?.slice(0, 200) || 'no output'})`;
  return { accelerator: 'tcg', reason: `${why}; using TCG`, probedAt, key };
}
