import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fakeRunner } from '../../host/fake-runner.ts';
import { chooseAccelerator, parseAcceleratorSetting, probeArgv } from './accelerator-probe.ts';
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
    await writeFile(kvm, '');
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const qemu = (stdout: string, code = 0, delayMs = 0) =>
    fakeRunner((argv) => {
      if (argv[1] === '--version') return { stdout: 'QEMU emulator version 7.2.22 (Debian)\n' };
      if (argv[0] === 'qemu-system-x86_64') return { stdout, code, effect: () => sleep(delayMs) };
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
    assert.match(v.reason, /missing or not usable/);
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
});
