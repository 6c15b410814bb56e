import assert from 'node:assert/strict';
import { access, mkdir, readFile, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isTrivisorError } from '../../src/core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../src/core/types.ts';
import { umlCgroupPids } from '../../src/drivers/pvm/uml-cgroup.ts';
import { BWRAP } from '../../src/drivers/pvm/uml-jail.ts';
import { createMconsoleClient } from '../../src/drivers/pvm/uml-mconsole.ts';
import { readChildPids, readProcessOwner } from '../../src/host/proc-stat.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { eventually, execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';
import { makePvmFixture, type PvmFixture } from './pvm-fixture.ts';

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Asserts that `work` fails with a TrivisorError of `code`. */
async function rejectsWith(work: () => unknown, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(
    async () => work(),
    (e: unknown) => {
      assert.ok(isTrivisorError(e), `expected a TrivisorError, got ${String(e)}`);
      assert.equal(e.code, code, e.message);
      if (message) assert.match(e.message, message);
      return true;
    },
  );
}

/** A script for a separate Node process: a driver on `stateDir` runs `echo <text>` in the guest, then the process exits. */
function execOnceScript(stateDir: string, name: string, text: string): string {
  const at = (rel: string) => JSON.stringify(new URL(rel, import.meta.url).pathname);
  return `
    import { createPvmDriver } from ${at('../../src/drivers/pvm/pvm-driver.ts')};
    import { silentLogger } from ${at('../../src/host/logger.ts')};
    import { hostRunner } from ${at('../../src/host/runner.ts')};
    import { execIn } from ${at('../drivers/exec-helpers.ts')};
    import { testGuestSpec } from ${at('../drivers/guest-spec.ts')};
    const driver = createPvmDriver({ runner: hostRunner(), log: silentLogger(), stateDir: ${JSON.stringify(stateDir)}, idmapBase: 1000000 });
    const r = await execIn(driver, testGuestSpec(${JSON.stringify(name)}, 'pvm'), ['echo', ${JSON.stringify(text)}]);
    process.stdout.write(r.stdout);
    // No process.exit: an open agent line must not keep a finished daemon alive.
    process.exitCode = r.code;
  `;
}

