import { invalidArgument } from '../../core/errors.ts';

/**
 * Checks a `btrfs send` stream from a user's archive before `btrfs receive` applies it
 * (docs/decisions/0090-crafted-btrfs-receive-streams.md). `--chroot` confines the paths receive
 * resolves against its destination, but not what it opens through the file system's root: the
 * parent of a snapshot and the source of a clone are looked up by UUID among every subvolume of
 * the pool (another guest's too) and opened from the mount root, the clone's path appended as
 * the stream says (`..` included). So a stream is applied only when it is what a ct export
 * makes: one subvolume, named as the link, a snapshot only of the guest's own previous link,
 * clones only from itself or that parent, and every path relative without `..`.
 * The layout is the kernel's fs/btrfs/send.h: a 13-byte magic and a version, then commands of a
 * 10-byte header (length, command, CRC; the CRC is left to receive) and attributes (type, length).
 */

const MAGIC = Buffer.from('btrfs-stream\0', 'latin1');
const HEADER_BYTES = MAGIC.length + 4;
const COMMAND_HEADER_BYTES = 10;
/** The versions btrfs send writes (2 and 3 add encoded writes, fallocate, verity). */
const VERSIONS = new Set([1, 2, 3]);

/** Command numbers of send.h. */
export const SEND_CMD = {
  SUBVOL: 1,
  SNAPSHOT: 2,
  MKFILE: 3,
  MKDIR: 4,
  MKNOD: 5,
  MKFIFO: 6,
  MKSOCK: 7,
  SYMLINK: 8,
  RENAME: 9,
  LINK: 10,
  UNLINK: 11,
  RMDIR: 12,
  SET_XATTR: 13,
  REMOVE_XATTR: 14,
  WRITE: 15,
  CLONE: 16,
  TRUNCATE: 17,
  CHMOD: 18,
  CHOWN: 19,
  UTIMES: 20,
  END: 21,
  UPDATE_EXTENT: 22,
  FALLOCATE: 23,
  FILEATTR: 24,
  ENCODED_WRITE: 25,
  ENABLE_VERITY: 26,
} as const;
const LAST_CMD = SEND_CMD.ENABLE_VERITY;

/** Attribute numbers of send.h. */
export const SEND_ATTR = {
  UUID: 1,
  CTRANSID: 2,
  INO: 3,
  SIZE: 4,
  MODE: 5,
  UID: 6,
  GID: 7,
  PATH: 15,
  PATH_TO: 16,
  PATH_LINK: 17,
  FILE_OFFSET: 18,
  DATA: 19,
  CLONE_UUID: 20,
  CLONE_CTRANSID: 21,
  CLONE_PATH: 22,
  CLONE_OFFSET: 23,
  CLONE_LEN: 24,
} as const;

/** What the stream must be: the link's subvolume, and for an incremental the guest's previous one. */
export interface ExpectedStream {
  /** The subvolume's name, CHAIN-SEQUENCE. */
  name: string;
  /** An incremental's parent: the Received UUID of the guest's previous link (32 hex digits). */
  parentReceivedUuid?: string;
  /**
   * The previous link's own UUID (32 hex digits): the forwarded snapshot names it instead, so that
   * receive takes exactly that subvolume (found by UUID once no received UUID matches) and not
   * another guest's that received the same chain (the same received UUID).
   */
  parentUuid?: string;
}

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32C as btrfs computes a command's: seed 0, no final inversion, over the command with its CRC zeroed. */
export function crc32c(buf: Uint8Array): number {
  let crc = 0;
  for (const b of buf) crc = ((CRC32C_TABLE[(crc ^ b) & 0xff] as number) ^ (crc >>> 8)) >>> 0;
  return crc >>> 0;
}

const refuse = (why: string) =>
  invalidArgument(
    `The backup's btrfs stream ${why}: it was not made by a ct export, refused and nothing of it kept.`,
  );

/** A path the stream names, checked to stay inside the subvolume it makes. */
function checkPath(raw: Buffer, what: string): void {
  const path = raw.toString('utf8');
  const shown = JSON.stringify(path.length > 80 ? `${path.slice(0, 80)}…` : path);
  // The empty path is the subvolume's root (its owner, mode and times).
  if (path === '') return;
  if (raw.includes(0)) throw refuse(`names a path with a NUL byte in ${what}`);
  if (path.startsWith('/')) throw refuse(`names the absolute path ${shown} in ${what}`);
  for (const part of path.split('/')) {
    if (part === '..') throw refuse(`names the path ${shown} in ${what}, which leads out of its subvolume`);
    if (part === '' || part === '.') throw refuse(`names the malformed path ${shown} in ${what}`);
  }
}

const CMD_NAMES = Object.fromEntries(Object.entries(SEND_CMD).map(([k, v]) => [v, k.toLowerCase()]));

/**
 * Reads the stream's commands and refuses, in one line, anything a ct export's stream never holds.
 * `forward`, when given, receives the header and then each command once it is checked, never
 * before: `btrfs receive` fed by it applies nothing the check has not passed.
 */
