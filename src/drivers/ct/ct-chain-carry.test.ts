import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  rename,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../core/types.ts';
import { hostRunner } from '../../host/runner.ts';
import type { GuestStorage, PortableChainState } from '../guest-storage.ts';
import {
  buildManifest,
  carriedSnapshotFile,
  changedSince,
  decodeManifest,
  encodeManifest,
} from './ct-chain-carry.ts';
import { ctStorageAt, makeCtGuestDirs, treeOf } from './ct-storage-fixture.ts';

const spec = { name: 'c1', model: 'ct' } as GuestSpec;
const RANGE = 1_000_000 + 4 * 65_536;
const runner = hostRunner();

/** Sets an xattr (Node has no call for it): perl's syscall, as the manifest reads them. */
const setXattr = (p: string, name: string, value: string) =>
  runner.run([
    'perl',
    '-e',
    `require 'syscall.ph'; my ($p, $n, $v) = @ARGV; syscall(&SYS_lsetxattr, $p, $n, $v, length($v), 0) == 0 or die "$!\\n";`,
    p,
    name,
    value,
  ]);
/** Every xattr of `p`, `name=hex` sorted, read apart from the code under test. */
const xattrsOf = async (p: string): Promise<string> =>
  (
    await runner.run([
      'perl',
      '-e',
      `require 'syscall.ph'; my $p = shift; my $l = "\\0" x 65536; my $n = syscall(&SYS_llistxattr, $p, $l, 65536); die "$!\\n" if $n < 0;
       for my $x (sort grep { length } split /\\0/, substr($l, 0, $n)) { my $v = "\\0" x 65536; my $m = syscall(&SYS_lgetxattr, $p, $x, $v, 65536); print "$x=", unpack("H*", substr($v, 0, $m)), " "; }`,
      p,
    ])
  ).stdout.trim();

/** Everything a restore must give back: path, type and mode, owner, mtime, content, target, device, xattrs. */
const fullTreeOf = (root: string) => treeOf(root, { mtime: true, xattrs: xattrsOf });

/**
 * A ct guest's backup chain carried across a move (decision 0062, amended 2026-12-07): real tar,
 * zstd and perl, three state directories standing for three members. Member a's last link leaves
 * the manifest of its layer; the guest moves to b (a's export applied there: new inodes, new
 * ctimes); b takes the manifest over and its next backup is that chain's next link holding only
 * what differs from the link (written on a after it, or on b) plus every directory's listing; the
 * chain restored on member c is b's layer exactly.
 */
