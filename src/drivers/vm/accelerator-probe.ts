import { constants } from 'node:fs';
import { access, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArgument } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import { type BootKit, PROBE_MARKER } from './boot-kit.ts';

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

/** The QEMU argv of a test boot: the kit's kernel and initramfs, which power off at once in probe mode. */
export function probeArgv(kit: BootKit, accelerator: Accelerator): string[] {
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
    kit.kernelPath,
    '-initrd',
    kit.initramfsPath,
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
  const qemu = await runner
    .run(['qemu-system-x86_64', '--version'], { allowFailure: true })
    .catch(() => undefined);
  const qemuVersion = /version (\S+)/.exec(qemu?.stdout ?? '')?.[1] ?? 'unknown';
  const key = `host ${hostRelease}, qemu ${qemuVersion}, guest ${kit.kernelRelease}`;
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
  try {
    await access(device, constants.R_OK | constants.W_OK);
  } catch {
    return { accelerator: 'tcg', reason: `${device} is missing or not usable`, key };
  }
  const started = Date.now();
  const probedAt = new Date(started).toISOString();
  const result = await options.runner.run(probeArgv(options.kit, 'kvm'), { allowFailure: true, timeoutMs });
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
