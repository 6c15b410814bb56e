import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { configValue, isLiveKey } from '../../core/config-keys.ts';
import { failedPrecondition, internal, invalidArgument, notSupported } from '../../core/errors.ts';
import { GUEST_FILE_MAX_BYTES, INJECTED_FILE_PREFIX, injectedFiles } from '../../core/guest-files.ts';
import { withRevert } from '../../core/revert.ts';
import type { GuestSpec, GuestUsage, ProcessIdentity } from '../../core/types.ts';
import {
  cgroupMode,
  readCgroupUsage,
  readFreezerState,
  readFreezerStateSync,
  removeCgroup,
  sharedMemoryCgroup,
  writeFreezerState,
} from '../../host/cgroups-v1.ts';
import type { Launcher } from '../../host/launcher.ts';
import { isMountPoint, unmountIfMounted } from '../../host/mounts.ts';
import { isSameProcess, isSameProcessSync, readProcessIdentity } from '../../host/proc-stat.ts';
import { readHardLimits } from '../../host/rlimits.ts';
import { readFileInRoot, writeFileInRoot } from '../../host/rooted-fs.ts';
import { ensureSearchable } from '../../host/searchable-path.ts';
import { shiftIds } from '../../images/shift-tree.ts';
import { cgroupParentOf } from '../guest-cgroup.ts';
import type {
  DriverContext,
  ExecSession,
  GuestDriver,
  ImageHandle,
  ProbeResult,
  RuntimeState,
} from '../guest-driver.ts';
import type { AttachedVolume } from '../guest-volumes.ts';
import { removeGuestSubvolumes } from './ct-btrfs-send.ts';
import {
  ctLayerOf,
  layerImageBytes,
  layerRootOf,
  mountCtLayer,
  prepareCtLayer,
  takesLayerImage,
  unmountCtLayer,
} from './ct-layer-image.ts';
import { attachCtVolume, ctVolumeIdmap, ctVolumeMounts, prepareCtVolume } from './ct-volumes.ts';
import { guestDirOf, isOnBtrfsPool, isPoolLinked } from './guest-dir.ts';
import { createIdRanges, type IdRange, isRangeBase, readIdRangeOf } from './id-ranges.ts';
import { readNetnsInterfaces } from './netns-interfaces.ts';
import {
  buildOciSpec,
  DEFAULT_ENV,
  ID_MAP_SIZE,
  MEMORY_CGROUP_ANNOTATION,
  type OciSpec,
  ociResources,
  STOP_SIGNAL_ANNOTATION,
} from './oci-spec.ts';
import { privateRootArgv, privateRootEnv, ROOT_MOUNT_FAILED_EXIT, rootMountError } from './overlay-rootfs.ts';
import { pipeExecSession, ttyExecSession } from './runc-exec.ts';
import { CreatedContainerError, readRuncInitIdentity, startCreatedContainer } from './runc-state.ts';
import { stopSignalNumber } from './stop-signal.ts';

/** Where runc is looked up when the daemon has no PATH of its own. */
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/**
 * How often stop() looks whether init is gone: first after 2 ms (a SIGKILLed init is mostly gone
 * within milliseconds, and a delete waits for it), then twice as long each time, up to 50 ms.
 */
const POLL_FIRST_MS = 2;
const POLL_MS = 50;
/** How long stop() waits for the kernel to reap a SIGKILLed guest. */
const KILL_WAIT_MS = 10_000;
/** How long `runc run --detach` may take before start() gives up. */
const RUNC_RUN_TIMEOUT_MS = 60_000;
/** Guests whose usage is read between two turns of the event loop (usage()). */
const USAGE_BATCH = 32;
/** Config keys `runc update` applies to a running guest. */
const RUNC_UPDATE_KEYS = new Set(['limits.memory', 'limits.cpu', 'limits.processes']);

/**
 * Where a ct guest keeps its files under the state dir. `dir` is root's, group
 * the guest's root (its range's base), mode 0710: the guest's root passes it on
 * the way to `rootfs` (runc mounts the root from inside the user namespace), no
 * other host user does (docs/decisions/0018). Root only inside: `bundle/`
 * (config.json holds the guest's environment), `staging/`, `console.log`.
 */
export interface CtGuestPaths {
  dir: string;
  bundle: string;
  config: string;
  upper: string;
  work: string;
  /** The overlay's mount point, in the guest's mount namespace only (docs/decisions/0064): empty on the host. */
  rootfs: string;
  /** Where the idmapped image tree is attached while the overlay is mounted on it (in the start's own mount namespace). */
  staging: string;
  consoleLog: string;
  pidFile: string;
}

/** The OCI runtime (runc) behind the `ct` model: one detached runc container per guest. */
const CONSOLE_LOG_ROTATE_BYTES = 1024 * 1024;

