import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, chown, mkdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../src/core/types.ts';
import { createCtDriver } from '../../src/drivers/ct/ct-driver.ts';
import { createCtStorage } from '../../src/drivers/ct/ct-storage.ts';
import { ownRangeBase, readIdRangeOf } from '../../src/drivers/ct/id-ranges.ts';
import type { DriverContext, GuestDriver } from '../../src/drivers/guest-driver.ts';
import type { AttachedVolume } from '../../src/drivers/guest-volumes.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { shiftIds } from '../../src/images/shift-tree.ts';
import { type CtFixture, makeCtFixture, TEST_IDMAP_BASE } from '../drivers/ct-fixture.ts';
import { execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';

// Per-guest id ranges (issue 11, finding 3; docs/decisions/0018), on real runc guests.

/** Runs argv as host uid `uid` through a capability-less shell (setpriv keeps caps until its execve). */
function as(uid: number, argv: string[]) {
  const r = spawnSync(
    'setpriv',
    [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', '/bin/sh', '-c', 'exec "$0" "$@"', ...argv],
    { encoding: 'utf8' },
  );
  return { code: r.status ?? 128, stdout: r.stdout ?? '' };
}

describe('ct guests run in id ranges of their own', () => {
  let fx: CtFixture;
  let volumes: AttachedVolume[] = [];
  let withVolumes: GuestDriver;
  const started: Array<{ driver: GuestDriver; spec: GuestSpec }> = [];
  const dirOf = (name: string) => join(fx.stateDir, 'guests', name);
  const sh = (driver: GuestDriver, spec: GuestSpec, script: string) =>
    execIn(driver, spec, ['/bin/sh', '-c', script]).then((r) => {
      assert.equal(r.code, 0, r.stderr);
      return r.stdout;
    });
  const launch = async (driver: GuestDriver, spec: GuestSpec) => {
    await driver.create(spec, fx.image);
    const init = await driver.start(spec, fx.image);
    started.push({ driver, spec });
    return init;
  };
  const stop = (driver: GuestDriver, spec: GuestSpec) => driver.stop(spec, { timeoutMs: 0, force: true });

  /** Turns a created guest into one as an earlier version left it: shared range, open directory. */
  const makeEarlier = async (spec: GuestSpec) => {
    const dir = dirOf(spec.name);
    const recorded = JSON.parse(await readFile(join(dir, 'idmap.json'), 'utf8')) as {
      base: number;
      slot: number;
    };
    await shiftIds(join(dir, 'upper'), { from: recorded.base, to: TEST_IDMAP_BASE, size: 65536 });
    await rm(join(dir, 'idmap.json'));
    await unlink(join(fx.stateDir, 'idmap', String(recorded.slot)));
    await rm(join(dir, 'staging'), { recursive: true });
    await chown(dir, 0, 0);
    await chmod(dir, 0o711);
    await chmod(join(dir, 'bundle'), 0o755);
    await chmod(join(dir, 'bundle', 'config.json'), 0o644);
  };

  before(async () => {
    fx = await makeCtFixture();
    const ctx: DriverContext = {
      runner: hostRunner(),
      log: silentLogger(),
      stateDir: fx.stateDir,
      idmapBase: TEST_IDMAP_BASE,
      volumes: { resolve: async () => volumes },
    };
    withVolumes = createCtDriver(ctx);
  });
  after(async () => {
    for (const { driver, spec } of started) {
      await stop(driver, spec).catch(() => {});
      await driver.delete(spec).catch(() => {});
    }
    await fx.cleanup();
  });

  test("two guests get disjoint ranges, and each one's directory is closed to the other and to nobody", async () => {
    const a = testGuestSpec('rg-a', 'ct');
    const b = testGuestSpec('rg-b', 'ct');
    const ia = await launch(fx.driver, a);
    const ib = await launch(fx.driver, b);
    const ra = await readIdRangeOf(ia.pid);
    const rb = await readIdRangeOf(ib.pid);
    assert.deepEqual(ra, { base: ownRangeBase(TEST_IDMAP_BASE, 0), size: 65536 });
    assert.deepEqual(rb, { base: ownRangeBase(TEST_IDMAP_BASE, 1), size: 65536 });
    for (const [spec, range] of [
      [a, ra],
      [b, rb],
    ] as const) {
      const st = await stat(dirOf(spec.name));
      assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [0, range.base, 0o710], spec.name);
      assert.equal(
        (await stat(join(dirOf(spec.name), 'upper'))).uid,
        range.base,
        'the guest root is its own',
      );
    }
    // The roots are mounted in the guests' own mount namespaces only (decision 64): on the host
    // their files are the upper layers.
    await sh(fx.driver, a, 'mkdir -p /etc/mine');
    assert.equal(
      as(ra.base, ['stat', join(dirOf('rg-a'), 'upper', 'etc', 'mine')]).code,
      0,
      'a guest root reaches its own files',
    );
    await sh(fx.driver, b, 'mkdir -p /etc/mine');
    assert.notEqual(
      as(ra.base, ['stat', join(dirOf('rg-b'), 'upper', 'etc', 'mine')]).code,
      0,
      "and not another's",
    );
    assert.notEqual(
      as(65534, ['stat', join(dirOf('rg-a'), 'upper', 'etc', 'mine')]).code,
      0,
      'nor does nobody',
    );
    assert.notEqual(
      as(ra.base, ['kill', '-0', String(ib.pid)]).code,
      0,
      "a guest's root cannot signal another's init",
    );
    assert.equal(await sh(fx.driver, a, 'id -u; stat -c %u /etc/passwd'), '0\n0\n');
  });

  test('a guest made before per-guest ranges moves to its own at its next start, its files following', async () => {
    const spec = testGuestSpec('rg-old', 'ct');
    await fx.driver.create(spec, fx.image);
    const upper = join(dirOf(spec.name), 'upper');
    await mkdir(join(upper, 'home', 'u'), { recursive: true });
    await writeFile(join(upper, 'home', 'u', 'notes'), 'mine\n');
    await writeFile(join(upper, 'suid'), '#!/bin/sh\n');
    const { base } = JSON.parse(await readFile(join(dirOf(spec.name), 'idmap.json'), 'utf8')) as {
      base: number;
    };
    for (const p of ['home', 'suid']) await chown(join(upper, p), base, base);
    for (const p of ['home/u', 'home/u/notes']) await chown(join(upper, p), base + 1000, base + 1000);
    // After the chowns, which clear setuid.
    await chmod(join(upper, 'suid'), 0o4755);
    await makeEarlier(spec);
    assert.equal((await stat(join(upper, 'home', 'u', 'notes'))).uid, TEST_IDMAP_BASE + 1000);

    // Re-adoption by a new daemon closes the open directory before any start.
    const driver = fx.reopen();
    assert.equal((await driver.inspect(spec, undefined)).state, 'stopped');
    assert.equal((await stat(dirOf(spec.name))).mode & 0o777, 0o700);
    assert.equal((await stat(join(dirOf(spec.name), 'bundle', 'config.json'))).mode & 0o777, 0o600);

    const init = await driver.start(spec, fx.image);
    started.push({ driver, spec });
    const range = await readIdRangeOf(init.pid);
    assert.notEqual(range.base, TEST_IDMAP_BASE, 'off the shared range');
    assert.equal(
      await sh(driver, spec, 'stat -c "%u %g %a" /home/u/notes /home/u /suid'),
      '1000 1000 644\n1000 1000 755\n0 0 4755\n',
    );
    assert.equal((await stat(join(upper, 'home', 'u', 'notes'))).uid, range.base + 1000);
    await stop(driver, spec);
  });

  test("a filesystem volume keeps shared-range ids on disk and is every guest's own through an idmapped mount", async () => {
    // As guests sharing one range left it: files of guest uid 1000 are host uid base + 1000.
    const hostPath = join(fx.dir, 'vol');
    await mkdir(hostPath, { recursive: true });
    await writeFile(join(hostPath, 'data'), 'shared\n');
    await chown(join(hostPath, 'data'), TEST_IDMAP_BASE + 1000, TEST_IDMAP_BASE + 1000);
    volumes = [
      {
        device: 'v',
        pool: 'default',
        volume: 'v',
        type: 'filesystem',
        hostPath,
        path: '/srv/v',
        sizeBytes: 0,
      },
    ];
    const earlier = testGuestSpec('rg-vol', 'ct');
    await withVolumes.create(earlier, fx.image);
    await makeEarlier(earlier);
    const other = testGuestSpec('rg-vol2', 'ct');
    await launch(withVolumes, other);
    const init = await withVolumes.start(earlier, fx.image);
    started.push({ driver: withVolumes, spec: earlier });
    const range = await readIdRangeOf(init.pid);
    assert.notEqual(range.base, TEST_IDMAP_BASE, 'a guest made before moves to its own range, volume or not');
    for (const spec of [earlier, other]) {
      assert.equal(await sh(withVolumes, spec, 'stat -c "%u %g" /srv/v/data /srv/v'), '1000 1000\n0 0\n');
    }
    await sh(withVolumes, earlier, 'echo from-earlier >> /srv/v/data && touch /srv/v/new');
    await sh(withVolumes, other, 'echo from-other >> /srv/v/data && chown 33:33 /srv/v/new');
    assert.equal(
      await sh(withVolumes, earlier, 'cat /srv/v/data; stat -c %u /srv/v/new'),
      'shared\nfrom-earlier\nfrom-other\n33\n',
    );
    assert.match(
      await sh(withVolumes, other, 'grep " /srv/v " /proc/mounts'),
      /\bnosuid\b.*\bnodev\b|\bnodev\b.*\bnosuid\b/,
      'nosuid and nodev, as runc binds volumes',
    );
    // On disk the ids stay those of the shared range, whoever wrote them.
    assert.equal((await stat(join(hostPath, 'new'))).uid, TEST_IDMAP_BASE + 33);
    assert.equal((await stat(hostPath)).uid, TEST_IDMAP_BASE);
    await stop(withVolumes, earlier);
    volumes = [];
  });

  test('security.idmap.isolated=false shares one range; back to true, the guest takes its own', async () => {
    const shared = testGuestSpec('rg-shared', 'ct', { 'security.idmap.isolated': 'false' });
    const init = await launch(fx.driver, shared);
    assert.equal((await readIdRangeOf(init.pid)).base, TEST_IDMAP_BASE);
    // The guest also gives its / to another of its ids: the upper dir's owner then names no
    // range, and the files are taken to be in the range the guest last ran under.
    await sh(
      fx.driver,
      shared,
      'mkdir -p /home/u && echo x > /home/u/f && chown -R 1000:1000 /home/u && chown 7 /',
    );
    await stop(fx.driver, shared);
    const own = { ...shared, config: {} };
    const again = await fx.driver.start(own, fx.image);
    assert.notEqual((await readIdRangeOf(again.pid)).base, TEST_IDMAP_BASE);
    assert.equal(await sh(fx.driver, own, 'stat -c %u /home/u/f /'), '1000\n0\n');
    await stop(fx.driver, own);
  });

  test("a copy of another guest's files follows the copy's range at its start", async () => {
    const src = started.find((s) => s.spec.name === 'rg-a')?.spec;
    assert.ok(src);
    await sh(fx.driver, src, 'mkdir -p /home/x && echo hi > /home/x/f && chown -R 1000:1000 /home/x');
    const copy = testGuestSpec('rg-copy', 'ct');
    await fx.driver.create(copy, fx.image);
    const storage = createCtStorage({
      runner: hostRunner(),
      log: silentLogger(),
      stateDir: fx.stateDir,
      idmapBase: TEST_IDMAP_BASE,
    });
    await storage.copy(src, copy);
    const init = await fx.driver.start(copy, fx.image);
    started.push({ driver: fx.driver, spec: copy });
    assert.notEqual((await readIdRangeOf(init.pid)).base, ownRangeBase(TEST_IDMAP_BASE, 0));
    assert.equal(await sh(fx.driver, copy, 'stat -c "%u %g" /home/x/f; cat /home/x/f'), '1000 1000\nhi\n');
  });
});
