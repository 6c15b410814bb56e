import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import {
  access,
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  writeFile,
} from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { failedPrecondition } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';

/** What a `vm` guest boots: the kernel and the project's initramfs built for it. */
export interface BootKit {
  kernelPath: string;
  /** e.g. `6.1.0-56-cloud-amd64`. */
  kernelRelease: string;
  initramfsPath: string;
}

/** A module as modules.dep lists it. */
export interface ModuleEntry {
  /** Path relative to /lib/modules/<release>. */
  path: string;
  /** Names of the modules it needs (already normalised). */
  deps: string[];
}

/**
 * The modules the initramfs loads: the virtio devices a `vm` guest has (on PCI for
 * q35, on virtio-mmio for microvm), ext4 for its
 * root, virtio_net for NICs (with its failover deps), and the ACPI button so that
 * system_powerdown reaches the guest as an event.
 * Built-in ones (ext4 on Debian's cloud kernel) are skipped.
 */
export const INITRAMFS_MODULES = [
  'virtio_pci',
  'virtio_mmio',
  'virtio_blk',
  'virtio_console',
  'virtio_balloon',
  'virtio_rng',
  'virtio_net',
  'ext4',
  'button',
] as const;

/** Where Debian installs the static busybox the initramfs is made of. */
const HOST_BUSYBOX = '/bin/busybox';

/** Line printed by the initramfs when booted with `trivisor.probe=1` (the accelerator probe). */
export const PROBE_MARKER = 'trivisor-initramfs: probe ok';

/**
 * /init of the initramfs. It loads the modules, mounts the root disk and
 * switch_roots into the init named by `init=` (the guest kit's
 * /.trivisor/init), handing its own arguments on. Any failure powers the
 * machine off at once (with -no-reboot QEMU then exits), so that a broken boot
 * is seen as a dead QEMU and not as a guest that hangs.
 */
export const INITRAMFS_INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The cpio has no /dev/console, so the kernel started us without stdio.
exec </dev/console >/dev/console 2>&1
fail() { echo "trivisor-initramfs: $*"; sync; poweroff -f; sleep 5; }
for m in $(cat /modules.order); do insmod "/modules/$m.ko" || echo "trivisor-initramfs: cannot load $m"; done
root=/dev/vda
rootfstype=ext4
init=/sbin/init
probe=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="\${arg#root=}" ;;
    rootfstype=*) rootfstype="\${arg#rootfstype=}" ;;
    init=*) init="\${arg#init=}" ;;
    trivisor.probe=1) probe=1 ;;
  esac
done
if [ -n "$probe" ]; then echo "${PROBE_MARKER}"; poweroff -f; fi
n=0
while [ ! -b "$root" ]; do
  n=$((n + 1))
  [ $n -gt 200 ] && fail "no root device $root"
  sleep 0.05
done
mount -t "$rootfstype" -o rw "$root" /newroot || fail "cannot mount $root"
# Name links of virtio-serial ports (the agent's channel), which udev would make: guests may have no udev.
# The host announces its ports just after virtio_console loads, so wait a little for the first
# (only when there is a virtio-serial device, virtio device id 3).
serial=
for d in /sys/bus/virtio/devices/*; do [ "$(cat "$d/device" 2>/dev/null)" = 0x0003 ] && serial=1; done
n=0
while [ -n "$serial" ] && [ -z "$(ls /sys/class/virtio-ports 2>/dev/null)" ] && [ $n -lt 40 ]; do
  n=$((n + 1))
  sleep 0.05
done
for port in /sys/class/virtio-ports/*; do
  [ -r "$port/name" ] || continue
  name=$(cat "$port/name")
  [ -n "$name" ] || continue
  mkdir -p /dev/virtio-ports
  ln -sf "../\${port##*/}" "/dev/virtio-ports/$name"
