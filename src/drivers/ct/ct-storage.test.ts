import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  chown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import type { GuestSpec } from '../../core/types.ts';
import { createLogger } from '../../host/logger.ts';
import { hostRunner } from '../../host/runner.ts';
import { createCtStorage } from './ct-storage.ts';
import { ctStorageAt, makeCtGuestDirs, treeOf } from './ct-storage-fixture.ts';

const spec = (name: string): GuestSpec => ({
  name,
  project: 'default',
  model: 'ct',
  image: 'f'.repeat(64),
  imageAlias: 'busybox',
  config: {},
  desired: 'Stopped',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 1000,
  stopForce: false,
  deleting: false,
  location: 'h',
  createdAt: new Date().toISOString(),
});

describe('ct storage on a directory pool', () => {
  let stateDir: string;
  const log = createLogger({ level: 'silent' });
  before(async () => {
    stateDir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-ct-storage-'));
  });
  after(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  const makeGuest = (name: string) => makeCtGuestDirs(stateDir, name);
  const storage = () => ctStorageAt(stateDir);

  test('snapshot, change, restore gives back the old files; delete removes the snapshot', async () => {
    const dir = await makeGuest('g1');
    await writeFile(path.join(dir, 'upper/a.txt'), 'one');
    await symlink('a.txt', path.join(dir, 'upper/link'));
    const s = storage();
    await s.snapshot(spec('g1'), 'snap0');
    assert.deepEqual(await s.listSnapshots(spec('g1')), ['snap0']);
    await writeFile(path.join(dir, 'upper/a.txt'), 'two');
    await writeFile(path.join(dir, 'upper/b.txt'), 'new');
    await writeFile(path.join(dir, 'work/junk'), 'x');
    await s.restoreSnapshot(spec('g1'), 'snap0');
    assert.equal(await readFile(path.join(dir, 'upper/a.txt'), 'utf8'), 'one');
    assert.equal(await readFile(path.join(dir, 'upper/link'), 'utf8'), 'one');
    assert.equal(existsSync(path.join(dir, 'upper/b.txt')), false);
    assert.deepEqual(await readdir(path.join(dir, 'work')), [], 'overlayfs needs an empty work dir');
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.startsWith('.tmp-')),
      [],
    );
    await s.deleteSnapshot(spec('g1'), 'snap0');
    assert.deepEqual(await s.listSnapshots(spec('g1')), []);
    await assert.rejects(s.restoreSnapshot(spec('g1'), 'snap0'), { code: 'NotFound' });
  });

  test('a copy is independent of its source', async () => {
    const src = await makeGuest('src');
    const dst = await makeGuest('dst');
    await writeFile(path.join(src, 'upper/a.txt'), 'source');
    await storage().copy(spec('src'), spec('dst'));
    await writeFile(path.join(dst, 'upper/a.txt'), 'copy');
    assert.equal(await readFile(path.join(src, 'upper/a.txt'), 'utf8'), 'source');
  });

  test('export and import round-trip the writable layer, into the guest or into a snapshot', async () => {
    const a = await makeGuest('ea');
    const b = await makeGuest('eb');
    await mkdir(path.join(a, 'upper/etc'));
    await writeFile(path.join(a, 'upper/etc/conf'), 'x=1', { mode: 0o640 });
    const tar = path.join(stateDir, 'ea.tar.zst');
    const s = storage();
    await s.exportTar(spec('ea'), tar);
    await s.importTar(spec('eb'), tar);
    await s.importTar(spec('eb'), tar, { snapshot: 'old' });
    assert.equal(await readFile(path.join(b, 'upper/etc/conf'), 'utf8'), 'x=1');
    assert.equal(await readFile(path.join(b, 'snapshots/old/upper/etc/conf'), 'utf8'), 'x=1');
    assert.deepEqual(await s.listSnapshots(spec('eb')), ['old']);
  });

  /** Every xattr of `file` (all namespaces, ACLs among them), hex-encoded: node has no xattr API. */
  const xattrsOf = async (file: string): Promise<string> =>
    (
      await hostRunner().run([
        'python3',
        '-c',
        'import os,sys; p=sys.argv[1]; print(",".join("%s=%s" % (n, os.getxattr(p, n).hex()) for n in sorted(os.listxattr(p))))',
        file,
      ])
    ).stdout.trim();
  /** A POSIX ACL in its xattr form (version 2; tag, permissions, id per entry). */
  const acl = (entries: Array<[tag: number, perm: number, id?: number]>) =>
    Buffer.concat([
      Buffer.from([2, 0, 0, 0]),
      ...entries.map(([tag, perm, id]) => {
        const b = Buffer.alloc(8);
        b.writeUInt16LE(tag, 0);
        b.writeUInt16LE(perm, 2);
        b.writeUInt32LE(id ?? 0xffffffff, 4);
        return b;
      }),
    ]).toString('hex');
  const setXattr = (file: string, name: string, hex: string) =>
    hostRunner().run([
      'python3',
      '-c',
      'import os,sys; os.setxattr(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]))',
      file,
      name,
      hex,
    ]);

  test('export and import keep POSIX ACLs, default ACLs and other xattrs, also from an archive that carries ACLs only as xattrs', async () => {
    const a = await makeGuest('aa');
    const b = await makeGuest('ab');
    const dir = path.join(a, 'upper/srv');
    await mkdir(dir);
    await writeFile(path.join(dir, 'f'), 'x', { mode: 0o664 });
    // user::rw- user:1234:rw- group::r-- mask::rw- other::r--; default user::rwx user:1234:r-x …
    await setXattr(
      path.join(dir, 'f'),
      'system.posix_acl_access',
      acl([
        [1, 6],
        [2, 6, 1234],
        [4, 4],
        [0x10, 6],
        [0x20, 4],
      ]),
    );
    await setXattr(
      dir,
      'system.posix_acl_default',
      acl([
        [1, 7],
        [2, 5, 1234],
        [4, 5],
        [0x10, 5],
        [0x20, 5],
      ]),
    );
    await setXattr(path.join(dir, 'f'), 'user.kept', Buffer.from('one').toString('hex'));
    const want = [await xattrsOf(path.join(dir, 'f')), await xattrsOf(dir)];
    assert.match(want[0] ?? '', /system\.posix_acl_access=.*user\.kept=/);
    assert.match(want[1] ?? '', /system\.posix_acl_default=/);
    const s = storage();
    const tar = path.join(stateDir, 'aa.tar.zst');
    await s.exportTar(spec('aa'), tar);
    await s.importTar(spec('ab'), tar);
    const got = async () => [
      await xattrsOf(path.join(b, 'upper/srv/f')),
      await xattrsOf(path.join(b, 'upper/srv')),
    ];
    assert.deepEqual(await got(), want);
    // Without tar's --acls text: unpacking with --acls would reset each ACL to the file's mode.
    const xattrsOnly = path.join(stateDir, 'aa-xattrs.tar.zst');
    await hostRunner().run([
      'tar',
      '--zstd',
      '--numeric-owner',
      '--xattrs',
      '--xattrs-include=*',
      '-C',
      path.join(a, 'upper'),
      '-cf',
      xattrsOnly,
      '.',
    ]);
    await rm(path.join(b, 'upper'), { recursive: true });
    await mkdir(path.join(b, 'upper'));
    await s.importTar(spec('ab'), xattrsOnly);
    assert.deepEqual(await got(), want);
  });

  test('a failed copy leaves neither a half snapshot nor a changed upper', async () => {
    const dir = await makeGuest('f1');
    await writeFile(path.join(dir, 'upper/a.txt'), 'kept');
    const runner = fakeRunner((argv) =>
      argv[0] === 'cp' ? { code: 1, stderr: 'cp: No space left on device' } : undefined,
    );
    const s = createCtStorage({ runner, log, stateDir, idmapBase: 1_000_000 });
    await assert.rejects(s.snapshot(spec('f1'), 'x'), /No space left/);
    assert.deepEqual(await readdir(path.join(dir, 'snapshots')), []);
    assert.equal(await readFile(path.join(dir, 'upper/a.txt'), 'utf8'), 'kept');
    assert.deepEqual(runner.commands()[0]?.split(' ').slice(0, 4), ['cp', '-a', '--reflink=auto', '--']);
  });

  test('sweep removes .tmp- debris and puts back an upper an interrupted restore left aside', async () => {
    const dir = await makeGuest('sw');
    await mkdir(path.join(dir, 'snapshots/.tmp-half/upper'), { recursive: true });
    await rm(path.join(dir, 'upper'), { recursive: true });
    await mkdir(path.join(dir, '.tmp-upper-old'));
    await writeFile(path.join(dir, '.tmp-upper-old/a.txt'), 'before the restore');
    await mkdir(path.join(dir, '.tmp-upper'));
    await storage().sweep(spec('sw'));
    assert.equal(await readFile(path.join(dir, 'upper/a.txt'), 'utf8'), 'before the restore');
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.startsWith('.')),
      [],
    );
    assert.deepEqual(await readdir(path.join(dir, 'snapshots')), []);
  });

  /** An overlayfs whiteout: how the upper layer records that a file of the image was deleted. */
  const whiteout = (p: string) => hostRunner().run(['mknod', p, 'c', '0', '0']);

  test('an incremental chain carries writes, deletions, whiteouts and renames; imported in order it gives the same layer', async () => {
    const a = await makeGuest('ia');
    const b = await makeGuest('ib');
    const up = (rel: string) => path.join(a, 'upper', rel);
    await mkdir(up('etc/old'), { recursive: true });
    await writeFile(up('etc/conf'), 'x=1', { mode: 0o640 });
    await writeFile(up('etc/old/gone'), 'upper only');
    await writeFile(up('big'), randomBytes(2 * 2 ** 20));
    await chown(up('etc/conf'), 1_000_033, 1_000_033);
    // Ids of the guest's range (decision 18) travel as numbers.
    await chown(up('big'), 1_000_033, 1_000_033);
    const bigHash = createHash('sha256')
      .update(await readFile(up('big')))
      .digest('hex');
    await whiteout(up('etc/motd'));
    const s = storage();
    const file = (n: string) => path.join(stateDir, `${n}.tar.zst`);
    const full = await s.exportIncremental?.(spec('ia'), file('i0'));
    assert.equal(full?.kind, 'full');
    assert.equal(full?.sequence, 0);
    // Changes: a write, an upper-only file deleted, an image file deleted (whiteout), a rename.
    await writeFile(up('etc/conf'), 'x=2');
    await rm(up('etc/old/gone'));
    await whiteout(up('etc/hostname'));
    await rename(up('etc/old'), up('etc/new'));
    await writeFile(up('etc/new/made'), 'after the full one');
    const inc1 = await s.exportIncremental?.(spec('ia'), file('i1'));
    assert.deepEqual(inc1, { chain: full?.chain, sequence: 1, kind: 'incremental' });
    // A whiteout replaced by a file (the image's file made again), a file replaced by a whiteout.
    await rm(up('etc/motd'));
    await writeFile(up('etc/motd'), 'back');
    await rm(up('etc/conf'));
    await whiteout(up('etc/conf'));
    const inc2 = await s.exportIncremental?.(spec('ia'), file('i2'));
    assert.equal(inc2?.sequence, 2);
    const [fullBytes, inc1Bytes] = await Promise.all([stat(file('i0')), stat(file('i1'))]);
    assert.ok(inc1Bytes.size * 10 < fullBytes.size, `${inc1Bytes.size} B against ${fullBytes.size} B`);

    const want = await treeOf(path.join(a, 'upper'));
    const apply = (n: string, link: typeof full) =>
      s.importIncremental?.(spec('ib'), file(n), { link: link as NonNullable<typeof full> });
    await apply('i0', full);
    await assert.rejects(async () => apply('i2', inc2), /is not at backup 1 of chain/);
    await apply('i1', inc1);
    await apply('i2', inc2);
    assert.deepEqual(await treeOf(path.join(b, 'upper')), want);
    assert.ok(want.includes('etc/hostname 20644 0:0 c 0'), want.join('\n'));
    assert.ok(want.includes(`big 100644 1000033:1000033 ${bigHash}`), want.join('\n'));
    assert.equal(await readFile(path.join(b, 'upper/etc/new/made'), 'utf8'), 'after the full one');
    assert.equal(existsSync(path.join(b, 'upper/etc/old')), false);
    // Applied twice: the guest is past it.
    await assert.rejects(async () => apply('i2', inc2), /is not at backup 1 of chain/);
    // newChain (scheduled backups, decision 0062): a full one that starts another chain, which goes on from there.
    const again = await s.exportIncremental?.(spec('ia'), file('i3'), { newChain: true });
    assert.equal(again?.kind, 'full');
    assert.notEqual(again?.chain, full?.chain);
    const next = await s.exportIncremental?.(spec('ia'), file('i4'));
    assert.deepEqual(next, { chain: again?.chain, sequence: 1, kind: 'incremental' });
  });

  test('an incremental is refused onto a layer changed since the last link, and a restored snapshot ends the chain', async () => {
    const a = await makeGuest('ra');
    const b = await makeGuest('rb');
    await writeFile(path.join(a, 'upper/a.txt'), 'one');
    const s = storage();
    const file = (n: string) => path.join(stateDir, `r-${n}.tar.zst`);
    const full = await s.exportIncremental?.(spec('ra'), file('0'));
    await s.snapshot(spec('ra'), 's0');
    await writeFile(path.join(a, 'upper/a.txt'), 'two');
    const inc = await s.exportIncremental?.(spec('ra'), file('1'));
    assert.ok(full && inc);
    await s.importIncremental?.(spec('rb'), file('0'), { link: full });
    // The guest ran in between: its layer is not what the first link left.
    await writeFile(path.join(b, 'upper/b.txt'), 'written by the guest');
    await assert.rejects(async () => s.importIncremental?.(spec('rb'), file('1'), { link: inc }), {
      code: 'FailedPrecondition',
      message: /files changed since backup 0 of chain/,
    });
    assert.equal(await readFile(path.join(b, 'upper/a.txt'), 'utf8'), 'one');
    await s.restoreSnapshot(spec('ra'), 's0');
    const again = await s.exportIncremental?.(spec('ra'), file('2'));
    assert.equal(again?.kind, 'full');
    assert.notEqual(again?.chain, full.chain);
    assert.deepEqual(
      (await readdir(a)).filter((n) => n.startsWith('backup-chain-')),
      [`backup-chain-${again?.chain}-0.snar`],
    );
  });

  test('a failed incremental export leaves the chain where it was', async () => {
    const a = await makeGuest('fa');
    await writeFile(path.join(a, 'upper/a.txt'), 'one');
    const full = await storage().exportIncremental?.(spec('fa'), path.join(stateDir, 'fa0.tar'));
    const runner = fakeRunner((argv) =>
      argv[0] === 'tar' ? { code: 2, stderr: 'tar: No space left on device' } : undefined,
    );
    const failing = createCtStorage({ runner, log, stateDir, idmapBase: 1_000_000 });
    await assert.rejects(
      async () => failing.exportIncremental?.(spec('fa'), path.join(stateDir, 'fa1.tar')),
      /No space left/,
    );
    const next = await storage().exportIncremental?.(spec('fa'), path.join(stateDir, 'fa1.tar'));
    assert.deepEqual(next, { chain: full?.chain, sequence: 1, kind: 'incremental' });
  });

  test('a crafted link cannot write through a symlink an earlier link left: the import fails, nothing changes', async () => {
    const a = await makeGuest('xa');
    const b = await makeGuest('xb');
    const victim = path.join(stateDir, 'victim');
    await mkdir(victim);
    await mkdir(path.join(a, 'upper/srv'));
    await symlink(victim, path.join(a, 'upper/srv/d'));
    const s = storage();
    const full = await s.exportIncremental?.(spec('xa'), path.join(stateDir, 'x0.tar.zst'));
    assert.ok(full);
    await s.importIncremental?.(spec('xb'), path.join(stateDir, 'x0.tar.zst'), { link: full });
    assert.equal(await readlink(path.join(b, 'upper/srv/d')), victim);
    // The next "link": a plain tar whose member goes through srv/d.
    const crafted = path.join(stateDir, 'crafted');
    await mkdir(path.join(crafted, 'srv/d'), { recursive: true });
    await writeFile(path.join(crafted, 'srv/d/owned'), 'written through the link');
    await hostRunner().run([
      'tar',
      '--zstd',
      '-C',
      crafted,
      '-cf',
      path.join(stateDir, 'x1.tar.zst'),
      'srv/d/owned',
    ]);
    const before = await treeOf(path.join(b, 'upper'));
    await assert.rejects(
      async () =>
        s.importIncremental?.(spec('xb'), path.join(stateDir, 'x1.tar.zst'), {
          link: { chain: full.chain, sequence: 1, kind: 'incremental' },
        }),
      { code: 'InvalidArgument', message: /Read-only file system/ },
    );
    assert.deepEqual(await readdir(victim), []);
    assert.deepEqual(await treeOf(path.join(b, 'upper')), before);
  });
});
