import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { configValue, isLiveKey } from '../../core/config-keys.ts';
import {
  failedPrecondition,
  internal,
  invalidArgument,
  notSupported,
  unavailable,
} from '../../core/errors.ts';
import { GUEST_FILE_MAX_BYTES, injectedFiles } from '../../core/guest-files.ts';
import { withRevert } from '../../core/revert.ts';
import { parseBytes } from '../../core/sizes.ts';
import type { GuestSpec, GuestUsage, ProcessIdentity } from '../../core/types.ts';
import { readCgroupUsage, removeCgroup } from '../../host/cgroups-v1.ts';
import { isSameProcess, readProcessIdentity } from '../../host/proc-stat.ts';
import { qgaPullFile, qgaPushFile } from '../../host/qga-files.ts';
import { KIT_INIT_MARKER, kitKernelArgs } from '../../images/guest-kit.ts';
import { writeConfigDisk } from '../config-disk.ts';
import { createConsoleSlots } from '../console-slots.ts';
import { cgroupParentOf } from '../ct/ct-driver.ts';
import type {
  DiskCounters,
  DriverContext,
  ExecSession,
  GuestDriver,
  GuestInterface,
  ImageHandle,
  ProbeResult,
  RuntimeState,
} from '../guest-driver.ts';
import { nicUpScript, probeGuestNics, runGuestScript } from '../guest-nic.ts';
import {
  ACCELERATOR_ENV,
  type AcceleratorSetting,
  type AcceleratorVerdict,
  chooseAccelerator,
  kvmAccess,
  parseAcceleratorSetting,
} from './accelerator-probe.ts';
import { type BootKit, defaultBootDir, ensureBootKit, hasCloudKernel, modulesDirOf } from './boot-kit.ts';
import {
  DEFAULT_OVMF_DIR,
  diskIsInstalled,
  ensureUefiVars,
  missingOvmf,
  OVMF_DIR_ENV,
  requireOvmf,
} from './firmware.ts';
import { addOnFreePort, NoFreePortError, portCount } from './pcie-ports.ts';
import {
  CDROM_DRIVES,
  type CdromDrive,
  DEFAULT_VM_DISK_BYTES,
  type DiskLayer,
  type FirmwareBoot,
  isoNodeOf,
  type MachineType,
  MIN_VM_MEMORY_BYTES,
  nicDriverOf,
  nicEngineIds,
  qemuArgv,
  type VmDevices,
  type VmGuestPaths,
  vmGuestPaths,
  vmResources,
} from './qemu-command.ts';
import { launcherArgv, type QemuIdentity, qemuFds } from './qemu-fds.ts';
import { connectQmp, type QmpClient } from './qmp-client.ts';
import { connectSerialConsole } from './serial-console.ts';
import { type AgentPool, createAgentPool } from './vm-agent.ts';
import { keyPresses, openDisplay, screenshotPng, sendKeys } from './vm-display.ts';
import { vmVolumeArgs } from './vm-volumes.ts';

/** The config disk (injected files) in the guest: the second virtio-blk disk, after the root. */
const VM_CONFIG_DEVICE = '/dev/vdb';
/** How long one agent request of a file copy may wait for its answer. */
const AGENT_FILE_TIMEOUT_MS = 30_000;
/** How often waits poll. */
const POLL_MS = 100;
/** How long start() waits for the kit's init and its agent (TCG on a busy 2-core host is slow). */
const DEFAULT_START_TIMEOUT_MS = 180_000;
/** How long exec and files wait for the agent of a guest's own OS before saying it has none. */
const AGENT_DETECT_TIMEOUT_MS = 3000;
/** How long stop() waits for QEMU to exit after `quit` or SIGKILL. */
const KILL_WAIT_MS = 10_000;
/** How long QEMU may take from exec to its QMP greeting (devices set up, main loop running). */
const QEMU_READY_TIMEOUT_MS = 60_000;
/**
 * vm guests' host uids start this far above idmapBase: ct's user namespaces hold the first
 * 65,536 ids and pvm starts at 2 × 65,536 (pvm-driver.ts), so the block between is vm's.
 */
export const VM_UID_OFFSET = 65_536;
/** Per-guest uids `uidBase + slot`; the last slot is the accelerator probe's. */
const UID_SLOTS = 65_536;
/** Line the guest kit prints when the image's init cannot run (it then starts a shell instead). */
const KIT_INIT_FAILED = "trivisor: cannot run the image's init";
/**
 * Cgroup hierarchies the QEMU process is put in: usage and the cpu quota, and
 * systemd's (and the hybrid unified one), so that stopping the daemon's
 * service, which kills its cgroup there, leaves the guests running.
 */
const CGROUP_HIERARCHIES = ['memory', 'cpu', 'cpuacct', 'pids', 'systemd', 'unified'] as const;
const CGROUP_ROOT = '/sys/fs/cgroup';

/** What start() chose for a boot, kept in the guest dir for stop(), usage() and update(). */
export interface BootRecord {
  identity: ProcessIdentity;
  accelerator: string;
  machine: MachineType;
  memoryBytes: number;
  /** Guest RAM after the last balloon change. */
  balloonBytes: number;
  vcpus: number;
  stopSignal: string;
  kernelRelease: string;
  /** The host uid QEMU runs as (absent: a QEMU started as root before guests had their own). */
  uid?: number;
  /** Booted another OS's kernel without the guest kit (image property vm.kernel): no agent. */
  foreign?: boolean;
  /**
   * How it booted: the kit (cloud kernel and initramfs), another OS's kernel (vm.kernel), or
   * its own disk or CD through its firmware (a disk image, an ISO install). Absent: kit, or
   * kernel when `foreign`.
   */
  boot?: BootMode;
  firmware?: 'bios' | 'uefi';
  /** It has a VGA device and a VNC server (vm.display). */
  display?: boolean;
  nicModel?: 'virtio' | 'e1000';
}

/** How a vm guest boots (BootRecord.boot). */
export type BootMode = 'kit' | 'kernel' | 'firmware';

/**
 * What runs a command in a guest without the kit: `env` finds the guest's own tools on its PATH
 * where the agent helpers would name the kit's busybox (`env sh -c …`, `env chmod …`).
 */
const OWN_TOOLS = '/usr/bin/env';

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

const exists = async (path: string): Promise<boolean> => {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
};

