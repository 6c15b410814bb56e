import {
  access,
  chmod,
  chown,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  readlink,
  realpath,
  rename,
  rm,
  stat,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, isAbsolute, join, posix } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { configValue, isLiveKey, PVM_DEFAULT_MEMORY_BYTES } from '../../core/config-keys.ts';
import {
  failedPrecondition,
  internal,
  invalidArgument,
  isTrivisorError,
  notSupported,
  unavailable,
} from '../../core/errors.ts';
import { GUEST_FILE_MAX_BYTES, injectedFiles } from '../../core/guest-files.ts';
import { withRevert } from '../../core/revert.ts';
import { parseBytes } from '../../core/sizes.ts';
import type { GuestSpec, GuestUsage, ProcessIdentity } from '../../core/types.ts';
import { readCgroupUsage, removeCgroup } from '../../host/cgroups-v1.ts';
import { ensureSharedMount } from '../../host/mounts.ts';
import { isSameProcess, readChildPids, readProcessIdentity } from '../../host/proc-stat.ts';
import type { QgaClient } from '../../host/qga-client.ts';
import { qgaPullFile, qgaPushFile } from '../../host/qga-files.ts';
import { imageInitArgv, KIT_INIT_MARKER } from '../../images/guest-kit.ts';
import { writeConfigDisk } from '../config-disk.ts';
import { createConsoleSlots } from '../console-slots.ts';
import { cgroupParentOf } from '../ct/ct-driver.ts';
import type {
  DriverContext,
  ExecSession,
  GuestDriver,
  ImageHandle,
  ProbeResult,
  RuntimeState,
} from '../guest-driver.ts';
import { nicDownScript, nicUpScript, probeGuestNics, runGuestScript } from '../guest-nic.ts';
import { type AgentConnection, connectAgent } from './pvm-agent.ts';
import type { PvmAgentMap } from './pvm-agent-pool.ts';
import { bootVolumes, preparePvmVolumes, umlVolumeArgs } from './pvm-volumes.ts';
import { killUmlCgroup, makeUmlCgroup, setUmlCgroupLimits } from './uml-cgroup.ts';
import { privateTunArgv, umlArgv } from './uml-command.ts';
import { openUmlConsole } from './uml-console.ts';
import { readUmlCowHeader } from './uml-cow.ts';
import { BWRAP, JAIL_CPUINFO_FD, JAIL_SECCOMP_FD, programFilesOf, SETPRIV, umlJailArgv } from './uml-jail.ts';
import { createMconsoleClient, type MconsoleClient } from './uml-mconsole.ts';
import { readTail, umlNicErrors } from './uml-net-log.ts';
import { umlSeccompProgram } from './uml-seccomp.ts';

const MiB = 1024 * 1024;
/** Guest RAM when limits.memory is not set. */
/** Below this the kernel, busybox and qemu-ga do not fit: UML panics or the OOM killer takes the agent. */
export const PVM_MIN_MEMORY_BYTES = 32 * MiB;
/** Host memory a UML kernel needs beyond its guest RAM (its own text, helper stacks, page tables). */
const HOST_OVERHEAD_BYTES = 64 * MiB;
/** Host processes a UML kernel needs beyond one per guest process (I/O and SIGIO helpers). */
const HOST_HELPER_PIDS = 16;
/** Where Debian's user-mode-linux puts the kernel. */
export const DEFAULT_UML_KERNEL = '/usr/bin/linux.uml';
/** Where a pvm guest's kernel keeps its mconsole socket: `<guest>/run/<UMID>/mconsole`. */
const UMID = 'uml';
/** Per-guest host uids: `uidBase + slot`, slots allocated at create and kept in the guest dir. */
const UID_SLOTS = 65_536;

const POLL_MS = 50;
/** How long start() waits for the kit's marker on the console (a contended host boots slowly). */
const BOOT_TIMEOUT_MS = 90_000;
/** How long stop() waits after `halt` and after SIGKILL. */
const HALT_WAIT_MS = 5_000;
const KILL_WAIT_MS = 10_000;
/** How long the agent may take to ask init to power off. */
const AGENT_STOP_TIMEOUT_MS = 5_000;
/** Longest unix socket path (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;
/** How long start() waits for bwrap to fork the process that becomes the kernel. */
const JAIL_FORK_TIMEOUT_MS = 10_000;

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

