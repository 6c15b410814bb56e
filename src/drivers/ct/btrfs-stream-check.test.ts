import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { decodeStream, encodeStream, type SendCommand, u64 } from '../../../test/btrfs-streams.ts';
import { isTrivisorError } from '../../core/errors.ts';
import { SEND_ATTR as A, SEND_CMD as C, checkSendStream } from './btrfs-stream-check.ts';

const OWN = Buffer.alloc(16, 0x11);
const PARENT = Buffer.alloc(16, 0x22);
const OTHER = Buffer.alloc(16, 0x33);
const p = (s: string) => Buffer.from(s);

const subvol = (name = 'c-0'): SendCommand => ({
  cmd: C.SUBVOL,
  attrs: [
    [A.PATH, p(name)],
    [A.UUID, OWN],
    [A.CTRANSID, u64(7)],
  ],
});
const snapshot = (parent = PARENT, name = 'c-1'): SendCommand => ({
  cmd: C.SNAPSHOT,
  attrs: [
    [A.PATH, p(name)],
    [A.UUID, OWN],
    [A.CTRANSID, u64(9)],
    [A.CLONE_UUID, parent],
    [A.CLONE_CTRANSID, u64(7)],
  ],
});
const cmd = (c: number, ...attrs: SendCommand['attrs']): SendCommand => ({ cmd: c, attrs });
const END = cmd(C.END);
const clone = (from: Buffer, path: string): SendCommand =>
  cmd(
    C.CLONE,
    [A.FILE_OFFSET, u64(0)],
    [A.CLONE_LEN, u64(4096)],
    [A.PATH, p('upper/f')],
    [A.CLONE_UUID, from],
    [A.CLONE_CTRANSID, u64(7)],
    [A.CLONE_PATH, p(path)],
    [A.CLONE_OFFSET, u64(0)],
  );

/** The stream in chunks of `size` bytes, as a pipe hands it over. */
async function* chunks(buf: Buffer, size: number) {
  for (let at = 0; at < buf.length; at += size) yield buf.subarray(at, at + size);
}
const full = { name: 'c-0' };
const next = { name: 'c-1', parentReceivedUuid: PARENT.toString('hex') };
const accepts = (commands: SendCommand[], expect: typeof full | typeof next) =>
  Promise.all([1, 7, 1 << 16].map((n) => checkSendStream(chunks(encodeStream(commands), n), expect)));
const refuses = async (commands: SendCommand[] | Buffer, expect: typeof full | typeof next, why: RegExp) => {
  const buf = Buffer.isBuffer(commands) ? commands : encodeStream(commands);
  await assert.rejects(checkSendStream(chunks(buf, 5), expect), (e: unknown) => {
    assert.ok(isTrivisorError(e) && e.code === 'InvalidArgument', String(e));
    assert.match(e.message, why);
    assert.doesNotMatch(e.message, /\n/);
    return true;
  });
};

