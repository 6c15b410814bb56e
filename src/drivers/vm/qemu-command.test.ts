import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { qemuArgv, vmGuestPaths, vmResources } from './qemu-command.ts';

const argvFor = (
  config: Record<string, string>,
  machine: 'q35' | 'pc' | 'microvm' = 'q35',
  nics?: Array<{ nic?: string; tap: string; mac: string }>,
) =>
  qemuArgv({
    name: 'web1',
    paths: vmGuestPaths('/var/lib/trivisor', 'web1'),
    kit: { kernelPath: '/boot/vmlinuz-k', kernelRelease: 'k', initramfsPath: '/var/lib/trivisor/vm/i.cpio' },
    accelerator: 'tcg',
    machine,
    resources: vmResources(config),
    kernelArgs: ['init=/.trivisor/init', 'trivisor.model=vm'],
    ...(nics ? { nics } : {}),
  });

const after = (argv: string[], flag: string): string[] =>
  argv.flatMap((a, i) => (a === flag && argv[i + 1] !== undefined ? [argv[i + 1] as string] : []));

describe('qemu command line', () => {
  test('limits become RAM and vCPUs; a fractional CPU limit rounds up and becomes a quota', () => {
    assert.deepEqual(vmResources({}), { memoryMiB: 256, vcpus: 1 });
    assert.deepEqual(vmResources({ 'limits.memory': '128MiB', 'limits.cpu': '2' }), {
      memoryMiB: 128,
      vcpus: 2,
    });
    assert.deepEqual(vmResources({ 'limits.cpu': '0.5' }), { memoryMiB: 256, vcpus: 1, cpuQuotaUs: 50_000 });
    assert.deepEqual(vmResources({ 'limits.cpu': '1.5' }).vcpus, 2);
  });

  test('QEMU is daemonized with a pid file, QMP, a logged serial console and the agent port', () => {
    const argv = argvFor({ 'limits.memory': '128MiB', 'limits.cpu': '2' });
    const dir = '/var/lib/trivisor/guests/web1';
    assert.ok(argv.includes('-daemonize'));
    assert.deepEqual(after(argv, '-pidfile'), [`${dir}/qemu.pid`]);
    assert.deepEqual(after(argv, '-m'), ['128']);
    assert.deepEqual(after(argv, '-smp'), ['2']);
    assert.deepEqual(after(argv, '-machine'), ['q35']);
    assert.deepEqual(after(argv, '-accel'), ['tcg,tb-size=64']);
    const chardevs = after(argv, '-chardev');
    assert.ok(chardevs.includes(`socket,id=qmp,path=${dir}/qmp.sock,server=on,wait=off`));
    assert.ok(
      chardevs.includes(
        `socket,id=console,path=${dir}/console.sock,server=on,wait=off,logfile=${dir}/console.log,logappend=on`,
      ),
    );
    assert.ok(chardevs.includes(`socket,id=agent,path=${dir}/agent.sock,server=on,wait=off`));
    const devices = after(argv, '-device');
    assert.ok(devices.includes('virtio-blk-pci,drive=root'));
    assert.ok(devices.includes('virtio-rng-pci,rng=rng'));
    assert.ok(devices.includes('virtio-balloon-pci,id=balloon,free-page-reporting=on'));
    assert.ok(devices.includes('virtserialport,bus=vser.0,chardev=agent,name=org.qemu.guest_agent.0'));
    assert.deepEqual(after(argv, '-nic'), ['none']);
    assert.deepEqual(after(argv, '-drive'), [
      `file=${dir}/root.qcow2,if=none,id=root,format=qcow2,discard=unmap`,
    ]);
    const append = after(argv, '-append')[0] ?? '';
    assert.match(
      append,
      /console=ttyS0 root=\/dev\/vda .*panic=-1 init=\/\.trivisor\/init trivisor\.model=vm$/,
    );
    assert.ok(argv.includes('-no-reboot'), 'a panic must end QEMU, not loop');
    assert.deepEqual(after(argv, '-sandbox'), ['on,obsolete=deny,resourcecontrol=deny']);
  });

  test('microvm puts the devices on virtio-mmio', () => {
    const argv = argvFor({}, 'microvm');
    // Without the legacy PIT and PIC the cloud kernel hangs calibrating its clock under TCG.
    assert.match(after(argv, '-machine')[0] ?? '', /^microvm,.*pit=on,pic=on/);
    assert.ok(after(argv, '-device').includes('virtio-blk-device,drive=root'));
  });

  test('a root disk over the shared base disk takes no locks on the base (UML holds one)', () => {
    const drive = (argv: string[]) => after(argv, '-drive').find((d) => d.includes('id=root')) ?? '';
    assert.doesNotMatch(drive(argvFor({})), /locking/);
    const shared = qemuArgv({
      name: 'web1',
      paths: vmGuestPaths('/var/lib/trivisor', 'web1'),
      kit: { kernelPath: '/k', kernelRelease: 'k', initramfsPath: '/i' },
      accelerator: 'tcg',
      machine: 'q35',
      resources: vmResources({}),
      kernelArgs: [],
      sharedBacking: true,
    });
    assert.match(drive(shared), /,backing\.file\.locking=off$/);
  });

  test('pc is passed through as the machine, with PCI devices', () => {
    const argv = argvFor({}, 'pc');
    assert.deepEqual(after(argv, '-machine').slice(0, 1), ['pc']);
    assert.ok(after(argv, '-device').includes('virtio-blk-pci,drive=root'));
  });

  test('each NIC is a virtio-net device with its MAC on its tap, in order, on a q35 NIC root port; no NIC means -nic none', () => {
    const nics = [
      { nic: 'eth0', tap: 'tv0123456789', mac: '02:aa:bb:cc:dd:01' },
      { nic: 'lan', tap: 'tv9876543210', mac: '02:aa:bb:cc:dd:02' },
    ];
    const argv = argvFor({}, 'q35', nics);
    assert.deepEqual(after(argv, '-netdev'), [
      'tap,id=hn-eth0,ifname=tv0123456789,script=no,downscript=no',
      'tap,id=hn-lan,ifname=tv9876543210,script=no,downscript=no',
    ]);
    const devices = after(argv, '-device').filter((d) => d.startsWith('virtio-net'));
    assert.deepEqual(devices, [
      'virtio-net-pci,netdev=hn-eth0,mac=02:aa:bb:cc:dd:01,id=nic-eth0,bus=trivisor-nic0',
      'virtio-net-pci,netdev=hn-lan,mac=02:aa:bb:cc:dd:02,id=nic-lan,bus=trivisor-nic1',
    ]);
    const ports = after(argv, '-device').filter((d) => d.startsWith('pcie-root-port,id=trivisor-nic'));
    assert.equal(ports.length, 4, 'the NIC root ports come before the NICs, free ones for hot-plug');
    assert.ok(
      argv.indexOf(`pcie-root-port,id=trivisor-nic0,bus=pcie.0,chassis=120`) < argv.indexOf(devices[0] ?? ''),
    );
    assert.deepEqual(after(argv, '-nic'), []);
    assert.deepEqual(after(argvFor({}, 'q35', []), '-nic'), ['none']);
    assert.equal(
      after(argvFor({}, 'q35', []), '-device').filter((d) => d.startsWith('pcie-root-port,id=trivisor-nic'))
        .length,
      4,
      'a q35 guest without NICs can still take one live',
    );
    // pc hot-plugs on its root bus (ACPI); microvm has no PCI and no ports.
    assert.ok(
      after(argvFor({}, 'pc', nics), '-device').includes(
        'virtio-net-pci,netdev=hn-eth0,mac=02:aa:bb:cc:dd:01,id=nic-eth0',
      ),
    );
    assert.ok(
      after(argvFor({}, 'microvm', nics), '-device').includes(
        'virtio-net-device,netdev=hn-eth0,mac=02:aa:bb:cc:dd:01,id=nic-eth0',
      ),
    );
  });
});
