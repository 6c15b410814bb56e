import assert from 'node:assert/strict';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import { chooseAccelerator, kvmAccess, parseAcceleratorSetting, probeArgv } from './accelerator-probe.ts';
import { type BootKit, PROBE_MARKER } from './boot-kit.ts';

const kit: BootKit = {
  kernelPath: '/boot/vmlinuz-x',
  kernelRelease: 'x',
  initramfsPath: '/s/vm/initramfs-x.cpio',
};

describe('accelerator probe', () => {
  let dir: string;
  let kvm: string;
  before(async () => {
    dir = await mkdtemp('/tmp/trivisor-accel-');
    kvm = join(dir, 'kvm');
    // Open to everyone: an unprivileged QEMU may open it (the modes tested below are other files).
    await writeFile(kvm, '', { mode: 0o666 });
    await chmod(kvm, 0o666);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const qemu = (stdout: string, code = 0, delayMs = 0) =>
    fakeRunner((argv) => {
      if (argv[1] === '--version') return { stdout: 'QEMU emulator version 7.2.22 (Debian)\n' };
      if (argv.includes('qemu-system-x86_64')) return { stdout, code, effect: () => sleep(delayMs) };
      return undefined;
    });

  test('settings: kvm, tcg, auto and empty; anything else is refused', () => {
    assert.equal(parseAcceleratorSetting(undefined), 'auto');
    assert.equal(parseAcceleratorSetting(''), 'auto');
    assert.equal(parseAcceleratorSetting('kvm'), 'kvm');
    assert.equal(parseAcceleratorSetting('tcg'), 'tcg');
    assert.throws(() => parseAcceleratorSetting('hvf'), /not kvm, tcg or auto/);
  });

  test('the test boot runs the kit in probe mode under KVM', () => {
    const argv = probeArgv(kit, 'kvm');
    assert.ok(argv.includes('q35,accel=kvm'));
    assert.ok(argv.includes('-no-reboot'));
    assert.match(argv.at(-1) ?? '', /trivisor\.probe=1/);
  });

  test('KVM is chosen when the test boot reaches the initramfs, and the verdict is cached', async () => {
    const state = join(dir, 'ok');
    const runner = qemu(`SeaBIOS\n${PROBE_MARKER}\n`);
    const v = await chooseAccelerator(state, { runner, kit, kvmDevice: kvm });
    assert.equal(v.accelerator, 'kvm');
    assert.match(v.reason, /reached its initramfs/);
    assert.deepEqual(JSON.parse(await readFile(join(state, 'vm', 'accelerator.json'), 'utf8')), v);
    const boots = () => runner.commands().filter((c) => c.includes('accel=kvm')).length;
    assert.equal(boots(), 1);
    assert.deepEqual(await chooseAccelerator(state, { runner, kit, kvmDevice: kvm }), v);
    assert.equal(boots(), 1, 'no second test boot');
  });

  test("QEMU's version is asked once while its binary on PATH stays the same file", async () => {
    const bin = join(dir, 'bin');
    await rm(bin, { recursive: true, force: true });
    await mkdir(bin);
    const qemuBin = join(bin, 'qemu-system-x86_64');
    await writeFile(qemuBin, '#!/bin/sh\n', { mode: 0o755 });
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path}`;
    try {
      const runner = qemu(`SeaBIOS\n${PROBE_MARKER}\n`);
      const versions = () => runner.commands().filter((c) => c.endsWith('--version')).length;
      const state = join(dir, 'version-once');
      await chooseAccelerator(state, { runner, kit, kvmDevice: kvm });
      await chooseAccelerator(state, { runner, kit, kvmDevice: kvm });
      assert.equal(versions(), 1, 'asked once for two starts');
      // A QEMU upgrade replaces the file: asked again.
      await rm(qemuBin);
      await writeFile(qemuBin, '#!/bin/sh\n# new\n', { mode: 0o755 });
      await chooseAccelerator(state, { runner, kit, kvmDevice: kvm });
      assert.equal(versions(), 2, 'asked again after the binary changed');
    } finally {
      process.env.PATH = path;
    }
  });

  test('a KVM test boot that hangs past the timeout means TCG', async () => {
    const runner = qemu('', 137, 120);
    const v = await chooseAccelerator(join(dir, 'hang'), { runner, kit, kvmDevice: kvm, timeoutMs: 100 });
    assert.equal(v.accelerator, 'tcg');
    assert.match(v.reason, /hung/);
    const call = runner.calls.find((c) => c.argv.includes('q35,accel=kvm'));
    assert.equal((call?.options as { timeoutMs?: number } | undefined)?.timeoutMs, 100);
  });

  test('a KVM test boot that aborts means TCG, with the reason', async () => {
    const runner = qemu('', 134);
    const v = await chooseAccelerator(join(dir, 'abort'), { runner, kit, kvmDevice: kvm });
    assert.equal(v.accelerator, 'tcg');
    assert.match(v.reason, /failed \(exit 134/);
  });

  test('no /dev/kvm means TCG without a test boot; a forced setting skips the probe', async () => {
    const runner = qemu(PROBE_MARKER);
    const v = await chooseAccelerator(join(dir, 'none'), { runner, kit, kvmDevice: join(dir, 'nope') });
    assert.equal(v.accelerator, 'tcg');
    assert.match(v.reason, /is missing/);
    const forced = await chooseAccelerator(join(dir, 'forced'), {
      runner,
      kit,
      setting: 'kvm',
      kvmDevice: kvm,
    });
    assert.equal(forced.accelerator, 'kvm');
    assert.match(forced.reason, /forced/);
    assert.equal(runner.commands().filter((c) => c.includes('accel=kvm')).length, 0);
  });

  test('KVM needs a device an unprivileged QEMU can open: open to all, or to a group other than root (then its only group)', async () => {
    const node = async (name: string, mode: number, gid: number): Promise<string> => {
      const path = join(dir, name);
      await writeFile(path, '');
      await chown(path, 0, gid);
      await chmod(path, mode);
      return path;
    };
    assert.deepEqual(await kvmAccess(await node('all', 0o666, 0)), { groups: [] });
    assert.deepEqual(await kvmAccess(await node('group', 0o660, 36)), { groups: [36] });
    const rootOnly = await kvmAccess(await node('root-only', 0o600, 0));
    assert.match('refused' in rootOnly ? rootOnly.refused : '', /mode 0600 .*unprivileged QEMU cannot open/);
    // Group root would give QEMU every file of group root: refused too.
    assert.ok('refused' in (await kvmAccess(await node('group-root', 0o660, 0))));

    // A root-only device: TCG without a test boot, saying why.
    const runner = qemu(PROBE_MARKER);
    const v = await chooseAccelerator(join(dir, 'root-only-state'), {
      runner,
      kit,
      kvmDevice: join(dir, 'root-only'),
    });
    assert.equal(v.accelerator, 'tcg');
    assert.match(v.reason, /unprivileged QEMU cannot open/);
    assert.equal(runner.commands().filter((c) => c.includes('accel=kvm')).length, 0);
  });

  test('the test boot runs as the unprivileged uid with the kvm group, the kit handed over as descriptors', async () => {
    const device = join(dir, 'kvm-group');
    await writeFile(device, '');
    await chown(device, 0, 36);
    await chmod(device, 0o660);
    const runner = qemu(PROBE_MARKER);
    const v = await chooseAccelerator(join(dir, 'unprivileged'), {
      runner,
      kit,
      kvmDevice: device,
      runAs: 1131071,
    });
    assert.equal(v.accelerator, 'kvm');
    const boot = runner.calls.find((c) => c.argv.includes('q35,accel=kvm'))?.argv ?? [];
    for (const a of [
      'file:3:r:/boot/vmlinuz-x',
      'file:4:r:/s/vm/initramfs-x.cpio',
      'setpriv',
      '--reuid=1131071',
      '--groups=36',
      '--no-new-privs',
    ]) {
      assert.ok(boot.includes(a), `${a} in ${boot.slice(5).join(' ')}`);
    }
    assert.equal(boot[boot.indexOf('-kernel') + 1], '/proc/self/fd/3');
    assert.equal(boot[boot.indexOf('-initrd') + 1], '/proc/self/fd/4');
  });
});
