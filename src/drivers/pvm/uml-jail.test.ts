import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import { isTrivisorError } from '../../core/errors.ts';
import type { AttachedVolume } from '../guest-volumes.ts';
import { umlVolumeArgs } from './pvm-volumes.ts';
import { umlArgv } from './uml-command.ts';
import {
  BWRAP,
  JAIL_CPUINFO_FD,
  JAIL_HOSTFS_DIR,
  JAIL_SECCOMP_FD,
  jailVolumePath,
  programFilesOf,
  SETPRIV,
  type UmlJail,
  umlJailArgv,
} from './uml-jail.ts';

const jail: UmlJail = {
  uid: 1_131_072,
  programFiles: ['/usr/bin/linux.uml', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2'],
  writableDirs: ['/s/guests/p1/disk', '/s/guests/p1/run'],
  readOnlyFiles: ['/s/images/fp/disk.ext4', '/s/guests/p1/config.ext4'],
  volumes: [{ device: 'data', hostPath: '/pools/p/volumes/data.img' }],
  memoryTmpfsBytes: 192 * 2 ** 20,
};
const kernel = ['/usr/bin/linux.uml', 'mem=131072K'];

/** The `--OPTION A B` triples of an argv, for lookups. */
const pairs = (argv: string[], option: string): Array<[string, string]> =>
  argv.flatMap((a, i) => (a === option ? [[argv[i + 1] ?? '', argv[i + 2] ?? ''] as [string, string]] : []));

test('the jail binds only what the kernel opens, each at its own host path, read-only unless it is the guest dir', () => {
  const argv = umlJailArgv(jail, kernel);
  assert.equal(argv[0], BWRAP);
  assert.deepEqual(pairs(argv, '--ro-bind'), [
    ['/usr/bin/linux.uml', '/usr/bin/linux.uml'],
    ['/lib/x86_64-linux-gnu/libc.so.6', '/lib/x86_64-linux-gnu/libc.so.6'],
    ['/lib64/ld-linux-x86-64.so.2', '/lib64/ld-linux-x86-64.so.2'],
    ['/s/images/fp/disk.ext4', '/s/images/fp/disk.ext4'],
    ['/s/guests/p1/config.ext4', '/s/guests/p1/config.ext4'],
  ]);
  assert.deepEqual(pairs(argv, '--bind'), [
    ['/s/guests/p1/disk', '/s/guests/p1/disk'],
    ['/s/guests/p1/run', '/s/guests/p1/run'],
    ['/pools/p/volumes/data.img', '/.uml/volumes/data'],
  ]);
  assert.deepEqual(pairs(argv, '--dev-bind'), [
    ['/dev/null', '/dev/null'],
    ['/dev/urandom', '/dev/urandom'],
  ]);
  assert.deepEqual(pairs(argv, '--dev-bind-try'), [['/dev/net/tun', '/dev/net/tun']]);
  assert.ok(!argv.includes('--proc') && !argv.includes('--dev'), 'no procfs, no /dev of the host');
});

test('a read-only file named by a path with links is bound from its real file at that path', () => {
  const argv = umlJailArgv(
    {
      ...jail,
      readOnlyFiles: [{ path: '/var/lib/t/images/fp/disk.ext4', source: '/srv/t/images/fp/disk.ext4' }],
    },
    kernel,
  );
  assert.deepEqual(pairs(argv, '--ro-bind').pop(), [
    '/srv/t/images/fp/disk.ext4',
    '/var/lib/t/images/fp/disk.ext4',
  ]);
});

test('every directory on the way is 0711 and made before the binds; the root ends read-only', () => {
  const argv = umlJailArgv(jail, kernel);
  const dirs = pairs(argv, '--dir').map(([d]) => d);
  for (const d of [
    '/usr',
    '/usr/bin',
    '/s',
    '/s/guests',
    '/s/guests/p1',
    '/s/images/fp',
    '/dev/net',
    '/.uml',
  ])
    assert.ok(dirs.includes(d), d);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--dir' && argv[i + 1] !== JAIL_HOSTFS_DIR)
      assert.deepEqual(argv.slice(i - 2, i), ['--perms', '0711']);
  }
  const firstBind = argv.indexOf('--ro-bind');
  assert.ok(argv.indexOf('--dir') < firstBind);
  assert.ok(
    dirs.indexOf('/s') < dirs.indexOf('/s/guests') &&
      dirs.indexOf('/s/guests') < dirs.indexOf('/s/guests/p1'),
  );
  const ro = argv.indexOf('--remount-ro');
  assert.equal(argv[ro + 1], '/');
  assert.ok(ro > argv.lastIndexOf('--bind'), 'after the last bind');
});

