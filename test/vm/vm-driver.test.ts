import assert from 'node:assert/strict';
import { access, mkdtemp, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isTrivisorError } from '../../src/core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../src/core/types.ts';
import { chooseAccelerator } from '../../src/drivers/vm/accelerator-probe.ts';
import { ensureBootKit } from '../../src/drivers/vm/boot-kit.ts';
import { connectQmp } from '../../src/drivers/vm/qmp-client.ts';
import { createVmDriver } from '../../src/drivers/vm/vm-driver.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { eventually, execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { makeVmFixture, qemuProcessesUnder, type VmFixture } from './vm-fixture.ts';

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

const rejectsWith = async (work: Promise<unknown>, code: string, pattern: RegExp): Promise<void> => {
  await assert.rejects(work, (e: unknown) => {
    assert.ok(isTrivisorError(e), String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.message, pattern);
    return true;
  });
};

describe('vm driver', () => {
  let f: VmFixture;
  const specs: GuestSpec[] = [];
  const guest = (name: string, config: Record<string, string> = {}): GuestSpec => {
    const s = testGuestSpec(name, 'vm', { 'limits.memory': '128MiB', ...config });
    specs.push(s);
    return s;
  };

  before(async () => {
    f = await makeVmFixture();
  });

  after(async () => {
    for (const s of specs) {
      await f.driver.stop(s, { timeoutMs: 0, force: true }).catch(() => {});
      await f.driver.delete(s).catch(() => {});
    }
    await f.cleanup();
  });

  test('probe() says which accelerator vm guests use and why', async () => {
    const probe = await f.driver.probe();
    assert.equal(probe.supported, true, probe.warnings.join('; '));
    assert.equal(probe.details.accelerator, 'tcg');
    assert.match(probe.details.acceleratorReason ?? '', /forced to tcg/);
    assert.match(probe.details.kernel ?? '', /cloud-amd64$/);
    assert.ok(probe.warnings.some((w) => /TCG/.test(w)));
  });

  test('bad input is refused with a clear error and leaves nothing behind', async () => {
    const small = guest('bad-memory', { 'limits.memory': '32MiB' });
    await rejectsWith(f.driver.create(small, f.image), 'InvalidArgument', /too small for a vm guest to boot/);
    await f.assertNoLeftovers(small);

    const greedy = guest('bad-cpu', { 'limits.cpu': '512' });
    await rejectsWith(f.driver.create(greedy, f.image), 'InvalidArgument', /more than this host's \d+ CPUs/);
    await f.assertNoLeftovers(greedy);

    const tiny = guest('bad-disk', { 'limits.disk': '16MiB' });
    await rejectsWith(
      f.driver.create(tiny, f.image),
      'InvalidArgument',
      /smaller than the image's base disk/,
    );
    await f.assertNoLeftovers(tiny);

    const noKernel = createVmDriver(
      { runner: hostRunner(), log: silentLogger(), stateDir: f.stateDir, idmapBase: 1_000_000 },
      { accelerator: 'tcg', kernelPath: join(f.dir, 'no-such', 'vmlinuz-9.9.9-cloud-amd64') },
    );
    const orphan = guest('bad-kernel');
    await rejectsWith(noKernel.create(orphan, f.image), 'FailedPrecondition', /kernel .* does not exist/);
    await f.assertNoLeftovers(orphan);
    const emptyBoot = await mkdtemp(join(f.dir, 'boot-'));
    const noCloudKernel = createVmDriver(
      { runner: hostRunner(), log: silentLogger(), stateDir: f.stateDir, idmapBase: 1_000_000 },
      { accelerator: 'tcg', bootDir: emptyBoot },
    );
    await rejectsWith(noCloudKernel.create(orphan, f.image), 'FailedPrecondition', /linux-image-cloud-amd64/);
    await f.assertNoLeftovers(orphan);
  });

  test('a guest boots the cloud kernel, grows its disk, lowers memory live, and a dead QEMU is noticed', async () => {
    const spec = guest('vm-life', { 'limits.disk': '1GiB', 'limits.cpu': '1' });
    await f.driver.create(spec, f.image);
    const id: ProcessIdentity = await f.driver.start(spec, f.image);
    const kit = await ensureBootKit(f.stateDir, { runner: hostRunner() });

    // A new driver instance (the daemon restarted) finds and drives the same QEMU.
    const again = f.reopen();
    assert.deepEqual(await again.inspect(spec, id), { state: 'running', process: id });
    const uname = await execIn(again, spec, ['uname', '-r']);
    assert.deepEqual(uname, { code: 0, stdout: `${kit.kernelRelease}\n`, stderr: '' });
    // Execs at the same time share the agent (QEMU serves one client on its socket): neither waits for the other.
    const order: string[] = [];
    const slow = execIn(again, spec, ['/bin/sh', '-c', 'sleep 2; echo slow']).then((r) => {
      order.push(r.stdout.trim());
      return r;
    });
    const quick = await execIn(again, spec, ['/bin/sh', '-c', 'echo quick']);
    order.push(quick.stdout.trim());
    assert.equal((await slow).code, 0);
    assert.deepEqual(order, ['quick', 'slow']);
    const host = await execIn(again, spec, ['hostname']);
    assert.equal(host.stdout, 'vm-life\n');

    // The kit grew the root file system to the 1 GiB overlay.
    const df = await execIn(again, spec, ['/bin/sh', '-c', "df -k / | awk 'NR==2 { print $2 }'"]);
    assert.ok(Number(df.stdout) > 900_000, `root file system of ${df.stdout.trim()} KiB`);
    const nproc = await execIn(again, spec, ['nproc']);
    assert.equal(nproc.stdout, '1\n');

    // limits.memory lowered on a running guest: the balloon takes the difference back.
    const memTotal = async (): Promise<number> =>
      Number(/MemTotal:\s+(\d+)/.exec((await execIn(again, spec, ['cat', '/proc/meminfo'])).stdout)?.[1]);
    const before = await memTotal();
    const lowered = { ...spec, config: { ...spec.config, 'limits.memory': '96MiB' } };
    assert.deepEqual(await again.update(lowered, ['limits.memory']), []);
    const qmp = await connectQmp(join(f.stateDir, 'run', 'vm', spec.name, 'qmp.sock'));
    try {
      const ballooned = await eventually(async () => {
        const b = await qmp.execute<{ actual: number }>('query-balloon');
        return b.actual === 96 * 2 ** 20;
      }, 60_000);
      assert.ok(ballooned, 'the balloon reached 96MiB');
    } finally {
      qmp.close();
    }
    assert.ok(
      await eventually(async () => (await memTotal()) <= before - 20 * 1024, 30_000),
      'MemTotal dropped',
    );
    assert.equal((await again.usage(lowered)).memoryLimitBytes, 96 * 2 ** 20);
    // Raising it above what the guest booted with needs a restart.
    const raised = { ...spec, config: { ...spec.config, 'limits.memory': '256MiB' } };
    assert.deepEqual(await again.update(raised, ['limits.memory']), ['limits.memory']);

    // QEMU dies unasked: inspect() notices, stop() only cleans up.
    process.kill(id.pid, 'SIGKILL');
    assert.ok(
      await eventually(async () => (await f.driver.inspect(spec, id)).state === 'stopped', 10_000),
      'the dead QEMU still looks alive',
    );
    await f.driver.stop(spec, { timeoutMs: 10_000, force: false });
    await f.assertNoLeftovers(spec, { runtimeOnly: true });
    assert.ok(await exists(f.driver.consoleLogPath(spec)), 'the console log stays');
    assert.match(await readFile(f.driver.consoleLogPath(spec), 'utf8'), /trivisor: init/);
    await f.driver.delete(spec);
    await f.assertNoLeftovers(spec);
  });

  test('vm.machine picks the machine type per guest: a pc (i440fx) guest boots and its agent answers', async () => {
    const spec = guest('vm-pc', { 'vm.machine': 'pc', 'limits.cpu': '1' });
    await f.driver.create(spec, f.image);
    const id = await f.driver.start(spec, f.image);
    const argv = (await readFile(`/proc/${id.pid}/cmdline`, 'utf8')).split('\0');
    assert.equal(argv[argv.indexOf('-machine') + 1], 'pc,mem-merge=on');
    // QEMU runs under its seccomp sandbox (mode 2: filter).
    assert.match(await readFile(`/proc/${id.pid}/status`, 'utf8'), /^Seccomp:\s+2$/m);
    // The i440fx host bridge (8086:1237) instead of q35's (8086:29c0).
    const bridge = await execIn(f.driver, spec, ['cat', '/sys/bus/pci/devices/0000:00:00.0/device']);
    assert.deepEqual(bridge, { code: 0, stdout: '0x1237\n', stderr: '' });
    await f.driver.stop(spec, { timeoutMs: 10_000, force: false });
    await f.driver.delete(spec);
    await f.assertNoLeftovers(spec);
  });

  test('the accelerator probe falls back to TCG when a KVM test boot hangs or aborts, and caches its verdict', async () => {
    const dir = await makeRunDir('vm-probe');
    try {
      const runner = hostRunner();
      const kit = await ensureBootKit(f.stateDir, { runner });
      const verdict = await chooseAccelerator(dir, { runner, kit, timeoutMs: 8000 });
      assert.ok(verdict.accelerator === 'kvm' || verdict.accelerator === 'tcg');
      assert.ok(verdict.reason.length > 0);
      if (verdict.accelerator === 'tcg') assert.match(verdict.reason, /KVM|kvm/);
      const cached = JSON.parse(await readFile(join(dir, 'vm', 'accelerator.json'), 'utf8'));
      assert.deepEqual(cached, verdict);
      // The second call reads the cache: no test boot, so no QEMU shows up.
      assert.deepEqual(await chooseAccelerator(dir, { runner, kit, timeoutMs: 8000 }), verdict);
      assert.deepEqual(await qemuProcessesUnder(kit.initramfsPath), []);
      const forced = await chooseAccelerator(dir, { runner, kit, setting: 'tcg' });
      assert.equal(forced.accelerator, 'tcg');
      assert.match(forced.reason, /forced/);
    } finally {
      await removeRunDir(dir);
    }
  });

  test('no QEMU of this file is left', async () => {
    assert.deepEqual(await qemuProcessesUnder(f.dir), []);
    assert.deepEqual(
      (await readdir(join(f.stateDir, 'guests')).catch(() => [])).filter((n) => !n.startsWith('.')),
      [],
    );
  });
});