describe('a ct backup chain goes on on the member a guest moved to', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-ct-chain-carry-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A member's ct storage with guest c1's directory made, as a create does. */
  const member = async (name: string): Promise<{ storage: GuestStorage; upper: string }> => {
    const stateDir = path.join(dir, name);
    const guest = await makeCtGuestDirs(stateDir, spec.name);
    return { storage: ctStorageAt(stateDir), upper: path.join(guest, 'upper') };
  };
  const membersOf = async (tar: string): Promise<string[]> => {
    const { stdout } = await runner.run(['tar', '--zstd', '-tf', tar]);
    return stdout
      .split('\n')
      .filter((n) => n !== '' && !n.endsWith('/'))
      .sort();
  };
  const link = (l: Awaited<ReturnType<NonNullable<GuestStorage['exportIncremental']>>> | undefined) => {
    assert.ok(l);
    return l;
  };

  /** Guest c1's layer on a: files of its id range, a symlink, a whiteout, xattrs, a big file. */
  const fill = async (upper: string) => {
    const at = (rel: string) => path.join(upper, rel);
    for (const d of ['bin', 'etc/old', 'var']) await mkdir(at(d), { recursive: true });
    await writeFile(at('bin/tool'), '#!/bin/sh\necho tool\n', { mode: 0o755 });
    await writeFile(at('etc/conf'), 'x=1\n', { mode: 0o640 });
    await writeFile(at('etc/tagged'), 'tagged\n');
    await writeFile(at('etc/old/inner'), 'inner\n');
    await writeFile(at('var/same-size'), 'aaaaaaaa');
    await writeFile(at('var/gone'), 'to be deleted on b');
    await writeFile(at('var/link-now'), 'a file, a symlink on b');
    await writeFile(at('var/owned'), 'owner changes on b');
    await writeFile(at('big'), randomBytes(1024 * 1024));
    await symlink('../etc/conf', at('bin/conf-link'));
    await runner.run(['mknod', at('etc/motd'), 'c', '0', '0']);
    for (const rel of ['bin/tool', 'etc/conf', 'var/owned', 'big'])
      await chown(at(rel), RANGE + 33, RANGE + 33);
    await setXattr(at('etc/conf'), 'user.kept', 'yes');
  };

  /** Member `from` with the layer filled, its full link and the chain state it leaves; member `to` with the same layer made apart (no chain). */
  const filledPair = async (from: string, to: string) => {
    const source = await member(from);
    await fill(source.upper);
    const own = link(await source.storage.exportIncremental?.(spec, path.join(dir, `${from}0.tar.zst`)));
    const state = await source.storage.chainState?.(spec);
    assert.ok(state, 'a link leaves its chain state');
    const target = await member(to);
    await fill(target.upper);
    return { own, state, to: target };
  };

  test('the first backup after the move is the next link, holding what changed before and after the move, and the chain restores the layer exactly', async () => {
    const a = await member('a');
    await fill(a.upper);
    const file = (n: string) => path.join(dir, `${n}.tar.zst`);
    const full = link(await a.storage.exportIncremental?.(spec, file('full')));
    assert.equal(full.kind, 'full');
    const state = await a.storage.chainState?.(spec);
    assert.ok(state, 'a link leaves its chain state');
    assert.deepEqual([state.chain, state.sequence], [full.chain, 0]);

    // Written on a after its last backup: content, a mode, a new file, an xattr alone.
    const onA = (rel: string) => path.join(a.upper, rel);
    await writeFile(onA('etc/conf'), 'x=2\n');
    await chmod(onA('bin/tool'), 0o700);
    await writeFile(onA('new-on-a'), 'new on a');
    await setXattr(onA('etc/tagged'), 'user.note', 'set on a');
    // The move: a's whole export applied on b (decision 40), every file made anew there.
    await a.storage.exportTar(spec, file('move'));
    const b = await member('b');
    await b.storage.importTar(spec, file('move'));
    assert.equal(await b.storage.chainState?.(spec), undefined, 'an import ends the chain on b');

    // Written on b: a new file and a whiteout, the same size and mtime with other bytes, a renamed
    // directory, a deletion, a file become a symlink, an owner, a directory made opaque.
    const onB = (rel: string) => path.join(b.upper, rel);
    await writeFile(onB('etc/made-on-b'), 'made on b');
    await runner.run(['mknod', onB('etc/motd2'), 'c', '0', '0']);
    const before = await stat(onB('var/same-size'));
    await writeFile(onB('var/same-size'), 'bbbbbbbb');
    await utimes(onB('var/same-size'), before.atime, before.mtime);
    await rename(onB('etc/old'), onB('etc/renamed'));
    await rm(onB('var/gone'));
    await rm(onB('var/link-now'));
    await symlink('/nowhere', onB('var/link-now'));
    await chown(onB('var/owned'), RANGE + 7, RANGE + 7);
    await setXattr(onB('var'), 'trusted.overlay.opaque', 'y');

    assert.equal(await b.storage.continueChain?.(spec, state), true);
    assert.deepEqual(await b.storage.chainState?.(spec).then((s) => [s?.chain, s?.sequence]), [
      full.chain,
      0,
    ]);
    const incr = link(await b.storage.exportIncremental?.(spec, file('incr')));
    assert.deepEqual(incr, { chain: full.chain, sequence: 1, kind: 'incremental' });
    // Exactly what differs from a's link: not the big file nor anything else the import rewrote.
    assert.deepEqual(await membersOf(file('incr')), [
      './bin/tool',
      './etc/conf',
      './etc/made-on-b',
      './etc/motd2',
      './etc/renamed/inner',
      './etc/tagged',
      './new-on-a',
      './var/link-now',
      './var/owned',
      './var/same-size',
    ]);

    const c = await member('c');
    await c.storage.importIncremental?.(spec, file('full'), { link: full });
    await c.storage.importIncremental?.(spec, file('incr'), { link: incr });
    const want = await fullTreeOf(b.upper);
    assert.deepEqual(await fullTreeOf(c.upper), want);
    assert.ok(
      want.some((l) => l.startsWith('var 40755 0:0  [trusted.overlay.opaque=79]')),
      want.join('\n'),
    );
    assert.ok(
      want.some((l) => l.startsWith('etc/tagged ') && l.includes('user.note=')),
      want.join('\n'),
    );
    assert.ok(!want.some((l) => l.startsWith('var/gone') || l.startsWith('etc/old')), want.join('\n'));
    // a's layer lacks b's writes: the incremental, not the full alone, made c's.
    assert.notDeepEqual(await fullTreeOf(a.upper), want);

    // From there the chain is tar's own on b: the next link holds the one file written since.
    await writeFile(onB('etc/made-on-b'), 'made on b, again');
    const next = link(await b.storage.exportIncremental?.(spec, file('next')));
    assert.deepEqual(next, { chain: full.chain, sequence: 2, kind: 'incremental' });
    assert.deepEqual(await membersOf(file('next')), ['./etc/made-on-b']);
    await c.storage.importIncremental?.(spec, file('next'), { link: next });
    assert.deepEqual(await fullTreeOf(c.upper), await fullTreeOf(b.upper));
  });

  test('a state that is not one, or a layer in another id range, is refused with nothing written: the next backup is full', async () => {
    const { own, state, to: e } = await filledPair('d', 'e');
    const guestDir = path.dirname(e.upper);
    const listing = async () => (await readdir(guestDir)).sort();
    const was = await listing();
    const refused: PortableChainState[] = [
      { ...state, data: Buffer.from('not gzip') },
      { ...state, data: state.data.subarray(0, state.data.length - 9) },
      { ...state, chain: '../../etc' },
      { ...state, sequence: -1 },
      {
        ...state,
        data: encodeManifest([
          { p: '.', t: 'd', m: 0o755, u: 0, g: 0, s: 0, mt: '1', h: '', a: '' },
          { p: '../x', t: 'f', m: 0o644, u: 0, g: 0, s: 1, mt: '1', h: '', a: '' },
        ]),
      },
    ];
    for (const bad of refused) assert.equal(await e.storage.continueChain?.(spec, bad), false);
    assert.deepEqual(await listing(), was, 'nothing written');
    // The layer's root owned by another range's base (decision 18): every file changed owner.
    await chown(e.upper, RANGE + 65_536, RANGE + 65_536);
    assert.equal(await e.storage.continueChain?.(spec, state), false);
    assert.deepEqual(await listing(), was, 'nothing written');
    const first = link(await e.storage.exportIncremental?.(spec, path.join(dir, 'e0.tar.zst')));
    assert.equal(first.kind, 'full');
    assert.notEqual(first.chain, own.chain);
  });

  test('a taken-over manifest that is damaged before the backup gives a full one', async () => {
    const { own, state, to: g } = await filledPair('f', 'g');
    assert.equal(await g.storage.continueChain?.(spec, state), true);
    const guestDir = path.dirname(g.upper);
    const manifest = (await readdir(guestDir)).find((n) => n.startsWith('backup-manifest-'));
    assert.ok(manifest);
    await writeFile(path.join(guestDir, manifest), 'damaged');
    const next = link(await g.storage.exportIncremental?.(spec, path.join(dir, 'g0.tar.zst')));
    assert.equal(next.kind, 'full');
    assert.notEqual(next.chain, own.chain);
  });
});

