import { access, copyFile, lstat, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { configValue, PVM_DEFAULT_MEMORY_BYTES } from '../../core/config-keys.ts';
import { failedPrecondition, internal } from '../../core/errors.ts';
import { parseBytes } from '../../core/sizes.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import { createConsoleSlots } from '../console-slots.ts';
import { cgroupParentOf } from '../guest-cgroup.ts';
import type { DriverContext, GuestDriver } from '../guest-driver.ts';
import { type AgentConnection, connectAgent } from './pvm-agent.ts';
import type { PvmAgentMap } from './pvm-agent-pool.ts';
import { killUmlCgroup } from './uml-cgroup.ts';
import { createMconsoleClient, type MconsoleClient } from './uml-mconsole.ts';

export const MiB = 1024 * 1024;
/** Guest RAM when limits.memory is not set. */
/** Below this the kernel, busybox and qemu-ga do not fit: UML panics or the OOM killer takes the agent. */
export const PVM_MIN_MEMORY_BYTES = 32 * MiB;
/** Host memory a UML kernel needs beyond its guest RAM (its own text, helper stacks, page tables). */
export const HOST_OVERHEAD_BYTES = 64 * MiB;
/** Host processes a UML kernel needs beyond one per guest process (I/O and SIGIO helpers). */
export const HOST_HELPER_PIDS = 16;
/** Where Debian's user-mode-linux puts the kernel. */
export const DEFAULT_UML_KERNEL = '/usr/bin/linux.uml';
/** Where a pvm guest's kernel keeps its mconsole socket: `STATE/run/pvm/<guest>/uml/<UMID>/mconsole`. */
export const UMID = 'uml';
/** Per-guest host uids: `uidBase + slot`, slots allocated at create and kept in the guest dir. */
export const UID_SLOTS = 65_536;
/** Where pvm guests' uids start above the id base: its third block of 65536 (decision 18). */
export const PVM_UID_OFFSET = 2 * 65_536;

export const POLL_MS = 50;
/** How long start() waits for the kit's marker on the console (a contended host boots slowly). */
export const BOOT_TIMEOUT_MS = 90_000;
/** How long stop() waits after `halt` and after SIGKILL. */
export const HALT_WAIT_MS = 5_000;
export const KILL_WAIT_MS = 10_000;
/** How long the agent may take to ask init to power off. */
export const AGENT_STOP_TIMEOUT_MS = 5_000;
/** Longest unix socket path (sun_path is 108 bytes with its NUL). */
export const MAX_SOCKET_PATH = 107;
/** How long start() waits for bwrap to fork the process that becomes the kernel. */
export const JAIL_FORK_TIMEOUT_MS = 10_000;

/** What a pvm driver is built with on top of the shared context. */
export interface PvmDriverOptions {
  /** linux.uml to boot (Debian's user-mode-linux by default). */
  kernelPath?: string;
  /**
   * First host uid of pvm guests; guest n runs as `uidBase + n` with the same
   * gid. Defaults to `idmapBase + 131072`, beyond the 65536 ids of ct's
   * user namespaces (and a block left for vm).
   */
  uidBase?: number;
  /** The agent connections, shared with the pvm storage (a serial line carries one conversation). */
  agents?: PvmAgentMap;
}

/**
 * Where a pvm guest keeps its files under the state dir. What a running UML owns (its uml_dir
 * with the pid file and mconsole socket, the process record, the FIFOs, the frozen mark) is in
 * its runtime directory `STATE/run/pvm/NAME` (decision 0066), on this member, never in the guest's
 * directory, which may be on a shared pool where another member ran the guest before.
 */
export interface PvmGuestPaths {
  /** root 0700: the kernel sees only what its jail binds of it (disk/, the config disk). */
  dir: string;
  /** root 0700, this member's: `STATE/run/pvm/NAME`. */
  runtimeDir: string;
  consoleLog: string;
  /** JSON {pid, startTime} of the main UML process (root-owned: the guest's uid cannot redirect our kills). */
  processFile: string;
  /** The host uid the guest runs as. */
  uidFile: string;
  /** Present while the kernel is stopped through mconsole. */
  frozenFile: string;
  /** Owned by the guest uid, 0700: the copy-on-write file. */
  diskDir: string;
  cow: string;
  /** A whole private disk instead of the COW file, when limits.disk asks for more than the base disk. */
  raw: string;
  /** Owned by the guest uid, 0700, in the runtime directory: `uml_dir`, holding `<umid>/mconsole` and `<umid>/pid`. */
  runDir: string;
  mconsoleSocket: string;
  /** FIFOs of the agent's serial line (root's, 0600: the kernel gets them as open fds). */
  agentIn: string;
  agentOut: string;
  /** FIFO con0 reads (root's, 0600, fd 5 of the kernel): what `trivisor console` types. */
  consoleIn: string;
  /** The jail's seccomp program (root's, 0600), written at every start for bwrap to read. */
  seccomp: string;
}

export interface ProcessRecord extends ProcessIdentity {
  uid: number;
  memoryBytes: number;
}

/** Where a UML started before decision 0066 kept its runtime files, in the guest's directory. */
export const LEGACY_RUNTIME_FILES = {
  processFile: 'uml.json',
  frozenFile: 'frozen',
  agentIn: 'agent.in',
  agentOut: 'agent.out',
  consoleIn: 'console.in',
  seccomp: 'seccomp.bpf',
} as const;

export const exists = async (path: string): Promise<boolean> => {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
};

/** What every part of the pvm driver shares: its dependencies and the helpers over them. */
export type PvmContext = ReturnType<typeof createPvmContext>;

/**
 * The driver's shared state and helpers; `self` is the composed driver, for one part
 * calling another's method (as `driver.X` did inside the one closure).
 */
export function createPvmContext(ctx: DriverContext, options: PvmDriverOptions, self: () => GuestDriver) {
  const { runner, stateDir } = ctx;
  const log = ctx.log.child({ driver: 'pvm' });
  const kernelPath = options.kernelPath ?? DEFAULT_UML_KERNEL;
  const uidBase = options.uidBase ?? ctx.idmapBase + PVM_UID_OFFSET;
  const cgroupParent = cgroupParentOf(stateDir);
  const cgroupsPath = (spec: GuestSpec): string => `${cgroupParent}/${spec.name}`;
  const agents: PvmAgentMap = options.agents ?? new Map<string, Promise<AgentConnection>>();
  const consoles = createConsoleSlots();

  const pathsOf = (spec: GuestSpec): PvmGuestPaths => {
    const dir = join(stateDir, 'guests', spec.name);
    const runtimeDir = join(stateDir, 'run', 'pvm', spec.name);
    const runDir = join(runtimeDir, 'uml');
    return {
      dir,
      runtimeDir,
      consoleLog: join(dir, 'console.log'),
      processFile: join(runtimeDir, 'uml.json'),
      uidFile: join(dir, 'uid'),
      frozenFile: join(runtimeDir, 'frozen'),
      diskDir: join(dir, 'disk'),
      cow: join(dir, 'disk', 'root.cow'),
      raw: join(dir, 'disk', 'root.img'),
      runDir,
      mconsoleSocket: join(runDir, UMID, 'mconsole'),
      agentIn: join(runtimeDir, 'agent.in'),
      agentOut: join(runtimeDir, 'agent.out'),
      consoleIn: join(runtimeDir, 'console.in'),
      seccomp: join(runtimeDir, 'seccomp.bpf'),
    };
  };

  /**
   * Adopts a guest started before decision 0066, whose runtime files are in its directory: its UML
   * runs on, found through the new names. Its sockets and FIFOs cannot move (a listening socket is
   * bound to its path; the kernel holds the FIFOs open), so the runtime directory gets symbolic
   * links to them, which connect() and open() follow; its frozen mark moves, and its process record
   * is written last (its presence says the adoption is done) and the old one removed. Idempotent,
   * and safe when two callers race. Answers whether it adopted anything.
   */
  const adoptLegacyRuntime = async (spec: GuestSpec): Promise<boolean> => {
    const p = pathsOf(spec);
    if (await lstat(p.processFile).catch(() => undefined)) return false;
    const old = join(p.dir, LEGACY_RUNTIME_FILES.processFile);
    const record = await readFile(old, 'utf8').catch(() => undefined);
    if (record === undefined) return false;
    await mkdir(p.runtimeDir, { recursive: true, mode: 0o700 });
    await mkdir(join(p.runDir, UMID), { recursive: true, mode: 0o700 });
    const links: Array<[string, string]> = [
      [join(p.dir, 'run', UMID, 'mconsole'), p.mconsoleSocket],
      [join(p.dir, LEGACY_RUNTIME_FILES.agentIn), p.agentIn],
      [join(p.dir, LEGACY_RUNTIME_FILES.agentOut), p.agentOut],
      [join(p.dir, LEGACY_RUNTIME_FILES.consoleIn), p.consoleIn],
    ];
    for (const [target, path] of links) {
      if (!(await lstat(target).catch(() => undefined))) continue;
      await symlink(target, path).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
    }
    const frozen = join(p.dir, LEGACY_RUNTIME_FILES.frozenFile);
    if (await lstat(frozen).catch(() => undefined)) {
      await copyFile(frozen, p.frozenFile).catch(() => {});
      await rm(frozen, { force: true });
    }
    const tmp = `${p.processFile}.${process.pid}.tmp`;
    await writeFile(tmp, record, { mode: 0o600 });
    await rename(tmp, p.processFile);
    await rm(old, { force: true });
    log.info({ guest: spec.name }, 'runtime files of a guest started before decision 0066 adopted');
    return true;
  };

  /**
   * Removes what a UML left in the guest's directory before decision 0066 (its uml_dir, process
   * record, FIFOs, seccomp program, frozen mark): on a shared pool they may be another member's.
   */
  const removeLegacyRuntime = async (spec: GuestSpec): Promise<void> => {
    const p = pathsOf(spec);
    await rm(join(p.dir, 'run'), { recursive: true, force: true });
    for (const f of Object.values(LEGACY_RUNTIME_FILES)) await rm(join(p.dir, f), { force: true });
  };

  const mconsoleOf = (spec: GuestSpec): MconsoleClient =>
    createMconsoleClient(pathsOf(spec).mconsoleSocket, { runner });

  const diskBytesOf = (spec: GuestSpec): number | undefined =>
    spec.config['limits.disk'] ? parseBytes(spec.config['limits.disk'], 'limits.disk') : undefined;

  const memoryOf = (spec: GuestSpec): number =>
    configValue.memoryBytes(spec.config) ?? PVM_DEFAULT_MEMORY_BYTES;

  const readRecord = async (spec: GuestSpec): Promise<ProcessRecord | undefined> => {
    await adoptLegacyRuntime(spec);
    try {
      const r = JSON.parse(await readFile(pathsOf(spec).processFile, 'utf8')) as ProcessRecord;
      return Number.isInteger(r.pid) && Number.isInteger(r.startTime) ? r : undefined;
    } catch {
      return undefined;
    }
  };

  /** The live main UML process: `known` when given (never second-guessed), else what start() recorded. */
  const liveUml = async (spec: GuestSpec, known?: ProcessIdentity): Promise<ProcessIdentity | undefined> => {
    const record = known ?? (await readRecord(spec));
    if (!record) return undefined;
    const identity = { pid: record.pid, startTime: record.startTime };
    return (await isSameProcess(identity)) ? identity : undefined;
  };

  const waitGone = async (identity: ProcessIdentity, timeoutMs: number): Promise<boolean> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!(await isSameProcess(identity))) return true;
      if (Date.now() >= deadline) return false;
      await sleep(POLL_MS);
    }
  };

  const dropAgent = (spec: GuestSpec): void => {
    const pending = agents.get(spec.name);
    agents.delete(spec.name);
    pending?.then((a) => a.close()).catch(() => {});
  };

  /** One agent connection per guest and driver: the serial line carries one conversation at a time. */
  const agentOf = (spec: GuestSpec, timeoutMs: number): Promise<AgentConnection> => {
    let pending = agents.get(spec.name);
    if (!pending) {
      const p = pathsOf(spec);
      pending = adoptLegacyRuntime(spec).then(() =>
        connectAgent({ toGuest: p.agentIn, fromGuest: p.agentOut }, { timeoutMs, guestName: spec.name }),
      );
      agents.set(spec.name, pending);
      pending.then(
        (a) => a.onClose(() => agents.get(spec.name) === pending && agents.delete(spec.name)),
        () => agents.get(spec.name) === pending && agents.delete(spec.name),
      );
    }
    return pending;
  };

  /** Removes what a started guest holds (processes, cgroup, mconsole dir, records); keeps disk and log. */
  const cleanUpRuntime = async (spec: GuestSpec): Promise<void> => {
    const p = pathsOf(spec);
    dropAgent(spec);
    if (!(await killUmlCgroup(cgroupsPath(spec), KILL_WAIT_MS))) {
      throw internal(`Guest ${spec.name}'s UML processes survived SIGKILL: check the host for stuck I/O.`);
    }
    if (await exists(p.runDir)) {
      await rm(join(p.runDir, UMID), { recursive: true, force: true });
    }
    await rm(p.processFile, { force: true });
    await rm(p.frozenFile, { force: true });
    // Links of an adopted guest, and a pre-0066 UML's files in the guest's directory.
    for (const f of [p.agentIn, p.agentOut, p.consoleIn]) {
      if ((await lstat(f).catch(() => undefined))?.isSymbolicLink()) await rm(f, { force: true });
    }
    await removeLegacyRuntime(spec);
    // The taps are persistent: they outlive the kernel, and go only with the guest's runtime.
    if (ctx.network?.hasNics(spec)) await ctx.network.unplug(spec);
  };

  const readUid = async (spec: GuestSpec): Promise<number> => {
    const text = await readFile(pathsOf(spec).uidFile, 'utf8').catch(() => '');
    const uid = Number(text.trim());
    if (!Number.isInteger(uid) || uid < uidBase || uid >= uidBase + UID_SLOTS) {
      throw failedPrecondition(
        `Guest ${spec.name} has no valid host uid in ${pathsOf(spec).uidFile}: delete and recreate it.`,
      );
    }
    return uid;
  };

  const runningUml = async (spec: GuestSpec): Promise<ProcessIdentity> => {
    const identity = await liveUml(spec);
    if (!identity) throw failedPrecondition(`Guest ${spec.name} is not running: start it first.`);
    return identity;
  };

  const nicSlotsFile = (spec: GuestSpec) => join(pathsOf(spec).dir, 'nic-slots.json');
  /** Which ethN carries which NIC; `adding`, a NIC being hot-plugged, is not among them yet. */
  async function readNicSlots(spec: GuestSpec, adding?: string): Promise<Record<string, number>> {
    const text = await readFile(nicSlotsFile(spec), 'utf8').catch(() => undefined);
    if (text !== undefined) return JSON.parse(text) as Record<string, number>;
    // A guest started before the record existed: its NICs are ethN in the spec's order.
    const nics = Object.entries(spec.devices ?? {}).filter(([n, d]) => d.type === 'nic' && n !== adding);
    return Object.fromEntries(nics.map(([name], i) => [name, i]));
  }
  async function writeNicSlots(spec: GuestSpec, slots: Record<string, number>): Promise<void> {
    await writeFile(nicSlotsFile(spec), `${JSON.stringify(slots)}\n`, { mode: 0o644 });
  }

  function limitsOf(spec: GuestSpec): { memoryBytes: number; cpus?: number; pids?: number } {
    const limits: { memoryBytes: number; cpus?: number; pids?: number } = {
      memoryBytes: memoryOf(spec) + HOST_OVERHEAD_BYTES,
    };
    const cpus = configValue.cpus(spec.config);
    if (cpus !== undefined) limits.cpus = cpus;
    const processes = configValue.processes(spec.config);
    if (processes !== undefined) limits.pids = processes + HOST_HELPER_PIDS;
    return limits;
  }

  return {
    ctx,
    self,
    runner,
    stateDir,
    log,
    kernelPath,
    uidBase,
    cgroupParent,
    cgroupsPath,
    agents,
    consoles,
    pathsOf,
    mconsoleOf,
    diskBytesOf,
    memoryOf,
    readRecord,
    liveUml,
    waitGone,
    dropAgent,
    agentOf,
    cleanUpRuntime,
    adoptLegacyRuntime,
    readUid,
    runningUml,
    readNicSlots,
    writeNicSlots,
    limitsOf,
  };
}
