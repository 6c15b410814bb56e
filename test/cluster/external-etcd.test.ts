import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeTestCluster, membersOf, type TestCluster, waitForStatus } from './cluster-harness.ts';

// A cluster on an etcd it did not make (`cluster bootstrap --etcd URL,...`, issue 12
// section 2; decision 0032): no member runs etcd, every member is an etcd client.

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['x1', 'x2', 'x3']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

describe('a cluster on an existing etcd', () => {
  test('bootstrap with --etcd and a join: members are etcd clients, none runs etcd; that etcd cannot be bootstrapped twice', async () => {
    const [x1, x2, x3] = cluster.hosts;
    assert.ok(x1 && x2 && x3);
    const etcd = await cluster.startEtcd('etcd');
    const bad = x1.daemon.cli(['cluster', 'bootstrap', '--address', x1.ip, '--etcd', 'etcd.example']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^Error: --etcd "etcd\.example" is not an etcd client URL/);

    x1.daemon.ok(['cluster', 'bootstrap', '--address', x1.ip, '--etcd', etcd.url], {});
    const token = x1.daemon.ok(['cluster', 'add', 'x2']).trim();
    x2.daemon.ok(['cluster', 'join', token, '--address', x2.ip]);
    await waitForStatus(x1.daemon, 'x2', 'Online');
    assert.deepEqual(
      membersOf(x2.daemon).map((m) => [m.name, m.status, m.roles]),
      [
        ['x1', 'Online', ['etcd-client']],
        ['x2', 'Online', ['etcd-client']],
      ],
    );
    for (const h of [x1, x2])
      assert.ok(!existsSync(path.join(h.daemon.stateDir, 'etcd')), `${h.name} runs no etcd`);
    x2.daemon.ok(['launch', 'busybox', 'on-x2', '--target', 'x2']);
    assert.equal(membersOf(x1.daemon).find((m) => m.name === 'x2')?.guests, 1);

    const twice = x3.daemon.cli(['cluster', 'bootstrap', '--address', x3.ip, '--etcd', etcd.url]);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /already holds Trivisor data: join that cluster/);
    assert.ok(!existsSync(path.join(x3.daemon.stateDir, 'cluster')), 'the refused bootstrap left nothing');
    const info = JSON.parse(x3.daemon.ok(['list', '--format', 'json'])) as unknown[];
    assert.deepEqual(info, [], 'x3 still runs on its own store');
  });
});