describe('the manifest and the snapshot file made from it', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-ct-manifest-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a manifest round-trips, lends digests only to an entry with the same inode and ctime, and sees content, modes, owners and xattrs', async () => {
    const root = path.join(dir, 'm');
    await mkdir(path.join(root, 'd'), { recursive: true });
    await writeFile(path.join(root, 'd/f'), 'one');
    await writeFile(path.join(root, 'g'), 'two');
    const first = await buildManifest(runner, root);
    assert.deepEqual(
      first.map((e) => e.p),
      ['.', 'd', 'd/f', 'g'],
    );
    assert.deepEqual(decodeManifest(encodeManifest(first)), first);
    const portable = decodeManifest(encodeManifest(first, { portable: true }));
    assert.ok(portable?.every((e) => e.i === undefined && e.c === undefined));
    assert.deepEqual(changedSince(await buildManifest(runner, root, { previous: first }), first), []);
    // A lent digest would hide this: the same inode, size and mtime, other bytes, another ctime.
    const st = await stat(path.join(root, 'g'));
    await writeFile(path.join(root, 'g'), 'TWO');
    await utimes(path.join(root, 'g'), st.atime, st.mtime);
    await setXattr(path.join(root, 'd/f'), 'user.x', '1');
    assert.deepEqual(changedSince(await buildManifest(runner, root, { previous: first }), first), [
      'd/f',
      'g',
    ]);
    assert.equal(decodeManifest(Buffer.from('x')), undefined);
  });

  test("each entry's fields are lstat's, in a walk of each directory before its entries by name", async () => {
    const root = path.join(dir, 'w');
    await mkdir(path.join(root, 'b/inner'), { recursive: true });
    await writeFile(path.join(root, 'b/inner/x'), 'x');
    await writeFile(path.join(root, 'a file\nwith a newline'), 'nl');
    await writeFile(path.join(root, 'suid'), 'su');
    // chown clears a setuid bit: owner first.
    await chown(path.join(root, 'suid'), 1234, 5678);
    await chmod(path.join(root, 'suid'), 0o4755);
    await writeFile(path.join(root, 'old'), 'before 1970');
    await runner.run(['touch', '-h', '-d', '1960-01-01 00:00:00.5 UTC', path.join(root, 'old')]);
    await symlink('../somewhere else', path.join(root, 'link'));
    await runner.run(['mkfifo', path.join(root, 'fifo')]);
    // A whiteout of an overlay's upper layer, and another device number.
    await runner.run(['mknod', path.join(root, 'b/whiteout'), 'c', '0', '0']);
    await runner.run(['mknod', path.join(root, 'null'), 'c', '1', '3']);
    const entries = await buildManifest(runner, root);
    assert.deepEqual(
      entries.map((e) => e.p),
      [
        '.',
        'a file\nwith a newline',
        'b',
        'b/inner',
        'b/inner/x',
        'b/whiteout',
        'fifo',
        'link',
        'null',
        'old',
        'suid',
      ],
    );
    const types: Record<string, string> = {
      fifo: 'p',
      link: 'l',
      null: 'c',
      'b/whiteout': 'c',
      b: 'd',
      'b/inner': 'd',
      '.': 'd',
    };
    for (const e of entries) {
      const st = await lstat(path.join(root, e.p), { bigint: true });
      assert.equal(e.t, types[e.p] ?? 'f', e.p);
      assert.equal(e.m, Number(st.mode & 0o7777n), e.p);
      assert.equal(e.u, Number(st.uid), e.p);
      assert.equal(e.g, Number(st.gid), e.p);
      assert.equal(e.s, e.t === 'f' ? Number(st.size) : 0, e.p);
      assert.equal(e.mt, st.mtimeNs.toString(), e.p);
      assert.equal(e.c, st.ctimeNs.toString(), e.p);
      assert.equal(e.i, st.ino.toString(), e.p);
      assert.equal(e.d, e.t === 'd' ? st.dev.toString() : undefined, e.p);
    }
    const by = new Map(entries.map((e) => [e.p, e]));
    assert.equal(by.get('old')?.mt, '-315619199500000000');
    assert.equal(by.get('b/inner/x')?.s, 1);
    assert.equal(by.get('suid')?.m, 0o4755);
    assert.equal(by.get('link')?.h, '../somewhere else');
    assert.equal(by.get('b/whiteout')?.h, '0');
    assert.equal(by.get('null')?.h, (await lstat(path.join(root, 'null'))).rdev.toString());
    assert.equal(by.get('b/inner/x')?.h, '2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881');
    assert.deepEqual(decodeManifest(encodeManifest(entries)), entries);
  });

  test('a tree that cannot be read has no manifest', async () => {
    await assert.rejects(buildManifest(runner, path.join(dir, 'missing')), /find failed/);
  });

  test('the snapshot file lists each directory with its inode and the unchanged names only', async () => {
    const root = path.join(dir, 's');
    await mkdir(path.join(root, 'd'), { recursive: true });
    await writeFile(path.join(root, 'd/same'), 'same');
    await writeFile(path.join(root, 'd/changed'), 'one');
    const then = await buildManifest(runner, root);
    await writeFile(path.join(root, 'd/changed'), 'two');
    const now = await buildManifest(runner, root);
    const text = carriedSnapshotFile(now, then).toString('latin1');
    const ino = (await stat(path.join(root, 'd'))).ino;
    assert.ok(text.startsWith('GNU tar-1.34-2\n99999999999\u00000\u0000'), JSON.stringify(text));
    assert.ok(text.includes(`\u0000${ino}\u0000./d\u0000Ysame\u0000\u0000\u0000`), JSON.stringify(text));
    assert.ok(text.includes('\u0000.\u0000Dd\u0000\u0000\u0000'), JSON.stringify(text));
  });
});
