import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  createReadStream,
  existsSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SEND_ATTR, SEND_CMD } from '../../src/drivers/ct/btrfs-stream-check.ts';
import { ArchiveWriter } from '../../src/storage/backup-archive.ts';
import { decodeStream, encodeStream, type SendCommand, u64, uuidBytes } from '../btrfs-streams.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/**
 * Every entry of a tree on the host, sorted: path, type, mode, owner, size, content hash or
 * link target or device number, every xattr (all namespaces: overlayfs's trusted.* too),
 * and which earlier path a regular file is a hard link of.
 */
const TREE_SCRIPT = `
import hashlib, os, stat, sys
root = sys.argv[1]
seen = {}
out = []
for dirpath, dirnames, filenames in os.walk(root):
    for name in sorted(dirnames) + sorted(filenames):
        p = os.path.join(dirpath, name)
        rel = os.path.relpath(p, root)
        st = os.lstat(p)
        kind = stat.S_IFMT(st.st_mode)
        what = ''
        if stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(open(p, 'rb').read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            what = '-> ' + os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            what = 'dev %d' % st.st_rdev
        xattrs = ','.join('%s=%s' % (n, os.getxattr(p, n, follow_symlinks=False).hex())
                          for n in sorted(os.listxattr(p, follow_symlinks=False)))
        link = ''
        # overlayfs links its whiteouts to one shared inode of its work dir: only files count.
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            link = 'same as ' + seen.setdefault(st.st_ino, rel)
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
        out.append('%s %o %o %d:%d %d %s [%s] %s' % (rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, what, xattrs, link))
print('\\n'.join(sorted(out)))
`;

const tree = (dir: string): string => {
  const r = spawnSync('/usr/bin/python3', ['-c', TREE_SCRIPT, dir], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
};

/** Sets (or with value undefined removes) an xattr of a host path. */
const xattr = (file: string, name: string, value?: string) => {
  const code =
    value === undefined
      ? 'import os,sys; os.removexattr(sys.argv[1], sys.argv[2])'
      : 'import os,sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())';
  const r = spawnSync('/usr/bin/python3', ['-c', code, file, name, ...(value === undefined ? [] : [value])], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
};

const manifestOf = (archive: string) => {
  const r = spawnSync('tar', ['-xOf', archive, 'manifest.json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { incremental?: { sequence: number; kind: string; method?: string } };
};

const subvolumes = (mount: string) =>
  spawnSync('btrfs', ['subvolume', 'list', '-o', mount], { encoding: 'utf8' }).stdout +
  spawnSync('btrfs', ['subvolume', 'list', mount], { encoding: 'utf8' }).stdout;

const sha256 = (file: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });

describe('ct incrementals by btrfs send on a btrfs pool', () => {
  let src: Daemon;
  let dst: Daemon;
  let dir: string;
  before(async () => {
    [src, dst] = await Promise.all([startDaemon(), startDaemon()]);
    dir = await makeRunDir('btrfs-send');
  });
  after(async () => {
    await Promise.all([src?.destroy(), dst?.destroy()]);
    if (dir) await removeRunDir(dir);
  });
  const file = (name: string) => path.join(dir, name);
  const sh = (d: Daemon, guest: string, script: string) => d.ok(['exec', guest, '--', 'sh', '-c', script]);
  const guestDir = (d: Daemon, name: string) => readlinkSync(path.join(d.stateDir, 'guests', name));
  const poolPath = (d: Daemon) =>
    (JSON.parse(d.ok(['storage', 'info', 'bp', '--format', 'json'])) as { path: string }).path;

  test('full, then two incrementals sent with btrfs send -p; the chain received onto a btrfs pool gives the same tree', async (t) => {
    src.ok(['storage', 'create', 'bp', 'btrfs', 'size=600MiB']);
    dst.ok(['storage', 'create', 'bp', 'btrfs', 'size=600MiB']);
    src.ok(['launch', 'busybox', 'b1', '--model', 'ct', '--storage', 'bp']);
    sh(
      src,
      'b1',
      'mkdir -p /srv/old && dd if=/dev/urandom of=/srv/blob bs=1M count=8 2>/dev/null && ' +
        'printf zero > /srv/v.txt && echo a > /srv/old/a && echo gone > /srv/gone.txt && echo x > /srv/x.txt && ' +
        'chmod 640 /srv/v.txt && chown 12:34 /srv/x.txt',
    );
    // Set on the host in the upper layer (the guest's overlay is mounted in its own mount namespace;
    // busybox has no setfattr): what a guest's setfattr leaves there.
    const rootfs = path.join(guestDir(src, 'b1'), 'upper');
    xattr(path.join(rootfs, 'srv/x.txt'), 'user.kept', 'one');
    xattr(path.join(rootfs, 'srv/x.txt'), 'user.dropped', 'soon');
    let started = Date.now();
    const full = src.ok(['export', 'b1', file('f0'), '--incremental']);
    const fullMs = Date.now() - started;
    const chain = /^Full backup: starts chain ([0-9a-f]+)\n$/.exec(full)?.[1];
    assert.ok(chain, full);
    assert.equal(manifestOf(file('f0')).incremental?.method, 'btrfs-send');
    // The snapshot kept for the next -p is visible in the guest's directory, and a subvolume.
    const snaps = path.join(guestDir(src, 'b1'), 'backup-snapshots');
    assert.deepEqual(readdirSync(snaps), [`${chain}-0`]);
    assert.match(subvolumes(poolPath(src)), new RegExp(`backup-snapshots/${chain}-0`));

    // Add, modify (64 KiB of the 8 MiB blob), delete, rename, a hard link, an image file deleted
    // (a whiteout), xattrs changed and removed, a mode and an owner changed.
    sh(
      src,
      'b1',
      'dd if=/dev/urandom of=/srv/blob bs=64k count=1 seek=5 conv=notrunc 2>/dev/null && printf one > /srv/v.txt && ' +
        'rm /srv/gone.txt /etc/profile && mv /srv/old /srv/renamed && ln /srv/v.txt /srv/hard && ' +
        'echo new > /srv/new.txt && chmod 600 /srv/x.txt',
    );
    xattr(path.join(rootfs, 'srv/x.txt'), 'user.kept', 'two');
    xattr(path.join(rootfs, 'srv/x.txt'), 'user.dropped');
    xattr(path.join(rootfs, 'srv/new.txt'), 'user.added', 'yes');
    started = Date.now();
    assert.match(src.ok(['export', 'b1', file('i1'), '--incremental']), /^Incremental backup 1 of chain /);
    const incMs = Date.now() - started;
    assert.equal(manifestOf(file('i1')).incremental?.method, 'btrfs-send');
    assert.deepEqual(readdirSync(snaps), [`${chain}-1`], 'only the last link snapshot is kept');
    // A snapshot of a backup cut short (no chain names it) goes when the daemon starts again.
    const stray = spawnSync('btrfs', [
      'subvolume',
      'snapshot',
      '-r',
      guestDir(src, 'b1'),
      path.join(snaps, 'stray'),
    ]);
    assert.equal(stray.status, 0, String(stray.stderr));
    await src.kill9();
    await src.restart();
    assert.deepEqual(readdirSync(snaps), [`${chain}-1`], 'the stray snapshot is swept at start');

    sh(
      src,
      'b1',
      'printf two > /srv/hard && rm /srv/renamed/a && mv /srv/new.txt /srv/renamed/new.txt && ' +
        'mkdir -p /etc/udhcpc2 && echo own > /etc/udhcpc2/own && ln -s /srv/hard /srv/soft',
    );
    src.ok(['stop', 'b1']);
    assert.match(src.ok(['export', 'b1', file('i2'), '--incremental']), /^Incremental backup 2 of chain /);
    const upper = path.join(guestDir(src, 'b1'), 'upper');
    const want = tree(upper);
    assert.match(want, /^srv\/hard .* same as srv\/[a-z.]+$/m, 'the hard link is in the source');
    assert.match(want, /^etc\/profile 20000 /m, 'the whiteout is in the source');
    assert.match(want, /^srv\/x\.txt .*\[user\.kept=74776f\] /m);

    const [f0 = 0, i1 = 0, i2 = 0] = ['f0', 'i1', 'i2'].map((n) => statSync(file(n)).size);
    t.diagnostic(
      `ct on btrfs: full ${f0} B in ${fullMs} ms; incremental 1 (64 KiB of 8 MiB and small files) ${i1} B in ${incMs} ms; incremental 2 ${i2} B`,
    );
    assert.ok(f0 > 8 * 2 ** 20, `the full backup (${f0} B) holds the 8 MiB blob`);
    assert.ok(i1 * 20 < f0 && i2 * 20 < f0, `incrementals ${i1} B and ${i2} B against ${f0} B`);

    // Onto a dir pool: refused in one line, no guest made.
    const onDir = dst.cli(['import', file('f0'), 'b9']);
    assert.equal(onDir.code, 1);
    assert.match(onDir.stderr, /^Error: .*btrfs send stream: import it onto a btrfs storage pool/);
    assert.equal(onDir.stderr.trim().split('\n').length, 1, onDir.stderr);
    assert.doesNotMatch(dst.ok(['list']), /b9/);

    dst.ok(['import', file('f0'), 'b1', '--storage', 'bp']);
    const early = dst.cli(['import', file('i2'), 'b1']);
    assert.equal(early.code, 1);
    assert.match(early.stderr, /is not at backup 1 of chain/);
    dst.ok(['import', file('i1'), 'b1']);
    dst.ok(['import', file('i2'), 'b1']);
    const restored = path.join(guestDir(dst, 'b1'), 'upper');
    assert.equal(tree(restored), want);
    assert.deepEqual(readdirSync(path.join(guestDir(dst, 'b1'), 'backup-received')), [`${chain}-2`]);

    // The snapshot is gone (deleted by hand): the chain goes on with GNU tar's incremental.
    spawnSync('btrfs', ['subvolume', 'delete', path.join(snaps, `${chain}-2`)]);
    src.ok(['start', 'b1']);
    sh(src, 'b1', 'echo three > /srv/three && rm /srv/soft');
    src.ok(['stop', 'b1']);
    assert.match(src.ok(['export', 'b1', file('i3'), '--incremental']), /^Incremental backup 3 of chain /);
    assert.equal(manifestOf(file('i3')).incremental?.method, undefined, 'a tar link');
    dst.ok(['import', file('i3'), 'b1']);
    assert.equal(tree(restored), tree(upper));
    dst.ok(['start', 'b1']);
    assert.equal(
      sh(dst, 'b1', 'cat /srv/hard /srv/three; test -e /etc/profile || echo no profile'),
      'twothree\nno profile\n',
    );

    // A tar link keeps no snapshot; a restored snapshot ends the chain, and the next (full) keeps one
    // again, which goes with the guest.
    assert.equal(existsSync(snaps) && readdirSync(snaps).length > 0, false);
    src.ok(['snapshot', 'create', 'b1', 's0']);
    src.ok(['snapshot', 'restore', 'b1', 's0']);
    assert.match(src.ok(['export', 'b1', file('n0'), '--incremental']), /^Full backup: starts chain /);
    assert.equal(readdirSync(snaps).length, 1);
    assert.match(subvolumes(poolPath(src)), /guests\/b1\/backup-snapshots\//);
    src.ok(['delete', '--force', 'b1']);
    assert.doesNotMatch(subvolumes(poolPath(src)), /b1/);
  });

  test('a truncated or corrupt link is refused in one line and leaves the restored guest as it was', () => {
    dst.ok(['import', file('f0'), 'b2', '--storage', 'bp']);
    const dirB2 = guestDir(dst, 'b2');
    const before = tree(path.join(dirB2, 'upper'));
    const whole = readFileSync(file('i1'));
    writeFileSync(file('cut'), whole.subarray(0, Math.floor(whole.length / 2)));
    const bad = Buffer.from(whole);
    // A byte in the middle of the payload (past the first 512-byte header).
    const at = 512 + Math.floor((whole.length - 2048) / 2);
    bad[at] = (bad[at] ?? 0) ^ 0xff;
    writeFileSync(file('bad'), bad);
    for (const [name, why] of [
      ['cut', /corrupted or truncated|lacks|does not match/],
      ['bad', /corrupted|does not match/],
    ] as const) {
      const r = dst.cli(['import', file(name), 'b2']);
      assert.equal(r.code, 1, name);
      assert.match(r.stderr, why);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.equal(tree(path.join(dirB2, 'upper')), before, `${name}: the guest is unchanged`);
      assert.deepEqual(
        readdirSync(dirB2).filter((n) => n.startsWith('.tmp')),
        [],
        `${name}: nothing half-received is left`,
      );
      assert.equal(readdirSync(path.join(dirB2, 'backup-received')).length, 1);
    }
    // A truncated full link makes no guest.
    const f0 = readFileSync(file('f0'));
    writeFileSync(file('cutfull'), f0.subarray(0, Math.floor(f0.length / 2)));
    assert.equal(dst.cli(['import', file('cutfull'), 'b3', '--storage', 'bp']).code, 1);
    assert.doesNotMatch(dst.ok(['list']), /b3/);
    assert.equal(existsSync(path.join(poolPath(dst), 'guests', 'b3')), false);
    // The rest of the chain still applies.
    dst.ok(['import', file('i1'), 'b2']);
    dst.ok(['delete', '--force', 'b2']);
    assert.doesNotMatch(subvolumes(poolPath(dst)), /b2/);
  });

  test("crafted btrfs streams are refused in one line before receive: no other guest's data taken, no path out, nothing left; a link applies onto its own guest's parent (decision 0090)", async () => {
    // The chain's full restored as b4; b1 (restored by the first test) is the other guest, with a secret.
    dst.ok(['import', file('f0'), 'b4', '--storage', 'bp']);
    const dirB4 = guestDir(dst, 'b4');
    const upperB4 = path.join(dirB4, 'upper');
    const before = tree(upperB4);
    const [received] = readdirSync(path.join(dirB4, 'backup-received'));
    assert.ok(received);
    const dirB1 = guestDir(dst, 'b1');
    const secret = randomBytes(4096);
    writeFileSync(path.join(dirB1, 'upper', 'secret'), secret);
    const show = (subvolume: string, field: string) => {
      const r = spawnSync('btrfs', ['subvolume', 'show', subvolume], { encoding: 'utf8' });
      const v = new RegExp(`^\\t${field}:\\s*(\\S+)$`, 'm').exec(r.stdout)?.[1];
      assert.ok(v, r.stdout + r.stderr);
      return v;
    };
    const b1Uuid = show(dirB1, 'UUID');

    // The real incremental's stream, and the archive it came in, rewritten around a crafted stream.
    const unpack = (archive: string, member: string) => {
      const r = spawnSync('tar', ['-xOf', archive, member], { maxBuffer: 1 << 28 });
      assert.equal(r.status, 0, String(r.stderr));
      return r.stdout;
    };
    const stream = spawnSync('zstd', ['-q', '-d', '-c'], {
      input: unpack(file('i1'), 'rootfs.tar.zst'),
      maxBuffer: 1 << 28,
    });
    assert.equal(stream.status, 0, String(stream.stderr));
    const real = decodeStream(stream.stdout).commands;
    assert.equal(real[0]?.cmd, SEND_CMD.SNAPSHOT);
    const snapshotCmd = real[0] as SendCommand;
    const end = real[real.length - 1] as SendCommand;
    const craft = async (name: string, commands: SendCommand[]) => {
      const payload = spawnSync('zstd', ['-q', '-c'], { input: encodeStream(commands) }).stdout;
      const manifest = JSON.parse(unpack(file('i1'), 'manifest.json').toString('utf8'));
      manifest.files['rootfs.tar.zst'] = {
        sha256: createHash('sha256').update(payload).digest('hex'),
        sizeBytes: payload.length,
      };
      const w = await ArchiveWriter.create(file(name));
      await w.addBuffer('rootfs.tar.zst', payload);
      await w.addBuffer('manifest.json', Buffer.from(JSON.stringify(manifest)));
      await w.finish();
      return file(name);
    };
    const withAttr = (c: SendCommand, type: number, value: Buffer): SendCommand => ({
      cmd: c.cmd,
      attrs: c.attrs.map(([t, v]) => [t, t === type ? value : v]),
    });
    const attr = (c: SendCommand, type: number) => c.attrs.find(([t]) => t === type)?.[1] as Buffer;
    const p = (s: string) => Buffer.from(s);
    const cases: Array<[string, SendCommand[], RegExp]> = [
      // A snapshot of the other guest's subvolume, named by its UUID: receive finds it and would
      // have given b4 b1's files.
      [
        'theft',
        [withAttr(snapshotCmd, SEND_ATTR.CLONE_UUID, uuidBytes(b1Uuid)), end],
        /snapshot of a subvolume other than the guest's previous link/,
      ],
      // A clone from b4's own previous link, its path walked out to b1's files.
      [
        'clone-out',
        [
          snapshotCmd,
          { cmd: SEND_CMD.MKFILE, attrs: [[SEND_ATTR.PATH, p('upper/stolen')]] },
          {
            cmd: SEND_CMD.CLONE,
            attrs: [
              [SEND_ATTR.FILE_OFFSET, u64(0)],
              [SEND_ATTR.CLONE_LEN, u64(4096)],
              [SEND_ATTR.PATH, p('upper/stolen')],
              [SEND_ATTR.CLONE_UUID, attr(snapshotCmd, SEND_ATTR.CLONE_UUID)],
              [SEND_ATTR.CLONE_CTRANSID, attr(snapshotCmd, SEND_ATTR.CLONE_CTRANSID)],
              [SEND_ATTR.CLONE_PATH, p('../../../b1/upper/secret')],
              [SEND_ATTR.CLONE_OFFSET, u64(0)],
            ],
          },
          end,
        ],
        /clone, which leads out of its subvolume/,
      ],
      // Paths out of the subvolume, absolute and by ..
      [
        'escape',
        [
          snapshotCmd,
          { cmd: SEND_CMD.MKFILE, attrs: [[SEND_ATTR.PATH, p(`../../escape-${process.pid}`)]] },
          { cmd: SEND_CMD.MKDIR, attrs: [[SEND_ATTR.PATH, p('/etc/escape')]] },
          end,
        ],
        /escape-\d+" in mkfile, which leads out of its subvolume/,
      ],
    ];
    for (const [name, commands, why] of cases) {
      const r = dst.cli(['import', await craft(name, commands), 'b4']);
      assert.equal(r.code, 1, `${name}: ${r.stdout}`);
      assert.match(r.stderr, why, name);
      assert.match(r.stderr, /not made by a ct export/, name);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.equal(tree(upperB4), before, `${name}: b4 is unchanged`);
      assert.deepEqual(
        readdirSync(path.join(dirB4, 'backup-received')),
        [received],
        `${name}: nothing received`,
      );
      assert.deepEqual(
        readFileSync(path.join(dirB1, 'upper', 'secret')),
        secret,
        `${name}: b1's file untouched`,
      );
    }
    assert.equal(existsSync(path.join(path.dirname(dirB4), `escape-${process.pid}`)), false);
    // A second guest restored from the same chain holds a received subvolume with the same received
    // UUID as b4's (receive's search by received UUID finds b4's first): its next link is applied
    // onto its own, and b4's still applies afterwards.
    dst.ok(['import', file('f0'), 'b5', '--storage', 'bp']);
    const dirB5 = guestDir(dst, 'b5');
    const ownParent = show(path.join(dirB5, 'backup-received', received), 'UUID');
    assert.equal(
      show(path.join(dirB5, 'backup-received', received), 'Received UUID'),
      show(path.join(dirB4, 'backup-received', received), 'Received UUID'),
    );
    dst.ok(['import', file('i1'), 'b5']);
    const [next] = readdirSync(path.join(dirB5, 'backup-received'));
    assert.ok(next);
    assert.equal(show(path.join(dirB5, 'backup-received', next), 'Parent UUID'), ownParent);
    dst.ok(['import', file('i1'), 'b4']);
    assert.equal(tree(upperB4), tree(path.join(dirB5, 'upper')));
    dst.ok(['delete', '--force', 'b4']);
    dst.ok(['delete', '--force', 'b5']);
    assert.doesNotMatch(subvolumes(poolPath(dst)), /b4|b5/);
  });
});

describe('pvm incrementals read only the blocks the COW file marks', () => {
  let src: Daemon;
  let dst: Daemon;
  let dir: string;
  before(async () => {
    [src, dst] = await Promise.all([startDaemon(), startDaemon()]);
    dir = await makeRunDir('pvm-blocks');
  });
  after(async () => {
    await Promise.all([src?.destroy(), dst?.destroy()]);
    if (dir) await removeRunDir(dir);
  });
  const file = (name: string) => path.join(dir, name);
  const sh = (d: Daemon, guest: string, script: string) => d.ok(['exec', guest, '--', 'sh', '-c', script]);
  const daemonRead = (d: Daemon) => {
    const { pid } = JSON.parse(readFileSync(path.join(d.stateDir, 'daemon.json'), 'utf8')) as { pid: number };
    return Number(/^rchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1]);
  };

  test('an incremental after 1% changed is small, reads little, and the restored chain disk is identical', async (t) => {
    src.ok(['launch', 'busybox', 'p1', '--model', 'pvm', '-c', 'limits.memory=128MiB']);
    const cow = path.join(src.stateDir, 'guests', 'p1', 'disk', 'root.cow');
    const header = readFileSync(cow).subarray(0, 4200);
    const diskBytes = Number(header.readBigUInt64BE(12));
    const onePctMiB = Math.ceil(diskBytes / 100 / 2 ** 20);
    sh(src, 'p1', 'sync');
    let started = Date.now();
    assert.match(src.ok(['export', 'p1', file('pf0'), '--incremental']), /^Full backup: starts chain /);
    const fullMs = Date.now() - started;

    sh(
      src,
      'p1',
      `mkdir -p /srv && dd if=/dev/urandom of=/srv/one bs=1M count=${onePctMiB} 2>/dev/null && sync`,
    );
    const readBefore = daemonRead(src);
    started = Date.now();
    assert.match(src.ok(['export', 'p1', file('pi1'), '--incremental']), /^Incremental backup 1 of chain /);
    const incMs = Date.now() - started;
    const read = daemonRead(src) - readBefore;

    sh(src, 'p1', 'echo small > /srv/small && sync');
    src.ok(['stop', 'p1']);
    assert.match(src.ok(['export', 'p1', file('pi2'), '--incremental']), /^Incremental backup 2 of chain /);
    const [full = 0, inc1 = 0, inc2 = 0] = ['pf0', 'pi1', 'pi2'].map((n) => statSync(file(n)).size);
    t.diagnostic(
      `pvm, disk ${diskBytes} B, ${onePctMiB} MiB (1%) written: full ${full} B in ${fullMs} ms; incremental ${inc1} B in ${incMs} ms, the daemon read ${read} B; next incremental ${inc2} B`,
    );
    const changed = onePctMiB * 2 ** 20;
    assert.ok(inc1 < changed * 1.2 + 4 * 2 ** 20, `incremental ${inc1} B after ${changed} B changed`);
    // The whole disk is not read (decision 48's export read all of it in this process, and more):
    // the COW bitmap and the blocks it marks, what the guest ever wrote (its first boot included).
    assert.ok(read < diskBytes / 4, `the incremental read ${read} B of a ${diskBytes} B disk`);

    const base = header
      .subarray(32, 32 + 4096)
      .toString('utf8')
      .replace(/\0.*$/s, '');
    const flat = file('flat.img');
    const moo = spawnSync('uml_moo', ['-b', base, cow, flat], { encoding: 'utf8' });
    assert.equal(moo.status, 0, moo.stderr);
    const want = await sha256(flat);

    dst.ok(['import', file('pf0'), 'p1']);
    dst.ok(['import', file('pi1'), 'p1']);
    dst.ok(['import', file('pi2'), 'p1']);
    assert.equal(await sha256(path.join(dst.stateDir, 'guests', 'p1', 'disk', 'root.img')), want);
    dst.ok(['start', 'p1']);
    assert.equal(sh(dst, 'p1', 'cat /srv/small'), 'small\n');
  });
});
