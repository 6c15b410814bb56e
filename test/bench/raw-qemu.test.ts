// The raw QEMU baseline's argv (bench/lib.ts): a vm guest's argv names inherited descriptors
// (decision 0019), which a QEMU started by hand does not have; each must be named by path again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { qemuRootBacking, replayableQemuArgv } from '../../bench/lib.ts';

const guestDir = '/state/guests/tpl';
const dir = '/state/raw';
const base = '/state/images/abc/disk.qcow2';
const argv = [
  'qemu-system-x86_64',
  '-chardev',
  'socket,id=qmp,fd=3,server=on,wait=off',
  '-chardev',
  'socket,id=console,fd=5,server=on,wait=off,logfile=/dev/fdset/1,logappend=on',
  '-blockdev',
  JSON.stringify({
    driver: 'qcow2',
    'node-name': 'root',
    file: { driver: 'file', filename: '/dev/fdset/2' },
    backing: {
      driver: 'qcow2',
      'read-only': true,
      file: { driver: 'file', filename: '/dev/fdset/3' },
      backing: null,
    },
  }),
  '-kernel',
  '/proc/self/fd/9',
  '-add-fd',
  `fd=4,set=1,opaque=${guestDir}/console.log`,
  '-add-fd',
  `fd=6,set=2,opaque=${guestDir}/root.qcow2`,
  '-add-fd',
  `fd=7,set=3,opaque=${base}`,
];
const fdTarget = (fd: string) => (fd === '9' ? '/usr/lib/trivisor/vmlinuz' : `/unexpected/${fd}`);

test('replayableQemuArgv names fd sets, listening sockets and /proc/self/fd files by path, in the scratch dir', () => {
  const raw = replayableQemuArgv(argv, { guestDir, dir, fdTarget });
  assert.ok(!raw.includes('-add-fd'), 'no -add-fd is left');
  assert.doesNotMatch(raw.join(' '), /fd=\d|\/dev\/fdset|\/proc\/self\/fd/);
  assert.equal(raw[2], `socket,id=qmp,path=${dir}/raw-qmp.sock,server=on,wait=off`);
  assert.equal(
    raw[4],
    `socket,id=console,path=${dir}/raw-console.sock,server=on,wait=off,logfile=${dir}/console.log,logappend=on`,
  );
  assert.equal(raw[raw.indexOf('-kernel') + 1], '/usr/lib/trivisor/vmlinuz');
  const root = JSON.parse(raw[raw.indexOf('-blockdev') + 1] as string);
  assert.equal(root.file.filename, `${dir}/root.qcow2`);
  assert.equal(root.backing.file.filename, base, 'the base disk stays where it is');
  assert.deepEqual(qemuRootBacking(raw), { file: base, format: 'qcow2' });
});

test('replayableQemuArgv refuses an argv whose descriptor it cannot name', () => {
  assert.throws(
    () =>
      replayableQemuArgv(['qemu-system-x86_64', '-netdev', 'tap,id=n0,fd=12'], { guestDir, dir, fdTarget }),
    /cannot replay tap,id=n0,fd=12: it names an inherited descriptor/,
  );
  assert.throws(
    () =>
      replayableQemuArgv(['qemu-system-x86_64', '-drive', 'file=/dev/fdset/8'], { guestDir, dir, fdTarget }),
    /no -add-fd for fd set 8/,
  );
});