test('RAM is a private tmpfs of the given size; hostfs has an empty dir; no other namespace but ipc', () => {
  const argv = umlJailArgv(jail, kernel);
  const tmpfs = argv.indexOf('/.uml/memory', argv.indexOf('--tmpfs') - 1);
  assert.deepEqual(argv.slice(tmpfs - 5, tmpfs + 1), [
    '--perms',
    '01777',
    '--size',
    String(192 * 2 ** 20),
    '--tmpfs',
    '/.uml/memory',
  ]);
  assert.deepEqual(pairs(argv, '--setenv'), [
    ['PATH', '/usr/bin:/bin'],
    ['TMPDIR', '/.uml/memory'],
  ]);
  assert.ok(argv.includes('--clearenv'));
  assert.deepEqual(
    argv.filter((a) => a.startsWith('--unshare')),
    ['--unshare-ipc'],
  );
  assert.ok(
    umlArgv({
      kernelPath: '/k',
      memoryBytes: 2 ** 26,
      diskPath: '/d',
      umlDir: '/r',
      umid: 'u',
      hostname: 'h',
    }).includes(`hostfs=${JAIL_HOSTFS_DIR}`),
  );
});

test('bwrap loads the seccomp program and cpuinfo from the launcher fds, keeps only setuid/setgid, then setpriv drops to the guest uid', () => {
  const argv = umlJailArgv(jail, kernel);
  assert.equal(argv[argv.indexOf('--seccomp') + 1], String(JAIL_SECCOMP_FD));
  assert.deepEqual(argv.slice(argv.indexOf('--ro-bind-data') + 1, argv.indexOf('--ro-bind-data') + 3), [
    String(JAIL_CPUINFO_FD),
    '/proc/cpuinfo',
  ]);
  assert.deepEqual(argv.slice(argv.indexOf('--cap-drop'), argv.indexOf('--cap-drop') + 6), [
    '--cap-drop',
    'ALL',
    '--cap-add',
    'CAP_SETUID',
    '--cap-add',
    'CAP_SETGID',
  ]);
  const sep = argv.indexOf('--');
  assert.deepEqual(argv.slice(sep + 1), [
    SETPRIV,
    '--reuid=1131072',
    '--regid=1131072',
    '--clear-groups',
    '--inh-caps=-all',
    '--no-new-privs',
    '--',
    ...kernel,
  ]);
});

test('the jail refuses binds that would land on the host or in its own places', () => {
  const refused = (j: Partial<UmlJail>) =>
    assert.throws(
      () => umlJailArgv({ ...jail, ...j }, kernel),
      (e: unknown) => isTrivisorError(e) && e.code === 'Internal',
    );
  refused({ readOnlyFiles: ['/s/guests/p1/disk/evil'] });
  refused({ readOnlyFiles: ['relative/disk.ext4'] });
  refused({ readOnlyFiles: ['/s/../etc/shadow'] });
  refused({ readOnlyFiles: ['/.uml/memory/x'] });
  refused({ programFiles: ['/dev/kmsg'] });
  refused({ volumes: [{ device: '../x', hostPath: '/p/x.img' }] });
});

test('block volumes are named by their jail path at boot', () => {
  const volume = (device: string, type: AttachedVolume['type'] = 'block'): AttachedVolume => ({
    device,
    pool: 'p',
    volume: device,
    type,
    hostPath: `/pools/p/${device}.img`,
    sizeBytes: 1,
  });
  assert.deepEqual(umlVolumeArgs([volume('a'), volume('fs', 'filesystem'), volume('b')]), [
    'ubd2=/.uml/volumes/a',
    'ubd3=/.uml/volumes/b',
  ]);
  assert.equal(jailVolumePath('data-1'), '/.uml/volumes/data-1');
});

test('programFilesOf lists each binary and the libraries ldd names, at the paths the loader uses', async () => {
  const runner = fakeRunner((argv) => {
    if (argv[1] === '/usr/bin/linux.uml') {
      return {
        stdout:
          '\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n',
      };
    }
    if (argv[1] === '/usr/bin/static') return { code: 1, stdout: '\tnot a dynamic executable\n' };
    return { code: 1, stderr: 'ldd: ./x: No such file or directory\n' };
  });
  assert.deepEqual(await programFilesOf(['/usr/bin/linux.uml', '/usr/bin/static'], runner), [
    '/usr/bin/linux.uml',
    '/lib/x86_64-linux-gnu/libc.so.6',
    '/lib64/ld-linux-x86-64.so.2',
    '/usr/bin/static',
  ]);
  await assert.rejects(programFilesOf(['/nope'], runner), /Cannot list the libraries of \/nope/);
});
