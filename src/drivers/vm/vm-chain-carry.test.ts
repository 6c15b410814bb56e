import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { chainStateFileOf, readChainState, writeChainState } from '../../storage/chain-state-file.ts';
import type { GuestStorage, PortableChainState } from '../guest-storage.ts';
import { linkBitmap, storedBitmaps } from './vm-incremental.ts';
import {
  assertIdentical,
  CLUSTER,
  clustersOf,
  KiB,
  MiB,
  runner,
  SIZE,
  spec,
  unpackDisk,
  vmChainFixture,
} from './vm-qemu-fixture.ts';

/**
 * A vm guest's backup chain carried across a cold move (decision 0062, amended 2026-12-07): real
 * qcow2 disks, real qemu-img, qemu-io and qemu-storage-daemon (a stopped guest's backups run in
 * one), tar and zstd; three state directories stand for three members. The move's archive made on
 * member a carries the bitmap named for a's last link; imported on b, it lets b take over a's chain
 * state, and b's next backup is that chain's next link, holding only the clusters written since the
 * link (before and after the move). Applied on member c after the full, it gives b's disk exactly.
 */
describe('a vm backup chain goes on on the member a stopped guest moved to', () => {
  const fixture = vmChainFixture('vm-chain-carry');
  const member = fixture.member;
  /** Writes `length` bytes of `pattern` at `offset` through QEMU's block layer (which marks the bitmaps, as a guest's writes do). */
  const write = async (disk: string, offset: number, length: number, pattern: number) => {
    await runner.run(['qemu-io', '-f', 'qcow2', '-c', `write -P ${pattern} ${offset} ${length}`, disk]);
  };
  const membersOf = async (tar: string): Promise<string[]> =>
    (await runner.run(['tar', '--zstd', '-tf', tar])).stdout.trim().split('\n');
  /** The state a's scheduler left beside link `archive` and b's scheduler reads back, as it ships it. */
  const shipped = async (storage: GuestStorage, archive: string): Promise<PortableChainState> => {
    const own = await storage.chainState?.(spec);
    assert.ok(own, 'the vm storage gives its chain state');
    await writeChainState(chainStateFileOf(archive), { guest: spec.name, model: 'vm' }, own);
    const back = await readChainState(chainStateFileOf(archive), {
      guest: spec.name,
      model: 'vm',
      chain: own.chain,
      sequence: own.sequence,
    });
    assert.ok(back, 'the state file reads back');
    return back;
  };

  let full = '';
  let state: PortableChainState | undefined;
  let moveArchive = '';

  test('after the move, the next backup is the chain’s next link holding only the clusters written since, and full + link restore b’s disk byte for byte', async (t) => {
    const a = await member('a', { base: true });
    await write(a.disk, 0, 512 * KiB, 0x01);
    full = path.join(fixture.dir, 'full.tar.zst');
    const link0 = await a.storage.exportIncremental?.(spec, full);
    assert.equal(link0?.kind, 'full');
    assert.ok(link0);
    assert.deepEqual(
      (await storedBitmaps(runner, a.disk)).map((b) => b.name),
      [linkBitmap(link0.chain, 0)],
      'the bitmap is named for the link it follows',
    );
    state = await shipped(a.storage, full);
    // Written on a after the link, then the cold move: its export (the guest stopped) and b's import.
    await write(a.disk, 3 * MiB, CLUSTER, 0x22);
    await write(a.disk, 5 * MiB + 100, 4 * KiB, 0x23);
    moveArchive = path.join(fixture.dir, 'move.tar.zst');
    await a.storage.exportTar(spec, moveArchive);
    assert.ok((await membersOf(moveArchive)).includes('disk-bitmaps.qcow2'), 'the move carries the bitmaps');
    const b = await member('b');
    await b.storage.importTar(spec, moveArchive);
    assert.deepEqual(
      (await storedBitmaps(runner, b.disk)).map((x) => x.name),
      [linkBitmap(link0.chain, 0)],
      'the import keeps the bitmap',
    );
    // Written on b after the move.
    await write(b.disk, 7 * MiB, CLUSTER, 0x33);
    assert.equal(await b.storage.continueChain?.(spec, state), true);
    const incTar = path.join(fixture.dir, 'inc1.tar.zst');
    const link1 = await b.storage.exportIncremental?.(spec, incTar);
    assert.deepEqual(link1, { chain: link0.chain, sequence: 1, kind: 'incremental' });
    const incDisk = await unpackDisk(incTar, path.join(fixture.dir, 'inc1'));
    const fullDisk = await unpackDisk(full, path.join(fixture.dir, 'full'));
    const clusters = await clustersOf(incDisk);
    t.diagnostic(
      `full link: ${(await clustersOf(fullDisk)).length} clusters; link 1: ${clusters.join(', ')}`,
    );
    assert.deepEqual(clusters, [48, 80, 112], 'link 1 holds the clusters at 3, 5 and 7 MiB and nothing else');
    // The chain restored on a third member is b's disk.
    const c = await member('c');
    await c.storage.importIncremental?.(spec, full, { link: link0 });
    await c.storage.importIncremental?.(spec, incTar, { link: link1 as NonNullable<typeof link1> });
    await assertIdentical(c.disk, b.disk);
    // And the chain goes on on b: its bitmap is now named for link 1.
    assert.deepEqual(
      (await storedBitmaps(runner, b.disk)).map((x) => x.name),
      [linkBitmap(link0.chain, 1)],
    );
    // c, recovered from the chain (admin recover applies it so), goes on with it too: the import of
    // each link leaves an empty bitmap named for it, the last one's only.
    assert.deepEqual(
      (await storedBitmaps(runner, c.disk)).map((x) => x.name),
      [linkBitmap(link0.chain, 1)],
      'the recovered disk holds the bitmap of the last link applied',
    );
    const afterLink1 = await shipped(b.storage, incTar);
    await write(c.disk, 9 * MiB, CLUSTER, 0x99);
    assert.equal(await c.storage.continueChain?.(spec, afterLink1), true);
    const inc2Tar = path.join(fixture.dir, 'c-inc2.tar.zst');
    const link2 = await c.storage.exportIncremental?.(spec, inc2Tar);
    assert.deepEqual(link2, { chain: link0.chain, sequence: 2, kind: 'incremental' });
    assert.deepEqual(
      await clustersOf(await unpackDisk(inc2Tar, path.join(fixture.dir, 'c-inc2'))),
      [144],
      "c's next link holds the cluster written at 9 MiB after its recovery and nothing else",
    );
    // The three links applied on a fourth member give c's disk.
    const r = await member('r');
    await r.storage.importIncremental?.(spec, full, { link: link0 });
    await r.storage.importIncremental?.(spec, incTar, { link: link1 as NonNullable<typeof link1> });
    await r.storage.importIncremental?.(spec, inc2Tar, { link: link2 as NonNullable<typeof link2> });
    await assertIdentical(r.disk, c.disk);
  });

  test('a guest moved with a snapshot: the snapshot’s import keeps the bitmap, and the chain goes on', async () => {
    const g = await member('g', { base: true });
    const link0 = await g.storage.exportIncremental?.(spec, path.join(fixture.dir, 'g-full.tar.zst'));
    assert.ok(link0);
    const carried = await g.storage.chainState?.(spec);
    assert.ok(carried);
    await write(g.disk, 4 * MiB, CLUSTER, 0x44);
    await g.storage.snapshot(spec, 's1');
    await write(g.disk, 6 * MiB, CLUSTER, 0x66);
    // The move's archive: the current state, then the snapshot (as createBackup --with-snapshots makes it).
    const current = path.join(fixture.dir, 'g-move.tar.zst');
    const snap = path.join(fixture.dir, 'g-s1.tar.zst');
    await g.storage.exportTar(spec, current);
    await g.storage.exportTar(spec, snap, { snapshot: 's1' });
    const h = await member('h');
    await h.storage.importTar(spec, current);
    await h.storage.importTar(spec, snap, { snapshot: 's1' });
    assert.deepEqual(await h.storage.listSnapshots(spec), ['s1']);
    assert.deepEqual(
      (await storedBitmaps(runner, h.disk)).map((x) => x.name),
      [linkBitmap(link0.chain, 0)],
    );
    assert.equal(await h.storage.continueChain?.(spec, carried), true);
    const incTar = path.join(fixture.dir, 'h-inc1.tar.zst');
    const link1 = await h.storage.exportIncremental?.(spec, incTar);
    assert.deepEqual(link1, { chain: link0.chain, sequence: 1, kind: 'incremental' });
    assert.deepEqual(await clustersOf(await unpackDisk(incTar, path.join(fixture.dir, 'h-inc1'))), [64, 96]);
    const i = await member('i');
    await i.storage.importIncremental?.(spec, path.join(fixture.dir, 'g-full.tar.zst'), { link: link0 });
    await i.storage.importIncremental?.(spec, incTar, { link: link1 as NonNullable<typeof link1> });
    await assertIdentical(i.disk, h.disk);
  });

  test('a move without the bitmap, or with another link’s, gives a full backup', async () => {
    assert.ok(state);
    // Without: the archive's bitmaps left out (as an older daemon's archive, or a flat qcow2 alone).
    const d = await member('d');
    const bare = path.join(fixture.dir, 'bare.tar');
    await runner.run(['tar', '--zstd', '-xf', moveArchive, '-C', fixture.dir, 'disk.qcow2']);
    await runner.run(['tar', '--zstd', '-C', fixture.dir, '-cf', bare, 'disk.qcow2']);
    await d.storage.importTar(spec, bare);
    assert.deepEqual(await storedBitmaps(runner, d.disk), []);
    assert.equal(await d.storage.continueChain?.(spec, state), false);
    const link = await d.storage.exportIncremental?.(spec, path.join(fixture.dir, 'd.tar.zst'));
    assert.equal(link?.kind, 'full');
    assert.notEqual(link?.chain, state.chain);
    // Another link's state (the disk's bitmap is of link 0, the state of link 1): refused.
    const e = await member('e');
    await e.storage.importTar(spec, moveArchive);
    assert.equal(await e.storage.continueChain?.(spec, { ...state, sequence: 1 }), false);
    // A state whose data names another bitmap: refused.
    const forged = { ...state, data: Buffer.from(JSON.stringify({ bitmap: 'x', sizeBytes: SIZE })) };
    assert.equal(await e.storage.continueChain?.(spec, forged), false);
    // Nothing was taken over: the next backup is a full one, not link 1.
    assert.equal(
      (await e.storage.exportIncremental?.(spec, path.join(fixture.dir, 'e.tar.zst')))?.kind,
      'full',
    );
  });

  test('an inconsistent bitmap (a QEMU died holding the disk) is not taken over nor carried', async () => {
    assert.ok(state);
    const f = await member('f');
    await f.storage.importTar(spec, moveArchive);
    // A storage daemon opens the disk (its bitmaps in-use), then is killed before it can write them back.
    const pidFile = path.join(fixture.dir, 'qsd.pid');
    await runner.run([
      'qemu-storage-daemon',
      '--blockdev',
      `driver=file,node-name=file,filename=${f.disk}`,
      '--blockdev',
      'driver=qcow2,node-name=root,file=file',
      '--daemonize',
      '--pidfile',
      pidFile,
    ]);
    const qsd = Number((await readFile(pidFile, 'utf8')).trim());
    fixture.track(qsd);
    process.kill(qsd, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      const flags = (await storedBitmaps(runner, f.disk, { forceShare: true }))[0]?.flags ?? [];
      if (flags.includes('in-use')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    // The kill may come before the daemon's own exit writes the disk: wait until the lock is gone.
    for (let i = 0; i < 100; i++) {
      const r = await runner.run(['qemu-img', 'info', f.disk], { allowFailure: true });
      if (r.code === 0) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.deepEqual((await storedBitmaps(runner, f.disk))[0]?.flags.includes('in-use'), true);
    assert.equal(await f.storage.continueChain?.(spec, state), false);
    const again = path.join(fixture.dir, 'again.tar.zst');
    await f.storage.exportTar(spec, again);
    assert.equal((await membersOf(again)).includes('disk-bitmaps.qcow2'), false, 'not carried on');
    assert.equal(
      (await f.storage.exportIncremental?.(spec, path.join(fixture.dir, 'f.tar.zst')))?.kind,
      'full',
    );
  });
});
