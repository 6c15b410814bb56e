import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import type { GuestSpec, ImageRecord } from '../../core/types.ts';
import { sharedMemoryCgroup } from '../../host/cgroups-v1.ts';
import { silentLogger } from '../../host/logger.ts';
import { readProcessIdentity } from '../../host/proc-stat.ts';
import type { GuestNetworking } from '../../network/guest-networking.ts';
import { cgroupParentOf } from '../guest-cgroup.ts';
import type { ImageHandle } from '../guest-driver.ts';
import { createCtDriver } from './ct-driver.ts';
import { ownRangeBase } from './id-ranges.ts';
import { MEMORY_CGROUP_ANNOTATION, type OciSpec, STOP_SIGNAL_ANNOTATION } from './oci-spec.ts';
import { privateRootArgv, ROOT_MOUNT_FAILED_EXIT } from './overlay-rootfs.ts';

const guest = (config: Record<string, string> = {}): GuestSpec => ({
  name: 'g1',
  project: 'default',
  model: 'ct',
  image: 'abc',
  imageAlias: 'busybox',
  config,
  desired: 'Running',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 10_000,
  stopForce: false,
  deleting: false,
  location: 'h1',
  createdAt: '2026-01-01T00:00:00Z',
});

const image: ImageHandle = {
  record: {
    fingerprint: 'abc',
    properties: { init: '["/sbin/init"]', 'stop.signal': 'SIGUSR2' },
  } as unknown as ImageRecord,
  rootfs: '/images/abc/rootfs',
  baseDisk: async () => '/images/abc/disk.ext4',
};

