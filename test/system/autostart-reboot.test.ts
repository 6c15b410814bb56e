import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, describe, test } from 'node:test';
import { type Daemon, eventually, gone, startDaemon } from './harness.ts';

interface GuestJson {
  name: string;
  status: string;
  state: { pid: number | null };
}

/*
 * The daemon's side of a host reboot (issue 18): systemd starts the daemon at boot on a host
 * where no guest runs, and it must start exactly the guests with boot.autostart=true, whatever
 * they were doing before, and leave the others stopped.
 */
describe('after a host reboot', () => {
  let d: Daemon | undefined;
  after(async () => {
    await d?.destroy();
  });

  test('a daemon started where no guest runs starts exactly the boot.autostart guests', async () => {
    d = await startDaemon();
    const daemon = d;
    const list = () => JSON.parse(daemon.ok(['list', '--format', 'json'])) as GuestJson[];
    // Running, autostart: comes back. Stopped, autostart: starts too (boot.autostart is not "resume").
    daemon.ok(['launch', 'busybox', 'auto-running', '-c', 'boot.autostart=true']);
    daemon.ok(['create', 'busybox', 'auto-stopped', '-c', 'boot.autostart=true']);
    // Running before the reboot without autostart, and stopped without: both stay down.
    daemon.ok(['launch', 'busybox', 'plain-running']);
    daemon.ok(['create', 'busybox', 'plain-stopped']);
    daemon.ok(['launch', 'busybox', 'off-running', '-c', 'boot.autostart=false']);
    const pids = list()
      .map((g) => g.state.pid)
      .filter((p): p is number => p !== null);
    assert.equal(pids.length, 3);

    // The reboot: the daemon dies first, then every guest process with the machine.
    await daemon.kill9();
    execFileSync('kill', ['-KILL', ...pids.map(String)]);
    for (const pid of pids) await eventually(`guest process ${pid} gone`, () => gone(pid));
    await daemon.restart();

    await eventually('the autostart guests run and the others are stopped', () => {
      const by = new Map(list().map((g) => [g.name, g.status]));
      return (
        by.get('auto-running') === 'Running' &&
        by.get('auto-stopped') === 'Running' &&
        by.get('plain-running') === 'Stopped' &&
        by.get('plain-stopped') === 'Stopped' &&
        by.get('off-running') === 'Stopped'
      );
    });
    // And it stays that way: nothing else is started a moment later.
    await new Promise((r) => setTimeout(r, 3000));
    const after = new Map(list().map((g) => [g.name, g]));
    assert.deepEqual(
      [...after.values()]
        .filter((g) => g.status === 'Running')
        .map((g) => g.name)
        .sort(),
      ['auto-running', 'auto-stopped'],
    );
    for (const name of ['auto-running', 'auto-stopped']) {
      const pid = after.get(name)?.state.pid;
      assert.ok(pid && !pids.includes(pid), `${name} runs as a new process`);
      assert.equal(daemon.ok(['exec', name, '--', 'hostname']).trim(), name);
    }
  });
});
