import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { configValue } from '../../core/config-keys.ts';
import { failedPrecondition, invalidArgument } from '../../core/errors.ts';
import { parseBytes } from '../../core/sizes.ts';
import type { DriverContext, GuestDriver, ProbeResult } from '../guest-driver.ts';
import type { AcceleratorSetting } from './accelerator-probe.ts';
import { hasCloudKernel } from './boot-kit.ts';
import { missingOvmf } from './firmware.ts';
import { type MachineType, MIN_VM_MEMORY_BYTES, type VmGuestPaths } from './qemu-command.ts';
import type { AgentPool } from './vm-agent.ts';
import { assertBootConfig, bootModeOf, noDisk } from './vm-boot.ts';
import { createVmConsole } from './vm-console.ts';
import { createVmContext } from './vm-context.ts';
import { createVmExec } from './vm-exec.ts';
import { createVmLaunch } from './vm-launch.ts';
import { createVmLiveMigration } from './vm-live-migration.ts';
import { createVmLiveNics } from './vm-live-nics.ts';
import { createVmPower } from './vm-power.ts';
import { createVmUsage } from './vm-usage.ts';

export { assertBootConfig, type BootMode, type BootRecord, bootModeOf } from './vm-boot.ts';
export { VM_UID_OFFSET } from './vm-context.ts';
export { diskCountersOf } from './vm-usage.ts';

/** Per-host settings of the vm driver (main.ts passes them from the host config). */
export interface VmDriverOptions {
  /** The guest agents' connections, shared with the vm storage (QEMU serves one client per agent socket). */
  agents?: AgentPool;
  /** kvm, tcg, or auto (probe); default from TRIVISOR_VM_ACCELERATOR, else auto. */
  accelerator?: AcceleratorSetting;
  /** A guest kernel instead of the newest /boot/vmlinuz-*-cloud-amd64. */
  kernelPath?: string;
  bootDir?: string;
  machine?: MachineType;
  /** How long a KVM test boot may take before KVM counts as hanging. */
  probeTimeoutMs?: number;
  startTimeoutMs?: number;
  /**
   * First host uid of vm guests; guest n's QEMU runs as `uidBase + n` with the same gid.
   * Defaults to `idmapBase + 65536`, between ct's ids and pvm's.
   */
  uidBase?: number;
  /** Where OVMF's files are (vm.firmware=uefi); default TRIVISOR_VM_OVMF_DIR, else Debian's /usr/share/OVMF. */
  ovmfDir?: string;
}

