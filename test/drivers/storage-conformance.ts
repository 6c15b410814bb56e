import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import { isTrivisorError } from '../../src/core/errors.ts';
import type { GuestSpec } from '../../src/core/types.ts';
import type { GuestStorage } from '../../src/drivers/guest-storage.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import type { DriverUnderTest } from './conformance.ts';
import { execIn } from './exec-helpers.ts';
import { testGuestSpec } from './guest-spec.ts';

/** A driver with its GuestStorage on one state dir. */
export interface StorageUnderTest extends DriverUnderTest {
  storage: GuestStorage;
  stateDir: string;
  /** Leaves what a daemon killed mid-snapshot would (half-made snapshot, temp files) for a stopped guest. */
  makeDebris?(spec: GuestSpec): Promise<void>;
  /** Freezes a running guest's file systems and leaves the storage's marker, as a daemon killed mid-snapshot would. */
  freezeLikeACrash?(spec: GuestSpec): Promise<void>;
}

/** Runs `work`; a NotSupported error skips the test with its reason. */
async function orSkip(t: TestContext, work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (e) {
    if (isTrivisorError(e) && e.code === 'NotSupported') {
      t.skip(e.message);
      return;
    }
    throw e;
  }
}

/** `.tmp-` debris anywhere under a guest's directory. */
async function debrisUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const e of await readdir(dir, { recursive: true }).catch(() => [] as string[])) {
    if (e.split('/').some((part) => part.startsWith('.tmp-'))) found.push(e);
  }
  return found;
}

/**
 * The storage suite every model's GuestStorage runs (containerd's snapshotter
 * testsuite): snapshots of a running guest restore old file content, stopped
 * snapshots and delete, a copy independent of its source both ways, and an
 * export imported on a fresh state dir (its own base disks) with identical
 * checksums, snapshots included, and an incremental chain (a full link and
 * two incrementals) imported there in order. Files in the guests are written and read
 * through exec, as a user would.
 */
