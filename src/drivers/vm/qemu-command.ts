import { join } from 'node:path';
import { configValue, DEFAULT_VM_MEMORY_BYTES, type VmMachine } from '../../core/config-keys.ts';
import type { Accelerator } from './accelerator-probe.ts';
import type { BootKit } from './boot-kit.ts';
import { UEFI_VARS_FILE } from './firmware.ts';
import { portCount, portIdOf, rootPortArgs } from './pcie-ports.ts';
import type { QemuFds } from './qemu-fds.ts';

/**
 * Where a vm guest keeps its files: its own (disk, console log, uid, UEFI variables) in its
 * directory under the state dir, which may be a link to a shared pool (decision 0049), and what a
 * running QEMU owns (sockets, pid, boot record, QEMU's log, the config disk rebuilt at every
 * start) in a runtime directory of this member's own, `STATE/run/vm/NAME`, never on a pool: two
 * members each run a QEMU of the guest during a live move over a shared pool (decision 0061).
 */
export interface VmGuestPaths {
  dir: string;
  /** This member's runtime directory of the guest (what its QEMU here owns). */
  runDir: string;
  /** qcow2 overlay on the image's base disk. */
  disk: string;
  qmpSocket: string;
  consoleSocket: string;
  consoleLog: string;
  agentSocket: string;
  /** QEMU's pid, written by the daemon (QEMU cannot write in the guest dir). */
  pidFile: string;
  /** QEMU's stdout and stderr (its warnings and why it could not start). */
  qemuLog: string;
  /** The host uid QEMU runs as (allocated at create). */
  uidFile: string;
  /** JSON of what start() chose (BootRecord). */
  bootRecord: string;
  /** The read-only disk of injected files, rebuilt at every start. */
  configDisk: string;
  /** The guest's own UEFI variables (vm.firmware=uefi), made from OVMF's template. */
  uefiVars: string;
}

/** The guest's runtime files as they were named in its directory before decision 0061 (adopted once). */
export const LEGACY_RUNTIME_FILES = {
  qmpSocket: 'qmp.sock',
  consoleSocket: 'console.sock',
  agentSocket: 'agent.sock',
  pidFile: 'qemu.pid',
  qemuLog: 'qemu.log',
  bootRecord: 'boot.json',
} as const;

/** The guest dir and files of guest `name` (short socket names: sun_path holds 108 bytes). */
export function vmGuestPaths(stateDir: string, name: string): VmGuestPaths {
  const dir = join(stateDir, 'guests', name);
  const runDir = join(stateDir, 'run', 'vm', name);
  return {
    dir,
    runDir,
    disk: join(dir, 'root.qcow2'),
    qmpSocket: join(runDir, LEGACY_RUNTIME_FILES.qmpSocket),
    consoleSocket: join(runDir, LEGACY_RUNTIME_FILES.consoleSocket),
    consoleLog: join(dir, 'console.log'),
    agentSocket: join(runDir, LEGACY_RUNTIME_FILES.agentSocket),
    pidFile: join(runDir, LEGACY_RUNTIME_FILES.pidFile),
    qemuLog: join(runDir, LEGACY_RUNTIME_FILES.qemuLog),
    uidFile: join(dir, 'uid'),
    bootRecord: join(runDir, LEGACY_RUNTIME_FILES.bootRecord),
    configDisk: join(runDir, 'config.ext4'),
    uefiVars: join(dir, UEFI_VARS_FILE),
  };
}

/** Machine types a vm guest can have. */
/** What the driver can start; microvm is kept for measurements only (not a `vm.machine` value). */
export type MachineType = VmMachine | 'microvm';

const MiB = 1024 * 1024;
/** Guest RAM when limits.memory is not set. */
/** Below this Debian's cloud kernel with our initramfs does not reach init. */
export const MIN_VM_MEMORY_BYTES = 64 * MiB;
/** Size of TCG's translation block cache per guest (QEMU's default is 1 GiB). */
export const TCG_TB_SIZE_MIB = 64;
/** Root disk size when limits.disk is not set. */
export const DEFAULT_VM_DISK_BYTES = 2 * 1024 * MiB;

/** What limits turn into for QEMU. */
export interface VmResources {
  memoryMiB: number;
  vcpus: number;
  /** cfs quota (µs per 100 ms) for a fractional limits.cpu; undefined for whole CPUs. */
  cpuQuotaUs?: number;
}

