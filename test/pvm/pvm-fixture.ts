import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { GuestSpec, ImageRecord } from '../../src/core/types.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import type { GuestDriver, ImageHandle } from '../../src/drivers/guest-driver.ts';
import { createPvmDriver, type PvmDriverOptions } from '../../src/drivers/pvm/pvm-driver.ts';
import { cgroupDirs } from '../../src/host/cgroups-v1.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { unmountIfMounted } from '../../src/host/mounts.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { buildBaseDisk } from '../../src/images/base-disk.ts';
import { buildBusyboxRootfs } from '../../src/images/busybox-image.ts';
import { imageInitArgv } from '../../src/images/guest-kit.ts';
import type { DriverUnderTest } from '../drivers/conformance.ts';
import { cleanUpRun, makeRunDir } from '../leftovers.ts';

/** Host uid/gid base of the test state dir (pvm guests get uids from idmapBase + 131072). */
export const TEST_IDMAP_BASE = 1_000_000;

/** A pvm driver on a fresh state dir, with a busybox image whose base disk is made on demand. */
export interface PvmFixture extends DriverUnderTest {
  dir: string;
  stateDir: string;
  cgroupParent: string;
  reopen(options?: PvmDriverOptions): GuestDriver;
  assertNoLeftovers(spec: GuestSpec, options?: { runtimeOnly?: boolean }): Promise<void>;
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Pids of linux.uml processes whose command line mentions `dir` (the guests of one fixture). */
export async function umlProcessesUnder(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('linux.uml') && cmdline.includes(dir)) found.push(Number(entry));
  }
  return found;
}

/**
 * Builds the busybox tree once; `baseDisk()` reads the init from `this.record`,
 * so that withInit() copies get a disk whose kit runs their init (the image
 * store makes one disk per image, and an image has one init).
 */
async function makeImage(dir: string): Promise<ImageHandle> {
  const runner = hostRunner();
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const rootfs = join(dir, 'rootfs');
  const metadata = await buildBusyboxRootfs(rootfs, { runner });
  const record: ImageRecord = {
    ...metadata,
    fingerprint: 'busybox-test',
    aliases: ['busybox'],
    sizeBytes: 0,
    createdAt: new Date().toISOString(),
  };
  const disks = new Map<string, Promise<string>>();
  return {
    record,
    rootfs,
    shiftedRootfs() {
      return Promise.reject(new Error('pvm guests do not use shifted trees'));
    },
    baseDisk(this: ImageHandle) {
      const initArgv = imageInitArgv(this.record.properties);
      const key = createHash('sha256').update(JSON.stringify(initArgv)).digest('hex').slice(0, 12);
      let disk = disks.get(key);
      if (!disk) {
        disk = buildBaseDisk(rootfs, join(dir, `disk-${key}.ext4`), { runner, initArgv }).then((d) => d.path);
        disks.set(key, disk);
      }
      return disk;
    },
  };
}

/** Builds the fixture; `cleanup()` asserts that no UML process, cgroup or file is left, and removes it all. */
export async function makePvmFixture(options: PvmDriverOptions = {}): Promise<PvmFixture> {
  const runner = hostRunner();
  // Closed to every other user: the kernels reach their files through their jails (decision 17).
  const dir = await makeRunDir('pvm', { stateDir: 'state', mode: 0o700 });
  const stateDir = join(dir, 'state');
  const image = await makeImage(join(dir, 'image'));
  const make = (more: PvmDriverOptions = {}) =>
    createPvmDriver(
      { runner, log: silentLogger(), stateDir, idmapBase: TEST_IDMAP_BASE },
      { ...options, ...more },
    );
  const cgroupParent = cgroupParentOf(stateDir);
  return {
    dir,
    stateDir,
    cgroupParent,
    driver: make(),
    image,
    reopen: make,
    async assertNoLeftovers(spec, opts = {}) {
      const guestDir = join(stateDir, 'guests', spec.name);
      assert.deepEqual(await cgroupDirs(`${cgroupParent}/${spec.name}`), [], 'no cgroups left');
      assert.deepEqual(await umlProcessesUnder(guestDir), [], 'no UML process left');
      assert.equal(
        await exists(join(stateDir, 'run', 'pvm', spec.name, 'uml', 'uml')),
        false,
        'no mconsole dir left',
      );
      assert.equal(await exists(join(guestDir, 'run')), false, 'no uml_dir left in the guest directory');
      if (!opts.runtimeOnly) {
        assert.equal(await exists(join(stateDir, 'run', 'pvm', spec.name)), false, 'no runtime dir left');
      }
      if (!opts.runtimeOnly) assert.equal(await exists(guestDir), false, 'no guest dir left');
    },
    async cleanup() {
      // The driver made the state dir a shared mount of its own (ensureSharedMount): that one is
      // the product's, not a leak; everything else must be gone.
      await unmountIfMounted(stateDir, { runner });
      assert.deepEqual(await cleanUpRun(dir), [], 'tests left things behind');
    },
  };
}
