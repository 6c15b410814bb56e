import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../src/core/types.ts';
import { mountOverlayRootfs } from '../../src/drivers/ct/overlay-rootfs.ts';
import { isMountPoint, listMountPoints } from '../../src/host/mounts.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { type CtFixture, makeCtFixture } from '../drivers/ct-fixture.ts';
import { execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';

// ct guests' roots are mounted in their own mount namespaces only (docs/decisions/0064): the
// host's mount table does not grow with the number of running guests, so a start does not copy
// one mount per running guest and an unmount does not walk them. Guarded at a CI-sized N (this
// process plays the daemon: the driver runs in it). Counts are asserted, never times.

/** Running guests at once: enough that one host mount per guest would stand out. */
const N = 200;
/** Starts at once (the daemon's controllers start several guests at a time too). */
const PARALLEL = 4;

/** Mount points of this process's namespace at or below `dir`. */
const mountsUnder = async (dir: string) =>
  (await listMountPoints()).filter((p) => p === dir || p.startsWith(`${dir}/`));

/** Mount points of the host's overlays whose upper layer is below `dir` (wherever they are mounted). */
async function overlaysOf(dir: string): Promise<string[]> {
  return (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .filter((l) => / - overlay /.test(l) && l.includes(`upperdir=${dir}/`))
    .map((l) => l.split(' ')[4] ?? '');
}

/** The mount at `/` in a process's own mount namespace: its fstype and options. */
async function rootMountOf(pid: number): Promise<{ fstype: string; options: string }> {
  const line = (await readFile(`/proc/${pid}/mountinfo`, 'utf8'))
    .split('\n')
    .find((l) => l.split(' ')[4] === '/');
  assert.ok(line, `pid ${pid} has a root mount`);
  const [, after = ''] = line.split(' - ');
  const [fstype = ''] = after.split(' ');
  return { fstype, options: line.split(' ')[5] ?? '' };
}

async function inBatches<T>(items: T[], size: number, work: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(work));
}

describe("ct guests' roots stay out of the host's mount table", () => {
  let fx: CtFixture;
  const made: GuestSpec[] = [];

  before(async () => {
    fx = await makeCtFixture();
  });
  after(async () => {
    await inBatches(made, PARALLEL, async (spec) => {
      await fx.driver.stop(spec, { timeoutMs: 0, force: true }).catch(() => {});
      await fx.driver.delete(spec).catch(() => {});
    });
    await fx.cleanup();
  });

  test(`${N} running guests add no mount to the host's table; each has its root in its own namespace`, async () => {
    const specs = Array.from({ length: N }, (_, i) => testGuestSpec(`mt-${i}`, 'ct'));
    const pids = new Map<string, number>();
    await inBatches(specs, PARALLEL, async (spec) => {
      await fx.driver.create(spec, fx.image);
      made.push(spec);
      pids.set(spec.name, (await fx.driver.start(spec, fx.image)).pid);
    });
    assert.deepEqual(
      await mountsUnder(fx.stateDir),
      [],
      'no guest root (nor anything else) mounted on the host',
    );
    assert.deepEqual(
      await overlaysOf(fx.stateDir),
      [],
      'no overlay of these guests anywhere in the host table',
    );
    // The table's size itself is not asserted: other tests on the machine mount and unmount meanwhile.
    for (const spec of [specs[0], specs[N - 1]]) {
      assert.ok(spec);
      const pid = pids.get(spec.name) ?? 0;
      const root = await rootMountOf(pid);
      assert.equal(root.fstype, 'overlay', `${spec.name}'s root is its overlay`);
      assert.match(root.options, /\bnodev\b/);
      const r = await execIn(fx.driver, spec, ['/bin/sh', '-c', 'echo hi > /root-file && cat /root-file']);
      assert.equal(r.stdout, 'hi\n', r.stderr);
      const upper = await readFile(join(fx.stateDir, 'guests', spec.name, 'upper', 'root-file'), 'utf8');
      assert.equal(upper, 'hi\n', 'what the guest writes is in its upper layer');
    }
    const first = specs[0];
    assert.ok(first);
    await fx.driver.stop(first, { timeoutMs: 0, force: true });
    await fx.assertNoLeftovers(first, { runtimeOnly: true });
    await fx.driver.start(first, fx.image);
    const r = await execIn(fx.driver, first, ['cat', '/root-file']);
    assert.equal(r.stdout, 'hi\n', 'a restarted guest keeps its files');
    assert.deepEqual(await mountsUnder(fx.stateDir), []);
  });

  test('a guest an older daemon started with its root mounted on the host is adopted, stopped and deleted', async () => {
    const spec = testGuestSpec('mt-old', 'ct');
    await fx.driver.create(spec, fx.image);
    made.push(spec);
    // Start it once (the bundle and the guest's range as they are), then as an older daemon did:
    // the overlay mounted on the host, runc run --detach from the host's namespace.
    await fx.driver.start(spec, fx.image);
    await fx.driver.stop(spec, { timeoutMs: 0, force: true });
    const dir = join(fx.stateDir, 'guests', spec.name);
    const { base, size } = JSON.parse(await readFile(join(dir, 'idmap.json'), 'utf8')) as {
      base: number;
      size: number;
    };
    const runner = hostRunner();
    const rootfs = join(dir, 'rootfs');
    await mountOverlayRootfs(
      {
        tree: fx.image.rootfs,
        staging: join(dir, 'staging'),
        upper: join(dir, 'upper'),
        work: join(dir, 'work'),
        target: rootfs,
        idmap: { base, size },
      },
      { runner },
    );
    const runc = spawn(
      'runc',
      [
        '--root',
        fx.runcRoot,
        'run',
        '--detach',
        '--no-new-keyring',
        '--bundle',
        join(dir, 'bundle'),
        spec.name,
      ],
      { stdio: 'ignore', detached: true },
    );
    assert.equal(await new Promise((resolve) => runc.once('exit', resolve)), 0, 'runc run as before');
    assert.ok(await isMountPoint(rootfs), 'its root is on the host, as an older daemon left it');

    const daemon = fx.reopen();
    const state = await daemon.inspect(spec, undefined);
    assert.equal(state.state, 'running', 'adopted');
    const r = await execIn(daemon, spec, ['/bin/sh', '-c', 'echo ok']);
    assert.equal(r.stdout, 'ok\n', r.stderr);
    await daemon.stop(spec, { timeoutMs: 0, force: true });
    assert.equal(await isMountPoint(rootfs), false, 'stop unmounts the host mount');
    await fx.assertNoLeftovers(spec, { runtimeOnly: true });
    await daemon.start(spec, fx.image);
    assert.equal(await isMountPoint(rootfs), false, 'its next start mounts the root in its namespace only');
    await daemon.delete(spec);
    await fx.assertNoLeftovers(spec);
  });
});
