import assert from 'node:assert/strict';
import { chmod, mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createAgentPool } from '../../src/drivers/vm/vm-agent.ts';
import { createVmStorage } from '../../src/drivers/vm/vm-storage.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { makeVmFixture, type VmFixture } from './vm-fixture.ts';

/**
 * A firmware guest's UEFI variables live in `uefi-vars.fd` beside its disk, not in it
 * (decision 0023), so vm-storage carries that file wherever the disk goes. These run on
 * stopped guests, no boot needed: what the firmware writes there is only bytes to storage.
 * test/vm/vm-disk-image.test.ts boots OVMF on the real thing.
 */
describe('vm storage carries a guest UEFI variables with its disk', () => {
  const runner = hostRunner();
  let fx: VmFixture;
  let storage: ReturnType<typeof createVmStorage>;
  let dir: string;
  const config = { 'limits.memory': '128MiB' };
  const src = testGuestSpec('uefi-src', 'vm', config);
  const copy = testGuestSpec('uefi-copy', 'vm', config);
  const restored = testGuestSpec('uefi-restored', 'vm', config);
  const all = [src, copy, restored];
  const varsPath = (name: string) => join(fx.stateDir, 'guests', name, 'uefi-vars.fd');
  /** A stand-in variable store: 528 KiB (OVMF's 4 MiB build) filled with one byte. */
  const store = (byte: number) => Buffer.alloc(528 * 1024, byte);
  const writeVars = (name: string, byte: number) => writeFile(varsPath(name), store(byte), { mode: 0o600 });
  const varsByte = async (name: string) => {
    const b = await readFile(varsPath(name));
    assert.equal(b.length, 528 * 1024);
    assert.ok(
      b.every((x) => x === b[0]),
      'one whole store, not a mix',
    );
    return b[0];
  };
  const file = (name: string) => join(dir, name);

  before(async () => {
    const agents = createAgentPool();
    fx = await makeVmFixture({ agents });
    storage = createVmStorage(
      { runner, log: silentLogger(), stateDir: fx.stateDir, idmapBase: 1_000_000 },
      { agents },
    );
    dir = await makeRunDir('uefi-vars');
    for (const s of all) await fx.driver.create(s, fx.image);
  });
  after(async () => {
    for (const s of all) await fx.driver.delete(s).catch(() => {});
    await removeRunDir(dir);
    await fx?.cleanup();
  });

  test('a snapshot keeps the variables of its moment, restore puts them back, delete removes them', async () => {
    await writeVars(src.name, 1);
    await storage.snapshot(src, 's1');
    await writeVars(src.name, 2);
    await storage.snapshot(src, 's2');
    await writeVars(src.name, 3);
    await storage.restoreSnapshot(src, 's1');
    assert.equal(await varsByte(src.name), 1);
    await storage.restoreSnapshot(src, 's2');
    assert.equal(await varsByte(src.name), 2);
    await storage.deleteSnapshot(src, 's2');
    const kept = join(fx.stateDir, 'guests', src.name, 'uefi-snapshots');
    assert.equal(await stat(join(kept, 's2.fd')).catch(() => undefined), undefined, 'gone with its snapshot');
    assert.ok(await stat(join(kept, 's1.fd')));
  });

  test('a copy takes the current variables, or those of the snapshot it is made from', async () => {
    await writeVars(src.name, 4);
    await storage.copy(src, copy);
    assert.equal(await varsByte(copy.name), 4);
    await storage.copy(src, copy, { snapshot: 's1' });
    assert.equal(await varsByte(copy.name), 1);
  });

  test('a full archive, one of a snapshot, and a full backup of the chain carry the variables into the guest they are imported into', async () => {
    // Whatever mode the archive gives it, the imported store is root's alone.
    await chmod(varsPath(src.name), 0o644);
    await storage.exportTar(src, file('now.tar'));
    await storage.exportTar(src, file('s1.tar'), { snapshot: 's1' });
    await storage.importTar(restored, file('now.tar'));
    assert.equal(await varsByte(restored.name), 4);
    assert.equal((await stat(varsPath(restored.name))).mode & 0o777, 0o600);
    await storage.importTar(restored, file('s1.tar'));
    assert.equal(await varsByte(restored.name), 1);
    // An archive's snapshot brings its own variables beside it, and the current ones stay.
    await writeVars(restored.name, 9);
    await storage.importTar(restored, file('now.tar'), { snapshot: 'from-now' });
    assert.equal(await varsByte(restored.name), 9);
    await storage.restoreSnapshot(restored, 'from-now');
    assert.equal(await varsByte(restored.name), 4);
    // Incremental backups: the full one of a chain carries them too.
    assert.ok(storage.exportIncremental && storage.importIncremental);
    await writeVars(src.name, 5);
    const link = await storage.exportIncremental(src, file('full.tar'));
    assert.equal(link.kind, 'full');
    await storage.importIncremental(restored, file('full.tar'), { link });
    assert.equal(await varsByte(restored.name), 5);
  });

  test('a guest without variables (BIOS, the kit) archives none and an import leaves the target without', async () => {
    const bios = testGuestSpec('uefi-none', 'vm', config);
    await fx.driver.create(bios, fx.image);
    try {
      await storage.exportTar(bios, file('bios.tar'));
      const members = await runner.run(['tar', '--zstd', '-tf', file('bios.tar')]);
      assert.deepEqual(members.stdout.trim().split('\n'), ['disk.qcow2']);
      await storage.importTar(bios, file('bios.tar'));
      assert.equal(await stat(varsPath(bios.name)).catch(() => undefined), undefined);
    } finally {
      await fx.driver.delete(bios);
    }
  });

  test('an archive whose uefi-vars.fd is a link or too large to be a variable store is refused, and nothing changes', async () => {
    await storage.exportTar(src, file('good.tar'));
    const work = file('bad');
    await mkdir(work);
    await runner.run(['tar', '--zstd', '-C', work, '-xf', file('good.tar')]);
    const before = await readFile(join(fx.stateDir, 'guests', restored.name, 'root.qcow2'));
    await writeVars(restored.name, 7);
    const cases: Array<[string, () => Promise<void>]> = [
      ['link', () => symlink('/etc/shadow', join(work, 'uefi-vars.fd'))],
      ['huge', () => writeFile(join(work, 'uefi-vars.fd'), Buffer.alloc(5 * 1024 * 1024, 1))],
    ];
    for (const [name, make] of cases) {
      await runner.run(['rm', '-f', join(work, 'uefi-vars.fd')]);
      await make();
      const tar = file(`${name}.tar`);
      await runner.run(['tar', '--zstd', '-C', work, '-cf', tar, 'disk.qcow2', 'uefi-vars.fd']);
      await assert.rejects(storage.importTar(restored, tar), {
        code: 'InvalidArgument',
        message: /uefi-vars\.fd is not an OVMF variable store/,
      });
      assert.equal(await varsByte(restored.name), 7, `${name}: the variables are unchanged`);
      assert.ok(
        (await readFile(join(fx.stateDir, 'guests', restored.name, 'root.qcow2'))).equals(before),
        `${name}: the disk is unchanged`,
      );
    }
  });
});
