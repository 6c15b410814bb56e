import { join } from 'node:path';
import { configValue, type VmMachine } from '../../core/config-keys.ts';
import type { Accelerator } from './accelerator-probe.ts';
import type { BootKit } from './boot-kit.ts';
import { portCount, portIdOf, rootPortArgs } from './pcie-ports.ts';

/** Where a vm guest keeps its files under the state dir. */
export interface VmGuestPaths {
  dir: string;
  /** qcow2 overlay on the image's base disk. */
  disk: string;
  qmpSocket: string;
  consoleSocket: string;
  consoleLog: string;
  agentSocket: string;
  pidFile: string;
  /** JSON of what start() chose (BootRecord). */
  bootRecord: string;
}

/** The guest dir and files of guest `name` (short socket names: sun_path holds 108 bytes). */
export function vmGuestPaths(stateDir: string, name: string): VmGuestPaths {
  const dir = join(stateDir, 'guests', name);
  return {
    dir,
    disk: join(dir, 'root.qcow2'),
    qmpSocket: join(dir, 'qmp.sock'),
    consoleSocket: join(dir, 'console.sock'),
    consoleLog: join(dir, 'console.log'),
    agentSocket: join(dir, 'agent.sock'),
    pidFile: join(dir, 'qemu.pid'),
    bootRecord: join(dir, 'boot.json'),
  };
}

/** Machine types a vm guest can have. */
/** What the driver can start; microvm is kept for measurements only (not a `vm.machine` value). */
export type MachineType = VmMachine | 'microvm';

const MiB = 1024 * 1024;
/** Guest RAM when limits.memory is not set. */
export const DEFAULT_VM_MEMORY_BYTES = 256 * MiB;
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

/** Everything qemuArgv needs. */
export interface QemuCommandOptions {
  name: string;
  paths: VmGuestPaths;
  kit: BootKit;
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
  /** The guest's NICs, in order: a tap the host made (on its bridge) and the NIC's MAC each. */
  nics?: ReadonlyArray<{ nic?: string; tap: string; mac: string }>;
  /** The guest's config disk (injected files), read-only on virtio-blk right after the root: `/dev/vdb`. */
  configDisk?: string;
  /**
   * The root disk has a backing file (the image's shared base disk): QEMU then takes no
   * locks on it, since other engines read it too (UML locks it whole, which QEMU's
   * byte-range locks take for a writer) and nothing ever writes it.
   */
  sharedBacking?: boolean;
}

/**
 * The QEMU command line of a vm guest: daemonized with a pid file (the guest
 * outlives the daemon), QMP and the serial console on unix sockets (the
 * console also logged to console.log), the qcow2 root on virtio-blk,
 * virtio-rng, a balloon for live memory lowering, the guest agent's
 * virtio-serial port, and a virtio-net device on its host tap per NIC (none without NICs).
 */
export function qemuArgv(options: QemuCommandOptions): string[] {
  const { paths, kit, accelerator, machine, resources } = options;
  const microvm = machine === 'microvm';
  // microvm has no PCI: its devices sit on virtio-mmio.
  const bus = microvm ? 'device' : 'pci';
  // microvm boots Debian's cloud kernel under TCG only with the legacy PIT and PIC on: without
  // them it hangs calibrating the clock (bench/vm-variants.ts).
  const machineArg = microvm ? 'microvm,isa-serial=on,rtc=on,pit=on,pic=on' : machine;
  // TCG's translation cache defaults to 1 GiB and fills up over time: bounded, a 128 MiB
  // guest's QEMU holds about half the host memory.
  const accelArg = accelerator === 'tcg' ? `tcg,tb-size=${TCG_TB_SIZE_MIB}` : 'kvm';
  const append = options.foreignKernel
    ? options.kernelArgs
    : [
        'console=ttyS0',
        'root=/dev/vda',
        'rootfstype=ext4',
        'rw',
        'quiet',
        // A kernel panic (an init that exits) restarts, and -no-reboot turns that into QEMU's exit.
        'panic=-1',
        ...options.kernelArgs,
      ];
  const boot = options.foreignKernel
    ? ['-kernel', options.foreignKernel]
    : ['-kernel', kit.kernelPath, '-initrd', kit.initramfsPath];
  return [
    'qemu-system-x86_64',
    '-name',
    `guest=${options.name},debug-threads=on`,
    '-machine',
    machineArg,
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
    '-no-reboot',
    // seccomp: obsolete system calls and scheduler/affinity changes are refused. spawn=deny and
    // elevateprivileges=deny would be stricter, but -daemonize forks and QEMU 7.2 then fails to start.
    '-sandbox',
    'on,obsolete=deny,resourcecontrol=deny',
    '-daemonize',
    '-pidfile',
    paths.pidFile,
    '-chardev',
    `socket,id=qmp,path=${paths.qmpSocket},server=on,wait=off`,
    '-mon',
    'chardev=qmp,mode=control',
    '-chardev',
    `socket,id=console,path=${paths.consoleSocket},server=on,wait=off,logfile=${paths.consoleLog},logappend=on`,
    '-serial',
    'chardev:console',
    ...boot,
    '-append',
    append.join(' '),
    '-drive',
    `file=${paths.disk},if=none,id=root,format=qcow2,discard=unmap${options.sharedBacking ? ',backing.file.locking=off' : ''}`,
    '-device',
    `virtio-blk-${bus},drive=root`,
    ...(options.configDisk
      ? [
          '-drive',
          `file=${options.configDisk},if=none,id=config,format=raw,readonly=on`,
          '-device',
          `virtio-blk-${bus},drive=config,serial=trivisor-config`,
        ]
      : []),
    '-object',
    'rng-random,id=rng,filename=/dev/urandom',
    '-device',
    `virtio-rng-${bus},rng=rng`,
    '-device',
    `virtio-balloon-${bus},id=balloon,free-page-reporting=on`,
    '-device',
    `virtio-serial-${bus},id=vser`,
    '-chardev',
    `socket,id=agent,path=${paths.agentSocket},server=on,wait=off`,
    '-device',
    'virtserialport,bus=vser.0,chardev=agent,name=org.qemu.guest_agent.0',
    ...nicArgs(options.nics ?? [], { bus, machine }),
  ];
}

/** QEMU ids of a NIC's netdev and device (the same at boot and when hot-plugged, so either can be unplugged). */
export const nicEngineIds = (nic: string): { netdev: string; device: string } => ({
  netdev: `hn-${nic}`,
  device: `nic-${nic}`,
});

/**
 * One virtio-net device per NIC on the tap the host made and put on the bridge
 * (script=no: QEMU configures nothing on the host). In command-line order, so the
 * guest kernel names them eth0, eth1… in the NICs' order.
 */
function nicArgs(
  nics: ReadonlyArray<{ nic?: string; tap: string; mac: string }>,
  options: { bus: string; machine: string },
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
        `tap,id=${ids.netdev},ifname=${n.tap},script=no,downscript=no`,
        '-device',
        `virtio-net-${options.bus},netdev=${ids.netdev},mac=${n.mac}${ids.device ? `,id=${ids.device}` : ''}${port}`,
      ];
    }),
  ];
}
