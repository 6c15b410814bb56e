import assert from 'node:assert/strict';
import { test } from 'node:test';
import { umlNicErrors } from './uml-net-log.ts';

const BOOT = [
  'Core dump limits :',
  '\tsoft - 0',
  'Kernel command line: mem=131072K eth0=tuntap,tv4ed695a2d6,02:37:7d:ab:da:6b init=/.trivisor/init',
  'Netdevice 0 (02:37:7d:ab:da:6b) : ',
  'TUN/TAP backend - ',
  'Run /.trivisor/init as init process',
];

test('umlNicErrors() finds UML failing to open /dev/net/tun, and the guest failing to bring eth0 up', () => {
  const log = [
    ...BOOT,
    'Failed to open /dev/net/tun, err = 13\r',
    'ip: SIOCSIFFLAGS: Permission denied',
    'Failed to open /dev/net/tun, err = 13',
    '',
  ].join('\n');
  assert.deepEqual(umlNicErrors(log), [
    'ip: SIOCSIFFLAGS: Permission denied',
    'Failed to open /dev/net/tun, err = 13',
  ]);
});

test('umlNicErrors() reads only the last boot, and a clean boot has none', () => {
  const earlier = [...BOOT, 'Failed to open /dev/net/tun, err = 13'];
  assert.deepEqual(umlNicErrors([...earlier, ...BOOT, 'trivisor: init'].join('\n')), []);
  assert.deepEqual(umlNicErrors(''), []);
});

test('umlNicErrors() keeps the most recent lines only', () => {
  const log = [
    ...BOOT,
    'TUNSETIFF failed, errno = 16',
    'uml_net_open: failed to get irq(-16)',
    'tuntap_open : x',
    'eth_configure : y',
  ].join('\n');
  assert.deepEqual(umlNicErrors(log, 2), ['tuntap_open : x', 'eth_configure : y']);
});
