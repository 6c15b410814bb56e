import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { makeTestCluster, membersOf, type TestCluster, waitForStatus } from './cluster-harness.ts';

// Three real daemons, each in its own network namespace, bootstrapped and joined through the
// CLI (issue 12, sections 3 and 6; decision 0032).

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2', 'm3']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

describe('a three-member cluster', () => {
  test('bootstrap and two joins: three Online members, three etcd voters, each with measured usage', async () => {
    const [m1, m2, m3] = cluster.hosts;
    assert.ok(m1 && m2 && m3);
    const boot = m1.daemon.cli(['cluster', 'bootstrap', '--address', m1.ip], { timeoutMs: 180_000 });
    assert.equal(boot.code, 0, `${boot.stderr}\n${m1.daemon.stderr().slice(-3000)}`);
    assert.match(
      boot.stdout,
      new RegExp(`Cluster bootstrapped: member m1 at ${m1.ip.replaceAll('.', '\\.')}:8444`),
    );
    for (const host of [m2, m3]) {
      const add = m1.daemon.cli(['cluster', 'add', host.name]);
      assert.equal(add.code, 0, add.stderr);
      const token = add.stdout.trim();
      assert.match(token, /^trvjoin_[A-Za-z0-9_-]+$/, 'the token alone on stdout');
      const join = host.daemon.cli(['cluster', 'join', token, '--address', host.ip], { timeoutMs: 180_000 });
      assert.equal(join.code, 0, `${join.stderr}\n${host.daemon.stderr().slice(-3000)}`);
    }
    for (const host of [m1, m2, m3]) await waitForStatus(host.daemon, 'm3', 'Online');
    for (const host of [m1, m2, m3]) {
      const members = membersOf(host.daemon);
      assert.deepEqual(
        members.map((m) => [m.name, m.address, m.status, m.roles]),
        [
          ['m1', `${m1.ip}:8444`, 'Online', ['etcd-voter']],
          ['m2', `${m2.ip}:8444`, 'Online', ['etcd-voter']],
          ['m3', `${m3.ip}:8444`, 'Online', ['etcd-voter']],
        ],
      );
      for (const m of members) {
        assert.ok(m.cpu && m.cpu.cpus > 0 && m.cpu.used >= 0 && m.cpu.free <= m.cpu.cpus, JSON.stringify(m));
        assert.ok(m.memory && m.memory.totalBytes > 0 && m.memory.usedBytes > 0, JSON.stringify(m));
        assert.equal(m.guests, 0);
      }
    }
  });
});
