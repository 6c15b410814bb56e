import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { unmountCtLayer } from '../../src/drivers/ct/ct-layer-image.ts';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { killGuest } from '../../src/host/guest-processes.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually, startDaemon } from '../system/harness.ts';

// Storage only: the guest needs no network.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/*
 * A ct guest on a pool whose file system overlayfs refuses as an upper dir (decision 0094). NFS is
 * what production has; this machine's kernel has no NFS client (no nfs in /proc/filesystems), so
 * the pool is a FUSE mount (bindfs), which overlayfs refuses the same way ("upper fs does not
 * support tmpfile / RENAME_WHITEOUT ... missing required features"): the test checks that first.
 */

const run = (argv: string[]) => spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8' });
const mountAt = (at: string) =>
  readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .find((f) => f[4] === at);
/** The loop devices whose backing file is `file` (losetup -j). */
const loopsOf = (file: string) => run(['losetup', '-j', file]).stdout.trim();

describe('a ct guest on a pool overlayfs refuses as upper keeps its layer in a loop-mounted image', () => {
  let d: Daemon | undefined;
  let dir = '';
  let fuse = '';
  before(async () => {
    dir = await makeRunDir('ct-layer-image');
    const backing = path.join(dir, 'backing');
    fuse = path.join(dir, 'net');
    mkdirSync(backing);
    mkdirSync(fuse);
    // An unprivileged guest's root walks to its rootfs/ from its user namespace (search only).
    chmodSync(dir, 0o711);
    const r = run(['bindfs', backing, fuse]);
    assert.equal(r.status, 0, `bindfs (Debian's bindfs package): ${r.stderr}`);
    d = await startDaemon();
    d.ok(['storage', 'create', 'net', 'dir', `source=${fuse}`]);
  });
  after(async () => {
    await d?.destroy();
    if (fuse && mountAt(fuse)) run(['umount', fuse]);
    if (dir) await removeRunDir(dir);
  });

  const daemon = () => {
    if (!d) throw new Error('no daemon');
    return d;
  };
  const sh = (script: string) => daemon().ok(['exec', 'g', '--', 'sh', '-c', script]);

  test('the pool refuses an overlay upper dir; the guest runs on its image, survives a daemon restart, snapshots, is fenced, and leaves no mount or loop device', async () => {
    // The stand-in refuses an upper dir as NFS does: without the image no ct guest could start here.
    const probe = path.join(dir, 'probe');
    for (const sub of ['lower', 'target']) mkdirSync(path.join(probe, sub), { recursive: true });
    for (const sub of ['u', 'w']) mkdirSync(path.join(fuse, sub));
    const overlay = run([
      'mount',
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=${probe}/lower,upperdir=${fuse}/u,workdir=${fuse}/w`,
      `${probe}/target`,
    ]);
    if (overlay.status === 0) run(['umount', `${probe}/target`]);
    assert.notEqual(overlay.status, 0, 'overlayfs refuses the FUSE directory as an upper dir');

    const d = daemon();
    d.ok(['launch', 'busybox', 'g', '--storage', 'net', '-c', 'limits.disk=256MiB']);
    const link = path.join(d.stateDir, 'guests', 'g');
    assert.ok(lstatSync(link).isSymbolicLink());
    const gdir = readlinkSync(link);
    assert.ok(gdir.startsWith(`${fuse}/`), `${gdir} is on the pool`);
    const image = path.join(gdir, 'layer.img');
    // Mounted in the member's own state dir, not on the pool.
    const layer = path.join(d.stateDir, 'ct-layers/g');
    assert.equal(statSync(image).size, 256 * 1024 ** 2, 'limits.disk sizes the image');
    assert.ok(!existsSync(path.join(gdir, 'upper')), 'no upper dir on the pool itself');
    const mounted = mountAt(layer);
    assert.ok(mounted, `${layer} is mounted while the guest runs`);
    assert.equal(mounted[mounted.indexOf('-') + 1], 'ext4');
    assert.match(loopsOf(image), /^\/dev\/loop\d+:/, 'one loop device backs it');
    assert.equal(loopsOf(image).split('\n').length, 1);

    // A size the image cannot take is refused in one line, and nothing changes.
    const small = d.cli(['config', 'set', 'g', 'limits.disk=1MiB']);
    assert.notEqual(small.code, 0);
    assert.match(small.stderr, /too small for the layer image of guest g.*at least 64MiB/);
    assert.equal(d.ok(['config', 'get', 'g', 'limits.disk']).trim(), '256MiB');
    sh('mkdir -p /srv && printf one > /srv/data.txt && rm /bin/ls && sync');
    assert.equal(
      readFileSync(path.join(layer, 'upper/srv/data.txt'), 'utf8'),
      'one',
      'written into the image',
    );
    // A whiteout (a deleted image file) is what NFS could not hold as an upper dir.
    assert.ok(statSync(path.join(layer, 'upper/bin/ls')).isCharacterDevice(), 'the whiteout is in the image');

    // A restarted daemon adopts the running guest with its layer mounted.
    await d.kill9();
    await d.restart();
    assert.equal(sh('cat /srv/data.txt'), 'one');
    assert.ok(mountAt(layer), 'still mounted after the restart');

    // A snapshot is a copy of the image, taken frozen while the guest runs.
    d.ok(['snapshot', 'create', 'g', 's0']);
    assert.ok(statSync(path.join(gdir, 'snapshots/s0/layer.img')).isFile());
    sh('printf two > /srv/data.txt');
    // The HA agent's fence, as src/ha-agent.ts does it: the guest killed by its cgroup, then its
    // layer unmounted from this member's state dir (the agent itself is the cluster tests').
    assert.deepEqual(await killGuest(cgroupParentOf(d.stateDir), 'g'), [], 'the guest killed');
    await unmountCtLayer(hostRunner(), d.stateDir, 'g');
    assert.equal(mountAt(layer), undefined, 'unmounted by the fence');
    assert.ok(!existsSync(layer), 'its mount point removed');
    assert.equal(loopsOf(image), '', 'its loop device detached');
    const status = () =>
      (JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string; status: string }>).find(
        (g) => g.name === 'g',
      )?.status;
    await eventually('the daemon sees g stopped', () => status() === 'Stopped', 60_000);

    d.ok(['snapshot', 'restore', 'g', 's0']);
    d.ok(['start', 'g']);
    assert.equal(sh('cat /srv/data.txt'), 'one', 'the snapshot restored');
    assert.ok(statSync(path.join(layer, 'upper/bin/ls')).isCharacterDevice(), 'the whiteout came back too');

    // A backup of the layer (an export) holds the guest's file.
    const archive = path.join(dir, 'g.tar.zst');
    d.ok(['export', 'g', archive, '--with-snapshots']);
    assert.ok(statSync(archive).size > 0);

    d.ok(['delete', '--force', 'g']);
    assert.equal(mountAt(layer), undefined, 'unmounted at delete');
    assert.equal(loopsOf(image), '', 'no loop device left');
    assert.ok(!existsSync(gdir), 'the guest directory is gone');
  });
});