/** limits.memory → guest RAM (whole MiB), limits.cpu → vCPUs (rounded up, the fraction as a host quota). */
export function vmResources(config: Record<string, string>): VmResources {
  const memoryBytes = configValue.memoryBytes(config) ?? DEFAULT_VM_MEMORY_BYTES;
  const cpus = configValue.cpus(config);
  const vcpus = Math.max(1, Math.ceil(cpus ?? 1));
  const resources: VmResources = { memoryMiB: Math.ceil(memoryBytes / MiB), vcpus };
  if (cpus !== undefined && cpus !== vcpus) resources.cpuQuotaUs = Math.max(1000, Math.round(cpus * 100_000));
  return resources;
}

/** One file of the root disk's chain, top first: what `qemu-img info --backing-chain` says. */
export interface DiskLayer {
  path: string;
  format: string;
  /** The layer is this byte range of the file (a live restore's disk inside its archive, decision 0063). */
  window?: { offsetBytes: number; sizeBytes: number };
}

/** The CD-ROM drives of a guest that boots through its firmware (ids `cd0`, `cd1`; media are iso volumes). */
export const CDROM_DRIVES = ['cd0', 'cd1'] as const;
export type CdromDrive = (typeof CDROM_DRIVES)[number];

/** UEFI firmware files of one guest: OVMF's code (shared, read-only) and the guest's own variables. */
export interface UefiFiles {
  code: string;
  vars: string;
  /** The Secure Boot build (needs SMM) with variables enrolled with Microsoft's keys. */
  secureBoot: boolean;
}

/**
 * How a guest that runs its own boot loader starts (a disk image, an ISO, a blank disk): its
 * firmware reads the boot order and boots from a disk or CD-ROM; no kernel is handed to QEMU.
 */
export interface FirmwareBoot {
  /** SeaBIOS (QEMU's default) when undefined; OVMF's pflash pair otherwise. */
  uefi?: UefiFiles;
  /** cdrom: the CD-ROM drives come first (an OS not installed yet), disk: the root disk. */
  bootFrom: 'disk' | 'cdrom';
  /** Media in the CD-ROM drives at boot: the iso file of each and its node (isoNodeOf its device). */
  media?: Partial<Record<CdromDrive, { path: string; node: string }>>;
}

/** Device models of a guest (`vm.disk_bus`, `vm.nic_model`, `vm.display`). */
export interface VmDevices {
  diskBus: 'virtio' | 'sata';
  nicModel: 'virtio' | 'e1000';
  /** A VGA device and QEMU's VNC server with no listening socket (clients come through `add_client`). */
  display: boolean;
}

/** Everything qemuArgv needs. */
export interface QemuCommandOptions {
  name: string;
  paths: VmGuestPaths;
  /** Where every file and socket QEMU uses is registered: QEMU gets them as descriptors. */
  fds: QemuFds;
  /**
   * The root disk and its backing files (top first; default: the qcow2 alone). Each is
   * opened by the daemon and named in the -blockdev tree, so QEMU never opens a backing
   * file by the path in a header.
   */
  rootChain?: readonly DiskLayer[];
  /** The cloud kernel and initramfs of a guest booted with the kit (neither firmware nor foreignKernel). */
  kit?: BootKit;
  /** The guest boots its own disk or CD through its firmware: no kernel, no kit. */
  firmware?: FirmwareBoot;
  /** Device models; default virtio disk and NICs, no display. */
  devices?: VmDevices;
  accelerator: Accelerator;
  machine: MachineType;
  resources: VmResources;
  /** Words for the kernel command line after the driver's own (the kit's init=, trivisor.*). */
  kernelArgs: string[];
  /**
   * A kernel of another OS booted as it is (image property `vm.kernel`): no
   * initramfs, and `kernelArgs` are its whole command line.
   */
  foreignKernel?: string;
  /** The guest's NICs, in order: a tap the host made (on its bridge) and the NIC's MAC each (handed over as an fd). */
  nics?: ReadonlyArray<{ nic?: string; tap: string; mac: string }>;
  /** The guest's config disk (injected files), read-only on virtio-blk right after the root: `/dev/vdb`. */
  configDisk?: string;
  /** false: the guest's RAM is not offered to KSM (`mem-merge=off`, decision 0060); default on. */
  memMerge?: boolean;
}

/** A layer's file node, under a `raw` node of its byte range when it is a window of the file. */
const windowed = (l: DiskLayer, file: Record<string, unknown>): Record<string, unknown> =>
  l.window
    ? { driver: 'raw', 'read-only': true, offset: l.window.offsetBytes, size: l.window.sizeBytes, file }
    : file;

