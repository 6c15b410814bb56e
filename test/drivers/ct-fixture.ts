import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import type { GuestSpec } from '../../src/core/types.ts';
import { createCtDriver } from '../../src/drivers/ct/ct-driver.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import type { GuestDriver, ImageHandle } from '../../src/drivers/guest-driver.ts';
import { cgroupDirs } from '../../src/host/cgroups-v1.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { mountPointsUnder } from '../../src/host/mounts.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { cleanUpRun, makeRunDir } from '../leftovers.ts';
import { makeBusyboxImage } from './busybox-image-handle.ts';
import type { DriverUnderTest } from './conformance.ts';

/** Host uid/gid that root of unprivileged test guests maps to. */
export const TEST_IDMAP_BASE = 1_000_000;

/** A ct driver on a fresh state dir in a temp dir, with the busybox image beside it. */
export interface CtFixture extends DriverUnderTest {
  dir: string;
  stateDir: string;
  runcRoot: string;
  assertNoLeftovers(spec: GuestSpec, options?: { runtimeOnly?: boolean }): Promise<void>;
  reopen(): GuestDriver;
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Builds the fixture; `cleanup()` checks nothing is left (runc containers, mounts, cgroups) and removes it all. */
export async function makeCtFixture(
  options: { guestConfig?: Record<string, string> } = {},
): Promise<CtFixture> {
  const runner = hostRunner();
  // Unprivileged runc walks to the rootfs as "other": the temp dir must be searchable.
  const dir = await makeRunDir('ct', { stateDir: 'state', mode: 0o711 });
  const stateDir = join(dir, 'state');
  const runcRoot = join(stateDir, 'runc');
  const image: ImageHandle = await makeBusyboxImage(join(dir, 'image'), { runner });
  const make = () => createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: TEST_IDMAP_BASE });
  const cgroupParent = cgroupParentOf(stateDir);
  const fixture: CtFixture = {
    dir,
    stateDir,
    runcRoot,
    driver: make(),
    image,
    ...(options.guestConfig ? { guestConfig: options.guestConfig } : {}),
    reopen: make,
    async assertNoLeftovers(spec, opts = {}) {
      const guestDir = join(stateDir, 'guests', spec.name);
      assert.deepEqual(await mountPointsUnder(guestDir), [], 'no mounts left in the guest dir');
      assert.deepEqual(await cgroupDirs(`${cgroupParent}/${spec.name}`), [], 'no cgroups left');
      assert.equal(await exists(join(runcRoot, spec.name)), false, 'no runc state left');
      if (!opts.runtimeOnly) assert.equal(await exists(guestDir), false, 'no guest dir left');
    },
    async cleanup() {
      assert.deepEqual(await cleanUpRun(dir), [], 'tests left things behind');
    },
  };
  return fixture;
}