/** QEMU behind the `vm` model: one daemonized qemu-system-x86_64 per guest, driven over QMP and the guest agent. */
export function createVmDriver(ctx: DriverContext, options: VmDriverOptions = {}): GuestDriver {
  // The parts (vm-launch, vm-power, vm-usage, vm-exec, vm-console, vm-live-nics) share one context.
  const c = createVmContext(ctx, options, () => driver);
  const launch = createVmLaunch(c);
  const { runner, stateDir, machine, uidBase, ovmfDir, bootDir, bootKit, accelerator, hostCpus } = c;
  const driver: GuestDriver = {
    model: 'vm',

    async probe(): Promise<ProbeResult> {
      const warnings: string[] = [];
      const details: Record<string, string> = { machine };
      let version = '';
      const qemu = await runner
        .run(['qemu-system-x86_64', '--version'], { allowFailure: true })
        .catch(() => undefined);
      if (qemu?.code === 0) version = /version (\S+)/.exec(qemu.stdout)?.[1] ?? '';
      else warnings.push("qemu-system-x86_64 is missing: install Debian's qemu-system-x86 package.");
      const img = await runner.run(['qemu-img', '--version'], { allowFailure: true }).catch(() => undefined);
      if (img?.code !== 0) warnings.push("qemu-img is missing: install Debian's qemu-utils package.");
      // The launcher and the descriptor sender are perl-base scripts; setpriv drops to the guest's uid.
      const setpriv = await runner
        .run(['setpriv', '--version'], { allowFailure: true })
        .catch(() => undefined);
      if (setpriv?.code !== 0) warnings.push('setpriv (util-linux) is missing: QEMU cannot drop root.');
      const perl = await runner
        .run(['/usr/bin/perl', '-e', '1'], { allowFailure: true })
        .catch(() => undefined);
      if (perl?.code !== 0) warnings.push("/usr/bin/perl is missing: install Debian's perl-base package.");
      details.uidBase = String(uidBase);
      let supported = version !== '' && img?.code === 0 && setpriv?.code === 0 && perl?.code === 0;
      if (supported) {
        try {
          const kit = await bootKit();
          details.kernel = kit.kernelRelease;
          details.initramfs = kit.initramfsPath;
          const verdict = await accelerator(kit);
          details.accelerator = verdict.accelerator;
          details.acceleratorReason = verdict.reason;
          if (verdict.accelerator === 'tcg') warnings.push(`vm guests run under TCG: ${verdict.reason}.`);
        } catch (e) {
          supported = false;
          warnings.push(e instanceof Error ? e.message : String(e));
        }
      }
      return { model: 'vm', supported, version, warnings, details };
    },

    validate(spec, image) {
      if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(spec.name)) {
        throw invalidArgument(
          `Guest name ${JSON.stringify(spec.name)} is not a DNS label: use a-z, 0-9 and -.`,
        );
      }
      const memory = configValue.memoryBytes(spec.config);
      if (memory !== undefined && memory < MIN_VM_MEMORY_BYTES) {
        throw invalidArgument(
          `limits.memory=${spec.config['limits.memory']} is too small for a vm guest to boot: give at least ${MIN_VM_MEMORY_BYTES / 2 ** 20}MiB.`,
        );
      }
      const cpus = configValue.cpus(spec.config);
      if (cpus !== undefined && cpus > hostCpus) {
        throw invalidArgument(
          `limits.cpu=${spec.config['limits.cpu']} is more than this host's ${hostCpus} CPUs: give at most ${hostCpus}.`,
        );
      }
      const disk = spec.config['limits.disk'];
      if (disk !== undefined) parseBytes(disk, 'limits.disk');
      if (configValue.vmSecureBoot(spec.config) && configValue.vmFirmware(spec.config) !== 'uefi') {
        throw invalidArgument('vm.secureboot=true needs vm.firmware=uefi: set both.');
      }
      if (configValue.vmFirmware(spec.config) === 'uefi') {
        const missing = missingOvmf(ovmfDir, configValue.vmSecureBoot(spec.config));
        if (missing) throw failedPrecondition(missing);
      }
      if (image) {
        const mode = bootModeOf({
          record: image,
          rootfs: '',
          blank: image.fingerprint === '',
          baseDisk: noDisk,
        });
        try {
          assertBootConfig(spec, mode);
        } catch (e) {
          // A request that asks for it is wrong as asked (at start it is the host's state that is).
          throw invalidArgument(e instanceof Error ? e.message : String(e));
        }
      }
      if (stateDir.includes(',')) {
        throw failedPrecondition(
          `The state dir ${stateDir} holds a comma, which QEMU options cannot carry: move it.`,
        );
      }
      if (options.kernelPath ? !existsSync(options.kernelPath) : !hasCloudKernel(bootDir)) {
        throw failedPrecondition(
          options.kernelPath
            ? `The vm kernel ${options.kernelPath} does not exist: install it or fix the host setting.`
            : "No guest kernel for vm guests: install Debian's linux-image-cloud-amd64 package (apt-get install linux-image-cloud-amd64).",
        );
      }
    },

    create: launch.create,
    start: launch.start,
    migration: createVmLiveMigration(c, launch),
    ...createVmPower(c),
    ...createVmUsage(c),
    ...createVmExec(c),
    ...createVmConsole(c),
    ...createVmLiveNics(c),
  };
  return driver;
}

/** Reads the pid file QEMU wrote (for tests and diagnostics). */
export async function readQemuPid(paths: VmGuestPaths): Promise<number | undefined> {
  const text = await readFile(paths.pidFile, 'utf8').catch(() => undefined);
  const pid = Number(text?.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}
