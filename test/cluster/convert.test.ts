import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { alive } from '../system/harness.ts';
import { makeTestCluster, membersOf, type TestCluster } from './cluster-harness.ts';

// A single-host daemon with guests of two models, a network, a second (dir) pool, volumes,
// a project and a token becomes the first member of a cluster (issue 12, section 2 and 3;
// decision 0032): its store moves into etcd, the daemon restarts on it, and everything is
// kept, the guests running under the same processes.

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['solo']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

interface GuestJson {
  name: string;
  status: string;
  model: string;
  config: Record<string, string>;
  devices?: Record<string, Record<string, string>>;
  disks?: Record<string, Record<string, string>>;
  state: { pid: number | null };
}

describe('converting a single host into a cluster', () => {
  test('keeps every record and every guest running (same pids); the converted member serves them', async () => {
    const host = cluster.hosts[0];
    assert.ok(host);
    const d = host.daemon;
    d.ok(['network', 'create', 'lan', 'ipv4.address=198.19.7.1/24']);
    d.ok(['storage', 'create', 'plain', 'dir']);
    d.ok(['storage', 'volume', 'create', 'plain', 'data', 'size=16MiB']);
    d.ok(['storage', 'volume', 'create', 'default', 'spare', 'size=8MiB']);
    d.ok(['project', 'create', 'team', 'limits.guests=5']);
    d.ok(['auth', 'token', 'create', 'ci', '--role', 'viewer', '--project', 'default']);
    d.ok(['launch', 'busybox', 'c1', '-n', 'lan', '--storage', 'plain']);
    d.ok(['launch', 'busybox', 'p1', '--model', 'pvm', '-c', 'limits.memory=64MiB']);
    d.ok(['storage', 'volume', 'attach', 'plain', 'data', 'c1', '/data']);
    d.ok(['exec', 'c1', '--', 'sh', '-c', 'echo kept > /data/file']);
    d.ok(['snapshot', 'create', 'c1', 'snap0']);
    d.ok(['--project', 'team', 'create', 'busybox', 't1']);

    const read = () => ({
      guests: (JSON.parse(d.ok(['list', '--all-projects', '--format', 'json'])) as GuestJson[]).map((g) => ({
        name: g.name,
        status: g.status,
        model: g.model,
        config: g.config,
        devices: g.devices,
        disks: g.disks,
        pid: g.state.pid,
      })),
      // On a cluster a network also says each member's bridge (decision 0034) and its VXLAN
      // (decision 0050), checked below.
      networks: (
        JSON.parse(d.ok(['network', 'list', '--format', 'json'])) as Array<{
          members?: unknown;
          tunnel?: unknown;
        }>
      ).map(({ members: _, tunnel: __, ...network }) => network),
      pools: (JSON.parse(d.ok(['storage', 'list', '--format', 'json'])) as Array<{ name: string }>).map(
        (p) => p.name,
      ),
      volumes: JSON.parse(d.ok(['storage', 'volume', 'list', 'plain', '--format', 'json'])),
      spare: JSON.parse(d.ok(['storage', 'volume', 'list', 'default', '--format', 'json'])),
      snapshots: JSON.parse(d.ok(['snapshot', 'list', 'c1', '--format', 'json'])),
      projects: JSON.parse(d.ok(['project', 'list', '--format', 'json'])),
      tokens: JSON.parse(d.ok(['auth', 'token', 'list', '--format', 'json'])),
      images: JSON.parse(d.ok(['image', 'list', '--format', 'json'])),
    });
    const before = read();
    const running = before.guests.filter((g) => g.status === 'Running');
    assert.deepEqual(running.map((g) => g.name).sort(), ['c1', 'p1']);
    assert.deepEqual(
      (before.snapshots as Array<{ name: string }>).map((x) => x.name),
      ['snap0'],
    );

    const boot = d.cli(['cluster', 'bootstrap', '--address', host.ip], { timeoutMs: 180_000 });
    assert.equal(boot.code, 0, `${boot.stderr}\n${d.stderr().slice(-3000)}`);
    // The daemon restarted on etcd; its guests did not.
    for (const g of running) assert.ok(g.pid && alive(g.pid), `${g.name} kept running`);
    const after = read();
    assert.deepEqual(after, before, 'every record is as it was, every guest under the same process');
    const spanned = (
      JSON.parse(d.ok(['network', 'list', '--format', 'json'])) as Array<{
        name: string;
        members?: Array<{ name: string; status: string; tunnelEndpoint?: string }>;
        tunnel?: { type: string };
      }>
    ).map((n) => [n.name, n.members?.map((m) => ({ name: m.name, status: m.status })), n.tunnel?.type]);
    assert.deepEqual(
      spanned,
      [['lan', [{ name: 'solo', status: 'Created' }], 'vxlan']],
      "the converted member's bridge is the network's only one, and it has its VXLAN",
    );
    const info = JSON.parse(d.ok(['info', 'c1', '--format', 'json'])) as { status: string };
    assert.equal(info.status, 'Running');
    assert.equal(d.ok(['exec', 'c1', '--', 'cat', '/data/file']), 'kept\n');
    assert.match(d.ok(['exec', 'p1', '--', 'cat', '/proc/cpuinfo']), /User Mode Linux/);
    const members = membersOf(d);
    assert.deepEqual(
      members.map((m) => [m.name, m.status, m.roles, m.guests]),
      [['solo', 'Online', ['etcd-voter'], 3]],
    );
    // The single-host store is kept aside, never used again; the daemon runs on etcd.
    assert.ok(existsSync(path.join(d.stateDir, 'store.db.before-cluster')));
    assert.ok(!existsSync(path.join(d.stateDir, 'store.db')));
    // Converting twice is refused in one line, and changes nothing.
    const again = d.cli(['cluster', 'bootstrap', '--address', host.ip]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^Error: This daemon is already member solo of a cluster/);
    // Guests still change state through the controllers, now on etcd.
    d.ok(['stop', 'p1']);
    d.ok(['start', 'p1']);
    assert.equal(
      (JSON.parse(d.ok(['info', 'p1', '--format', 'json'])) as { status: string }).status,
      'Running',
    );
  });
});