/** QEMU behind the `vm` model: one daemonized qemu-system-x86_64 per guest, driven over QMP and the guest agent. */
export function createVmDriver(ctx: DriverContext, options: VmDriverOptions = {}): GuestDriver {
  const { runner, stateDir } = ctx;
  const log = ctx.log.child({ driver: 'vm' });
  const setting = options.accelerator ?? parseAcceleratorSetting(process.env[ACCELERATOR_ENV]);
  const machine = options.machine ?? 'q35';
  const startTimeoutMs = options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  const cgroupParent = cgroupParentOf(stateDir);
  const cgroupsPath = (spec: GuestSpec): string => `${cgroupParent}/${spec.name}`;
  const pathsOf = (spec: GuestSpec): VmGuestPaths => vmGuestPaths(stateDir, spec.name);
  const agents = options.agents ?? createAgentPool();
  const consoles = createConsoleSlots();
  const uidBase = options.uidBase ?? ctx.idmapBase + VM_UID_OFFSET;
  const ovmfDir = options.ovmfDir ?? process.env[OVMF_DIR_ENV] ?? DEFAULT_OVMF_DIR;
  /** The test boot's QEMU runs unprivileged too, as the uid no guest gets. */
  const probeUid = uidBase + UID_SLOTS - 1;
  let uidLock: Promise<unknown> = Promise.resolve();

  const bootDir = options.bootDir ?? defaultBootDir();
  const bootKit = (): Promise<BootKit> =>
    ensureBootKit(stateDir, {
      runner,
      bootDir,
      modulesDir: modulesDirOf(bootDir),
      ...(options.kernelPath ? { kernelPath: options.kernelPath } : {}),
    });
  const accelerator = async (kit: BootKit): Promise<AcceleratorVerdict> =>
    chooseAccelerator(stateDir, {
      runner,
      kit,
      setting,
      runAs: probeUid,
      ...(options.probeTimeoutMs ? { timeoutMs: options.probeTimeoutMs } : {}),
    });

  /** The guest's QEMU uid, from its uid file; undefined when it has none (made before QEMU ran unprivileged). */
  const readUid = async (spec: GuestSpec): Promise<number | undefined> => {
    const text = await readFile(pathsOf(spec).uidFile, 'utf8').catch(() => '');
    const uid = Number(text.trim());
    return Number.isInteger(uid) && uid >= uidBase && uid < uidBase + UID_SLOTS - 1 ? uid : undefined;
  };

  /**
   * The lowest uid of the vm block that no other guest of this state dir holds
   * (serialised: two creates must not share one), written to the guest's uid file.
   */
  const allocateUid = (spec: GuestSpec): Promise<number> => {
    const work = uidLock.then(async () => {
      const taken = new Set<number>();
      const guestsDir = join(stateDir, 'guests');
      for (const name of await readdir(guestsDir).catch(() => [] as string[])) {
        if (name === spec.name) continue;
        const text = await readFile(join(guestsDir, name, 'uid'), 'utf8').catch(() => '');
        if (text.trim() !== '') taken.add(Number(text.trim()));
      }
      for (let uid = uidBase; uid < uidBase + UID_SLOTS - 1; uid++) {
        if (!taken.has(uid)) {
          await writeFile(pathsOf(spec).uidFile, `${uid}\n`, { mode: 0o644 });
          return uid;
        }
      }
      throw failedPrecondition(`All ${UID_SLOTS - 1} vm host uids are in use: delete unused vm guests.`);
    });
    uidLock = work.catch(() => {});
    return work;
  };

  const readBoot = async (spec: GuestSpec): Promise<BootRecord | undefined> =>
    readFile(pathsOf(spec).bootRecord, 'utf8')
      .then((t) => JSON.parse(t) as BootRecord)
      .catch(() => undefined);
  const writeBoot = (spec: GuestSpec, record: BootRecord): Promise<void> =>
    writeFile(pathsOf(spec).bootRecord, `${JSON.stringify(record, null, 2)}\n`);

  /** The live QEMU of a guest: `known` when given (never second-guessed), else what start recorded. */
  const liveQemu = async (spec: GuestSpec, known?: ProcessIdentity): Promise<ProcessIdentity | undefined> => {
    const identity = known ?? (await readBoot(spec))?.identity;
    return identity && (await isSameProcess(identity)) ? identity : undefined;
  };

  const withQmp = async <T>(spec: GuestSpec, work: (qmp: QmpClient) => Promise<T>): Promise<T> => {
    const qmp = await connectQmp(pathsOf(spec).qmpSocket, { timeoutMs: 5000, runner });
    try {
      return await work(qmp);
    } finally {
      qmp.close();
    }
  };

  const runStatus = async (spec: GuestSpec): Promise<string | undefined> =>
    withQmp(spec, (q) => q.execute<{ status: string }>('query-status')).then(
      (s) => s.status,
      () => undefined,
    );

  const waitGone = async (identity: ProcessIdentity, timeoutMs: number): Promise<boolean> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!(await isSameProcess(identity))) return true;
      if (Date.now() >= deadline) return false;
      await sleep(Math.min(POLL_MS, Math.max(1, deadline - Date.now())));
    }
  };

  /** The guest's cgroup in every mounted hierarchy: the launcher makes and joins them before exec. */
  const cgroupDirsOf = async (spec: GuestSpec): Promise<string[]> => {
    const dirs: string[] = [];
    for (const h of CGROUP_HIERARCHIES) {
      // Only mounted hierarchies (cpu and cpuacct may be one, mounted twice, or a cpu,cpuacct link).
      if (await exists(join(CGROUP_ROOT, h, 'cgroup.procs')))
        dirs.push(join(CGROUP_ROOT, h, cgroupsPath(spec)));
    }
    return dirs;
  };

  /** A fractional limits.cpu as a cfs quota on the guest's cpu cgroup. */
  const setCpuQuota = async (spec: GuestSpec, cpuQuotaUs: number | undefined): Promise<void> => {
    if (cpuQuotaUs === undefined) return;
    const dir = join(CGROUP_ROOT, 'cpu', cgroupsPath(spec));
    await writeFile(join(dir, 'cpu.cfs_period_us'), '100000');
    await writeFile(join(dir, 'cpu.cfs_quota_us'), String(cpuQuotaUs));
  };

  /** Removes what a started guest holds (sockets, pid file, cgroup); leaves disk, console log and dir. */
  const cleanUpRuntime = async (spec: GuestSpec): Promise<void> => {
    const p = pathsOf(spec);
    agents.drop(p.agentSocket);
    for (const f of [p.qmpSocket, p.consoleSocket, p.agentSocket, p.pidFile]) await rm(f, { force: true });
    // The taps are persistent: they outlive QEMU, and go only with the guest's runtime.
    if (ctx.network?.hasNics(spec)) await ctx.network.unplug(spec);
    // Threads of a QEMU that just exited may linger a moment in the cgroup.
    for (let i = 0; i < 20; i++) {
      if ((await removeCgroup(cgroupsPath(spec))).length === 0) break;
      await sleep(50);
    }
  };

  const killQemu = async (spec: GuestSpec, identity: ProcessIdentity): Promise<void> => {
    await withQmp(spec, (q) => q.execute('quit', undefined, { timeoutMs: 2000 })).catch(() => {});
    if (await waitGone(identity, 2000)) return;
    log.info({ guest: spec.name, pid: identity.pid }, 'killing QEMU');
    try {
      process.kill(identity.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
    if (!(await waitGone(identity, KILL_WAIT_MS))) {
      throw internal(
        `QEMU of guest ${spec.name} (pid ${identity.pid}) survived SIGKILL: check the host for stuck I/O.`,
      );
    }
  };

  const consoleSince = async (path: string, offset: number): Promise<string> =>
    (await readFile(path).catch(() => Buffer.alloc(0))).subarray(offset).toString('utf8');

  const tail = (text: string): string =>
    text.replace(/\r/g, '').trim().split('\n').slice(-4).join(' | ').slice(0, 400) || 'no console output';

  /** Waits until the kit's init ran and its agent answers; throws when QEMU dies or the image's init cannot run. */
  const waitBooted = async (
    spec: GuestSpec,
    identity: ProcessIdentity,
    consoleOffset: number,
  ): Promise<void> => {
    const p = pathsOf(spec);
    const deadline = Date.now() + startTimeoutMs;
    const check = async (): Promise<string> => {
      const text = await consoleSince(p.consoleLog, consoleOffset);
      if (!(await isSameProcess(identity))) {
        throw internal(`Guest ${spec.name} powered off while booting: ${tail(text)} (see ${p.consoleLog}).`);
      }
      if (text.includes(KIT_INIT_FAILED)) {
        throw failedPrecondition(`Guest ${spec.name} cannot run its image's init: ${tail(text)}.`);
      }
      if (Date.now() > deadline) {
        throw internal(
          `Guest ${spec.name} did not finish booting within ${startTimeoutMs}ms: ${tail(text)} (see ${p.consoleLog}).`,
        );
      }
      return text;
    };
    while (!(await check()).includes(KIT_INIT_MARKER)) await sleep(POLL_MS);
    // The agent starts beside the image's init: once it answers, a failed init has been reported.
    while (!(await agents.ping(p.agentSocket, { timeoutMs: 3000 }))) {
      await check();
      await sleep(POLL_MS);
    }
    await check();
  };

  /** Another OS has no kit: it counts as booted once its `vm.ready` text is on the console. */
  const waitForeignBooted = async (
    spec: GuestSpec,
    identity: ProcessIdentity,
    options: { consoleOffset: number; ready: string | undefined },
  ): Promise<void> => {
    const p = pathsOf(spec);
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      const text = await consoleSince(p.consoleLog, options.consoleOffset);
      if (!(await isSameProcess(identity))) {
        throw internal(`Guest ${spec.name} powered off while booting: ${tail(text)} (see ${p.consoleLog}).`);
      }
      if (options.ready === undefined || text.includes(options.ready)) return;
      if (Date.now() > deadline) {
        throw internal(
          `Guest ${spec.name} did not print ${JSON.stringify(options.ready)} within ${startTimeoutMs}ms (see ${p.consoleLog}).`,
        );
      }
      await sleep(POLL_MS);
    }
  };

  /**
   * Who the guest's QEMU runs as: its own uid and gid (a guest made before QEMU ran
   * unprivileged gets one now), no other group but, under KVM, the group that may open
   * /dev/kvm (QEMU opens it by name; there is no way to hand it over).
   */
  const qemuIdentity = async (spec: GuestSpec, accel: string): Promise<QemuIdentity> => {
    const uid = (await readUid(spec)) ?? (await allocateUid(spec));
    if (accel !== 'kvm') return { uid, gid: uid, groups: [] };
    const kvm = await kvmAccess();
    if ('refused' in kvm) throw failedPrecondition(`Guest ${spec.name} cannot use KVM: ${kvm.refused}.`);
    return { uid, gid: uid, groups: kvm.groups };
  };

  /**
   * The kernel loader opens its files by name (through /proc/self/fd, so the state dir's
   * modes do not matter, the file's own do): QEMU's uid reads them as "other". The kit's
   * initramfs is the daemon's own and made readable; a kernel is the administrator's.
   */
  const assertReadableByOthers = async (files: readonly string[]): Promise<void> => {
    for (const file of files) {
      const st = await stat(file);
      if ((st.mode & 0o004) !== 0) continue;
      throw failedPrecondition(
        `The vm boot file ${file} is not readable by other users (mode ${(st.mode & 0o777).toString(8)}): QEMU runs as an unprivileged uid and reads it itself; chmod o+r it.`,
      );
    }
  };

  /** What `qemu-img info` says of one file of a given format (never following a backing file). */
  const qemuImgInfo = async (
    file: string,
    format: string,
  ): Promise<{ virtualSize: number; backing?: string }> => {
    const { stdout } = await runner.run(['qemu-img', 'info', '-U', '-f', format, '--output=json', file]);
    const info = JSON.parse(stdout) as { 'virtual-size': number; 'backing-filename'?: string };
    return {
      virtualSize: info['virtual-size'],
      ...(info['backing-filename'] !== undefined && { backing: info['backing-filename'] }),
    };
  };

  /**
   * The root disk and its backing file, as QEMU is to be given them. QEMU holds the qcow2
   * open for writing, header included, so a QEMU a guest took over could name any host file
   * as the backing file, which root would then open for it at the next start: only an
   * image's base disk (raw, beside the image's current one or under the state dir's
   * images; a disk image's qcow2, itself without a backing file) is handed over, and a
   * blank disk has none at all.
   */
  const diskChain = async (spec: GuestSpec, image: ImageHandle, mode: BootMode): Promise<DiskLayer[]> => {
    const disk = pathsOf(spec).disk;
    const { stdout } = await runner.run([
      ...['qemu-img', 'info', '-U', '-f', 'qcow2', '--backing-chain', '--output=json', disk],
    ]);
    const [, base, ...deeper] = JSON.parse(stdout) as Array<{ filename: string; format: string }>;
    const top: DiskLayer = { path: disk, format: 'qcow2' };
    const refused = (what: string) =>
      failedPrecondition(
        `Guest ${spec.name}'s disk names a backing file that is not ${what} (${base?.filename}): it is not handed to QEMU; restore the guest from a backup or recreate it.`,
      );
    if (!base) return [top];
    if (image.blank) throw refused('anything: it was made blank');
    const real = await realpath(base.filename).catch(() => undefined);
    const allowed = [
      dirname(await realpath(await image.baseDisk())),
      await realpath(join(stateDir, 'images')).catch(() => join(stateDir, 'images')),
    ];
    const format = mode === 'firmware' ? 'qcow2' : 'raw';
    if (
      deeper.length > 0 ||
      base.format !== format ||
      !real ||
      !allowed.some((d) => real.startsWith(`${d}/`))
    ) {
      throw refused("an image's base disk");
    }
    return [top, { path: real, format }];
  };

  const qemuLogTail = async (spec: GuestSpec): Promise<string> =>
    tail(await readFile(pathsOf(spec).qemuLog, 'utf8').catch(() => ''));

  /**
   * Starts the launcher detached (the guest outlives the daemon), its stdout and stderr in
   * qemu.log; returns its pid, which stays QEMU's (perl, setpriv and env exec).
   */
  const launchQemu = async (
    spec: GuestSpec,
    argv: string[],
  ): Promise<{ pid: number; exited: Promise<void> }> => {
    const logFile = await open(pathsOf(spec).qemuLog, 'w', 0o600);
    try {
      const child = runner.spawn(argv, {
        cwd: '/',
        stdio: ['ignore', logFile.fd, logFile.fd],
        detached: true,
      });
      // Resolves once a QEMU that failed has been reaped: what it printed is all in qemu.log by then
      // (bounded: a daemon that did not spawn it never hears of its exit).
      const exited = new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.once('error', () => resolve());
        setTimeout(resolve, 2000).unref();
      });
      child.unref();
      if (child.pid === undefined) throw internal(`Cannot run QEMU for guest ${spec.name}.`);
      return { pid: child.pid, exited };
    } finally {
      await logFile.close();
    }
  };

  /**
   * Waits for QEMU's QMP greeting: it comes once the devices are set up and the main loop
   * runs (what -daemonize's return meant). A QEMU that exits first fails the start with
   * what it printed.
   */
  const waitQemuReady = async (
    spec: GuestSpec,
    identity: ProcessIdentity,
    exited: Promise<void>,
  ): Promise<void> => {
    const deadline = Date.now() + QEMU_READY_TIMEOUT_MS;
    for (;;) {
      if (!(await isSameProcess(identity))) {
        await exited;
        throw internal(`QEMU could not start guest ${spec.name}: ${await qemuLogTail(spec)}`);
      }
      const ready = await withQmp(spec, (q) => q.execute('query-status')).then(
        () => true,
        () => false,
      );
      if (ready) return;
      if (Date.now() >= deadline) {
        throw internal(
          `QEMU of guest ${spec.name} did not answer on QMP within ${QEMU_READY_TIMEOUT_MS / 1000} s: ${await qemuLogTail(spec)}`,
        );
      }
      await sleep(POLL_MS);
    }
  };

  const runningQemu = async (spec: GuestSpec): Promise<ProcessIdentity> => {
    const q = await liveQemu(spec);
    if (!q) throw failedPrecondition(`Guest ${spec.name} is not running: start it first.`);
    return q;
  };

  const hostCpus = availableParallelism();

  /** A running, unfrozen guest whose agent can take file requests. */
  const runningAgent = async (spec: GuestSpec): Promise<void> => {
    await runningQemu(spec);
    if ((await runStatus(spec)) === 'paused') {
      throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it first.`);
    }
  };

  /**
   * Whether the running guest's agent is its own OS's (a disk image's or an installed OS's
   * qemu-guest-agent), not the kit's: true, after checking that it answers, which it must
   * for exec and files (FailedPrecondition saying so otherwise).
   */
  const ownAgent = async (spec: GuestSpec): Promise<boolean> => {
    if (bootOf(await readBoot(spec)) === 'kit') return false;
    if (!(await agents.ping(pathsOf(spec).agentSocket, { timeoutMs: AGENT_DETECT_TIMEOUT_MS }))) {
      throw failedPrecondition(
        `Guest ${spec.name} has no guest agent: exec and files need qemu-guest-agent running in it (install it there, e.g. apt-get install qemu-guest-agent).`,
      );
    }
    return true;
  };

  /** A running guest with a display (vm.display). */
  const runningDisplay = async (spec: GuestSpec): Promise<void> => {
    await runningQemu(spec);
    if (!(await readBoot(spec))?.display) {
      throw failedPrecondition(
        `Guest ${spec.name} has no display: set vm.display=true and restart it (a guest booted with Trivisor's kernel has its serial console).`,
      );
    }
  };

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

    async create(spec, image) {
      driver.validate(spec);
      const p = pathsOf(spec);
      if (await exists(p.disk)) return;
      const mode = bootModeOf(image);
      assertBootConfig(spec, mode);
      await withRevert(async (r) => {
        await mkdir(join(stateDir, 'guests'), { recursive: true });
        // The dir may be left from a create that died half-way (it then holds no disk): reuse it.
        const made = await mkdir(p.dir, { recursive: true, mode: 0o700 });
        r.add(() => (made ? rm(p.dir, { recursive: true, force: true }) : rm(p.disk, { force: true })));
        await allocateUid(spec);
        const disk = spec.config['limits.disk'];
        if (image.blank) {
          // No image: a blank disk for an OS installed from an ISO.
          const size = disk === undefined ? DEFAULT_VM_DISK_BYTES : parseBytes(disk);
          await runner.run(['qemu-img', 'create', '-q', '-f', 'qcow2', p.disk, String(size)]);
        } else {
          const base = await image.baseDisk();
          // A disk image is a qcow2 of its own size; a tree's base disk a raw ext4 image.
          const format = mode === 'firmware' ? 'qcow2' : 'raw';
          const baseBytes =
            format === 'qcow2' ? (await qemuImgInfo(base, 'qcow2')).virtualSize : (await stat(base)).size;
          const diskBytes =
            disk === undefined ? Math.max(DEFAULT_VM_DISK_BYTES, baseBytes) : parseBytes(disk);
          if (diskBytes < baseBytes) {
            throw invalidArgument(
              `limits.disk=${disk} is smaller than the image's ${mode === 'firmware' ? 'disk' : 'base disk'} (${Math.ceil(baseBytes / 2 ** 20)}MiB): give at least that.`,
            );
          }
          await runner.run([
            'qemu-img',
            'create',
            '-q',
            '-f',
            'qcow2',
            '-F',
            format,
            '-b',
            base,
            p.disk,
            String(diskBytes),
          ]);
        }
        if (mode === 'firmware' && configValue.vmFirmware(spec.config) === 'uefi') {
          const secureBoot = configValue.vmSecureBoot(spec.config);
          await ensureUefiVars(p.dir, await requireOvmf(ovmfDir, secureBoot), { secureBoot });
        }
        await writeFile(p.consoleLog, '', { mode: 0o600 });
      });
    },

    async start(spec, image) {
      driver.validate(spec);
      const p = pathsOf(spec);
      if (!(await exists(p.disk))) {
        throw failedPrecondition(`Guest ${spec.name} has no disk on this host: create it first.`);
      }
      const running = await liveQemu(spec);
      if (running) return running;
      await cleanUpRuntime(spec);
      const mode = bootModeOf(image);
      assertBootConfig(spec, mode);
      const kit = await bootKit();
      const verdict = await accelerator(kit);
      const resources = vmResources(spec.config);
      const foreign = mode === 'kernel' ? foreignBootOf(image) : undefined;
      if (foreign && !(await exists(foreign.kernel))) {
        throw failedPrecondition(
          `The kernel ${foreign.kernel} of image ${image.record.fingerprint} does not exist on this host: install it or fix the image's vm.kernel property.`,
        );
      }
      const withNics = ctx.network?.hasNics(spec) ?? Object.keys(spec.devices ?? {}).length > 0;
      if (withNics && !ctx.network) {
        throw failedPrecondition(`Guest ${spec.name} has NICs but networking is not set up on this host.`);
      }
      const guestMachine = configValue.vmMachine(spec.config) ?? machine;
      const uefi =
        mode === 'firmware' && configValue.vmFirmware(spec.config) === 'uefi'
          ? await requireOvmf(ovmfDir, configValue.vmSecureBoot(spec.config))
          : undefined;
      const devices: VmDevices = {
        diskBus: configValue.vmDiskBus(spec.config),
        nicModel: configValue.vmNicModel(spec.config),
        // A guest that runs its own OS is seen on its screen; the kit's guests have a serial console.
        display: configValue.vmDisplay(spec.config) ?? mode === 'firmware',
      };
      const volumes = (await ctx.volumes?.resolve(spec)) ?? [];
      const isos = volumes.filter((v) => v.type === 'iso');
      if (isos.length > 0 && mode !== 'firmware') {
        throw failedPrecondition(
          `Guest ${spec.name} boots Trivisor's kernel directly, which has no CD-ROM: detach ${isos.map((v) => v.volume).join(', ')}.`,
        );
      }
      if (isos.length > CDROM_DRIVES.length) {
        throw failedPrecondition(
          `Guest ${spec.name} has ${CDROM_DRIVES.length} CD-ROM drives and ${isos.length} ISOs attached: detach one.`,
        );
      }
      return withRevert(async (r) => {
        const consoleOffset = (await stat(p.consoleLog).catch(() => undefined))?.size ?? 0;
        r.add(() => cleanUpRuntime(spec));
        // A tap per NIC on its bridge, filtered and limited before QEMU opens it.
        const taps = withNics && ctx.network ? await ctx.network.plugTaps(spec) : [];
        const nics = taps.map((t) => ({ name: t.nic, mac: t.mac }));
        // Injected files ride on a read-only config disk the kit copies from (rebuilt at every start).
        const files = injectedFiles(spec.config);
        if (mode !== 'kit' && files.length > 0) {
          throw failedPrecondition(
            `Guest ${spec.name} boots ${mode === 'firmware' ? 'its own disk' : 'its own kernel'} without the guest kit, which injects files: remove the files.* keys of guest ${spec.name}.`,
          );
        }
        const configDisk = join(p.dir, 'config.ext4');
        const withConfig = mode === 'kit' ? await writeConfigDisk(files, configDisk, { runner }) : false;
        const identity = await qemuIdentity(spec, verdict.accelerator);
        if (mode === 'kit') await assertReadableByOthers([kit.kernelPath, kit.initramfsPath]);
        if (foreign) await assertReadableByOthers([foreign.kernel]);
        const rootChain = await diskChain(spec, image, mode);
        let firmware: FirmwareBoot | undefined;
        if (mode === 'firmware') {
          const secureBoot = configValue.vmSecureBoot(spec.config);
          const media: NonNullable<FirmwareBoot['media']> = {};
          isos.forEach((v, i) => {
            const drive = CDROM_DRIVES[i] as CdromDrive;
            media[drive] = { path: v.hostPath, node: isoNodeOf(v.device) };
          });
          firmware = {
            // Checked after the chain: qemu-img reads the disk as root, and only a checked chain.
            bootFrom: (await diskIsInstalled(runner, p.disk, { format: 'qcow2' })) ? 'disk' : 'cdrom',
            media,
            ...(uefi && {
              uefi: {
                code: uefi.code,
                vars: await ensureUefiVars(p.dir, uefi, { secureBoot }),
                secureBoot,
              },
            }),
          };
        }
        const fds = qemuFds();
        const argv = qemuArgv({
          name: spec.name,
          paths: p,
          fds,
          rootChain,
          kit,
          accelerator: verdict.accelerator,
          machine: guestMachine,
          resources,
          devices,
          ...(firmware && { firmware }),
          ...(foreign && { foreignKernel: foreign.kernel }),
          kernelArgs:
            mode === 'kit'
              ? kitKernelArgs({
                  hostname: spec.name,
                  model: 'vm',
                  nics,
                  ...(withConfig ? { configDevice: VM_CONFIG_DEVICE } : {}),
                })
              : (foreign?.cmdline ?? []),
          nics: taps,
          ...(withConfig ? { configDisk } : {}),
        });
        // Attached block volumes, and on q35 the root ports that let volumes come and go live.
        argv.push(...vmVolumeArgs(volumes, guestMachine, fds));
        argv.push(...fds.addFdArgs());
        const launched = await launchQemu(
          spec,
          launcherArgv({ fds, cgroups: await cgroupDirsOf(spec), identity, command: argv }),
        );
        const { pid } = launched;
        const started = await readProcessIdentity(pid);
        if (!started) {
          await launched.exited;
          throw internal(`QEMU could not start guest ${spec.name}: ${await qemuLogTail(spec)}`);
        }
        r.add(() => killQemu(spec, started));
        await writeFile(p.pidFile, `${pid}\n`, { mode: 0o600 });
        await writeBoot(spec, {
          identity: started,
          accelerator: verdict.accelerator,
          machine: guestMachine,
          memoryBytes: resources.memoryMiB * 2 ** 20,
          balloonBytes: resources.memoryMiB * 2 ** 20,
          vcpus: resources.vcpus,
          stopSignal: image.record.properties['stop.signal'] ?? 'SIGTERM',
          kernelRelease: mode === 'kit' ? kit.kernelRelease : '',
          uid: identity.uid,
          boot: mode,
          display: devices.display,
          nicModel: devices.nicModel,
          ...(foreign ? { foreign: true } : {}),
          ...(firmware && { firmware: firmware.uefi ? 'uefi' : 'bios' }),
        });
        await waitQemuReady(spec, started, launched.exited);
        await setCpuQuota(spec, resources.cpuQuotaUs);
        if (foreign) await waitForeignBooted(spec, started, { consoleOffset, ready: foreign.ready });
        else if (mode === 'firmware') {
          // Its own OS says nothing Trivisor knows: it runs once its firmware does, or, with the
          // image property vm.ready, once that text is on its serial console.
          await waitForeignBooted(spec, started, {
            consoleOffset,
            ready: image.record.properties['vm.ready'],
          });
        } else await waitBooted(spec, started, consoleOffset);
        log.info(
          { guest: spec.name, pid, uid: identity.uid, accelerator: verdict.accelerator, boot: mode },
          'vm guest started',
        );
        return started;
      });
    },

    async stop(spec, stopOptions) {
      const q = await liveQemu(spec);
      if (q) {
        let gone = false;
        if (!stopOptions.force) {
          // The timeout counts from the request, however long the agent takes to answer.
          const deadline = Date.now() + stopOptions.timeoutMs;
          const p = pathsOf(spec);
          // A paused CPU cannot act on a power-down request.
          if ((await runStatus(spec)) === 'paused')
            await withQmp(spec, (c) => c.execute('cont')).catch(() => {});
          const boot = await readBoot(spec);
          // The image's init powers off on its stop signal (busybox init ignores ACPI): ask through the
          // agent, and press the ACPI power button too for images that listen to it. An OS of its own
          // gets the button only, as a machine's would (no kit in it to signal its init).
          const asked =
            bootOf(boot) === 'kit'
              ? agents.signalInit(p.agentSocket, boot?.stopSignal ?? 'SIGTERM', {
                  timeoutMs: Math.min(3000, stopOptions.timeoutMs),
                })
              : Promise.resolve();
          await withQmp(spec, (c) => c.execute('system_powerdown')).catch(() => {});
          await asked.catch(() => {});
          gone = await waitGone(q, Math.max(0, deadline - Date.now()));
        }
        if (!gone) {
          log.info({ guest: spec.name, force: stopOptions.force }, 'killing vm guest');
          await killQemu(spec, q);
        }
      }
      await cleanUpRuntime(spec);
    },

    async freeze(spec) {
      await runningQemu(spec);
      await withQmp(spec, (q) => q.execute('stop'));
    },

    async unfreeze(spec) {
      await runningQemu(spec);
      await withQmp(spec, (q) => q.execute('cont'));
    },

    async delete(spec) {
      const p = pathsOf(spec);
      const q = await liveQemu(spec);
      if (q) await driver.stop(spec, { timeoutMs: 0, force: true });
      await cleanUpRuntime(spec);
      await rm(p.dir, { recursive: true, force: true });
      await removeCgroup(cgroupParent);
    },

    async inspect(spec, known): Promise<RuntimeState> {
      if (!(await exists(pathsOf(spec).dir))) return { state: 'absent' };
      const q = await liveQemu(spec, known);
      if (!q) return { state: 'stopped' };
      const status = await runStatus(spec);
      if (status === 'io-error') {
        // QEMU paused the guest on a failed write (werror=enospc: its disk's file system is full).
        // The liveness checks come here every few seconds: resume, and once there is room again the
        // write succeeds; while the disk is still full QEMU just pauses it again.
        log.warn({ guest: spec.name }, 'vm guest paused on a full disk: resuming it');
        await withQmp(spec, (c) => c.execute('cont')).catch(() => {});
      }
      return { state: status === 'paused' ? 'frozen' : 'running', process: q };
    },

    async usage(spec): Promise<GuestUsage> {
      const usage = await readCgroupUsage(cgroupsPath(spec));
      const boot = await readBoot(spec);
      const q = boot && (await isSameProcess(boot.identity));
      // The host sees one process per guest; what runs inside is the guest kernel's business.
      usage.processes = q ? 1 : 0;
      if (q) usage.memoryLimitBytes = boot.balloonBytes;
      else delete usage.memoryLimitBytes;
      return usage;
    },

    async update(spec, changedKeys) {
      const boot = await readBoot(spec);
      const live = boot && (await isSameProcess(boot.identity));
      const needRestart = changedKeys.filter((k) => !isLiveKey(k));
      if (!live) return [];
      const wanted = vmResources(spec.config);
      if (changedKeys.includes('limits.memory')) {
        const bytes = wanted.memoryMiB * 2 ** 20;
        if (bytes > boot.memoryBytes) {
          // The balloon can only give back what the guest booted with.
          needRestart.push('limits.memory');
        } else {
          await withQmp(spec, (q) => q.execute('balloon', { value: bytes }));
          await writeBoot(spec, { ...boot, balloonBytes: bytes });
        }
      }
      if (changedKeys.includes('limits.cpu')) {
        if (wanted.vcpus !== boot.vcpus) needRestart.push('limits.cpu');
        const dir = join(CGROUP_ROOT, 'cpu', cgroupsPath(spec));
        await writeFile(join(dir, 'cpu.cfs_quota_us'), String(wanted.cpuQuotaUs ?? -1)).catch(() => {});
      }
      return [...new Set(needRestart)];
    },

    async exec(spec, execOptions): Promise<ExecSession> {
      await runningQemu(spec);
      if (execOptions.command.length === 0) {
        throw invalidArgument('The command to run is empty: give at least a program.');
      }
      if ((await runStatus(spec)) === 'paused') {
        throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it first.`);
      }
      const own = await ownAgent(spec);
      return agents.exec(pathsOf(spec).agentSocket, {
        ...execOptions,
        env: { ...configValue.environment(spec.config), ...execOptions.env },
        ...(own && { busyboxPath: OWN_TOOLS }),
      });
    },

    async pushFile(spec, options) {
      await runningAgent(spec);
      const own = await ownAgent(spec);
      await agents.use(pathsOf(spec).agentSocket, { timeoutMs: AGENT_FILE_TIMEOUT_MS }, (client) =>
        qgaPushFile(client, { ...options, guest: spec.name, ...(own && { tools: OWN_TOOLS }) }),
      );
    },

    async pullFile(spec, path) {
      await runningAgent(spec);
      const own = await ownAgent(spec);
      return agents.use(pathsOf(spec).agentSocket, { timeoutMs: AGENT_FILE_TIMEOUT_MS }, (client) =>
        qgaPullFile(client, path, {
          maxBytes: GUEST_FILE_MAX_BYTES,
          guest: spec.name,
          ...(own && { tools: OWN_TOOLS }),
        }),
      );
    },

    async attachConsole(spec) {
      await runningQemu(spec);
      return consoles.claim(spec.name, () =>
        connectSerialConsole(pathsOf(spec).consoleSocket, { guestName: spec.name }),
      );
    },

    consoleLogPath(spec) {
      return pathsOf(spec).consoleLog;
    },

    async attachDisplay(spec) {
      await runningDisplay(spec);
      const id = randomBytes(4).toString('hex');
      return withQmp(spec, (q) => openDisplay(q, id));
    },

    async screenshot(spec) {
      await runningDisplay(spec);
      return withQmp(spec, (q) => screenshotPng(q, pathsOf(spec).dir));
    },

    async sendKeys(spec, keys) {
      const presses = keyPresses(keys);
      await runningDisplay(spec);
      if ((await runStatus(spec)) === 'paused') {
        throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it first.`);
      }
      await withQmp(spec, (q) => sendKeys(q, presses));
    },

    // QEMU counts each block backend's requests as the guest issued them: what the guest's disks did,
    // whatever the host's page cache made of it. Disks by node name (root, config, volumes).
    async diskCounters(spec, { process }) {
      if (!(await liveQemu(spec, process))) throw failedPrecondition(`Guest ${spec.name} is not running.`);
      const stats = await withQmp(spec, (q) =>
        q.execute<QmpBlockStats[]>('query-blockstats', { 'query-nodes': false }, { timeoutMs: 2000 }),
      );
      return diskCountersOf(stats);
    },

    // Through the agent, like exec: QEMU's own view (query-rx-filter, link state) knows no addresses.
    async observeNics(spec, { process, timeoutMs }) {
      if (!(await liveQemu(spec, process))) throw failedPrecondition(`Guest ${spec.name} is not running.`);
      const boot = await readBoot(spec);
      if (bootOf(boot) === 'kernel') {
        throw notSupported(`Guest ${spec.name} boots its own kernel without the guest agent.`);
      }
      if (bootOf(boot) === 'firmware') {
        // Its own OS: its own agent's view (guest-network-get-interfaces), when it runs one.
        if (!(await agents.ping(pathsOf(spec).agentSocket, { timeoutMs: Math.min(timeoutMs, 3000) }))) {
          throw notSupported(`Guest ${spec.name} runs no guest agent (qemu-guest-agent).`);
        }
        return {
          interfaces: await agents.use(pathsOf(spec).agentSocket, { timeoutMs }, (c) =>
            agentInterfaces(
              c.command<AgentInterface[]>('guest-network-get-interfaces', undefined, { timeoutMs }),
            ),
          ),
          engineErrors: [],
        };
      }
      return {
        interfaces: await probeGuestNics((g, o) => driver.exec(g, o), spec, { timeoutMs }),
        engineErrors: [],
      };
    },

    // A tap on the bridge as at start, then QMP: netdev_add on it and a virtio-net device on a
    // free NIC root port (q35) or the root bus (pc, ACPI hot-plug).
    async attachNic(spec, nic) {
      if (!ctx.network) throw failedPrecondition('Networking is not set up on this host.');
      await runningQemu(spec);
      const machine = (await readBoot(spec))?.machine ?? 'q35';
      if (machine === 'microvm') {
        throw failedPrecondition(
          `Guest ${spec.name} is a microvm, which has no hot-plug: stop it, attach the NIC and start it again`,
        );
      }
      const boot = await readBoot(spec);
      const t = await ctx.network.plugTap(spec, nic);
      const ids = nicEngineIds(nic);
      try {
        await withQmp(spec, async (q) => {
          // QEMU cannot open /dev/net/tun: the daemon attaches to the tap and hands it over
          // (getfd), and netdev_add takes it by that name.
          await q.executeWithFds('getfd', { fdname: ids.netdev }, [{ kind: 'tap', name: t.tap }]);
          try {
            await q.execute('netdev_add', { type: 'tap', id: ids.netdev, fd: ids.netdev });
          } catch (e) {
            await q.execute('closefd', { fdname: ids.netdev }).catch(() => {});
            throw e;
          }
          try {
            await addOnFreePort(q, 'nic', {
              machine,
              device: {
                driver: nicDriverOf(boot?.nicModel ?? 'virtio'),
                id: ids.device,
                netdev: ids.netdev,
                mac: t.mac,
              },
            });
          } catch (e) {
            await q.execute('netdev_del', { id: ids.netdev }).catch(() => {});
            throw e instanceof NoFreePortError
              ? failedPrecondition(
                  `Guest ${spec.name} has no free hot-plug port for a NIC (it has ${portCount('nic')}, one per NIC; a guest started before NIC hot-plug existed has none): stop it, attach the NIC and start it again`,
                )
              : e;
          }
        });
      } catch (e) {
        await ctx.network.unplugNic(spec, nic);
        throw e;
      }
      // An OS of its own brings its NICs up itself (udev, its network manager); the kit's are set here.
      if (bootOf(boot) !== 'kit') return 'live';
      const r = await runGuestScript(
        (g, o) => driver.exec(g, o),
        spec,
        nicUpScript({ name: nic, mac: t.mac, cidr: t.cidr }),
      ).catch((e) => ({ code: -1, output: String(e) }));
      if (r.code !== 0)
        log.warn({ guest: spec.name, nic, err: r.output }, 'the guest did not set up a hot-plugged NIC');
      return 'live';
    },

    // device_del needs the guest's consent (PCIe native hot-plug): wait for DEVICE_DELETED.
    async detachNic(spec, nic) {
      const ids = nicEngineIds(nic);
      if (await liveQemu(spec)) {
        await withQmp(spec, async (q) => {
          let deleted: () => void = () => {};
          const gone = new Promise<void>((resolve) => {
            deleted = resolve;
          });
          const off = q.onEvent((ev) => {
            if (ev.event === 'DEVICE_DELETED' && ev.data.device === ids.device) deleted();
          });
          try {
            let present = true;
            try {
              await q.execute('device_del', { id: ids.device });
            } catch (e) {
              const m = e instanceof Error ? e.message : String(e);
              if (/does not support hotplugging|not hotpluggable/i.test(m)) {
                throw failedPrecondition(
                  `NIC ${nic} of ${spec.name} sits on a bus without hot-plug: stop the guest to detach it`,
                );
              }
              // Not found: unplugged already, or a NIC of a guest started before NICs had ids
              // (removing its tap below cuts it off all the same).
              present = false;
            }
            if (present) {
              const timer = new Promise<'timeout'>((r) =>
                setTimeout(() => r('timeout'), NIC_UNPLUG_TIMEOUT_MS).unref(),
              );
              if ((await Promise.race([gone, timer])) === 'timeout') {
                throw unavailable(
                  `Guest ${spec.name} did not release NIC ${nic} within ${NIC_UNPLUG_TIMEOUT_MS / 1000} s (is it busy?): detach again, or stop the guest`,
                );
              }
            }
            await q.execute('netdev_del', { id: ids.netdev }).catch(() => {});
          } finally {
            off();
          }
        });
      }
      await ctx.network?.unplugNic(spec, nic);
      return 'live';
    },
  };
  return driver;
}

