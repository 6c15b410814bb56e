import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { baseDiskSizeBytes, MIN_BASE_DISK_BYTES } from './base-disk.ts';
import { imageInitArgv, KIT_AGENT_DEVICE, kitKernelArgs, shellQuote } from './guest-kit.ts';
import { guestKitInitScript } from './guest-kit-init-script.ts';

describe('guest kit', () => {
  test('kitKernelArgs names the kit init, hostname, model and the model agent device', () => {
    assert.deepEqual(kitKernelArgs({ hostname: 'web-1', model: 'vm' }), [
      'init=/.trivisor/init',
      'trivisor.hostname=web-1',
      `trivisor.agent=${KIT_AGENT_DEVICE.vm}`,
      'trivisor.model=vm',
    ]);
    assert.ok(kitKernelArgs({ hostname: 'p', model: 'pvm' }).includes('trivisor.agent=/dev/ttyS1'));
    assert.throws(() => kitKernelArgs({ hostname: 'bad name', model: 'vm' }), { code: 'InvalidArgument' });
    assert.throws(() => kitKernelArgs({ hostname: 'ok', model: 'vm', agent: 'a b' }), {
      code: 'InvalidArgument',
    });
  });

  test('kitKernelArgs names the NICs by MAC for the kit and in TRIVISOR_NICS for the image init', () => {
    const one = kitKernelArgs({
      hostname: 'v',
      model: 'vm',
      nics: [{ name: 'eth0', mac: '02:00:00:00:00:01' }],
    });
    assert.deepEqual(one.slice(-2), ['trivisor.nics=eth0@02:00:00:00:00:01', 'TRIVISOR_NICS=eth0']);
    const two = kitKernelArgs({
      hostname: 'p',
      model: 'pvm',
      nics: [
        { name: 'eth0', mac: '02:00:00:00:00:01' },
        { name: 'lan', mac: '02:00:00:00:00:02' },
      ],
    });
    assert.deepEqual(two.slice(-2), [
      'trivisor.nics=eth0@02:00:00:00:00:01,lan@02:00:00:00:00:02',
      'TRIVISOR_NICS="eth0 lan"',
    ]);
    assert.ok(!kitKernelArgs({ hostname: 'v', model: 'vm' }).some((a) => a.includes('NICS')));
    assert.throws(
      () =>
        kitKernelArgs({ hostname: 'v', model: 'vm', nics: [{ name: 'eth 0', mac: '02:00:00:00:00:01' }] }),
      { code: 'InvalidArgument' },
    );
  });

  test('kitKernelArgs names the config disk device, and refuses one that is not /dev/NAME', () => {
    assert.ok(
      kitKernelArgs({ hostname: 'v', model: 'vm', configDevice: '/dev/vdb' }).includes(
        'trivisor.config=/dev/vdb',
      ),
    );
    assert.ok(!kitKernelArgs({ hostname: 'v', model: 'vm' }).some((a) => a.startsWith('trivisor.config=')));
    assert.throws(() => kitKernelArgs({ hostname: 'v', model: 'vm', configDevice: '/dev/vd b' }), {
      code: 'InvalidArgument',
    });
  });

  test('shellQuote survives a round trip through sh', () => {
    const argv = ['/bin/sh', '-c', `echo "it's" $HOME; a\\b`, '', 'plain', 'x=y'];
    const out = execFileSync('/bin/sh', ['-c', `printf '%s\\n' ${argv.map(shellQuote).join(' ')}`], {
      encoding: 'utf8',
    });
    assert.equal(out, `${argv.join('\n')}\n`);
  });

  test('imageInitArgv reads the init property and defaults to /sbin/init', () => {
    assert.deepEqual(imageInitArgv({}), ['/sbin/init']);
    assert.deepEqual(imageInitArgv({ init: '["/bin/sh","-c","x"]' }), ['/bin/sh', '-c', 'x']);
    assert.throws(() => imageInitArgv({ init: '"/sbin/init"' }), { code: 'InvalidArgument' });
    assert.throws(() => imageInitArgv({ init: '[' }), { code: 'InvalidArgument' });
  });

  test('the init script is valid sh', () => {
    execFileSync('/bin/sh', ['-n'], { input: guestKitInitScript({ loaderName: 'ld-linux-x86-64.so.2' }) });
  });

  test('base disks are twice the tree plus headroom, never under the minimum, in whole MiB', () => {
    assert.equal(baseDiskSizeBytes(0), MIN_BASE_DISK_BYTES);
    assert.equal(baseDiskSizeBytes(500 * 1024 * 1024), 1064 * 1024 * 1024);
    assert.equal(baseDiskSizeBytes(200 * 1024 * 1024 + 1) % (1024 * 1024), 0);
  });
});
