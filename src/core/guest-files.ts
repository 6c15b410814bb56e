import { posix } from 'node:path';
import { invalidArgument } from './errors.ts';

/**
 * Files copied into and out of guests (`file push|pull`) and files injected at
 * every start (`files.<path>` config keys). See docs/decisions/0009-guest-files.md.
 */

/** Largest file `file push|pull` carries (it is held in memory, and vm/pvm move it through the agent). */
export const GUEST_FILE_MAX_BYTES = 64 * 1024 * 1024;
/** Prefix of the config keys of injected files: `files./etc/motd`. */
export const INJECTED_FILE_PREFIX = 'files.';
/** Largest injected file (the content lives in the guest's spec, in the store). */
export const INJECTED_FILE_MAX_BYTES = 64 * 1024;
/** Largest sum of a guest's injected files. */
export const INJECTED_FILES_MAX_TOTAL_BYTES = 256 * 1024;
/** Most injected files a guest may have. */
export const INJECTED_FILES_MAX_COUNT = 64;
/** First line of the manifest of a vm/pvm guest's config disk (drivers/config-disk.ts); the kit checks it. */
export const CONFIG_DISK_MAGIC = 'trivisor-files 1';
/** Highest uid/gid a file may be given (4294967295 is "no id"). */
const MAX_ID = 4_294_967_294;
/** Where injected files may not go: mounted over at boot (so hidden), or the kit's own. */
const INJECT_FORBIDDEN = ['/proc', '/sys', '/dev', '/.trivisor'];

/** Ownership and permissions of a file in a guest (ids as the guest sees them). */
export interface GuestFileAttributes {
  /** Permission bits, 0 to 0o7777. */
  mode: number;
  uid: number;
  gid: number;
}

/** A file read from a guest. */
export interface GuestFile extends GuestFileAttributes {
  data: Buffer;
}

/** A file a guest gets at every start, from its `files.<path>` config key. */
export interface InjectedFile extends GuestFileAttributes {
  /** Absolute, normalized path in the guest. */
  path: string;
  content: Buffer;
}

/**
 * Throws InvalidArgument unless `path` is an absolute, normalized path of a
 * file (not `/`, no `.`/`..` parts, no trailing slash, no control characters).
 */
export function checkGuestPath(path: string, what = 'The guest path'): string {
  if (typeof path !== 'string' || path === '') {
    throw invalidArgument(`${what} is empty: give an absolute path such as /etc/motd`);
  }
  if (!path.startsWith('/')) {
    throw invalidArgument(`${what} ${JSON.stringify(path)} is not absolute: start it with /`);
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
  if (/[\x00-\x1f\x7f]/.test(path)) {
    throw invalidArgument(`${what} ${JSON.stringify(path)} holds control characters: use a plain path`);
  }
  if (Buffer.byteLength(path) > 4095) throw invalidArgument(`${what} is longer than 4095 bytes`);
  if (path.split('/').some((part) => Buffer.byteLength(part) > 255)) {
    throw invalidArgument(`${what} has a name longer than 255 bytes, which no Linux file system holds`);
  }
  if (path === '/' || path.endsWith('/')) {
    throw invalidArgument(`${what} ${JSON.stringify(path)} names a directory: give the path of a file`);
  }
  if (posix.normalize(path) !== path || path.split('/').some((p) => p === '.' || p === '..')) {
    throw invalidArgument(
      `${what} ${JSON.stringify(path)} is not normalized: write it without //, . or .. parts`,
    );
  }
  return path;
}

/** Throws InvalidArgument unless mode, uid and gid are in range. */
export function checkAttributes(attributes: Partial<GuestFileAttributes>): void {
  const { mode, uid, gid } = attributes;
  if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > 0o7777)) {
    throw invalidArgument(`The file mode ${mode} is not between 0000 and 7777 (octal): give e.g. 0644`);
  }
  for (const [name, id] of [
    ['uid', uid],
    ['gid', gid],
  ] as const) {
    if (id !== undefined && (!Number.isInteger(id) || id < 0 || id > MAX_ID)) {
      throw invalidArgument(`The ${name} ${id} is not a whole number between 0 and ${MAX_ID}`);
    }
  }
}

