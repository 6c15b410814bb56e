import {
  access,
  chmod,
  chown,
  lstat,
  mkdir,
  open,
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
import { configValue } from '../../core/config-keys.ts';
import {
  asTrivisorError,
  failedPrecondition,
  internal,
  invalidArgument,
  unavailable,
} from '../../core/errors.ts';
import { injectedFiles } from '../../core/guest-files.ts';
import { withRevert } from '../../core/revert.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { ensureSharedMount } from '../../host/mounts.ts';
import { isSameProcess, readChildPids, readProcessIdentity } from '../../host/proc-stat.ts';
import { imageInitArgv, KIT_INIT_MARKER } from '../../images/guest-kit.ts';
import { writeConfigDisk } from '../config-disk.ts';
import type { GuestDriver, ImageHandle, ProbeResult } from '../guest-driver.ts';
import { createUidAllocator } from '../guest-uids.ts';
import { createBaseDiskTwins } from './base-disk-twin.ts';
import {
  BOOT_TIMEOUT_MS,
  exists,
  HOST_OVERHEAD_BYTES,
  JAIL_FORK_TIMEOUT_MS,
  MAX_SOCKET_PATH,
  MiB,
  POLL_MS,
  type ProcessRecord,
  PVM_MIN_MEMORY_BYTES,
  type PvmContext,
  UID_SLOTS,
  UMID,
} from './pvm-context.ts';
import { bootVolumes, preparePvmVolumes, umlVolumeArgs } from './pvm-volumes.ts';
import { makeUmlCgroup, setUmlCgroupLimits } from './uml-cgroup.ts';
import { SETARCH, umlArgv, umlLauncherArgv } from './uml-command.ts';
import { readUmlCowHeader } from './uml-cow.ts';
import { BWRAP, programFilesOf, SETPRIV } from './uml-jail.ts';
import { readTail } from './uml-net-log.ts';
import { umlSeccompProgram } from './uml-seccomp.ts';

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
 * Probing the host, validating a spec, creating a guest's dirs and disk, and booting its UML
 * kernel in its jail (launcher, cgroup, FIFOs, config disk, COW base disk) until init runs.
 */
export function pvmBoot(c: PvmContext): Pick<GuestDriver, 'probe' | 'validate' | 'create' | 'start'> {
  const { ctx, self, runner, stateDir, log, kernelPath, uidBase, cgroupParent, cgroupsPath } = c;
  const { pathsOf, diskBytesOf, memoryOf, liveUml, cleanUpRuntime, readUid, writeNicSlots, limitsOf } = c;
  // What the jail binds for the kernel to run: linux.uml, setpriv, setarch and the libraries they load.
  let programFiles: Promise<string[]> | undefined;
  const jailProgramFiles = (): Promise<string[]> => {
    programFiles ??= programFilesOf([kernelPath, SETPRIV, SETARCH], runner).catch((e: unknown) => {
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

  /** The lowest uid no other pvm guest of this state dir holds (serialised: two creates must not share one). */
  const allocateUid = createUidAllocator({
    stateDir,
    base: uidBase,
    slots: UID_SLOTS,
    model: 'pvm',
    uidFileOf: (spec) => pathsOf(spec).uidFile,
  });

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
      // The panic's own line and what the block driver said before it (why the root disk did not
      // open: a lock, a missing backing file, a size or time mismatch), then the last lines: a
      // stack trace after the panic would hide why.
      const lines = text.trim().split('\n');
      const panic = lines.find((l) => /Kernel panic|not syncing/.test(l))?.trim();
      const disk = lines
        .filter((l) => /ubd|errno|backing|cow|EXT4-fs|failed to/i.test(l) && !/command line|^\s*\[</i.test(l))
        .slice(-2)
        .map((l) => l.trim());
      const last = lines.slice(-3).join(' ');
      const cause = [...disk, ...(panic && !last.includes(panic) ? [panic] : [])].join(' … ');
      const tail = (cause ? `${cause} … ${last}` : last).slice(0, 600);
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

  /**
   * The base disk to boot a COW file over, by the path its header names (UML rewrites a
   * header whose path differs) and the real file the jail binds there. The kernel owns its
   * COW file, header included, so a kernel a guest took over could name any host file there,
   * which root would bind into its jail at the next start: only an image's base disk (beside
   * the image's current one, or under the state dir's images) is taken. A header naming a
   * file that is gone gets the image's current base disk, as before.
   */
  const umlTwinOf = createBaseDiskTwins(runner);

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

  return {
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
      // Without it every boot of a guest would get a different share of its memory (decision 0081).
      if (!(await exists(SETARCH))) {
        warnings.push(
          `${SETARCH} (util-linux) is missing: pvm guests cannot start with a fixed memory layout.`,
        );
      }
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
      self().validate(spec);
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
        await mkdir(p.diskDir, { mode: 0o700 });
        await chown(p.diskDir, uid, uid);
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
      self().validate(spec);
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
      if (!(await exists(SETARCH))) {
        throw failedPrecondition(
          `${SETARCH} is missing: pvm guests start through it (apt-get install util-linux).`,
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
      // A boot whose kernel could not open its root disk for lack of its own memory (error -12,
      // ENOMEM, seen now and then in CI for 64 MiB guests, not understood yet) is tried once more.
      for (let attempt = 1; ; attempt++) {
        try {
          return await bootOnce();
        } catch (e) {
          if (attempt >= 2 || !/unknown-block\(98,0\): error -12/.test(asTrivisorError(e).message)) throw e;
          log.warn(
            { guest: spec.name, err: asTrivisorError(e).message },
            'the UML kernel could not open its root disk (error -12): booting it once more',
          );
        }
      }

      function bootOnce() {
        return withRevert(async (r) => {
          await writeFile(
            join(p.dir, 'stop-signal'),
            `${image.record.properties['stop.signal'] ?? 'SIGTERM'}\n`,
          );
          r.add(() => cleanUpRuntime(spec));
          // This member's runtime directory (decision 0066), made at each start: a guest on a
          // shared pool may have run on another member, whose uml_dir this one never sees.
          await mkdir(p.runtimeDir, { recursive: true, mode: 0o700 });
          await mkdir(p.runDir, { recursive: true, mode: 0o700 });
          await chown(p.runDir, uid, uid);
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
          const jail = {
            uid,
            programFiles: await jailProgramFiles(),
            writableDirs: [p.diskDir, p.runDir],
            readOnlyFiles: [
              // UML reads the base disk's twin, at the base disk's path (base-disk-twin.ts).
              ...(raw ? [] : [{ path: baseDisk, source: await umlTwinOf(baseSource) }]),
              ...(withConfig ? [configDisk] : []),
            ],
            volumes: volumes.map((v) => ({ device: v.device, hostPath: v.hostPath })),
            memoryTmpfsBytes: memoryBytes + HOST_OVERHEAD_BYTES,
          };
          await writeFile(p.seccomp, umlSeccompProgram(), { mode: 0o600 });
          // The launcher joins the cgroup before exec so that every UML helper is born inside it,
          // then the jail drops to the guest's uid: the kernel never runs as root on the host.
          for (const fifo of [p.agentIn, p.agentOut, p.consoleIn]) {
            await rm(fifo, { force: true });
            await runner.run(['mkfifo', '-m', '0600', fifo]);
          }
          const launcher = umlLauncherArgv({
            agentIn: p.agentIn,
            agentOut: p.agentOut,
            consoleIn: p.consoleIn,
            seccompPath: p.seccomp,
            cgroupProcs: procs,
            jail,
            kernel: argv,
          });
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
            throw internal(
              `Guest ${spec.name}'s UML kernel (pid ${pid}) exited at once: see ${p.consoleLog}.`,
            );
          }
          const identity = await jailedKernel(spec, launched);
          const record: ProcessRecord = { ...identity, uid, memoryBytes };
          await writeFile(`${p.processFile}.tmp`, JSON.stringify(record));
          await rename(`${p.processFile}.tmp`, p.processFile);
          await waitForInit(spec, identity, before);
          log.info({ guest: spec.name, pid: identity.pid, uid }, 'guest started');
          return identity;
        });
      }
    },
  };
}
