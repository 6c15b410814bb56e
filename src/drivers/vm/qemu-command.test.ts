import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { qemuArgv, rootBlockdev, vmGuestPaths, vmResources } from './qemu-command.ts';
import { type FdSource, launcherArgv, qemuFds } from './qemu-fds.ts';

const argvFor = (
  config: Record<string, string>,
  machine: 'q35' | 'pc' | 'microvm' = 'q35',
  nics?: Array<{ nic?: string; tap: string; mac: string }>,
  fds = qemuFds(),
) =>
  qemuArgv({
    name: 'web1',
    paths: vmGuestPaths('/var/lib/trivisor', 'web1'),
    fds,
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

  test('QEMU gets every file and socket as a descriptor: QMP, a logged serial console, the agent port, kernel, disk', () => {
    const fds = qemuFds();
    const argv = argvFor({ 'limits.memory': '128MiB', 'limits.cpu': '2' }, 'q35', undefined, fds);
    const dir = '/var/lib/trivisor/guests/web1';
    // The sockets are in the guest's runtime directory of this member (decision 0061).
    const run = '/var/lib/trivisor/run/vm/web1';
    // Not daemonized (that forks, which the sandbox forbids), and nothing of the guest dir by name.
    assert.ok(!argv.includes('-daemonize'));
    assert.deepEqual(after(argv, '-pidfile'), []);
    assert.ok(!argv.some((a) => a.includes(dir)), 'no path of the guest dir on the command line');
    assert.deepEqual(after(argv, '-m'), ['128']);
    assert.deepEqual(after(argv, '-smp'), ['2']);
    assert.deepEqual(after(argv, '-machine'), ['q35,mem-merge=on']);
    assert.deepEqual(after(argv, '-accel'), ['tcg,tb-size=64']);
    const source = (n: number): FdSource | undefined => fds.entries.find((e) => e.fd === n)?.source;
    const fdOf = (chardev: string): number => Number(/,fd=(\d+),/.exec(chardev)?.[1]);
    const chardevs = after(argv, '-chardev');
    const [qmp, console, agent] = ['qmp', 'console', 'agent'].map(
      (id) => chardevs.find((c) => c.startsWith(`socket,id=${id},`)) ?? '',
    );
    assert.ok(!argv.some((a) => a.includes(run)), 'nor of its runtime directory');
    assert.deepEqual(source(fdOf(qmp ?? '')), { kind: 'listen', path: `${run}/qmp.sock` });
    assert.deepEqual(source(fdOf(console ?? '')), { kind: 'listen', path: `${run}/console.sock` });
    assert.deepEqual(source(fdOf(agent ?? '')), { kind: 'listen', path: `${run}/agent.sock` });
    assert.match(console ?? '', /,server=on,wait=off,logfile=\/dev\/fdset\/1,logappend=on$/);
    // The console log is fd set 1, opened for appending; the root disk read-write in set 2.
    const addFd = fds.addFdArgs();
    const setFd = (set: number) => Number(new RegExp(`fd=(\\d+),set=${set},`).exec(addFd.join(' '))?.[1]);
    assert.deepEqual(source(setFd(1)), { kind: 'file', path: `${dir}/console.log`, access: 'append' });
    assert.deepEqual(source(setFd(2)), { kind: 'file', path: `${dir}/root.qcow2`, access: 'readwrite' });
    assert.match(addFd.join(' '), new RegExp(`set=2,opaque=${dir}/root.qcow2`));
    // The kernel loader takes names only: its files are inherited descriptors reopened through /proc.
    const kernel = after(argv, '-kernel')[0] ?? '';
    const initrd = after(argv, '-initrd')[0] ?? '';
    assert.deepEqual(source(Number(/^\/proc\/self\/fd\/(\d+)$/.exec(kernel)?.[1])), {
      kind: 'file',
      path: '/boot/vmlinuz-k',
      access: 'read',
    });
    assert.deepEqual(source(Number(/^\/proc\/self\/fd\/(\d+)$/.exec(initrd)?.[1])), {
      kind: 'file',
      path: '/var/lib/trivisor/vm/i.cpio',
      access: 'read',
    });
    const devices = after(argv, '-device');
    assert.ok(devices.includes('virtio-blk-pci,drive=root,werror=enospc,rerror=report'));
    assert.ok(devices.includes('virtio-rng-pci,rng=rng'));
    assert.ok(devices.includes('virtio-balloon-pci,id=balloon,free-page-reporting=on'));
    assert.ok(devices.includes('virtserialport,bus=vser.0,chardev=agent,name=org.qemu.guest_agent.0'));
    assert.deepEqual(after(argv, '-nic'), ['none']);
    assert.deepEqual(after(argv, '-drive'), []);
    assert.deepEqual(JSON.parse(after(argv, '-blockdev')[0] ?? ''), {
      driver: 'qcow2',
      'node-name': 'root',
      discard: 'unmap',
      file: { driver: 'file', filename: '/dev/fdset/2' },
      backing: null,
    });
    const append = after(argv, '-append')[0] ?? '';
    assert.match(
      append,
      /console=ttyS0 root=\/dev\/vda .*panic=-1 init=\/\.trivisor\/init trivisor\.model=vm$/,
    );
    assert.ok(argv.includes('-no-reboot'), 'a panic must end QEMU, not loop');
    assert.deepEqual(after(argv, '-sandbox'), [
      'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    ]);
  });

  test('the launcher opens the sources as root, joins the cgroups, then drops to the guest uid with no capabilities', () => {
    const fds = qemuFds();
    const argv = argvFor({}, 'q35', [{ nic: 'eth0', tap: 'tv01', mac: '02:00:00:00:00:01' }], fds);
    const launch = launcherArgv({
      fds,
      cgroups: ['/sys/fs/cgroup/pids/trivisor-x/web1'],
      identity: { uid: 1065536, gid: 1065536, groups: [] },
      command: argv,
    });
    assert.deepEqual(launch.slice(0, 4), ['env', '-i', '/usr/bin/perl', '-e']);
    const args = launch.slice(launch.indexOf('--') + 1);
    const directives = args.slice(0, args.indexOf('--'));
    // One directive per descriptor, at the number the command line names.
    assert.deepEqual(
      directives.filter((d) => !d.startsWith('cgroup:')).map((d) => Number(d.split(':')[1])),
      fds.entries.map((e) => e.fd),
    );
    assert.ok(directives.some((d) => /^listen:\d+:\/var\/lib\/trivisor\/run\/vm\/web1\/qmp\.sock$/.test(d)));
    assert.ok(
      directives.some((d) => /^file:\d+:rw:\/var\/lib\/trivisor\/guests\/web1\/root\.qcow2$/.test(d)),
    );
    const tap = directives.find((d) => d.startsWith('tap:')) ?? '';
    assert.match(tap, /^tap:\d+:tv01$/);
    assert.ok(after(argv, '-netdev').includes(`tap,id=hn-eth0,fd=${tap.split(':')[1]}`));
    assert.ok(directives.includes('cgroup:/sys/fs/cgroup/pids/trivisor-x/web1'));
    const rest = args.slice(args.indexOf('--') + 1);
    assert.deepEqual(rest.slice(0, rest.indexOf('--')), [
      'setpriv',
      '--reuid=1065536',
      '--regid=1065536',
      '--clear-groups',
      '--inh-caps=-all',
      '--bounding-set=-all',
      '--no-new-privs',
    ]);
    assert.deepEqual(rest.slice(rest.indexOf('--') + 1, rest.indexOf('--') + 4), [
      'env',
      '-i',
      'PATH=/usr/sbin:/usr/bin:/sbin:/bin',
    ]);
    assert.equal(rest[rest.indexOf('--') + 4], 'qemu-system-x86_64');
    // Under KVM the kvm group is QEMU's only supplementary group.
    const kvm = launcherArgv({ fds, identity: { uid: 7, gid: 7, groups: [36] }, command: argv });
    assert.ok(kvm.includes('--groups=36') && !kvm.includes('--clear-groups'));
  });
  test('microvm puts the devices on virtio-mmio', () => {
    const argv = argvFor({}, 'microvm');
    // Without the legacy PIT and PIC the cloud kernel hangs calibrating its clock under TCG.
    assert.match(after(argv, '-machine')[0] ?? '', /^microvm,.*pit=on,pic=on/);
    assert.ok(after(argv, '-device').includes('virtio-blk-device,drive=root,werror=enospc,rerror=report'));
  });

  test('a root disk over the shared base disk: the backing file is named and handed over, read-only, unlocked (UML holds one)', () => {
    const fds = qemuFds();
    const node = rootBlockdev(
      [
        { path: '/s/guests/web1/root.qcow2', format: 'qcow2' },
        { path: '/s/images/fp/disk.ext4', format: 'raw' },
      ],
      fds,
    );
    assert.deepEqual(node, {
      driver: 'qcow2',
      'node-name': 'root',
      discard: 'unmap',
      file: { driver: 'file', filename: '/dev/fdset/1' },
      backing: {
        driver: 'raw',
        'read-only': true,
        file: { driver: 'file', filename: '/dev/fdset/2', 'read-only': true, locking: 'off' },
      },
    });
    assert.deepEqual(
      fds.entries.map((e) => e.source),
      [
        { kind: 'file', path: '/s/guests/web1/root.qcow2', access: 'readwrite' },
        { kind: 'file', path: '/s/images/fp/disk.ext4', access: 'read' },
      ],
    );
  });

  test("a guest whose RAM must not be merged says mem-merge=off (the daemon's memory reclaim off)", () => {
    const argv = qemuArgv({
      name: 'web1',
      paths: vmGuestPaths('/var/lib/trivisor', 'web1'),
      fds: qemuFds(),
      kit: { kernelPath: '/boot/vmlinuz-k', kernelRelease: 'k', initramfsPath: '/i.cpio' },
      accelerator: 'tcg',
      machine: 'q35',
      resources: vmResources({}),
      kernelArgs: [],
      memMerge: false,
    });
    assert.deepEqual(after(argv, '-machine'), ['q35,mem-merge=off']);
  });

  test('pc is passed through as the machine, with PCI devices', () => {
    const argv = argvFor({}, 'pc');
    assert.deepEqual(after(argv, '-machine').slice(0, 1), ['pc,mem-merge=on']);
    assert.ok(after(argv, '-device').includes('virtio-blk-pci,drive=root,werror=enospc,rerror=report'));
  });

  test('each NIC is a virtio-net device with its MAC on its tap, in order, on a q35 NIC root port; no NIC means -nic none', () => {
    const nics = [
      { nic: 'eth0', tap: 'tv0123456789', mac: '02:aa:bb:cc:dd:01' },
      { nic: 'lan', tap: 'tv9876543210', mac: '02:aa:bb:cc:dd:02' },
    ];
    const fds = qemuFds();
    const argv = argvFor({}, 'q35', nics, fds);
    // The taps are attached by the daemon and handed over: QEMU cannot open /dev/net/tun.
    const netdevs = after(argv, '-netdev');
    assert.deepEqual(
      netdevs.map((n) => n.replace(/fd=\d+$/, 'fd=N')),
      ['tap,id=hn-eth0,fd=N', 'tap,id=hn-lan,fd=N'],
    );
    assert.deepEqual(
      netdevs.map((n) => fds.entries.find((e) => e.fd === Number(/fd=(\d+)$/.exec(n)?.[1]))?.source),
      [
        { kind: 'tap', name: 'tv0123456789' },
        { kind: 'tap', name: 'tv9876543210' },
      ],
    );
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

  test('a guest booting its own disk gets no kernel: SeaBIOS, the disk first once installed, two CD-ROM drives, a VGA display and VNC with no socket', () => {
    const fds = qemuFds();
    const argv = qemuArgv({
      name: 'deb1',
      paths: vmGuestPaths('/var/lib/trivisor', 'deb1'),
      fds,
      accelerator: 'tcg',
      machine: 'q35',
      resources: vmResources({}),
      kernelArgs: [],
      firmware: { bootFrom: 'disk', media: { cd1: { path: '/pool/custom/inst.iso', node: 'iso-inst' } } },
      devices: { diskBus: 'virtio', nicModel: 'virtio', display: true },
    });
    for (const flag of ['-kernel', '-initrd', '-append'])
      assert.deepEqual(after(argv, flag), [], `no ${flag}`);
    // Its own OS reboots inside QEMU (an installer does at its end).
    assert.ok(!argv.includes('-no-reboot'));
    assert.deepEqual(after(argv, '-machine'), ['q35,mem-merge=on'], 'SeaBIOS: no flash');
    const devices = after(argv, '-device');
    assert.ok(devices.includes('virtio-blk-pci,drive=root,werror=enospc,rerror=report,bootindex=1'));
    assert.ok(devices.includes('ide-cd,id=cd0,bus=ide.2,bootindex=2'), 'an empty drive');
    assert.ok(devices.includes('ide-cd,id=cd1,bus=ide.3,drive=iso-inst,bootindex=3'));
    // The ISO is a read-only descriptor like every file.
    const iso = JSON.parse(after(argv, '-blockdev').find((b) => b.includes('iso-inst')) ?? '{}');
    assert.equal(iso['read-only'], true);
    const set = Number(/^\/dev\/fdset\/(\d+)$/.exec(iso.file.filename)?.[1]);
    const setFd = Number(new RegExp(`fd=(\\d+),set=${set},`).exec(fds.addFdArgs().join(' '))?.[1]);
    assert.deepEqual(fds.entries.find((e) => e.fd === setFd)?.source, {
      kind: 'file',
      path: '/pool/custom/inst.iso',
      access: 'read',
    });
    assert.ok(devices.includes('VGA,id=video0'));
    assert.ok(devices.includes('usb-tablet,bus=usb.0'));
    assert.deepEqual(after(argv, '-vnc'), ['none'], 'nothing listens: viewers are handed over (add_client)');
    assert.ok(!argv.some((a) => a.includes('/var/lib/trivisor/guests/deb1')), 'no path of the guest dir');
  });

  test('a blank disk boots its CD-ROMs first; UEFI is OVMF as two flash nodes, Secure Boot with SMM; sata and e1000', () => {
    const fds = qemuFds();
    const argv = qemuArgv({
      name: 'win1',
      paths: vmGuestPaths('/var/lib/trivisor', 'win1'),
      fds,
      accelerator: 'tcg',
      machine: 'q35',
      resources: vmResources({}),
      kernelArgs: [],
      firmware: {
        bootFrom: 'cdrom',
        uefi: {
          code: '/usr/share/OVMF/OVMF_CODE_4M.secboot.fd',
          vars: '/g/win1/uefi-vars.fd',
          secureBoot: true,
        },
      },
      devices: { diskBus: 'sata', nicModel: 'e1000', display: false },
      nics: [{ nic: 'eth0', tap: 'tv01', mac: '02:00:00:00:00:01' }],
    });
    assert.deepEqual(after(argv, '-machine'), ['q35,pflash0=fw-code,pflash1=fw-vars,smm=on,mem-merge=on']);
    assert.ok(after(argv, '-global').includes('driver=cfi.pflash01,property=secure,value=on'));
    const nodes = after(argv, '-blockdev').map((b) => JSON.parse(b) as Record<string, unknown>);
    const code = nodes.find((n) => n['node-name'] === 'fw-code');
    const vars = nodes.find((n) => n['node-name'] === 'fw-vars');
    assert.equal(code?.['read-only'], true, "OVMF's code is read-only");
    assert.equal(vars?.['read-only'], undefined, 'the variables are written');
    const sources = fds.entries.map((e) => e.source);
    assert.ok(sources.some((x) => x.kind === 'file' && x.path.endsWith('secboot.fd') && x.access === 'read'));
    assert.ok(
      sources.some((x) => x.kind === 'file' && x.path === '/g/win1/uefi-vars.fd' && x.access === 'readwrite'),
    );
    const devices = after(argv, '-device');
    assert.ok(devices.includes('ide-cd,id=cd0,bus=ide.2,bootindex=1'), 'CD first: the disk is blank');
    assert.ok(devices.includes('ide-hd,drive=root,bus=ide.0,werror=enospc,rerror=report,bootindex=3'));
    assert.ok(devices.some((x) => x.startsWith('e1000,netdev=hn-eth0,mac=02:00:00:00:00:01')));
    assert.deepEqual(after(argv, '-vnc'), [], 'no display asked for');
    // pc: IDE buses of two units each.
    const pc = qemuArgv({
      name: 'old1',
      paths: vmGuestPaths('/var/lib/trivisor', 'old1'),
      fds: qemuFds(),
      accelerator: 'tcg',
      machine: 'pc',
      resources: vmResources({}),
      kernelArgs: [],
      firmware: { bootFrom: 'disk' },
      devices: { diskBus: 'sata', nicModel: 'virtio', display: false },
    });
    assert.ok(
      after(pc, '-device').includes(
        'ide-hd,drive=root,bus=ide.0,unit=0,werror=enospc,rerror=report,bootindex=1',
      ),
    );
    assert.ok(after(pc, '-device').includes('ide-cd,id=cd0,bus=ide.1,unit=0,bootindex=2'));
    assert.ok(after(pc, '-device').includes('ide-cd,id=cd1,bus=ide.1,unit=1,bootindex=3'));
  });
});