/** The node tree of the root disk: the qcow2 (node `root`) over its read-only backing files. */
export function rootBlockdev(chain: readonly DiskLayer[], fds: QemuFds): Record<string, unknown> {
  // Backing files are the image's shared base disk: QEMU takes no locks on them, since other
  // engines read them too (UML locks a disk whole, which QEMU's byte-range locks take for a
  // writer) and nothing ever writes them.
  const layer = (i: number): Record<string, unknown> | null => {
    const l = chain[i];
    if (!l) return null;
    const top = i === 0;
    const file = fds.fdset({ kind: 'file', path: l.path, access: top ? 'readwrite' : 'read' });
    return {
      driver: l.format,
      ...(top ? { 'node-name': 'root', discard: 'unmap' } : { 'read-only': true }),
      file: windowed(l, {
        driver: 'file',
        filename: file,
        ...(top ? {} : { 'read-only': true, locking: 'off' }),
      }),
      // null: no backing file, whatever the header names; raw files have none to name.
      ...(l.format === 'raw' ? {} : { backing: layer(i + 1) }),
    };
  };
  return layer(0) ?? {};
}

/**
 * The QEMU command line of a vm guest, every file, socket and tap of it a
 * descriptor registered in `fds` (the launcher of qemu-fds.ts opens them as
 * root): QMP and the serial console on unix sockets (the console also logged
 * to console.log), the qcow2 root on virtio-blk,
 * virtio-rng, a balloon for live memory lowering, the guest agent's
 * virtio-serial port, and a virtio-net device on its host tap per NIC (none without NICs).
 */
