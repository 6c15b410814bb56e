import assert from 'node:assert/strict';
import { test } from 'node:test';
import { privateTunArgv, SETARCH, umlArgv, umlLauncherArgv } from './uml-command.ts';
import { BWRAP, SETPRIV } from './uml-jail.ts';

const base = {
  kernelPath: '/usr/bin/linux.uml',
  memoryBytes: 64 * 2 ** 20,
  diskPath: '/s/guests/p1/disk/root.cow',
  backingPath: '/s/images/fp/disk.ext4',
  umlDir: '/s/guests/p1/run',
  umid: 'uml',
  hostname: 'p1',
};

test('each NIC is a tuntap transport on its host tap with its MAC, named for the kit by MAC', () => {
  const argv = umlArgv({
    ...base,
    nics: [
      { nic: 'eth0', tap: 'tv0123456789', mac: '02:aa:bb:cc:dd:01' },
      { nic: 'lan', tap: 'tv9876543210', mac: '02:aa:bb:cc:dd:02' },
    ],
  });
  assert.deepEqual(
    argv.filter((a) => /^eth\d+=/.test(a)),
    ['eth0=tuntap,tv0123456789,02:aa:bb:cc:dd:01', 'eth1=tuntap,tv9876543210,02:aa:bb:cc:dd:02'],
  );
  assert.ok(argv.includes('trivisor.nics=eth0@02:aa:bb:cc:dd:01,lan@02:aa:bb:cc:dd:02'));
  assert.ok(argv.includes('TRIVISOR_NICS="eth0 lan"'));
});

test('a guest without NICs gets no network device', () => {
  const argv = umlArgv(base);
  assert.ok(!argv.some((a) => /^eth\d+=|NICS/.test(a)));
  assert.ok(argv.includes('ubd0=/s/guests/p1/disk/root.cow,/s/images/fp/disk.ext4'));
});

test('a config disk is the read-only ubd1 and the kit is told where it is', () => {
  const argv = umlArgv({ ...base, configDisk: '/s/guests/p1/config.ext4' });
  assert.ok(argv.includes('ubd1r=/s/guests/p1/config.ext4'));
  assert.ok(argv.includes('trivisor.config=/dev/ubdb'));
  const none = umlArgv(base);
  assert.ok(!none.some((a) => a.startsWith('ubd1') || a.startsWith('trivisor.config=')));
});

test('the launcher gives UML a private tun node owned by the guest uid, not the host device', () => {
  const argv = privateTunArgv(1_000_123);
  assert.deepEqual(argv.slice(0, 5), ['unshare', '--mount', '--propagation', 'slave', '--']);
  const script = argv[7] ?? '';
  assert.match(script, /mount -t tmpfs .* \/dev\/net/);
  assert.match(script, /mknod -m 0600 \/dev\/net\/tun c 10 200/);
  assert.match(script, /chown "\$0:\$0" \/dev\/net\/tun/);
  assert.equal(argv[8], '1000123');
});

test('the launcher execs the kernel through setarch without address randomization, after setpriv', () => {
  const kernel = ['/usr/bin/linux.uml', 'mem=131072K', 'root=/dev/ubda'];
  const argv = umlLauncherArgv({
    agentIn: '/s/run/agent.in',
    agentOut: '/s/run/agent.out',
    consoleIn: '/s/run/console.in',
    seccompPath: '/s/guests/p1/seccomp.bpf',
    cgroupProcs: ['/sys/fs/cgroup/pids/t/p1/cgroup.procs', '/sys/fs/cgroup/memory/t/p1/cgroup.procs'],
    jail: {
      uid: 1_000_123,
      programFiles: ['/usr/bin/linux.uml', SETPRIV, SETARCH],
      writableDirs: ['/s/guests/p1/disk', '/s/run'],
      readOnlyFiles: [],
      volumes: [],
      memoryTmpfsBytes: 192 * 2 ** 20,
    },
    kernel,
  });
  assert.deepEqual(argv.slice(0, 2), ['/bin/sh', '-c']);
  // The shell opens fds 3 to 7, joins each cgroup, then execs what follows `--`.
  assert.match(argv[2] ?? '', /exec 3<>"\$0" 4<>"\$1" 5<>"\$2" 6<"\$3" 7<\/proc\/cpuinfo/);
  assert.deepEqual(argv.slice(3, 10), [
    '/s/run/agent.in',
    '/s/run/agent.out',
    '/s/run/console.in',
    '/s/guests/p1/seccomp.bpf',
    '/sys/fs/cgroup/pids/t/p1/cgroup.procs',
    '/sys/fs/cgroup/memory/t/p1/cgroup.procs',
    '--',
  ]);
  const tun = privateTunArgv(1_000_123);
  assert.deepEqual(argv.slice(10, 10 + tun.length), tun);
  assert.equal(argv[10 + tun.length], BWRAP);
  // An exec that changes capabilities (bwrap's, setpriv's) clears ADDR_NO_RANDOMIZE: setarch must
  // be the last exec before the kernel, run as the guest's uid.
  const setpriv = argv.lastIndexOf(SETPRIV);
  assert.ok(setpriv > 10 + tun.length, 'setpriv runs in the jail');
  const afterSetpriv = argv.slice(argv.indexOf('--', setpriv) + 1);
  assert.deepEqual(afterSetpriv, [SETARCH, 'x86_64', '--addr-no-randomize', '--', ...kernel]);
});