/** `0644` or `644` (octal) → 0o644; InvalidArgument otherwise. */
export function parseMode(text: string): number {
  if (!/^0?[0-7]{3,4}$/.test(text.trim())) {
    throw invalidArgument(`The file mode ${JSON.stringify(text)} is not octal permissions such as 0644`);
  }
  return Number.parseInt(text.trim(), 8);
}

/** 0o644 → `0644`. */
export function formatMode(mode: number): string {
  return mode.toString(8).padStart(4, '0');
}

function parseId(text: string, name: string): number {
  if (!/^\d+$/.test(text)) throw invalidArgument(`The ${name} ${JSON.stringify(text)} is not a number`);
  const id = Number(text);
  checkAttributes({ [name]: id });
  return id;
}

/**
 * The value of a `files.<path>` key: `mode=0644,uid=0,gid=0,content=<base64>`
 * (mode, uid and gid optional: 0644, 0, 0). Base64 holds no commas, so the
 * fields split on them.
 */
export function formatInjectedFile(file: Omit<InjectedFile, 'path'>): string {
  return `mode=${formatMode(file.mode)},uid=${file.uid},gid=${file.gid},content=${file.content.toString('base64')}`;
}

/** Parses and checks one `files.<path>` key and its value; InvalidArgument says what is wrong. */
export function parseInjectedFile(key: string, value: string): InjectedFile {
  const path = checkGuestPath(key.slice(INJECTED_FILE_PREFIX.length), `The path of ${key}`);
  for (const top of INJECT_FORBIDDEN) {
    if (path === top || path.startsWith(`${top}/`)) {
      throw invalidArgument(
        `${key}: files under ${top} cannot be injected (it is mounted over at boot, or the guest kit's)`,
      );
    }
  }
  const file: InjectedFile = { path, mode: 0o644, uid: 0, gid: 0, content: Buffer.alloc(0) };
  let sawContent = false;
  for (const field of value.split(',')) {
    const at = field.indexOf('=');
    const name = at < 0 ? field : field.slice(0, at);
    const text = at < 0 ? '' : field.slice(at + 1);
    switch (name) {
      case 'mode':
        file.mode = parseMode(text);
        break;
      case 'uid':
        file.uid = parseId(text, 'uid');
        break;
      case 'gid':
        file.gid = parseId(text, 'gid');
        break;
      case 'content':
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
          throw invalidArgument(`${key}: content= is not base64`);
        }
        file.content = Buffer.from(text, 'base64');
        sawContent = true;
        break;
      default:
        throw invalidArgument(
          `${key}: unknown field ${JSON.stringify(name)}; the value is mode=0644,uid=0,gid=0,content=BASE64`,
        );
    }
  }
  if (!sawContent) throw invalidArgument(`${key}: give the file's bytes as content=BASE64`);
  if (file.content.length > INJECTED_FILE_MAX_BYTES) {
    throw invalidArgument(
      `${key} is ${file.content.length} bytes, more than the ${INJECTED_FILE_MAX_BYTES / 1024} KiB an injected file may have: push bigger files with trivisor file push`,
    );
  }
  return file;
}

/** The injected files of a config, by path order; throws on malformed keys and on too many or too large. */
export function injectedFiles(config: Record<string, string>): InjectedFile[] {
  const files = Object.entries(config)
    .filter(([k]) => k.startsWith(INJECTED_FILE_PREFIX))
    .map(([k, v]) => parseInjectedFile(k, v))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  if (files.length > INJECTED_FILES_MAX_COUNT) {
    throw invalidArgument(
      `A guest may have at most ${INJECTED_FILES_MAX_COUNT} injected files; it has ${files.length}`,
    );
  }
  const total = files.reduce((n, f) => n + f.content.length, 0);
  if (total > INJECTED_FILES_MAX_TOTAL_BYTES) {
    throw invalidArgument(
      `The injected files add up to ${total} bytes, more than ${INJECTED_FILES_MAX_TOTAL_BYTES / 1024} KiB: push big files with trivisor file push instead`,
    );
  }
  return files;
}
