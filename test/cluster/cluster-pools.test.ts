import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Daemon } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster } from './cluster-harness.ts';

// A storage pool under one cluster-wide name, an instance on every member (issue 12 §4,
// decision 0038): a btrfs loop file under each member's own state dir, mounted by that member.

interface PoolJson {
  name: string;
  status: string;
  location?: string;
  everyMember?: boolean;
  usage: { totalBytes: number } | null;
  members?: Array<{ name: string; status: string }>;
}

/** One `Error:` line and exit code 1. */
function refused(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^Error: [^\n]+\n$/, r.stderr);
  assert.match(r.stderr, pattern);
}

const poolInfo = (d: Daemon, name: string, target?: string) =>
  JSON.parse(
    d.ok(['storage', 'info', name, '--format', 'json', ...(target ? ['--target', target] : [])]),
  ) as PoolJson;

const mountedAt = (dir: string) =>
  readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[4] === dir);

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2', 'm3']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

describe('a storage pool on every member', () => {
  test('three members joined', async () => {
    await formCluster(cluster);
  });

  test('made through m1 on all three; a volume and a guest on the member asked; delete removes every instance; bad input changes nothing', async () => {
    const [m1, m2, m3] = cluster.hosts;
    assert.ok(m1 && m2 && m3);
    const instance = (d: Daemon) => path.join(d.stateDir, 'storage-pools', 'shared');
    const before = (d: Daemon) => JSON.parse(d.ok(['storage', 'list', '--format', 'json'])) as PoolJson[];
    // A source is one host's device or directory: refused without a member, nothing recorded.
    refused(
      m1.daemon.cli(['storage', 'create', 'shared', 'dir', 'source=/srv/shared']),
      /leave out source, or give --target MEMBER/,
    );
    refused(
      m1.daemon.cli(['storage', 'create', 'shared', 'dir', '--target', 'nope']),
      /Member nope not found/,
    );
    assert.equal(
      before(m2.daemon).find((p) => p.name === 'shared'),
      undefined,
    );

    const made = m1.daemon.ok(['storage', 'create', 'shared', 'btrfs', 'size=256MiB']);
    assert.match(made, /Created storage pool shared \(btrfs\) on 3 members \(Created\)/);
    for (const host of [m1, m2, m3]) {
      // Each member's own loop file under its own state dir, mounted by that member.
      assert.ok(existsSync(path.join(host.daemon.stateDir, 'storage-pools', 'shared.img')), host.name);
      assert.ok(mountedAt(instance(host.daemon)), `${host.name} mounted its instance`);
      const info = poolInfo(host.daemon, 'shared');
      assert.equal(info.status, 'Created');
      assert.equal(info.everyMember, true);
      assert.equal(info.location, undefined);
      assert.deepEqual(
        info.members?.map((m) => [m.name, m.status]),
        [
          ['m1', 'Created'],
          ['m2', 'Created'],
          ['m3', 'Created'],
        ],
      );
      assert.ok(info.usage && info.usage.totalBytes > 0, `${host.name}'s own space`);
    }
    assert.ok(poolInfo(m1.daemon, 'shared', 'm3').usage, "m3's instance, asked through m1");
    refused(m1.daemon.cli(['storage', 'info', 'shared', '--target', 'nope']), /Member nope not found/);

    // A volume made through m2 for m3 lives on m3 and is listed everywhere with location m3.
    refused(
      m2.daemon.cli(['storage', 'volume', 'create', 'shared', 'vol1', 'size=64MiB', '--target', 'nope']),
      /Member nope not found/,
    );
    m2.daemon.ok(['storage', 'volume', 'create', 'shared', 'vol1', 'size=64MiB', '--target', 'm3']);
    for (const host of [m1, m2, m3]) {
      const vols = JSON.parse(
        host.daemon.ok(['storage', 'volume', 'list', 'shared', '--format', 'json']),
      ) as Array<{ name: string; location?: string }>;
      assert.deepEqual(
        vols.map((v) => [v.name, v.location]),
        [['vol1', 'm3']],
      );
      assert.equal(existsSync(path.join(instance(host.daemon), 'custom', 'vol1')), host === m3, host.name);
    }

    // A ct guest on the pool, created through m1 for m2, runs on m2 in m2's instance.
    m1.daemon.ok(['launch', 'busybox', 'pg', '--storage', 'shared', '--target', 'm2']);
    const guest = (d: Daemon, name: string) =>
      (JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string; location?: string }>).find(
        (g) => g.name === name,
      );
    assert.equal(guest(m3.daemon, 'pg')?.location, 'm2');
    assert.ok(
      existsSync(path.join(instance(m2.daemon), 'guests', 'pg', 'rootfs')),
      "pg's dir on m2's instance",
    );
    assert.ok(!existsSync(path.join(instance(m1.daemon), 'guests', 'pg')));
    assert.equal(m1.daemon.ok(['exec', 'pg', '--', 'hostname']).trim(), 'pg');
    // Without a target the scheduler picks any member; the guest's dir is on that member's instance.
    m3.daemon.ok(['launch', 'busybox', 'pa', '--storage', 'shared']);
    const where = guest(m1.daemon, 'pa')?.location;
    const owner = cluster.hosts.find((h) => h.name === where);
    assert.ok(owner, `pa placed on a member: ${where}`);
    assert.ok(
      existsSync(path.join(instance(owner.daemon), 'guests', 'pa')),
      `pa's dir on ${where}'s instance`,
    );
    m1.daemon.ok(['delete', '--force', 'pa']);

    // Deleting while a member's instance holds a guest or a volume: one line, every instance kept.
    refused(m3.daemon.cli(['storage', 'delete', 'shared']), /holds (guests pg|volumes vol1)/);
    m1.daemon.ok(['delete', '--force', 'pg']);
    refused(m2.daemon.cli(['storage', 'delete', 'shared']), /holds volumes vol1/);
    for (const host of [m1, m2, m3]) assert.ok(mountedAt(instance(host.daemon)), host.name);
    assert.equal(poolInfo(m2.daemon, 'shared').status, 'Created');

    m1.daemon.ok(['storage', 'volume', 'delete', 'shared', 'vol1']);
    m2.daemon.ok(['storage', 'delete', 'shared']);
    for (const host of [m1, m2, m3]) {
      assert.ok(!mountedAt(instance(host.daemon)), `${host.name} unmounted`);
      assert.ok(!existsSync(instance(host.daemon)), host.name);
      assert.ok(!existsSync(`${instance(host.daemon)}.img`), host.name);
      assert.equal(
        before(host.daemon).find((p) => p.name === 'shared'),
        undefined,
      );
    }
  });
});
