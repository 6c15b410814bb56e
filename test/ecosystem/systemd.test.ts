import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { type Daemon, startDaemon } from '../system/harness.ts';

/*
 * trivisor.service as systemd takes it, without a running systemd (decision 0030): the unit
 * setup/start installs passes `systemd-analyze verify`; its readiness check waits for the
 * daemon's socket and fails fast when the daemon is gone.
 */

const root = path.resolve(import.meta.dirname, '../..');
const dirs: string[] = [];
let daemon: Daemon | undefined;
after(async () => {
  await daemon?.destroy();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const tempDir = () => {
  const d = mkdtempSync(path.join(tmpdir(), 'trivisor-systemd-'));
  dirs.push(d);
  return d;
};

const verify = (unit: string) =>
  spawnSync('systemd-analyze', ['verify', '--man=no', unit], { encoding: 'utf8' });

describe('trivisor.service', () => {
  test('setup installs the unit with the checkout’s paths, enables and restarts it, and systemd-analyze verify accepts it', () => {
    const dir = tempDir();
    const units = path.join(dir, 'units');
    // systemctl as a recorder: this test runs without systemd, as CI does.
    const bin = path.join(dir, 'bin');
    execFileSync('mkdir', ['-p', bin]);
    writeFileSync(path.join(bin, 'systemctl'), `#!/bin/sh\necho "$*" >>${dir}/systemctl.log\n`);
    chmodSync(path.join(bin, 'systemctl'), 0o755);
    execFileSync(
      'bash',
      ['-c', `source ${root}/setup/common.sh && install_systemd_unit /srv/trivisor-state`],
      {
        env: {
          PATH: `${bin}:${process.env.PATH}`,
          SYSTEMD_UNIT_DIR: units,
          TRIVISOR_NODE: process.execPath,
        },
      },
    );
    const unit = readFileSync(path.join(units, 'trivisor.service'), 'utf8');
    assert.match(unit, new RegExp(`^ExecStart=${root}/bin/trivisor daemon$`, 'm'));
    assert.match(
      unit,
      new RegExp(`^ExecStartPost=${root}/bin/trivisor admin wait-ready .*--pid \\$MAINPID$`, 'm'),
    );
    assert.match(
      unit,
      new RegExp(`^Environment=TRIVISOR_DIR=/srv/trivisor-state TRIVISOR_NODE=${process.execPath}$`, 'm'),
    );
    assert.match(unit, /^KillMode=process$/m);
    assert.match(unit, /^Restart=on-failure$/m);
    assert.match(unit, /^After=network-online.target$/m);
    // The daemon leaves the HA agent to its own unit.
    assert.match(unit, /^Environment=TRIVISOR_HA_AGENT=systemd$/m);
    assert.match(unit, /^Wants=trivisor-ha-agent.service$/m);
    // Restarted to bring the checkout's code; the agent only started (its stop is a fence).
    assert.equal(
      readFileSync(path.join(dir, 'systemctl.log'), 'utf8'),
      'daemon-reload\nenable trivisor.service trivisor-ha-agent.service\nrestart trivisor.service\nstart trivisor-ha-agent.service\n',
    );
    const r = verify(path.join(units, 'trivisor.service'));
    assert.equal(`${r.stdout}${r.stderr}`, '');
    assert.equal(r.status, 0);

    const agent = readFileSync(path.join(units, 'trivisor-ha-agent.service'), 'utf8');
    assert.match(
      agent,
      new RegExp(`^ExecStart=${process.execPath} ${root}/src/ha-agent.ts \\$\\{TRIVISOR_DIR\\}$`, 'm'),
    );
    assert.match(agent, /^Environment=TRIVISOR_DIR=\/srv\/trivisor-state$/m);
    for (const line of ['Type=notify', 'NotifyAccess=all', 'Restart=always', 'WatchdogSec=10s'])
      assert.match(agent, new RegExp(`^${line}$`, 'm'), line);
    const a = verify(path.join(units, 'trivisor-ha-agent.service'));
    assert.equal(`${a.stdout}${a.stderr}`, '');
    assert.equal(a.status, 0);
  });

  test('the HA agent run by systemd says it is ready and pets the watchdog through systemd-notify, waiting for a membership; without systemd it refuses a host that is no member', async () => {
    const dir = tempDir();
    const state = path.join(dir, 'state');
    // systemd-notify as a recorder: it gets what the agent would tell systemd.
    const bin = path.join(dir, 'bin');
    execFileSync('mkdir', ['-p', bin, state]);
    writeFileSync(
      path.join(bin, 'systemd-notify'),
      `#!/bin/sh\necho "$NOTIFY_SOCKET $*" >>${dir}/notify.log\n`,
    );
    chmodSync(path.join(bin, 'systemd-notify'), 0o755);
    const agentArgv = [process.execPath, path.join(root, 'src/ha-agent.ts'), state];
    const plain = spawnSync(agentArgv[0] as string, agentArgv.slice(1), {
      encoding: 'utf8',
      // Not run by systemd, even where this test is (its NOTIFY_SOCKET would be the test's).
      env: { ...process.env, NOTIFY_SOCKET: '' },
      timeout: 30_000,
    });
    assert.equal(plain.status, 2, plain.stderr);
    assert.match(plain.stdout, /this host is not a cluster member; nothing to do/);

    const child = spawn(agentArgv[0] as string, agentArgv.slice(1), {
      env: {
        ...process.env,
        PATH: `${bin}:${process.env.PATH}`,
        NOTIFY_SOCKET: '/run/test-notify',
        WATCHDOG_USEC: '3000000',
      },
      stdio: 'ignore',
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const log = () =>
        existsSync(path.join(dir, 'notify.log')) ? readFileSync(path.join(dir, 'notify.log'), 'utf8') : '';
      const deadline = Date.now() + 30_000;
      while ((log().match(/WATCHDOG=1/g) ?? []).length < 2 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 200));
      const lines = log().trim().split('\n');
      assert.deepEqual(lines.slice(0, 2), [
        '/run/test-notify --ready --status=starting',
        `/run/test-notify --status=this host is not a cluster member: waiting for ${state}'s membership`,
      ]);
      assert.ok(lines.filter((l) => l === '/run/test-notify WATCHDOG=1').length >= 2, lines.join('\n'));
      assert.equal(child.exitCode, null, 'it waits: systemd must not restart it in a loop');
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });

  test('systemd-analyze verify does check: a unit with a bad setting fails it', () => {
    const dir = tempDir();
    const unit = readFileSync(path.join(root, 'setup/systemd/trivisor.service'), 'utf8')
      .replaceAll('/usr/bin/trivisor', `${root}/bin/trivisor`)
      .replace('KillMode=process', 'KillMode=sometimes');
    writeFileSync(path.join(dir, 'trivisor.service'), unit);
    const r = verify(path.join(dir, 'trivisor.service'));
    assert.match(`${r.stdout}${r.stderr}`, /trivisor\.service:\d+: Failed to parse kill mode specification/);
  });

  test('admin wait-ready: returns once the daemon answers, gives up after --timeout, fails at once when --pid is gone', async () => {
    daemon = await startDaemon();
    const started = Date.now();
    daemon.ok(['admin', 'wait-ready', '--timeout', '10', '--pid', String(daemon.process.pid)]);
    assert.ok(Date.now() - started < 10_000);

    const empty = tempDir();
    const cli = (args: string[]) =>
      spawnSync(path.join(root, 'bin/trivisor'), args, {
        encoding: 'utf8',
        env: { ...process.env, TRIVISOR_DIR: empty },
      });
    const timedOut = cli(['admin', 'wait-ready', '--timeout', '1']);
    assert.equal(timedOut.status, 1);
    assert.equal(timedOut.stderr, `Error: The daemon did not answer on ${empty}/trivisor.sock within 1 s\n`);
    const at = Date.now();
    const dead = cli(['admin', 'wait-ready', '--timeout', '60', '--pid', '999999999']);
    assert.equal(dead.status, 1);
    assert.match(dead.stderr, /^Error: The daemon \(pid 999999999\) exited before it was ready/);
    assert.ok(Date.now() - at < 10_000, 'a dead daemon is not waited for');
  });
});
