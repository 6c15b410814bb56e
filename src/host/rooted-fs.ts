import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readlink, rename, statfs, unlink } from 'node:fs/promises';
import { posix } from 'node:path';
import { failedPrecondition, invalidArgument, notFound, TrivisorError } from '../core/errors.ts';

/**
 * Reading and writing files of a guest's root tree from the host, as real
 * root, without ever letting the kernel follow a symlink: the tree belongs to
 * the guest, which can plant `/etc -> /` or swap a directory for a link at any
 * moment, and a path walk by the kernel would resolve such links against the
 * host's root. Node has no openat()/openat2(), so each step goes through the
 * directory handle's magic link `/proc/self/fd/N/<name>` — one name at a
 * time, with O_NOFOLLOW — which is openat(N, name) race-free. Symlinks are
 * read and resolved here, absolute ones against the guest's root, and `..`
 * never climbs above it (RESOLVE_IN_ROOT). File systems where a write by host
 * root reaches beyond the guest (proc, sysfs, cgroup…) are refused.
 */

/** How many symlinks one lookup may pass (the kernel's limit). */
const MAX_LINKS = 40;

/** statfs types of the kernel's own file systems: host root must not read or write through them. */
const KERNEL_FS_TYPES = new Set([
  0x9fa0, // proc
  0x62656572, // sysfs
  0x27e0eb, // cgroup
  0x63677270, // cgroup2
  0x73636673, // securityfs
  0x64626720, // debugfs
  0x74726163, // tracefs
  0xcafe4a11, // bpf
  0x62656570, // configfs
  0x6165676c, // pstore
  0xde5e81e4, // efivarfs
  0xf97cff8c, // selinuxfs
  0x42494e4d, // binfmt_misc
  0x65735543, // fusectl
]);

const via = (dir: FileHandle, name?: string): string =>
  name === undefined ? `/proc/self/fd/${dir.fd}` : `/proc/self/fd/${dir.fd}/${name}`;

const codeOf = (e: unknown): string | undefined => (e as NodeJS.ErrnoException)?.code;

/** The longest name one path component may have (NAME_MAX). */
const NAME_MAX_BYTES = 255;

/** What a system call's failure means for the guest path, in words that name no host path. */
const ERRNO_MEANINGS: Record<string, { kind: 'invalid' | 'precondition' | 'missing'; says: string }> = {
  ENOENT: { kind: 'missing', says: 'does not exist in the guest' },
  ENOTDIR: { kind: 'invalid', says: 'passes through something that is not a directory in the guest' },
  EISDIR: { kind: 'invalid', says: 'is a directory in the guest: give the path of a file' },
  ELOOP: { kind: 'precondition', says: 'changed in the guest while it was looked up: try again' },
  ENAMETOOLONG: { kind: 'invalid', says: `has a name longer than ${NAME_MAX_BYTES} bytes` },
  EACCES: { kind: 'precondition', says: 'is not accessible in the guest' },
  EPERM: { kind: 'precondition', says: 'cannot be changed in the guest (operation not permitted)' },
  EROFS: { kind: 'precondition', says: 'is on a read-only file system' },
  ENOSPC: {
    kind: 'precondition',
    says: "cannot be written: the guest's disk is full; free some space and retry",
  },
  EDQUOT: {
    kind: 'precondition',
    says: "cannot be written: the guest's disk is full; free some space and retry",
  },
  EEXIST: { kind: 'precondition', says: 'changed in the guest while it was written: try again' },
  EBUSY: { kind: 'precondition', says: 'is busy in the guest (a mount point?)' },
  EXDEV: { kind: 'invalid', says: 'is a mount point in the guest: give the path of a file' },
  EOVERFLOW: { kind: 'invalid', says: 'is on a file system that does not hold ordinary files' },
  EINVAL: { kind: 'invalid', says: 'is on a file system that does not hold ordinary files' },
  EOPNOTSUPP: { kind: 'invalid', says: 'is on a file system that does not hold ordinary files' },
  ENXIO: { kind: 'invalid', says: 'is not a regular file in the guest' },
  ETXTBSY: { kind: 'precondition', says: 'is a program running in the guest: stop it first' },
  EMLINK: { kind: 'precondition', says: 'cannot be made: its directory holds too many entries' },
};

/**
 * Turns a system call's error into a typed one naming only the guest path: the raw
 * message names `/proc/self/fd/N/…`, a host path, and would reach the API's caller.
 * Typed errors pass unchanged.
 */
function guestPathError(e: unknown, path: string, doing: 'read' | 'write'): unknown {
  if (e instanceof TrivisorError) return e;
  const code = codeOf(e);
  if (code === undefined) return e;
  const meaning = ERRNO_MEANINGS[code];
  if (!meaning) return failedPrecondition(`Cannot ${doing} ${path} in the guest (${code})`);
  const message = `${path} ${meaning.says}`;
  if (meaning.kind === 'missing') return notFound(message);
  return meaning.kind === 'invalid' ? invalidArgument(message) : failedPrecondition(message);
}