export function qemuArgv(options: QemuCommandOptions): string[] {
  const { paths, kit, accelerator, machine, resources, firmware } = options;
  const devices: VmDevices = options.devices ?? { diskBus: 'virtio', nicModel: 'virtio', display: false };
  const microvm = machine === 'microvm';
  // microvm has no PCI: its devices sit on virtio-mmio.
  const bus = microvm ? 'device' : 'pci';
  const { fds } = options;
  // microvm boots Debian's cloud kernel under TCG only with the legacy PIT and PIC on: without
  // them it hangs calibrating the clock (bench/vm-variants.ts).
  const machineArg = microvm
    ? 'microvm,isa-serial=on,rtc=on,pit=on,pic=on'
    : firmware?.uefi
      ? // OVMF's code and the guest's variables as the machine's two flash chips (nodes below);
        // the Secure Boot build keeps its variables in SMM-protected flash.
        `${machine},pflash0=fw-code,pflash1=fw-vars${firmware.uefi.secureBoot ? ',smm=on' : ''}`
      : machine;
  // Guest RAM marked mergeable (MADV_MERGEABLE) for KSM, which the daemon runs while vm guests
  // do (decision 0060). QEMU's default is on already; said here so that no machine default or
  // distribution build can turn it off unseen, and off where the administrator wants no merging.
  const machineArgs = `${machineArg},mem-merge=${options.memMerge === false ? 'off' : 'on'}`;
  // TCG's translation cache defaults to 1 GiB and fills up over time: bounded, a 128 MiB
  // guest's QEMU holds about half the host memory.
  const accelArg = accelerator === 'tcg' ? `tcg,tb-size=${TCG_TB_SIZE_MIB}` : 'kvm';
  const chardev = (id: string, socket: string, extra = ''): string[] => [
    '-chardev',
    `socket,id=${id},fd=${fds.fd({ kind: 'listen', path: socket })},server=on,wait=off${extra}`,
  ];
  // The kernel loader opens its files by name (fopen): /proc/self/fd/N reopens the inherited
  // descriptor without walking the state dir, so only the file's own mode must let QEMU read it.
  const procFd = (path: string): string => `/proc/self/fd/${fds.fd({ kind: 'file', path, access: 'read' })}`;
  let boot: string[];
  if (firmware) {
    boot = firmware.uefi ? uefiArgs(firmware.uefi, fds) : [];
  } else if (options.foreignKernel) {
    boot = ['-kernel', procFd(options.foreignKernel), '-append', options.kernelArgs.join(' ')];
  } else {
    if (!kit) throw new Error('qemuArgv: a guest booted with the kit needs its kit');
    boot = [
      '-kernel',
      procFd(kit.kernelPath),
      '-initrd',
      procFd(kit.initramfsPath),
      '-append',
      [
        'console=ttyS0',
        'root=/dev/vda',
        'rootfstype=ext4',
        'rw',
        'quiet',
        // A kernel panic (an init that exits) restarts, and -no-reboot turns that into QEMU's exit.
        'panic=-1',
        ...options.kernelArgs,
      ].join(' '),
    ];
  }
  const rootChain = options.rootChain ?? [{ path: paths.disk, format: 'qcow2' }];
  // With a firmware the boot order is the devices' bootindex: the CD-ROMs first until the OS is
  // installed (a blank disk), the disk first after that.
  const cdFirst = firmware?.bootFrom === 'cdrom';
  const bootIndex = (what: 'disk' | CdromDrive): string => {
    if (!firmware) return '';
    const order = cdFirst ? [...CDROM_DRIVES, 'disk'] : ['disk', ...CDROM_DRIVES];
    return `,bootindex=${order.indexOf(what) + 1}`;
  };
  const sata = devices.diskBus === 'sata';
  // q35 has an AHCI controller of six ports (ide.0…ide.5); pc has two IDE buses of two units.
  const ataBus = (n: number): string => (machine === 'q35' ? `ide.${n}` : `ide.${n >> 1},unit=${n & 1}`);
  const rootDevice = sata
    ? `ide-hd,drive=root,bus=${ataBus(0)},werror=enospc,rerror=report${bootIndex('disk')}`
    : // What -drive did by default: a full disk pauses the guest (io-error) instead of failing its writes.
      `virtio-blk-${bus},drive=root,werror=enospc,rerror=report${bootIndex('disk')}`;
  return [
    'qemu-system-x86_64',
    '-name',
    `guest=${options.name},debug-threads=on`,
    '-machine',
    machineArgs,
    '-accel',
    accelArg,
    '-cpu',
    accelerator === 'kvm' ? 'host' : 'max',
    '-m',
    String(resources.memoryMiB),
    '-smp',
    String(resources.vcpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    // An OS of its own reboots (an installer does at its end): QEMU stays, as a machine would.
    // The kit's guests are powered off instead, so that a broken boot is a dead QEMU.
    ...(firmware ? [] : ['-no-reboot']),
    // seccomp: obsolete system calls, set*uid/gid, fork and exec, and scheduler/affinity changes
    // are refused. QEMU is not daemonized (the launcher starts it detached): -daemonize forks,
    // which spawn=deny forbids.
    '-sandbox',
    'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    ...chardev('qmp', paths.qmpSocket),
    '-mon',
    'chardev=qmp,mode=control',
    ...chardev(
      'console',
      paths.consoleSocket,
      `,logfile=${fds.fdset({ kind: 'file', path: paths.consoleLog, access: 'append' })},logappend=on`,
    ),
    '-serial',
    'chardev:console',
    ...boot,
    '-blockdev',
    JSON.stringify(rootBlockdev(rootChain, fds)),
    '-device',
    rootDevice,
    ...(options.configDisk
      ? [
          '-blockdev',
          JSON.stringify({
            driver: 'raw',
            'node-name': 'config',
            'read-only': true,
            file: {
              driver: 'file',
              filename: fds.fdset({ kind: 'file', path: options.configDisk, access: 'read' }),
              'read-only': true,
            },
          }),
          '-device',
          `virtio-blk-${bus},drive=config,serial=trivisor-config`,
        ]
      : []),
    ...(firmware ? cdromArgs(firmware, { ataBus, bootIndex, fds }) : []),
    ...(devices.display ? displayArgs() : []),
    '-object',
    'rng-random,id=rng,filename=/dev/urandom',
    '-device',
    `virtio-rng-${bus},rng=rng`,
    '-device',
    `virtio-balloon-${bus},id=balloon,free-page-reporting=on`,
    '-device',
    `virtio-serial-${bus},id=vser`,
    ...chardev('agent', paths.agentSocket),
    '-device',
    'virtserialport,bus=vser.0,chardev=agent,name=org.qemu.guest_agent.0',
    ...nicArgs(options.nics ?? [], { bus, machine, fds, model: devices.nicModel }),
  ];
}

/** OVMF's code (read-only, shared) and the guest's variables (its own) as flash nodes, both descriptors. */
function uefiArgs(uefi: UefiFiles, fds: QemuFds): string[] {
  const node = (name: string, path: string, readOnly: boolean) =>
    JSON.stringify({
      driver: 'raw',
      'node-name': name,
      ...(readOnly ? { 'read-only': true } : {}),
      file: {
        driver: 'file',
        filename: fds.fdset({ kind: 'file', path, access: readOnly ? 'read' : 'readwrite' }),
        ...(readOnly ? { 'read-only': true } : {}),
      },
    });
  return [
    '-blockdev',
    node('fw-code', uefi.code, true),
    '-blockdev',
    node('fw-vars', uefi.vars, false),
    // Only SMM code may write the variables: what Secure Boot's keys rely on.
    ...(uefi.secureBoot ? ['-global', 'driver=cfi.pflash01,property=secure,value=on'] : []),
  ];
}

/** The QEMU node of an ISO volume's medium (the same at boot and hot-inserted, so either can be ejected). */
export const isoNodeOf = (device: string): string => `iso-${device}`.slice(0, 31);

/** Two CD-ROM drives on the ATA bus after the root disk's port, with their media (read-only descriptors). */
function cdromArgs(
  firmware: FirmwareBoot,
  helpers: { ataBus: (n: number) => string; bootIndex: (what: CdromDrive) => string; fds: QemuFds },
): string[] {
  return CDROM_DRIVES.flatMap((drive, i) => {
    const medium = firmware.media?.[drive];
    const node = medium?.node;
    return [
      ...(medium
        ? [
            '-blockdev',
            JSON.stringify({
              driver: 'raw',
              'node-name': node,
              'read-only': true,
              file: {
                driver: 'file',
                filename: helpers.fds.fdset({ kind: 'file', path: medium.path, access: 'read' }),
                'read-only': true,
              },
            }),
          ]
        : []),
      '-device',
      `ide-cd,id=${drive},bus=${helpers.ataBus(2 + i)}${node ? `,drive=${node}` : ''}${helpers.bootIndex(drive)}`,
    ];
  });
}

/**
 * A VGA device (text modes, VBE for firmware and boot loaders, GOP under OVMF), a USB tablet so
 * that a viewer's pointer lands where it is shown, and QEMU's VNC server with no listening
 * socket: each viewer is a socket pair the daemon hands over (`add_client`), nothing listens.
 */
function displayArgs(): string[] {
  return [
    '-device',
    'VGA,id=video0',
    '-device',
    'qemu-xhci,id=usb',
    '-device',
    'usb-tablet,bus=usb.0',
    '-vnc',
    'none',
  ];
}

/** The QEMU device of a NIC model (e1000 for OSes without virtio drivers). */
export const nicDriverOf = (model: 'virtio' | 'e1000', bus = 'pci'): string =>
  model === 'e1000' ? 'e1000' : `virtio-net-${bus}`;

/** QEMU ids of a NIC's netdev and device (the same at boot and when hot-plugged, so either can be unplugged). */
export const nicEngineIds = (nic: string): { netdev: string; device: string } => ({
  netdev: `hn-${nic}`,
  device: `nic-${nic}`,
});

/**
 * One virtio-net device per NIC on the tap the host made and put on the bridge, handed
 * over attached (QEMU configures nothing on the host and cannot open /dev/net/tun). In command-line order, so the
 * guest kernel names them eth0, eth1… in the NICs' order.
 */
function nicArgs(
  nics: ReadonlyArray<{ nic?: string; tap: string; mac: string }>,
  options: { bus: string; machine: string; fds: QemuFds; model: 'virtio' | 'e1000' },
): string[] {
  // On q35 the NICs sit on hot-plug root ports (always there, so that a running guest can take
  // a NIC), and the ones plugged at boot can go live too.
  const ports = rootPortArgs('nic', options.machine);
  if (nics.length === 0) return [...ports, '-nic', 'none'];
  return [
    ...ports,
    ...nics.flatMap((n, i) => {
      const ids = n.nic !== undefined ? nicEngineIds(n.nic) : { netdev: `net${i}`, device: undefined };
      const port = ports.length > 0 && i < portCount('nic') ? `,bus=${portIdOf('nic', i)}` : '';
      return [
        '-netdev',
        `tap,id=${ids.netdev},fd=${options.fds.fd({ kind: 'tap', name: n.tap })}`,
        '-device',
        `${nicDriverOf(options.model, options.bus)},netdev=${ids.netdev},mac=${n.mac}${ids.device ? `,id=${ids.device}` : ''}${port}`,
      ];
    }),
  ];
}