/** How long a guest may take to let go of an unplugged NIC (PCIe hot-plug waits about 5 s; TCG is slow). */
const NIC_UNPLUG_TIMEOUT_MS = 30_000;

const noDisk = (): Promise<string> => Promise.reject(new Error('no disk'));

/** How a started guest booted, also for boot records written before it was recorded. */
const bootOf = (boot: BootRecord | undefined): BootMode => boot?.boot ?? (boot?.foreign ? 'kernel' : 'kit');

/** One interface as QEMU's guest agent reports it (guest-network-get-interfaces). */
interface AgentInterface {
  name: string;
  'hardware-address'?: string;
  'ip-addresses'?: Array<{ 'ip-address-type': string; 'ip-address': string }>;
}

/** The agent's interfaces as the NIC observer takes them: IPv4 addresses, loopback left out. */
async function agentInterfaces(reply: Promise<AgentInterface[]>): Promise<GuestInterface[]> {
  return (await reply)
    .filter((i) => i.name !== 'lo')
    .map((i) => ({
      name: i.name,
      ...(i['hardware-address'] !== undefined && { mac: i['hardware-address'].toLowerCase() }),
      addresses: (i['ip-addresses'] ?? [])
        .filter((a) => a['ip-address-type'] === 'ipv4')
        .map((a) => a['ip-address']),
    }));
}

