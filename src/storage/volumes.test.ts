import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ctVolumeMounts } from '../drivers/ct/ct-volumes.ts';
import type { AttachedVolume } from '../drivers/guest-volumes.ts';
import { umlVolumeArgs } from '../drivers/pvm/pvm-volumes.ts';
import { qemuFds } from '../drivers/vm/qemu-fds.ts';
import { vmVolumeArgs } from '../drivers/vm/vm-volumes.ts';
import { checkMountPath, parseVolumeSize, parseVolumeType, volumePath } from './volumes.ts';

const vol = (
  device: string,
  type: 'filesystem' | 'block',
  extra: Partial<AttachedVolume> = {},
): AttachedVolume => ({
  device,
  pool: 'default',
  volume: device,
  type,
  hostPath: type === 'block' ? `/s/custom/${device}.img` : `/s/custom/${device}`,
  sizeBytes: 2 ** 20,
  ...extra,
});

describe('volume rules', () => {
  test('sizes are rounded up to 4 KiB and must be at least 1MiB', () => {
    assert.equal(parseVolumeSize('1GiB'), 2 ** 30);
    assert.equal(parseVolumeSize('1100000'), 1101824);
    assert.throws(() => parseVolumeSize('512KiB'), /too small/);
    assert.throws(() => parseVolumeSize('-1'), /is not a size/);
  });

  test('the type defaults to filesystem and is one of two', () => {
    assert.equal(parseVolumeType(undefined), 'filesystem');
    assert.equal(parseVolumeType('block'), 'block');
    assert.throws(() => parseVolumeType('zvol'), /use filesystem or block/);
  });

  test('mount paths are absolute, normalized and stay out of the kernel trees', () => {
    assert.equal(checkMountPath('/mnt//data/'), '/mnt/data');
    for (const bad of ['mnt', '/', '/a/../b', '/proc', '/sys/x', '/dev/shm', '/a,b', '/.trivisor/x'])
      assert.throws(() => checkMountPath(bad), /mount|mounted/, bad);
  });

  test('volumes live under custom/ of their pool, block ones as raw images', () => {
    assert.equal(volumePath('/p', { name: 'a', type: 'filesystem' }), '/p/custom/a');
    assert.equal(volumePath('/p', { name: 'a', type: 'block' }), '/p/custom/a.img');
  });
});

describe('volumes on the engines command lines', () => {
  test('ct: a bind mount per filesystem volume', () => {
    assert.deepEqual(ctVolumeMounts([vol('data', 'filesystem', { path: '/mnt/data' }), vol('b', 'block')]), [
      {
        destination: '/mnt/data',
        type: 'bind',
        source: '/s/custom/data',
        options: ['rbind', 'rw', 'nosuid', 'nodev'],
      },
    ]);
  });

  test('vm q35: four hot-plug root ports, and each volume on one of them with its serial', () => {
    const fds = qemuFds();
    const argv = vmVolumeArgs([vol('d1', 'block')], 'q35', fds);
    assert.deepEqual(argv.slice(0, 2), [
      '-device',
      'pcie-root-port,id=trivisor-port0,bus=pcie.0,chassis=100',
    ]);
    assert.equal(argv.filter((a) => a.startsWith('pcie-root-port')).length, 4);
    const i = argv.indexOf('-blockdev');
    assert.deepEqual(JSON.parse(argv[i + 1] ?? ''), {
      driver: 'raw',
      'node-name': 'vol-d1',
      discard: 'unmap',
      file: { driver: 'file', filename: '/dev/fdset/1' },
    });
    // QEMU runs unprivileged: the daemon opens the volume and hands it over (fd 3, fd set 1).
    assert.deepEqual(fds.entries, [
      { fd: 3, source: { kind: 'file', path: '/s/custom/d1.img', access: 'readwrite' } },
    ]);
    assert.deepEqual(fds.addFdArgs(), ['-add-fd', 'fd=3,set=1,opaque=/s/custom/d1.img']);
    assert.deepEqual(JSON.parse(argv[i + 3] ?? ''), {
      driver: 'virtio-blk-pci',
      id: 'vol-d1',
      drive: 'vol-d1',
      serial: 'vol-d1',
      bus: 'trivisor-port0',
    });
  });

  test('vm pc: no root ports, volumes on the root bus', () => {
    const argv = vmVolumeArgs([vol('d1', 'block')], 'pc', qemuFds());
    assert.ok(!argv.some((a) => a.includes('pcie-root-port')));
    assert.equal(JSON.parse(argv[3] ?? '').bus, undefined);
  });

  test('pvm: block volumes from ubd2 on, by their place in the jail (decision 0017)', () => {
    assert.deepEqual(umlVolumeArgs([vol('a', 'block'), vol('f', 'filesystem'), vol('b', 'block')]), [
      'ubd2=/.uml/volumes/a',
      'ubd3=/.uml/volumes/b',
    ]);
  });
});
