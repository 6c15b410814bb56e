import { mkdir, open, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { configValue } from '../../core/config-keys.ts';
import { failedPrecondition, internal, invalidArgument } from '../../core/errors.ts';
import { injectedFiles } from '../../core/guest-files.ts';
import { withRevert } from '../../core/revert.ts';
import { parseBytes } from '../../core/sizes.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { MEMORY_RECLAIM_ENV } from '../../host/ksm.ts';
import { isSameProcess, readProcessIdentity } from '../../host/proc-stat.ts';
import { KIT_INIT_MARKER, kitKernelArgs } from '../../images/guest-kit.ts';
import { writeConfigDisk } from '../config-disk.ts';
import type { GuestDriver, ImageHandle } from '../guest-driver.ts';
import { kvmAccess } from './accelerator-probe.ts';
import { diskIsInstalled, ensureUefiVars, requireOvmf } from './firmware.ts';
import {
  CDROM_DRIVES,
  type CdromDrive,
  DEFAULT_VM_DISK_BYTES,
  type DiskLayer,
  type FirmwareBoot,
  isoNodeOf,
  qemuArgv,
  type VmDevices,
  vmResources,
} from './qemu-command.ts';
import { launcherArgv, type QemuIdentity, qemuFds } from './qemu-fds.ts';
import { assertBootConfig, type BootMode, bootModeOf, foreignBootOf } from './vm-boot.ts';
import {
  exists,
  KIT_INIT_FAILED,
  POLL_MS,
  QEMU_READY_TIMEOUT_MS,
  VM_CONFIG_DEVICE,
  type VmContext,
} from './vm-context.ts';
import { liveRestoreLayer, readLiveRestore } from './vm-live-restore.ts';
import { ensureRuntimeDir } from './vm-runtime-dir.ts';
import { vmVolumeArgs } from './vm-volumes.ts';

/**
 * The qemu-img argv that makes a guest's disk: a qcow2 of `bytes`, blank, or over `backing` (the
 * image's base disk: a raw ext4 image of a tree, or a disk image's qcow2), as the driver's create does.
 */
export function diskCreateArgv(
  disk: string,
  bytes: number,
  backing?: { file: string; format: 'raw' | 'qcow2' },
): string[] {
  return [
    ...['qemu-img', 'create', '-q', '-f', 'qcow2'],
    ...(backing ? ['-F', backing.format, '-b', backing.file] : []),
    disk,
    String(bytes),
  ];
}

/** Creating a guest's disk and starting its QEMU: the argv, the launcher, and the waits until it has booted. */
/** The launch part of the vm driver: the driver's create and start, and the destination's start of a live migration. */
export interface VmLaunch extends Pick<GuestDriver, 'create' | 'start'> {
  /** Starts the guest's QEMU waiting for a live migration (paused, `-incoming defer`); its disk must exist. */
  startIncoming(spec: GuestSpec, image: ImageHandle): Promise<ProcessIdentity>;
}

export function createVmLaunch(c: VmContext): VmLaunch {
  const {
    ctx,
    self,
    runner,
    stateDir,
    log,
    machine,
    startTimeoutMs,
    pathsOf,
    agents,
    ovmfDir,
    bootKit,
    accelerator,
    readUid,
    allocateUid,
    writeBoot,
    liveQemu,
    withQmp,
    cgroupDirsOf,
    setCpuQuota,
    cleanUpRuntime,
    unrecordedQemu,
    killQemu,
  } = c;

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
    // A live restore's disk (decision 0063): its backing is the archive the daemon noted, never the header's name.
    const live = await readLiveRestore(stateDir, spec.name);
    if (live) return [top, liveRestoreLayer(live)];
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

  return {
    async create(spec, image) {
      self().validate(spec);
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
          await runner.run(diskCreateArgv(p.disk, size));
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
          await runner.run(diskCreateArgv(p.disk, diskBytes, { file: base, format }));
        }
        if (mode === 'firmware' && configValue.vmFirmware(spec.config) === 'uefi') {
          const secureBoot = configValue.vmSecureBoot(spec.config);
          await ensureUefiVars(p.dir, await requireOvmf(ovmfDir, secureBoot), { secureBoot });
        }
        await writeFile(p.consoleLog, '', { mode: 0o600 });
      });
    },
    start: (spec, image) => launch(spec, image, false),
    startIncoming: (spec, image) => launch(spec, image, true),
  };

  /**
   * Starts the guest's QEMU; `incoming`: with the same machine, devices and MACs but waiting for
   * a live migration (`-incoming defer -S`: nothing runs until the migration is in and the
   * daemon says `cont`), resolving once QMP answers, not once it has booted.
   */
  async function launch(spec: GuestSpec, image: ImageHandle, incoming: boolean): Promise<ProcessIdentity> {
    self().validate(spec);
    const p = pathsOf(spec);
    if (!(await exists(p.disk))) {
      throw failedPrecondition(`Guest ${spec.name} has no disk on this host: create it first.`);
    }
    const running = await liveQemu(spec);
    if (running) return running;
    // A QEMU whose sockets answer though no boot record names it (another start of the guest, whose
    // record comes after its sockets): a second one would take its sockets (issue 13).
    if (!(await cleanUpRuntime(spec))) throw unrecordedQemu(spec);
    await ensureRuntimeDir(p);
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
      // In the runtime directory: a QEMU of the guest on another member may hold the guest's (decision 0061).
      const configDisk = p.configDisk;
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
        // The daemon's memory reclaim off: not even another daemon's KSM merges this guest's RAM.
        ...(process.env[MEMORY_RECLAIM_ENV] === 'off' && { memMerge: false }),
      });
      // Attached block volumes, and on q35 the root ports that let volumes come and go live.
      argv.push(...vmVolumeArgs(volumes, guestMachine, fds));
      argv.push(...fds.addFdArgs());
      if (incoming) argv.push('-incoming', 'defer', '-S');
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
      if (incoming) {
        log.info({ guest: spec.name, pid, uid: identity.uid }, 'vm guest waiting for its live migration');
        return started;
      }
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
  }
}