/** Where a pvm guest keeps its files under the state dir. */
export interface PvmGuestPaths {
  /** root 0700: the kernel sees only what its jail binds of it (disk/, run/, the config disk). */
  dir: string;
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
  /** Owned by the guest uid, 0700: `uml_dir`, holding `<umid>/mconsole` and `<umid>/pid`. */
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

interface ProcessRecord extends ProcessIdentity {
  uid: number;
  memoryBytes: number;
}

const exists = async (path: string): Promise<boolean> => {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
};

/**
 * Whether `path` names an executable inside the root tree `root`, following
 * symlinks as the guest would (absolute links resolve inside the root).
 */
async function existsInRoot(root: string, path: string): Promise<boolean> {
  let current = posix.normalize(path);
  for (let hops = 0; hops < 40; hops++) {
    let resolved = '/';
    const parts = current.split('/').filter((p) => p !== '');
    let relinked = false;
    for (let i = 0; i < parts.length; i++) {
      const next = posix.join(resolved, parts[i] ?? '');
      const host = join(root, next);
      let target: string | undefined;
      try {
        target = await readlink(host);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EINVAL') {
          resolved = next;
          continue;
        }
        return false;
      }
      const rest = parts.slice(i + 1).join('/');
      current = posix.join(posix.isAbsolute(target) ? target : posix.join(resolved, target), rest);
      relinked = true;
      break;
    }
    if (!relinked) return (await stat(join(root, resolved)).catch(() => undefined))?.isFile() ?? false;
  }
  return false;
}

/**
 * User-Mode Linux behind the `pvm` model: one linux.uml kernel per guest,
 * running as its own unprivileged host uid in its own cgroup, its disk a UML
 * copy-on-write file over the image's shared base disk, controlled through
 * its mconsole socket, with qemu-ga inside on the serial line ssl1.
 */
