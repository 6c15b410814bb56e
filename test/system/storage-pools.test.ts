import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Daemon, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

interface PoolJson {
  name: string;
  driver: string;
  status: string;
  path: string;
  usage: { totalBytes: number; usedBytes: number } | null;
  guests?: Array<{ name: string; usedBytes: number | null; limitBytes: number | null }>;
}

const mountOf = (at: string) =>
  readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .find((f) => f[1] === at);

describe('storage pools: dir and btrfs on a loop file', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon();
  });
  after(async () => {
    await d?.destroy();
  });

  const pools = () => JSON.parse(d.ok(['storage', 'list', '--format', 'json'])) as PoolJson[];
  const pool = (name: string) => JSON.parse(d.ok(['storage', 'info', name, '--format', 'json'])) as PoolJson;

  test('the default dir pool exists and shows the space of the state directory', () => {
    const list = pools();
    assert.deepEqual(
      list.map((p) => [p.name, p.driver, p.status]),
      [['default', 'dir', 'Created']],
    );
    assert.equal(list[0]?.path, d.stateDir);
    assert.ok((list[0]?.usage?.totalBytes ?? 0) > 0);
    assert.match(d.ok(['storage', 'list']), /default\s+dir\s+no\s+Created/);
  });

  test('a btrfs pool on a loop file is made, mounted with quotas on, and measured', () => {
    const out = d.ok(['storage', 'create', 'fast', 'btrfs', 'size=300MiB']);
    assert.match(out, /^Created storage pool fast \(btrfs\)/);
    const p = pool('fast');
    assert.equal(p.status, 'Created');
    assert.equal(mountOf(p.path)?.[2], 'btrfs');
    assert.ok(
      p.usage && Math.abs(p.usage.totalBytes - 300 * 2 ** 20) < 20 * 2 ** 20,
      `size ${p.usage?.totalBytes}`,
    );
    const qgroups = spawnSync('btrfs', ['qgroup', 'show', p.path], { encoding: 'utf8' });
    assert.equal(qgroups.status, 0, `quotas are on: ${qgroups.stderr}`);
  });

  test('bad requests are refused with one clear line', () => {
    const cases: Array<[string[], RegExp]> = [
      [['storage', 'create', 'fast', 'btrfs'], /already exists/],
      [['storage', 'create', 'p2', 'zfs'], /Unknown storage driver "zfs": use dir or btrfs/],
      [['storage', 'create', 'p2', 'btrfs', 'size=10MiB'], /at least 256MiB/],
      [['storage', 'create', 'p2', 'btrfs', 'color=blue'], /no key "color"/],
      [['storage', 'create', 'Bad_Name', 'dir'], /pool name/],
      [['storage', 'info', 'nope'], /Storage pool nope not found/],
      [['storage', 'delete', 'default'], /cannot be deleted/],
    ];
    for (const [args, message] of cases) {
      const r = d.cli(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, message);
      assert.equal(r.stderr.split('\n').length, 2, 'one line');
    }
    assert.equal(existsSync(path.join(d.stateDir, 'storage-pools/p2.img')), false);
  });

  test('a dir pool is a directory; pools are mounted again when the daemon starts', async () => {
    d.ok(['storage', 'create', 'plain', 'dir']);
    assert.ok(existsSync(pool('plain').path));
    const fast = pool('fast').path;
    await d.kill9();
    spawnSync('umount', [fast]);
    assert.equal(mountOf(fast), undefined);
    await d.restart();
    assert.equal(mountOf(fast)?.[2], 'btrfs');
    assert.equal(pool('fast').status, 'Created');
  });

  test('a ct guest on a btrfs pool lives in a subvolume whose qgroup enforces limits.disk', () => {
    d.ok(['launch', 'busybox', 'q1', '--storage', 'fast', '-c', 'limits.disk=40MiB']);
    const sub = path.join(pool('fast').path, 'guests/q1');
    assert.equal(readlinkSync(path.join(d.stateDir, 'guests/q1')), sub);
    assert.equal(spawnSync('btrfs', ['subvolume', 'show', sub]).status, 0, 'a subvolume');
    d.ok(['exec', 'q1', '--', 'dd', 'if=/dev/urandom', 'of=/small', 'bs=1M', 'count=10']);
    const big = d.cli(['exec', 'q1', '--', 'sh', '-c', 'dd if=/dev/urandom of=/big bs=1M count=60 && sync']);
    assert.notEqual(big.code, 0, 'writing past limits.disk fails');
    assert.match(big.stderr, /quota exceeded|No space left/i);
    d.ok(['exec', 'q1', '--', 'rm', '-f', '/big']);
    spawnSync('sync');
    const onPool = pool('fast').guests?.find((g) => g.name === 'q1');
    assert.equal(onPool?.limitBytes, 40 * 2 ** 20);
    assert.ok((onPool?.usedBytes ?? 0) >= 10 * 2 ** 20, `q1 uses ${onPool?.usedBytes} bytes`);
    d.ok(['snapshot', 'create', 'q1', 's0']);
    d.ok(['config', 'set', 'q1', 'limits.disk=200MiB']);
    d.ok(['exec', 'q1', '--', 'sh', '-c', 'dd if=/dev/urandom of=/big bs=1M count=60 2>/dev/null && sync']);
    d.ok(['snapshot', 'restore', 'q1', 's0']);
    assert.notEqual(d.cli(['exec', 'q1', '--', 'test', '-e', '/big']).code, 0);
    d.ok(['delete', '--force', 'q1']);
    assert.equal(existsSync(sub), false, 'the subvolume goes with the guest');
    assert.equal(existsSync(path.join(d.stateDir, 'guests/q1')), false);
  });

  test('a copy of a guest on a btrfs pool lands on the same pool and shares its data (copy-on-write)', () => {
    d.ok(['launch', 'busybox', 'q3', '--storage', 'fast']);
    d.ok(['exec', 'q3', '--', 'sh', '-c', 'dd if=/dev/urandom of=/data bs=1M count=80 2>/dev/null && sync']);
    spawnSync('sync');
    const before = pool('fast').usage?.usedBytes ?? 0;
    d.ok(['copy', 'q3', 'q4']);
    spawnSync('sync');
    spawnSync('btrfs', ['filesystem', 'sync', pool('fast').path]);
    const grown = (pool('fast').usage?.usedBytes ?? 0) - before;
    assert.ok(grown < 40 * 2 ** 20, `the copy shares extents (pool grew by ${grown} bytes)`);
    const sub = path.join(pool('fast').path, 'guests/q4');
    assert.equal(readlinkSync(path.join(d.stateDir, 'guests/q4')), sub);
    d.ok(['start', 'q4']);
    const sum = (g: string) => d.ok(['exec', g, '--', 'sha256sum', '/data']);
    assert.equal(sum('q4'), sum('q3'));
    d.ok(['exec', 'q4', '--', 'sh', '-c', 'echo changed > /data']);
    assert.notEqual(sum('q4'), sum('q3'));
    d.ok(['delete', '--force', 'q3', 'q4']);
    assert.equal(existsSync(sub), false);
  });

  test('limits.disk off a btrfs pool, and guests on unknown pools, are refused', () => {
    const cases: Array<[string[], RegExp]> = [
      [['launch', 'busybox', 'q2', '-c', 'limits.disk=1GiB'], /limits\.disk needs a btrfs storage pool/],
      [
        ['launch', 'busybox', 'q2', '--storage', 'plain', '-c', 'limits.disk=1GiB'],
        /limits\.disk needs a btrfs storage pool; plain is a dir pool/,
      ],
      [['launch', 'busybox', 'q2', '--storage', 'nope'], /Storage pool nope not found/],
    ];
    for (const [args, message] of cases) {
      const r = d.cli(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, message);
    }
    assert.equal(existsSync(path.join(d.stateDir, 'guests/q2')), false);
    assert.equal(existsSync(path.join(pool('fast').path, 'guests/q2')), false);
  });

  test('delete unmounts the pool and removes its loop file', () => {
    const fast = pool('fast').path;
    const image = path.join(d.stateDir, 'storage-pools/fast.img');
    d.ok(['storage', 'delete', 'fast']);
    d.ok(['storage', 'delete', 'plain']);
    assert.equal(mountOf(fast), undefined);
    assert.equal(existsSync(image), false);
    assert.equal(spawnSync('losetup', ['-j', image], { encoding: 'utf8' }).stdout.trim(), '');
    assert.deepEqual(
      pools().map((p) => p.name),
      ['default'],
    );
  });
});
