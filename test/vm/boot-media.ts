import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GUEST_KERNEL_DIR } from '../../src/drivers/vm/boot-kit.ts';
import type { ProcessRunner } from '../../src/host/runner.ts';
import { hostDebianMirror } from '../../src/images/debootstrap-image.ts';

/**
 * Media the vm tests boot without Trivisor's kit, made by the tests themselves from Debian's
 * packages (setup/test installs the tools: TEST_PACKAGES in setup/common.sh):
 *
 * - an installer-like ISO of memtest86+ made with grub-mkrescue (BIOS and EFI, El Torito);
 * - a Debian 12 whole disk: debootstrap, Debian's own kernel (linux-image-amd64) with an
 *   initramfs of its own, qemu-guest-agent, systemd; an MBR with an EFI system partition
 *   and an ext4 root; GRUB for BIOS in the MBR gap and GRUB for EFI at the removable path.
 */

/** The file system label of the Debian disk's root (GRUB and the kernel find it by it). */
export const DEBIAN_ROOT_LABEL = 'deb-root';
/** The Debian disk's host name: its serial login prompt reads `debian-disk login:`. */
export const DEBIAN_HOSTNAME = 'debian-disk';
/** What the serial console of the ISO shows once memtest86+ runs. */
export const MEMTEST_BANNER = /Memtest86\+ v\d+/;

const MEMTEST_BIN = join(GUEST_KERNEL_DIR, 'boot/memtest86+x64.bin');
const MEMTEST_EFI = join(GUEST_KERNEL_DIR, 'boot/memtest86+x64.efi');

/** Tools the media need; a missing one fails the test naming the package setup/test installs. */
function requireTools(tools: Record<string, string>): void {
  for (const [path, pkg] of Object.entries(tools)) {
    assert.ok(existsSync(path), `${path} is missing: run setup/test (it installs Debian's ${pkg})`);
  }
}

/**
 * A bootable ISO of memtest86+ (GRUB on an El Torito CD, BIOS and EFI, serial console on
 * ttyS0 as well as the screen), the size of a small installer's.
 */
export async function buildMemtestIso(dir: string, runner: ProcessRunner): Promise<string> {
  requireTools({
    [MEMTEST_BIN]: 'memtest86+ (setup/test unpacks it)',
    '/usr/bin/grub-mkrescue': 'grub-common',
    '/usr/lib/grub/i386-pc/cdboot.img': 'grub-pc-bin',
    '/usr/lib/grub/x86_64-efi/linux.mod': 'grub-efi-amd64-bin',
    '/usr/bin/xorriso': 'xorriso',
    '/usr/bin/mformat': 'mtools',
  });
  const tree = join(dir, 'memtest-iso');
  await mkdir(join(tree, 'boot/grub'), { recursive: true });
  await copyFile(MEMTEST_BIN, join(tree, 'boot/memtest86+x64.bin'));
  await copyFile(MEMTEST_EFI, join(tree, 'boot/memtest86+x64.efi'));
  await writeFile(
    join(tree, 'boot/grub/grub.cfg'),
    [
      'serial --unit=0 --speed=115200',
      'terminal_input console serial',
      'terminal_output console serial',
      'set timeout=0',
      "menuentry 'Memtest86+' {",
      '  if [ "$grub_platform" = efi ]; then',
      '    linux /boot/memtest86+x64.efi console=ttyS0,115200',
      '  else',
      '    linux16 /boot/memtest86+x64.bin console=ttyS0,115200',
      '  fi',
      '}',
      '',
    ].join('\n'),
  );
  const iso = join(dir, 'memtest86+.iso');
  await runner.run(['grub-mkrescue', '-o', iso, tree]);
  await rm(tree, { recursive: true, force: true });
  return iso;
}

/** What buildDebianDisk made. */
export interface DebianDisk {
  /** The whole disk as qcow2 (compact) and as raw (sparse). */
  qcow2: string;
  raw: string;
  /** `uname -r` of its own kernel (Debian's generic one, not the cloud kernel the kit boots). */
  kernelRelease: string;
}

/** GRUB modules both boot loaders carry: enough to find the root by label and boot Linux from it. */
const GRUB_MODULES = [
  'part_msdos',
  'part_gpt',
  'ext2',
  'normal',
  'linux',
  'search',
  'search_label',
  'search_fs_uuid',
  'serial',
  'terminal',
  'echo',
  'test',
  'configfile',
  'gzio',
];