export async function checkSendStream(
  source: AsyncIterable<Uint8Array>,
  expect: ExpectedStream,
  forward?: (bytes: Buffer) => Promise<void>,
): Promise<void> {
  let buffered: Buffer[] = [];
  let size = 0;
  let version = 0;
  let started = false;
  let ended = false;
  let own: string | undefined;
  const take = (n: number): Buffer => {
    const all = buffered.length === 1 ? (buffered[0] as Buffer) : Buffer.concat(buffered, size);
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    buffered = rest.length > 0 ? [rest] : [];
    size = rest.length;
    return head;
  };
  const peek = (n: number): Buffer => {
    if (buffered.length !== 1) buffered = [Buffer.concat(buffered, size)];
    return (buffered[0] as Buffer).subarray(0, n);
  };

  /** Checks one command; a snapshot's parent UUID is handed back for `expect.parentUuid` to replace. */
  const command = (cmd: number, body: Buffer): { parentUuid: Buffer } | undefined => {
    const what = CMD_NAMES[cmd] ?? `command ${cmd}`;
    if (ended) throw refuse('goes on after its end');
    if (cmd === 0 || cmd > LAST_CMD) throw refuse(`holds an unknown command ${cmd}`);
    const attrs = new Map<number, Buffer>();
    for (let at = 0; at < body.length; ) {
      if (at + 2 > body.length) throw refuse(`holds a truncated attribute in ${what}`);
      const type = body.readUInt16LE(at);
      // From version 2 the data of a write runs to the end of its command, with no length.
      if (type === SEND_ATTR.DATA && version >= 2) {
        attrs.set(type, body.subarray(at + 2));
        break;
      }
      if (at + 4 > body.length) throw refuse(`holds a truncated attribute in ${what}`);
      const len = body.readUInt16LE(at + 2);
      if (at + 4 + len > body.length) throw refuse(`holds a truncated attribute in ${what}`);
      if (attrs.has(type)) throw refuse(`repeats attribute ${type} in ${what}`);
      attrs.set(type, body.subarray(at + 4, at + 4 + len));
      at += 4 + len;
    }
    if (cmd === SEND_CMD.SUBVOL || cmd === SEND_CMD.SNAPSHOT) {
      if (started) throw refuse('makes more than one subvolume');
      started = true;
      const name = attrs.get(SEND_ATTR.PATH)?.toString('utf8');
      if (name !== expect.name)
        throw refuse(`makes subvolume ${JSON.stringify(name ?? '')}, not ${expect.name}`);
      own = attrs.get(SEND_ATTR.UUID)?.toString('hex');
      if (own?.length !== 32) throw refuse(`gives its subvolume no UUID`);
      if (cmd === SEND_CMD.SUBVOL && expect.parentReceivedUuid !== undefined)
        throw refuse('is a whole subvolume where the next link of the chain was expected');
      if (cmd === SEND_CMD.SNAPSHOT) {
        if (expect.parentReceivedUuid === undefined)
          throw refuse("is a snapshot of another subvolume where a chain's full was expected");
        const parentUuid = attrs.get(SEND_ATTR.CLONE_UUID);
        if (parentUuid?.toString('hex') !== expect.parentReceivedUuid)
          throw refuse("is a snapshot of a subvolume other than the guest's previous link");
        if (expect.parentUuid !== undefined) return { parentUuid };
      }
      return undefined;
    }
    if (!started) throw refuse(`starts with ${what} before its subvolume`);
    if (cmd === SEND_CMD.END) {
      if (body.length !== 0) throw refuse('holds a malformed end');
      ended = true;
      return undefined;
    }
    const path = attrs.get(SEND_ATTR.PATH);
    if (!path) throw refuse(`holds ${what} with no path`);
    checkPath(path, what);
    const to = attrs.get(SEND_ATTR.PATH_TO);
    if (to) checkPath(to, what);
    // A symbolic link's target is its contents, any string; a hard link's is a path of the stream.
    const link = attrs.get(SEND_ATTR.PATH_LINK);
    if (link && cmd !== SEND_CMD.SYMLINK) checkPath(link, what);
    if (cmd === SEND_CMD.CLONE) {
      const from = attrs.get(SEND_ATTR.CLONE_UUID)?.toString('hex');
      if (from !== own && (expect.parentReceivedUuid === undefined || from !== expect.parentReceivedUuid))
        throw refuse("clones data from a subvolume other than itself and the guest's previous link");
      const clonePath = attrs.get(SEND_ATTR.CLONE_PATH);
      if (!clonePath) throw refuse('holds a clone with no source path');
      checkPath(clonePath, what);
    }
    return undefined;
  };

  for await (const chunk of source) {
    buffered.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    size += chunk.byteLength;
    if (version === 0) {
      if (size < HEADER_BYTES) continue;
      const header = take(HEADER_BYTES);
      if (!header.subarray(0, MAGIC.length).equals(MAGIC))
        throw refuse('does not start as a btrfs send stream');
      version = header.readUInt32LE(MAGIC.length);
      if (!VERSIONS.has(version)) throw refuse(`is of version ${version}, which this host does not read`);
      await forward?.(header);
    }
    while (size >= COMMAND_HEADER_BYTES) {
      const head = peek(COMMAND_HEADER_BYTES);
      const len = head.readUInt32LE(0);
      if (size < COMMAND_HEADER_BYTES + len) break;
      const cmd = head.readUInt16LE(4);
      const whole = take(COMMAND_HEADER_BYTES + len);
      const rewrite = command(cmd, whole.subarray(COMMAND_HEADER_BYTES));
      if (rewrite && expect.parentUuid !== undefined) {
        // A view into `whole`: the parent's own UUID goes in its place, and the CRC is made again.
        rewrite.parentUuid.set(Buffer.from(expect.parentUuid, 'hex'));
        whole.writeUInt32LE(0, 6);
        whole.writeUInt32LE(crc32c(whole), 6);
      }
      await forward?.(whole);
    }
  }
  if (version === 0) throw refuse('is empty or truncated');
  if (size > 0) throw refuse('is truncated');
  if (!started) throw refuse('makes no subvolume');
  if (!ended) throw refuse('is truncated before its end');
}
