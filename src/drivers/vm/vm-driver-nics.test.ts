import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import { isTrivisorError } from '../../core/errors.ts';
import type { GuestSpec } from '../../core/types.ts';
import { silentLogger } from '../../host/logger.ts';
import type { GuestNetworking } from '../../network/guest-networking.ts';
import type { ImageHandle } from '../guest-driver.ts';
import { INITRAMFS_MODULES } from './boot-kit.ts';
import { vmGuestPaths } from './qemu-command.ts';
import { createVmDriver } from './vm-driver.ts';

const RELEASE = '6.1.0-56-cloud-amd64';

const spec: GuestSpec = {
  name: 'v1',
  project: 'default',
  model: 'vm',
  image: 'fp',
  imageAlias: 'busybox',
  config: {},
  devices: {
    eth0: { type: 'nic', network: 'n1', hwaddr: '02:00:00:00:00:01', 'ipv4.address': '198.18.9.2' },
  },
  desired: 'Running',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 10_000,
  stopForce: false,
  deleting: false,
  location: 'h',
  createdAt: new Date(0).toISOString(),
};

/** Records what the driver asks of the network (the calls a start and a clean-up make). */
function recordingNetworking(events: string[]): GuestNetworking {
  const fake: Pick<GuestNetworking, 'hasNics' | 'plugVeths' | 'plugTaps' | 'unplug' | 'state'> = {
    hasNics: (s) => Object.keys(s.devices ?? {}).length > 0,
    plugVeths: () => Promise.reject(new Error('a vm has no veths')),
    async plugTaps(s) {
      events.push(`plugTaps ${s.name}`);
      return [{ nic: 'eth0', tap: 'tvtaptest01', mac: '02:00:00:00:00:01' }];
    },
    async unplug(s) {
      events.push(`unplug ${s.name}`);
    },
    state: async () => ({}),
  };
  return fake as GuestNetworking;
}

/** The fake runner "builds" the initramfs (an empty file where cpio would write). */
const buildsKit = (argv: readonly string[]) =>
  argv[0] === 'sh' && argv.some((a) => a.includes('cpio'))
    ? { effect: () => writeFile(argv.at(-1) as string, '') }
    : undefined;

let dir: string;
before(async () => {
  dir = await mkdtemp('/tmp/trivisor-vmnic-');
  // A fake cloud kernel with every module the initramfs wants (the fake runner builds no cpio).
  await mkdir(join(dir, 'boot'));
  await writeFile(join(dir, 'boot', `vmlinuz-${RELEASE}`), '');
  const modules = join(dir, 'lib', 'modules', RELEASE);
  await mkdir(join(modules, 'kernel'), { recursive: true });
  await writeFile(join(modules, 'modules.dep'), INITRAMFS_MODULES.map((m) => `kernel/${m}.ko:\n`).join(''));
  for (const m of INITRAMFS_MODULES) await writeFile(join(modules, 'kernel', `${m}.ko`), m);
});
after(() => rm(dir, { recursive: true, force: true }));

