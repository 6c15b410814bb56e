import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import { attachCtVolumeArgv, ctVolumeIdmap } from './ct-volumes.ts';
import { mountOverlayRootfs, overlayRootfsArgv, privateRootArgv, privateRootEnv } from './overlay-rootfs.ts';

const layers = {
  tree: '/s/images/fp/trees/rootfs',
  staging: '/s/guests/g/staging',
  upper: '/s/guests/g/upper',
  work: '/s/guests/g/work',
  target: '/s/guests/g/rootfs',
};

test('the root mount runs perl with no environment, the layers and the range as arguments', () => {
  const argv = overlayRootfsArgv({ ...layers, idmap: { base: 1_262_144, size: 65536 } });
  assert.deepEqual(argv.slice(0, 4), ['env', '-i', '/usr/bin/perl', '-e']);
  assert.match(argv[4] ?? '', /BEGIN \{ @INC = \(\) \}/, 'nothing of the guest is ever loaded');
  assert.deepEqual(argv.slice(5), ['--', ...Object.values(layers), '1262144', '65536']);
  assert.deepEqual(overlayRootfsArgv(layers).slice(-2), ['-', '-'], 'a privileged guest: no idmap');
});

test('a start mounts the root in a mount namespace of its own, then execs runc there with only PATH set', () => {
  const runc = ['runc', '--root', '/s/runc', 'create', '--bundle', '/s/guests/g/bundle', 'g'];
  const argv = privateRootArgv({ ...layers, idmap: { base: 1_262_144, size: 65536 } }, runc);
  // perl first, no env -i: the caller gives it PATH alone (privateRootEnv, the runner's envOnly).
  assert.deepEqual(argv.slice(0, 2), ['/usr/bin/perl', '-e']);
  assert.deepEqual(privateRootEnv('/usr/sbin:/usr/bin'), { PATH: '/usr/sbin:/usr/bin' });
  const script = argv[2] ?? '';
  assert.match(script, /BEGIN \{ @INC = \(\) \}/, 'nothing of the guest is ever loaded');
  assert.match(script, /syscall\(272, 0x20000\)/, 'unshare(CLONE_NEWNS) first');
  assert.match(script, /0x4000 \| 0x40000/, 'every mount made private (MS_REC | MS_PRIVATE)');
  assert.ok(
    script.indexOf('0x40000') < script.indexOf("'overlay'"),
    'made private before the root is mounted',
  );
  assert.deepEqual(argv.slice(3), ['--', ...Object.values(layers), '1262144', '65536', '-', '-', ...runc]);
  assert.throws(() => privateRootArgv({ ...layers, work: '/s/a,b' }, runc), {
    code: 'InvalidArgument',
  });
});

test('a guest without a memory limit joins the shared memory cgroup and runc is shown no memory hierarchy', () => {
  const runc = ['runc', '--root', '/s/runc', 'run', '--detach', 'g'];
  const sharedMemory = { mount: '/sys/fs/cgroup/memory', dir: '/sys/fs/cgroup/memory/trivisor-ab12cd34' };
  const argv = privateRootArgv(layers, runc, { sharedMemory });
  assert.deepEqual(argv.slice(-runc.length - 2), [sharedMemory.mount, sharedMemory.dir, ...runc]);
  const script = argv[2] ?? '';
  // The helper joins first (its children, runc and the guest, inherit the cgroup), then unmounts
  // the hierarchy in its own private namespace: runc makes cgroups only where it finds one mounted.
  assert.match(script, /open\(my \$procs, '>>', "\$memcg\/cgroup\.procs"\)/);
  assert.match(script, /syscall\(166, \$memmnt, 2\)/, 'umount2(MNT_DETACH) of the memory hierarchy');
  assert.ok(script.indexOf('0x40000') < script.indexOf('$memmnt, 2'), 'only once the namespace is private');
  assert.ok(script.indexOf('cgroup.procs') < script.indexOf('$memmnt, 2'), 'joined before it is hidden');
  assert.throws(() => privateRootArgv(layers, runc, { sharedMemory: { ...sharedMemory, dir: 'x y' } }), {
    code: 'Internal',
  });
});

test('a layer path that overlayfs would split is refused before anything runs', () => {
  for (const bad of ['/s/a,b', '/s/a:b', '/s/a b', 'relative']) {
    assert.throws(() => overlayRootfsArgv({ ...layers, upper: bad }), { code: 'InvalidArgument' });
  }
});

test('a kernel without idmapped mounts is a FailedPrecondition that says what is needed', async () => {
  const runner = fakeRunner(() => ({
    code: 1,
    stderr: 'idmapping the image tree (mount_setattr): Invalid argument\n',
  }));
  await assert.rejects(mountOverlayRootfs(layers, { runner }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'FailedPrecondition');
    assert.match(e.message, /idmapped mounts \(Linux 5\.19 or later\)/);
    return true;
  });
});

test("volumes map the shared range onto the guest's, and root onto itself; none on the shared range", () => {
  assert.equal(ctVolumeIdmap(1_000_000, 1_000_000), undefined);
  const idmap = ctVolumeIdmap(1_000_000, 1_327_680);
  assert.deepEqual(idmap, { inner: 1_000_000, outer: 1_327_680, count: 65536 });
  const volume = {
    device: 'v',
    pool: 'default',
    volume: 'v',
    type: 'filesystem' as const,
    hostPath: '/s/custom/v',
    path: '/srv/v',
    sizeBytes: 0,
  };
  const argv = attachCtVolumeArgv(volume, { pid: 42, rootId: 1_327_680, ...(idmap && { idmap }) });
  assert.deepEqual(argv.slice(-5), ['42', '/s/custom/v', '/srv/v', '1327680', '1000000 1327680 65536,0 0 1']);
  assert.equal(attachCtVolumeArgv(volume, { pid: 42, rootId: 0 }).at(-1), '-');
});
