import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { GuestSpec } from '../../src/core/types.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import type { GuestDriver, ImageHandle } from '../../src/drivers/guest-driver.ts';
import { createVmDriver, type VmDriverOptions } from '../../src/drivers/vm/vm-driver.ts';
import { cgroupDirs } from '../../src/host/cgroups-v1.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { readProcStat } from '../../src/host/proc-stat.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { buildBaseDisk } from '../../src/images/base-disk.ts';
import { imageInitArgv } from '../../src/images/guest-kit.ts';
import { makeBusyboxImage } from '../drivers/busybox-image-handle.ts';
import type { DriverUnderTest } from '../drivers/conformance.ts';
import { cleanUpRun, makeRunDir } from '../leftovers.ts';

/** A vm driver on a fresh state dir in a temp dir, with a busybox image whose base disks are made on demand. */
export interface VmFixture extends DriverUnderTest {
  dir: string;
  stateDir: string;
  reopen(): GuestDriver;
  assertNoLeftovers(spec: GuestSpec, options?: { runtimeOnly?: boolean }): Promise<void>;
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** QEMU processes whose command line mentions `dir` (each test's temp dir is unique). */
export async function qemuProcessesUnder(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.startsWith('qemu-system-x86_64') || !cmdline.includes(dir)) continue;
    const stat = await readProcStat(Number(name));
    if (stat && stat.state !== 'Z') found.push(Number(name));
  }
  return found;
}

/**
 * An image handle whose baseDisk() builds the real base disk (guest kit
 * included) once per init: the kit bakes the image's init into the disk, and
 * the conformance suite varies the init under one fingerprint.
 */
function withBaseDisks(image: ImageHandle, disksDir: string): ImageHandle {
  const disks = new Map<string, Promise<string>>();
  const runner = hostRunner();
  return {
    ...image,
    // A method reading `this`: withInit() copies the handle with another record.
    baseDisk(this: ImageHandle) {
      const initArgv = imageInitArgv(this.record.properties);
      const key = createHash('sha256').update(JSON.stringify(initArgv)).digest('hex').slice(0, 12);
      let disk = disks.get(key);
      if (!disk) {
        const target = join(disksDir, `disk-${key}.ext4`);
        disk = buildBaseDisk(this.rootfs, target, { runner, initArgv }).then(() => target);
        disks.set(key, disk);
      }
      return disk;
    },
  };
}

/** Builds the fixture; cleanup() checks that no QEMU, cgroup or temp dir is left. */
export async function makeVmFixture(options: VmDriverOptions = {}): Promise<VmFixture> {
  const runner = hostRunner();
  const dir = await makeRunDir('vm', { stateDir: 'state' });
  const stateDir = join(dir, 'state');
  const image = withBaseDisks(await makeBusyboxImage(join(dir, 'image'), { runner }), join(dir, 'image'));
  const make = () =>
    createVmDriver(
      { runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 },
      { accelerator: 'tcg', ...options },
    );
  const cgroupParent = cgroupParentOf(stateDir);
  return {
    dir,
    stateDir,
    driver: make(),
    image,
    // Small guests: TCG on a shared 2-core host.
    guestConfig: { 'limits.memory': '128MiB' },
    reopen: make,
    async assertNoLeftovers(spec, opts = {}) {
      const guestDir = join(stateDir, 'guests', spec.name);
      assert.deepEqual(await qemuProcessesUnder(guestDir), [], 'no QEMU left');
      assert.deepEqual(await cgroupDirs(`${cgroupParent}/${spec.name}`), [], 'no cgroups left');
      // A running QEMU's files are in the guest's runtime directory of this state dir (decision 0061).
      const runDir = join(stateDir, 'run', 'vm', spec.name);
      for (const f of ['qmp.sock', 'console.sock', 'agent.sock', 'qemu.pid']) {
        assert.equal(await exists(join(runDir, f)), false, `no ${f} left`);
        assert.equal(await exists(join(guestDir, f)), false, `no ${f} left in the guest dir`);
      }
      if (!opts.runtimeOnly) {
        assert.equal(await exists(guestDir), false, 'no guest dir left');
        assert.equal(await exists(runDir), false, 'no runtime dir left');
      }
    },
    async cleanup() {
      assert.deepEqual(await cleanUpRun(dir), [], 'tests left things behind');
    },
  };
}
