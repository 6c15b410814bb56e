import assert from 'node:assert/strict';
import { test } from 'node:test';
import { diskCountersOf } from './vm-driver.ts';

test('diskCountersOf() names each disk by its top node, as QEMU 7 answers query-blockstats for -blockdev disks, and leaves out an empty CD-ROM', () => {
  const stats = (rd: number, wr: number) => ({
    rd_bytes: rd,
    wr_bytes: wr,
    rd_operations: rd / 512,
    wr_operations: wr / 512,
  });
  const answer = [
    {
      device: '',
      'node-name': 'root',
      qdev: '/machine/peripheral-anon/device[2]/virtio-backend',
      stats: stats(1024, 2048),
    },
    {
      device: '',
      'node-name': 'config',
      qdev: '/machine/peripheral-anon/device[3]/virtio-backend',
      stats: stats(512, 0),
    },
    { device: '', qdev: 'cdrom0', stats: stats(0, 0) },
    { device: 'ide1-cd0', stats: stats(0, 0) },
  ];
  assert.deepEqual(diskCountersOf(answer), {
    root: { readBytes: 1024, writtenBytes: 2048, reads: 2, writes: 4 },
    config: { readBytes: 512, writtenBytes: 0, reads: 1, writes: 0 },
    'ide1-cd0': { readBytes: 0, writtenBytes: 0, reads: 0, writes: 0 },
  });
});