/** How a guest of this image boots: through its firmware (a disk image or a blank disk), another kernel, or the kit. */
export function bootModeOf(image: ImageHandle): BootMode {
  if (image.blank || image.record.type === 'disk') return 'firmware';
  return image.record.properties['vm.kernel'] ? 'kernel' : 'kit';
}

/**
 * Keys that only mean something for a guest that boots through its firmware are refused on
 * one the kit boots: its kernel is handed to QEMU directly, and its initramfs has virtio
 * drivers only.
 */
export function assertBootConfig(spec: GuestSpec, mode: BootMode): void {
  if (mode === 'firmware') return;
  const how = mode === 'kit' ? "Trivisor's kernel" : "its image's vm.kernel";
  const offending = [
    configValue.vmFirmware(spec.config) === 'uefi' && 'vm.firmware=uefi',
    configValue.vmSecureBoot(spec.config) && 'vm.secureboot=true',
    configValue.vmDiskBus(spec.config) === 'sata' && 'vm.disk_bus=sata',
    configValue.vmNicModel(spec.config) === 'e1000' && 'vm.nic_model=e1000',
  ].filter((k): k is string => typeof k === 'string');
  if (offending.length > 0) {
    throw failedPrecondition(
      `Guest ${spec.name} boots ${how} directly (with virtio devices), so ${offending.join(' and ')} cannot apply: it is for guests of disk images and ISO installs; unset ${offending.length > 1 ? 'them' : 'it'}.`,
    );
  }
}

