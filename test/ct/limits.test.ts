import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec } from '../../src/core/types.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { type CtFixture, makeCtFixture } from '../drivers/ct-fixture.ts';
import { execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';

const MiB = 2 ** 20;

describe('ct guests are held to their limits', () => {
  let fx: CtFixture;
  const started: GuestSpec[] = [];
  const cgroupFile = (spec: GuestSpec, controller: string, file: string) =>
    readFile(`/sys/fs/cgroup/${controller}${cgroupParentOf(fx.stateDir)}/${spec.name}/${file}`, 'utf8').then(
      (s) => s.trim(),
    );
  const boot = async (name: string, config: Record<string, string>): Promise<GuestSpec> => {
    const spec = testGuestSpec(name, 'ct', config);
    started.push(spec);
    await fx.driver.create(spec, fx.image);
    await fx.driver.start(spec, fx.image);
    return spec;
  };

  before(async () => {
    fx = await makeCtFixture();
  });

  after(async () => {
    for (const spec of started) {
      await fx.driver.stop(spec, { timeoutMs: 0, force: true }).catch(() => {});
      await fx.driver.delete(spec).catch(() => {});
    }
    await fx.cleanup();
  });

  test('a memory hog in a 64MiB guest is OOM-killed inside it while a neighbour keeps answering', async () => {
    const small = await boot('mem-small', { 'limits.memory': '64MiB' });
    const neighbour = await boot('mem-neighbour', {});
    // dd allocates its whole block: 256MiB cannot fit in 64MiB without swap (memsw = limit).
    const hog = await execIn(fx.driver, small, ['dd', 'if=/dev/zero', 'of=/dev/null', 'bs=256M', 'count=4']);
    assert.equal(hog.code, 137, `the hog should die by SIGKILL: ${hog.stderr}`);
    const oom = await cgroupFile(small, 'memory', 'memory.oom_control');
    assert.match(oom, /oom_kill [1-9]/);
    assert.equal((await execIn(fx.driver, neighbour, ['echo', 'alive'])).stdout, 'alive\n');
    assert.equal((await execIn(fx.driver, small, ['echo', 'still here'])).stdout, 'still here\n');
    assert.equal((await fx.driver.usage(small)).memoryLimitBytes, 64 * MiB);
  });

  test('a fork bomb in a guest with limits.processes=50 stops at the limit and the host stays responsive', async () => {
    const bombed = await boot('forkbomb', { 'limits.processes': '50' });
    // The bomb detaches; its exec returns at once while the bomb fills the pids cgroup.
    const r = await execIn(fx.driver, bombed, ['/bin/sh', '-c', 'f() { f | f & }; f; echo lit'], {
      timeoutMs: 10_000,
    });
    // The bomb's first children can fill the pids cgroup before the outer shell forks the
    // pipeline's second half: that shell then ends with "can't fork" (2), the bomb running on.
    assert.ok(
      r.code === 0 || r.stdout.includes('lit') || (r.code === 2 && /can't fork/.test(r.stderr)),
      `bomb did not start: ${r.code} ${r.stderr}`,
    );
    let peak = 0;
    for (let i = 0; i < 20; i++) {
      peak = Math.max(peak, Number(await cgroupFile(bombed, 'pids', 'pids.current')));
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(peak <= 50, `pids.current reached ${peak}`);
    assert.match(await cgroupFile(bombed, 'pids', 'pids.events'), /max [1-9]/, 'the bomb hit the limit');
    const t0 = Date.now();
    await hostRunner().run(['true']);
    assert.ok(Date.now() - t0 < 1000, `host true took ${Date.now() - t0}ms`);
    const t1 = Date.now();
    await fx.driver.stop(bombed, { timeoutMs: 0, force: true });
    assert.ok(Date.now() - t1 < 10_000);
    assert.equal((await fx.driver.inspect(bombed, undefined)).state, 'stopped');
  });

  test('a guest without limits.memory shares one memory cgroup, still reports its memory, and takes a limit at its next start', async () => {
    // Decision 0093: a memory cgroup per guest costs the kernel a slot for every file system of
    // every guest, so a guest without a memory limit is charged to one cgroup its daemon's guests share.
    const spec = await boot('mem-shared', { 'limits.processes': '100' });
    const parent = cgroupParentOf(fx.stateDir);
    assert.equal(
      existsSync(`/sys/fs/cgroup/memory${parent}/${spec.name}`),
      false,
      'no memory cgroup of its own',
    );
    const init = (await fx.driver.inspect(spec, undefined)).process;
    assert.ok(init);
    const cgroups = await readFile(`/proc/${init.pid}/cgroup`, 'utf8');
    assert.match(cgroups, new RegExp(`^\\d+:memory:${parent}$`, 'm'), 'charged to the shared cgroup');
    for (const controller of ['pids', 'cpu', 'freezer', 'devices']) {
      assert.match(
        cgroups,
        new RegExp(`^\\d+:${controller}:${parent}/${spec.name}$`, 'm'),
        `its own ${controller}`,
      );
    }
    assert.equal(await cgroupFile(spec, 'pids', 'pids.max'), '100', 'its other limits hold');
    assert.equal((await execIn(fx.driver, spec, ['echo', 'up'])).stdout, 'up\n');
    const usage = await fx.driver.usage(spec);
    assert.ok(usage.memoryBytes > 0, 'its processes resident memory stands in for the cgroup usage');
    assert.equal(usage.memoryLimitBytes, undefined);
    const limited = { ...spec, config: { ...spec.config, 'limits.memory': '64MiB' } };
    assert.deepEqual(
      await fx.driver.update(limited, ['limits.memory']),
      ['limits.memory'],
      'waits for a start',
    );
    await fx.driver.stop(spec, { timeoutMs: 0, force: true });
    await fx.driver.start(limited, fx.image);
    assert.equal(await cgroupFile(limited, 'memory', 'memory.limit_in_bytes'), String(64 * MiB));
    assert.equal((await fx.driver.usage(limited)).memoryLimitBytes, 64 * MiB);
  });

  test('update() changes limits.memory of a running guest live', async () => {
    const spec = await boot('mem-live', { 'limits.memory': '64MiB', 'limits.processes': '100' });
    assert.equal(await cgroupFile(spec, 'memory', 'memory.limit_in_bytes'), String(64 * MiB));
    const bigger = { ...spec, config: { ...spec.config, 'limits.memory': '128MiB', 'limits.cpu': '0.5' } };
    const restart = await fx.driver.update(bigger, ['limits.memory', 'limits.cpu']);
    assert.deepEqual(restart, []);
    assert.equal(await cgroupFile(spec, 'memory', 'memory.limit_in_bytes'), String(128 * MiB));
    assert.equal(await cgroupFile(spec, 'memory', 'memory.memsw.limit_in_bytes'), String(128 * MiB));
    assert.equal(await cgroupFile(spec, 'cpu', 'cpu.cfs_quota_us'), '50000');
    assert.equal(await cgroupFile(spec, 'pids', 'pids.max'), '100', 'untouched limits stay');
    const inside = await execIn(fx.driver, spec, ['cat', '/sys/fs/cgroup/memory/memory.limit_in_bytes']);
    assert.equal(inside.stdout.trim(), String(128 * MiB));
    const privileged = { ...bigger, config: { ...bigger.config, 'security.privileged': 'true' } };
    assert.deepEqual(await fx.driver.update(privileged, ['security.privileged']), ['security.privileged']);
  });
});
