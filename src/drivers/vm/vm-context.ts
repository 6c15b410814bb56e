import { readFile, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { conflict, failedPrecondition, internal } from '../../core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { removeCgroup } from '../../host/cgroups-v1.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import { createConsoleSlots } from '../console-slots.ts';
import { cgroupParentOf } from '../guest-cgroup.ts';
import type { DriverContext, GuestDriver } from '../guest-driver.ts';
import { createUidAllocator } from '../guest-uids.ts';
import {
  ACCELERATOR_ENV,
  type AcceleratorVerdict,
  chooseAccelerator,
  parseAcceleratorSetting,
} from './accelerator-probe.ts';
import { type BootKit, defaultBootDir, ensureBootKit, modulesDirOf } from './boot-kit.ts';
import { DEFAULT_OVMF_DIR, OVMF_DIR_ENV } from './firmware.ts';
import { type VmGuestPaths, vmGuestPaths } from './qemu-command.ts';
import { connectQmp, type QmpClient } from './qmp-client.ts';
import { createAgentPool } from './vm-agent.ts';
import { type BootRecord, bootOf } from './vm-boot.ts';
import type { VmDriverOptions } from './vm-driver.ts';
import { adoptLegacyRuntime, removeRuntimeFiles } from './vm-runtime-dir.ts';

// The settings and helpers the vm driver's parts share (cut out of createVmDriver, bodies verbatim).

/** The config disk (injected files) in the guest: the second virtio-blk disk, after the root. */
export const VM_CONFIG_DEVICE = '/dev/vdb';
/** How long one agent request of a file copy may wait for its answer. */
export const AGENT_FILE_TIMEOUT_MS = 30_000;
/** How often waits poll. */
export const POLL_MS = 100;
/** How long start() waits for the kit's init and its agent (TCG on a busy 2-core host is slow). */
export const DEFAULT_START_TIMEOUT_MS = 180_000;
/** How long exec and files wait for the agent of a guest's own OS before saying it has none. */
export const AGENT_DETECT_TIMEOUT_MS = 3000;
/** How long stop() waits for QEMU to exit after `quit` or SIGKILL. */
export const KILL_WAIT_MS = 10_000;
/** How long QEMU may take from exec to its QMP greeting (devices set up, main loop running). */
export const QEMU_READY_TIMEOUT_MS = 60_000;
/**
 * vm guests' host uids start this far above idmapBase: ct's user namespaces hold the first
 * 65,536 ids and pvm starts at 2 × 65,536 (pvm-driver.ts), so the block between is vm's.
 */
export const VM_UID_OFFSET = 65_536;
/** Per-guest uids `uidBase + slot`; the last slot is the accelerator probe's. */
export const UID_SLOTS = 65_536;
/** Line the guest kit prints when the image's init cannot run (it then starts a shell instead). */
export const KIT_INIT_FAILED = "trivisor: cannot run the image's init";
/**
 * Cgroup hierarchies the QEMU process is put in: usage and the cpu quota, and
 * systemd's (and the hybrid unified one), so that stopping the daemon's
 * service, which kills its cgroup there, leaves the guests running.
 */
export const CGROUP_HIERARCHIES = ['memory', 'cpu', 'cpuacct', 'pids', 'systemd', 'unified'] as const;
export const CGROUP_ROOT = '/sys/fs/cgroup';

/**
 * What runs a command in a guest without the kit: `env` finds the guest's own tools on its PATH
 * where the agent helpers would name the kit's busybox (`env sh -c …`, `env chmod …`).
 */
export const OWN_TOOLS = '/usr/bin/env';

export const exists = async (path: string): Promise<boolean> => {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
};

/** The vm driver's settings and shared helpers; `self` is the composed driver (a part calling another's method). */
export type VmContext = ReturnType<typeof createVmContext>;

export function createVmContext(ctx: DriverContext, options: VmDriverOptions, self: () => GuestDriver) {
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
  const allocateUid = createUidAllocator({
    stateDir,
    base: uidBase,
    // The block's last uid is the accelerator probe's (probeUid).
    slots: UID_SLOTS - 1,
    model: 'vm',
    uidFileOf: (spec) => pathsOf(spec).uidFile,
  });

  /**
   * A guest started before decision 0061 has its runtime files in its directory: they are adopted
   * into the runtime directory the first time they are looked for (the liveness checks do within
   * seconds of the daemon's start), and its QEMU runs on untouched.
   */
  const adoptLegacy = async (spec: GuestSpec): Promise<void> => {
    if (await adoptLegacyRuntime(pathsOf(spec))) {
      log.info(
        { guest: spec.name },
        "adopted the runtime files of a QEMU started before they had a directory of this member's",
      );
    }
  };

  const readBoot = async (spec: GuestSpec): Promise<BootRecord | undefined> => {
    await adoptLegacy(spec);
    return readFile(pathsOf(spec).bootRecord, 'utf8')
      .then((t) => JSON.parse(t) as BootRecord)
      .catch(() => undefined);
  };
  const writeBoot = (spec: GuestSpec, record: BootRecord): Promise<void> =>
    writeFile(pathsOf(spec).bootRecord, `${JSON.stringify(record, null, 2)}\n`);

  /** The live QEMU of a guest: `known` when given (never second-guessed), else what start recorded. */
  const liveQemu = async (spec: GuestSpec, known?: ProcessIdentity): Promise<ProcessIdentity | undefined> => {
    const identity = known ?? (await readBoot(spec))?.identity;
    return identity && (await isSameProcess(identity)) ? identity : undefined;
  };

  /** `timeoutMs`: the wait for QEMU's greeting and capabilities (default 5 s). */
  const withQmp = async <T>(
    spec: GuestSpec,
    work: (qmp: QmpClient) => Promise<T>,
    options: { timeoutMs?: number } = {},
  ): Promise<T> => {
    await adoptLegacy(spec);
    const qmp = await connectQmp(pathsOf(spec).qmpSocket, { timeoutMs: options.timeoutMs ?? 5000, runner });
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

  /**
   * A QEMU of the guest that still listens on its sockets though no boot record names it (one being
   * started, whose record comes after its sockets): its runtime is left alone, said in one warning.
   */
  const keptLive = (spec: GuestSpec, sockets: string[]): boolean => {
    if (sockets.length === 0) return false;
    log.warn(
      { guest: spec.name, sockets },
      "a QEMU still listens on the guest's sockets though its boot record does not name it: its runtime files are kept",
    );
    return true;
  };

  /** The refusal of a change that would take the runtime files of a QEMU no boot record names. */
  const unrecordedQemu = (spec: GuestSpec) =>
    conflict(
      `A QEMU of guest ${spec.name} that its boot record does not name yet runs on this member (it answers on ${pathsOf(spec).qmpSocket}): wait for the start in progress, or end that QEMU, and try again`,
    );

  /**
   * Removes what a started guest holds (sockets, pid file, cgroup); leaves disk, console log and dir.
   * Answers false, having removed nothing, while a QEMU still listens on the guest's sockets.
   */
  const cleanUpRuntime = async (spec: GuestSpec): Promise<boolean> => {
    const p = pathsOf(spec);
    if (keptLive(spec, await removeRuntimeFiles(p))) return false;
    agents.drop(p.agentSocket);
    // The taps are persistent: they outlive QEMU, and go only with the guest's runtime.
    if (ctx.network?.hasNics(spec)) await ctx.network.unplug(spec);
    // Threads of a QEMU that just exited may linger a moment in the cgroup.
    for (let i = 0; i < 20; i++) {
      if ((await removeCgroup(cgroupsPath(spec))).length === 0) break;
      await sleep(50);
    }
    return true;
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

  const runningQemu = async (spec: GuestSpec): Promise<ProcessIdentity> => {
    const q = await liveQemu(spec);
    if (!q) throw failedPrecondition(`Guest ${spec.name} is not running: start it first.`);
    return q;
  };

  const hostCpus = availableParallelism();

  /**
   * Guests whose QEMU this daemon is migrating out (decision 0042): from the start of the copy until
   * the guest is resumed here or its QEMU is gone. One found paused by a completed migration
   * (`postmigrate`) and not in here was left half way by a daemon that died: it runs again.
   */
  const migratingOut = new Set<string>();

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

  return {
    ctx,
    options,
    self,
    runner,
    stateDir,
    log,
    setting,
    machine,
    startTimeoutMs,
    cgroupParent,
    cgroupsPath,
    pathsOf,
    agents,
    consoles,
    uidBase,
    ovmfDir,
    probeUid,
    bootDir,
    bootKit,
    accelerator,
    readUid,
    allocateUid,
    adoptLegacy,
    readBoot,
    writeBoot,
    liveQemu,
    withQmp,
    runStatus,
    waitGone,
    cgroupDirsOf,
    setCpuQuota,
    keptLive,
    unrecordedQemu,
    cleanUpRuntime,
    killQemu,
    runningQemu,
    hostCpus,
    migratingOut,
    runningAgent,
    ownAgent,
    runningDisplay,
  };
}
