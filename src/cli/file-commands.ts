import { readFile, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Command } from 'commander';
import { invalidArgument } from '../core/errors.ts';
import { formatInjectedFile, INJECTED_FILE_PREFIX, parseMode } from '../core/guest-files.ts';
import { clientOf } from './context.ts';

/** `NAME/PATH` (Incus's form) → the guest and the absolute path in it. */
export function guestPathOf(text: string): { name: string; path: string } {
  const slash = text.indexOf('/');
  if (slash <= 0 || slash === text.length - 1) {
    throw invalidArgument(`${JSON.stringify(text)} is not NAME/PATH: write e.g. web1/etc/motd`);
  }
  return { name: text.slice(0, slash), path: text.slice(slash) };
}

function idOf(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw invalidArgument(`--${what} ${JSON.stringify(text)} is not a number`);
  return Number(text);
}

async function readLocal(path: string): Promise<{ data: Buffer; mode: number }> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw invalidArgument(`${path} is not a regular file: give a file to copy`);
    return { data: await readFile(path), mode: st.mode & 0o7777 };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw invalidArgument(`${path} does not exist`);
    if (code === 'EACCES') throw invalidArgument(`${path} cannot be read: permission denied`);
    throw e;
  }
}

/**
 * `GUEST_PATH=LOCAL_FILE[,mode=0600,uid=N,gid=N]` (launch/create --file, config
 * set-file) → the `files.<path>` config key and its value; the mode defaults to
 * the local file's, as for `file push`.
 */
export async function injectedFileConfig(spec: string): Promise<[string, string]> {
  const eq = spec.indexOf('=');
  if (eq <= 0) {
    throw invalidArgument(
      `--file ${JSON.stringify(spec)} is not GUEST_PATH=LOCAL_FILE[,mode=0600,uid=N,gid=N]`,
    );
  }
  const guestPath = spec.slice(0, eq);
  const [local = '', ...options] = spec.slice(eq + 1).split(',');
  const { data, mode } = await readLocal(local);
  const file = { mode: mode & 0o7777, uid: 0, gid: 0, content: data };
  for (const option of options) {
    const [key, value = ''] = option.split('=', 2);
    if (key === 'mode') file.mode = parseMode(value);
    else if (key === 'uid' || key === 'gid') file[key] = idOf(value, key) ?? 0;
    else throw invalidArgument(`Unknown --file option ${JSON.stringify(key)}: use mode, uid or gid`);
  }
  return [`${INJECTED_FILE_PREFIX}${guestPath}`, formatInjectedFile(file)];
}

/** `file push|pull`: copy single files into and out of running guests. */
export function addFileCommands(program: Command): void {
  const file = program.command('file').description('Copy files into and out of running guests');

  file
    .command('push')
    .description('Copy a local file into a running guest: file push LOCAL NAME/PATH')
    .argument('<local>', 'local file')
    .argument('<target>', 'NAME/PATH in the guest, e.g. web1/etc/motd')
    .option('--mode <mode>', "octal permissions (default: the local file's)")
    .option('--uid <uid>', 'owner in the guest (default 0)')
    .option('--gid <gid>', 'group in the guest (default 0)')
    .option('-p, --create-dirs', 'make missing parent directories')
    .action(
      async (
        local: string,
        target: string,
        opts: { mode?: string; uid?: string; gid?: string; createDirs?: boolean },
        cmd: Command,
      ) => {
        const { name, path } = guestPathOf(target);
        const { data, mode } = await readLocal(local);
        const uid = idOf(opts.uid, 'uid');
        const gid = idOf(opts.gid, 'gid');
        await clientOf(cmd).pushFile(name, path, data, {
          mode: opts.mode !== undefined ? parseMode(opts.mode) : mode,
          ...(uid !== undefined && { uid }),
          ...(gid !== undefined && { gid }),
          ...(opts.createDirs && { createDirs: true }),
        });
      },
    );

  file
    .command('pull')
    .description('Copy a file out of a running guest: file pull NAME/PATH LOCAL (- for stdout)')
    .argument('<source>', 'NAME/PATH in the guest, e.g. web1/etc/hostname')
    .argument('<local>', 'local file or directory, or - for stdout')
    .action(async (source: string, local: string, _opts: unknown, cmd: Command) => {
      const { name, path } = guestPathOf(source);
      const file = await clientOf(cmd).pullFile(name, path);
      if (local === '-') {
        process.stdout.write(file.data);
        return;
      }
      const isDir = await stat(local).then(
        (s) => s.isDirectory(),
        () => false,
      );
      const target = isDir ? join(local, basename(path)) : local;
      // The guest's permission bits, without set-id ones (they mean nothing good on this side).
      await writeFile(target, file.data, { mode: file.mode & 0o777 });
    });
}
