import assert from 'node:assert/strict';
import { test } from 'node:test';
import { privateTunArgv, umlArgv } from './uml-command.ts';

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