describe('a btrfs send stream from an archive is checked before receive applies it (decision 0090)', () => {
  test("what a ct export sends is accepted: a full, an incremental onto the guest's previous link, clones from either", async () => {
    const files = [
      cmd(C.MKDIR, [A.PATH, p('upper')], [A.INO, u64(257)]),
      cmd(C.MKFILE, [A.PATH, p('o258-7-0')], [A.INO, u64(258)]),
      cmd(C.RENAME, [A.PATH, p('o258-7-0')], [A.PATH_TO, p('upper/f')]),
      cmd(C.WRITE, [A.PATH, p('upper/f')], [A.FILE_OFFSET, u64(0)], [A.DATA, p('data')]),
      cmd(C.SYMLINK, [A.PATH, p('upper/l')], [A.INO, u64(259)], [A.PATH_LINK, p('/etc/../..')]),
      cmd(C.LINK, [A.PATH, p('upper/h')], [A.PATH_LINK, p('upper/f')]),
      cmd(C.CHOWN, [A.PATH, p('')], [A.UID, u64(0)], [A.GID, u64(0)]),
    ];
    await accepts([subvol(), ...files, clone(OWN, 'upper/f'), END], full);
    await accepts([snapshot(), ...files, clone(PARENT, 'upper/f'), clone(OWN, 'upper/h'), END], next);
  });

  test("what goes on to receive is the stream as sent, but for the snapshot's parent: the previous link's own UUID, with a valid CRC", async () => {
    const LOCAL = Buffer.alloc(16, 0x44);
    const files = [cmd(C.MKFILE, [A.PATH, p('upper/g')]), clone(PARENT, 'upper/f')];
    const sent = encodeStream([snapshot(), ...files, END]);
    const out: Buffer[] = [];
    await checkSendStream(chunks(sent, 3), { ...next, parentUuid: LOCAL.toString('hex') }, async (b) => {
      out.push(Buffer.from(b));
    });
    // decodeStream checks every CRC.
    const forwarded = decodeStream(Buffer.concat(out)).commands;
    assert.deepEqual(forwarded, [
      { cmd: C.SNAPSHOT, attrs: snapshot().attrs.map(([t, v]) => [t, t === A.CLONE_UUID ? LOCAL : v]) },
      ...files,
      END,
    ]);
  });

  test("a snapshot or clone of another subvolume (another guest's data) is refused", async () => {
    await refuses(
      [snapshot(OTHER), END],
      next,
      /snapshot of a subvolume other than the guest's previous link/,
    );
    await refuses(
      [snapshot(PARENT, 'c-0'), END],
      full,
      /snapshot of another subvolume where a chain's full was expected/,
    );
    await refuses([subvol('c-1'), END], next, /whole subvolume where the next link/);
    await refuses(
      [subvol(), clone(OTHER, 'upper/f'), END],
      full,
      /clones data from a subvolume other than itself/,
    );
    await refuses(
      [subvol(), clone(PARENT, 'upper/f'), END],
      full,
      /clones data from a subvolume other than itself/,
    );
  });

  test('a path out of the subvolume is refused: .., absolute, in every path a command names', async () => {
    await refuses(
      [subvol(), cmd(C.MKFILE, [A.PATH, p('../escape')]), END],
      full,
      /"\.\.\/escape" in mkfile, which leads out/,
    );
    await refuses(
      [subvol(), cmd(C.MKDIR, [A.PATH, p('/etc/cron.d')]), END],
      full,
      /absolute path "\/etc\/cron\.d" in mkdir/,
    );
    await refuses(
      [subvol(), cmd(C.RENAME, [A.PATH, p('upper/a')], [A.PATH_TO, p('upper/../../b')]), END],
      full,
      /leads out/,
    );
    await refuses(
      [subvol(), cmd(C.LINK, [A.PATH, p('upper/h')], [A.PATH_LINK, p('../x')]), END],
      full,
      /leads out/,
    );
    await refuses(
      [snapshot(), clone(PARENT, '../../../other/upper/secret'), END],
      next,
      /in clone, which leads out/,
    );
    await refuses(
      [subvol(), cmd(C.TRUNCATE, [A.PATH, p('upper//f')], [A.SIZE, u64(0)]), END],
      full,
      /malformed path/,
    );
  });

  test('a stream of another name, of two subvolumes, truncated, or going on after its end is refused', async () => {
    await refuses([subvol('evil'), END], full, /makes subvolume "evil", not c-0/);
    await refuses([subvol(), subvol('c-0'), END], full, /more than one subvolume/);
    await refuses([cmd(C.MKFILE, [A.PATH, p('x')]), subvol(), END], full, /before its subvolume/);
    await refuses([subvol()], full, /truncated before its end/);
    await refuses([subvol(), END, cmd(C.MKFILE, [A.PATH, p('x')])], full, /after its end/);
    const whole = encodeStream([subvol(), END]);
    await refuses(whole.subarray(0, whole.length - 3), full, /truncated/);
    await refuses(Buffer.from('not a stream at all, no'), full, /does not start as a btrfs send stream/);
    await refuses([subvol(), cmd(99), END], full, /unknown command 99/);
  });
});