export function runStorageConformance(name: string, make: () => Promise<StorageUnderTest>): void {
  describe(`${name}: guest storage conformance`, () => {
    let dut: StorageUnderTest;
    let fresh: StorageUnderTest | undefined;
    const made: Array<{ dut: () => StorageUnderTest | undefined; spec: GuestSpec }> = [];
    const guest = (on: () => StorageUnderTest | undefined, guestName: string): GuestSpec => {
      const s = testGuestSpec(guestName, (on() ?? dut).driver.model, { ...(on() ?? dut).guestConfig });
      made.push({ dut: on, spec: s });
      return s;
    };
    const sh = async (on: StorageUnderTest, spec: GuestSpec, script: string): Promise<string> => {
      const r = await execIn(on.driver, spec, ['/bin/sh', '-c', script], { timeoutMs: 60_000 });
      assert.equal(r.code, 0, `${script}: ${r.stderr}`);
      return r.stdout;
    };
    const stop = (on: StorageUnderTest, spec: GuestSpec) =>
      on.driver.stop(spec, { timeoutMs: 10_000, force: false });
    const checksums = 'cd / && sha256sum data.txt blob bin/busybox';
    let src: GuestSpec;
    let exported = '';
    let archives: { live: string; snap0: string } | undefined;

    before(async () => {
      dut = await make();
      src = guest(() => dut, 'st-src');
    });

    after(async () => {
      for (const m of made.reverse()) {
        const on = m.dut();
        if (!on) continue;
        await on.driver.stop(m.spec, { timeoutMs: 0, force: true }).catch(() => {});
        await on.driver.delete(m.spec).catch(() => {});
      }
      if (exported) await removeRunDir(exported);
      await fresh?.cleanup();
      await dut?.cleanup();
    });

    test('a snapshot of a running guest restores the old file content', async (t) => {
      await dut.driver.create(src, dut.image);
      await dut.driver.start(src, dut.image);
      // No sync: the snapshot itself must get what the guest wrote into its disk.
      await sh(dut, src, 'printf one > /data.txt && dd if=/dev/urandom of=/blob bs=64k count=16 2>/dev/null');
      await orSkip(t, async () => {
        await dut.storage.snapshot(src, 'snap0');
        await sh(dut, src, 'printf two > /data.txt && echo later > /new.txt');
        assert.equal(await sh(dut, src, 'cat /data.txt'), 'two');
        assert.deepEqual(await dut.storage.listSnapshots(src), ['snap0']);
        await stop(dut, src);
        await dut.storage.restoreSnapshot(src, 'snap0');
        await dut.driver.start(src, dut.image);
        assert.equal(await sh(dut, src, 'cat /data.txt'), 'one');
        assert.equal(await sh(dut, src, 'test -e /new.txt && echo yes || echo no'), 'no\n');
        assert.deepEqual(await debrisUnder(join(dut.stateDir, 'guests', src.name)), []);
      });
    });

    test('restore refuses a running guest and an unknown snapshot', async (t) => {
      await orSkip(t, async () => {
        await assert.rejects(dut.storage.restoreSnapshot(src, 'snap0'), /running|stop it/i);
        await stop(dut, src);
        await assert.rejects(dut.storage.restoreSnapshot(src, 'nope'), /no snapshot nope/);
      });
    });

    test('a stopped guest is snapshotted; delete removes only that snapshot and is idempotent', async (t) => {
      await orSkip(t, async () => {
        await dut.storage.snapshot(src, 'snap1');
        await assert.rejects(dut.storage.snapshot(src, 'snap1'), /exists/);
        assert.deepEqual(await dut.storage.listSnapshots(src), ['snap0', 'snap1']);
        await dut.storage.deleteSnapshot(src, 'snap1');
        await dut.storage.deleteSnapshot(src, 'snap1');
        assert.deepEqual(await dut.storage.listSnapshots(src), ['snap0']);
      });
    });

    test('a copy of a running guest is independent of its source in both directions', async (t) => {
      await dut.driver.start(src, dut.image);
      const copy = guest(() => dut, 'st-copy');
      await dut.driver.create(copy, dut.image);
      await orSkip(t, async () => {
        await dut.storage.copy(src, copy);
        await dut.driver.start(copy, dut.image);
        assert.equal(await sh(dut, copy, 'cat /data.txt'), 'one');
        await sh(dut, copy, 'printf copy > /data.txt');
        assert.equal(await sh(dut, src, 'cat /data.txt'), 'one');
        await sh(dut, src, 'printf source > /data.txt && echo x > /only-in-source.txt');
        assert.equal(await sh(dut, copy, 'cat /data.txt'), 'copy');
        assert.equal(await sh(dut, copy, 'test -e /only-in-source.txt && echo yes || echo no'), 'no\n');
        assert.deepEqual(await dut.storage.listSnapshots(copy), [], 'a copy has no snapshots of its own');
      });
      await dut.driver.stop(copy, { timeoutMs: 0, force: true });
      await dut.driver.delete(copy);
    });

    test('a copy of a snapshot has the snapshot content', async (t) => {
      const copy = guest(() => dut, 'st-snapcopy');
      await dut.driver.create(copy, dut.image);
      await orSkip(t, async () => {
        await dut.storage.copy(src, copy, { snapshot: 'snap0' });
        await dut.driver.start(copy, dut.image);
        assert.equal(await sh(dut, copy, 'cat /data.txt'), 'one');
      });
      await dut.driver.stop(copy, { timeoutMs: 0, force: true });
      await dut.driver.delete(copy);
    });

    test('an export imported on a fresh state dir has identical checksums, snapshots included', async (t) => {
      await orSkip(t, async () => {
        const want = await sh(dut, src, checksums);
        const wantSnap = 'one';
        exported = await makeRunDir('export');
        archives = { live: join(exported, 'rootfs.tar.zst'), snap0: join(exported, 'snap0.tar.zst') };
        // The guest runs: the live export is consistent on its own (frozen or from a throw-away snapshot).
        await dut.storage.exportTar(src, archives.live);
        await dut.storage.exportTar(src, archives.snap0, { snapshot: 'snap0' });
        assert.deepEqual(await debrisUnder(join(dut.stateDir, 'guests', src.name)), []);

        fresh = await make();
        const on = fresh;
        const imported = guest(() => fresh, 'st-imported');
        await on.driver.create(imported, on.image);
        await on.storage.importTar(imported, archives.live);
        await on.storage.importTar(imported, archives.snap0, { snapshot: 'snap0' });
        assert.deepEqual(await on.storage.listSnapshots(imported), ['snap0']);
        await on.driver.start(imported, on.image);
        assert.equal(await sh(on, imported, checksums), want);
        assert.equal(await sh(on, imported, 'cat /data.txt'), 'source');
        await stop(on, imported);
        await on.storage.restoreSnapshot(imported, 'snap0');
        await on.driver.start(imported, on.image);
        assert.equal(await sh(on, imported, 'cat /data.txt'), wantSnap);
        assert.deepEqual(await debrisUnder(join(on.stateDir, 'guests', imported.name)), []);
      });
    });

    test("an incremental chain imported in order on a fresh state dir gives the last link's files; out of order is refused", async (t) => {
      const exportIncremental = dut.storage.exportIncremental?.bind(dut.storage);
      const on = fresh;
      if (!exportIncremental || !on?.storage.importIncremental || !exported) {
        t.skip('this model has no incremental backups, or the export test did not run');
        return;
      }
      const importIncremental = on.storage.importIncremental.bind(on.storage);
      const file = (n: string) => join(exported, `${n}.tar.zst`);
      // Running for the first two links, stopped for the third.
      await sh(dut, src, 'printf c0 > /chain.txt && printf keep > /data.txt');
      const l0 = await exportIncremental(src, file('c0'));
      assert.deepEqual([l0.sequence, l0.kind], [0, 'full']);
      await sh(dut, src, 'printf c1 > /chain.txt && rm /data.txt && echo n > /n1.txt');
      const l1 = await exportIncremental(src, file('c1'));
      assert.deepEqual([l1.chain, l1.sequence, l1.kind], [l0.chain, 1, 'incremental']);
      await sh(dut, src, 'printf c2 > /chain.txt && mv /n1.txt /n2.txt');
      const check =
        'cd / && sha256sum chain.txt n2.txt blob bin/busybox && test ! -e data.txt && test ! -e n1.txt';
      const want = await sh(dut, src, check);
      await stop(dut, src);
      const l2 = await exportIncremental(src, file('c2'));
      assert.deepEqual([l2.chain, l2.sequence], [l0.chain, 2]);

      const restored = guest(() => fresh, 'st-chain');
      await on.driver.create(restored, on.image);
      await importIncremental(restored, file('c0'), { link: l0 });
      await assert.rejects(
        importIncremental(restored, file('c2'), { link: l2 }),
        /is not at backup 1 of chain/,
      );
      await importIncremental(restored, file('c1'), { link: l1 });
      await importIncremental(restored, file('c2'), { link: l2 });
      await on.driver.start(restored, on.image);
      assert.equal(await sh(on, restored, check), want);
      await stop(on, restored);
      assert.deepEqual(await debrisUnder(join(on.stateDir, 'guests', restored.name)), []);
      // The later tests freeze the running source.
      await dut.driver.start(src, dut.image);
    });

    test('sweep thaws a guest that a daemon killed mid-snapshot left frozen', async (t) => {
      if (!dut.freezeLikeACrash) {
        t.skip('this model freezes no file systems through an agent');
        return;
      }
      await dut.freezeLikeACrash(src);
      const frozen = await execIn(dut.driver, src, ['/bin/sh', '-c', 'echo x > /frozen.txt'], {
        timeoutMs: 15_000,
      }).catch((e: unknown) => ({ code: -1, stdout: '', stderr: String(e) }));
      assert.notEqual(frozen.code, 0, 'nothing can be written while frozen');
      await dut.storage.sweep(src);
      assert.equal(await sh(dut, src, 'echo thawed > /after.txt && cat /after.txt'), 'thawed\n');
    });

    test('sweep removes half-made snapshots and leaves the real ones', async (t) => {
      await orSkip(t, async () => {
        await stop(dut, src);
        const before = await dut.storage.listSnapshots(src);
        await dut.makeDebris?.(src);
        assert.notDeepEqual(await debrisUnder(join(dut.stateDir, 'guests', src.name)), []);
        await dut.storage.sweep(src);
        assert.deepEqual(await dut.storage.listSnapshots(src), before);
        assert.deepEqual(await debrisUnder(join(dut.stateDir, 'guests', src.name)), []);
      });
    });
  });
}
