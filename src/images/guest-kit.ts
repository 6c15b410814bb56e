import { createHash } from 'node:crypto';
import { access, chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { failedPrecondition, invalidArgument } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { HOST_BUSYBOX } from './busybox-image.ts';
import { guestKitInitScript } from './guest-kit-init-script.ts';

/** Where the kit lives inside a guest's root file system. */
export const KIT_DIR = '/.trivisor';
/** The kit's init: the kernel's `init=`. */
export const KIT_INIT = '/.trivisor/init';
/** The line the kit's init prints on the console just before it runs the image's init. */
export const KIT_INIT_MARKER = 'trivisor: init';
/** Device of the guest agent's channel inside the guest, per model. */
export const KIT_AGENT_DEVICE = {
  vm: '/dev/virtio-ports/org.qemu.guest_agent.0',
  pvm: '/dev/ttyS1',
} as const;

/** Host binaries the kit carries, with their shared libraries. */
const KIT_PROGRAMS: ReadonlyArray<{ host: string; name: string; pkg: string }> = [
  { host: '/usr/sbin/qemu-ga', name: 'qemu-ga', pkg: 'qemu-guest-agent' },
  { host: '/usr/sbin/resize2fs', name: 'resize2fs', pkg: 'e2fsprogs' },
];

/**
 * Version of the kit (its init script and what it carries). Base disks are named
 * after it: a daemon with a changed kit builds a new base disk for new guests,
 * while existing guests keep the one their copy-on-write layer points at.
 */
export const KIT_VERSION = createHash('sha256')
  .update(guestKitInitScript({ loaderName: 'ld.so' }))
  .update(JSON.stringify(KIT_PROGRAMS))
  .digest('hex')
  .slice(0, 12);

/** File name of an image's base disk for the current kit. */
export const BASE_DISK_NAME = `disk-${KIT_VERSION}.ext4`;

/** What the kernel command line tells the kit's init. */
export interface KitKernelArgsOptions {
  /** The guest's host name (a DNS label). */
  hostname: string;
  model: 'vm' | 'pvm';
  /**
   * Where the guest agent listens inside the guest; defaults to the model's
   * device (KIT_AGENT_DEVICE). `unix:<path>` makes it listen on a socket (tests).
   */
  agent?: string;
  /**
   * The guest's NICs in the order the host plugged them: the kit renames the
   * interface with each `mac` to `name` and tells the image's init (TRIVISOR_NICS).
   */
  nics?: ReadonlyArray<{ name: string; mac: string }>;
  /**
   * The guest's config disk (`/dev/vdb`, `/dev/ubdb`), whose files the kit
   * copies into place before the image's init runs (drivers/config-disk.ts).
   */
  configDevice?: string;
}

/**
 * Kernel command line words that start the kit (`init=/.trivisor/init
 * trivisor.hostname=… trivisor.agent=… trivisor.model=…`); the driver adds its
 * own (root=, console=…). Dotted words are module parameters to the kernel,
 * so it neither complains about them nor passes them to init.
 */
export function kitKernelArgs(options: KitKernelArgsOptions): string[] {
  const { hostname, model } = options;
  if (!/^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(hostname)) {
    throw invalidArgument(`Host name '${hostname}' is not a DNS label: use letters, digits and dashes.`);
  }
  const agent = options.agent ?? KIT_AGENT_DEVICE[model];
  if (/\s/.test(agent) || agent === '') {
    throw invalidArgument(
      `Agent path '${agent}' cannot go on a kernel command line: use a path without spaces.`,
    );
  }
  const nics = options.nics ?? [];
  for (const n of nics) {
    if (!/^[a-z][a-z0-9]{0,14}$/.test(n.name) || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(n.mac)) {
      throw invalidArgument(
        `NIC ${n.name} (${n.mac}) cannot go on a kernel command line: use a name like eth0 and a lower-case MAC.`,
      );
    }
  }
  const names = nics.map((n) => n.name);
  const config = options.configDevice;
  if (config !== undefined && !/^\/dev\/[a-z0-9]+$/.test(config)) {
    throw invalidArgument(`Config disk device '${config}' is not a /dev/NAME path.`);
  }
  return [
    `init=${KIT_INIT}`,
    `trivisor.hostname=${hostname}`,
    `trivisor.agent=${agent}`,
    `trivisor.model=${model}`,
    ...(nics.length > 0
      ? [
          `trivisor.nics=${nics.map((n) => `${n.name}@${n.mac}`).join(',')}`,
          // Undotted, so the kernel hands it to init as an environment variable: the image's
          // DHCP client finds its NICs even on a base disk whose kit predates trivisor.nics.
          names.length === 1 ? `TRIVISOR_NICS=${names[0]}` : `TRIVISOR_NICS="${names.join(' ')}"`,
        ]
      : []),
    ...(config !== undefined ? [`trivisor.config=${config}`] : []),
  ];
}

/** One argument quoted for POSIX sh. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_./=:@%+-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** The image's init argv from its `init` property (JSON argv), /sbin/init when absent. */
export function imageInitArgv(properties: Record<string, string>): string[] {
  const raw = properties.init;
  if (raw === undefined || raw === '') return ['/sbin/init'];
  let argv: unknown;
  try {
    argv = JSON.parse(raw);
  } catch {
    throw invalidArgument(
      `Image property init '${raw}' is not a JSON array of strings: fix the image metadata.`,
    );
  }
  if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) {
    throw invalidArgument(
      `Image property init '${raw}' is not a JSON array of strings: fix the image metadata.`,
    );
  }
  return argv as string[];
}