done
[ -d /newroot/dev ] && mount --move /dev /newroot/dev || umount /dev
umount /sys
umount /proc
exec switch_root /newroot "$init" "$@"
fail "cannot switch to $init"
`;

/** Module name as modprobe spells it: file name without .ko[.xz|.zst|.gz], dashes as underscores. */
export function moduleName(path: string): string {
  return basename(path)
    .replace(/\.ko(\.(xz|zst|gz))?$/, '')
    .replace(/-/g, '_');
}

/** Parses /lib/modules/<release>/modules.dep into name → path and dependencies. */
export function parseModulesDep(text: string): Map<string, ModuleEntry> {
  const map = new Map<string, ModuleEntry>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const path = line.slice(0, colon).trim();
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter((d) => d !== '')
      .map(moduleName);
    map.set(moduleName(path), { path, deps });
  }
  return map;
}

/**
 * The modules to insmod, dependencies first, each once. Names in `builtin`
 * are skipped; a name that is neither a module nor built in is an error.
 */
export function moduleLoadOrder(
  wanted: readonly string[],
  options: { modules: Map<string, ModuleEntry>; builtin: Set<string> },
): ModuleEntry[] {
  const order: ModuleEntry[] = [];
  const seen = new Set<string>();
  const visit = (name: string, chain: string[]): void => {
    if (seen.has(name)) return;
    const entry = options.modules.get(name);
    if (!entry) {
      if (options.builtin.has(name)) return;
      throw failedPrecondition(
        `The guest kernel has no module ${name} (needed by ${chain.join(' <- ') || 'the vm initramfs'}): install a kernel that has it.`,
      );
    }
    seen.add(name);
    for (const dep of entry.deps) visit(dep, [name, ...chain]);
    order.push(entry);
  };
  for (const name of wanted) visit(name, []);
  return order;
}

/**
 * Where setup/common.sh unpacks Debian's cloud kernel: unpacked rather than installed, so
 * the host's own boot menu and /lib/modules stay as they were.
 */
export const GUEST_KERNEL_DIR = '/opt/trivisor/guest-kernel';

/**
 * The guest kernel's boot directory: the one setup unpacked when it is there, else the host's
 * /boot. Every caller (driver, tests, benches) takes it from here, so none depends on what
 * happens to be installed in /boot when setup has put a kernel in its own place.
 */
export function defaultBootDir(): string {
  const unpacked = join(GUEST_KERNEL_DIR, 'boot');
  return hasCloudKernel(unpacked) ? unpacked : '/boot';
}

/** The modules of a kernel in `<root>/boot` are in `<root>/lib/modules`. */
export const modulesDirOf = (bootDir: string): string => join(dirname(bootDir), 'lib', 'modules');

export function hasCloudKernel(bootDir: string): boolean {
  try {
    return readdirSync(bootDir).some((n) => /^vmlinuz-.*-cloud-amd64$/.test(n));
  } catch {
    return false;
  }
}

/** Release string of the newest Debian cloud kernel in `bootDir`, or undefined when none is installed. */
export async function findCloudKernel(
  bootDir = defaultBootDir(),
): Promise<{ kernelPath: string; kernelRelease: string } | undefined> {
  const names = await readdir(bootDir).catch(() => [] as string[]);
  const releases = names
    .filter((n) => /^vmlinuz-.*-cloud-amd64$/.test(n))
    .map((n) => n.slice('vmlinuz-'.length))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const release = releases.at(-1);
  return release ? { kernelPath: join(bootDir, `vmlinuz-${release}`), kernelRelease: release } : undefined;
}

const building = new Map<string, Promise<BootKit>>();

const exists = (p: string): Promise<boolean> =>
  access(p).then(
    () => true,
    () => false,
  );

/** Options for ensureBootKit: where to look for the kernel and modules, and where to cache. */
export interface BootKitOptions {
  runner: ProcessRunner;
  /** Directory holding vmlinuz-* (default: defaultBootDir()). */
  bootDir?: string;
  /** Directory holding <release>/modules.dep (default: lib/modules beside bootDir's parent). */
  modulesDir?: string;
  /** A kernel to use instead of the newest cloud kernel in bootDir. */
  kernelPath?: string;
}

/**
 * The newest Debian cloud kernel and an initramfs for it, built once (busybox
 * plus the virtio modules) and cached as `${stateDir}/vm/initramfs-<release>-<hash>.cpio`.
 * The hash covers the init script, the module files and busybox, so a kernel or
 * busybox upgrade makes a new one. Concurrent callers share one build.
 */
export async function ensureBootKit(stateDir: string, options: BootKitOptions): Promise<BootKit> {
  const bootDir = options.bootDir ?? defaultBootDir();
  const modulesDir = options.modulesDir ?? modulesDirOf(bootDir);
  let kernel: { kernelPath: string; kernelRelease: string } | undefined;
  if (options.kernelPath) {
    if (!(await exists(options.kernelPath))) {
      throw failedPrecondition(
        `The vm kernel ${options.kernelPath} does not exist: install it or fix the path.`,
      );
    }
    const release = /vmlinuz-(.+)$/.exec(options.kernelPath)?.[1];
    if (!release)
      throw failedPrecondition(
        `Cannot tell the release of kernel ${options.kernelPath}: name it vmlinuz-<release>.`,
      );
    kernel = { kernelPath: options.kernelPath, kernelRelease: release };
  } else {
    kernel = await findCloudKernel(bootDir);
  }
  if (!kernel) {
    throw failedPrecondition(
      "No guest kernel for vm guests: install Debian's linux-image-cloud-amd64 package (apt-get install linux-image-cloud-amd64).",
    );
  }
  const { kernelPath, kernelRelease } = kernel;
  const releaseDir = join(modulesDir, kernelRelease);
  const depText = await readFile(join(releaseDir, 'modules.dep'), 'utf8').catch(() => {
    throw failedPrecondition(
      `The modules of kernel ${kernelRelease} are missing (${releaseDir}/modules.dep): reinstall its linux-image package.`,
    );
  });
  const builtinText = await readFile(join(releaseDir, 'modules.builtin'), 'utf8').catch(() => '');
  const order = moduleLoadOrder(INITRAMFS_MODULES, {
    modules: parseModulesDep(depText),
    builtin: new Set(builtinText.split('\n').filter(Boolean).map(moduleName)),
  });
  if (!(await exists(HOST_BUSYBOX))) {
    throw failedPrecondition(
      `${HOST_BUSYBOX} is missing: install Debian's busybox-static package (apt-get install busybox-static).`,
    );
  }
  const hash = createHash('sha256').update(INITRAMFS_INIT);
  hash.update(await readFile(HOST_BUSYBOX));
  for (const m of order) hash.update(m.path).update(await readFile(join(releaseDir, m.path)));
  const dir = join(stateDir, 'vm');
  const initramfsPath = join(dir, `initramfs-${kernelRelease}-${hash.digest('hex').slice(0, 12)}.cpio`);
  const kit: BootKit = { kernelPath, kernelRelease, initramfsPath };
  if (await exists(initramfsPath)) {
    // QEMU runs as an unprivileged uid and reads it itself (through /proc/self/fd: the
    // directories on the way do not matter, the file's mode does). It holds no secret.
    await chmod(initramfsPath, 0o644);
    return kit;
  }
  let job = building.get(initramfsPath);
  if (!job) {
    job = buildInitramfs(initramfsPath, { runner: options.runner, releaseDir, order })
      .then(() => kit)
      .finally(() => building.delete(initramfsPath));
    building.set(initramfsPath, job);
  }
  return job;
}