/**
 * Image properties that boot another OS's kernel directly instead of the
 * cloud kernel and the kit: `vm.kernel` (host path), `vm.cmdline` (its whole
 * command line) and `vm.ready` (console text that means it is up). Such
 * guests have no agent: exec fails, and stop ends in a kill after the timeout
 * unless the OS acts on ACPI power-down.
 */
function foreignBootOf(
  image: ImageHandle,
): { kernel: string; cmdline: string[]; ready: string | undefined } | undefined {
  const kernel = image.record.properties['vm.kernel'];
  if (!kernel) return undefined;
  const cmdline = (image.record.properties['vm.cmdline'] ?? 'console=ttyS0,115200')
    .split(/\s+/)
    .filter(Boolean);
  return { kernel, cmdline, ready: image.record.properties['vm.ready'] };
}

/** Reads the pid file QEMU wrote (for tests and diagnostics). */
export async function readQemuPid(paths: VmGuestPaths): Promise<number | undefined> {
  const text = await readFile(paths.pidFile, 'utf8').catch(() => undefined);
  const pid = Number(text?.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** One entry of QMP's `query-blockstats` (the fields read here). */
interface QmpBlockStats {
  device?: string;
  'node-name'?: string;
  qdev?: string;
  stats: { rd_bytes: number; wr_bytes: number; rd_operations: number; wr_operations: number };
}

/**
 * Counters by disk: a backend's top node name (root, config, a volume's node), else its legacy
 * drive name; a CD-ROM drive without a medium has neither and is left out.
 */
export function diskCountersOf(stats: QmpBlockStats[]): Record<string, DiskCounters> {
  const out: Record<string, DiskCounters> = {};
  for (const s of stats) {
    const name = s['node-name'] || s.device;
    if (!name) continue;
    out[name] = {
      readBytes: s.stats.rd_bytes,
      writtenBytes: s.stats.wr_bytes,
      reads: s.stats.rd_operations,
      writes: s.stats.wr_operations,
    };
  }
  return out;
}