describe('pvm guests (User-Mode Linux) on this host', () => {
  let f: PvmFixture;
  const specs: GuestSpec[] = [];
  const guest = (name: string, config: Record<string, string> = {}): GuestSpec => {
    const s = testGuestSpec(name, 'pvm', config);
    specs.push(s);
    return s;
  };
  const guestDir = (s: GuestSpec) => join(f.stateDir, 'guests', s.name);
  /** This member's runtime directory of the guest (decision 0066). */
  const runtimeDir = (s: GuestSpec) => join(f.stateDir, 'run', 'pvm', s.name);

  before(async () => {
    f = await makePvmFixture();
  });

  after(async () => {
    for (const s of specs) {
      await f.driver.stop(s, { timeoutMs: 0, force: true }).catch(() => {});
      await f.driver.delete(s).catch(() => {});
    }
    await f.cleanup();
  });

  test('a guest runs User-Mode Linux, as its own unprivileged host uid, in its own cgroup', async () => {
    const a = guest('lp-a', { 'limits.memory': '64MiB' });
    const b = guest('lp-b', { 'limits.memory': '64MiB' });
    await f.driver.create(a, f.image);
    await f.driver.create(b, f.image);
    const idA = await f.driver.start(a, f.image);
    const idB = await f.driver.start(b, f.image);

    const cpuinfo = await execIn(f.driver, a, ['cat', '/proc/cpuinfo']);
    assert.equal(cpuinfo.code, 0, cpuinfo.stderr);
    assert.match(cpuinfo.stdout, /User Mode Linux/);
    const inside = await execIn(f.driver, a, ['/bin/sh', '-c', 'id -u; hostname']);
    assert.equal(inside.stdout, '0\nlp-a\n', 'root inside the guest, named after it');

    const owners = async (s: GuestSpec, id: ProcessIdentity): Promise<Set<number>> => {
      const pids = await umlCgroupPids(`${f.cgroupParent}/${s.name}`);
      assert.ok(pids.includes(id.pid), 'the main UML process is in the guest cgroup');
      assert.ok(pids.length >= 3, `the kernel's helpers are in it too: ${pids.join(' ')}`);
      const uids = new Set<number>();
      for (const pid of pids) {
        // bwrap's first process waits for the kernel outside its jail, root without a capability
        // (decision 17; pvm-jail.test.ts checks it): it runs nothing of the guest's.
        if ((await readlink(`/proc/${pid}/exe`).catch(() => '')) === BWRAP) {
          assert.deepEqual(await readChildPids(pid), [id.pid], "bwrap's process is the kernel's parent");
          assert.match(await readFile(`/proc/${pid}/status`, 'utf8'), /^CapEff:\s+0+$/m);
          continue;
        }
        const owner = await readProcessOwner(pid);
        if (owner) uids.add(owner.uid);
      }
      return uids;
    };
    const uidsA = await owners(a, idA);
    const uidsB = await owners(b, idB);
    assert.equal(uidsA.size, 1, 'one uid for every host process of a guest');
    assert.ok(!uidsA.has(0) && !uidsB.has(0), 'no pvm guest process runs as root on the host');
    const [uidA] = [...uidsA];
    const [uidB] = [...uidsB];
    assert.notEqual(uidA, uidB, 'two guests never share a host uid');
    // Everything the kernel writes is the guest's uid's; what steers the daemon stays root's.
    assert.equal((await stat(join(guestDir(a), 'disk', 'root.cow'))).uid, uidA);
    assert.equal((await stat(join(runtimeDir(a), 'uml', 'uml', 'mconsole'))).uid, uidA);
    assert.equal((await stat(join(runtimeDir(a), 'uml.json'))).uid, 0);
    assert.equal((await stat(runtimeDir(a))).uid, 0);
    assert.equal((await stat(guestDir(a))).uid, 0);

    // The cgroup holds the limits: RAM plus the kernel's overhead, pids.
    const memLimit = Number(
      (
        await readFile(`/sys/fs/cgroup/memory${f.cgroupParent}/${a.name}/memory.limit_in_bytes`, 'utf8')
      ).trim(),
    );
    assert.ok(memLimit > 64 * 2 ** 20 && memLimit < 256 * 2 ** 20, `memory limit ${memLimit}`);

    // mconsole answers: version of the guest kernel.
    const mconsole = createMconsoleClient(join(runtimeDir(a), 'uml', 'uml', 'mconsole'), {
      runner: hostRunner(),
    });
    assert.match(await mconsole.version(), /^Linux lp-a /);

    await f.driver.stop(a, { timeoutMs: 20_000, force: false });
    await f.driver.stop(b, { timeoutMs: 0, force: true });
    await f.driver.delete(a);
    await f.driver.delete(b);
    await f.assertNoLeftovers(a);
    await f.assertNoLeftovers(b);
  });

  test('a UML kernel that dies is noticed by inspect(), and its helpers are cleaned up', async () => {
    const s = guest('dies');
    await f.driver.create(s, f.image);
    const id = await f.driver.start(s, f.image);
    // Kill every host process of the guest at once, as the OOM killer or an admin might.
    // A UML process killed first takes its other processes with it: one already gone is not an error.
    for (const pid of await umlCgroupPids(`${f.cgroupParent}/${s.name}`)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
      }
    }
    assert.ok(
      await eventually(async () => (await f.driver.inspect(s, id)).state === 'stopped', 10_000),
      'inspect() notices the dead kernel',
    );
    // A fresh driver (a restarted daemon) without the recorded identity sees the same.
    assert.equal((await f.reopen().inspect(s, undefined)).state, 'stopped');
    await f.driver.stop(s, { timeoutMs: 10_000, force: false });
    await f.assertNoLeftovers(s, { runtimeOnly: true });
    await f.driver.delete(s);
    await f.assertNoLeftovers(s);
  });

  test('a restarted daemon re-adopts a running guest and talks to its agent', async () => {
    const s = guest('adopt');
    await f.driver.create(s, f.image);
    const id = await f.driver.start(s, f.image);
    // A daemon that talked to the agent and died: its end of the line closes with it.
    for (let i = 0; i < 2; i++) {
      const child = await hostRunner().run(
        [process.execPath, '--input-type=module', '-e', execOnceScript(f.stateDir, s.name, `child ${i}`)],
        { timeoutMs: 30_000 },
      );
      assert.equal(child.stdout, `child ${i}\n`);
    }
    const again = f.reopen();
    const state = await again.inspect(s, undefined);
    assert.equal(state.state, 'running');
    assert.deepEqual(state.process, id);
    const r = await execIn(again, s, ['/bin/sh', '-c', 'echo adopted; cat /proc/1/comm']);
    assert.equal(r.stdout, 'adopted\ninit\n');
    await again.freeze(s);
    assert.equal((await f.reopen().inspect(s, id)).state, 'frozen');
    await again.unfreeze(s);
    await again.stop(s, { timeoutMs: 20_000, force: false });
    assert.equal((await f.driver.inspect(s, id)).state, 'stopped');
    await again.delete(s);
    await f.assertNoLeftovers(s);
  });

  test('a guest started before decision 0066 (its runtime files in its directory) is adopted without a restart; a stale uml_dir there from another member, its pid file naming a live process here, does not stop a start', async () => {
    const s = guest('legacy');
    await f.driver.create(s, f.image);
    const id = await f.driver.start(s, f.image);
    const run = join(f.stateDir, 'run', 'pvm', s.name);
    const dir = guestDir(s);
    // The layout before 0066, made of the running UML's own files: a socket and FIFOs renamed keep working.
    await rename(join(run, 'uml'), join(dir, 'run'));
    for (const file of ['uml.json', 'agent.in', 'agent.out', 'console.in']) {
      await rename(join(run, file), join(dir, file));
    }
    await rm(run, { recursive: true, force: true });
    const again = f.reopen();
    const state = await again.inspect(s, undefined);
    assert.equal(state.state, 'running');
    assert.deepEqual(state.process, id);
    assert.equal((await execIn(again, s, ['echo', 'adopted'])).stdout, 'adopted\n');
    assert.ok(await exists(join(run, 'uml.json')));
    assert.ok(!(await exists(join(dir, 'uml.json'))));
    await again.stop(s, { timeoutMs: 20_000, force: false });
    assert.ok(!(await exists(join(dir, 'run'))), 'the old uml_dir goes with the UML that used it');

    // What a member that ran the guest on a shared pool before decision 0066 left in its directory.
    await mkdir(join(dir, 'run', 'uml'), { recursive: true });
    await writeFile(join(dir, 'run', 'uml', 'pid'), `${process.pid}\n`);
    await writeFile(
      join(dir, 'uml.json'),
      JSON.stringify({ pid: process.pid, startTime: 1, uid: 0, memoryBytes: 0 }),
    );
    const fresh = await again.start(s, f.image);
    assert.notEqual(fresh.pid, process.pid);
    assert.equal((await execIn(again, s, ['echo', 'fresh'])).stdout, 'fresh\n');
    assert.ok(!(await exists(join(dir, 'run'))));
    await again.delete(s);
    assert.ok(!(await exists(run)), "the guest's runtime directory goes with it");
    await f.assertNoLeftovers(s);
  });

  test('memory too small is refused with InvalidArgument before anything is made', async () => {
    const s = guest('tiny', { 'limits.memory': '16MiB' });
    await rejectsWith(() => f.driver.validate(s), 'InvalidArgument', /at least 32MiB/);
    await rejectsWith(() => f.driver.create(s, f.image), 'InvalidArgument');
    assert.equal(await exists(guestDir(s)), false);
    assert.equal((await f.driver.inspect(s, undefined)).state, 'absent');
  });

  test('more CPUs than the host has are refused', async () => {
    const s = guest('greedy', { 'limits.cpu': '4096' });
    await rejectsWith(() => f.driver.validate(s), 'InvalidArgument', /CPUs/);
  });

  test('a missing UML kernel is refused with FailedPrecondition and leaves nothing behind', async () => {
    const broken = f.reopen({ kernelPath: join(f.dir, 'no-such-linux.uml') });
    const s = guest('nokernel');
    await rejectsWith(() => broken.create(s, f.image), 'FailedPrecondition', /user-mode-linux/);
    assert.equal(await exists(guestDir(s)), false);
    const probe = await broken.probe();
    assert.equal(probe.supported, false);
    assert.match(probe.warnings.join(' '), /user-mode-linux/);
    // A guest made with a good kernel that later goes missing fails to start, and nothing runs.
    await f.driver.create(s, f.image);
    await rejectsWith(() => broken.start(s, f.image), 'FailedPrecondition');
    assert.equal((await f.driver.inspect(s, undefined)).state, 'stopped');
    await f.assertNoLeftovers(s, { runtimeOnly: true });
    await f.driver.delete(s);
    await f.assertNoLeftovers(s);
  });

  test('limits.disk gives the guest a root file system of that size; less than the base disk is refused', async () => {
    const small = guest('disk-small', { 'limits.disk': '16MiB' });
    await rejectsWith(
      () => f.driver.create(small, f.image),
      'InvalidArgument',
      /smaller than the image's base disk/,
    );
    assert.equal(await exists(guestDir(small)), false);

    const s = guest('disk-big', { 'limits.disk': '1GiB' });
    await f.driver.create(s, f.image);
    await f.driver.start(s, f.image);
    const df = await execIn(f.driver, s, ['/bin/sh', '-c', "df -k / | awk 'NR == 2 { print $2 }'"]);
    const kib = Number(df.stdout.trim());
    assert.ok(kib > 900 * 1024 && kib <= 1024 * 1024, `root file system of ${kib} KiB`);
    await f.driver.stop(s, { timeoutMs: 20_000, force: false });
    await f.driver.delete(s);
    await f.assertNoLeftovers(s);
  });

  test('live limits: cpu and processes follow at once, memory waits for a restart', async () => {
    const s = guest('live', { 'limits.cpu': '0.5' });
    await f.driver.create(s, f.image);
    await f.driver.start(s, f.image);
    const quota = () =>
      readFile(`/sys/fs/cgroup/cpu${f.cgroupParent}/${s.name}/cpu.cfs_quota_us`, 'utf8').then((t) =>
        t.trim(),
      );
    assert.equal(await quota(), '50000');
    s.config = { 'limits.cpu': '1', 'limits.processes': '100', 'limits.memory': '96MiB' };
    const pending = await f.driver.update(s, ['limits.cpu', 'limits.processes', 'limits.memory']);
    assert.deepEqual(pending, ['limits.memory']);
    assert.equal(await quota(), '100000');
    const pidsMax = await readFile(`/sys/fs/cgroup/pids${f.cgroupParent}/${s.name}/pids.max`, 'utf8');
    assert.ok(Number(pidsMax) >= 100);
    await f.driver.stop(s, { timeoutMs: 0, force: true });
    await f.driver.delete(s);
    await f.assertNoLeftovers(s);
  });
});
