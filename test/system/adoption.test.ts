import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { alive, type Daemon, eventually, gone, startDaemon } from './harness.ts';

interface GuestJson {
  name: string;
  status: string;
  state: { pid: number | null };
}

const N = 20;

describe('guests outlive the daemon and are re-adopted', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon();
  });
  after(async () => {
    await d?.destroy();
  });

  const list = () => JSON.parse(d.ok(['list', '--format', 'json'])) as GuestJson[];

  test(`kill -9 of the daemon with ${N} guests running: all re-adopted, running, exec-able, none duplicated`, async () => {
    const names = Array.from({ length: N }, (_, i) => `g${i}`);
    for (const n of names) d.ok(['launch', 'busybox', n]);
    d.ok(['create', 'busybox', 'auto', '-c', 'boot.autostart=true']);
    d.ok(['launch', 'busybox', 'victim']);
    const before = new Map(list().map((g) => [g.name, g.state.pid]));
    assert.equal([...before.values()].filter((p) => p !== null).length, N + 1);

    // No process per guest under the daemon: the guests' inits are not its children. Its one
    // child is the launcher its ct starts go through (decision 0097), a perl process.
    const daemonPid = d.process.pid!;
    // ps exits 1 when it lists nothing.
    const children = spawnSync('ps', ['-o', 'pid=,comm=', '--ppid', String(daemonPid)], {
      encoding: 'utf8',
    })
      .stdout.trim()
      .split('\n')
      .filter(Boolean)
      .map((line) => line.trim().split(/\s+/));
    assert.ok(
      children.length <= 1 && children.every(([, comm]) => comm === 'perl'),
      `the daemon's children while guests run are its launcher at most: ${JSON.stringify(children)}`,
    );
    const inits = new Set([...before.values()].map(String));
    assert.ok(!children.some(([pid]) => inits.has(pid ?? '')), 'no guest init is a child of the daemon');

    await d.kill9();
    for (const [name, pid] of before)
      if (name !== 'auto') assert.ok(pid && alive(pid), `${name} survived the daemon's death`);
    // A guest that dies while the daemon is down is noticed at the next start.
    const victimPid = before.get('victim')!;
    process.kill(victimPid, 'SIGKILL');
    await eventually('victim gone', () => gone(victimPid));

    await d.restart();
    const after = new Map(list().map((g) => [g.name, g]));
    for (const n of names) {
      const g = after.get(n);
      assert.equal(g?.status, 'Running', n);
      assert.equal(g?.state.pid, before.get(n), `${n} kept its pid (re-adopted, not restarted)`);
    }
    assert.equal(after.size, N + 2, 'no guest lost or duplicated');
    await eventually(
      'victim marked Stopped',
      () => list().find((g) => g.name === 'victim')?.status === 'Stopped',
    );
    await eventually(
      'autostart guest started',
      () => list().find((g) => g.name === 'auto')?.status === 'Running',
    );
    for (const n of names) assert.equal(d.ok(['exec', n, '--', 'hostname']).trim(), n);
    const runcIds = execFileSync('runc', ['--root', `${d.stateDir}/runc`, 'list', '-q'], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .filter(Boolean);
    assert.equal(runcIds.length, N + 1, 'one runc container per running guest, no duplicates');
  });

  test('a guest with boot.restart_policy=always is restarted when its init is killed', async () => {
    d.ok(['launch', 'busybox', 'phoenix', '-c', 'boot.restart_policy=always']);
    const pid = list().find((g) => g.name === 'phoenix')!.state.pid!;
    process.kill(pid, 'SIGKILL');
    await eventually('phoenix restarted with a new init', () => {
      const g = list().find((x) => x.name === 'phoenix');
      return g?.status === 'Running' && g.state.pid !== null && g.state.pid !== pid;
    });
    assert.equal(d.ok(['exec', 'phoenix', '--', 'hostname']).trim(), 'phoenix');
  });

  test('renaming the host does not orphan its guests', async () => {
    const host = await startDaemon({ hostname: 'before-rename' });
    try {
      host.ok(['launch', 'busybox', 'stay']);
      const pid = (JSON.parse(host.ok(['info', 'stay', '--format', 'json'])) as GuestJson).state.pid;
      await host.kill9();
      await host.restart({ hostname: 'after-rename' });
      const g = JSON.parse(host.ok(['info', 'stay', '--format', 'json'])) as GuestJson;
      assert.equal(g.status, 'Running');
      assert.equal(g.state.pid, pid);
      host.ok(['stop', 'stay', '--timeout', '10']);
      assert.equal(
        (JSON.parse(host.ok(['info', 'stay', '--format', 'json'])) as GuestJson).status,
        'Stopped',
      );
    } finally {
      await host.destroy();
    }
  });
});
