import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Daemon, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

interface VolumeJson {
  name: string;
  pool: string;
  type: string;
  sizeBytes: number;
  usedBytes: number | null;
  usedBy: string[];
  attachments: Array<{ guest: string; device: string; path?: string }>;
}

const MiB = 2 ** 20;

/** The guest's disk whose virtio serial (vm) is SERIAL, waiting for hot-plug to show it. */
const findVirtioDisk = (serial: string) =>
  `for i in $(seq 1 100); do for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = ${serial} ] && { basename $d; exit 0; }; done; sleep 0.1; done; exit 1`;

describe('custom volumes through the CLI', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon();
  });
  after(async () => {
    await d?.destroy();
  });

  const volume = (pool: string, name: string) =>
    JSON.parse(d.ok(['storage', 'volume', 'info', pool, name, '--format', 'json'])) as VolumeJson;
  const sh = (guest: string, script: string) => d.ok(['exec', guest, '--', 'sh', '-c', script]);
  const refused = (args: string[], message: RegExp) => {
    const r = d.cli(args);
    assert.equal(r.code, 1, `${args.join(' ')} should fail: ${r.stdout}`);
    assert.match(r.stderr, message, args.join(' '));
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  };

  test('bad requests are refused with one clear line and change nothing', () => {
    d.ok(['create', 'busybox', 'idle']);
    refused(
      ['storage', 'volume', 'create', 'default', 'Bad_Name'],
      /volume name "Bad_Name" is not a DNS label/,
    );
    refused(['storage', 'volume', 'create', 'default', 'v', 'size=lots'], /is not a size/);
    refused(['storage', 'volume', 'create', 'default', 'v', 'size=1KiB'], /too small/);
    refused(['storage', 'volume', 'create', 'default', 'v', 'color=red'], /no key "color": only size/);
    refused(['storage', 'volume', 'create', 'nopool', 'v'], /Storage pool nopool not found/);
    refused(
      ['storage', 'volume', 'create', 'default', 'huge', 'size=1000TiB', '--type', 'block'],
      /more than the whole pool/,
    );
    refused(
      ['storage', 'volume', 'info', 'default', 'nope'],
      /Storage volume nope not found on pool default/,
    );
    d.ok(['storage', 'volume', 'create', 'default', 'v', 'size=16MiB']);
    refused(['storage', 'volume', 'create', 'default', 'v'], /already exists/);
    refused(['storage', 'volume', 'attach', 'default', 'v', 'ghost', '/mnt/x'], /Guest ghost not found/);
    refused(['storage', 'volume', 'attach', 'default', 'v', 'idle'], /Give the path/);
    refused(['storage', 'volume', 'attach', 'default', 'v', 'idle', 'relative'], /must be absolute/);
    refused(['storage', 'volume', 'attach', 'default', 'v', 'idle', '/proc/x'], /under \/proc/);
    refused(['storage', 'volume', 'attach', 'default', 'v', 'idle', '/'], /cannot be mounted on \//);
    refused(['storage', 'volume', 'detach', 'default', 'v', 'idle'], /not attached to guest idle/);
    refused(['storage', 'volume', 'resize', 'default', 'v', '8MiB'], /can only grow, not shrink/);
    refused(['storage', 'volume', 'resize', 'default', 'v', 'big'], /is not a size/);
    const v = volume('default', 'v');
    assert.equal(v.sizeBytes, 16 * MiB);
    assert.deepEqual(v.usedBy, []);
    assert.deepEqual(JSON.parse(d.ok(['info', 'idle', '--format', 'json'])).disks, undefined);
    d.ok(['storage', 'volume', 'delete', 'default', 'v']);
    assert.equal(existsSync(path.join(d.stateDir, 'custom', 'v')), false);
    d.ok(['delete', 'idle']);
  });

  test('a filesystem volume moves between running ct guests with its files, and survives restarts', async () => {
    d.ok(['storage', 'volume', 'create', 'default', 'shared', 'size=64MiB']);
    d.ok(['launch', 'busybox', 'c1']);
    assert.match(
      d.ok(['storage', 'volume', 'attach', 'default', 'shared', 'c1', '/mnt/data']),
      /Attached volume shared to c1 as shared at \/mnt\/data \(live\)/,
    );
    sh('c1', 'echo from-c1 > /mnt/data/hello && mkdir /mnt/data/dir && touch /mnt/data/dir/x');
    // Root in the guest is an unprivileged host uid: the files are its own on the host.
    const file = path.join(d.stateDir, 'custom', 'shared', 'hello');
    assert.equal(readFileSync(file, 'utf8'), 'from-c1\n');
    assert.equal(statSync(file).uid, 1_000_000);
    const v = volume('default', 'shared');
    assert.deepEqual(v.attachments, [{ guest: 'c1', device: 'shared', path: '/mnt/data' }]);
    assert.ok((v.usedBytes ?? 0) > 0);
    assert.match(d.ok(['storage', 'volume', 'list', 'default']), /shared\s+filesystem\s+64MiB\s+\S+\s+c1/);
    refused(['storage', 'volume', 'delete', 'default', 'shared'], /attached to c1: detach it first/);
    refused(
      ['storage', 'volume', 'attach', 'default', 'shared', 'c1', '/mnt/other'],
      /already attached to c1/,
    );

    assert.match(
      d.ok(['storage', 'volume', 'detach', 'default', 'shared', 'c1']),
      /Detached volume shared from c1 \(live\)/,
    );
    assert.equal(sh('c1', 'cat /mnt/data/hello 2>/dev/null || echo gone'), 'gone\n');

    d.ok(['launch', 'busybox', 'c2']);
    d.ok(['storage', 'volume', 'attach', 'default', 'shared', 'c2', '/srv/vol']);
    assert.equal(sh('c2', 'cat /srv/vol/hello'), 'from-c1\n');
    assert.equal(sh('c2', 'stat -c %u:%g /srv/vol/hello'), '0:0\n');
    sh('c2', 'echo from-c2 >> /srv/vol/hello');

    // A filesystem volume can be in several ct guests at once.
    d.ok(['storage', 'volume', 'attach', 'default', 'shared', 'c1', '/mnt/data']);
    assert.equal(sh('c1', 'cat /mnt/data/hello'), 'from-c1\nfrom-c2\n');
    d.ok(['storage', 'volume', 'detach', 'default', 'shared', 'c1']);

    // Attachments are in the guest spec: back at every start, and after a daemon kill.
    assert.deepEqual(JSON.parse(d.ok(['info', 'c2', '--format', 'json'])).disks, {
      shared: { type: 'disk', pool: 'default', source: 'shared', path: '/srv/vol' },
    });
    await d.kill9();
    await d.restart();
    d.ok(['restart', 'c2']);
    assert.equal(sh('c2', 'cat /srv/vol/hello'), 'from-c1\nfrom-c2\n');
    d.ok(['storage', 'volume', 'detach', 'default', 'shared', 'c2']);
    assert.equal(sh('c2', 'test -e /srv/vol/hello && echo there || echo gone'), 'gone\n');
    d.ok(['delete', '--force', 'c1', 'c2']);
    d.ok(['storage', 'volume', 'delete', 'default', 'shared']);
  });

  test('a block volume is refused by ct guests and a filesystem volume by vm and pvm guests', () => {
    d.ok(['create', 'busybox', 'c3']);
    d.ok(['create', 'busybox', 'v0', '--model', 'vm']);
    d.ok(['storage', 'volume', 'create', 'default', 'blk', 'size=8MiB', '--type', 'block']);
    d.ok(['storage', 'volume', 'create', 'default', 'fs', 'size=8MiB']);
    refused(['storage', 'volume', 'attach', 'default', 'blk', 'c3'], /block volume, which only vm and pvm/);
    refused(
      ['storage', 'volume', 'attach', 'default', 'fs', 'v0', '/mnt'],
      /filesystem volume, which only ct/,
    );
    refused(
      ['storage', 'volume', 'attach', 'default', 'blk', 'v0', '/mnt'],
      /A block volume has no mount path/,
    );
    d.ok(['delete', 'c3', 'v0']);
    d.ok(['storage', 'volume', 'delete', 'default', 'blk']);
    d.ok(['storage', 'volume', 'delete', 'default', 'fs']);
  });

  test('a block volume is hot-plugged into a running vm, grows live, and moves to a running pvm with its data', async () => {
    d.ok(['storage', 'volume', 'create', 'default', 'disk1', 'size=32MiB', '--type', 'block']);
    d.ok(['launch', 'busybox', 'v1', '--model', 'vm', '-c', 'limits.memory=128MiB']);
    assert.match(
      d.ok(['storage', 'volume', 'attach', 'default', 'disk1', 'v1']),
      /Attached volume disk1 to v1 as disk1 \(live\)/,
    );
    const dev = sh('v1', findVirtioDisk('vol-disk1')).trim();
    assert.match(dev, /^vd[b-z]$/);
    assert.equal(Number(sh('v1', `cat /sys/block/${dev}/size`)) * 512, 32 * MiB);
    sh(
      'v1',
      `mke2fs -F /dev/${dev} >/dev/null 2>&1 && mkdir -p /mnt/d && mount /dev/${dev} /mnt/d && echo from-vm > /mnt/d/f && umount /mnt/d`,
    );

    // Grow: the running guest sees the new capacity at once; shrinking is refused.
    assert.match(
      d.ok(['storage', 'volume', 'resize', 'default', 'disk1', '48MiB']),
      /Resized volume disk1 to 48MiB \(v1 sees it now\)/,
    );
    assert.equal(Number(sh('v1', `cat /sys/block/${dev}/size`)) * 512, 48 * MiB);
    assert.equal(statSync(path.join(d.stateDir, 'custom', 'disk1.img')).size, 48 * MiB);
    refused(['storage', 'volume', 'resize', 'default', 'disk1', '32MiB'], /can only grow/);
    refused(['storage', 'volume', 'delete', 'default', 'disk1'], /attached to v1/);

    // One disk, one guest.
    d.ok(['launch', 'busybox', 'p1', '--model', 'pvm']);
    refused(
      ['storage', 'volume', 'attach', 'default', 'disk1', 'p1'],
      /attached to v1: a disk can be in one guest/,
    );

    assert.match(d.ok(['storage', 'volume', 'detach', 'default', 'disk1', 'v1']), /\(live\)/);
    assert.equal(sh('v1', `test -e /sys/block/${dev} && echo there || echo gone`), 'gone\n');

    assert.match(d.ok(['storage', 'volume', 'attach', 'default', 'disk1', 'p1']), /\(live\)/);
    // The kernel runs in its jail (decision 17): the volume was mounted into it, nothing else of the pool.
    const p1 = JSON.parse(d.ok(['info', 'p1', '--format', 'json'])) as { state: { pid: number } };
    const inJail = (p: string) => existsSync(`/proc/${p1.state.pid}/root${p}`);
    assert.ok(inJail('/.uml/volumes/disk1'), 'the volume is in the jail');
    assert.ok(!inJail(path.join(d.stateDir, 'custom')), "the pool's directory is not");
    // ubd0 is the root disk, ubd1 the config disk's slot: the volume is ubd2, /dev/ubdc.
    assert.equal(Number(sh('p1', 'cat /sys/block/ubdc/size')) * 512, 48 * MiB);
    assert.equal(
      sh('p1', 'mkdir -p /mnt/d && mount /dev/ubdc /mnt/d && cat /mnt/d/f && echo from-pvm >> /mnt/d/f'),
      'from-vm\n',
    );
    // The kernel will not let go of a mounted disk: refused, and the volume stays attached.
    refused(['storage', 'volume', 'detach', 'default', 'disk1', 'p1'], /still uses volume disk1/);
    assert.deepEqual(volume('default', 'disk1').usedBy, ['/1.0/guests/p1']);
    // UML reads a disk's size when it is plugged: a disk in use shows a grown size at the next start,
    // one the guest does not hold open is plugged again at once.
    assert.match(
      d.ok(['storage', 'volume', 'resize', 'default', 'disk1', '64MiB']),
      /p1 sees it after its next start/,
    );
    assert.equal(Number(sh('p1', 'cat /sys/block/ubdc/size')) * 512, 48 * MiB);
    sh('p1', 'umount /mnt/d');
    assert.match(d.ok(['storage', 'volume', 'resize', 'default', 'disk1', '80MiB']), /p1 sees it now/);
    assert.equal(Number(sh('p1', 'cat /sys/block/ubdc/size')) * 512, 80 * MiB);
    assert.match(d.ok(['storage', 'volume', 'detach', 'default', 'disk1', 'p1']), /\(live\)/);
    assert.equal(sh('p1', 'test -e /sys/block/ubdc && echo there || echo gone'), 'gone\n');
    assert.ok(!inJail('/.uml/volumes/disk1'), 'and is taken out of the jail');

    // Attached to a stopped guest: it is there at the next start (and can still be unplugged live).
    d.ok(['stop', 'p1']);
    assert.match(
      d.ok(['storage', 'volume', 'attach', 'default', 'disk1', 'p1']),
      /p1 gets it when it starts/,
    );
    d.ok(['start', 'p1']);
    assert.equal(Number(sh('p1', 'cat /sys/block/ubdc/size')) * 512, 80 * MiB);
    assert.equal(sh('p1', 'mount /dev/ubdc /mnt/d && cat /mnt/d/f && umount /mnt/d'), 'from-vm\nfrom-pvm\n');
    // The kernel opens its disks as the guest's host uid; once the guest is gone, root has the file back
    // (a later guest may get the same uid).
    const img = path.join(d.stateDir, 'custom', 'disk1.img');
    assert.ok(statSync(img).uid > 1_000_000, `owned by the guest's uid: ${statSync(img).uid}`);
    d.ok(['delete', '--force', 'v1', 'p1']);
    for (let i = 0; i < 50 && statSync(img).uid !== 0; i++) await sleep(100);
    assert.equal(statSync(img).uid, 0);
    assert.deepEqual(volume('default', 'disk1').usedBy, []);
    d.ok(['storage', 'volume', 'delete', 'default', 'disk1']);
    assert.equal(existsSync(path.join(d.stateDir, 'custom', 'disk1.img')), false);
  });

  test('a vm guest stopped with a volume gets it at start, on a port it can unplug live', () => {
    d.ok(['storage', 'volume', 'create', 'default', 'disk2', 'size=16MiB', '--type', 'block']);
    d.ok(['create', 'busybox', 'v2', '--model', 'vm', '-c', 'limits.memory=128MiB']);
    assert.match(
      d.ok(['storage', 'volume', 'attach', 'default', 'disk2', 'v2']),
      /v2 gets it when it starts/,
    );
    d.ok(['start', 'v2']);
    const dev = sh('v2', findVirtioDisk('vol-disk2')).trim();
    assert.match(d.ok(['storage', 'volume', 'detach', 'default', 'disk2', 'v2']), /\(live\)/);
    assert.equal(sh('v2', `test -e /sys/block/${dev} && echo there || echo gone`), 'gone\n');
    d.ok(['delete', '--force', 'v2']);
    d.ok(['storage', 'volume', 'delete', 'default', 'disk2']);
  });

  test('on a btrfs pool a filesystem volume is a subvolume whose qgroup limits what a guest writes', () => {
    d.ok(['storage', 'create', 'bp', 'btrfs', 'size=300MiB']);
    d.ok(['storage', 'volume', 'create', 'bp', 'q', 'size=8MiB']);
    d.ok(['launch', 'busybox', 'c4']);
    d.ok(['storage', 'volume', 'attach', 'bp', 'q', 'c4', '/data']);
    const r = d.cli([
      'exec',
      'c4',
      '--',
      'sh',
      '-c',
      'dd if=/dev/zero of=/data/big bs=1M count=32 2>&1; sync',
    ]);
    assert.match(r.stdout + r.stderr, /quota exceeded/i);
    const v = volume('bp', 'q');
    assert.ok((v.usedBytes ?? 0) > 4 * MiB && (v.usedBytes ?? 0) <= 9 * MiB, `used ${v.usedBytes}`);
    d.ok(['storage', 'volume', 'resize', 'bp', 'q', '64MiB']);
    sh('c4', 'rm -f /data/big; dd if=/dev/zero of=/data/big bs=1M count=32 2>/dev/null; sync');
    assert.ok((volume('bp', 'q').usedBytes ?? 0) >= 32 * MiB);
    refused(['storage', 'delete', 'bp'], /holds volumes q: delete them first/);
    d.ok(['storage', 'volume', 'detach', 'bp', 'q', 'c4']);
    d.ok(['delete', '--force', 'c4']);
    d.ok(['storage', 'volume', 'delete', 'bp', 'q']);
    d.ok(['storage', 'delete', 'bp']);
  });
});