/** Resolved shared libraries of a host binary (`ldd`), and its dynamic loader. */
async function sharedLibraries(
  path: string,
  runner: ProcessRunner,
): Promise<{ libraries: string[]; loader: string | null }> {
  const { stdout } = await runner.run(['ldd', path]);
  const libraries: string[] = [];
  let loader: string | null = null;
  for (const line of stdout.split('\n')) {
    const linked = /=>\s+(\/\S+)/.exec(line);
    if (linked?.[1]) {
      libraries.push(linked[1]);
      continue;
    }
    const bare = /^\s*(\/\S+)\s+\(/.exec(line);
    if (bare?.[1]) loader = bare[1];
  }
  return { libraries, loader };
}

async function copyExecutable(from: string, to: string, mode: number): Promise<void> {
  // copyFile follows symlinks: the kit holds real files under their soname.
  await copyFile(from, to);
  await chmod(to, mode);
}

/**
 * Writes the guest kit into `kitDir` (the future `/.trivisor` of a guest's
 * root): the host's static busybox, `init`, the image's init as a shell
 * command line in `image-init`, and qemu-ga and resize2fs with their shared
 * libraries and dynamic loader under `bin/` and `lib/`, so they run on any
 * image, busybox-only ones too.
 */
export async function installGuestKit(
  kitDir: string,
  options: { runner: ProcessRunner; initArgv: readonly string[] },
): Promise<void> {
  const { runner, initArgv } = options;
  if (initArgv.length === 0)
    throw invalidArgument('The image init argv is empty: give at least the program.');
  for (const { host, pkg } of [...KIT_PROGRAMS, { host: HOST_BUSYBOX, pkg: 'busybox-static' }]) {
    try {
      await access(host);
    } catch {
      throw failedPrecondition(
        `${host} is missing, and vm and pvm guests need it: install Debian's ${pkg} package (apt-get install ${pkg}).`,
      );
    }
  }
  await mkdir(join(kitDir, 'bin'), { recursive: true, mode: 0o755 });
  await mkdir(join(kitDir, 'lib'), { recursive: true, mode: 0o755 });
  await mkdir(join(kitDir, 'run'), { recursive: true, mode: 0o700 });
  await chmod(kitDir, 0o755);

  await copyExecutable(HOST_BUSYBOX, join(kitDir, 'busybox'), 0o755);
  let loaderName: string | null = null;
  const copied = new Set<string>();
  for (const program of KIT_PROGRAMS) {
    await copyExecutable(program.host, join(kitDir, 'bin', program.name), 0o755);
    const { libraries, loader } = await sharedLibraries(program.host, runner);
    for (const lib of loader ? [...libraries, loader] : libraries) {
      const name = basename(lib);
      if (copied.has(name)) continue;
      copied.add(name);
      await copyExecutable(lib, join(kitDir, 'lib', name), 0o755);
    }
    if (loader) loaderName = basename(loader);
  }
  if (!loaderName)
    throw failedPrecondition('Cannot find the dynamic loader of qemu-ga with ldd: check the host.');

  await writeFile(join(kitDir, 'init'), guestKitInitScript({ loaderName }), { mode: 0o755 });
  await chmod(join(kitDir, 'init'), 0o755);
  await writeFile(join(kitDir, 'image-init'), `${initArgv.map(shellQuote).join(' ')}\n`, { mode: 0o644 });
}
