import { randomBytes } from 'node:crypto';
import { failedPrecondition, internal, invalidArgument, notFound } from '../core/errors.ts';
import { formatMode, type GuestFile, type GuestFileAttributes } from '../core/guest-files.ts';
import type { QgaClient } from './qga-client.ts';
import { GUEST_BUSYBOX } from './qga-exec-session.ts';

/**
 * `file push|pull` through the guest agent: the bytes go in guest-file-read
 * and guest-file-write requests of the client's chunk size (small on UML's
 * serial line), checks and the final chmod/chown/rename run as small
 * guest-exec'd scripts of the kit's busybox. Paths are the guest's business:
 * the agent runs as root inside the guest, so its symlinks cannot lead
 * anywhere outside it.
 */

const PATH_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/** Exit codes of the check scripts. */
const NO_DIR = 3;
const IS_DIR = 4;
const NOT_FILE = 5;
const NOT_DIR = 6;

/** Before a push: the directory must exist (or is made) and the path must not be a directory. */
const PREPARE_PUSH = `
p=$1; d=\${p%/*}; [ -n "$d" ] || d=/
if [ "$2" = 1 ]; then $0 mkdir -p -- "$d" 2>/dev/null || exit ${NOT_DIR}; fi
[ -e "$d" ] || exit ${NO_DIR}
[ -d "$d" ] || exit ${NOT_DIR}
[ -d "$p" ] && exit ${IS_DIR}
exit 0`;

/** After the bytes are in the temporary file: owner, then mode (chown clears set-id bits), then rename. */
const FINISH_PUSH = `
$0 chown "$3:$4" "$1" && $0 chmod "$5" "$1" && $0 mv -f "$1" "$2" && exit 0
r=$?; $0 rm -f "$1"; exit $r`;

/** Before a pull: what the path is; prints raw mode (hex), uid, gid and size of the file. */
const STAT_PULL = `
[ -e "$1" ] || exit ${NO_DIR}
[ -d "$1" ] && exit ${IS_DIR}
[ -f "$1" ] || exit ${NOT_FILE}
exec $0 stat -L -c '%f %u %g %s' "$1"`;

/**
 * Runs a check script with `tools` as its $0: the kit's busybox, or `/usr/bin/env` in a guest
 * without the kit (then `$0 chmod` runs the guest's own chmod from its PATH).
 */
async function run(client: QgaClient, script: string, args: string[], tools = GUEST_BUSYBOX) {
  return client.exec([tools, 'sh', '-c', script, tools, ...args], { env: PATH_ENV });
}

const detail = (r: { stderr: Buffer; stdout: Buffer }) =>
  (r.stderr.toString('utf8') || r.stdout.toString('utf8')).trim().split('\n')[0] || 'no output';

/** Writes a whole file into the guest through its agent: a temporary file beside it, then a rename. */
export async function qgaPushFile(
  client: QgaClient,
  options: GuestFileAttributes & {
    path: string;
    data: Buffer;
    createDirs?: boolean;
    guest: string;
    /** What runs the checks: the kit's busybox (default) or the guest's own tools. */
    tools?: string;
  },
): Promise<void> {
  const { path, guest, tools } = options;
  const prepared = await run(client, PREPARE_PUSH, [path, options.createDirs ? '1' : '0'], tools);
  if (prepared.exitCode === NO_DIR) {
    throw notFound(`The directory of ${path} does not exist in guest ${guest}: create it first`);
  }
  if (prepared.exitCode === NOT_DIR) {
    throw invalidArgument(`The directory of ${path} cannot be made or is not a directory in guest ${guest}`);
  }
  if (prepared.exitCode === IS_DIR) throw invalidArgument(`${path} is a directory in guest ${guest}`);
  if (prepared.exitCode !== 0) {
    throw internal(`Cannot prepare ${path} in guest ${guest}: ${detail(prepared)}`);
  }
  const slash = path.lastIndexOf('/');
  const temp = `${path.slice(0, slash + 1)}.${path.slice(slash + 1, slash + 201)}.trivisor-${randomBytes(6).toString('hex')}`;
  try {
    await client.writeFile(temp, options.data);
  } catch (e) {
    await run(client, '$0 rm -f "$1"', [temp], tools).catch(() => {});
    const message = e instanceof Error ? e.message : String(e);
    if (/No space left|Disk quota/i.test(message)) {
      throw failedPrecondition(
        `Cannot write ${path}: guest ${guest}'s disk is full; free some space and retry`,
      );
    }
    if (/Read-only file system/i.test(message)) {
      throw failedPrecondition(`Cannot write ${path}: it is on a read-only file system in guest ${guest}`);
    }
    throw e;
  }
  const finished = await run(
    client,
    FINISH_PUSH,
    [temp, path, String(options.uid), String(options.gid), formatMode(options.mode)],
    tools,
  );
  if (finished.exitCode !== 0) {
    throw internal(`Cannot finish writing ${path} in guest ${guest}: ${detail(finished)}`);
  }
}

/** Reads a whole regular file of the guest through its agent, with its mode and owner. */
export async function qgaPullFile(
  client: QgaClient,
  path: string,
  options: { maxBytes: number; guest: string; tools?: string },
): Promise<GuestFile> {
  const { guest, maxBytes } = options;
  const st = await run(client, STAT_PULL, [path], options.tools);
  if (st.exitCode === NO_DIR) throw notFound(`${path} does not exist in guest ${guest}`);
  if (st.exitCode === IS_DIR) throw invalidArgument(`${path} is a directory in guest ${guest}: give a file`);
  if (st.exitCode === NOT_FILE) throw invalidArgument(`${path} is not a regular file in guest ${guest}`);
  const fields = st.stdout.toString('utf8').trim().split(/\s+/);
  if (st.exitCode !== 0 || fields.length !== 4) {
    throw internal(`Cannot look at ${path} in guest ${guest}: ${detail(st)}`);
  }
  const [rawMode = '', uid = '', gid = '', size = ''] = fields;
  if (Number(size) > maxBytes) {
    throw invalidArgument(`${path} is ${size} bytes, more than the ${maxBytes} bytes a copy may have`);
  }
  const data = await client.readFile(path);
  if (data.length > maxBytes) {
    throw invalidArgument(`${path} grew past the ${maxBytes} bytes a copy may have while it was read`);
  }
  return { data, mode: Number.parseInt(rawMode, 16) & 0o7777, uid: Number(uid), gid: Number(gid) };
}
