import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { access, chmod, copyFile, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { failedPrecondition } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';

/** Where Debian's `ovmf` package installs OVMF (the 4 MiB builds: room for Secure Boot's keys). */
export const DEFAULT_OVMF_DIR = '/usr/share/OVMF';
/** A host's other place for OVMF's files (a build of its own), as TRIVISOR_VM_ACCELERATOR sets the accelerator. */
export const OVMF_DIR_ENV = 'TRIVISOR_VM_OVMF_DIR';

/** The per-guest copy of the UEFI variables, in the guest dir (and beside each snapshot). */
export const UEFI_VARS_FILE = 'uefi-vars.fd';
/** Which template the guest's variables were made from: `{"secureBoot": bool}`. */
export const UEFI_VARS_META = 'uefi-vars.json';

/** OVMF's code and the variables template a guest's own copy is made from. */
export interface OvmfFiles {
  code: string;
  varsTemplate: string;
}

/**
 * The OVMF build for a guest: the plain one, or the Secure Boot one (SMM) with variables
 * that have Microsoft's keys enrolled (`OVMF_VARS_4M.ms.fd`), as Debian ships them.
 */
export function ovmfFiles(dir: string, secureBoot: boolean): OvmfFiles {
  return secureBoot
    ? { code: join(dir, 'OVMF_CODE_4M.secboot.fd'), varsTemplate: join(dir, 'OVMF_VARS_4M.ms.fd') }
    : { code: join(dir, 'OVMF_CODE_4M.fd'), varsTemplate: join(dir, 'OVMF_VARS_4M.fd') };
}

const exists = (path: string): Promise<boolean> =>
  access(path).then(
    () => true,
    () => false,
  );

/** Why OVMF cannot be used (a file missing, and which package to install), or undefined when it can. */
export function missingOvmf(dir: string, secureBoot: boolean): string | undefined {
  const files = ovmfFiles(dir, secureBoot);
  const missing = [files.code, files.varsTemplate].find((f) => !existsSync(f));
  return missing === undefined
    ? undefined
    : `vm.firmware=uefi needs OVMF, and ${missing} is missing: install Debian's ovmf package (apt-get install ovmf), or use vm.firmware=bios.`;
}

/** The OVMF files, or a FailedPrecondition that says which package to install. */
export async function requireOvmf(dir: string, secureBoot: boolean): Promise<OvmfFiles> {
  const why = missingOvmf(dir, secureBoot);
  if (why) throw failedPrecondition(why);
  return ovmfFiles(dir, secureBoot);
}

/**
 * Makes the guest's own UEFI variables from the template when it has none, or when they were
 * made from the other template (`vm.secureboot` changed: keys enrolled or not). The firmware
 * keeps its boot entries there; snapshots, copies and backups carry the file (vm-storage.ts).
 * Written beside and renamed: a crash never leaves a half-copied file.
 */
export async function ensureUefiVars(
  guestDir: string,
  files: OvmfFiles,
  options: { secureBoot: boolean },
): Promise<string> {
  const vars = join(guestDir, UEFI_VARS_FILE);
  const meta = join(guestDir, UEFI_VARS_META);
  const made = await readFile(meta, 'utf8')
    .then((t) => JSON.parse(t) as { secureBoot?: boolean })
    .catch(() => undefined);
  const have = await exists(vars);
  // A file without its record (restored from an archive of an earlier version) is kept as it is.
  if (have && (made === undefined || made.secureBoot === options.secureBoot)) return vars;
  const tmp = join(dirname(vars), `.tmp-uefi-${randomBytes(4).toString('hex')}`);
  try {
    await copyFile(files.varsTemplate, tmp);
    // copyFile keeps the template's 0644: the guest's store is root's alone, like every file QEMU gets as a descriptor.
    await chmod(tmp, 0o600);
    await rename(tmp, vars);
  } finally {
    await rm(tmp, { force: true });
  }
  await writeFile(meta, `${JSON.stringify({ secureBoot: options.secureBoot })}\n`, { mode: 0o600 });
  return vars;
}

/**
 * Whether an OS is installed on the disk: its first sector has the boot signature (0x55AA) that
 * every MBR, and the protective MBR of every GPT disk, ends with. A blank disk has none, so the
 * guest boots from its CD-ROM until an installer has written one.
 */
export async function diskIsInstalled(
  runner: ProcessRunner,
  disk: string,
  options: { format: string },
): Promise<boolean> {
  const out = join(dirname(disk), `.tmp-sector0-${randomBytes(4).toString('hex')}`);
  try {
    const r = await runner.run(
      [
        'qemu-img',
        'dd',
        '-U',
        '-f',
        options.format,
        '-O',
        'raw',
        'bs=512',
        'count=1',
        `if=${disk}`,
        `of=${out}`,
      ],
      { allowFailure: true },
    );
    if (r.code !== 0) return true;
    const sector = await readFile(out);
    return sector.length >= 512 && sector[510] === 0x55 && sector[511] === 0xaa;
  } finally {
    await rm(out, { force: true });
  }
}
