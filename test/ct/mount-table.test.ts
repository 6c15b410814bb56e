import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec, ProcessIdentity } from '../../src/core/types.ts';
import { createCtDriver } from '../../src/drivers/ct/ct-driver.ts';
import { mountOverlayRootfs } from '../../src/drivers/ct/overlay-rootfs.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { cgroupDirs } from '../../src/host/cgroups-v1.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { isMountPoint, listMountPoints } from '../../src/host/mounts.ts';
import { isSameProcess } from '../../src/host/proc-stat.ts';
import { hostRunner, type ProcessRunner } from '../../src/host/runner.ts';
import { type CtFixture, makeCtFixture, TEST_IDMAP_BASE } from '../drivers/ct-fixture.ts';
import { execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';

// ct guests' roots are mounted in their own mount namespaces only (docs/decisions/0064): the
// host's mount table does not grow with the number of running guests, so a start does not copy
// one mount per running guest and an unmount does not walk them. Guarded at a CI-sized N (this
// process plays the daemon: the driver runs in it). Counts are asserted, never times. The same
// guests are then deleted: a delete spawns no command (a spawn forks the whole daemon, decision
// 0091) and still leaves nothing behind.

/** Running guests at once: enough that one host mount per guest would stand out. */
const N = 200;
/** Starts at once (the daemon's controllers start several guests at a time too). */
const PARALLEL = 4;

/** The host runner, recording every command run or spawned through it. */
function recordingRunner(): ProcessRunner & { commands: string[] } {
  const host = hostRunner();
  const commands: string[] = [];
  return {
    commands,
    run(argv, options) {
      commands.push(argv.join(' '));
      return host.run(argv, options);
    },
    spawn(argv, options) {
      commands.push(argv.join(' '));
      return host.spawn(argv, options);
    },
  };
}

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

  test(`deleting the ${N} running guests spawns no command and leaves nothing; a process left in a cgroup is runc's to kill`, async () => {
    const runner = recordingRunner();
    const daemon = createCtDriver({
      runner,
      log: silentLogger(),
      stateDir: fx.stateDir,
      idmapBase: TEST_IDMAP_BASE,
    });
    const inits = new Map<string, ProcessIdentity>();
    for (const spec of made) {
      const state = await daemon.inspect(spec, undefined);
      if (state.process) inits.set(spec.name, state.process);
    }
    assert.equal(inits.size, N, 'every guest of the first test runs');
    const running = made.filter((spec) => inits.has(spec.name));
    const [strayGuest] = running;
    assert.ok(strayGuest);
    // A host process moved into a guest's cgroups, outside its pid namespace: killing the guest's
    // init does not end it, so its cgroups stay busy until runc kills what they hold (runc kill --all).
    const stray = spawn('sleep', ['120'], { stdio: 'ignore' });
    try {
      await once(stray, 'spawn');
      const strayCgroups = await cgroupDirs(`${cgroupParentOf(fx.stateDir)}/${strayGuest.name}`);
      assert.ok(strayCgroups.length > 0);
      for (const dir of strayCgroups) await writeFile(join(dir, 'cgroup.procs'), String(stray.pid));
      const strayEnd = once(stray, 'exit');
      // The controller stops a running guest, then deletes it; a delete on its own stops it too.
      await inBatches(running, PARALLEL, async (spec) => {
        if (Number(spec.name.slice(3)) % 2 === 0) await daemon.stop(spec, { timeoutMs: 0, force: true });
        await daemon.delete(spec);
      });
      const runc = `runc --root ${fx.runcRoot}`;
      assert.deepEqual(runner.commands, [
        `${runc} kill --all ${strayGuest.name} KILL`,
        `${runc} delete --force ${strayGuest.name}`,
      ]);
      assert.deepEqual(await strayEnd, [null, 'SIGKILL'], 'the process left in the cgroup was killed');
    } finally {
      stray.kill('SIGKILL');
    }
    for (const spec of running) {
      assert.equal(
        await isSameProcess(inits.get(spec.name) as ProcessIdentity),
        false,
        `${spec.name} is gone`,
      );
      await fx.assertNoLeftovers(spec);
    }
    assert.deepEqual(await cgroupDirs(cgroupParentOf(fx.stateDir)), [], "the guests' parent cgroup is gone");
    assert.deepEqual(await readdir(join(fx.stateDir, 'idmap')), [], 'every id range is given back');
    assert.deepEqual(await readdir(fx.runcRoot), [], 'runc holds no container');
    assert.deepEqual(await mountsUnder(fx.stateDir), []);
  });
});
