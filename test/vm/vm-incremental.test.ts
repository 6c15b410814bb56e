import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createAgentPool } from '../../src/drivers/vm/vm-agent.ts';
import {
  createVmIncrementalBackups,
  type VmIncrementalBackups,
} from '../../src/drivers/vm/vm-incremental.ts';
import { createVmStorage } from '../../src/drivers/vm/vm-storage.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { qemuImg } from '../../src/host/qemu-img.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { makeVmFixture, type VmFixture } from './vm-fixture.ts';

describe('incremental backups of vm disks through a persistent dirty bitmap', () => {
  const runner = hostRunner();
  const img = qemuImg(runner);
  let fx: VmFixture;
  let backups: VmIncrementalBackups;
  let storage: ReturnType<typeof createVmStorage>;
  let dir: string;
  const spec = testGuestSpec('inc-src', 'vm', { 'limits.memory': '128MiB' });
  const copy = testGuestSpec('inc-restored', 'vm', { 'limits.memory': '128MiB' });
  const file = (name: string) => join(dir, name);
  const sh = async (s: typeof spec, script: string) => {
    const r = await execIn(fx.driver, s, ['/bin/sh', '-c', script], { timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };
  const checksums = 'cd / && sha256sum blob data.txt';

  before(async () => {
    const agents = createAgentPool();
    fx = await makeVmFixture({ agents });
    const ctx = { runner, log: silentLogger(), stateDir: fx.stateDir, idmapBase: 1_000_000 };
    backups = createVmIncrementalBackups(ctx, { agents });
    storage = createVmStorage(ctx, { agents });
    dir = await makeRunDir('inc');
  });
  after(async () => {
    for (const s of [copy, spec]) {
      await fx.driver.stop(s, { timeoutMs: 0, force: true }).catch(() => {});
      await fx.driver.delete(s).catch(() => {});
    }
    await removeRunDir(dir);
    await fx?.cleanup();
  });

  let atInc1 = '';

  test('an incremental needs a full backup first', async () => {
    await fx.driver.create(spec, fx.image);
    await assert.rejects(
      backups.backup(spec, file('none.qcow2'), { incremental: true }),
      /full backup first/,
    );
  });

  test('full, then incrementals that carry only the changed clusters (running and stopped)', async (t) => {
    await fx.driver.start(spec, fx.image);
    await sh(spec, 'dd if=/dev/urandom of=/blob bs=1M count=8 2>/dev/null && printf zero > /data.txt');
    const full = await backups.backup(spec, file('full.qcow2'), { incremental: false });
    assert.equal(full.kind, 'full');
    // About 1% of the blob changes, and one small file.
    await sh(
      spec,
      'dd if=/dev/urandom of=/blob bs=64k count=1 seek=20 conv=notrunc 2>/dev/null && printf one > /data.txt',
    );
    atInc1 = await sh(spec, checksums);
    const inc1 = await backups.backup(spec, file('inc1.qcow2'), { incremental: true });
    assert.deepEqual([inc1.chain, inc1.sequence, inc1.kind], [full.chain, 1, 'incremental']);
    await sh(spec, 'printf two > /data.txt');
    await fx.driver.stop(spec, { timeoutMs: 10_000, force: false });
    // Stopped: a qemu-storage-daemon opens the disk, and the bitmap survived QEMU's exit.
    const inc2 = await backups.backup(spec, file('inc2.qcow2'), { incremental: true });
    assert.equal(inc2.sequence, 2);
    const sizes = await Promise.all(
      ['full', 'inc1', 'inc2'].map(async (n) => (await stat(file(`${n}.qcow2`))).size),
    );
    const [fullBytes = 0, inc1Bytes = 0, inc2Bytes = 0] = sizes;
    t.diagnostic(`backup file sizes: full ${fullBytes} B, inc1 ${inc1Bytes} B, inc2 ${inc2Bytes} B`);
    assert.ok(fullBytes > 8 * 2 ** 20, `full backup ${fullBytes} B holds the 8 MiB blob`);
    assert.ok(inc1Bytes < fullBytes / 4, `incremental 1 is ${inc1Bytes} B against ${fullBytes} B`);
    assert.ok(inc2Bytes < fullBytes / 4, `incremental 2 is ${inc2Bytes} B against ${fullBytes} B`);
  });

  test('full + incrementals restore to a disk identical to the guest disk', async () => {
    await backups.restoreChain(
      [file('full.qcow2'), file('inc1.qcow2'), file('inc2.qcow2')],
      file('all.qcow2'),
    );
    const disk = join(fx.stateDir, 'guests', spec.name, 'root.qcow2');
    const r = await runner.run(
      ['qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2', file('all.qcow2'), disk],
      {
        allowFailure: true,
      },
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });

  test('full + first incremental boots with the files as they were at that backup', async () => {
    await backups.restoreChain([file('full.qcow2'), file('inc1.qcow2')], file('upto1.qcow2'));
    await fx.driver.create(copy, fx.image);
    await img.setContent(join(fx.stateDir, 'guests', copy.name, 'root.qcow2'), {
      path: file('upto1.qcow2'),
      format: 'qcow2',
    });
    await fx.driver.start(copy, fx.image);
    assert.equal(await sh(copy, checksums), atInc1);
    await fx.driver.stop(copy, { timeoutMs: 0, force: true });
  });

  test('rolling the disk back to a snapshot ends the chain: the next backup must be full', async () => {
    await storage.snapshot(spec, 's0');
    await storage.restoreSnapshot(spec, 's0');
    await assert.rejects(
      backups.backup(spec, file('inc3.qcow2'), { incremental: true }),
      /full backup first/,
    );
    const again = await backups.backup(spec, file('full2.qcow2'), { incremental: false });
    assert.equal(again.sequence, 0);
  });
});