/**
 * Where a test session (setup/test's TRIVISOR_TEST_SESSION) keeps the Debian disk once one of its
 * files built it, for the others: the quick benchmark and the vm tests each built it again (2-6
 * minutes of CI each). Per session, never across runs: every CI run still builds it once from
 * Debian's packages. setup/test removes it at the end, and the next run removes what a killed one
 * left.
 */
export function sessionMediaDir(session = process.env.TRIVISOR_TEST_SESSION): string | undefined {
  if (!session || !/^[A-Za-z0-9-]+$/.test(session)) return undefined;
  return join('/var/tmp', `trivisor-media-${session}`);
}

/**
 * A Debian 12 whole-disk image built from Debian's packages, with nothing of Trivisor in it.
 * Takes about two minutes (debootstrap with a kernel); built once per test session (copied into
 * `dir` for each file that asks: sessionMediaDir), or once per file outside one.
 */
export async function buildDebianDisk(
  dir: string,
  options: { runner: ProcessRunner; mirror?: string },
): Promise<DebianDisk> {
  const shared = sessionMediaDir();
  const copy = (from: string, to: string) =>
    options.runner.run(['cp', '--sparse=always', '--reflink=auto', '--', from, to]);
  const made = shared ? await readFile(join(shared, 'release'), 'utf8').catch(() => undefined) : undefined;
  if (shared && made) {
    const disk = {
      qcow2: join(dir, 'debian-12.qcow2'),
      raw: join(dir, 'debian-12.raw'),
      kernelRelease: made,
    };
    await mkdir(dir, { recursive: true });
    await copy(join(shared, 'debian-12.qcow2'), disk.qcow2);
    await copy(join(shared, 'debian-12.raw'), disk.raw);
    return disk;
  }
  const disk = await buildDebianDiskHere(dir, options);
  if (shared) {
    // Whole or not at all: a temporary directory renamed into place (a file that races us keeps its own).
    const tmp = `${shared}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    await copy(disk.qcow2, join(tmp, 'debian-12.qcow2'));
    await copy(disk.raw, join(tmp, 'debian-12.raw'));
    await writeFile(join(tmp, 'release'), disk.kernelRelease);
    await rename(tmp, shared).catch(() => rm(tmp, { recursive: true, force: true }));
  }
  return disk;
}

/** Debian's signed boot chain, unpacked by setup/test (ensure_signed_boot): shim, signed GRUB. */
const SIGNED_SHIM = join(GUEST_KERNEL_DIR, 'secureboot/shimx64.efi.signed');
const SIGNED_GRUB = join(GUEST_KERNEL_DIR, 'secureboot/grubx64.efi.signed');

/**
 * The Debian disk of buildDebianDisk with the boot chain Secure Boot lets through, as an installed
 * Debian has it: shim (signed by Microsoft's UEFI CA) at the removable path, Debian's signed GRUB
 * beside it (shim loads `grubx64.efi` from its own directory) and a `grub.cfg` there (the signed
 * GRUB reads `$cmdpath/grub.cfg` when its prefix has none), which hands over to the disk's own
 * /boot/grub/grub.cfg. Its kernel is Debian's, signed already. Only the ESP differs: the same qcow2
 * with another ESP written over the first (`qemu-io`, seconds), kept per test session like the disk.
 */
export async function buildSecureBootDisk(
  disk: DebianDisk,
  dir: string,
  options: { runner: ProcessRunner },
): Promise<string> {
  const out = join(dir, 'debian-12-secureboot.qcow2');
  const shared = sessionMediaDir();
  const cached = shared ? join(shared, 'debian-12-secureboot.qcow2') : undefined;
  const copy = (from: string, to: string) =>
    options.runner.run(['cp', '--sparse=always', '--reflink=auto', '--', from, to]);
  if (cached && existsSync(cached)) {
    await copy(cached, out);
    return out;
  }
  requireTools({
    [SIGNED_SHIM]: 'shim-signed (setup/test unpacks it)',
    [SIGNED_GRUB]: 'grub-efi-amd64-signed (setup/test unpacks it)',
    '/usr/bin/mcopy': 'mtools',
    '/usr/sbin/mkfs.vfat': 'dosfstools',
  });
  const run = (argv: string[]) => options.runner.run(argv);
  const work = join(dir, 'secureboot-esp');
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const cfg = join(work, 'grub.cfg');
  await writeFile(
    cfg,
    `search --no-floppy --label ${DEBIAN_ROOT_LABEL} --set=root\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n`,
  );
  // The same size and place as buildDebianDisk's ESP (32 MiB at 1 MiB): the partition table stays.
  const esp = join(work, 'esp.img');
  await run(['mkfs.vfat', '-C', '-n', 'ESP', esp, String(32 * 1024)]);
  await run(['mmd', '-i', esp, '::/EFI', '::/EFI/BOOT']);
  await run(['mcopy', '-i', esp, SIGNED_SHIM, '::/EFI/BOOT/BOOTX64.EFI']);
  await run(['mcopy', '-i', esp, SIGNED_GRUB, '::/EFI/BOOT/grubx64.efi']);
  await run(['mcopy', '-i', esp, cfg, '::/EFI/BOOT/grub.cfg']);
  const tmp = `${out}.tmp`;
  await copy(disk.qcow2, tmp);
  await run(['qemu-io', '-f', 'qcow2', '-c', `write -q -s ${esp} 1M 32M`, tmp]);
  await rename(tmp, out);
  await rm(work, { recursive: true, force: true });
  if (cached && shared && existsSync(shared)) {
    // Whole or not at all, as the disk: a file of its own renamed into place.
    const part = `${cached}.tmp-${process.pid}`;
    await copy(out, part);
    await rename(part, cached).catch(() => rm(part, { force: true }));
  }
  return out;
}

async function buildDebianDiskHere(
  dir: string,
  options: { runner: ProcessRunner; mirror?: string },
): Promise<DebianDisk> {
  requireTools({
    '/usr/sbin/debootstrap': 'debootstrap',
    '/usr/bin/grub-mkimage': 'grub-common',
    '/usr/lib/grub/i386-pc/boot.img': 'grub-pc-bin',
    '/usr/lib/grub/x86_64-efi/linux.mod': 'grub-efi-amd64-bin',
    '/usr/sbin/mkfs.vfat': 'dosfstools',
    '/usr/bin/mcopy': 'mtools',
    '/usr/sbin/sfdisk': 'fdisk',
  });
  const { runner } = options;
  const run = (argv: string[]) => runner.run(argv);
  const work = join(dir, 'debian-disk');
  const tree = join(work, 'tree');
  await mkdir(work, { recursive: true });
  const mirror = options.mirror ?? (await hostDebianMirror());
  await run([
    'debootstrap',
    '--variant=minbase',
    // dbus: systemd-logind needs it, and logind is what powers the OS off on ACPI's power button.
    '--include=linux-image-amd64,systemd-sysv,udev,dbus,qemu-guest-agent',
    'bookworm',
    tree,
    mirror,
  ]);
  const release = (await readdir(join(tree, 'lib/modules')))[0];
  assert.ok(release, 'debootstrap installed no kernel');
  // An initramfs with the drivers a vm has (virtio, AHCI, IDE), not every module of the kernel:
  // a seventh of the size, and a boot under TCG that takes seconds less.
  await writeFile(join(tree, 'etc/initramfs-tools/conf.d/trivisor-test'), 'MODULES=list\n');
  await writeFile(
    join(tree, 'etc/initramfs-tools/modules'),
    ['virtio_pci', 'virtio_blk', 'virtio_scsi', 'ahci', 'ata_piix', 'sd_mod', 'sr_mod', 'ext4', ''].join(
      '\n',
    ),
  );
  await run(['chroot', tree, 'update-initramfs', '-u', '-k', release]);
  // What a server disk does without: sound, GPUs, radios, media; documentation.
  const kernel = join(tree, 'lib/modules', release, 'kernel');
  for (const sub of [
    'sound',
    'drivers/gpu',
    'drivers/media',
    'drivers/net/wireless',
    'drivers/infiniband',
    'drivers/staging',
    'drivers/bluetooth',
    'drivers/iio',
    'drivers/isdn',
    'net/wireless',
    'net/bluetooth',
    'net/mac80211',
  ]) {
    await rm(join(kernel, sub), { recursive: true, force: true });
  }
  for (const sub of ['usr/share/doc', 'usr/share/man', 'usr/share/locale', 'var/cache/apt/archives']) {
    await rm(join(tree, sub), { recursive: true, force: true });
  }
  await run(['depmod', '-b', tree, release]);
  // root logs in on the screen's console without a password: the keyboard test types there.
  await run(['chroot', tree, 'passwd', '-d', 'root']);
  await writeFile(join(tree, 'etc/hostname'), `${DEBIAN_HOSTNAME}\n`);
  await writeFile(join(tree, 'etc/hosts'), `127.0.0.1 localhost\n127.0.1.1 ${DEBIAN_HOSTNAME}\n`);
  await writeFile(join(tree, 'etc/fstab'), `LABEL=${DEBIAN_ROOT_LABEL} / ext4 rw,errors=remount-ro 0 1\n`);
  await mkdir(join(tree, 'boot/grub'), { recursive: true });
  // The serial console last: /dev/console is ttyS0, where systemd starts a getty by itself.
  await writeFile(
    join(tree, 'boot/grub/grub.cfg'),
    [
      'serial --unit=0 --speed=115200',
      'terminal_input serial console',
      'terminal_output serial console',
      'set timeout=0',
      "menuentry 'Debian GNU/Linux' {",
      `  search --no-floppy --label ${DEBIAN_ROOT_LABEL} --set=root`,
      `  linux /boot/vmlinuz-${release} root=LABEL=${DEBIAN_ROOT_LABEL} ro console=tty0 console=ttyS0,115200`,
      `  initrd /boot/initrd.img-${release}`,
      '}',
      '',
    ].join('\n'),
  );
  // Both boot loaders find the root by its label and read /boot/grub/grub.cfg from it.
  const early = join(work, 'early.cfg');
  await writeFile(
    early,
    `search --no-floppy --label ${DEBIAN_ROOT_LABEL} --set=root\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n`,
  );
  const core = join(work, 'core.img');
  await run([
    'grub-mkimage',
    '-O',
    'i386-pc',
    '-o',
    core,
    '-p',
    '/boot/grub',
    '-c',
    early,
    'biosdisk',
    ...GRUB_MODULES,
  ]);
  const efi = join(work, 'BOOTX64.EFI');
  await run([
    'grub-mkimage',
    '-O',
    'x86_64-efi',
    '-o',
    efi,
    '-p',
    '/boot/grub',
    '-c',
    early,
    'fat',
    'efi_gop',
    'efi_uga',
    'all_video',
    ...GRUB_MODULES,
  ]);
  // The EFI system partition: FAT, GRUB at the removable path, which OVMF boots with no boot entry.
  const esp = join(work, 'esp.img');
  await run(['mkfs.vfat', '-C', '-n', 'ESP', esp, String(32 * 1024)]);
  await run(['mmd', '-i', esp, '::/EFI', '::/EFI/BOOT']);
  await run(['mcopy', '-i', esp, efi, '::/EFI/BOOT/BOOTX64.EFI']);
  // The root: the tree as an ext4 image (mkfs.ext4 -d: nothing mounted, no loop device).
  const { stdout } = await run(['du', '-sxb', tree]);
  const rootMiB = Math.ceil((Number.parseInt(stdout, 10) * 1.5) / 2 ** 20) + 256;
  const root = join(work, 'root.img');
  await run([
    'mkfs.ext4',
    '-q',
    '-F',
    '-L',
    DEBIAN_ROOT_LABEL,
    '-E',
    'root_owner=0:0',
    '-d',
    tree,
    root,
    `${rootMiB}M`,
  ]);
  await rm(tree, { recursive: true, force: true });
  // The disk: an MBR (boot code, then a table of an ESP of type ef and a bootable Linux root),
  // GRUB's core image in the gap before the first partition, then the two partitions.
  const raw = join(dir, 'debian-12.raw');
  await run(['truncate', '-s', `${1 + 32 + rootMiB}M`, raw]);
  await runner.run(['sfdisk', '-q', raw], {
    input: 'label: dos\nstart=2048, size=65536, type=ef\nstart=67584, type=83, bootable\n',
  });
  await run([
    'dd',
    'if=/usr/lib/grub/i386-pc/boot.img',
    `of=${raw}`,
    'bs=440',
    'count=1',
    'conv=notrunc',
    'status=none',
  ]);
  await run(['dd', `if=${core}`, `of=${raw}`, 'bs=512', 'seek=1', 'conv=notrunc', 'status=none']);
  assert.ok((await stat(core)).size < 2047 * 512, 'GRUB core image fits before the first partition');
  await run(['dd', `if=${esp}`, `of=${raw}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  await run(['dd', `if=${root}`, `of=${raw}`, 'bs=1M', 'seek=33', 'conv=notrunc,sparse', 'status=none']);
  const qcow2 = join(dir, 'debian-12.qcow2');
  await run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  await rm(work, { recursive: true, force: true });
  return { qcow2, raw, kernelRelease: release };
}