describe('ct driver against a recording runner', () => {
  let dir: string;
  let stateDir: string;
  const sleepers: ChildProcess[] = [];

  /**
   * A real process standing in for the guest's init, so /proc checks see it: `sleep 60`, or a
   * shell that sets up `script` and then execs sleep (found as sleep once its script has run).
   */
  const fakeInit = async (script?: string): Promise<{ child: ChildProcess; state: string }> => {
    const child = script
      ? spawn('sh', ['-c', `${script}; exec sleep 60`], { stdio: 'ignore' })
      : spawn('sleep', ['60'], { stdio: 'ignore' });
    sleepers.push(child);
    await new Promise((r) => child.once('spawn', r));
    if (script) {
      const comm = `/proc/${child.pid}/comm`;
      while ((await readFile(comm, 'utf8').catch(() => '')).trim() !== 'sleep') await sleep(5);
    }
    const id = await readProcessIdentity(child.pid!);
    assert.ok(id);
    const state = JSON.stringify({ init_process_pid: id.pid, init_process_start: id.startTime });
    return { child, state };
  };

  const writeRuncState = async (state: string, name = 'g1') => {
    await mkdir(join(stateDir, 'runc', name), { recursive: true });
    await writeFile(join(stateDir, 'runc', name, 'state.json'), state);
  };

  /** What the ended child died of (its signal), waiting for it when it still runs. */
  const endOf = async (child: ChildProcess): Promise<string | null> =>
    child.exitCode !== null || child.signalCode !== null ? child.signalCode : (await once(child, 'exit'))[1];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ct-unit-'));
    await chmod(dir, 0o711);
    stateDir = join(dir, 'state');
    await mkdir(stateDir);
  });
  after(async () => {
    for (const s of sleepers) s.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  test('start mounts the overlay on the idmapped image tree and runs runc detached, returning init identity', async () => {
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await driver.create(guest({ 'limits.memory': '64MiB' }), image);
    const init = await fakeInit();
    runner.respond((argv) =>
      argv.includes('run')
        ? {
            effect: async () => {
              await writeFile(join(stateDir, 'guests', 'g1', 'init.pid'), String(init.child.pid));
              await writeRuncState(init.state);
            },
          }
        : undefined,
    );
    const identity = await driver.start(guest({ 'limits.memory': '64MiB' }), image);
    assert.equal(identity.pid, init.child.pid);
    const g = join(stateDir, 'guests', 'g1');
    const cmds = runner.commands();
    const own = ownRangeBase(1_000_000, 0);
    const runcArgv = [
      'runc',
      '--root',
      join(stateDir, 'runc'),
      'run',
      '--detach',
      '--no-new-keyring',
      '--pid-file',
      `${g}/init.pid`,
      '--bundle',
      `${g}/bundle`,
      'g1',
    ];
    // The root is mounted in a mount namespace of the start's own, where runc then runs (decision 64).
    const run = runner.calls.find((c) => c.argv.includes('/usr/bin/perl'));
    assert.deepEqual(
      run?.argv,
      privateRootArgv(
        {
          tree: '/images/abc/rootfs',
          staging: `${g}/staging`,
          upper: `${g}/upper`,
          work: `${g}/work`,
          target: `${g}/rootfs`,
          idmap: { base: own, size: 65536 },
        },
        runcArgv,
      ),
    );
    assert.deepEqual(run?.argv.slice(-runcArgv.length), runcArgv);
    assert.equal(run?.kind, 'spawn');
    // perl is spawned with PATH alone (no `env -i` exec before it): nothing of the daemon's environment.
    assert.equal(run?.argv[0], '/usr/bin/perl');
    assert.deepEqual(run?.options, {
      ...run?.options,
      env: { PATH: process.env.PATH || '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
      envOnly: true,
    });
    assert.equal(
      runner.calls.filter((c) => c.argv.includes('/usr/bin/perl')).length,
      1,
      'no mount on the host',
    );
    assert.ok(!cmds.some((c) => c.startsWith('mount ')));
    // Closed to host users (decision 18): the guest's root passes its dir, nobody else does.
    const dirStat = await stat(g);
    assert.deepEqual([dirStat.uid, dirStat.gid, dirStat.mode & 0o777], [0, own, 0o710]);
    assert.equal((await stat(`${g}/bundle`)).mode & 0o777, 0o700);
    assert.equal((await stat(`${g}/bundle/config.json`)).mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(await readFile(`${g}/idmap.json`, 'utf8')), {
      base: own,
      size: 65536,
      slot: 0,
    });
    assert.equal(await readlink(join(stateDir, 'idmap', '0')), 'g1');
    assert.equal((await stat(`${g}/upper`)).uid, own);
    const oci = JSON.parse(await readFile(`${g}/bundle/config.json`, 'utf8')) as OciSpec;
    assert.deepEqual(oci.linux.uidMappings, [{ containerID: 0, hostID: own, size: 65536 }]);
    assert.equal(oci.linux.cgroupsPath, `${cgroupParentOf(stateDir)}/g1`);
    assert.equal(oci.linux.resources.memory?.limit, 64 * 2 ** 20);
    assert.equal((await driver.inspect(guest(), identity)).state, 'running');
    assert.equal(
      (await driver.inspect(guest(), { ...identity, startTime: identity.startTime + 1 })).state,
      'stopped',
    );
  });

  test('start keeps the earlier console output in console.log.1 once it passes 1 MiB', async () => {
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    const spec = guest();
    // A fresh g1: the fake runner cannot stop the previous test's one.
    await rm(join(stateDir, 'guests', 'g1'), { recursive: true, force: true });
    await rm(join(stateDir, 'runc', 'g1'), { recursive: true, force: true });
    await driver.create(spec, image);
    const log = join(stateDir, 'guests', 'g1', 'console.log');
    await writeFile(log, 'x'.repeat(1024 * 1024 + 1));
    const init = await fakeInit();
    runner.respond((argv) =>
      argv.includes('run')
        ? {
            effect: async () => {
              await writeFile(join(stateDir, 'guests', 'g1', 'init.pid'), String(init.child.pid));
              await writeRuncState(init.state);
            },
          }
        : undefined,
    );
    await driver.start(spec, image);
    assert.equal((await stat(`${log}.1`)).size, 1024 * 1024 + 1);
    assert.equal((await stat(log)).size, 0);
  });

  test('a graceful stop signals init from the daemon with the image stop signal and runs no command', async () => {
    const init = await fakeInit();
    await writeRuncState(init.state);
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await driver.stop(guest(), { timeoutMs: 5000, force: false });
    // The image's SIGUSR2 (kept in the bundle's annotation), not a SIGKILL after the timeout.
    assert.equal(await endOf(init.child), 'SIGUSR2');
    // init gone and its cgroups removable: runc's state dir is removed as runc delete would (decision 0091).
    assert.deepEqual(runner.commands(), []);
    assert.equal(existsSync(join(stateDir, 'runc', 'g1')), false, "runc's state of the guest is gone");
  });

  test('stop SIGKILLs init itself after the timeout when init ignores the stop signal', async () => {
    const init = await fakeInit("trap '' USR2");
    await writeRuncState(init.state);
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    const t0 = Date.now();
    await driver.stop(guest(), { timeoutMs: 300, force: false });
    assert.ok(Date.now() - t0 >= 300, 'waited for the timeout first');
    assert.equal(await endOf(init.child), 'SIGKILL');
    assert.deepEqual(runner.commands(), []);
    assert.equal(existsSync(join(stateDir, 'runc', 'g1')), false, "runc's state of the guest is gone");
  });

  test('a stop signal the daemon cannot number is left to runc kill', async () => {
    const spec = { ...guest(), name: 'g2' };
    const init = await fakeInit();
    await writeRuncState(init.state, 'g2');
    const bundle = join(stateDir, 'guests', 'g2', 'bundle');
    await mkdir(bundle, { recursive: true });
    await writeFile(
      join(bundle, 'config.json'),
      JSON.stringify({ annotations: { [STOP_SIGNAL_ANNOTATION]: 'SIGBOGUS' } }),
    );
    const runner = fakeRunner((argv) =>
      argv.at(-1) === 'SIGBOGUS' ? { effect: () => void init.child.kill('SIGTERM') } : undefined,
    );
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await driver.stop(spec, { timeoutMs: 5000, force: false });
    assert.equal(await endOf(init.child), 'SIGTERM');
    assert.deepEqual(runner.commands(), [`runc --root ${join(stateDir, 'runc')} kill g2 SIGBOGUS`]);
    await rm(join(stateDir, 'guests', 'g2'), { recursive: true, force: true });
  });

  test("a real-time stop signal (systemd's SIGRTMIN+3, which runc 1.1 refuses) reaches init as 37", async () => {
    const spec = { ...guest(), name: 'g2' };
    // An init that exits 99 on signal 37 (a shell's trap: it runs once the sleep in progress ends).
    const child = spawn('sh', ['-c', "trap 'exit 99' 37; echo ready; while :; do sleep 0.05; done"], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    sleepers.push(child);
    await once(child.stdout!, 'data');
    const id = await readProcessIdentity(child.pid!);
    assert.ok(id);
    await writeRuncState(
      JSON.stringify({ init_process_pid: id.pid, init_process_start: id.startTime }),
      'g2',
    );
    const bundle = join(stateDir, 'guests', 'g2', 'bundle');
    await mkdir(bundle, { recursive: true });
    await writeFile(
      join(bundle, 'config.json'),
      JSON.stringify({ annotations: { [STOP_SIGNAL_ANNOTATION]: 'SIGRTMIN+3' } }),
    );
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await driver.stop(spec, { timeoutMs: 5000, force: false });
    await endOf(child);
    assert.equal(child.exitCode, 99, 'init took signal 37 and exited (not SIGKILLed after the timeout)');
    assert.deepEqual(runner.commands(), []);
    await rm(join(stateDir, 'guests', 'g2'), { recursive: true, force: true });
  });

  test('force stop kills at once and runs no command (decision 0091)', async () => {
    const init = await fakeInit();
    await writeRuncState(init.state);
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await driver.stop(guest(), { timeoutMs: 60_000, force: true });
    assert.equal(init.child.signalCode ?? (await once(init.child, 'exit'))[1], 'SIGKILL');
    assert.deepEqual(runner.commands(), []);
    assert.equal(existsSync(join(stateDir, 'runc', 'g1')), false, "runc's state of the guest is gone");
  });

  test('stop on a guest whose init already died only cleans up', async () => {
    await writeRuncState(JSON.stringify({ init_process_pid: 999_999_999, init_process_start: 1 }));
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await driver.stop(guest(), { timeoutMs: 5000, force: false });
    assert.deepEqual(runner.commands(), []);
    assert.equal(existsSync(join(stateDir, 'runc', 'g1')), false, "runc's state of the guest is gone");
  });

  test('update applies limits live with runc update and returns keys that need a restart', async () => {
    const init = await fakeInit();
    await writeRuncState(init.state);
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    // As started with a memory limit: a memory cgroup of its own (decision 0093).
    const config = join(stateDir, 'guests', 'g1', 'bundle', 'config.json');
    const started = JSON.parse(await readFile(config, 'utf8')) as OciSpec;
    delete started.annotations[MEMORY_CGROUP_ANNOTATION];
    await writeFile(config, JSON.stringify(started));
    const spec = guest({ 'limits.memory': '128MiB', 'limits.cpu': '1.5', 'security.privileged': 'true' });
    const restart = await driver.update(spec, [
      'limits.memory',
      'limits.cpu',
      'security.privileged',
      'user.x',
    ]);
    assert.deepEqual(restart, ['security.privileged']);
    const bytes = String(128 * 2 ** 20);
    assert.deepEqual(runner.commands(), [
      `runc --root ${join(stateDir, 'runc')} update --memory ${bytes} --memory-swap ${bytes} --cpu-period 100000 --cpu-quota 150000 g1`,
    ]);
    const oci = JSON.parse(
      await readFile(join(stateDir, 'guests', 'g1', 'bundle', 'config.json'), 'utf8'),
    ) as OciSpec;
    assert.equal(oci.linux.resources.memory?.limit, 128 * 2 ** 20, 'bundle follows the new limits');
    init.child.kill('SIGKILL');
  });

  test('a guest without a memory limit starts in the shared memory cgroup, and a limit set while it runs waits for a start', async () => {
    await writeRuncState(JSON.stringify({ init_process_pid: 999_999_999, init_process_start: 1 }));
    const runner = fakeRunner();
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    const init = await fakeInit();
    runner.respond((argv) =>
      argv.includes('run')
        ? {
            effect: async () => {
              await writeFile(join(stateDir, 'guests', 'g1', 'init.pid'), String(init.child.pid));
              await writeRuncState(init.state);
            },
          }
        : undefined,
    );
    await driver.start(guest(), image);
    const shared = await sharedMemoryCgroup(cgroupParentOf(stateDir));
    const run = runner.calls.find((c) => c.argv.includes('/usr/bin/perl'));
    const runcAt = run?.argv.indexOf('runc') ?? -1;
    // Decision 0093: the helper joins the shared cgroup and hides the memory hierarchy from runc.
    assert.deepEqual(run?.argv.slice(runcAt - 2, runcAt), shared ? [shared.mount, shared.dir] : ['-', '-']);
    const bundle = join(stateDir, 'guests', 'g1', 'bundle', 'config.json');
    const oci = JSON.parse(await readFile(bundle, 'utf8')) as OciSpec;
    assert.equal(oci.annotations[MEMORY_CGROUP_ANNOTATION], shared ? 'shared' : undefined);
    if (shared) {
      const limited = guest({ 'limits.memory': '64MiB', 'limits.processes': '10' });
      assert.deepEqual(await driver.update(limited, ['limits.memory', 'limits.processes']), [
        'limits.memory',
      ]);
      assert.deepEqual(runner.commands().slice(-1), [
        `runc --root ${join(stateDir, 'runc')} update --pids-limit 10 g1`,
      ]);
      const removed = await driver.update(guest(), ['limits.memory']);
      assert.deepEqual(removed, [], 'no limit to remove, nothing to wait for');
      assert.ok(
        !runner.commands().some((c) => c.includes('--memory')),
        'runc is never asked for a memory limit',
      );
    }
    init.child.kill('SIGKILL');
    await once(init.child, 'exit');
  });

  test('validate refuses limits.disk with NotSupported', () => {
    const driver = createCtDriver({
      runner: fakeRunner(),
      log: silentLogger(),
      stateDir,
      idmapBase: 1_000_000,
    });
    assert.throws(() => driver.validate(guest({ 'limits.disk': '1GiB' })), { code: 'NotSupported' });
  });

  test('a failed runc run is undone: no runc container, no mount, the guest stays created', async () => {
    await rm(join(stateDir, 'runc'), { recursive: true, force: true });
    // Like real runc when init fails after the container was made: its state dir stays behind.
    const runner = fakeRunner((argv) => {
      if (!argv.includes('run')) return undefined;
      mkdirSync(join(stateDir, 'runc', 'g1'), { recursive: true });
      return { code: 1, stderr: 'no such file' };
    });
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await assert.rejects(driver.start(guest(), image), { code: 'Internal' });
    assert.equal(existsSync(join(stateDir, 'runc', 'g1')), false, "runc's state of the failed run is gone");
    assert.equal((await driver.inspect(guest(), undefined)).state, 'stopped');
  });

  test("a failed runc run that left runc's init alive is killed and deleted by runc", async () => {
    await rm(join(stateDir, 'runc'), { recursive: true, force: true });
    // runc init waiting in the created state: its cgroup is busy, which only runc cleans up.
    const init = await fakeInit();
    const runner = fakeRunner((argv) => {
      if (argv.includes('run')) {
        mkdirSync(join(stateDir, 'runc', 'g1'), { recursive: true });
        writeFileSync(join(stateDir, 'runc', 'g1', 'state.json'), init.state);
        return { code: 1, stderr: 'no such file' };
      }
      if (argv.includes('KILL')) return { effect: () => void init.child.kill('SIGKILL') };
      if (argv.includes('delete'))
        return { effect: () => rm(join(stateDir, 'runc', 'g1'), { recursive: true }) };
      return undefined;
    });
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await assert.rejects(driver.start(guest(), image), { code: 'Internal' });
    const cmds = runner.commands().filter((c) => c.startsWith('runc'));
    const runc = `runc --root ${join(stateDir, 'runc')}`;
    assert.deepEqual(cmds.slice(cmds.findIndex((c) => c.includes(' run ')) + 1), [
      `${runc} kill --all g1 KILL`,
      `${runc} delete --force g1`,
    ]);
    assert.equal((await driver.inspect(guest(), undefined)).state, 'stopped');
  });

  test("a root the helper cannot mount fails the start with the helper's step, and runc never ran", async () => {
    await rm(join(stateDir, 'runc'), { recursive: true, force: true });
    const log = join(stateDir, 'guests', 'g1', 'console.log');
    const runner = fakeRunner((argv) =>
      argv.includes('/usr/bin/perl')
        ? {
            code: ROOT_MOUNT_FAILED_EXIT,
            effect: () =>
              writeFile(log, 'idmapping the image tree (mount_setattr): Invalid argument\n', { flag: 'a' }),
          }
        : undefined,
    );
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    await assert.rejects(driver.start(guest(), image), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'FailedPrecondition');
      assert.match(e.message, /mount_setattr.*idmapped mounts \(Linux 5\.19 or later\)/);
      return true;
    });
    assert.equal((await driver.inspect(guest(), undefined)).state, 'stopped');
  });
  /** A driver whose runner starts `init` (a real process) where the root helper's runc would. */
  const startingRunner = (name: string, makeInit: () => Promise<{ child: ChildProcess; state: string }>) => {
    const runner = fakeRunner();
    runner.respond((argv) =>
      argv.includes('/usr/bin/perl') && argv.at(-1) === name
        ? {
            effect: async () => {
              const init = await makeInit();
              await writeFile(join(stateDir, 'guests', name, 'init.pid'), String(init.child.pid));
              await writeRuncState(init.state, name);
            },
          }
        : undefined,
    );
    return runner;
  };

  test('processes spawned (decision 0091): create+start 1, graceful stop 0, restart 1, forced delete 0', async () => {
    const spec = { ...guest(), name: 'g3' };
    const runner = startingRunner('g3', () => fakeInit());
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000 });
    const spawned: Record<string, number> = {};
    const step = async (name: string, work: () => Promise<unknown>) => {
      const from = runner.calls.length;
      await work();
      spawned[name] = runner.calls.length - from;
    };
    await step('create+start', async () => {
      await driver.create(spec, image);
      await driver.start(spec, image);
    });
    await step('graceful stop', () => driver.stop(spec, { timeoutMs: 5000, force: false }));
    await driver.start(spec, image);
    // A restart is a graceful stop and a start (guest-controller.ts).
    await step('restart', async () => {
      await driver.stop(spec, { timeoutMs: 5000, force: false });
      await driver.start(spec, image);
    });
    await step('delete', () => driver.delete(spec));
    assert.deepEqual(
      spawned,
      { 'create+start': 1, 'graceful stop': 0, restart: 1, delete: 0 },
      runner.commands().join('\n'),
    );
    // Each one is the root helper that execs `runc run --detach` (overlay-rootfs.ts).
    assert.ok(runner.calls.every((c) => c.argv.includes('/usr/bin/perl') && c.argv.includes('run')));
    assert.equal(existsSync(join(stateDir, 'guests', 'g3')), false);
  });

  test("a guest with NICs is started by reading runc's exec FIFO, not by runc start", async () => {
    const spec = { ...guest(), name: 'g4' };
    const fifo = join(stateDir, 'runc', 'g4', 'exec.fifo');
    let plugged = 0;
    const network = {
      hasNics: () => true,
      plugVeths: async () => void plugged++,
      unplug: async () => {},
    } as unknown as GuestNetworking;
    // Like runc's init: opens the FIFO for writing (waiting for a reader), writes a byte, then execs.
    const runner = startingRunner('g4', async () => {
      await mkdir(join(stateDir, 'runc', 'g4'), { recursive: true });
      execFileSync('mkfifo', [fifo]);
      const child = spawn('sh', ['-c', `printf 0 > ${fifo}; exec sleep 60`], { stdio: 'ignore' });
      sleepers.push(child);
      await once(child, 'spawn');
      const id = await readProcessIdentity(child.pid!);
      assert.ok(id);
      return { child, state: JSON.stringify({ init_process_pid: id.pid, init_process_start: id.startTime }) };
    });
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000, network });
    await driver.create(spec, image);
    const identity = await driver.start(spec, image);
    assert.equal(plugged, 1, 'the NICs were plugged between create and start');
    assert.deepEqual(
      runner.calls.map((c) => c.argv.slice(c.argv.indexOf('--root') + 2, c.argv.indexOf('--root') + 3)),
      [['create']],
      'one spawn: the root helper with runc create; no runc start',
    );
    assert.equal(existsSync(fifo), false, 'the FIFO is gone, as runc start leaves it');
    const comm = `/proc/${identity.pid}/comm`;
    while ((await readFile(comm, 'utf8')).trim() !== 'sleep') await sleep(5);
    await driver.delete(spec);
  });

  test('a created guest whose init dies before it starts fails the start, and runc never runs', async () => {
    const spec = { ...guest(), name: 'g5' };
    let init: ChildProcess | undefined;
    const network = {
      hasNics: () => true,
      // The init dies once the driver has read who it is (the NICs are plugged next), whatever the
      // load: the start's poll of the FIFO must tell. (Killed on a timer, a slow first step found it
      // gone before that read, and the start failed on the read instead: another message.)
      plugVeths: async () => {
        init?.kill('SIGKILL');
        if (init) await endOf(init);
      },
      unplug: async () => {},
    } as unknown as GuestNetworking;
    const runner = startingRunner('g5', async () => {
      await mkdir(join(stateDir, 'runc', 'g5'), { recursive: true });
      execFileSync('mkfifo', [join(stateDir, 'runc', 'g5', 'exec.fifo')]);
      const made = await fakeInit();
      init = made.child;
      return made;
    });
    const driver = createCtDriver({ runner, log: silentLogger(), stateDir, idmapBase: 1_000_000, network });
    await driver.create(spec, image);
    await assert.rejects(driver.start(spec, image), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'Internal');
      assert.match(e.message, /exited before it started/);
      return true;
    });
    assert.equal(await endOf(init!), 'SIGKILL');
    assert.equal(runner.calls.length, 1, 'only the root helper ran');
    assert.equal(existsSync(join(stateDir, 'runc', 'g5')), false, "runc's state of the failed start is gone");
    await driver.delete(spec);
  });
});

test('usage() of many guests at once takes turns and gives the event loop a turn between batches', async () => {
  // The metric sampler asks for every running guest's usage at once (Promise.all); the reads are
  // synchronous, so without turns the event loop waited for all of them (seconds at 2,000 guests).
  const driver = createCtDriver({
    runner: fakeRunner(),
    log: silentLogger(),
    stateDir: '/nonexistent/trivisor-state',
    idmapBase: 1_000_000,
  });
  let done = 0;
  let doneAtTurn: number | undefined;
  const all = Promise.all(
    Array.from({ length: 200 }, (_, i) => driver.usage({ ...guest(), name: `g${i}` }).then(() => done++)),
  );
  setImmediate(() => {
    doneAtTurn = done;
  });
  const usages = await all;
  assert.equal(usages.length, 200);
  assert.ok(doneAtTurn !== undefined && doneAtTurn < 200, `the loop turned after ${doneAtTurn} of 200`);
});