/** Options of a lookup. */
interface WalkOptions {
  /** Make missing directories on the way (mode 0755, owned by these ids). */
  createDirs?: { uid: number; gid: number };
}

/** A resolved parent directory and the last name in it (which is not a symlink, or does not exist). */
interface Resolved {
  parent: FileHandle;
  name: string;
  /** Open directory handles the caller must close (parent among them). */
  handles: FileHandle[];
}

async function closeAll(handles: FileHandle[]): Promise<void> {
  for (const h of handles) await h.close().catch(() => {});
}

async function checkFileSystem(dir: FileHandle, path: string): Promise<void> {
  const { type } = await statfs(via(dir));
  if (KERNEL_FS_TYPES.has(type)) {
    throw invalidArgument(
      `${path} is on a kernel file system (proc, sysfs…) of the guest: only files on its own disks can be copied`,
    );
  }
}

/**
 * Resolves `path` inside the tree opened as `root`: every directory on the way
 * is opened with O_NOFOLLOW, symlinks are followed inside the root; a
 * symlink as the last name is followed too when `followLast`.
 */
async function resolveInRoot(
  root: FileHandle,
  path: string,
  options: WalkOptions & { followLast: boolean },
): Promise<Resolved> {
  const handles: FileHandle[] = [];
  // The stack of directories walked so far; `..` pops (but never the root).
  let stack: FileHandle[] = [root];
  let pending = path.split('/').filter((p) => p !== '' && p !== '.');
  let links = 0;
  try {
    for (;;) {
      // Trailing `..` and `.` parts reduce to a directory: not a file name.
      if (pending.at(-1) === '..') {
        throw invalidArgument(`${path} names a directory: give the path of a file`);
      }
      const name = pending.shift();
      if (name === undefined) throw invalidArgument(`${path} names a directory: give the path of a file`);
      const dir = stack.at(-1) ?? root;
      if (name === '..') {
        if (stack.length > 1) stack = stack.slice(0, -1);
        continue;
      }
      if (Buffer.byteLength(name) > NAME_MAX_BYTES) {
        throw invalidArgument(`${path} has a name longer than ${NAME_MAX_BYTES} bytes`);
      }
      const last = pending.length === 0;
      const entry = await lstat(via(dir, name)).catch((e: unknown) => {
        if (codeOf(e) === 'ENOENT') return undefined;
        throw e;
      });
      if (entry?.isSymbolicLink() && (!last || options.followLast)) {
        if (++links > MAX_LINKS) throw invalidArgument(`${path} passes more than ${MAX_LINKS} symlinks`);
        const target = await readlink(via(dir, name));
        if (target.startsWith('/')) stack = [root];
        pending = [...target.split('/').filter((p) => p !== '' && p !== '.'), ...pending];
        // A link to a directory as the last name (`/etc/x -> /etc`) ends in a directory.
        if (pending.length === 0) throw invalidArgument(`${path} names a directory: give the path of a file`);
        continue;
      }
      if (last) return { parent: dir, name, handles };
      if (!entry) {
        if (!options.createDirs) {
          throw notFound(`${posix.dirname(path)} does not exist in the guest: create it first`);
        }
        await mkdir(via(dir, name), { mode: 0o755 }).catch((e: unknown) => {
          if (codeOf(e) !== 'EEXIST') throw e;
        });
      } else if (!entry.isDirectory()) {
        throw invalidArgument(`${path} passes through ${name}, which is not a directory in the guest`);
      }
      let next: FileHandle;
      try {
        next = await open(via(dir, name), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
      } catch (e) {
        // ELOOP/ENOTDIR: swapped for a link or a file since the lstat; the guest is racing us.
        if (codeOf(e) === 'ELOOP' || codeOf(e) === 'ENOTDIR') {
          throw failedPrecondition(`${path} changed in the guest while it was looked up: try again`);
        }
        throw e;
      }
      handles.push(next);
      // Refused as soon as the walk enters proc, sysfs… (a link such as /proc/self/root leads
      // there too): what lies below them is the host kernel's, not the guest's disk.
      await checkFileSystem(next, path);
      if (!entry && options.createDirs) await next.chown(options.createDirs.uid, options.createDirs.gid);
      stack = [...stack, next];
    }
  } catch (e) {
    await closeAll(handles);
    throw e;
  }
}

/**
 * Opens the root tree; `verify` runs once it is open (e.g. to check that the
 * process whose `/proc/PID/root` it is was not replaced by another of that pid).
 */
async function openRoot(root: string, verify?: () => Promise<void>): Promise<FileHandle> {
  let handle: FileHandle;
  try {
    handle = await open(root, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    throw failedPrecondition(`Cannot open the guest's root file system (${codeOf(e) ?? String(e)})`);
  }
  try {
    await verify?.();
  } catch (e) {
    await handle.close();
    throw e;
  }
  return handle;
}

/** A regular file read from a root tree, with host ids. */
export interface RootedFile {
  data: Buffer;
  mode: number;
  uid: number;
  gid: number;
}

/**
 * Reads the regular file `path` of the tree at `root` (a directory, or a magic
 * link such as `/proc/PID/root`), following symlinks inside the tree.
 * NotFound, or InvalidArgument for a directory, a special file or one larger
 * than `maxBytes`.
 */
export async function readFileInRoot(
  root: string,
  path: string,
  options: { maxBytes: number; verify?: () => Promise<void> },
): Promise<RootedFile> {
  const rootHandle = await openRoot(root, options.verify);
  try {
    return await readResolved(rootHandle, path, options.maxBytes);
  } catch (e) {
    throw guestPathError(e, path, 'read');
  } finally {
    await rootHandle.close();
  }
}

/** The read itself, on an open root; the caller types what a system call throws. */
async function readResolved(rootHandle: FileHandle, path: string, maxBytes: number): Promise<RootedFile> {
  const { parent, name, handles } = await resolveInRoot(rootHandle, path, { followLast: true });
  try {
    let file: FileHandle;
    try {
      // O_NONBLOCK: a FIFO must not hang the daemon (it is refused below anyway).
      file = await open(
        via(parent, name),
        constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
      );
    } catch (e) {
      if (codeOf(e) === 'ENOENT') throw notFound(`${path} does not exist in the guest`);
      if (codeOf(e) === 'ELOOP') {
        throw failedPrecondition(`${path} changed in the guest while it was looked up: try again`);
      }
      throw e;
    }
    try {
      const st = await file.stat();
      if (st.isDirectory()) throw invalidArgument(`${path} is a directory: give the path of a file`);
      if (!st.isFile()) throw invalidArgument(`${path} is not a regular file in the guest`);
      await checkFileSystem(file, path);
      if (st.size > maxBytes) {
        throw invalidArgument(`${path} is ${st.size} bytes, more than the ${maxBytes} bytes a copy may have`);
      }
      const chunks: Buffer[] = [];
      let total = 0;
      for (;;) {
        const buffer = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes + 1 - total) || 1);
        const { bytesRead } = await file.read(buffer, 0, buffer.length, null);
        if (bytesRead === 0) break;
        total += bytesRead;
        if (total > maxBytes) {
          throw invalidArgument(`${path} is more than the ${maxBytes} bytes a copy may have`);
        }
        chunks.push(buffer.subarray(0, bytesRead));
      }
      return { data: Buffer.concat(chunks), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
    } finally {
      await file.close();
    }
  } finally {
    await closeAll(handles);
  }
}

/** Options of writeFileInRoot: host ids and permission bits of the file. */
export interface RootedWriteOptions {
  mode: number;
  uid: number;
  gid: number;
  /** Make missing parent directories (0755, owned by these host ids). */
  createDirs?: { uid: number; gid: number };
  /** Runs once the root is open (see readFileInRoot). */
  verify?: () => Promise<void>;
}

/**
 * Makes `path` of the tree at `root` a regular file holding `data`: written to
 * a temporary name in the same directory, given its owner and mode, then
 * renamed over the path, so the guest sees the old file or the whole new one.
 * Symlinks of the directories on the way are followed inside the tree; a
 * symlink at `path` itself is replaced, not followed. InvalidArgument when
 * `path` is a directory; NotFound when its directory is missing (without
 * `createDirs`).
 */
export async function writeFileInRoot(
  root: string,
  path: string,
  data: Buffer,
  options: RootedWriteOptions,
): Promise<void> {
  const rootHandle = await openRoot(root, options.verify);
  try {
    const { parent, name, handles } = await resolveInRoot(rootHandle, path, {
      followLast: false,
      ...(options.createDirs ? { createDirs: options.createDirs } : {}),
    });
    try {
      await checkFileSystem(parent, path);
      const existing = await lstat(via(parent, name)).catch(() => undefined);
      if (existing?.isDirectory())
        throw invalidArgument(`${path} is a directory in the guest: give a file path`);
      const temp = `.${name.slice(0, 200)}.trivisor-${randomBytes(6).toString('hex')}`;
      const file = await open(
        via(parent, temp),
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
      let renamed = false;
      try {
        try {
          await file.writeFile(data);
          // chown first: it clears set-id bits that chmod then sets.
          await file.chown(options.uid, options.gid);
          await file.chmod(options.mode);
        } finally {
          await file.close();
        }
        await rename(via(parent, temp), via(parent, name));
        renamed = true;
      } finally {
        if (!renamed) await unlink(via(parent, temp)).catch(() => {});
      }
    } finally {
      await closeAll(handles);
    }
  } catch (e) {
    throw guestPathError(e, path, 'write');
  } finally {
    await rootHandle.close();
  }
}