async function buildInitramfs(
  target: string,
  options: { runner: ProcessRunner; releaseDir: string; order: ModuleEntry[] },
): Promise<void> {
  const { runner, releaseDir, order } = options;
  await mkdir(join(target, '..'), { recursive: true });
  const tree = await mkdtemp(join(target, '..', '.initramfs-'));
  try {
    for (const d of ['bin', 'modules', 'dev', 'proc', 'sys', 'newroot']) await mkdir(join(tree, d));
    await copyFile(HOST_BUSYBOX, join(tree, 'bin/busybox'));
    await chmod(join(tree, 'bin/busybox'), 0o755);
    const names: string[] = [];
    for (const m of order) {
      const name = moduleName(m.path);
      const out = join(tree, 'modules', `${name}.ko`);
      const source = join(releaseDir, m.path);
      // busybox insmod reads plain ELF objects only: unpack compressed modules here.
      const unpack = m.path.endsWith('.xz')
        ? 'xz'
        : m.path.endsWith('.zst')
          ? 'zstd'
          : m.path.endsWith('.gz')
            ? 'gzip'
            : undefined;
      if (unpack) await runner.run(['sh', '-c', `${unpack} -dc "$1" > "$2"`, 'sh', source, out]);
      else await copyFile(source, out);
      names.push(name);
    }
    await writeFile(join(tree, 'modules.order'), `${names.join('\n')}\n`);
    await writeFile(join(tree, 'init'), INITRAMFS_INIT, { mode: 0o755 });
    await chmod(join(tree, 'init'), 0o755);
    const temp = `${target}.${process.pid}.tmp`;
    // Uncompressed: the kernel unpacks a 2.5 MB cpio faster than it inflates a gzip one under TCG.
    await runner.run([
      'sh',
      '-c',
      'cd "$1" && find . | sort | "$2" cpio -o -H newc -R 0:0 > "$3"',
      'sh',
      tree,
      HOST_BUSYBOX,
      temp,
    ]);
    await chmod(temp, 0o644);
    await rename(temp, target);
  } finally {
    await rm(tree, { recursive: true, force: true });
  }
}
