import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

interface PoolJson {
  name: string;
  driver: string;
  path: string;
  guests?: Array<{ name: string; usedBytes: number | null; limitBytes: number | null }>;
}

const mountOf = (at: string) =>
  readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .find((f) => f[1] === at);

describe('guests of every model on btrfs and dir pools; copies and imports across pools; recover keeps the pool', () => {
  let d: Daemon;
  let dir: string;
  let fast: string;
  let plain: string;
  let loopFile: string;
  before(async () => {
    d = await startDaemon();
    dir = await makeRunDir('pool-guests');
    d.ok(['storage', 'create', 'fast', 'btrfs', 'size=1GiB']);
    d.ok(['storage', 'create', 'plain', 'dir']);
    fast = pool('fast').path;
    plain = pool('plain').path;
    loopFile = path.join(d.stateDir, 'storage-pools/fast.img');
  });
  after(async () => {
    await d?.destroy();
    if (dir) await removeRunDir(dir);
    // The loop mount is made with autoclear: once unmounted, no loop device stays behind.
    if (loopFile) {
      assert.equal(spawnSync('losetup', ['-j', loopFile], { encoding: 'utf8' }).stdout.trim(), '');
    }
  });

  const pool = (name: string) => JSON.parse(d.ok(['storage', 'info', name, '--format', 'json'])) as PoolJson;
  const sh = (guest: string, script: string) => d.ok(['exec', guest, '--', 'sh', '-c', script]);
  /** Where a guest's directory really is: a pool's guests/NAME, or guests/NAME of the state dir. */
  const placeOf = (guest: string) => {
    const link = path.join(d.stateDir, 'guests', guest);
    return lstatSync(link).isSymbolicLink() ? readlinkSync(link) : link;
  };
  const usageOn = (poolName: string, guest: string) =>
    pool(poolName).guests?.find((g) => g.name === guest)?.usedBytes ?? null;

  for (const model of ['vm', 'pvm'] as const) {
    test(`a ${model} guest on a btrfs pool boots, snapshots, restores and copies there`, () => {
      const g = `${model}a`;
      d.ok(['launch', 'busybox', g, '--model', model, '--storage', 'fast', '-c', 'limits.memory=128MiB']);
      const sub = path.join(fast, 'guests', g);
      assert.equal(placeOf(g), sub);
      assert.equal(spawnSync('btrfs', ['subvolume', 'show', sub]).status, 0, 'a subvolume');
      // Both drivers close it: QEMU gets descriptors, UML a jail (decisions 19 and 17).
      assert.equal(statSync(sub).mode & 0o777, 0o700, 'the mode its driver gives it');
      const disk = model === 'vm' ? path.join(sub, 'root.qcow2') : path.join(sub, 'disk/root.cow');
      assert.ok(existsSync(disk), `${disk} is on the pool`);
      sh(
        g,
        'mkdir -p /srv && printf one > /srv/data.txt && dd if=/dev/urandom of=/srv/blob bs=1M count=4 2>/dev/null && sync',
      );
      d.ok(['snapshot', 'create', g, 's0']);
      sh(g, 'printf two > /srv/data.txt');
      d.ok(['snapshot', 'restore', g, 's0']);
      assert.equal(sh(g, 'cat /srv/data.txt'), 'one');
      if (model === 'pvm') {
        // The snapshot, and the disk restored from it, are clones (cp --reflink=always): their extents are shared.
        const snapFile = path.join(sub, 'snapshots/s0/root.cow');
        const du = spawnSync('btrfs', ['filesystem', 'du', '--raw', snapFile], { encoding: 'utf8' });
        const [total = 0, exclusive = 0] = (du.stdout.trim().split('\n').pop() ?? '')
          .trim()
          .split(/\s+/)
          .map(Number);
        assert.ok(
          total > 4 * 2 ** 20 && exclusive < total / 2,
          `snapshot ${total} bytes, ${exclusive} not shared`,
        );
      }

      d.ok(['copy', g, `${g}c`, '--start']);
      assert.equal(placeOf(`${g}c`), path.join(fast, 'guests', `${g}c`), 'a copy stays on its pool');
      assert.equal(sh(`${g}c`, 'cat /srv/data.txt'), 'one');
      sh(`${g}c`, 'printf copy > /srv/data.txt');
      assert.equal(sh(g, 'cat /srv/data.txt'), 'one', 'the source is independent of its copy');

      if (model === 'pvm') {
        // Across pools: btrfs to dir.
        d.ok(['copy', g, `${g}x`, '--storage', 'plain', '--start']);
        assert.equal(placeOf(`${g}x`), path.join(plain, 'guests', `${g}x`));
        assert.equal(sh(`${g}x`, 'cat /srv/data.txt'), 'one');
        d.ok(['delete', '--force', `${g}x`]);
      }

      spawnSync('sync');
      assert.ok((usageOn('fast', g) ?? 0) > 0, `${g} shows its space on the pool`);
      assert.ok((usageOn('fast', `${g}c`) ?? 0) > 0);
      d.ok(['delete', '--force', g, `${g}c`]);
      assert.equal(existsSync(sub), false, 'the subvolume goes with the guest');
      assert.equal(existsSync(path.join(fast, 'guests', `${g}c`)), false);
    });
  }

  test('ct guests are copied and imported between the default, btrfs and dir pools with their content', () => {
    d.ok(['launch', 'busybox', 'c1']);
    sh('c1', 'dd if=/dev/urandom of=/data bs=1M count=2 2>/dev/null && sync');
    const want = sh('c1', 'sha256sum /data');

    d.ok(['copy', 'c1', 'c2', '--storage', 'fast', '--start']);
    assert.equal(placeOf('c2'), path.join(fast, 'guests/c2'));
    assert.equal(sh('c2', 'sha256sum /data'), want);

    d.ok(['copy', 'c2', 'c3', '--storage', 'plain', '--start']);
    assert.equal(placeOf('c3'), path.join(plain, 'guests/c3'), 'btrfs to dir');
    assert.equal(sh('c3', 'sha256sum /data'), want);

    d.ok(['copy', 'c3', 'c4', '--storage', 'default', '--start']);
    assert.equal(placeOf('c4'), path.join(d.stateDir, 'guests/c4'), 'dir pool to the default pool');
    assert.equal(sh('c4', 'sha256sum /data'), want);

    const archive = path.join(dir, 'c3.backup');
    d.ok(['export', 'c3', archive]);
    assert.match(d.ok(['import', archive, 'c5', '--storage', 'fast']), /Imported c5/);
    assert.equal(placeOf('c5'), path.join(fast, 'guests/c5'));
    d.ok(['start', 'c5']);
    assert.equal(sh('c5', 'sha256sum /data'), want);

    // Per-guest space on dir pools too (the default one included), measured with du.
    spawnSync('sync');
    assert.ok((usageOn('plain', 'c3') ?? 0) >= 2 * 2 ** 20, `c3 uses ${usageOn('plain', 'c3')}`);
    assert.ok((usageOn('default', 'c1') ?? 0) >= 2 * 2 ** 20, `c1 uses ${usageOn('default', 'c1')}`);
    assert.equal(usageOn('default', 'c2'), null, 'a guest on another pool is not listed on the default one');
    const held = d.cli(['storage', 'delete', 'plain']);
    assert.equal(held.code, 1);
    assert.match(
      held.stderr,
      /Storage pool plain holds guests c3: delete them or copy them to another pool first/,
    );
    assert.ok(existsSync(path.join(plain, 'guests/c3')), 'a refused delete changes nothing');
    d.ok(['delete', '--force', 'c1', 'c2', 'c3', 'c4', 'c5']);
    assert.equal(existsSync(path.join(fast, 'guests/c2')), false);
  });

  test('vm guests are copied and imported between pools with their content', () => {
    d.ok(['launch', 'busybox', 'v1', '--model', 'vm', '-c', 'limits.memory=128MiB']);
    sh('v1', 'mkdir -p /srv && dd if=/dev/urandom of=/srv/blob bs=1M count=2 2>/dev/null && sync');
    const want = sh('v1', 'sha256sum /srv/blob');
    d.ok(['copy', 'v1', 'v2', '--storage', 'fast', '--start']);
    assert.equal(placeOf('v2'), path.join(fast, 'guests/v2'));
    assert.equal(sh('v2', 'sha256sum /srv/blob'), want);
    const archive = path.join(dir, 'v2.backup');
    d.ok(['export', 'v2', archive]);
    d.ok(['import', archive, 'v3', '--storage', 'plain']);
    assert.equal(placeOf('v3'), path.join(plain, 'guests/v3'));
    d.ok(['start', 'v3']);
    assert.equal(sh('v3', 'sha256sum /srv/blob'), want);
    spawnSync('sync');
    assert.ok((usageOn('plain', 'v3') ?? 0) > 0, 'a vm guest on a dir pool shows its space');
    d.ok(['delete', '--force', 'v1', 'v2', 'v3']);
  });

  test('copies and imports onto a pool that does not exist, and limits.disk on a dir pool, are refused', () => {
    d.ok(['create', 'busybox', 'x1']);
    const cases: Array<[string[], RegExp]> = [
      [['copy', 'x1', 'x2', '--storage', 'nope'], /Storage pool nope not found/],
      [
        ['launch', 'busybox', 'x3', '--storage', 'plain', '-c', 'limits.disk=100MiB'],
        /limits\.disk needs a btrfs storage pool; plain is a dir pool/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = d.cli(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, message);
      assert.equal(r.stderr.split('\n').length, 2, 'one line');
    }
    for (const g of ['x2', 'x3']) {
      assert.equal(existsSync(path.join(d.stateDir, 'guests', g)), false);
      assert.equal(existsSync(path.join(plain, 'guests', g)), false);
    }
    d.ok(['delete', '--force', 'x1']);
  });

  test('after the store is lost, recover puts guests back on their pools, and the pools back too', async () => {
    d.ok(['launch', 'busybox', 'r1', '--storage', 'fast', '-c', 'limits.disk=200MiB']);
    d.ok(['launch', 'busybox', 'r2', '--model', 'pvm', '--storage', 'plain', '-c', 'limits.memory=128MiB']);
    d.ok(['create', 'busybox', 'r3']);
    await d.kill9();
    for (const f of readdirSync(d.stateDir).filter((n) => n.startsWith('store.db'))) {
      rmSync(path.join(d.stateDir, f));
    }
    await d.restart();
    assert.deepEqual(
      (JSON.parse(d.ok(['storage', 'list', '--format', 'json'])) as PoolJson[]).map((p) => p.name),
      ['default'],
    );
    const out = d.ok(['admin', 'recover']);
    assert.match(out, /^Recovered r1 \(ct, Running\) on pool fast$/m);
    assert.match(out, /^Recovered r2 \(pvm, Running\) on pool plain$/m);
    assert.match(out, /^Recovered r3 \(ct, Stopped\)$/m);
    const back = pool('fast');
    assert.equal(back.driver, 'btrfs');
    assert.equal(back.path, fast);
    assert.equal(back.guests?.find((g) => g.name === 'r1')?.limitBytes, 200 * 2 ** 20);
    assert.equal(pool('plain').driver, 'dir');
    // The pool record is what copies and deletes go by.
    d.ok(['copy', 'r1', 'r1c']);
    assert.equal(placeOf('r1c'), path.join(fast, 'guests/r1c'));
    assert.equal(d.ok(['exec', 'r2', '--', 'hostname']), 'r2\n');
    d.ok(['delete', '--force', 'r1', 'r1c', 'r2', 'r3']);
    assert.equal(existsSync(path.join(fast, 'guests/r1')), false, 'the subvolume goes with the guest');
    assert.equal(existsSync(path.join(plain, 'guests/r2')), false);
  });

  test('the pools are deleted with no mount or loop device left', () => {
    d.ok(['storage', 'delete', 'fast']);
    d.ok(['storage', 'delete', 'plain']);
    assert.equal(mountOf(fast), undefined);
    assert.equal(existsSync(loopFile), false);
    assert.equal(spawnSync('losetup', ['-j', loopFile], { encoding: 'utf8' }).stdout.trim(), '');
  });
});