export function createPvmDriver(ctx: DriverContext, options: PvmDriverOptions = {}): GuestDriver {
  const { runner, stateDir } = ctx;
  const log = ctx.log.child({ driver: 'pvm' });
  const kernelPath = options.kernelPath ?? DEFAULT_UML_KERNEL;
  const uidBase = options.uidBase ?? ctx.idmapBase + 2 * 65_536;
  const cgroupParent = cgroupParentOf(stateDir);
  const cgroupsPath = (spec: GuestSpec): string => `${cgroupParent}/${spec.name}`;
  const agents: PvmAgentMap = options.agents ?? new Map<string, Promise<AgentConnection>>();
  let uidLock: Promise<unknown> = Promise.resolve();
  const consoles = createConsoleSlots();
  // What the jail binds for the kernel to run: linux.uml, setpriv and the libraries they load.
  let programFiles: Promise<string[]> | undefined;
  const jailProgramFiles = (): Promise<string[]> => {
    programFiles ??= programFilesOf([kernelPath, SETPRIV], runner).catch((e: unknown) => {
      programFiles = undefined;
      throw e;
    });
    return programFiles;
  };
  // The launcher's mount namespace (privateTunArgv), where bwrap's first process waits while
  // the guest runs, and the jail's binds of the guest's dirs follow the state dir's mounts as
  // slaves: made shared once, before the first guest starts.
  let sharedStateDir: Promise<void> | undefined;
  const ensureSharedStateDir = (): Promise<void> => {
    sharedStateDir ??= ensureSharedMount(stateDir, { runner }).then(
      (r) => {
        if (r === 'busy') {
          log.warn(
            { stateDir },
            'the state dir is not on a shared mount and has mounts below it: pvm guests keep copies of them until they stop',
          );
        }
      },
      (e: unknown) => {
        sharedStateDir = undefined;
        throw e;
      },
    );
    return sharedStateDir;
  };

  const pathsOf = (spec: GuestSpec): PvmGuestPaths => {
    const dir = join(stateDir, 'guests', spec.name);
    const runDir = join(dir, 'run');
    return {
      dir,
      consoleLog: join(dir, 'console.log'),
      processFile: join(dir, 'uml.json'),
      uidFile: join(dir, 'uid'),
      frozenFile: join(dir, 'frozen'),
      diskDir: join(dir, 'disk'),
      cow: join(dir, 'disk', 'root.cow'),
      raw: join(dir, 'disk', 'root.img'),
      runDir,
      mconsoleSocket: join(runDir, UMID, 'mconsole'),
      agentIn: join(dir, 'agent.in'),
      agentOut: join(dir, 'agent.out'),
      consoleIn: join(dir, 'console.in'),
      seccomp: join(dir, 'seccomp.bpf'),
    };
  };

  const mconsoleOf = (spec: GuestSpec): MconsoleClient =>
    createMconsoleClient(pathsOf(spec).mconsoleSocket, { runner });

  const diskBytesOf = (spec: GuestSpec): number | undefined =>
    spec.config['limits.disk'] ? parseBytes(spec.config['limits.disk'], 'limits.disk') : undefined;

  const memoryOf = (spec: GuestSpec): number =>
    configValue.memoryBytes(spec.config) ?? PVM_DEFAULT_MEMORY_BYTES;

  const readRecord = async (spec: GuestSpec): Promise<ProcessRecord | undefined> => {
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
      pending = connectAgent(
        { toGuest: p.agentIn, fromGuest: p.agentOut },
        { timeoutMs, guestName: spec.name },
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

  /** The lowest uid no other pvm guest of this state dir holds (serialised: two creates must not share one). */
  const allocateUid = (spec: GuestSpec): Promise<number> => {
    const work = uidLock.then(async () => {
      const taken = new Set<number>();
      const guestsDir = join(stateDir, 'guests');
      for (const name of await readdir(guestsDir).catch(() => [] as string[])) {
        if (name === spec.name) continue;
        const text = await readFile(join(guestsDir, name, 'uid'), 'utf8').catch(() => '');
        if (text.trim() !== '') taken.add(Number(text.trim()));
      }
      for (let uid = uidBase; uid < uidBase + UID_SLOTS; uid++) {
        if (!taken.has(uid)) {
          await writeFile(pathsOf(spec).uidFile, `${uid}\n`, { mode: 0o644 });
          return uid;
        }
      }
      throw failedPrecondition(`All ${UID_SLOTS} pvm host uids are in use: delete unused pvm guests.`);
    });
    uidLock = work.catch(() => {});
    return work;
  };

  const checkKernel = async (): Promise<void> => {
    try {
      await access(kernelPath);
    } catch {
      throw failedPrecondition(
        `The UML kernel ${kernelPath} is missing: install Debian's user-mode-linux package (apt-get install user-mode-linux).`,
      );
    }
  };

  /** Waits for the kit's marker in the console output after `offset`; throws when UML dies first. */
  const waitForInit = async (spec: GuestSpec, identity: ProcessIdentity, offset: number): Promise<void> => {
    const p = pathsOf(spec);
    const deadline = Date.now() + BOOT_TIMEOUT_MS;
    for (;;) {
      const text = (await readFile(p.consoleLog).catch(() => Buffer.alloc(0)))
        .subarray(offset)
        .toString('utf8');
      if (text.includes(KIT_INIT_MARKER)) {
        // The kit falls back to a shell when the image's init cannot run: that boot failed.
        if (/trivisor: cannot run the image's init/.test(text)) {
          throw invalidArgument(
            `Guest ${spec.name}'s image init cannot run: fix the image's init property; see ${p.consoleLog}.`,
          );
        }
        return;
      }
      // The last lines, and the panic's own line (a stack trace after it would hide why).
      const lines = text.trim().split('\n');
      const panic = lines.find((l) => /Kernel panic|not syncing/.test(l))?.trim();
      const last = lines.slice(-3).join(' ');
      const tail = (panic && !last.includes(panic) ? `${panic} … ${last}` : last).slice(0, 400);
      if (!(await isSameProcess(identity))) {
        throw internal(`Guest ${spec.name}'s UML kernel exited while booting: ${tail || 'no output'}.`);
      }
      if (Date.now() >= deadline) {
        throw unavailable(
          `Guest ${spec.name} did not reach init within ${BOOT_TIMEOUT_MS / 1000}s: ${tail || 'no output'}.`,
        );
      }
      await sleep(POLL_MS);
    }
  };

  /** Asks the guest's init to power off with the image's stop signal, through the agent; false when it cannot. */
  const askInitToStop = async (spec: GuestSpec): Promise<boolean> => {
    const signal = (
      await readFile(join(pathsOf(spec).dir, 'stop-signal'), 'utf8').catch(() => 'SIGTERM')
    ).trim();
    try {
      const agent = await agentOf(spec, AGENT_STOP_TIMEOUT_MS);
      await agent.signalInit(signal, AGENT_STOP_TIMEOUT_MS);
      return true;
    } catch (e) {
      log.debug({ guest: spec.name, err: String(e) }, 'the agent could not ask init to stop');
      dropAgent(spec);
      return false;
    }
  };

  /**
   * The base disk to boot a COW file over, by the path its header names (UML rewrites a
   * header whose path differs) and the real file the jail binds there. The kernel owns its
   * COW file, header included, so a kernel a guest took over could name any host file there,
   * which root would bind into its jail at the next start: only an image's base disk (beside
   * the image's current one, or under the state dir's images) is taken. A header naming a
   * file that is gone gets the image's current base disk, as before.
   */
  const baseDiskOf = async (
    spec: GuestSpec,
    image: ImageHandle,
    madeOver: string | undefined,
  ): Promise<{ path: string; source: string }> => {
    const current = await image.baseDisk();
    if (!madeOver || !(await exists(madeOver))) return { path: current, source: current };
    const real = await realpath(madeOver);
    const allowed = [
      dirname(await realpath(current)),
      await realpath(join(stateDir, 'images')).catch(() => join(stateDir, 'images')),
    ];
    if (!allowed.some((d) => real.startsWith(`${d}/`)) || !(await stat(real)).isFile()) {
      throw failedPrecondition(
        `Guest ${spec.name}'s disk names a backing file that is not an image's base disk (${madeOver.slice(0, 200)}): it is not given to the kernel; restore a snapshot or backup of the guest, or recreate it.`,
      );
    }
    return { path: madeOver, source: real };
  };

  /**
   * The process that becomes the kernel. bwrap forks once and its first process stays outside
   * the jail (as root without capabilities) until the kernel exits, so the launcher's pid is
   * bwrap's and the kernel is its only child. Until the launcher has exec'd bwrap, its children
   * are the mount, mknod and chown of privateTunArgv: only a child of bwrap counts.
   */
  const jailedKernel = async (spec: GuestSpec, launcher: ProcessIdentity): Promise<ProcessIdentity> => {
    const p = pathsOf(spec);
    const deadline = Date.now() + JAIL_FORK_TIMEOUT_MS;
    for (;;) {
      const exe = await readlink(`/proc/${launcher.pid}/exe`).catch(() => '');
      if (exe === BWRAP && (await isSameProcess(launcher))) {
        const [child] = await readChildPids(launcher.pid);
        const identity = child === undefined ? undefined : await readProcessIdentity(child);
        if (identity) return identity;
      }
      if (!(await isSameProcess(launcher))) {
        const tail = (await readTail(p.consoleLog).catch(() => '')).trim().split('\n').slice(-2).join(' ');
        throw internal(
          `Guest ${spec.name}'s UML jail could not be made: ${tail.slice(0, 400) || 'no output'} (see ${p.consoleLog}).`,
        );
      }
      if (Date.now() >= deadline) {
        throw unavailable(
          `Guest ${spec.name}'s UML jail did not start its kernel within ${JAIL_FORK_TIMEOUT_MS / 1000}s.`,
        );
      }
      await sleep(10);
    }
  };

  /** A running, unfrozen guest whose agent can take file requests. */
  const runningAgent = async (spec: GuestSpec): Promise<void> => {
    await runningUml(spec);
    if (await exists(pathsOf(spec).frozenFile)) {
      throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it first.`);
    }
  };

  /** Runs `work` on the guest's agent connection; a connection that stopped answering is dropped. */
  const withAgent = async <T>(spec: GuestSpec, work: (client: QgaClient) => Promise<T>): Promise<T> => {
    const agent = await agentOf(spec, 30_000);
    try {
      return await work(agent.client);
    } catch (e) {
      if (isTrivisorError(e) && e.code === 'Unavailable') dropAgent(spec);
      throw e;
    }
  };

  const runningUml = async (spec: GuestSpec): Promise<ProcessIdentity> => {
    const identity = await liveUml(spec);
    if (!identity) throw failedPrecondition(`Guest ${spec.name} is not running: start it first.`);
    return identity;
  };

  const driver: GuestDriver = {
    model: 'pvm',

    async probe(): Promise<ProbeResult> {
      const warnings: string[] = [];
      const details: Record<string, string> = { kernel: kernelPath, uidBase: String(uidBase) };
      let version = '';
      if (await exists(kernelPath)) {
        const r = await runner
          .run([kernelPath, '--version'], { allowFailure: true, timeoutMs: 10_000 })
          .catch(() => undefined);
        version = r?.stdout.trim().split('\n')[0] ?? '';
        if (!version) version = 'unknown';
      } else {
        warnings.push(`${kernelPath} is missing: install Debian's user-mode-linux package.`);
      }
      const mconsole = await runner
        .run(['uml_mconsole', '--help'], { allowFailure: true })
        .catch(() => undefined);
      if (!mconsole) warnings.push("uml_mconsole is missing: install Debian's uml-utilities package.");
      const setpriv = await runner.run([SETPRIV, '--version'], { allowFailure: true }).catch(() => undefined);
      if (setpriv?.code !== 0)
        warnings.push(`${SETPRIV} (util-linux) is missing: pvm guests cannot drop root.`);
      if (!(await exists(BWRAP))) {
        warnings.push(
          `${BWRAP} is missing: pvm guests cannot be jailed; install Debian's bubblewrap package.`,
        );
      }
      // The jail's seccomp filter is written for x86_64 system call numbers.
      if (process.arch !== 'x64') warnings.push(`pvm guests need an x86_64 host, not ${process.arch}.`);
      if (!(await exists(join('/sys/fs/cgroup/pids'))))
        warnings.push('The cgroup v1 pids hierarchy is missing.');
      details.cgroupParent = cgroupParent;
      return { model: 'pvm', supported: warnings.length === 0, version, warnings, details };
    },

    validate(spec) {
      if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(spec.name)) {
        throw invalidArgument(
          `Guest name ${JSON.stringify(spec.name)} is not a DNS label: use a-z, 0-9 and -.`,
        );
      }
      const memory = memoryOf(spec);
      if (memory < PVM_MIN_MEMORY_BYTES) {
        throw invalidArgument(
          `limits.memory=${spec.config['limits.memory']} is too small for a pvm guest: give at least ${PVM_MIN_MEMORY_BYTES / MiB}MiB.`,
        );
      }
      const cpus = configValue.cpus(spec.config);
      if (cpus !== undefined && cpus > availableParallelism()) {
        throw invalidArgument(
          `limits.cpu=${spec.config['limits.cpu']} is more than this host's ${availableParallelism()} CPUs: give at most ${availableParallelism()}.`,
        );
      }
      if (!isAbsolute(kernelPath))
        throw invalidArgument(`The UML kernel path ${kernelPath} must be absolute.`);
      const socket = pathsOf(spec).mconsoleSocket;
      if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
        throw failedPrecondition(
          `The mconsole socket path ${socket} is longer than ${MAX_SOCKET_PATH} bytes: use a shorter state dir or guest name.`,
        );
      }
    },

    async create(spec, image) {
      driver.validate(spec);
      await checkKernel();
      const p = pathsOf(spec);
      if (await exists(p.diskDir)) return;
      await withRevert(async (r) => {
        await mkdir(join(stateDir, 'guests'), { recursive: true });
        // A storage pool may have made the directory already, linked at guests/NAME (and removes it itself).
        if ((await lstat(p.dir).catch(() => undefined))?.isSymbolicLink()) await chmod(p.dir, 0o700);
        else await mkdir(p.dir, { mode: 0o700 });
        r.add(() => rm(p.dir, { recursive: true, force: true }));
        const uid = await allocateUid(spec);
        await writeFile(p.consoleLog, '', { mode: 0o640 });
        const baseDisk = await image.baseDisk();
        for (const d of [p.runDir, p.diskDir]) {
          await mkdir(d, { mode: 0o700 });
          await chown(d, uid, uid);
        }
        const diskBytes = diskBytesOf(spec);
        if (diskBytes !== undefined) {
          // A UML COW file has its backing file's size, so a bigger disk is a private sparse copy.
          const baseBytes = (await stat(baseDisk)).size;
          if (diskBytes < baseBytes) {
            throw invalidArgument(
              `limits.disk=${spec.config['limits.disk']} is smaller than the image's base disk (${Math.ceil(baseBytes / MiB)}MiB): give at least that much.`,
            );
          }
          await runner.run(['cp', '--sparse=always', '--', baseDisk, p.raw]);
          await truncate(p.raw, diskBytes);
          await chmod(p.raw, 0o600);
          await chown(p.raw, uid, uid);
        }
      });
    },

    async start(spec, image) {
      driver.validate(spec);
      const p = pathsOf(spec);
      if (!(await exists(p.diskDir))) {
        throw failedPrecondition(`Guest ${spec.name} has no disk on this host: create it first.`);
      }
      const running = await liveUml(spec);
      if (running) return running;
      await checkKernel();
      if (!(await exists(BWRAP))) {
        throw failedPrecondition(
          `${BWRAP} is missing: pvm guests run jailed by bubblewrap; install it (apt-get install bubblewrap).`,
        );
      }
      const initArgv = imageInitArgv(image.record.properties);
      const program = initArgv[0] ?? '/sbin/init';
      if (program.startsWith('/') && !(await existsInRoot(image.rootfs, program))) {
        throw invalidArgument(
          `Image ${image.record.fingerprint}'s init ${program} does not exist in the image: fix its init property.`,
        );
      }
      await cleanUpRuntime(spec);
      const uid = await readUid(spec);
      // A COW file stays over the base disk it was made on (base disks are per kit version, and
      // snapshots and copies carry the header): boot it over that one while it exists.
      const madeOver = await readUmlCowHeader(p.cow).then(
        (h) => h.backingFile,
        () => undefined,
      );
      const { path: baseDisk, source: baseSource } = await baseDiskOf(spec, image, madeOver);
      const memoryBytes = memoryOf(spec);
      const withNics = ctx.network?.hasNics(spec) ?? Object.keys(spec.devices ?? {}).length > 0;
      if (withNics && !ctx.network) {
        throw failedPrecondition(`Guest ${spec.name} has NICs but networking is not set up on this host.`);
      }
      await ensureSharedStateDir();
      return withRevert(async (r) => {
        await writeFile(
          join(p.dir, 'stop-signal'),
          `${image.record.properties['stop.signal'] ?? 'SIGTERM'}\n`,
        );
        r.add(() => cleanUpRuntime(spec));
        const procs = await makeUmlCgroup(cgroupsPath(spec));
        await setUmlCgroupLimits(cgroupsPath(spec), limitsOf(spec));
        // Guests made before the jail have a 0755 dir: the kernel needs no path through it any more.
        await chmod(p.dir, 0o700);
        const raw = await stat(p.raw).catch(() => undefined);
        const diskBytes = diskBytesOf(spec);
        // limits.disk only grows a private disk (the kit grows the file system at boot); it never shrinks one.
        if (raw && diskBytes !== undefined && diskBytes > raw.size) await truncate(p.raw, diskBytes);
        if (!raw && diskBytes !== undefined) {
          log.warn(
            { guest: spec.name },
            'limits.disk set after create: the guest keeps its copy-on-write disk',
          );
        }
        // The kernel opens its taps as the guest's uid: they are made with that owner.
        const taps = withNics && ctx.network ? await ctx.network.plugTaps(spec, { user: uid }) : [];
        // Which UML device (ethN) carries which NIC: hot-plug takes a free N, unplug the NIC's.
        await writeNicSlots(spec, Object.fromEntries(taps.map((t, i) => [t.nic, i])));
        // Injected files ride on a read-only config disk the kit copies from (rebuilt at every start),
        // in the root-owned guest dir so that the guest's uid cannot swap it, readable by its group.
        const configDisk = join(p.dir, 'config.ext4');
        const withConfig = await writeConfigDisk(injectedFiles(spec.config), configDisk, {
          runner,
          group: uid,
        });
        const argv = umlArgv({
          kernelPath,
          nics: taps,
          ...(withConfig ? { configDisk } : {}),
          memoryBytes,
          ...(raw ? { diskPath: p.raw } : { diskPath: p.cow, backingPath: baseDisk }),
          umlDir: p.runDir,
          umid: UMID,
          hostname: spec.name,
        });
        // Attached block volumes as ubd2 and up, owned by the guest's uid (the kernel opens them as it).
        const volumes = bootVolumes((await ctx.volumes?.resolve(spec)) ?? []);
        await preparePvmVolumes(volumes, uid);
        argv.push(...umlVolumeArgs(volumes));
        // The kernel runs in its jail (uml-jail.ts, decision 17) with only these of the host's files.
        const jail = umlJailArgv(
          {
            uid,
            programFiles: await jailProgramFiles(),
            writableDirs: [p.diskDir, p.runDir],
            readOnlyFiles: [
              ...(raw ? [] : [{ path: baseDisk, source: baseSource }]),
              ...(withConfig ? [configDisk] : []),
            ],
            volumes: volumes.map((v) => ({ device: v.device, hostPath: v.hostPath })),
            memoryTmpfsBytes: memoryBytes + HOST_OVERHEAD_BYTES,
          },
          argv,
        );
        await writeFile(p.seccomp, umlSeccompProgram(), { mode: 0o600 });
        // The launcher joins the cgroup before exec so that every UML helper is born inside it,
        // then the jail drops to the guest's uid: the kernel never runs as root on the host.
        for (const fifo of [p.agentIn, p.agentOut, p.consoleIn]) {
          await rm(fifo, { force: true });
          await runner.run(['mkfifo', '-m', '0600', fifo]);
        }
        const launcher = [
          '/bin/sh',
          '-c',
          // $0 is no positional parameter: `shift 3` drops $1 to $3, leaving the cgroups' procs files.
          `ulimit -c 0; exec 3<>"$0" 4<>"$1" 5<>"$2" ${JAIL_SECCOMP_FD}<"$3" ${JAIL_CPUINFO_FD}</proc/cpuinfo || exit 111; shift 3; ` +
            'while [ "$1" != -- ]; do echo $$ > "$1" || exit 111; shift; done; shift; exec "$@"',
          p.agentIn,
          p.agentOut,
          p.consoleIn,
          p.seccomp,
          ...procs,
          '--',
          ...privateTunArgv(uid),
          ...jail,
        ];
        const before = (await stat(p.consoleLog).catch(() => undefined))?.size ?? 0;
        const consoleFile = await open(p.consoleLog, 'a', 0o640);
        let pid: number | undefined;
        try {
          const child = runner.spawn(launcher, {
            cwd: p.runDir,
            stdio: ['ignore', consoleFile.fd, consoleFile.fd],
            detached: true,
          });
          child.on('error', () => {});
          child.unref();
          pid = child.pid;
        } finally {
          await consoleFile.close();
        }
        if (pid === undefined) throw internal(`Cannot run ${kernelPath} for guest ${spec.name}.`);
        const launched = await readProcessIdentity(pid);
        if (!launched) {
          throw internal(`Guest ${spec.name}'s UML kernel (pid ${pid}) exited at once: see ${p.consoleLog}.`);
        }
        const identity = await jailedKernel(spec, launched);
        const record: ProcessRecord = { ...identity, uid, memoryBytes };
        await writeFile(`${p.processFile}.tmp`, JSON.stringify(record));
        await rename(`${p.processFile}.tmp`, p.processFile);
        await waitForInit(spec, identity, before);
        log.info({ guest: spec.name, pid: identity.pid, uid }, 'guest started');
        return identity;
      });
    },

    async stop(spec, options) {
      const identity = await liveUml(spec);
      if (identity) {
        const mconsole = mconsoleOf(spec);
        // A stopped kernel serves nothing but mconsole: resume it so that it can power off or halt.
        if (await exists(pathsOf(spec).frozenFile)) await mconsole.go().catch(() => {});
        let gone = false;
        if (!options.force) {
          const deadline = Date.now() + options.timeoutMs;
          const timer = new AbortController();
          await Promise.race([
            askInitToStop(spec),
            sleep(options.timeoutMs, undefined, { signal: timer.signal }).catch(() => {}),
          ]).finally(() => timer.abort());
          gone = await waitGone(identity, Math.max(0, deadline - Date.now()));
        }
        if (!gone) {
          log.info({ guest: spec.name, force: options.force }, 'halting guest');
          await mconsole.halt().catch(() => {});
          gone = await waitGone(identity, HALT_WAIT_MS);
        }
        if (!gone) {
          try {
            process.kill(identity.pid, 'SIGKILL');
          } catch {
            // Gone meanwhile.
          }
        }
      }
      await cleanUpRuntime(spec);
    },

    async freeze(spec) {
      await runningUml(spec);
      // Marked first: a daemon dying between the two must not leave a stopped kernel that looks running.
      await writeFile(pathsOf(spec).frozenFile, '');
      try {
        await mconsoleOf(spec).stop();
      } catch (e) {
        await rm(pathsOf(spec).frozenFile, { force: true });
        throw e;
      }
    },

    async unfreeze(spec) {
      await runningUml(spec);
      const reply = await mconsoleOf(spec).request('go');
      // A kernel that is not stopped refuses `go`: it runs, which is what was asked.
      if (!reply.ok && (await exists(pathsOf(spec).frozenFile))) {
        throw internal(
          `Guest ${spec.name}'s UML kernel refused to resume: ${reply.text || 'no reason given'}.`,
        );
      }
      await rm(pathsOf(spec).frozenFile, { force: true });
    },

    async delete(spec) {
      const p = pathsOf(spec);
      if (await liveUml(spec)) await driver.stop(spec, { timeoutMs: 0, force: true });
      await cleanUpRuntime(spec);
      await rm(p.dir, { recursive: true, force: true });
      // The parent goes with its last guest; rmdir refuses while ct or pvm guests remain.
      await removeCgroup(cgroupParent);
    },

    async inspect(spec, known): Promise<RuntimeState> {
      const p = pathsOf(spec);
      if (!(await exists(p.dir))) return { state: 'absent' };
      const identity = await liveUml(spec, known);
      if (!identity) return { state: 'stopped' };
      return { state: (await exists(p.frozenFile)) ? 'frozen' : 'running', process: identity };
    },

    async usage(spec): Promise<GuestUsage> {
      const usage = await readCgroupUsage(cgroupsPath(spec));
      // The guest's limit is its RAM; the cgroup's is that plus the kernel's host overhead.
      const record = await readRecord(spec);
      if (record) usage.memoryLimitBytes = record.memoryBytes;
      else delete usage.memoryLimitBytes;
      if (usage.memoryBytes === 0 && record && (await isSameProcess(record))) {
        // Someone moved the kernel out of its memory cgroup (some sandboxes' supervisors do):
        // the main process's resident set, which maps all guest RAM it touched, is the next best figure.
        const statm = await readFile(`/proc/${record.pid}/statm`, 'utf8').catch(() => '');
        usage.memoryBytes = Number(statm.split(' ')[1] ?? 0) * 4096;
      }
      return usage;
    },

    async update(spec, changedKeys) {
      const needRestart = changedKeys.filter((k) => !isLiveKey(k) || k === 'limits.memory');
      if (!(await liveUml(spec))) return [];
      if (changedKeys.some((k) => k === 'limits.cpu' || k === 'limits.processes')) {
        // Memory stays as booted (mem= is fixed): only cpu and pids follow.
        const record = await readRecord(spec);
        const limits = limitsOf(spec);
        if (record) limits.memoryBytes = record.memoryBytes + HOST_OVERHEAD_BYTES;
        await setUmlCgroupLimits(cgroupsPath(spec), limits);
      }
      return needRestart;
    },

    async exec(spec, options): Promise<ExecSession> {
      await runningUml(spec);
      if (options.command.length === 0)
        throw invalidArgument('The command to run is empty: give at least a program.');
      if (options.tty) {
        throw notSupported('`vm` and `pvm` guests have no terminal exec yet: run without -t');
      }
      try {
        const agent = await agentOf(spec, 30_000);
        return await agent.exec(options, configValue.environment(spec.config));
      } catch (e) {
        if (!isTrivisorError(e) || e.code !== 'NotSupported') dropAgent(spec);
        throw e;
      }
    },

    async pushFile(spec, options) {
      await runningAgent(spec);
      await withAgent(spec, (client) => qgaPushFile(client, { ...options, guest: spec.name }));
    },

    async pullFile(spec, path) {
      await runningAgent(spec);
      return withAgent(spec, (client) =>
        qgaPullFile(client, path, { maxBytes: GUEST_FILE_MAX_BYTES, guest: spec.name }),
      );
    },

    async attachConsole(spec) {
      const identity = await runningUml(spec);
      const p = pathsOf(spec);
      return consoles.claim(spec.name, () =>
        openUmlConsole({
          input: p.consoleIn,
          log: p.consoleLog,
          alive: () => isSameProcess(identity),
          guestName: spec.name,
        }),
      );
    },

    consoleLogPath(spec) {
      return pathsOf(spec).consoleLog;
    },

    // The guest's interfaces through its agent; what the UML kernel said about its NICs from the console.
    async observeNics(spec, { process, timeoutMs }) {
      if (!(await liveUml(spec, process))) throw failedPrecondition(`Guest ${spec.name} is not running.`);
      const interfaces = await probeGuestNics((g, o) => driver.exec(g, o), spec, { timeoutMs });
      return { interfaces, engineErrors: umlNicErrors(await readTail(pathsOf(spec).consoleLog)) };
    },

    async attachNic(spec, nic) {
      if (!ctx.network) throw failedPrecondition('Networking is not set up on this host.');
      await runningUml(spec);
      const slots = await readNicSlots(spec, nic);
      if (slots[nic] !== undefined) return 'live';
      const taken = new Set(Object.values(slots));
      let n = 0;
      while (taken.has(n)) n++;
      // The kernel opens the tap as the guest's uid, as at start.
      const t = await ctx.network.plugTap(spec, nic, { user: await readUid(spec) });
      try {
        const r = await mconsoleOf(spec).request(`config eth${n}=tuntap,${t.tap},${t.mac}`);
        if (!r.ok) {
          throw failedPrecondition(
            `The UML kernel of ${spec.name} refused NIC ${nic} as eth${n}: ${r.text || 'no reason given'}`,
          );
        }
      } catch (e) {
        await ctx.network.unplugNic(spec, nic);
        throw e;
      }
      await writeNicSlots(spec, { ...slots, [nic]: n });
      await nicUp(spec, { name: nic, mac: t.mac, cidr: t.cidr });
      return 'live';
    },

    async detachNic(spec, nic) {
      const slots = await readNicSlots(spec);
      const n = slots[nic];
      if (n !== undefined) {
        const m = mconsoleOf(spec);
        let r = await m.request(`remove eth${n}`);
        if (!r.ok) {
          // UML removes only a device the guest has closed: take it down through the agent.
          const mac = spec.devices?.[nic]?.hwaddr;
          if (mac)
            await runGuestScript((g, o) => driver.exec(g, o), spec, nicDownScript(mac)).catch(
              () => undefined,
            );
          r = await m.request(`remove eth${n}`);
        }
        if (!r.ok && !/not found|no such|-19|ENODEV/i.test(r.text)) {
          throw failedPrecondition(
            `The UML kernel of ${spec.name} did not let go of NIC ${nic} (eth${n}: ${r.text || 'busy'}): take it down in the guest (ip link set ${nic} down) and detach again, or stop the guest`,
          );
        }
        const rest = { ...slots };
        delete rest[nic];
        await writeNicSlots(spec, rest);
      }
      await ctx.network?.unplugNic(spec, nic);
      return 'live';
    },
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
  /** The hot-plugged NIC takes its name, comes up and holds its address in the guest (best effort). */
  async function nicUp(spec: GuestSpec, n: { name: string; mac: string; cidr: string }): Promise<void> {
    const r = await runGuestScript((g, o) => driver.exec(g, o), spec, nicUpScript(n)).catch((e) => ({
      code: -1,
      output: String(e),
    }));
    if (r.code !== 0)
      log.warn(
        { guest: spec.name, nic: n.name, err: r.output },
        'the guest did not set up a hot-plugged NIC',
      );
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

  return driver;
}