test('a vm start that fails after its taps were plugged unplugs them; QEMU got one virtio-net per tap', async () => {
  const events: string[] = [];
  const stateDir = join(dir, 'state');
  const paths = vmGuestPaths(stateDir, 'v1');
  const runner = fakeRunner((argv) => {
    if (argv.includes('--backing-chain')) {
      return { stdout: JSON.stringify([{ filename: paths.disk, format: 'qcow2' }]) };
    }
    if (argv[0] === 'env' && argv.includes('qemu-system-x86_64')) {
      events.push('qemu');
      // What QEMU prints lands in qemu.log (its stdout and stderr).
      return { code: 1, effect: () => writeFile(paths.qemuLog, 'qemu-system-x86_64: could not open tap\n') };
    }
    return buildsKit(argv);
  });
  const driver = createVmDriver(
    { runner, log: silentLogger(), stateDir, idmapBase: 1_000_000, network: recordingNetworking(events) },
    { accelerator: 'tcg', bootDir: join(dir, 'boot') },
  );
  await mkdir(paths.dir, { recursive: true });
  await writeFile(paths.disk, '');
  const image = { record: { fingerprint: 'fp', properties: {} } } as unknown as ImageHandle;
  await assert.rejects(
    driver.start(spec, image),
    (e) => isTrivisorError(e) && /could not open tap/.test(e.message),
  );
  assert.deepEqual(events.slice(events.indexOf('plugTaps v1')), ['plugTaps v1', 'qemu', 'unplug v1']);
  const launch = runner.calls.find((c) => c.kind === 'spawn' && c.argv.includes('qemu-system-x86_64'));
  const argv = launch?.argv ?? [];
  // The daemon attaches to the tap (the launcher, as root) and QEMU gets it as an fd.
  const tap = argv.find((a) => a.startsWith('tap:')) ?? '';
  assert.match(tap, /^tap:\d+:tvtaptest01$/);
  assert.ok(argv.includes(`tap,id=hn-eth0,fd=${tap.split(':')[1]}`));
  assert.ok(
    argv.includes('virtio-net-pci,netdev=hn-eth0,mac=02:00:00:00:00:01,id=nic-eth0,bus=trivisor-nic0'),
  );
  assert.match(
    argv[argv.indexOf('-append') + 1] ?? '',
    /trivisor\.nics=eth0@02:00:00:00:00:01 TRIVISOR_NICS=eth0/,
  );
});

test('a vm guest with NICs on a host without networking is refused before anything runs', async () => {
  const runner = fakeRunner(buildsKit);
  const driver = createVmDriver(
    { runner, log: silentLogger(), stateDir: join(dir, 'state2'), idmapBase: 1_000_000 },
    { accelerator: 'tcg', bootDir: join(dir, 'boot') },
  );
  const paths = vmGuestPaths(join(dir, 'state2'), 'v1');
  await mkdir(paths.dir, { recursive: true });
  await writeFile(paths.disk, '');
  const image = { record: { fingerprint: 'fp', properties: {} } } as unknown as ImageHandle;
  await assert.rejects(
    driver.start(spec, image),
    (e) => isTrivisorError(e) && e.code === 'FailedPrecondition',
  );
  assert.ok(!runner.calls.some((c) => c.kind === 'spawn'), 'QEMU was not launched');
});

test('a kernel the unprivileged QEMU cannot read is refused before QEMU runs, with what to do', async () => {
  const events: string[] = [];
  const runner = fakeRunner(buildsKit);
  const root = join(dir, 'private-kernel');
  await mkdir(join(root, 'boot'), { recursive: true });
  const modules = join(root, 'lib', 'modules', RELEASE);
  await mkdir(join(modules, 'kernel'), { recursive: true });
  await writeFile(join(modules, 'modules.dep'), INITRAMFS_MODULES.map((m) => `kernel/${m}.ko:\n`).join(''));
  for (const m of INITRAMFS_MODULES) await writeFile(join(modules, 'kernel', `${m}.ko`), m);
  const kernel = join(root, 'boot', `vmlinuz-${RELEASE}`);
  await writeFile(kernel, '');
  await chmod(kernel, 0o600);
  const stateDir = join(root, 'state');
  const driver = createVmDriver(
    { runner, log: silentLogger(), stateDir, idmapBase: 1_000_000, network: recordingNetworking(events) },
    { accelerator: 'tcg', bootDir: join(root, 'boot') },
  );
  const paths = vmGuestPaths(stateDir, 'v1');
  await mkdir(paths.dir, { recursive: true });
  await writeFile(paths.disk, '');
  const image = { record: { fingerprint: 'fp', properties: {} } } as unknown as ImageHandle;
  await assert.rejects(
    driver.start(spec, image),
    (e) =>
      isTrivisorError(e) &&
      e.code === 'FailedPrecondition' &&
      e.message.includes(`${kernel} is not readable by other users (mode 600)`) &&
      /chmod o\+r/.test(e.message),
  );
  assert.ok(!runner.calls.some((c) => c.kind === 'spawn'), 'QEMU was not launched');
  assert.deepEqual(
    events.slice(events.indexOf('plugTaps v1')),
    ['plugTaps v1', 'unplug v1'],
    'taps unplugged',
  );
});