export function createCtDriver(ctx: DriverContext, options: { launcher?: Launcher } = {}): GuestDriver {
  const { runner, stateDir, idmapBase } = ctx;
  const { launcher } = options;
  const log = ctx.log.child({ driver: 'ct' });
  const runcRoot = join(stateDir, 'runc');
  /** An exec's pid and process files: root-only, outside every guest's (quota-bound) directory. */
  const execDir = join(stateDir, 'runc-exec');
  const runc = ['runc', '--root', runcRoot];
  const cgroupParent = cgroupParentOf(stateDir);
  const cgroupsPath = (spec: GuestSpec): string => `${cgroupParent}/${spec.name}`;

  const pathsOf = (spec: GuestSpec): CtGuestPaths => {
    const dir = guestDirOf(stateDir, spec.name);
    return {
      dir,
      bundle: join(dir, 'bundle'),
      config: join(dir, 'bundle', 'config.json'),
      // In the guest's layer image on a pool overlayfs refuses as upper (decision 0094): looked
      // up when asked for (create and start), not at every inspect.
      get upper() {
        return join(layerRootOf(ctLayerOf(stateDir, spec.name)), 'upper');
      },
      get work() {
        return join(layerRootOf(ctLayerOf(stateDir, spec.name)), 'work');
      },
      rootfs: join(dir, 'rootfs'),
      staging: join(dir, 'staging'),
      consoleLog: join(dir, 'console.log'),
      pidFile: join(dir, 'init.pid'),
    };
  };

  const ranges = createIdRanges(stateDir, idmapBase);

  /**
   * The id range the guest runs under, undefined for a privileged one (no user namespace).
   * An own range by default (claimed at create, or at the first start of a guest made before
   * decision 18); the shared one with security.idmap.isolated=false.
   */
  const rangeFor = async (spec: GuestSpec, dir: string): Promise<IdRange | undefined> => {
    if (configValue.privileged(spec.config)) return undefined;
    if (!configValue.idmapIsolated(spec.config)) return ranges.shared(spec.name, dir);
    return ranges.own(spec.name, dir);
  };

  /** The range a live guest's init runs under (its uid_map); undefined for a privileged guest. */
  const liveRange = async (spec: GuestSpec, init: ProcessIdentity): Promise<{ base: number } | undefined> =>
    configValue.privileged(spec.config) ? undefined : readIdRangeOf(init.pid);

  /**
   * Moves the upper layer's files to `base` (0 for a privileged guest) when they are in
   * another range: a guest made before decision 18 (the shared range), a copy, an imported
   * backup or a restored snapshot of a guest in another range. The upper dir's owner says
   * which range its files are in: start makes it the guest's root every time, and a
   * guest can set it to no other range's base. When it is no base (the guest gave its / to
   * another of its ids), the files are in `previous`, the range the guest last ran under. A
   * shift cut short is finished at the next start (shiftIds changes that owner last).
   */
  const followRange = async (
    spec: GuestSpec,
    upper: string,
    base: number,
    previous: number,
  ): Promise<void> => {
    const owner = (await lstat(upper)).uid;
    const from = isRangeBase(idmapBase, owner) ? owner : previous;
    if (from === base) return;
    const started = Date.now();
    const changed = await shiftIds(upper, { from, to: base, size: ID_MAP_SIZE });
    log.info(
      { guest: spec.name, from, to: base, changed, ms: Date.now() - started },
      'moved the guest to its id range',
    );
  };

  const initOf = (image: ImageHandle): string[] => {
    const raw = image.record.properties.init;
    if (!raw) return ['/sbin/init'];
    try {
      const argv = JSON.parse(raw) as unknown;
      if (Array.isArray(argv) && argv.length > 0 && argv.every((a) => typeof a === 'string')) return argv;
    } catch {
      // Fall through to the error below.
    }
    throw invalidArgument(
      `Image ${image.record.fingerprint} has an init property that is not a JSON list of strings: fix the image metadata.`,
    );
  };

  /** The stop signal recorded in the bundle at start (stop() has no image at hand). */
  const stopSignalOf = async (spec: GuestSpec): Promise<string> => {
    const oci = await readBundle(spec).catch(() => undefined);
    return oci?.annotations[STOP_SIGNAL_ANNOTATION] ?? 'SIGTERM';
  };

  const readBundle = async (spec: GuestSpec): Promise<OciSpec> =>
    JSON.parse(await readFile(pathsOf(spec).config, 'utf8')) as OciSpec;

  /** The live init of a guest: `known` when given (never second-guessed), else what runc recorded. */
  const liveInit = async (spec: GuestSpec, known?: ProcessIdentity): Promise<ProcessIdentity | undefined> => {
    const identity = known ?? (await readRuncInitIdentity(runcRoot, spec.name));
    return identity && (await isSameProcess(identity)) ? identity : undefined;
  };

  const exists = async (path: string): Promise<boolean> => {
    try {
      await stat(path);
      return true;
    } catch {
      return false;
    }
  };

  const waitGone = async (identity: ProcessIdentity, timeoutMs: number): Promise<boolean> => {
    const deadline = Date.now() + timeoutMs;
    for (let wait = POLL_FIRST_MS; ; wait = Math.min(wait * 2, POLL_MS)) {
      if (!(await isSameProcess(identity))) return true;
      if (Date.now() >= deadline) return false;
      await sleep(wait);
    }
  };

  /**
   * SIGKILLs a guest from the daemon itself, spawning nothing (docs/decisions/0091): its init leads
   * the guest's pid namespace (every guest has one, oci-spec.ts), so the kernel kills every process
   * in it. A process in the guest's cgroup but outside that namespace keeps the cgroup busy, and
   * cleanUpRuntime then has runc kill it. The identity is checked again just before, so a pid
   * reused since the guest's init died is not signalled (as runc, which also signals by pid).
   */
  const killInit = async (spec: GuestSpec, init: ProcessIdentity): Promise<void> => {
    if (!(await isSameProcess(init))) return;
    try {
      process.kill(init.pid, 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') {
        throw internal(`Cannot kill guest ${spec.name}'s init (pid ${init.pid}): ${(e as Error).message}`);
      }
    }
  };

  /**
   * Sends a graceful stop's signal to the guest's init from the daemon (kill(2), as `runc kill`
   * does it), spawning nothing (docs/decisions/0091). The identity is checked just before, as
   * killInit does: a pid whose start time is not init's is never signalled, and runc, which checks
   * the same start time, would answer that the container is not running. runc runs only for a
   * signal the daemon cannot number, or when kill(2) refuses for another reason than ESRCH.
   */
  const signalInit = async (spec: GuestSpec, init: ProcessIdentity, signal: string): Promise<void> => {
    const number = stopSignalNumber(signal);
    if (number !== undefined) {
      if (!(await isSameProcess(init))) return;
      try {
        process.kill(init.pid, number);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ESRCH') return;
        log.warn({ guest: spec.name, err: String(e) }, 'cannot signal the guest init: runc kill tries');
      }
    }
    await runner.run([...runc, 'kill', spec.name, signal], { allowFailure: true });
  };

  /** Removes what a started guest holds (runc container, overlay mount, cgroups); leaves the guest dir. */
  const cleanUpRuntime = async (spec: GuestSpec): Promise<void> => {
    const p = pathsOf(spec);
    const runcState = join(runcRoot, spec.name);
    if (await exists(runcState)) {
      // What `runc delete` does for a container whose init is gone: remove its cgroups, then its
      // state dir (and run poststop hooks, which no guest's bundle has). Done here, because a spawn
      // blocks the daemon for a fork of all its memory, longer the more guests it holds (decision
      // 0091). rmdir refuses a cgroup that still holds a process (one outside the guest's pid
      // namespace) or a child cgroup: then runc kills what is left and deletes, as before.
      const left = (await liveInit(spec)) ? [runcState] : await removeCgroup(cgroupsPath(spec));
      if (left.length === 0) await rm(runcState, { recursive: true, force: true });
      else {
        log.info({ guest: spec.name, left }, 'the guest is not gone on its own: runc kills what is left');
        await runner.run([...runc, 'kill', '--all', spec.name, 'KILL'], { allowFailure: true });
        await runner.run([...runc, 'delete', '--force', spec.name], { allowFailure: true });
      }
    }
    // Guests started by a daemon before decision 64 have their root mounted on the host, as has a
    // start killed between its two mounts the idmapped tree; since then both are mounted in the
    // start's own mount namespace, and the guest's copy goes with its last process.
    await unmountIfMounted(p.rootfs, { runner });
    await unmountIfMounted(p.staging, { runner });
    await unmountCtLayer(runner, stateDir, spec.name);
    const left = await removeCgroup(cgroupsPath(spec));
    if (left.length > 0) log.warn({ guest: spec.name, left }, 'cgroups of the guest cannot be removed');
    await rm(p.pidFile, { force: true });
    if (ctx.network?.hasNics(spec)) await ctx.network.unplug(spec);
  };

  /** config.json holds the guest's environment: root only (written whole, then renamed). */
  const writeConfig = async (path: string, oci: OciSpec): Promise<void> => {
    await writeFile(`${path}.tmp`, `${JSON.stringify(oci, null, 2)}\n`, { mode: 0o600 });
    await chmod(`${path}.tmp`, 0o600);
    await rename(`${path}.tmp`, path);
  };

  /** Writes config.json; returns the volumes to attach after `runc create` (an unprivileged guest's). */
  const writeBundle = async (
    spec: GuestSpec,
    image: ImageHandle,
    range: IdRange | undefined,
    sharedMemory = false,
  ): Promise<AttachedVolume[]> => {
    const p = pathsOf(spec);
    const oci = buildOciSpec(spec, {
      sharedMemoryCgroup: sharedMemory,
      rootfsPath: p.rootfs,
      init: initOf(image),
      idmapBase: range?.base,
      cgroupsPath: cgroupsPath(spec),
      hostHardLimits: await readHardLimits(),
      stopSignal: image.record.properties['stop.signal'] ?? 'SIGTERM',
    });
    // Attached filesystem volumes, their root owned by the guest's root as the volume stores it.
    // A privileged guest's are runc bind mounts; an unprivileged guest's are idmapped from its
    // range to the shared one volumes store (ct-volumes.ts), which runc cannot do.
    const volumes = ((await ctx.volumes?.resolve(spec)) ?? []).filter((v) => v.type === 'filesystem');
    for (const v of volumes) await prepareCtVolume(v, range ? idmapBase : 0);
    if (!range) oci.mounts.push(...ctVolumeMounts(volumes));
    await writeConfig(p.config, oci);
    return range ? volumes.filter((v) => v.path !== undefined) : [];
  };

  /**
   * Closes the guest's directory to every host user but the guest's root (docs/decisions/0018):
   * root's, group the range's base, 0710; a privileged guest's is root's alone (0700).
   */
  const closeGuestDir = async (p: CtGuestPaths, range: IdRange | undefined): Promise<void> => {
    await chown(p.dir, 0, range?.base ?? 0);
    await chmod(p.dir, range ? 0o710 : 0o700);
  };

  /**
   * runc mounts rootfs/ from inside the guest's user namespace, where host root's
   * files count as "other": every directory on the way must be searchable (o+x).
   * The state dir and guests/ get it (search only, no listing); directories
   * above the state dir are the administrator's, so they are only checked.
   */
  const ensureTraversable = async (spec: GuestSpec): Promise<void> => {
    const blocked = await ensureSearchable([stateDir, join(stateDir, 'guests')], [stateDir]);
    if (blocked) {
      throw failedPrecondition(
        `Unprivileged guest ${spec.name} cannot start: ${blocked} is not searchable by others; chmod o+x it or move the state dir.`,
      );
    }
  };

  const checkedDirs = new Set<string>();
  /**
   * A guest made before decision 18 has an open directory (0711: its upper layer and its
   * mounted root reachable by every host user) and a world-readable config.json. The first
   * inspect in a daemon's life (re-adoption at start) closes them at once, without waiting for
   * the guest's next start: to its running init's range (the mount stays as it is, so its root
   * must still pass), or to root alone while it is stopped. Its range moves at its next start.
   */
  const closeEarlierDir = async (
    spec: GuestSpec,
    p: CtGuestPaths,
    init: ProcessIdentity | undefined,
  ): Promise<void> => {
    if (((await stat(p.dir)).mode & 0o007) === 0) return;
    await mkdir(join(stateDir, 'guests'), { recursive: true, mode: 0o711 });
    await chmod(join(stateDir, 'guests'), 0o711);
    await chmod(p.bundle, 0o700).catch(() => {});
    await chmod(p.config, 0o600).catch(() => {});
    const range = init ? await liveRange(spec, init) : undefined;
    await closeGuestDir(p, range && { ...range, size: ID_MAP_SIZE, own: false });
    log.info({ guest: spec.name, running: init !== undefined }, 'closed the directory of an earlier guest');
  };

  /** Refuses a uid/gid an unprivileged guest does not have (its range maps 0 to 65535). */
  const checkGuestId = (spec: GuestSpec, id: number, what: string): void => {
    if (!configValue.privileged(spec.config) && id >= ID_MAP_SIZE) {
      throw invalidArgument(
        `The ${what} ${id} does not exist in unprivileged guest ${spec.name}: use 0 to ${ID_MAP_SIZE - 1}`,
      );
    }
  };
  /** A guest's uid/gid as the host has it (in the guest's range; itself for a privileged guest). */
  const hostId = (spec: GuestSpec, range: { base: number } | undefined, id: number, what: string): number => {
    checkGuestId(spec, id, what);
    return range === undefined ? id : range.base + id;
  };
  /** A host uid/gid as the guest sees it (the overflow id 65534 when unmapped). */
  const guestId = (range: { base: number } | undefined, id: number): number => {
    if (range === undefined) return id;
    return id >= range.base && id < range.base + ID_MAP_SIZE ? id - range.base : 65534;
  };

  /**
   * Writes the guest's `files.*` into its root before its init runs (through
   * /proc/PID/root of runc's init between `runc create` and `runc start`: the
   * root is mounted in the guest's mount namespace only), with the same
   * symlink-safe walk as `file push` (the upper layer is the guest's own and may
   * hold links planted in an earlier boot).
   */
  const injectFiles = async (spec: GuestSpec, root: string, range: IdRange | undefined): Promise<void> => {
    for (const f of injectedFiles(spec.config)) {
      try {
        await writeFileInRoot(root, f.path, f.content, {
          mode: f.mode,
          uid: hostId(spec, range, f.uid, 'uid'),
          gid: hostId(spec, range, f.gid, 'gid'),
          createDirs: { uid: hostId(spec, range, 0, 'uid'), gid: hostId(spec, range, 0, 'gid') },
        });
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        const code = (e as { code?: string }).code;
        const wrapped = `Cannot inject ${INJECTED_FILE_PREFIX}${f.path} into guest ${spec.name}: ${message}`;
        throw code === 'NotFound' || code === 'InvalidArgument' || code === 'FailedPrecondition'
          ? failedPrecondition(wrapped)
          : internal(wrapped, e);
      }
    }
  };

  /** `/proc/PID/root` of the running guest's init: its root with its own mounts; checked against pid reuse. */
  const liveRoot = async (spec: GuestSpec) => {
    const init = await runningInit(spec);
    const range = await liveRange(spec, init);
    return {
      root: `/proc/${init.pid}/root`,
      range,
      verify: async () => {
        if (!(await isSameProcess(init))) {
          throw failedPrecondition(`Guest ${spec.name} stopped meanwhile: start it and try again`);
        }
      },
    };
  };

  const runningInit = async (spec: GuestSpec): Promise<ProcessIdentity> => {
    const init = await liveInit(spec);
    if (!init) throw failedPrecondition(`Guest ${spec.name} is not running: start it first.`);
    return init;
  };

  /**
   * `runc start` of a guest made by `runc create`, done by the daemon (runc-state.ts): one spawn
   * less for every guest with NICs, volumes or injected files. runc runs only where its FIFO is not.
   */
  const startCreated = async (spec: GuestSpec, init: ProcessIdentity | undefined): Promise<void> => {
    if (!init) {
      throw internal(`Guest ${spec.name}'s init exited at once: see ${pathsOf(spec).consoleLog}.`);
    }
    try {
      if (await startCreatedContainer(runcRoot, spec.name, { init, timeoutMs: RUNC_RUN_TIMEOUT_MS })) return;
    } catch (e) {
      if (!(e instanceof CreatedContainerError)) throw e;
      throw internal(`Guest ${spec.name} did not start: ${e.message}; see ${pathsOf(spec).consoleLog}.`);
    }
    await runner.run([...runc, 'start', spec.name]);
  };

  /** The start's helper spawned by the daemon itself (no launcher): its output appended to `logFile`. */
  const spawnWithLog = async (argv: string[], path: string, logFile: string): Promise<number> => {
    const consoleFile = await open(logFile, 'a', 0o600);
    try {
      const child = runner.spawn(argv, {
        stdio: ['ignore', consoleFile.fd, consoleFile.fd],
        detached: true,
        env: privateRootEnv(path),
        envOnly: true,
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), RUNC_RUN_TIMEOUT_MS);
      return await new Promise<number>((resolve) => {
        child.once('error', () => resolve(127));
        child.once('exit', (c: number | null) => resolve(c ?? 137));
      }).finally(() => clearTimeout(timer));
    } finally {
      await consoleFile.close();
    }
  };

  /** The usage reads in flight, one after another (usage()). */
  let usageTurns: Promise<unknown> = Promise.resolve();
  let usageReads = 0;

  const setFreezer = async (spec: GuestSpec, state: 'FROZEN' | 'THAWED'): Promise<void> => {
    try {
      await writeFreezerState(cgroupsPath(spec), state);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      throw failedPrecondition(
        `Guest ${spec.name} has no freezer cgroup (${cgroupsPath(spec)}): restart it, then try again.`,
      );
    }
  };

  const driver: GuestDriver = {
    model: 'ct',

    async probe(): Promise<ProbeResult> {
      const warnings: string[] = [];
      const details: Record<string, string> = {};
      let version = '';
      const result = await runner.run(['runc', '--version'], { allowFailure: true }).catch(() => undefined);
      if (result && result.code === 0) {
        version = /runc version (\S+)/.exec(result.stdout)?.[1] ?? result.stdout.split('\n')[0] ?? '';
        const spec = /spec: (\S+)/.exec(result.stdout)?.[1];
        if (spec) details.ociSpec = spec;
      } else {
        warnings.push("runc is not installed: install Debian's runc package.");
      }
      const mode = await cgroupMode();
      details.cgroups = mode;
      if (mode === 'v2') warnings.push('cgroups v2: usage() reads cgroup v1 files and reports zeros.');
      const filesystems = await readFile('/proc/filesystems', 'utf8').catch(() => '');
      if (!/\toverlay$/m.test(filesystems))
        warnings.push('overlayfs is not available: load the overlay module.');
      const script = await runner.run(['script', '--version'], { allowFailure: true }).catch(() => undefined);
      if (script?.code !== 0) warnings.push('util-linux script is missing: exec with a tty will fail.');
      details.idmapBase = String(idmapBase);
      details.idmap = 'a range of 65536 ids per guest (security.idmap.isolated), the image tree idmapped';
      details.cgroupParent = cgroupParent;
      return {
        model: 'ct',
        supported: version !== '' && !warnings.some((w) => w.startsWith('overlayfs')),
        version,
        warnings,
        details,
      };
    },

    validate(spec) {
      // A guest placed on a btrfs pool has its directory linked to a subvolume there, which takes a quota.
      // On a network file system it sizes the guest's layer image (decision 0094).
      const link = join(stateDir, 'guests', spec.name);
      if (
        spec.config['limits.disk'] !== undefined &&
        !isOnBtrfsPool(link) &&
        !takesLayerImage(stateDir, spec.name)
      ) {
        throw notSupported(
          'limits.disk needs a btrfs storage pool or one on a network file system: create the guest with --storage POOL, or remove the key.',
        );
      }
      // A layer image must hold ext4's metadata and the guest: refused here, not at the next start.
      if (spec.config['limits.disk'] !== undefined && takesLayerImage(stateDir, spec.name))
        layerImageBytes(spec);
      if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(spec.name)) {
        throw invalidArgument(
          `Guest name ${JSON.stringify(spec.name)} is not a DNS label: use a-z, 0-9 and -.`,
        );
      }
      for (const f of injectedFiles(spec.config)) {
        checkGuestId(spec, f.uid, `uid of ${INJECTED_FILE_PREFIX}${f.path}`);
        checkGuestId(spec, f.gid, `gid of ${INJECTED_FILE_PREFIX}${f.path}`);
      }
    },

    async create(spec, image) {
      driver.validate(spec);
      await prepareCtLayer(runner, stateDir, spec);
      const p = pathsOf(spec);
      if (await exists(p.bundle)) return;
      await withRevert(async (r) => {
        r.add(() => unmountCtLayer(runner, stateDir, spec.name));
        // 0711: guests' roots pass it on the way to their own directory; nobody lists it.
        await mkdir(join(stateDir, 'guests'), { recursive: true, mode: 0o711 });
        await chmod(join(stateDir, 'guests'), 0o711);
        // A storage pool may have made the directory already (and removes it itself).
        if (!isPoolLinked(join(stateDir, 'guests', spec.name))) {
          await mkdir(p.dir, { mode: 0o700 });
          r.add(() => rm(p.dir, { recursive: true, force: true }));
        }
        await chmod(p.dir, 0o700);
        const range = await rangeFor(spec, p.dir);
        r.add(() => ranges.release(spec.name, p.dir));
        await mkdir(p.bundle, { mode: 0o700 });
        await mkdir(p.staging, { mode: 0o700 });
        // upper's root is the guest's / (overlayfs gives it upper's owner and mode); its owner
        // also says which range the files below are in (followRange).
        for (const d of [p.upper, p.work, p.rootfs]) await mkdir(d, { mode: 0o755 });
        await chown(p.upper, range?.base ?? 0, range?.base ?? 0);
        await writeFile(p.consoleLog, '', { mode: 0o600 });
        await writeBundle(spec, image, range);
        await closeGuestDir(p, range);
      });
      await unmountCtLayer(runner, stateDir, spec.name);
    },

    async start(spec, image) {
      driver.validate(spec);
      const p = pathsOf(spec);
      if (!(await exists(p.bundle))) {
        throw failedPrecondition(`Guest ${spec.name} has no root file system on this host: create it first.`);
      }
      const running = await liveInit(spec);
      if (running) return running;
      await cleanUpRuntime(spec);
      const withNics = ctx.network?.hasNics(spec) ?? Object.keys(spec.devices ?? {}).length > 0;
      if (withNics && !ctx.network) {
        throw failedPrecondition(`Guest ${spec.name} has NICs but networking is not set up on this host.`);
      }
      return withRevert(async (r) => {
        // Mounted from here to the stop (decision 0094); a smaller limits.disk waits for a new image.
        const layer = await mountCtLayer(runner, ctLayerOf(stateDir, spec.name), { spec });
        r.add(() => unmountCtLayer(runner, stateDir, spec.name));
        if (layer.kept !== undefined) {
          log.warn(
            { guest: spec.name, bytes: layer.kept },
            'limits.disk is below the layer image: kept its size',
          );
        }
        // A guest made before decision 18 has no record: it ran on the shared range (or none).
        const previous =
          (await ranges.recorded(p.dir))?.base ?? (configValue.privileged(spec.config) ? 0 : idmapBase);
        const range = await rangeFor(spec, p.dir);
        if (range !== undefined) await ensureTraversable(spec);
        const base = range?.base ?? 0;
        await followRange(spec, p.upper, base, previous);
        // The overlay's root directory takes the upper dir's owner: make it the guest's root.
        await chown(p.upper, base, base);
        await chown(p.work, base, base);
        await closeGuestDir(p, range);
        // Guests made before decision 18 have no staging dir (and a world-readable config.json).
        await mkdir(p.staging, { mode: 0o700 }).catch(() => {});
        await chmod(p.bundle, 0o700);
        // Without a memory limit, no memory cgroup of its own (decision 0093): each one costs the
        // kernel a slot for every file system of every guest. The bundle records it for update().
        const sharedMemory =
          configValue.memoryBytes(spec.config) === undefined
            ? await sharedMemoryCgroup(cgroupParent)
            : undefined;
        const volumes = await writeBundle(spec, image, range, sharedMemory !== undefined);
        r.add(() => cleanUpRuntime(spec));
        // Create, plug NICs into the guest's network namespace, mount volumes into its mount
        // namespace and write its files into its root, then start: init finds them at boot.
        const inject = injectedFiles(spec.config).length > 0;
        const twoSteps = withNics || volumes.length > 0 || inject;

        // The previous boots' output is kept in console.log.1 once it passes 1 MiB. (A running
        // guest holds its log open, so a guest that prints without end still grows it until restart.)
        if (((await stat(p.consoleLog).catch(() => undefined))?.size ?? 0) > CONSOLE_LOG_ROTATE_BYTES) {
          await rename(p.consoleLog, `${p.consoleLog}.1`);
        }
        const before = (await stat(p.consoleLog).catch(() => undefined))?.size ?? 0;
        // runc -d exits once init runs; init keeps the log fd as its stdout/stderr and is
        // re-parented away from us. setsid (detached) keeps terminal signals off the guest.
        // The root is mounted in a mount namespace made for this start, where runc then runs
        // (overlay-rootfs.ts, docs/decisions/0064): the guest's namespace is cloned from it and
        // keeps the root; the host's mount table never holds it.
        const argv = privateRootArgv(
          {
            tree: image.rootfs,
            staging: p.staging,
            upper: p.upper,
            work: p.work,
            target: p.rootfs,
            ...(range && { idmap: range }),
          },
          // --no-new-keyring: a session keyring per guest would be owned by the shared mapped root
          // uid and hit the kernel's per-user key quota (kernel.keys.maxkeys, 200) at ~200 guests.
          // Guests cannot reach any keyring anyway: seccomp denies keyctl, add_key and request_key.
          [
            ...runc,
            ...(twoSteps ? ['create'] : ['run', '--detach']),
            '--no-new-keyring',
            '--pid-file',
            p.pidFile,
            '--bundle',
            p.bundle,
            spec.name,
          ],
          { sharedMemory },
        );
        const path = process.env.PATH || DEFAULT_PATH;
        // runc returns as soon as init has exec'd; a runc that hangs (stuck mount, full disk) is killed.
        // Through the launcher where there is one (decision 0097): no fork of the daemon per start.
        const code = launcher
          ? await launcher.run(argv, { path, logFile: p.consoleLog, timeoutMs: RUNC_RUN_TIMEOUT_MS })
          : await spawnWithLog(argv, path, p.consoleLog);
        if (code !== 0) {
          const output = (await readFile(p.consoleLog).catch(() => Buffer.alloc(0)))
            .subarray(before)
            .toString('utf8');
          if (code === ROOT_MOUNT_FAILED_EXIT) {
            throw rootMountError(output.trim().split('\n').pop() || `exit ${code}`);
          }
          const detail = output.trim().split('\n').slice(-3).join(' ').slice(0, 400);
          throw internal(`runc could not start guest ${spec.name} (exit ${code}): ${detail || 'no output'}`);
        }
        const pid = Number((await readFile(p.pidFile, 'utf8')).trim());
        // runc's init, waiting to exec the guest's: the same process (and start time) as the guest's init.
        const created = twoSteps ? await readProcessIdentity(pid) : undefined;
        // runc's init has made the root its own and waits to exec init: its /proc root is the guest's.
        if (inject) await injectFiles(spec, `/proc/${pid}/root`, range);
        if (withNics && ctx.network) await ctx.network.plugVeths(spec, pid);
        for (const volume of volumes) {
          const idmap = ctVolumeIdmap(idmapBase, base);
          await attachCtVolume(runner, volume, {
            pid,
            rootId: base,
            guest: spec.name,
            ...(idmap && { idmap }),
          });
        }
        if (twoSteps) await startCreated(spec, created);
        const identity = await readProcessIdentity(pid);
        if (!identity) {
          throw internal(`Guest ${spec.name}'s init (pid ${pid}) exited at once: see ${p.consoleLog}.`);
        }
        log.info({ guest: spec.name, pid: identity.pid }, 'guest started');
        return identity;
      });
    },

    async stop(spec, options) {
      const init = await liveInit(spec);
      if (init) {
        // A frozen task cannot act on a signal, not even SIGKILL in cgroup v1.
        const freezer = await readFreezerState(cgroupsPath(spec));
        if (freezer && freezer !== 'THAWED')
          await writeFreezerState(cgroupsPath(spec), 'THAWED').catch(() => {});
        let gone = false;
        if (!options.force) {
          await signalInit(spec, init, await stopSignalOf(spec));
          gone = await waitGone(init, options.timeoutMs);
        }
        if (!gone) {
          log.info({ guest: spec.name, force: options.force }, 'killing guest');
          await killInit(spec, init);
          if (!(await waitGone(init, KILL_WAIT_MS))) {
            throw internal(
              `Guest ${spec.name}'s init (pid ${init.pid}) survived SIGKILL: check the host for stuck I/O.`,
            );
          }
        }
      }
      await cleanUpRuntime(spec);
    },

    // The freezer written by the daemon, as `runc pause`/`resume` write it (writeFreezerState):
    // one spawn less each, and runc, which keeps no record of a pause, reports what it finds there.
    async freeze(spec) {
      await runningInit(spec);
      await setFreezer(spec, 'FROZEN');
    },

    async unfreeze(spec) {
      await runningInit(spec);
      await setFreezer(spec, 'THAWED');
    },

    async delete(spec) {
      const p = pathsOf(spec);
      const init = await liveInit(spec);
      // stop() cleans up once init is gone; a guest found stopped may still hold what a crash left.
      if (init) await driver.stop(spec, { timeoutMs: 0, force: true });
      else await cleanUpRuntime(spec);
      for (const point of [p.rootfs, p.staging]) {
        if (await isMountPoint(point)) {
          throw internal(
            `${point} is still mounted: unmount it by hand, then delete guest ${spec.name} again.`,
          );
        }
      }
      // Given back first: a claim that outlived its guest would hold 65536 ids for ever.
      await ranges.release(spec.name, p.dir);
      // Backup snapshots on a btrfs pool are read-only subvolumes, which rm cannot empty (decision 0067).
      await removeGuestSubvolumes(runner, p.dir);
      await rm(p.dir, { recursive: true, force: true });
      // The parent goes once its last guest is gone; rmdir refuses while others remain.
      await removeCgroup(cgroupParent);
    },

    async inspect(spec, known): Promise<RuntimeState> {
      const p = pathsOf(spec);
      // Synchronous: a stat and two kernel files, microseconds each, where the asynchronous reads
      // were seven round trips through libuv's pool; the guest controller's liveness pass inspects
      // every running guest every 2 s (decision 0097).
      if (!existsSync(p.dir)) return { state: 'absent' };
      const init = known ? (isSameProcessSync(known) ? known : undefined) : await liveInit(spec);
      if (!checkedDirs.has(spec.name)) {
        checkedDirs.add(spec.name);
        await closeEarlierDir(spec, p, init).catch((e: unknown) =>
          log.warn({ guest: spec.name, err: String(e) }, 'cannot close the guest directory'),
        );
      }
      if (!init) return { state: 'stopped' };
      const freezer = readFreezerStateSync(cgroupsPath(spec));
      return { state: freezer === 'FROZEN' || freezer === 'FREEZING' ? 'frozen' : 'running', process: init };
    },

    // readCgroupUsage reads synchronously (decision 0080's choice: microseconds a file), and the
    // metric sampler and ?recursion=2 ask for every running guest's at once: the reads take
    // turns, and the event loop has one every USAGE_BATCH guests, so that a pass over thousands of
    // guests (seconds on a loaded host) does not stop every start and API call meanwhile (decision 0097).
    usage(spec): Promise<GuestUsage> {
      const turn = usageTurns.then(async () => {
        if (++usageReads % USAGE_BATCH === 0) await new Promise<void>((resolve) => setImmediate(resolve));
        return readCgroupUsage(cgroupsPath(spec));
      });
      usageTurns = turn.catch(() => {});
      return turn;
    },

    async update(spec, changedKeys) {
      const p = pathsOf(spec);
      let shared = false;
      if (await exists(p.config)) {
        // Keep the bundle in step so that config.json tells the truth (start rewrites it anyway).
        const oci = await readBundle(spec);
        oci.linux.resources = ociResources(spec.config);
        await writeConfig(p.config, oci);
        shared = oci.annotations[MEMORY_CGROUP_ANNOTATION] === 'shared';
      }
      if (!(await liveInit(spec))) return [];
      // A guest started without a memory limit has no memory cgroup to hold one (decision 0093):
      // a limit set now applies at its next start, and one removed has nothing to remove.
      const noMemoryCgroup = shared && changedKeys.includes('limits.memory');
      const memoryLater = noMemoryCgroup && configValue.memoryBytes(spec.config) !== undefined;
      const live = changedKeys.filter(
        (k) => RUNC_UPDATE_KEYS.has(k) && !(k === 'limits.memory' && noMemoryCgroup),
      );
      if (live.length > 0) {
        const args: string[] = [];
        if (live.includes('limits.memory')) {
          const bytes = configValue.memoryBytes(spec.config);
          const value = bytes === undefined ? '-1' : String(bytes);
          args.push('--memory', value, '--memory-swap', value);
        }
        if (live.includes('limits.cpu')) {
          const cpus = configValue.cpus(spec.config);
          const quota = cpus === undefined ? -1 : Math.max(1000, Math.round(cpus * 100_000));
          args.push('--cpu-period', '100000', '--cpu-quota', String(quota));
        }
        if (live.includes('limits.processes')) {
          const n = configValue.processes(spec.config);
          args.push('--pids-limit', String(n ?? -1));
        }
        await runner.run([...runc, 'update', ...args, spec.name]);
      }
      return changedKeys.filter((k) => !isLiveKey(k) || (k === 'limits.memory' && memoryLater));
    },

    async exec(spec, options): Promise<ExecSession> {
      await runningInit(spec);
      if (options.command.length === 0)
        throw invalidArgument('The command to run is empty: give at least a program.');
      const user = options.user ?? 0;
      const group = options.group ?? (options.user === undefined ? 0 : options.user);
      const env: Record<string, string> = {
        ...DEFAULT_ENV,
        HOME: user === 0 ? '/root' : '/',
        ...configValue.environment(spec.config),
        ...options.env,
      };
      // runc writes the command's host pid here: a SIGKILL of the session kills the command and
      // what it started from the host (runc-exec.ts), which a SIGKILL of `runc exec` does not.
      // Outside the guest's directory: on a pool its subvolume has the guest's disk quota, and a
      // guest that filled it must still take the exec that frees it.
      await mkdir(execDir, { recursive: true, mode: 0o700 });
      const pidFile = join(execDir, `${spec.name}-${randomBytes(6).toString('hex')}.pid`);
      if (!options.tty) {
        delete env.TERM;
        const session = pipeExecSession(
          runner,
          [
            ...runc,
            'exec',
            '--pid-file',
            pidFile,
            ...Object.entries(env).flatMap(([k, v]) => ['--env', `${k}=${v}`]),
            '--cwd',
            options.cwd ?? '/',
            '--user',
            `${user}:${group}`,
            spec.name,
            ...options.command,
          ],
          pidFile,
        );
        void session.exit.finally(() => rm(pidFile, { force: true })).catch(() => {});
        return session;
      }
      // With a terminal, the process is given whole (`--process`): the guest's own process of
      // config.json (capabilities, rlimits, no_new_privs, as a plain exec gets them) with the
      // command, and the terminal's size as consoleSize, which runc sets before the command
      // runs. Given by flag (--tty), runc copies the size only after the command started, and a
      // command that asks at once (stty size, a full-screen program) saw 0x0 now and then.
      const columns = Math.floor(options.columns ?? 80);
      const rows = Math.floor(options.rows ?? 24);
      const p = pathsOf(spec);
      const config = JSON.parse(await readFile(p.config, 'utf8')) as { process: Record<string, unknown> };
      const processFile = join(execDir, `${spec.name}-${randomBytes(6).toString('hex')}.json`);
      const execProcess = {
        ...config.process,
        terminal: true,
        consoleSize: { height: rows, width: columns },
        user: { uid: user, gid: group },
        args: options.command,
        env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
        cwd: options.cwd ?? '/',
      };
      await writeFile(processFile, JSON.stringify(execProcess), { mode: 0o600 });
      try {
        const session = ttyExecSession(
          runner,
          [...runc, 'exec', '--process', processFile, '--pid-file', pidFile, spec.name],
          { columns, rows, pidFile },
        );
        void session.exit
          .finally(() => Promise.all([rm(processFile, { force: true }), rm(pidFile, { force: true })]))
          .catch(() => {});
        return session;
      } catch (e) {
        await rm(processFile, { force: true });
        throw e;
      }
    },

    async attachConsole(spec) {
      throw notSupported(
        `ct guests' consoles take no input (init writes to ${spec.name}'s console log): run a shell with \`trivisor exec -t ${spec.name} -- sh\``,
      );
    },

    // On the host side, through the init's /proc/PID/root: the guest's own view with its mounts
    // (a /tmp tmpfs…), walked symlink-safely (host/rooted-fs.ts). Works on frozen guests too.
    async pushFile(spec, options) {
      const { root, verify, range } = await liveRoot(spec);
      const rootId = { uid: hostId(spec, range, 0, 'uid'), gid: hostId(spec, range, 0, 'gid') };
      await writeFileInRoot(root, options.path, options.data, {
        mode: options.mode,
        uid: hostId(spec, range, options.uid, 'uid'),
        gid: hostId(spec, range, options.gid, 'gid'),
        ...(options.createDirs ? { createDirs: rootId } : {}),
        verify,
      });
    },

    async pullFile(spec, path) {
      const { root, verify, range } = await liveRoot(spec);
      const file = await readFileInRoot(root, path, { maxBytes: GUEST_FILE_MAX_BYTES, verify });
      return { ...file, uid: guestId(range, file.uid), gid: guestId(range, file.gid) };
    },

    consoleLogPath(spec) {
      return pathsOf(spec).consoleLog;
    },

    async observeNics(spec, { process }) {
      const init = await liveInit(spec, process);
      if (!init) throw failedPrecondition(`Guest ${spec.name} is not running.`);
      try {
        return { interfaces: readNetnsInterfaces(init.pid), engineErrors: [] };
      } catch {
        throw failedPrecondition(`Guest ${spec.name} is not running.`);
      }
    },

    // A veth into the running init's network namespace, as at start, with its address set from
    // the host: a guest started without NICs has no CAP_NET_ADMIN to configure it itself.
    async attachNic(spec, nic, { pid }) {
      if (!ctx.network) throw failedPrecondition('Networking is not set up on this host.');
      await ctx.network.plugVeth(spec, nic, pid);
      return 'live';
    },

    // Deleting the host end takes the guest end with it.
    async detachNic(spec, nic) {
      await ctx.network?.unplugNic(spec, nic);
      return 'live';
    },
  };
  return driver;
}
